"""Gauss-Newton TLXML throughput, ranking latency and streaming memory (prints figures, no assertions).

    .venv/bin/python bench/bench_influence.py [--tasks 2] [--stream-tasks 64]

Random fashion-mnist-sized tasks (5-way 5-shot 5-query, 1x28x28), conv4 with 32 filters
(MAML q = 28,485; ProtoNet q = 28,320), float32, CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other benches

from metainf_core.influence.columns import create_columns_function, create_naive_columns_function  # noqa: E402
from metainf_core.influence.flat import ParamLayout  # noqa: E402
from metainf_core.influence.gauss_newton import auto_chunk, orthogonal_columns  # noqa: E402
from metainf_core.influence.scores import TaskInfluence  # noqa: E402
from metainf_core.learners import LearnerSpec, params_of  # noqa: E402
from metainf_core.models import build_model  # noqa: E402

WAYS, SHOTS, QUERIES, SHAPE = 5, 5, 5, (1, 28, 28)


def _task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sy = torch.arange(WAYS).repeat_interleave(SHOTS)
    return torch.rand(WAYS * SHOTS, *SHAPE), sy, torch.rand(WAYS * QUERIES, *SHAPE)


def tasks_per_second(fn, w: torch.Tensor, n: int) -> float:
    fn(w, *_task())  # warm-up
    tasks = [_task() for _ in range(n)]
    t = time.perf_counter()
    for task in tasks:
        fn(w, *task)
    return n / (time.perf_counter() - t)


def hardware_floor(model, spec: LearnerSpec, layout: ParamLayout, w: torch.Tensor, algo: str) -> float:
    """Seconds per task of the passes every exact column method needs, with no overhead.

    ProtoNet: one backward through the 50-image task per column. MAML: one backward through the
    query images per column plus one Hessian-vector product of the support loss per column
    (the columns are independent, so no method shares these passes).
    """
    from torch.func import grad, vjp

    from metainf_core.influence.flat import create_flat_forward_function, create_flat_support_loss_function

    sx, sy, qx = _task()
    n_cols = WAYS * QUERIES * (WAYS - 1)
    fwd = create_flat_forward_function(model, layout, second_order=False)
    x = torch.cat([sx, qx]) if algo == "protonet" else qx
    _, pull = vjp(lambda p: fwd(p, x), w)
    cot = torch.randn(x.shape[0], fwd(w, x).shape[1])
    t = time.perf_counter()
    for _ in range(10):
        pull(cot)
    floor = (time.perf_counter() - t) / 10 * n_cols
    if algo == "maml":
        inner = grad(create_flat_support_loss_function(model, layout))
        _, pull_h = vjp(lambda p: inner(p, sx, sy), w)
        u = torch.randn_like(w)
        t = time.perf_counter()
        for _ in range(10):
            pull_h(u)
        floor += (time.perf_counter() - t) / 10 * n_cols
    return floor


def bench_columns(n: int) -> None:
    for algo in ("maml", "protonet"):
        model = build_model("conv4", algo, SHAPE, WAYS, 32)
        spec = LearnerSpec(algo, WAYS, inner_lr=0.4, inner_steps=1)
        params = params_of(model)
        layout = ParamLayout.from_params(params)
        w = layout.flatten(params)
        variants = {
            "structured, auto chunk (default)": create_columns_function(model, spec, layout, chunk=auto_chunk(layout.numel)),
            "structured, loop": create_columns_function(model, spec, layout, chunk=1),
            "naive vmap over vjp": create_naive_columns_function(model, spec, layout, chunk=None),
            "naive loop over vjp": create_naive_columns_function(model, spec, layout, chunk=1),
        }
        if algo == "maml":
            variants["structured, vmapped jvp-of-grad HVPs (chunk 25)"] = create_columns_function(
                model, spec, layout, chunk=25, hvp="forward"
            )
        print(f"{algo}: q = {layout.numel}, {WAYS * QUERIES * (WAYS - 1)} columns per task")
        rates = {}
        for name, fn in variants.items():
            rates[name] = tasks_per_second(fn, w, n)
            print(f"  {name:52s} {rates[name]:8.3f} tasks/s  ({1 / rates[name]:.2f} s/task)")
        floor = hardware_floor(model, spec, layout, w, algo)
        print(f"  floor on this CPU (the unavoidable passes alone): {floor:.2f} s/task "
              f"-> at most {rates['naive vmap over vjp'] ** -1 / floor:.1f}x the naive vmap")
        base = rates["structured, auto chunk (default)"]
        print(f"  speed-up of default vs naive vmap: {base / rates['naive vmap over vjp']:.1f}x, "
              f"vs naive loop: {base / rates['naive loop over vjp']:.1f}x")


def bench_ranking(m: int = 8192, r: int = 512, q: int = 28485) -> None:
    u = torch.randn(q, r) / q**0.5
    inf = TaskInfluence(factor=u, projections=torch.randn(m, r), signs=torch.ones(r), eigenvalues=torch.ones(r), truncation=r)
    g = torch.randn(q)
    for _ in range(3):
        inf.rank(g)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        inf.rank(g)
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"ranking M = {m}, r = {r}, q = {q} (Uᵀg + P·(Uᵀg) + sort): median {1e3 * times[10]:.2f} ms, "
          f"max {1e3 * times[-1]:.2f} ms (gradient excluded)")


def bench_streaming(tasks: int, n_orth: int = 512, q: int = 28485, per_task: int = 100) -> None:
    """Algorithm 1 with random columns standing in for real ones (same shapes, reduction cost)."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    blocks: list[torch.Tensor] = []
    buffered, reductions, t = 0, 0, time.perf_counter()
    for j in range(tasks):
        blocks.append(torch.randn(per_task, q))
        buffered += per_task
        if buffered > 2 * n_orth:
            rows = orthogonal_columns(torch.cat(blocks), n_orth)
            blocks, buffered, reductions = [rows], rows.shape[0], reductions + 1
        if j + 1 in (tasks // 4, tasks // 2, tasks):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"  streamed {j + 1:5d} tasks: {reductions} reductions, peak RSS +{(rss - rss0) / 1024:.0f} MiB")
    dt = time.perf_counter() - t
    bound = q * (2 * n_orth + per_task) * 4 / 2**20
    print(f"streaming {tasks} tasks x {per_task} columns, N_orth = {n_orth}: {dt / reductions:.2f} s per reduction, "
          f"{dt / tasks * 1e3:.0f} ms/task overhead; buffer bound {bound:.0f} MiB (independent of M; "
          f"8,192 tasks would need {8192 * per_task // n_orth} reductions)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=2, help="tasks timed per column variant")
    ap.add_argument("--stream-tasks", type=int, default=64, help="simulated tasks for the memory figure")
    ap.add_argument("--skip-columns", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_ranking()
    bench_streaming(args.stream_tasks)
    if not args.skip_columns:
        bench_columns(args.tasks)


if __name__ == "__main__":
    main()
