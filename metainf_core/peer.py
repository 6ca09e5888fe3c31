"""A peer library on the same work: dattri 0.3.0's influence attributors with a *task* as one example.

dattri (``dattri.task.AttributionTask``) attributes a loss ``loss_func(params, data)`` to training
examples; here an example is a whole few-shot task and its loss is the task's query loss after
adaptation, L_j(ω) = L(Q_j; A(S_j, ω)) (TLXML Eq. 1), written once in ``learners.create_task_loss_function``
and differentiated through the adaptation (second order, composite batch norm as every influence path).
dattri's ``IFAttributorExplicit`` / ``IFAttributorCG`` then give, for training task j and test task i,

    s_ji = g_jᵀ (H + λ I)⁻¹ g_i,   H = ∇²_ω (1/M) Σ_j L_j  (its Hessian of the full training loader),

the total-derivative task-IF of seed 001 for explicit adaptation (TLXML's meta-Hessian; the plain
inverse where ``compare``'s dense task-IF keeps the positive part). Its sign is helpfulness
(positive = up-weighting j lowers i's loss), so metainf's score is s_ji / M (``compare.SIGN``).

dattri vmaps its per-example gradients over the data tensors, and ProtoNet's prototypes cannot be
vmapped over labels (``F.one_hot``), so the data given to dattri are the images only and the task
labels, shared by every task in metainf's class-major layout, are closed over (refused otherwise).
dattri accumulates its scores in the default dtype (float32) whatever the model's dtype.

dattri's ``TRAKAttributor`` (Park et al. 2023) takes the same task losses with no Hessian at all:
seeded random projections φ_j of the meta-gradients and a kernel regression over them
(``dattri_trak_scores``); it runs at the demos' sizes, where the influence attributors' q × q
Hessian does not fit and their CG needs up to q Hessian-vector products per test task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import with_composite_batch_norm
from metainf_core.learners import create_task_loss_function
from metainf_core.service import Run

Task = tuple[Tensor, Tensor, Tensor, Tensor]  # support_x, support_y, query_x, query_y (one task)
ATTRIBUTORS = ("explicit", "cg")
DATTRI_VERSION = "0.3.0"


def shared_labels(tasks: Sequence[Task]) -> tuple[Tensor, Tensor]:
    """The support and query labels every task shares (class-major layout), or ConfigError."""
    sy, qy = tasks[0][1], tasks[0][3]
    if any(not (torch.equal(t[1], sy) and torch.equal(t[3], qy)) for t in tasks):
        raise ConfigError("dattri's task-level attributors need every task to share its label layout (class-major)")
    return sy, qy


def _loader(tasks: Sequence[Task], batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.stack([t[0] for t in tasks]), torch.stack([t[2] for t in tasks])),
                      batch_size=batch_size, shuffle=False)  # fmt: skip


def _one_task_loss(run: Run, tasks: Sequence[Task], dtype: torch.dtype) -> tuple[nn.Module, Callable[..., Tensor]]:
    """The network dattri differentiates (composite batch norm, the run's weights in ``dtype``) and one
    task's query loss after adaptation, (params, support images, query images) -> loss, with the
    label layout every task of ``tasks`` shares closed over (``shared_labels``)."""
    sy, qy = shared_labels(tasks)
    model = with_composite_batch_norm(run.model).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in run.params.items()}, strict=False)
    task_loss = create_task_loss_function(model, run.spec)

    def one_task_loss(params: dict[str, Tensor], sx: Tensor, qx: Tensor) -> Tensor:
        return task_loss(params, sx, sy, qx, qy)

    return model, one_task_loss


def _attribution_task(model: nn.Module, loss_func: Callable[..., Tensor]):
    """dattri's ``AttributionTask`` of ``loss_func(params, data)`` at the model's own weights (one checkpoint)."""
    from dattri.task import AttributionTask

    return AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict(), checkpoints_load_func=lambda m, _ckpt: m)


def dattri_task_scores(run: Run, train: Sequence[Task], test: Sequence[Task], attributor: str = "cg",
                       damping: float = 0.0, dtype: torch.dtype = torch.float64, max_iter: int = 200,
                       tol: float = 1e-7) -> np.ndarray:  # fmt: skip
    """(M, T) dattri influence s_ji = g_jᵀ (H + λI)⁻¹ g_i of training tasks ``train`` on test tasks
    ``test`` (module docstring), by dattri's ``IFAttributorExplicit`` or ``IFAttributorCG``
    (``max_iter`` iterations, stopping when dattri's residual norm < ``tol``)."""
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit

    if attributor not in ATTRIBUTORS:
        raise ConfigError(f"dattri attributor must be one of {ATTRIBUTORS}, got {attributor!r}")
    model, one_task_loss = _one_task_loss(run, [*train, *test], dtype)

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        """Mean query loss after adaptation over the tasks of ``data`` = (support images, query images)."""
        sx, qx = data
        return torch.stack([one_task_loss(params, sx[b], qx[b]) for b in range(sx.shape[0])]).mean()

    task = _attribution_task(model, loss_func)
    if attributor == "explicit":
        attr = IFAttributorExplicit(task=task, regularization=damping)
    else:
        attr = IFAttributorCG(task=task, regularization=damping, max_iter=max_iter, tol=tol)
    # one batch each: dattri sums iHVPs over the full loader's batches (H must be the mean over all M tasks),
    # and it transforms the test gradients again for every training batch
    full = _loader(train, len(train))
    attr.cache(full)
    scores = attr.attribute(full, _loader(test, len(test)))
    return scores.detach().to(torch.float64).cpu().numpy()


TRAK_MAX_DIM = 512  # dattri's default projection dimension


def trak_dimension(num_train: int) -> int:
    """TRAK's projection dimension d: dattri's default 512, at most half the training tasks, so that
    the d × d kernel ΦᵀΦ of the M projected gradients stays invertible (rank ≤ M) without damping."""
    return max(1, min(TRAK_MAX_DIM, num_train // 2))


def _trak_attributor(run: Run, tasks: Sequence[Task], num_train: int, dtype: torch.dtype, proj_seed: int):
    """dattri's ``TRAKAttributor`` on the task loss (one task = one example; ``dattri_trak_scores``)."""
    from dattri.algorithm.trak import TRAKAttributor

    model, one_task_loss = _one_task_loss(run, tasks, dtype)

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        """Query loss after adaptation of one task, data = (support images, query images); dattri vmaps it."""
        return one_task_loss(params, *data)

    def correct_probability(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return torch.exp(-loss_func(params, data))

    task = _attribution_task(model, loss_func)
    projector = {"proj_dim": trak_dimension(num_train), "proj_max_batch_size": 32, "proj_seed": proj_seed,
                 "device": "cpu", "proj_type": "normal"}  # fmt: skip  (dattri updates a shared default dict: pass every key)
    return TRAKAttributor(task=task, correct_probability_func=correct_probability, projector_kwargs=projector)


def trak_train_side(run: Run, train: Sequence[Task], dtype: torch.dtype = torch.float64, proj_seed: int = 0) -> dict[str, Tensor]:
    """What TRAK keeps of the training tasks (dattri's ``cache``): (ΦᵀΦ)⁻¹Φᵀ (d × M) and 1 − p_j (M),
    computed once and reused for every test task (``dattri_trak_scores``)."""
    attr = _trak_attributor(run, train, len(train), dtype, proj_seed)
    attr.cache(_loader(train, 32))
    return {"inverse_kernel_features": attr.inv_XTX_XT_list[0].detach(), "one_minus_p": attr.Q.detach()}


def dattri_trak_scores(run: Run, train: Sequence[Task], test: Sequence[Task], dtype: torch.dtype = torch.float64,
                       proj_seed: int = 0, train_side: dict[str, Tensor] | None = None) -> np.ndarray:  # fmt: skip
    """(M, T) dattri ``TRAKAttributor`` scores (Park et al. 2023, one checkpoint) with a task as one
    example: φ_j = Pᵀ g_j / √q (P a seeded q × d Gaussian projection, ``trak_dimension``), and

        τ_ji = φ_iᵀ (ΦᵀΦ)⁻¹ φ_j · (1 − p_j),   p_j = exp(−L_j(ω)),

    L_j the task's query loss after adaptation (``create_task_loss_function``), whose gradient plays
    the role of TRAK's margin gradient and exp(−L_j) of its correct-class probability. Both gradients
    are loss gradients, so the sign is helpfulness as for the influence attributors. ``train_side``:
    ``trak_train_side``'s result for these training tasks (else computed here)."""
    side = train_side if train_side is not None else trak_train_side(run, train, dtype, proj_seed)
    attr = _trak_attributor(run, [*train, *test], len(train), dtype, proj_seed)
    # dattri's attribute() reads the cached training side from these attributes (its cache() sets them)
    attr.full_train_dataloader = _loader(train, 32)
    attr.inv_XTX_XT_list, attr.Q = [side["inverse_kernel_features"]], side["one_minus_p"]
    scores = attr.attribute(_loader(test, 32))
    return scores.detach().to(torch.float64).cpu().numpy()
