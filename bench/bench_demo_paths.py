"""Figures for the app's code paths on the bundled demos (prints, never asserts):
Gauss-Newton fit time, ranking a new test task, one-step edit + re-evaluation on 256 test tasks,
and the noise-task proper tests on real data (TLXML 5.1.2: 64 of 512 training tasks are noise).

    .venv/bin/python bench/bench_demo_paths.py [--demos protonet maml] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metainf_core.config import InfluenceConfig, TaskConfig  # noqa: E402
from metainf_core.edit import EditSpec, edited_params  # noqa: E402
from metainf_core.fits import fit_influence  # noqa: E402
from metainf_core.ranking import Target, all_scores, ranking_table  # noqa: E402
from metainf_core.validate import validation_report  # noqa: E402
from metainf_core.service import open_run  # noqa: E402
from metainf_core.tasks import make_taskset  # noqa: E402

DEMOS = Path(__file__).resolve().parents[1] / "assets" / "demo"


def bench(name: str, cfg: InfluenceConfig) -> dict:
    run = open_run(DEMOS / f"{name}-fashion-mnist")
    t = time.perf_counter()
    inf = fit_influence(run, cfg)
    fit_s = time.perf_counter() - t
    rank_s = []
    for i in range(5):
        t = time.perf_counter()
        scores = all_scores(run, inf, Target((i,)), cfg.dtype)
        ranking_table(scores)
        rank_s.append(time.perf_counter() - t)
    tc = TaskConfig.from_dict({**run.test_tasks.config.to_dict(), "test_tasks": 256})
    run256 = dataclasses.replace(run, test_tasks=make_taskset(run.dataset, tc, "test"))
    order = np.argsort(-all_scores(run, inf, Target(tuple(range(len(run.test_tasks)))), cfg.dtype))
    edit_s, acc = [], {}
    for xi in (-4.0, -1.0, 1.0, 4.0):
        t = time.perf_counter()
        params = edited_params(run256, inf, EditSpec(block=tuple(order[-64:]), xi_block=xi))
        acc[xi] = run256.evaluate(params).summary()["accuracy"]
        edit_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    base = run256.evaluate().summary()["accuracy"]
    eval_s = time.perf_counter() - t
    val = validation_report(run, inf, cfg, self_rank=True, noise=True, superclass=True, max_tests=128)
    return {
        "demo": name, "q": int(inf.factor.shape[0]), "M": inf.num_tasks, "columns": inf.num_columns,
        "truncation": inf.truncation, "fit_s(cached after first run)": round(fit_s, 2),
        "rank_new_test_task_s(median)": round(float(np.median(rank_s)), 4),
        "edit_and_evaluate_256_s(median)": round(float(np.median(edit_s)), 3), "evaluate_256_s": round(eval_s, 3),
        "accuracy_256_unedited": round(base, 4), "accuracy_256_block64_worst": {str(k): round(v, 4) for k, v in acc.items()},
        "noise_proper_tests": val["noise"], "superclass_proper_tests": val["superclass"],
        "self_rank_at_truncation": val["self_rank_at_truncation"],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--demos", nargs="+", default=["protonet", "maml"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--n-orth", type=int, default=512)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = InfluenceConfig(method="gn", n_orth=a.n_orth, dtype="float32", self_rank_sample=256)
    for name in a.demos:
        print(json.dumps(bench(name, cfg), indent=1), flush=True)


if __name__ == "__main__":
    main()
