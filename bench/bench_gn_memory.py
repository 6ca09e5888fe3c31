"""Peak memory of a Gauss-Newton fit over 8,192 training tasks with q ≈ 28k (prints, no assertions).

    .venv/bin/python bench/bench_gn_memory.py [--tasks 8192] [--real-tasks 8]

Runs the app's own fit path (``fits.fit_influence``: Algorithm 1 streaming with partial saves
to the disk cache, Algorithm 3, then the chunked projections P = G·U over *real* per-task
gradients) on an omniglot ProtoNet conv4×32 (28×28, q = 28,320), 5-way 5-shot 5-query. Computing
the real columns of 8,192 tasks takes hours on 2 cores (bench_influence.py times them), so after
``--real-tasks`` real tasks the columns are random rows of the real shape (100 × q, float32):
the streaming buffer, reductions, cache writes and gradients — everything that grows with M —
are the real code. Peak RSS is read from the kernel (ru_maxrss) at each stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metainf_core.influence.gauss_newton as gauss_newton  # noqa: E402
from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8192)
    ap.add_argument("--real-tasks", type=int, default=8, help="tasks whose columns are computed for real")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="metainf-gn-memory-"))
    os.environ["METAINF_CACHE"] = str(tmp / "cache")
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="omniglot", ways=5, shots=5, queries=5, train_tasks=args.tasks, test_tasks=16)
    train_cfg = TrainConfig(algo="protonet", arch="conv4", filters=32, steps=1, meta_batch=4, checkpoint_every=1)
    run = open_run(train(task_cfg, train_cfg, tmp / "run", progress=False, device="cpu"))
    q = sum(p.numel() for p in run.params.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; M = {len(run.train_tasks)}, q = {q}")
    print(f"after loading data and run: peak RSS {peak_mib():.0f} MiB")

    real_columns = gauss_newton.create_columns_function
    calls = {"n": 0}

    def columns_factory(*a, **kw):
        real = real_columns(*a, **kw)

        def columns(w, sx, sy, qx):
            calls["n"] += 1
            if calls["n"] <= args.real_tasks:
                return real(w, sx, sy, qx)
            return torch.randn(qx.shape[0] * (task_cfg.ways - 1), w.numel(), dtype=w.dtype)

        return columns

    gauss_newton.create_columns_function = columns_factory
    stages = {}

    def progress(stage: str, done: int, total: int) -> None:
        if done == args.real_tasks and stage == "curvature":
            print(f"after {done} real-column tasks: peak RSS {peak_mib():.0f} MiB")
        if done in (total // 8, total // 2, total) and (stage, done) not in stages:
            stages[(stage, done)] = peak_mib()
            print(f"  {stage:10s} {done:5d}/{total}: peak RSS {stages[(stage, done)]:.0f} MiB, {time.perf_counter() - t0:.0f} s")

    t0 = time.perf_counter()
    cfg = InfluenceConfig(method="gn", n_orth=512, truncation=512, dtype="float32")
    inf = fit_influence(run, cfg, progress=progress, save_every=512)
    print(f"fit of {len(run.train_tasks)} tasks: {time.perf_counter() - t0:.0f} s, factor {tuple(inf.factor.shape)}, "
          f"projections {tuple(inf.projections.shape)}")
    print(f"PEAK RSS of the whole fit: {peak_mib():.0f} MiB (target < 4096 MiB)")


if __name__ == "__main__":
    main()
