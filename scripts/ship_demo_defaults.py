"""Ship with a demo what its pages' default clicks read, so a fresh clone answers them at once
(issue 25 item 3): the model as trained (every page's "before"); the Audit page's default removals
(for each score kind the 64 most suspicious and 5 random 64-sets, ξ = −1, seed 0); and the Edit
page's default edit for every test task (its "Block the 16 most harmful", ξ = −1).

    .venv/bin/python scripts/ship_demo_defaults.py assets/demo/maml-fashion-mnist

Each result is computed once (or read from the disk cache) and copied into the run folder's cache/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metainf_core.detect import SCORE_KINDS, detection_scores, lowest_ids, removal_sets, stored_blocked_evaluation  # noqa: E402
from metainf_core.fits import edit_metrics_entry, fit_influence, test_scores_entry  # noqa: E402
from metainf_core.ranking import Target, all_scores, fit_test_table  # noqa: E402
from metainf_core.service import open_run  # noqa: E402
from ui import DEFAULT_EDIT, DEFAULT_INFLUENCE  # noqa: E402

AUDIT_XI = -1.0  # the Audit page's default removal (views/7_Audit.py)


def main(path: str) -> None:
    run = open_run(path)
    run.as_trained
    run.as_trained_entry().ship(run.checkpoint.path)
    inf = fit_influence(run, DEFAULT_INFLUENCE)
    table = fit_test_table(run, inf, DEFAULT_INFLUENCE.dtype, test_scores_entry(run, DEFAULT_INFLUENCE))
    audit = {(tuple(int(j) for j in ids), AUDIT_XI) for kind in SCORE_KINDS
             for ids in removal_sets(detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, kind, table), 64, 5, 0)}  # fmt: skip
    # the Edit page scores one test task as its page does (all_scores), so the set is the one it picks
    k, xi = DEFAULT_EDIT["edit_k"], DEFAULT_EDIT["edit_xi_block"]
    edit = {(tuple(int(j) for j in lowest_ids(all_scores(run, inf, Target((i,)), DEFAULT_INFLUENCE.dtype), k)), xi)
            for i in range(len(run.test_tasks))}  # fmt: skip
    for ids, xi in tqdm(sorted(audit | edit), desc=f"{Path(path).name}: blocked sets", unit="set"):
        stored_blocked_evaluation(run, inf, DEFAULT_INFLUENCE, ids, xi)
        edit_metrics_entry(run, DEFAULT_INFLUENCE, ids, xi).ship(run.checkpoint.path)


if __name__ == "__main__":
    main(sys.argv[1])
