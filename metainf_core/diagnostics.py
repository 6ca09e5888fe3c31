"""Landscape diagnostics of a meta-train solution ω (METHODS §7; seed 003, Guiroy et al. §4, §6).

For test tasks i with support sets S_i (the paper's D_i), at parameters ω (the paper's θ^s):

- gradient coherence  E_{i≠j}[g_iᵀ g_j], g_i = −∇_θ L(S_i; ω)          (seed 003 Eq. 6; cosine too)
- trajectory coherence E_{i≠j}[cos(θ̃_i − ω, θ̃_j − ω)], θ̃_i after T steps (Eq. 5)
- flatness E_i ‖∇²_θ L(S_i; θ̃_i)‖_σ by power iteration and by Lanczos   (Eq. 3–4; HVPs only,
  influence/hvp.py).
  ‖H‖_σ is the largest |λ|; Eq. 3 writes λ_max, equal only when H ⪰ 0 (after a few steps from an
  early ω the dominant eigenvalue is often negative, so the sign is kept in ``EigenEstimate``)
- representation coherence E_{i≠j}[h_iᵀ h_j], h_i the mean penultimate feature of S_i at ω (§6)

Choices (documented departures):
- L(S; θ) is MAML's inner objective, the support cross-entropy of the network's outputs. ProtoNet
  has no weight adaptation; its support loss is the prototype loss of S classified against its own
  prototypes, and θ̃_i := ω for its flatness (the weights it classifies task i with). Its
  "trajectory" is the virtual fine-tuning path of T gradient steps on that prototype loss.
- Every MAML-family learner (proximal MAML included) adapts by T plain gradient steps of size α
  (the paper's definition), T = ``inner_steps`` and α = ``inner_lr`` unless configured.
- Representation coherence averages over *task pairs* of per-task mean features (the paper
  averages over all image pairs of the meta-test data); features use the support set's batch-norm
  statistics, as adaptation does.
- Second derivatives run on the composite batch-norm copy of the network (flat.py: the fused
  batch-norm double backward in this torch build is wrong).

``cached_diagnostics_over_history`` stores the rows under a hash of the run, its test taskset,
every snapshot file and the settings, saving each finished snapshot (a killed run resumes);
``landscape_metrics`` relates each statistic to test accuracy across snapshots (the page's plots).
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from metainf_core.cache import CacheEntry
from metainf_core.checkpoint import load_tensors
from metainf_core.config import Algorithm, DiagnosticsConfig  # DiagnosticsConfig lives in config.py (the CLI's options)
from metainf_core.exceptions import CheckpointError, ConfigError
from metainf_core.fits import run_fingerprint
from metainf_core.influence import distributed
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.hvp import EigenEstimate, hvp_of, lanczos, power_iteration
from metainf_core.io import sha256_file
from metainf_core.learners import LearnerSpec, Params, call_network, prototype_logits, with_composite_batch_norm
from metainf_core.service import Run, open_run
from metainf_core.tasks import TaskBatch
from metainf_core.train import retained_allocations

# (flat θ, support_x, support_y) -> scalar support loss L(S; θ)
SupportLossFunction = Callable[[Tensor, Tensor, Tensor], Tensor]
HISTORY_DIR = "history"
_SNAPSHOT = re.compile(r"^step_(\d+)\.safetensors$")


# ---- coherence statistics ---------------------------------------------------------------------
def mean_pairwise_inner(x: Tensor) -> float:
    """E_{i≠j}[x_iᵀ x_j] over the rows of x (n × d, n ≥ 2), from the off-diagonal Gram entries."""
    n = x.shape[0]
    if n < 2:
        raise ConfigError(f"coherence needs at least 2 tasks, got {n}")
    gram = x.double() @ x.double().T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def mean_pairwise_cosine(x: Tensor) -> float:
    """E_{i≠j}[cos(x_i, x_j)]: mean_pairwise_inner of the unit rows (a zero row counts as 0)."""
    norms = x.double().norm(dim=1, keepdim=True)
    return mean_pairwise_inner(x.double() / norms.clamp_min(torch.finfo(torch.float64).tiny))


# ---- per-task quantities ----------------------------------------------------------------------
def _is_protonet(spec: LearnerSpec) -> bool:
    return Algorithm(spec.algo) is Algorithm.PROTONET


def create_support_loss_function(
    model: nn.Module, spec: LearnerSpec, layout: ParamLayout, *, second_order: bool = False
) -> SupportLossFunction:
    """L(S; θ) on flat θ: support cross-entropy (MAML family) or ProtoNet's prototype loss of S.

    ``second_order=True`` differentiates a composite batch-norm copy (needed for HVPs).
    """
    net = with_composite_batch_norm(model) if second_order else model

    def loss(w: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
        out = call_network(net, layout.unflatten(w), sx).flatten(1)
        if _is_protonet(spec):
            out = prototype_logits(out, sy, out, spec.ways)
        return F.cross_entropy(out, sy)

    return loss


def _map_support(fn: Callable[..., Tensor], w: Tensor, batch: TaskBatch) -> Tensor:
    """fn(w_i, sx_i, sy_i) for each task; ``w`` is shared (q) or per task (B × q). vmapped."""
    w_dim = 0 if w.dim() == 2 else None
    return vmap(fn, in_dims=(w_dim, 0, 0))(w, batch.support_x, batch.support_y)


def support_gradients(model: nn.Module, spec: LearnerSpec, params: Params, batch: TaskBatch) -> Tensor:
    """B × q matrix of g_i = −∇_θ L(S_i; ω), the descent direction of each task (seed 003 Fig. 1(3))."""
    layout = ParamLayout.from_params(params)
    loss = create_support_loss_function(model, spec, layout)
    return -_map_support(grad(loss), layout.flatten(params), batch).detach()


def adapted_parameters(
    model: nn.Module, spec: LearnerSpec, params: Params, batch: TaskBatch, steps: int, step_size: float
) -> Tensor:
    """B × q flat θ̃_i: ``steps`` full-batch gradient steps θ ← θ − α∇L(S_i; θ) from ω (§4.1–4.2)."""
    layout = ParamLayout.from_params(params)
    g = grad(create_support_loss_function(model, spec, layout))

    def adapt(w: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
        for _ in range(steps):
            w = w - step_size * g(w, sx, sy)
        return w

    return _map_support(adapt, layout.flatten(params), batch).detach()


def create_feature_function(model: nn.Module, spec: LearnerSpec) -> Callable[[Params, Tensor], Tensor]:
    """(params, x) ↦ penultimate features h(x) (n × d): the input of the last ``nn.Linear`` for the
    MAML family (conv4: the flattened embedding; mlp-synthetic: the last hidden ReLU), ProtoNet's
    embedding itself."""
    if _is_protonet(spec):
        return lambda p, x: call_network(model, p, x).flatten(1)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("the network has no linear classifier layer to take features before")
    trunk = copy.deepcopy(model)
    parent_name, _, child = names[-1].rpartition(".")
    setattr(trunk.get_submodule(parent_name) if parent_name else trunk, child, nn.Identity())
    keep = set(dict(trunk.named_parameters()))
    return lambda p, x: call_network(trunk, {k: v for k, v in p.items() if k in keep}, x).flatten(1)


def task_representations(model: nn.Module, spec: LearnerSpec, params: Params, batch: TaskBatch) -> Tensor:
    """B × d matrix of h_i = mean over S_i of the penultimate features at ω (seed 003 §6)."""
    feats = create_feature_function(model, spec)
    with torch.no_grad():
        return torch.stack([feats(params, batch.support_x[b]).mean(0) for b in range(len(batch))])


# ---- one checkpoint ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LandscapeDiagnostics:
    """The §7 statistics of one ω over B tasks; sharpness is E_i of |λ_max| (seed 003 Eq. 4)."""

    num_tasks: int
    gradient_inner: float
    gradient_cosine: float
    trajectory_cosine: float
    sharpness_power: float
    sharpness_lanczos: float
    representation_inner: float
    adapted_support_loss: float  # E_i L(S_i; θ̃_i), which the paper finds flatness tracks (§5.1)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def support_hessian_norms(
    model: nn.Module, spec: LearnerSpec, params: Params, adapted: Tensor, batch: TaskBatch, config: DiagnosticsConfig
) -> tuple[list[EigenEstimate], list[EigenEstimate]]:
    """Per task, ‖∇²_θ L(S_i; θ̃_i)‖_σ estimates (power iteration, Lanczos) from HVPs at θ̃_i (B × q)."""
    layout = ParamLayout.from_params(params)
    loss = create_support_loss_function(model, spec, layout, second_order=True)
    power, lanc = [], []
    for b in range(len(batch)):
        sx, sy = batch.support_x[b], batch.support_y[b]
        hvp = hvp_of(lambda w, sx=sx, sy=sy: loss(w, sx, sy), adapted[b])
        kw = {"dtype": adapted.dtype, "device": adapted.device, "seed": config.seed + b}
        power.append(power_iteration(hvp, layout.numel, num_iters=config.power_iters, tol=config.power_tol, **kw))
        lanc.append(lanczos(hvp, layout.numel, num_iters=config.lanczos_iters, tol=config.lanczos_tol, **kw))
    return power, lanc


def landscape_diagnostics(
    model: nn.Module,
    spec: LearnerSpec,
    params: Params,
    batch: TaskBatch,
    config: DiagnosticsConfig = DiagnosticsConfig(),
) -> LandscapeDiagnostics:
    """All §7 statistics of ω on the tasks of ``batch`` (see the module docstring for definitions)."""
    if len(batch) < 2:
        raise ConfigError(f"landscape diagnostics need at least 2 tasks, got {len(batch)}")
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params)
    steps, alpha = config.trajectory(spec)
    trajectories = adapted_parameters(model, spec, params, batch, steps, alpha)
    flat_at = w.expand_as(trajectories) if _is_protonet(spec) else trajectories
    power, lanc = support_hessian_norms(model, spec, params, flat_at, batch, config)
    grads = support_gradients(model, spec, params, batch)
    loss = create_support_loss_function(model, spec, layout)
    with torch.no_grad():
        adapted_loss = _map_support(loss, flat_at, batch).mean()
    return LandscapeDiagnostics(
        num_tasks=len(batch),
        gradient_inner=mean_pairwise_inner(grads),
        gradient_cosine=mean_pairwise_cosine(grads),
        trajectory_cosine=mean_pairwise_cosine(trajectories - w),
        sharpness_power=float(np.mean([abs(e.value) for e in power])),
        sharpness_lanczos=float(np.mean([abs(e.value) for e in lanc])),
        representation_inner=mean_pairwise_inner(task_representations(model, spec, params, batch)),
        adapted_support_loss=float(adapted_loss),
    )


# ---- over a run's training history ------------------------------------------------------------
@dataclass(frozen=True)
class DiagnosticsRow(LandscapeDiagnostics):
    """One training snapshot: its step, test accuracy/loss (all test tasks) and its diagnostics."""

    step: int = 0
    accuracy: float = math.nan
    accuracy_ci95: float = math.nan
    loss: float = math.nan


def history_snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of ``run_dir/history/step_XXXXXXX.safetensors``, sorted by step."""
    folder = Path(run_dir) / HISTORY_DIR
    paths = folder.glob("step_*.safetensors") if folder.is_dir() else ()
    found = sorted((int(m.group(1)), p) for p in paths if (m := _SNAPSHOT.match(p.name)))
    if not found:
        raise ConfigError(
            f"{run_dir}: no training history ({HISTORY_DIR}/step_*.safetensors); "
            "retrain with keep_history=True (--keep-history) to get diagnostics over training"
        )
    return found


