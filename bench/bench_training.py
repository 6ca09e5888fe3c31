"""Meta-training step time against its FLOP floor (issue 23 item 1; prints figures, no assertions).

    .venv/bin/python bench/bench_training.py [--steps 4] [--threads 1,2] [--only protonet,maml,synthetic]

For each learner it times one meta-training step (batch assembly excluded, as the step is what
`train` repeats) for variants that differ in one thing, all measured in this run:
- "before": the pooling and allocator of the code before issue 23 (strided-maxima pooling in the
  backward, glibc's default allocator);
- "+ retained allocations": `train.retained_allocations` (no fresh pages for each step's activations);
- "+ fused pooling (now)": what `train` runs now (`models.MaxPool2x2` takes torch's pooling kernel when a
  gradient may be taken);
- "+ channels_last": NHWC activations (kept only if it gains ≥ 1.3×).

The floor: the step's convolution FLOPs (forward, weight and input gradients; ProtoNet 2·K²·Cin·Cout·H·W
per image and layer) divided by the rate of one plain un-vmapped conv2d forward + backward of the
largest layer over the same images, measured here; cheap element-wise layers (batch norm, ReLU,
pooling) are not in the floor, so a ratio of 1 is out of reach. Wall and process CPU seconds are
both printed: wall is what a user waits, CPU time is steady when other processes share the machine
(with one thread; with two, CPU time counts both).

Tried and not kept (issue 23): ``torch.compile`` of the vmapped step (258 s to compile, then 1.76 s
CPU per ProtoNet step against 1.29 s eager), ``channels_last`` (the last variant: slower here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the other benches

from metainf_core import models  # noqa: E402
from metainf_core.learners import LearnerSpec, create_batched_task_metrics_function, params_of  # noqa: E402
from metainf_core.train import retained_allocations  # noqa: E402


def strided_pool_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooling of the code before issue 23: four strided views, also when differentiated."""
    return models.strided_max_pool(x)


SETTINGS = {  # learner -> (algo, arch, filters, input shape, ways, shots, queries, meta-batch)
    "protonet": ("protonet", "conv4", 32, (1, 28, 28), 5, 5, 5, 32),  # TLXML B.3 Omniglot ProtoNet (28,320 parameters)
    "maml": ("maml", "conv3", 32, (1, 28, 28), 5, 5, 5, 32),  # TLXML B.3 Omniglot MAML (conv3×32, our 20,453)
    "synthetic": ("maml", "mlp-synthetic", 0, (2,), 3, 5, 5, 32),  # TLXML B.3 synthetic (63 parameters)
}


def random_batch(shape: tuple[int, ...], ways: int, shots: int, queries: int, tasks: int) -> tuple[torch.Tensor, ...]:
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous()
    return torch.rand(tasks, ways * shots, *shape), sy, torch.rand(tasks, ways * queries, *shape), qy


def time_steps(step: Callable[[], None], n: int) -> tuple[float, float]:
    """Mean wall and CPU seconds per call after two warm-up calls."""
    step(), step()
    w, c = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    return (time.perf_counter() - w) / n, (time.process_time() - c) / n


def make_step(name: str, channels_last: bool) -> Callable[[], None]:
    algo, arch, filters, shape, ways, shots, queries, tasks = SETTINGS[name]
    torch.manual_seed(0)
    model = models.build_model(arch, algo, shape, ways, filters or 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    metrics = create_batched_task_metrics_function(model, LearnerSpec(algo, ways))
    batch = random_batch(shape, ways, shots, queries, tasks)

    def step() -> None:
        loss, acc = metrics(params, *batch)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        loss.mean().item(), acc.mean().item()

    return step


def conv_floor(name: str, n: int) -> tuple[float, float] | None:
    """Wall and CPU seconds of the step's convolutions at the rate of one plain conv2d pass measured here."""
    algo, arch, filters, shape, ways, shots, queries, tasks = SETTINGS[name]
    if not arch.startswith("conv"):
        return None
    images = tasks * ways * (shots + queries)
    depth = int(arch[-1])
    flops, (c, h, w) = 0.0, shape
    for layer in range(depth):
        per_pass = 2 * 9 * c * filters * h * w * images  # multiply-adds ×2
        flops += per_pass * (2 if layer == 0 else 3)  # forward + weight grad (+ input grad after layer 0)
        c, h, w = filters, h // 2, w // 2
    if algo == "maml":  # second order: the inner step's backward and its differentiation, ≈ 2 more passes on the support set
        flops *= 1 + 2 * shots / (shots + queries)
    x = torch.randn(images, filters, shape[1], shape[2])
    weight = torch.randn(filters, filters, 3, 3, requires_grad=True)
    xr = x.requires_grad_()

    def one() -> None:
        y = F.conv2d(xr, weight, padding=1)
        y.backward(torch.ones_like(y))

    wall, cpu = time_steps(one, n)
    pass_flops = 3 * 2 * 9 * filters * filters * shape[1] * shape[2] * images  # forward + two gradients
    return flops / pass_flops * wall, flops / pass_flops * cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts to try")
    ap.add_argument("--only", default="protonet,maml,synthetic")
    args = ap.parse_args()
    fused_forward = models.MaxPool2x2.forward
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, steps per variant {args.steps}")
    for name in args.only.split(","):
        algo, arch, filters, _, ways, shots, queries, tasks = SETTINGS[name]
        print(f"\n{name}: {algo} {arch}{'×' + str(filters) if filters else ''}, {ways}-way {shots}-shot {queries}-query, meta-batch {tasks}")
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            floor = conv_floor(name, args.steps)
            variants = [("before (strided pooling, default allocator)", True, False, False),
                        ("+ retained allocations", True, True, False),
                        ("+ fused pooling (now)", False, True, False)]  # fmt: skip
            if arch.startswith("conv"):
                variants.append(("+ channels_last", False, True, True))
            base = base_cpu = None
            for label, strided, retained, channels_last in variants:
                models.MaxPool2x2.forward = strided_pool_forward if strided else fused_forward
                try:
                    with retained_allocations() if retained else nullcontext():
                        wall, cpu = time_steps(make_step(name, channels_last), args.steps)
                finally:
                    models.MaxPool2x2.forward = fused_forward
                base, base_cpu = base or wall, base_cpu or cpu
                floor_text = (f"  {wall / floor[0]:4.1f}× the floor's wall ({floor[0]:.3f} s), {cpu / floor[1]:4.1f}× its CPU"
                              if floor else "")
                print(f"  {threads} thread{'s' if threads > 1 else ' '} {label:44s} {wall * 1e3:9.1f} ms/step wall "
                      f"{cpu * 1e3:9.1f} ms CPU  {base / wall:4.2f}× before (wall), {base_cpu / cpu:4.2f}× (CPU){floor_text}")


if __name__ == "__main__":
    main()
