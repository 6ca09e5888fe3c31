"""Fitting TLXML end to end: curvature (exact or Gauss-Newton) -> factor U -> P = Uᵀ g_j -> truncation."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import numpy as np
import torch
from torch import nn

from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError
from metainf_core.influence.columns import require_tlxml_support
from metainf_core.influence.exact import CurvatureFactor, meta_hessian, spectral_factor
from metainf_core.influence.flat import ParamLayout, create_flat_loss_function
from metainf_core.influence.gauss_newton import GaussNewtonConfig, GaussNewtonFit, ProgressCallback
from metainf_core.influence.gradients import iter_task_batches, task_gradients
from metainf_core.influence.projection import InfluenceSpace
from metainf_core.influence.scores import TaskInfluence
from metainf_core.learners import LearnerSpec, Params
from metainf_core.tasks import TaskSet


class CurvatureMode(str, Enum):
    """How H is obtained: the exact meta-Hessian (small q) or Gauss-Newton columns (TLXML 4.2)."""

    EXACT = "exact"
    GAUSS_NEWTON = "gauss_newton"


def influence_from_factor(
    factor: CurvatureFactor,
    gradients: torch.Tensor,
    mode: CurvatureMode,
    *,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
    space: InfluenceSpace | None = None,
) -> TaskInfluence:
    """Project the per-task gradients (M × q) onto U and choose the truncation by self-rank.

    With a ``space`` (U is d × r, ``projection.py``) the gradients are reduced first: P = (R G) U."""
    grads = gradients.to(factor.factor)
    projections = (grads if space is None else space.reduce(grads)) @ factor.factor
    return influence_from_projections(factor, projections, mode, select=select, candidates=candidates, sample=sample, space=space)


def influence_from_projections(
    factor: CurvatureFactor,
    projections: torch.Tensor,
    mode: CurvatureMode,
    *,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
    space: InfluenceSpace | None = None,
) -> TaskInfluence:
    """TaskInfluence from U and P = G U (M × r, computed by the caller, e.g. in chunks);
    ``space``: the reduction R the factor lives in (then P = (R G) U)."""
    if factor.factor.shape[1] == 0:
        raise ConfigError("the curvature has no positive eigenvalue: nothing to invert")
    n_pos = factor.num_positive if factor.num_positive >= 0 else factor.factor.shape[1]
    inf = TaskInfluence(
        factor=factor.factor,
        projections=projections,
        signs=factor.signs,
        eigenvalues=factor.eigenvalues,
        truncation=max(n_pos, 1),
        mode=mode.value,
        num_negative=factor.num_negative,
        num_positive=n_pos,
        space=space,
    )
    return inf.select_truncation(candidates, sample) if select else inf


def fit_exact(
    model: nn.Module,
    spec: LearnerSpec,
    params: Params,
    taskset: TaskSet,
    dataset: FewShotDataset,
    ids: Sequence[int] | np.ndarray | None = None,
    *,
    damping: float = 0.0,
    batch_size: int = 16,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
) -> TaskInfluence:
    """Exact TLXML (TLXML Eq. 5, 12) over training tasks ``ids`` (all by default); q ≲ 3,000.

    The factor keeps negative eigenvalues after the positive ones, so the self-rank table can
    compare "all positive" with the plain inverse (TLXML B.2, B.3); the default truncation is
    "all positive" when ``select`` is False.
    """
    require_tlxml_support(spec)
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params).detach()
    ids = np.arange(len(taskset)) if ids is None else np.asarray(ids, dtype=np.int64)
    loss_fn = create_flat_loss_function(model, spec, layout)
    batches = (b for _, b in iter_task_batches(taskset, dataset, ids, batch_size, w.dtype, w.device))
    h = meta_hessian(loss_fn, w, batches, len(ids))
    factor = spectral_factor(h, damping, keep_negative=True)
    grads = task_gradients(model, spec, params, taskset, dataset, ids, batch_size)
    return influence_from_factor(factor, grads, CurvatureMode.EXACT, select=select, candidates=candidates, sample=sample)


def fit_gauss_newton(
    model: nn.Module,
    spec: LearnerSpec,
    params: Params,
    taskset: TaskSet,
    dataset: FewShotDataset,
    ids: Sequence[int] | np.ndarray | None = None,
    *,
    config: GaussNewtonConfig | None = None,
    damping: float = 0.0,
    callback: ProgressCallback | None = None,
    resume: GaussNewtonFit | None = None,
    batch_size: int = 16,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
) -> TaskInfluence:
    """Gauss-Newton TLXML (Algorithms 1–3) over training tasks ``ids`` (all by default).

    Pass ``resume`` (e.g. ``GaussNewtonFit.from_state_dict``) to continue a partial fit.
    """
    ids = np.arange(len(taskset)) if ids is None else np.asarray(ids, dtype=np.int64)
    fit = resume or GaussNewtonFit(model, spec, params, taskset, dataset, config)
    fit.add_tasks(ids, callback)
    factor = fit.factor(damping)
    if fit.space is not None:  # P = (R G) U in chunks: never the M × q gradient matrix of a large backbone
        proj = torch.cat([
            fit.space.reduce(task_gradients(model, spec, params, taskset, dataset, ids[i : i + batch_size], batch_size).to(factor.factor))
            @ factor.factor
            for i in range(0, len(ids), batch_size)
        ])  # fmt: skip
        return influence_from_projections(
            factor, proj, CurvatureMode.GAUSS_NEWTON, select=select, candidates=candidates, sample=sample, space=fit.space
        )
    grads = task_gradients(model, spec, params, taskset, dataset, ids, batch_size)
    return influence_from_factor(factor, grads, CurvatureMode.GAUSS_NEWTON, select=select, candidates=candidates, sample=sample)