def _test_batch(run: Run, config: DiagnosticsConfig) -> TaskBatch:
    """The first ``num_tasks`` test tasks in the weights' dtype, on the run's device."""
    ids = np.arange(min(config.num_tasks, len(run.test_tasks)))
    if len(ids) < 2:
        raise ConfigError("the run's test taskset has fewer than 2 tasks")
    batch = run.test_tasks.batch(ids, run.dataset).to(run.device)
    dtype = next(iter(run.params.values())).dtype
    return TaskBatch(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y)


def _snapshot_row(run: Run, batch: TaskBatch, step: int, path: Path, config: DiagnosticsConfig) -> DiagnosticsRow:
    """Diagnostics of one snapshot ω on ``batch`` plus its test accuracy/loss on all test tasks."""
    params = load_tensors(path)
    if set(params) != set(run.params) or any(params[k].shape != run.params[k].shape for k in params):
        raise CheckpointError(f"{path}: snapshot parameters do not fit the run's network")
    params = {k: params[k].to(device=run.device, dtype=run.params[k].dtype) for k in run.params}
    diag = landscape_diagnostics(run.model, run.spec, params, batch, config)
    summary = run.evaluate(params, split="test").summary()
    return DiagnosticsRow(
        **{f.name: getattr(diag, f.name) for f in fields(LandscapeDiagnostics)},
        step=step,
        accuracy=summary["accuracy"],
        accuracy_ci95=summary["accuracy_ci95"],
        loss=summary["loss"],
    )


