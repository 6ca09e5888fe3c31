"""Seconds per click of the Edit and Audit demos' heavy buttons, old path against new, in one process
(prints figures, no assertions; issue 25 item 3: "every click answers in ≤ 2 s or runs as a job").

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_edit_clicks.py [--demos maml-fashion-mnist,protonet-fashion-mnist]

For each bundled demo it opens the run and its shipped fit through the pages' path
(``service.open_run``, ``fits.influence_config_for`` + ``fits.fit_influence``, as ``ui.require_influence``),
does what loading the pages does (untimed: test task 0's scores, ω̂'s test metrics, the Audit page's
default score "self"), then times the core calls each click makes, with the pages' st.cache_data
caches stood in for by dicts:

- **Edit · block the 16 most harmful** (k = 16, ξ = −1): Σ I_meta over the set (``edit_directions``)
  and one evaluation of ω' on every test task. Unchanged: the old and the new path are the same calls.
- **Edit · accuracy versus ξ**: ``edit.xi_sweep`` at its nine ξ, ξ = 0 (ω̂) and ξ = −1 (the click
  above) from the caches: seven evaluations. Unchanged too; the probe below times the batched
  alternative (all ξ in one vmapped pass), which is slower on the CPU.
- **Audit · remove the k most suspicious** (score "self", ξ = −1, 5 random draws; k = 64, the page's
  default on the demos, and k = 48). Old: the mean helpfulness for the prediction from 128 test
  gradients, 32 tasks per vmapped call, then ω̂'s metrics (the Audit page's own cache), then six
  evaluations. New: the test table (``ranking.fit_test_table``, shipped with the demo and restored
  by ``fits.test_scores_entry``), ω̂ from ``Run.as_trained`` (on disk, shipped), and each
  removed set through ``detect.stored_blocked_evaluation`` (on disk; the demos ship the random
  draws at the default k, so k = 64 evaluates only the suspicious set, k = 48 all six).
- **Audit · same, score "mean"** (a second click with another score): old six evaluations, new one
  (the random draws depend on k, ξ and the seed only: ``removal_effect(evaluate=...)`` reuses them).

The disk cache is a temporary ``$METAINF_CACHE`` (the shipped fit is restored into it, untimed;
the shipped test table and random draws on the first click, timed).
Timings are wall seconds of one repeat; on a shared machine compare the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEMOS = ("maml-fashion-mnist", "protonet-fashion-mnist")
K_EDIT, K_AUDIT, DRAWS = 16, 64, 5  # the pages' defaults on the demos


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = action()
    return time.perf_counter() - t, out


def old_mean_helpfulness(run, inf, dtype: str):
    """The old path of ``detection_scores(..., "mean")``: ``all_scores`` of the whole test taskset, its
    gradient the mean of 128 test gradients taken 32 tasks per vmapped call (``task_gradients``' default)."""
    from metainf_core.fits import params_as
    from metainf_core.influence import task_gradients

    ids = list(range(len(run.test_tasks)))
    g = task_gradients(run.model, run.spec, params_as(run, dtype), run.test_tasks, run.dataset, ids, batch_size=32)
    return inf.helpfulness(g.mean(0)).cpu().numpy()


def batched_xi_probe(run, direction, xis: list[float]) -> float:
    """Seconds to evaluate ω̂ + ξ d at every ξ of ``xis`` in one pass per task batch (vmap over ξ)."""
    import numpy as np
    import torch
    from torch.func import vmap

    from metainf_core.edit import apply_delta
    from metainf_core.evaluation import default_eval_batch

    stacked = [apply_delta(run.params, xi * direction) for xi in xis]
    params = {k: torch.stack([p[k] for p in stacked]) for k in run.params}
    over_xi = vmap(run.batched_metrics, in_dims=(0, None, None, None, None))
    bs, n = default_eval_batch(run.device), len(run.test_tasks)

    def sweep() -> None:
        with torch.no_grad():
            for start in range(0, n, bs):
                b = run.test_tasks.batch(np.arange(start, min(n, start + bs)), run.dataset)
                over_xi(params, b.support_x, b.support_y, b.query_x, b.query_y)

    return timed(sweep)[0]


def bench_demo(name: str) -> list[tuple[str, float, float, str]]:
    import numpy as np

    from metainf_core.detect import (
        corrupted_ids,
        detection_scores,
        removal_effect,
        removal_verdict,
        stored_blocked_evaluation,
    )
    from metainf_core.edit import XI_SWEEP, apply_delta, edit_directions, xi_sweep
    from metainf_core.fits import fit_influence, influence_config_for, test_scores_entry
    from metainf_core.ranking import Target, all_scores, fit_test_table, ranking_table
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    path, dtype = REPO / "assets" / "demo" / name, DEFAULT_INFLUENCE.dtype
    run = open_run(path)
    cfg = influence_config_for(run, DEFAULT_INFLUENCE)
    inf = fit_influence(run, cfg)
    # page loads (untimed): Edit scores test task 0 and evaluates ω̂; Audit orders by its default score
    order, _ = ranking_table(all_scores(run, inf, Target((0,)), dtype))
    t_eval, before = timed(run.evaluate)
    run.as_trained  # noqa: B018 - the Edit page's load computes it (new path)
    self_scores = detection_scores(run, inf, dtype, "self")
    bad = corrupted_ids(run)
    rows: list[tuple[str, float, float, str]] = []

    def edit_evaluate(block: tuple[int, ...], xi: float):  # the Edit page's evaluate()
        return run.evaluate(apply_delta(run.params, edit_directions(inf.i_meta_sum, block).delta(xi, 0.0)))

    block = tuple(sorted(int(j) for j in order[::-1][:K_EDIT]))
    old_s, after = timed(lambda: edit_evaluate(block, -1.0))
    new_s, _ = timed(lambda: edit_evaluate(block, -1.0))
    rows.append((f"Edit · block the {K_EDIT} most harmful", old_s, new_s, "1 evaluation; same calls"))

    def sweep() -> float:
        seen = {0.0: before, -1.0: after}  # the page's cache: ω̂ and the click above

        def evaluate(xi: float):
            if xi not in seen:
                seen[xi] = edit_evaluate(block, xi)
            r = seen[xi]
            return r.loss, r.accuracy, r.summary()

        return timed(lambda: xi_sweep(evaluate, np.zeros(inf.num_tasks), block, 0))[0]

    rows.append(("Edit · accuracy versus ξ", sweep(), sweep(), f"{len(XI_SWEEP) - 2} evaluations; same calls"))

    def audit(k: int, scores: np.ndarray, mean_scores: Callable[[], np.ndarray], as_trained: Callable[[], Any],
              evaluate=None) -> float:  # fmt: skip
        def click() -> None:
            mean = mean_scores()  # first: the old page's suspicion(path, "mean") came before removal()
            eff = removal_effect(run, inf, scores, [k], xis=[-1.0], random_draws=DRAWS, seed=0, corrupted=bad,
                                 before=as_trained(), evaluate=evaluate)  # fmt: skip
            removal_verdict(run, eff, scores, mean)

        return timed(click)[0]

    seen: dict[tuple[tuple[int, ...], float], Any] = {}

    def page_blocked(ids, xi: float):  # the new Audit page's blocked(): st.cache_data over the disk cache
        key = (tuple(int(j) for j in ids), float(xi))
        if key not in seen:
            seen[key] = stored_blocked_evaluation(run, inf, cfg, ids, xi)
        return seen[key]

    def old_click(k: int) -> float:
        return audit(k, self_scores, lambda: old_mean_helpfulness(run, inf, dtype), run.evaluate)

    table_s, table = timed(lambda: fit_test_table(run, inf, dtype, test_scores_entry(run, cfg)))  # the shipped copy
    k_other = K_AUDIT * 3 // 4
    for k, what in ((K_AUDIT, "shipped random draws + 1 evaluation"), (k_other, "6 evaluations (k not shipped)")):
        new_s = table_s + audit(k, self_scores, lambda: table.mean(0), lambda: run.as_trained, page_blocked)
        rows.append((f"Audit · remove the {k} most suspicious", old_click(k), new_s,
                     f"new: shipped test table ({table_s:.2f} s) and ω̂, {what}"))  # fmt: skip
    mean_order = detection_scores(run, inf, dtype, "mean", table)
    old_rekind = timed(lambda: removal_effect(run, inf, mean_order, [k_other], xis=[-1.0], random_draws=DRAWS,
                                               seed=0, corrupted=bad, before=before))[0]  # fmt: skip
    new_rekind = audit(k_other, mean_order, lambda: table.mean(0), lambda: run.as_trained, page_blocked)
    rows.append((f"Audit · same {k_other}, score changed to mean", old_rekind, new_rekind, "old 6 evaluations, new 1"))
    computed = timed(lambda: fit_test_table(run, inf, dtype))[0]
    print(f"  computing the test table (a run that ships none; once per run and fit): {computed:.2f} s")

    direction = edit_directions(inf.i_meta_sum, block).block
    probe = batched_xi_probe(run, direction, [x for x in XI_SWEEP if x not in (0.0, -1.0)])
    print(f"  one evaluation of ω̂ on {len(run.test_tasks)} test tasks: {t_eval:.2f} s; the seven ξ of the sweep "
          f"in one vmapped pass (not used): {probe:.2f} s against {rows[1][2]:.2f} s one ξ at a time")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demos", default=",".join(DEMOS))
    args = ap.parse_args()
    os.environ["METAINF_CACHE"] = tempfile.mkdtemp(prefix="bench-edit-clicks-")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    for name in args.demos.split(","):
        print(f"\n{name}")
        rows = bench_demo(name)
        print(f"  {'click':<58} {'old s':>7} {'new s':>7} {'old/new':>8}")
        for label, old_s, new_s, note in rows:
            print(f"  {label:<58} {old_s:7.2f} {new_s:7.2f} {old_s / new_s:7.1f}×  {note}")


if __name__ == "__main__":
    main()
