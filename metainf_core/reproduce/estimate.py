"""What an experiment of the reproduction report would cost on this machine, without running it.

``python -m metainf_core reproduce --scale paper --estimate`` (any scale) lists, per experiment, the
runs it would train (runs shared with an earlier experiment — same task and training configuration —
are counted once, where ``reproduce`` trains them), their meta-training steps, the Gauss-Newton fits
and a predicted time, from a per-network cost model measured by a short timing probe:

* ``probe_network``: a few meta-training steps (Adam, the network's meta-batch of random images of
  the dataset's shape: the cost does not depend on the pixels) and the Gauss-Newton columns of one
  or two tasks in float64, as ``influence.gauss_newton.GaussNewtonFit`` computes them;
* ``probe_linalg``: float64 matmul throughput and one 512 × 512 ``eigh``, from which the buffer
  reductions of Algorithm 1 (Gram matrix of the n = N_max + rows buffer, its ``eigh``, the rebuilt
  N_orth rows) are scaled by their FLOPs (n²q + N_orth·n·q multiply-adds, n³ for ``eigh``).

Other work is scaled from the probe: one task's evaluation, test-task gradient or helpfulness
gradient costs train-step / meta-batch; one landscape diagnostic (T inner steps, 20 Lanczos
iterations) 20 of those. Predictions are for one intra-op thread (OMP_NUM_THREADS=1, as the probe
runs); two threads: divided by 1.7, the speed-up ``experiments.MEDIUM_COST`` measured. The probe's
training steps run as ``train`` runs them (``train.retained_allocations``). N ranks (torchrun, one
thread each): independent runs dealt to the ranks (the longest first: the slowest rank's sum), a fit's
columns and the per-task work divided by N, its buffer reductions plus ⌈log₂ N⌉ tree-merge levels. The
numbers are lower bounds for the paper scale: memory traffic of the 16,384 × 28,896 float64 buffer
(3.8 GB) and Python overhead are not modelled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.reproduce.experiments import EXPERIMENTS, _configs, noise_count
from metainf_core.reproduce.runs import run_key
from metainf_core.train import retained_allocations

TWO_THREAD_SPEEDUP = 1.7  # experiments.MEDIUM_COST: "2 threads ≈ 1/1.7 of these times"
DIAGNOSTIC_TASK_EVALS = 20  # one landscape diagnostic task ≈ 20 task evaluations (MEDIUM_COST: 1.1 s vs ~0.06 s)
INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "fashion-mnist": (1, 28, 28), "omniglot": (1, 28, 28), "mini-imagenet": (3, 84, 84), "tiny-imagenet": (3, 32, 32),
    "cifar-fs": (3, 32, 32), "fc100": (3, 32, 32), "synthetic": (2,),
}  # fmt: skip


@dataclass(frozen=True)
class Net:
    """What a probe measures: a learner's network on one input shape with one task layout."""

    algo: str
    arch: str
    filters: int
    input_shape: tuple[int, ...]
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int = 1

    @classmethod
    def of(cls, task: TaskConfig, train: TrainConfig) -> Net:
        return cls(train.algo, train.arch, train.filters, INPUT_SHAPES[task.dataset], task.ways, task.shots, task.queries,
                   train.meta_batch, train.inner_steps)  # fmt: skip

    def label(self) -> str:
        shape = "×".join(map(str, self.input_shape))
        return f"{self.arch}/{self.filters} {self.algo} {shape} {self.ways}-way mb {self.meta_batch}"


@dataclass(frozen=True)
class Costs:
    """Seconds per meta-training step and per task of a Gauss-Newton fit (columns only), rows per task, parameters."""

    train_step_s: float
    gn_task_s: float
    rows_per_task: int
    num_parameters: int


@dataclass(frozen=True)
class Linalg:
    """float64 matmul GFLOP/s (multiply-adds counted twice) and the seconds of one 512 × 512 ``eigh``."""

    gflops: float
    eigh_512_s: float