def _rows_over_history(
    run: Run,
    snapshots: list[tuple[int, Path]],
    config: DiagnosticsConfig,
    progress: Callable[[int, int], None] | None,
    done: list[DiagnosticsRow],
    on_row: Callable[[list[DiagnosticsRow]], None] | None = None,
) -> list[DiagnosticsRow]:
    """``done`` (rows of the first snapshots) extended to every snapshot; ``on_row(rows)`` after each
    finished row (under torchrun: after each round, the snapshots dealt one per rank per round)."""
    rows = list(done)
    batch = _test_batch(run, config)
    todo = snapshots[len(rows) :]
    if progress is not None:
        progress(len(rows), len(snapshots))

    def compute(i: int) -> Tensor:
        return _rows_to_tensor([_snapshot_row(run, batch, *todo[i], config)])["rows"][0]

    def finished(parts: list[Tensor]) -> None:
        rows.extend(_rows_from_tensor({"rows": torch.stack(parts)}, list(ROW_FIELDS)))
        if on_row is not None:
            on_row(rows)
        if progress is not None:
            progress(len(rows), len(snapshots))

    with retained_allocations():  # as in training: no fresh zeroed pages for each snapshot's activations
        distributed.map_in_rounds(len(todo), compute, len(ROW_FIELDS), finished)
    return rows


