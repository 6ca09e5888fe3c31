"""Per-task meta-gradients g_j = ∇_ω L_j(ω̂) and meta-objectives over task batches (TLXML Eq. 1, 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad, vmap

from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import FlatLossFunction, ParamLayout, create_flat_loss_function, needs_second_order
from metainf_core.learners import LearnerSpec, Params
from metainf_core.tasks import TaskBatch, TaskSet


def iter_task_batches(
    taskset: TaskSet, dataset: FewShotDataset, ids: Sequence[int] | np.ndarray, batch_size: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> Iterator[tuple[np.ndarray, TaskBatch]]:
    """Yield ``(ids_chunk, batch)`` with inputs cast to ``dtype`` (labels stay int64)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    for i in range(0, len(ids), batch_size):
        chunk = ids[i : i + batch_size]
        b = taskset.batch(chunk, dataset).to(device)
        yield chunk, TaskBatch(b.support_x.to(dtype), b.support_y, b.query_x.to(dtype), b.query_y)


def map_tasks(fn: Callable[..., Tensor], w: Tensor, batch: TaskBatch) -> Tensor:
    """fn(w, sx, sy, qx, qy) for each task of ``batch``, vmapped over tasks.

    Labels are passed unbatched when every task shares them (the usual class-major layout),
    since ``F.one_hot`` in ProtoNet's prototypes cannot be vmapped over labels; otherwise the
    tasks are looped over.
    """
    sy, qy = batch.support_y, batch.query_y
    if bool((sy == sy[:1]).all()) and bool((qy == qy[:1]).all()):
        return vmap(fn, in_dims=(None, 0, None, 0, None))(w, batch.support_x, sy[0], batch.query_x, qy[0])
    return torch.stack([fn(w, batch.support_x[b], sy[b], batch.query_x[b], qy[b]) for b in range(len(batch))])


def batch_task_gradients(loss_fn: FlatLossFunction, w: Tensor, batch: TaskBatch) -> Tensor:
    """B × q matrix of g_j = ∇_ω L_j(ω) for the B tasks of ``batch`` (vmap over tasks of grad)."""
    return map_tasks(grad(loss_fn), w, batch).detach()


def task_gradients(
    model: nn.Module,
    spec: LearnerSpec,
    params: Params,
    taskset: TaskSet,
    dataset: FewShotDataset,
    ids: Sequence[int] | np.ndarray | None = None,
    batch_size: int = 32,
) -> Tensor:
    """M × q matrix of per-task meta-gradients g_j = ∇_ω L_j(ω̂) (all tasks when ``ids`` is None).

    Computed in the parameters' dtype and device, ``batch_size`` tasks per vmapped call.
    """
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params).detach()
    loss_fn = create_flat_loss_function(model, spec, layout, second_order=needs_second_order(spec))
    ids = np.arange(len(taskset)) if ids is None else np.asarray(ids, dtype=np.int64)
    out = torch.empty(len(ids), layout.numel, dtype=w.dtype, device=w.device)
    row = 0
    for chunk, b in iter_task_batches(taskset, dataset, ids, batch_size, w.dtype, w.device):
        out[row : row + len(chunk)] = batch_task_gradients(loss_fn, w, b)
        row += len(chunk)
    return out


def create_meta_objective_function(
    loss_fn: FlatLossFunction,
    batch: TaskBatch,
    weights: Tensor | None = None,
    damping: float = 0.0,
    anchor: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """R(ω) = Σ_j w_j L_j(ω) + (λ/2)‖ω − ω_0‖² over the tasks of ``batch`` (w_j = 1/B by default).

    With ``weights = (1 + ε δ_jk)/M`` this is the up-weighted objective of TLXML Eq. 3; with
    λ > 0 the regularised objective of METHODS §8 (ω_0 = ``anchor``, default 0), Hessian H + λI.
    """
    n = len(batch)
    wts = torch.full((n,), 1.0 / n, dtype=batch.support_x.dtype, device=batch.support_x.device) if weights is None else weights

    def objective(w: Tensor) -> Tensor:
        losses = map_tasks(loss_fn, w, batch)
        d = w if anchor is None else w - anchor
        return (wts.to(losses) * losses).sum() + 0.5 * damping * (d * d).sum()

    return objective
