"""Distributed Gauss-Newton fit: throughput for 1 and 2 ranks, and a per-task cost model (prints figures, no assertions).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_distributed_fit.py [--tasks 192] [--n-orth 512]

Trains (once, into --work) a conv4×16 ProtoNet on Fashion-MNIST, 3-way 5-shot 5-query, with
--tasks training tasks, then fits its Gauss-Newton influence (the `fit` CLI's defaults: float32,
N_orth = 512) from an empty cache three times: 1 process × 1 thread, 1 process × 2 threads and
`torchrun --standalone --nproc-per-node 2` × 1 thread each (2 threads in all), and prints wall
time, the fit's own seconds, tasks/s and the 2-rank/1-rank ratios, plus how far the 2-rank scores
are from the 1-process ones (N_orth < rank V here, so the merge is approximate: Prop. 4 needs
N_orth ≥ rank). Then the cost model, on 1 thread: seconds per task for the columns (Algorithm 1's
stream, buffer reductions included) and for the gradients of P, and one Algorithm 2 merge of
2·N_orth rows of length q, for several N_orth and q; a fit on N ranks ≈ setup + M/N·(c_col + c_grad)
+ ⌈log₂N⌉·merge + truncation choice.

With --snapshots S > 0 it also times `diagnose` (landscape diagnostics, seed 003) over the S
history snapshots of a conv3×16 MAML (T = 5 inner steps, 8 test tasks) from an empty cache:
1 process × 1 thread against 2 ranks × 1 thread, which share the snapshots out one per rank per
round (distributed.map_in_rounds), and checks that both give the same rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, as the other benches

from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig  # noqa: E402
from metainf_core.fits import fit_influence, params_as  # noqa: E402
from metainf_core.influence import GaussNewtonConfig, GaussNewtonFit, task_gradients  # noqa: E402
from metainf_core.influence.gauss_newton import orthogonal_columns  # noqa: E402
from metainf_core.ranking import Target, all_scores  # noqa: E402
from metainf_core.service import open_run  # noqa: E402

CLI_GN = InfluenceConfig(method="gn", n_orth=512, dtype="float32")  # what `fit DIR --method gn` fits


def make_run(work: Path, tasks: int) -> Path:
    from metainf_core.train import train

    out = work / f"protonet-fmnist-{tasks}"
    if (out / "meta.json").is_file():
        return out
    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=tasks, test_tasks=32)
    train_cfg = TrainConfig(algo="protonet", arch="conv4", filters=16, steps=40, meta_batch=8, lr=2e-3, checkpoint_every=40)
    return train(task_cfg, train_cfg, out, progress=False, device="cpu")


def timed_fit(cmd: list[str], threads: int, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "METAINF_CACHE": str(cache), "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout)
    info = json.loads((Path(out["cache"]) / "info.json").read_text())
    return {"wall": wall, "fit": float(info["fit_seconds"]), "merge": info.get("merge_seconds"), "out": out, "cache": cache}


def fitted(run, cache: Path):
    os.environ["METAINF_CACHE"] = str(cache)
    return fit_influence(run, CLI_GN)


def scores_of(run, inf, targets: list[str], k: int) -> np.ndarray:
    inf = inf.with_truncation(min(k, inf.num_columns))
    return np.stack([all_scores(run, inf, Target.parse(t, run), CLI_GN.dtype) for t in targets])


def agreement(a: np.ndarray, b: np.ndarray) -> str:
    pearson = [float(np.corrcoef(x, y)[0, 1]) for x, y in zip(a, b, strict=True)]
    top5 = [len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(a, b, strict=True)]
    return (f"Pearson min {min(pearson):.6f}, max |diff| / max |score| {np.abs(a - b).max() / np.abs(a).max():.2e}, "
            f"top-5 overlap mean {np.mean(top5):.2f}")  # fmt: skip


def reversed_stream(run):
    """The 1-process fit with the tasks streamed in reverse order (in-process, 1 thread): how much
    the stream order alone moves the scores when N_orth < rank V."""
    from metainf_core.config import InfluenceMethod
    from metainf_core.influence import influence_from_projections

    torch.set_num_threads(1)
    params = params_as(run, CLI_GN.dtype)
    args = (run.model, run.spec, params, run.train_tasks, run.dataset)
    fit = GaussNewtonFit(*args, GaussNewtonConfig(n_orth=CLI_GN.n_orth, task_batch=CLI_GN.task_batch))
    fit.add_tasks(np.arange(len(run.train_tasks))[::-1])
    factor = fit.factor(CLI_GN.damping)
    proj = task_gradients(*args, None, 32) @ factor.factor
    return influence_from_projections(factor, proj, InfluenceMethod.GN, select=False)


def cost_model(run, n: int, n_orths: list[int], q_factors: list[int]) -> dict:
    torch.set_num_threads(1)
    params = params_as(run, CLI_GN.dtype)
    args = (run.model, run.spec, params, run.train_tasks, run.dataset)
    fit = GaussNewtonFit(*args, GaussNewtonConfig(n_orth=CLI_GN.n_orth, task_batch=CLI_GN.task_batch))
    fit.add_tasks([0])  # warm-up (first-call overheads)
    t = time.perf_counter()
    fit.add_tasks(np.arange(1, n + 1))
    c_col = (time.perf_counter() - t) / n
    task_gradients(*args, np.arange(8), 32)
    t = time.perf_counter()
    task_gradients(*args, np.arange(n), 32)
    c_grad = (time.perf_counter() - t) / n
    q = fit.w.numel()
    merges = {}
    for qf in q_factors:
        for n_orth in n_orths:
            rows = torch.randn(2 * n_orth, qf * q, dtype=torch.float32)
            t = time.perf_counter()
            orthogonal_columns(rows, n_orth, 8192)
            merges[(n_orth, qf * q)] = time.perf_counter() - t
    return {"columns": c_col, "gradients": c_grad, "q": q, "merge": merges, "rows_per_task": fit.num_buffered / (n + 1)}


def bench_diagnostics(work: Path, snapshots: int, tmp: Path) -> None:
    """``diagnose`` over ``snapshots`` history snapshots: 1 process vs 2 ranks, 1 thread each."""
    from metainf_core.train import train

    out = work / f"maml-fmnist-history-{snapshots}"
    if not (out / "meta.json").is_file():
        task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=64, test_tasks=32)
        train_cfg = TrainConfig(algo="maml", arch="conv3", filters=16, steps=4 * snapshots, meta_batch=4, lr=3e-3,
                                inner_lr=0.4, checkpoint_every=4, keep_history=True)  # fmt: skip
        train(task_cfg, train_cfg, out, progress=False, device="cpu")
    cmd = ["diagnose", str(out), "--tasks", "8", "--steps", "5", "--quiet"]
    launches = {"1 rank x 1 thread": [sys.executable, "-m", "metainf_core", *cmd],
                "2 ranks x 1 thread": [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m", "metainf_core", *cmd]}  # fmt: skip
    rows, walls = {}, {}
    for name, c in launches.items():
        env = {**os.environ, "METAINF_CACHE": str(tmp / f"diag-{len(walls)}"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        t = time.perf_counter()
        res = subprocess.run(c, capture_output=True, text=True, env=env, cwd=REPO)
        walls[name] = time.perf_counter() - t
        if res.returncode:
            raise SystemExit(f"{' '.join(c)} failed:\n{res.stderr[-3000:]}")
        rows[name] = json.loads(res.stdout)["rows"]
    a, b = (np.array([[r[k] for k in sorted(r)] for r in rows[n]], dtype=float) for n in launches)
    print(f"\ndiagnose over {len(a)} snapshots ({out.name}, conv3x16 MAML, T = 5, 8 test tasks), from an empty cache:")
    for name, wall in walls.items():
        print(f"  {name:<20} {wall:7.1f} s wall  ({wall / len(a):.2f} s/snapshot)")
    one, two = walls.values()
    print(f"  speed-up of 2 ranks: {one / two:.2f}x; rows equal to {np.abs(a - b).max():.1e} (max abs difference)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=192, help="training tasks of the benchmark run")
    ap.add_argument("--work", default=str(REPO / ".cache" / "bench-distributed"), help="where the run is trained once")
    ap.add_argument("--cost-tasks", type=int, default=16, help="tasks timed per cost-model stage")
    ap.add_argument("--skip-order", action="store_true", help="skip the reversed-stream-order baseline (one more fit)")
    ap.add_argument("--snapshots", type=int, default=12, help="history snapshots for the diagnose timing (0: skip it)")
    ap.add_argument("--only-diagnostics", action="store_true", help="time only diagnose (no fits, no cost model)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    if args.only_diagnostics:
        bench_diagnostics(work, args.snapshots, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    run_dir = make_run(work, args.tasks)
    run = open_run(run_dir)
    m, q = len(run.train_tasks), sum(p.numel() for p in run.params.values())
    print(f"run: {run_dir.name}, ProtoNet conv4x16 on Fashion-MNIST, M = {m} tasks, q = {q:,}; "
          f"fit: --method gn (float32, N_orth = {CLI_GN.n_orth}); {os.cpu_count()} CPU cores")  # fmt: skip
    fit_cmd = ["fit", str(run_dir), "--method", "gn", "--quiet"]
    py = [sys.executable, "-m", "metainf_core", *fit_cmd]
    trun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m", "metainf_core", *fit_cmd]
    rows = {
        "1 rank x 1 thread": timed_fit(py, 1, tmp / "c11"),
        "1 rank x 2 threads": timed_fit(py, 2, tmp / "c12"),
        "2 ranks x 1 thread": timed_fit(trun, 1, tmp / "c21"),
    }
    print(f"\n{'launch':<20} {'wall s':>8} {'fit s':>8} {'tasks/s (fit)':>14} {'merge s':>8}  tasks_per_rank")
    for name, r in rows.items():
        print(f"{name:<20} {r['wall']:8.1f} {r['fit']:8.1f} {m / r['fit']:14.2f} {r['merge'] if r['merge'] is not None else '-':>8}  {r['out']['tasks_per_rank']}")
    base, two = rows["1 rank x 1 thread"], rows["2 ranks x 1 thread"]
    print(f"speed-up of 2 ranks over 1 rank x 1 thread: {base['fit'] / two['fit']:.2f}x (fit), {base['wall'] / two['wall']:.2f}x (wall)")
    print(f"speed-up of 2 ranks over 1 rank x 2 threads: {rows['1 rank x 2 threads']['fit'] / two['fit']:.2f}x (fit), "
          f"{rows['1 rank x 2 threads']['wall'] / two['wall']:.2f}x (wall)")  # fmt: skip
    print(f"same cache key: {Path(base['out']['cache']).name == Path(two['out']['cache']).name}; "
          f"truncation 1 rank {base['out']['truncation']}, 2 ranks {two['out']['truncation']}")  # fmt: skip
    targets = [str(i) for i in range(8)]
    one, dist2 = fitted(run, base["cache"]), fitted(run, two["cache"])
    rev = reversed_stream(run) if not args.skip_order else None
    for k in (one.truncation, 128):
        a = scores_of(run, one, targets, k)
        print(f"k = {k}: 2-rank vs 1-process scores, {len(targets)} test tasks: {agreement(a, scores_of(run, dist2, targets, k))}")
        if rev is not None:
            print(f"k = {k}: 1-process, tasks streamed in reverse order, vs 1-process: {agreement(a, scores_of(run, rev, targets, k))}")

    cm = cost_model(run, args.cost_tasks, [128, 256, 512], [1, 4])
    print(f"\ncost model (1 thread, {args.cost_tasks} tasks each): columns {cm['columns']:.3f} s/task, "
          f"gradients {cm['gradients']:.4f} s/task")  # fmt: skip
    print("Algorithm 2 merge of 2·N_orth rows of length q (one tree level):")
    for (n_orth, qq), s in cm["merge"].items():
        print(f"  N_orth {n_orth:4d}, q {qq:7,d}: {s:7.3f} s")
    merge = cm["merge"][(CLI_GN.n_orth, q)]
    # the stream reduces its buffer (one Algorithm 2 of 2·N_orth rows) every N_orth / rows-per-task tasks
    reduce = merge * cm["rows_per_task"] / CLI_GN.n_orth
    print(f"  {cm['rows_per_task']:.0f} rows per task: buffer reductions add {reduce:.3f} s/task (amortised)")
    for n in (1, 2, 4, 8):
        per_rank = math.ceil(m / n)
        pred = per_rank * (cm["columns"] + reduce + cm["gradients"]) + math.ceil(math.log2(n)) * merge
        print(f"  predicted streaming + projections + merge on {n} rank(s) x 1 thread, M = {m}: {pred:6.1f} s"
              + (f"  (measured fit, incl. truncation choice: {base['fit'] if n == 1 else two['fit']:.1f} s)" if n <= 2 else ""))
    if args.snapshots:
        bench_diagnostics(work, args.snapshots, tmp)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