COHERENCE_FIELDS = ("gradient_inner", "gradient_cosine", "trajectory_cosine")


def coherence_over_history(
    run: Run, snapshots: list[tuple[int, Path]], num_tasks: int, steps: int | None = None, step_size: float | None = None,
    chunk: int = 50,
) -> list[dict[str, float]]:  # fmt: skip
    """seed 003's coherence alone, on many test tasks (§5.2: 500 after each epoch): per snapshot,
    E_{i≠j}[g_iᵀg_j] (unnormalised, §5.3), its cosine form and the mean cosine of T-step trajectory
    directions (Eq. 5), over the first ``num_tasks`` test tasks (B × q gradients in chunks of
    ``chunk`` tasks), and the snapshot's test accuracy on every test task. No sharpness (its 20
    Lanczos HVPs a task are what limit the full diagnostics to a few dozen tasks). Snapshots are
    shared out over torchrun ranks like the full diagnostics."""
    config = DiagnosticsConfig(num_tasks=num_tasks, steps=steps, step_size=step_size)
    batch = _test_batch(run, config)
    t_steps, alpha = config.trajectory(run.spec)

    def compute(i: int) -> Tensor:
        params = load_tensors(snapshots[i][1])
        params = {k: params[k].to(device=run.device, dtype=run.params[k].dtype) for k in run.params}
        w = ParamLayout.from_params(params).flatten(params)
        grads, moves = [], []
        for start in range(0, len(batch), chunk):
            part = TaskBatch(*(t[start : start + chunk] for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y)))
            grads.append(support_gradients(run.model, run.spec, params, part))
            moves.append(adapted_parameters(run.model, run.spec, params, part, t_steps, alpha) - w)
        g, d = torch.cat(grads), torch.cat(moves)
        accuracy = run.evaluate(params, split="test").summary()["accuracy"]
        return torch.tensor([mean_pairwise_inner(g), mean_pairwise_cosine(g), mean_pairwise_cosine(d), accuracy], dtype=torch.float64)

    with retained_allocations():  # fresh pages for every chunk's activations: 36 % of the CPU time without it
        values = distributed.map_in_rounds(len(snapshots), compute, len(COHERENCE_FIELDS) + 1)
    return [{"step": step, "num_tasks": len(batch), **dict(zip((*COHERENCE_FIELDS, "accuracy"), v.tolist(), strict=True))}
            for (step, _), v in zip(snapshots, values, strict=True)]  # fmt: skip


