"""How fast the dashboard answers on the bundled ProtoNet demo (prints figures, no assertions).

    .venv/bin/python bench/bench_app_responsiveness.py [--repeats 5]

Drives the real page scripts with Streamlit's AppTest (the same code a browser session runs, minus
the websocket): a ξ slider move on the Edit page, and choosing a new test task on the Explain page
(ranking all 512 training tasks + thumbnails + charts). AppTest reruns the whole page, while the
browser reruns only the ξ fragment, so the Edit figure is an upper bound. The influence fit is
loaded from the disk cache (fitted first if missing, not timed). Targets (issue 4): < 1 s each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def timed(action) -> float:  # noqa: ANN001
    t = time.perf_counter()
    action()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from streamlit.testing.v1 import AppTest

    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    fit_influence(open_run(DEMO), DEFAULT_INFLUENCE)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo {DEMO.name}")

    # one evaluation of every test task, batches one after another vs on the usable cores' threads
    from metainf_core.evaluation import default_eval_workers

    for demo in (DEMO, DEMO.parent / "maml-fashion-mnist"):
        r = open_run(demo)
        r.evaluate()
        serial = statistics.median(timed(lambda r=r: r.evaluate(workers=1)) for _ in range(args.repeats))
        pooled = statistics.median(timed(r.evaluate) for _ in range(args.repeats))
        print(f"evaluate all {len(r.test_tasks)} test tasks of {demo.name}: 1 worker {serial:.3f} s, "
              f"{default_eval_workers('cpu')} workers {pooled:.3f} s ({serial / pooled:.2f}× faster)")

    # what the browser reruns on a ξ move: only the st.fragment (apply the cached Σ I_meta, evaluate)
    import numpy as np

    from metainf_core.edit import apply_delta
    from metainf_core.ranking import Target, all_scores, ranking_table

    run = open_run(DEMO)
    inf = fit_influence(run, DEFAULT_INFLUENCE)
    order, _ = ranking_table(all_scores(run, inf, Target((0,)), DEFAULT_INFLUENCE.dtype))
    direction = inf.i_meta_sum(np.asarray(order[::-1][:16]))
    run.evaluate()
    frag = [timed(lambda xi=xi: run.evaluate(apply_delta(run.params, xi * direction))) for xi in (-4.0, -2.0, 2.0, 4.0, -8.0, 8.0, -1.0, 1.0)]
    print(f"Edit page, fragment only (what a browser reruns on a ξ move): median {statistics.median(frag):.3f} s, "
          f"max {max(frag):.3f} s  (target < 1 s)")

    edit = AppTest.from_file(str(REPO / "views" / "3_Edit.py"), default_timeout=600)
    edit.session_state["model_path"] = str(DEMO)
    first = timed(edit.run)
    edit.button(key="edit_pick_harmful").click().run()  # block the 16 most harmful (the page's default k)
    xis = [-4.0, -2.0, 2.0, 4.0, -8.0, 8.0, -1.0, 1.0][: max(2, args.repeats)]
    moves = [timed(lambda xi=xi: edit.slider(key="edit_xi_block").set_value(xi).run()) for xi in xis]
    assert not edit.exception, edit.exception
    acc = next(m.value for m in edit.metric if m.label.startswith("Test taskset accuracy"))
    print(f"Edit page: first load {first:.2f} s; ξ slider move (whole page rerun, 16 blocked tasks, 128 test tasks): "
          f"median {statistics.median(moves):.3f} s, max {max(moves):.3f} s  (last accuracy {acc}; target < 1 s)")

    explain = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=600)
    explain.session_state["model_path"] = str(DEMO)
    first = timed(explain.run)
    picks = [timed(lambda i=i: explain.number_input(key="_test_task_input").set_value(10 + i).run()) for i in range(args.repeats)]
    assert not explain.exception, explain.exception
    print(f"Explain page: first load {first:.2f} s; new test task (rank 512 tasks, 10 thumbnail grids, 2 charts): "
          f"median {statistics.median(picks):.3f} s, max {max(picks):.3f} s  (target < 1 s)")


if __name__ == "__main__":
    main()
