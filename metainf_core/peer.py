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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
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


def dattri_task_scores(run: Run, train: Sequence[Task], test: Sequence[Task], attributor: str = "cg",
                       damping: float = 0.0, dtype: torch.dtype = torch.float64, max_iter: int = 200,
                       tol: float = 1e-7) -> np.ndarray:  # fmt: skip
    """(M, T) dattri influence s_ji = g_jᵀ (H + λI)⁻¹ g_i of training tasks ``train`` on test tasks
    ``test`` (module docstring), by dattri's ``IFAttributorExplicit`` or ``IFAttributorCG``
    (``max_iter`` iterations, stopping when dattri's residual norm < ``tol``)."""
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
    from dattri.task import AttributionTask

    if attributor not in ATTRIBUTORS:
        raise ConfigError(f"dattri attributor must be one of {ATTRIBUTORS}, got {attributor!r}")
    sy, qy = shared_labels([*train, *test])
    model = with_composite_batch_norm(run.model).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in run.params.items()}, strict=False)
    task_loss = create_task_loss_function(model, run.spec)

    def loss_func(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        """Mean query loss after adaptation over the tasks of ``data`` = (support images, query images)."""
        sx, qx = data
        return torch.stack([task_loss(params, sx[b], sy, qx[b], qy) for b in range(sx.shape[0])]).mean()

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict(),
                           checkpoints_load_func=lambda m, _ckpt: m)  # fmt: skip
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