def diagnostics_over_history(
    run: Run | str | Path,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> list[DiagnosticsRow]:
    """Diagnostics and test accuracy of every history snapshot of ``run`` (a ``Run`` or its folder),
    sorted by step, on the first ``num_tasks`` test tasks — the curves of seed 003 Fig. 5, 7.

    ``progress(done, total)`` is called before the first snapshot and after each one.
    """
    run = run if isinstance(run, Run) else open_run(run)
    return _rows_over_history(run, history_snapshots(run.checkpoint.path), config, progress, [])


# ---- disk cache (resumable per snapshot) ------------------------------------------------------
CACHE_FORMAT = 1
ROW_FIELDS = tuple(f.name for f in fields(DiagnosticsRow))
_INT_FIELDS = {"num_tasks", "step"}
Snapshots = list[tuple[int, Path]]  # (step, path) of history_snapshots


def diagnostics_cache_entry(run: Run, config: DiagnosticsConfig, snapshots: Snapshots | None = None) -> CacheEntry:
    """Cache entry keyed by the run's fingerprint, its test taskset, every snapshot file's SHA-256
    and ``config``: a retrained or altered history gets a new key. A copy shipped in the run folder
    (``CacheEntry.ship``) fills it when the cache has none."""
    snapshots = history_snapshots(run.checkpoint.path) if snapshots is None else snapshots
    inputs = {
        "format": CACHE_FORMAT,
        **run_fingerprint(run),
        "test_tasks": run.test_tasks.fingerprint(),
        "snapshots": [[step, sha256_file(path)] for step, path in snapshots],
        "config": config.to_dict(),
    }
    entry = CacheEntry.for_inputs("diagnostics", inputs)
    entry.restore_shipped(run.checkpoint.path)  # a bundled demo ships its default diagnostics
    return entry


def _rows_to_tensor(rows: list[DiagnosticsRow]) -> dict[str, Tensor]:
    """Rows as one float64 matrix (rows × ROW_FIELDS): exact for the floats and the int fields."""
    table = [[float(getattr(r, f)) for f in ROW_FIELDS] for r in rows]
    return {"rows": torch.tensor(table, dtype=torch.float64).reshape(-1, len(ROW_FIELDS))}


def _rows_from_tensor(tensors: dict[str, Tensor], names: list[str]) -> list[DiagnosticsRow]:
    if tuple(names) != ROW_FIELDS:
        return []  # written by another layout: recompute
    return [
        DiagnosticsRow(**{f: int(v) if f in _INT_FIELDS else float(v) for f, v in zip(ROW_FIELDS, row, strict=True)})
        for row in tensors["rows"].tolist()
    ]


def _cached_rows(entry: CacheEntry, snapshots: Snapshots) -> list[DiagnosticsRow]:
    """The rows of a complete entry, or the finished prefix of a partial one (else none)."""
    if entry.complete:
        tensors, info = entry.load()
        rows = _rows_from_tensor(tensors, info.get("fields", []))
    else:
        partial = entry.load_partial()
        rows = _rows_from_tensor(partial[0], partial[1].get("fields", [])) if partial else []
    return rows if [r.step for r in rows] == [s for s, _ in snapshots[: len(rows)]] else []


def load_cached_diagnostics(
    run: Run, config: DiagnosticsConfig = DiagnosticsConfig()
) -> tuple[list[DiagnosticsRow], int]:
    """(rows already in the disk cache, number of snapshots): all of them when complete, the
    finished prefix of a computation left half-way, or none. Computes nothing."""
    snapshots = history_snapshots(run.checkpoint.path)
    return _cached_rows(diagnostics_cache_entry(run, config, snapshots), snapshots), len(snapshots)


def cached_diagnostics_over_history(
    run: Run | str | Path,
    config: DiagnosticsConfig = DiagnosticsConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> list[DiagnosticsRow]:
    """``diagnostics_over_history`` through the disk cache: a complete entry is loaded, a partial
    one resumes after its last finished snapshot (each finished row is saved atomically)."""
    run = run if isinstance(run, Run) else open_run(run)
    snapshots = history_snapshots(run.checkpoint.path)
    entry = diagnostics_cache_entry(run, config, snapshots)
    done, total = _cached_rows(entry, snapshots), len(snapshots)
    # torchrun: the ranks resume from the prefix all of them hold (an all-reduce, also the point where
    # every rank has read the cache before any writes to it, as in fit_influence)
    done = done[: distributed.min_over_ranks(len(done))]
    if distributed.all_ranks(entry.complete) and len(done) == total:
        return done

    def save_partial(rows: list[DiagnosticsRow]) -> None:
        if distributed.is_primary():  # under torchrun every rank holds the rows; rank 0 writes them
            progress_info = {"fields": list(ROW_FIELDS), "snapshots_done": len(rows), "total": total}
            entry.save_partial(_rows_to_tensor(rows), progress_info)

    started = time.time()
    rows = _rows_over_history(run, snapshots, config, progress if distributed.is_primary() else None, done, save_partial)
    info = {"fields": list(ROW_FIELDS), "seconds": round(time.time() - started, 2)}
    if distributed.active():
        info["ranks"] = distributed.world_size()
    distributed.save_entry(entry, _rows_to_tensor(rows), info)  # entry.save on rank 0, then a barrier
    return rows