def _random_batch(net: Net, tasks: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    sy = torch.arange(net.ways).repeat_interleave(net.shots).expand(tasks, -1).contiguous()
    qy = torch.arange(net.ways).repeat_interleave(net.queries).expand(tasks, -1).contiguous()
    sx = torch.rand(tasks, sy.shape[1], *net.input_shape, generator=g, dtype=dtype)
    qx = torch.rand(tasks, qy.shape[1], *net.input_shape, generator=g, dtype=dtype)
    return sx, sy, qx, qy


def probe_network(net: Net, steps: int = 2, budget_s: float = 8.0, tasks: int = 4) -> Costs:
    """Time ``steps`` meta-training steps on ``tasks`` tasks after one warm-up step, scaled to the
    meta-batch (the tasks are vmapped: cost ∝ tasks); then the Gauss-Newton columns of one task with one
    query per class, scaled to the task's queries (cost ∝ rows; a second task when the first took under
    ``budget_s``, the first includes the set-up)."""
    from metainf_core.influence.columns import create_columns_function
    from metainf_core.influence.flat import ParamLayout
    from metainf_core.influence.gauss_newton import auto_chunk
    from metainf_core.learners import LearnerSpec, create_batched_task_metrics_function, params_of
    from metainf_core.models import build_model, count_parameters

    torch.manual_seed(0)
    model = build_model(net.arch, net.algo, net.input_shape, net.ways, net.filters)
    spec = LearnerSpec(net.algo, net.ways, inner_steps=net.inner_steps)
    params = {k: v.detach().clone().requires_grad_() for k, v in params_of(model).items()}
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    metrics = create_batched_task_metrics_function(model, spec)
    sx, sy, qx, qy = _random_batch(net, min(tasks, net.meta_batch), torch.float32)
    times: list[float] = []
    with retained_allocations():
        _time_steps(times, steps, budget_s, lambda: _train_step(metrics, opt, params, sx, sy, qx, qy))
    train_step = sum(times[1:]) / len(times[1:]) * net.meta_batch / min(tasks, net.meta_batch)


    model64 = model.double()
    p64 = {k: v.detach().double() for k, v in params_of(model64).items()}
    layout = ParamLayout.from_params(p64)
    w = layout.flatten(p64).detach()
    columns = create_columns_function(model64, spec, layout, structured=True, chunk=auto_chunk(layout.numel), hvp="reverse")
    sx, sy, qx, _ = _random_batch(replace(net, queries=1), 2, torch.float64)
    took, rows = [], 0
    for k in range(2):
        t = time.perf_counter()
        rows = int(columns(w, sx[k], sy[k], qx[k], k).shape[0])
        took.append(time.perf_counter() - t)
        if took[0] > budget_s:
            break
    return Costs(train_step, took[-1] * net.queries, rows * net.queries, count_parameters(model))


def _train_step(metrics: Callable[..., Any], opt: torch.optim.Optimizer, params: dict[str, torch.Tensor], *batch: torch.Tensor) -> None:
    loss, _ = metrics(params, *batch)
    opt.zero_grad(set_to_none=True)
    loss.mean().backward()
    opt.step()


def _time_steps(times: list[float], steps: int, budget_s: float, step: Callable[[], None]) -> None:
    """Append the seconds of a warm-up step and ``steps`` more (one, when the warm-up took over ``budget_s``)."""
    while len(times) < steps + 1:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if times[0] > budget_s:  # a slow network: one timed step after the warm-up is enough
            steps = 1


def makespan(durations: Sequence[float], ranks: int) -> float:
    """Seconds until ``ranks`` workers finish independent jobs, each taking the next job when free, longest first."""
    finish = [0.0] * max(1, ranks)
    for d in sorted(durations, reverse=True):
        finish[finish.index(min(finish))] += d
    return max(finish)


def probe_linalg(n: int = 512) -> Linalg:
    """float64 matmul throughput (a 512 × 4,096 Gram matrix, best of 3) and one n × n ``eigh``."""
    a = torch.randn(n, 4096, dtype=torch.float64)
    best = math.inf
    for _ in range(3):
        t = time.perf_counter()
        g = a @ a.T
        best = min(best, time.perf_counter() - t)
    t = time.perf_counter()
    torch.linalg.eigh(g)
    return Linalg(2 * n * n * 4096 / best / 1e9, time.perf_counter() - t)


def reductions(m: int, rows_per_task: int, n_orth: int, n_max: int = 0) -> tuple[int, int]:
    """Number of Algorithm 1 buffer reductions over ``m`` tasks and the buffer size at one (as
    ``GaussNewtonFit.add_tasks``: reduce to ≤ N_orth rows whenever more than N_max are buffered)."""
    limit = n_max or 2 * n_orth
    buffered, count, size = 0, 0, 0
    for _ in range(m):
        buffered += rows_per_task
        if buffered > limit:
            count, size = count + 1, buffered
            buffered = min(n_orth, buffered)
    return count, max(size, buffered)


def reduction_seconds(n: int, q: int, n_orth: int, la: Linalg) -> float:
    """One reduction of an n-row buffer of length q: Gram matrix, ``eigh``, the ≤ N_orth rebuilt rows."""
    flops = 2.0 * n * n * q + 2.0 * min(n_orth, n) * n * q
    return flops / (la.gflops * 1e9) + la.eigh_512_s * (n / 512) ** 3


def fit_seconds(k: Costs, m: int, n_orth: int, la: Linalg) -> float:
    """One Gauss-Newton fit over ``m`` tasks: every task's columns, then Algorithm 1's buffer
    reductions (one more at the end, to N_orth rows)."""
    count, size = reductions(m, k.rows_per_task, n_orth)
    return m * k.gn_task_s + (count + 1) * reduction_seconds(size, k.num_parameters, n_orth, la)


@dataclass
class Plan:
    """The work of one experiment: runs to train, fits, and other per-task work, by network."""

    runs: list[tuple[str, Net, int, int]] = field(default_factory=list)  # (run key, network, steps, test tasks)
    fits: list[tuple[str, Net, int, int]] = field(default_factory=list)  # (fit key, network, M, N_orth)
    tasks: list[tuple[Net, int]] = field(default_factory=list)  # (network, task evaluations / gradients)

    def run(self, task: TaskConfig, train: TrainConfig, tag: str = "") -> Net:
        net = Net.of(task, train)
        self.runs.append((run_key(task, train) + tag, net, train.steps, task.test_tasks))
        return net

    def fit(self, task: TaskConfig, train: TrainConfig, method: str, n_orth: int) -> None:
        self.fits.append((f"{run_key(task, train)}-{method}-{n_orth}", Net.of(task, train), task.train_tasks, n_orth))


def _noise_plan(c: dict[str, Any], p: Plan, largest_only: bool = False) -> None:
    ms = [max(c["train_tasks"])] if largest_only else c["train_tasks"]
    for dataset, ways in c["datasets"]:
        for algo in c["algos"]:
            for m in ms:
                for seed in c["seeds"]:
                    task, train = _configs(c, dataset=dataset, ways=ways, algo=algo, seed=seed, train_tasks=m, noise=noise_count(c, m))
                    net = p.run(task, train)
                    p.fit(task, train, c["method"], c.get("n_orth", 512))
                    p.tasks.append((net, 2 * c.get("scored_tests", c["test_tasks"])))  # test gradients and scores


def plan(key: str, c: dict[str, Any]) -> Plan:
    """The runs, fits and per-task work experiment ``key`` does with configuration ``c``."""
    p = Plan()
    n_orth = c.get("n_orth", 512)
    if key == "e2-noise":
        _noise_plan(c, p)
    elif key == "e3-superclass":
        _noise_plan(c, p, largest_only=True)
    elif key == "e4-one-step":
        for algo in c["algos"]:
            for seed in c["seeds"]:
                m = c["train_tasks"]
                task, train = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=algo, seed=seed, train_tasks=m, noise=noise_count(c, m))
                net = p.run(task, train)
                p.fit(task, train, c["method"], n_orth)
                t = c["test_tasks"]
                p.tasks.append((net, m + t // 2 + (len(c["xis"]) + 1) * t))  # helpfulness of every training task, target, evaluations
                if c["leave_out"]:
                    p.run(task, replace(train, exclude_tasks=tuple(range(c["k"]))), "-leave-out")
                    p.tasks.append((net, t))
    elif key == "e6-landscapes":
        for algo in c["algos"]:
            task, train = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=algo, seed=c["seed"], train_tasks=c["train_tasks"], keep_history=True)
            net = p.run(task, train)
            snaps = train.steps // train.checkpoint_every + (1 if c.get("initial_snapshot") else 0)
            p.tasks.append((net, snaps * (DIAGNOSTIC_TASK_EVALS * c["diag_tasks"] + c["test_tasks"] + c.get("train_eval_tasks", 0))))
    elif key == "e1-distinction":
        task, train = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=c["algo"], seed=c["seed"], train_tasks=c["train_tasks"])
        net = p.run(task, train)
        for method in c["methods"]:  # the exact Hessian of these small MLPs costs about as much as a GN fit
            p.fit(task, train, method, n_orth)
        p.tasks.append((net, c["train_tasks"] * len(c["truncations"]) + c["degrade_tasks"] * (len(c["alphas"]) + len(c["ratios"]))))
    elif key == "e5-removal":
        task, train = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=c["algo"], seed=c["seed"], train_tasks=c["fidelity_tasks"])
        net = p.run(task, train)
        for i in range(c["draws"] * len(c["retrain_seeds"])):  # retraining without each removal set
            p.run(task, replace(train, exclude_tasks=(i,)), f"-retrain-{i}")
        for method in ("exact", "gn", "task-if"):
            p.fit(task, train, method, n_orth)
        p.tasks.append((net, (c["draws"] * 5 + 1) * c["test_tasks"]))
        d = c["detect_tasks"]
        for flips, noise in ((d // 4, 0), (0, d // 8)):
            t2, tr2 = _configs(c, dataset=c["dataset"], ways=c["ways"], algo=c["algo"], seed=c["seed"], train_tasks=d, noise=noise, flips=flips)
            net2 = p.run(t2, tr2)
            p.fit(t2, tr2, c["method"], n_orth)
            for tag in ("-lowest", "-random"):
                p.run(t2, replace(tr2, exclude_tasks=(0,)), f"-detect{tag}")
            p.tasks.append((net2, d + (c["random_draws"] + 3) * c["test_tasks"]))
    elif key == "e7-exact-vs-gn":
        for seed in c["seeds"]:
            task, train = _configs(c, dataset="synthetic", ways=3, algo=c["algo"], seed=seed, train_tasks=c["train_tasks"], noise=c["train_tasks"] // 8)
            net = p.run(task, train)
            for method in ("gn", "exact"):
                p.fit(task, train, method, n_orth)
            p.tasks.append((net, 4 * c["test_tasks"]))
    elif key == "e8-lds":
        pass  # it reads the committed LDS results (docs/results/lds): it trains and fits nothing
    else:
        raise ConfigError(f"no cost plan for experiment {key!r}")
    return p


def estimate(scale: str = "paper", only: Sequence[str] | None = None, *, probe: Callable[[Net], Costs] | None = None,
             linalg: Linalg | None = None, log: Callable[[str], None] = lambda msg: None, ranks: int = 2) -> list[dict[str, Any]]:  # fmt: skip
    """One row per experiment with a ``scale`` configuration (in report order, ``only`` as ``reproduce``):
    runs to train, their steps, GN fits, predicted hours on 1 and 2 threads and on ``ranks`` torchrun
    ranks of one thread each; then a total row. ``probe`` / ``linalg`` replace the timing probes (tests)."""
    from metainf_core.reproduce import select

    probe = probe or probe_network
    la = linalg or probe_linalg()
    log(f"linalg probe: {la.gflops:.1f} GFLOP/s float64 matmul, eigh(512) {la.eigh_512_s:.3f} s")
    costs: dict[Net, Costs] = {}

    def cost(net: Net) -> Costs:
        if net not in costs:
            t = time.perf_counter()
            costs[net] = probe(net)
            c = costs[net]
            log(f"probe {net.label()}: {c.num_parameters:,} parameters, {c.train_step_s:.3f} s / step, "
                f"GN {c.gn_task_s:.3f} s / task ({c.rows_per_task} rows) [{time.perf_counter() - t:.0f} s]")  # fmt: skip
        return costs[net]

    seen_runs: set[str] = set()
    seen_fits: set[str] = set()
    rows = []
    for key in select(only):
        c = EXPERIMENTS[key].at(scale)
        if c is None:
            continue
        p = plan(key, c)
        runs = [(k, net, steps, tests) for k, net, steps, tests in p.runs if k not in seen_runs]
        fits = [(k, net, m, n_orth) for k, net, m, n_orth in p.fits if k not in seen_fits]
        seen_runs |= {r[0] for r in runs}
        seen_fits |= {f[0] for f in fits}
        run_s = [steps * cost(net).train_step_s + tests * cost(net).train_step_s / net.meta_batch for _, net, steps, tests in runs]
        train_s = sum(run_s)
        fit_s = fit_ranks_s = 0.0
        for _, net, m, n_orth in fits:
            k = cost(net)
            fit_s += fit_seconds(k, m, n_orth, la)
            one = reduction_seconds(reductions(m, k.rows_per_task, n_orth)[1], k.num_parameters, n_orth, la)
            shard_count, _ = reductions(math.ceil(m / ranks), k.rows_per_task, n_orth)
            fit_ranks_s += math.ceil(m / ranks) * k.gn_task_s + (shard_count + 1 + math.ceil(math.log2(ranks))) * one
        other_s = sum(n * cost(net).train_step_s / net.meta_batch for net, n in p.tasks)
        total = train_s + fit_s + other_s
        total_ranks = makespan(run_s, ranks) + fit_ranks_s + other_s / ranks
        rows.append({"experiment": key, "runs": len(runs), "steps": sum(r[2] for r in runs), "fits": len(fits),
                     "train_hours": train_s / 3600, "fit_hours": fit_s / 3600, "other_hours": other_s / 3600,
                     "hours_1_thread": total / 3600, "hours_2_threads": total / 3600 / TWO_THREAD_SPEEDUP,
                     "ranks": ranks, "hours_ranks": total_ranks / 3600})  # fmt: skip
    if rows:
        rows.append({"experiment": "total", **{k: sum(r[k] for r in rows) for k in rows[0] if k not in ("experiment", "ranks")}, "ranks": ranks})
    return rows


def format_table(rows: list[dict[str, Any]], scale: str) -> str:
    """The estimate as a Markdown table."""
    head = [f"Predicted cost of `reproduce --scale {scale}` on this CPU (timing probe, OMP_NUM_THREADS=1; 2 threads = 1 thread / {TWO_THREAD_SPEEDUP})",
            "", "| experiment | runs to train | steps | GN fits | train h | fit h | other h | hours (1 thread) | hours (2 threads) "
            f"| hours ({rows[0]['ranks'] if rows else 2} ranks × 1 thread) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    body = [f"| {r['experiment']} | {r['runs']} | {r['steps']:,} | {r['fits']} | {r['train_hours']:,.1f} | {r['fit_hours']:,.1f} | "
            f"{r['other_hours']:,.1f} | {r['hours_1_thread']:,.1f} | {r['hours_2_threads']:,.1f} | {r['hours_ranks']:,.1f} |" for r in rows]  # fmt: skip
    return "\n".join(head + body)
