"""Fitting TLXML end to end: curvature (exact Eq. 5 or Gauss-Newton Eq. 10–11) -> factor U -> P = G U -> truncation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metainf_core.config import InfluenceMethod
from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError
from metainf_core.influence import distributed
from metainf_core.influence.columns import require_tlxml_support
from metainf_core.influence.distributed import FitProgress
from metainf_core.influence.exact import CurvatureFactor, meta_hessian, spectral_factor
from metainf_core.influence.flat import ParamLayout, create_flat_loss_function
from metainf_core.influence.gauss_newton import GaussNewtonConfig, GaussNewtonFit
from metainf_core.influence.gradients import iter_task_batches, task_gradients
from metainf_core.influence.projection import InfluenceSpace
from metainf_core.influence.scores import TaskInfluence
from metainf_core.learners import LearnerSpec, Params
from metainf_core.tasks import TaskSet


def project_gradients(gradients: torch.Tensor, u: torch.Tensor, space: InfluenceSpace | None = None) -> torch.Tensor:
    """P = (R G) U (TLXML Eq. 12's Uᵀ g_j per row): gradients G (B × q) reduced by the fit's ``space``
    R when there is one (``projection.py``; U is then d × r), in U's dtype and device."""
    g = gradients.to(u)
    return (g if space is None else space.reduce(g)) @ u


def influence_from_factor(
    factor: CurvatureFactor,
    gradients: torch.Tensor,
    method: InfluenceMethod,
    *,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
    space: InfluenceSpace | None = None,
) -> TaskInfluence:
    """Project the per-task gradients (M × q) onto U and choose the truncation by self-rank."""
    projections = project_gradients(gradients, factor.factor, space)
    return influence_from_projections(factor, projections, method, select=select, candidates=candidates, sample=sample, space=space)


def influence_from_projections(
    factor: CurvatureFactor,
    projections: torch.Tensor,
    method: InfluenceMethod,
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
        mode=method.value,
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
    return influence_from_factor(factor, grads, InfluenceMethod.EXACT, select=select, candidates=candidates, sample=sample)


def fit_gauss_newton(
    model: nn.Module,
    spec: LearnerSpec,
    params: Params,
    taskset: TaskSet,
    dataset: FewShotDataset,
    *,
    config: GaussNewtonConfig | None = None,
    damping: float = 0.0,
    resume: GaussNewtonFit | None = None,
    checkpoint: tuple[Path, dict[str, Any]] | None = None,
    save_every: int = 64,
    progress: FitProgress | None = None,
    compute_device: torch.device | str | None = None,
    batch_size: int = 32,
    select: bool = True,
    candidates: Sequence[int] | None = None,
    sample: int | None = 256,
) -> tuple[TaskInfluence, dict[str, Any]]:
    """Gauss-Newton TLXML (Algorithms 1–3) over every training task: the one Gauss-Newton fit.

    A single process is world size 1 of the distributed fit (``distributed.py``): Algorithm 1 streams
    this rank's share of the tasks (all of them in one process) into ``resume`` or a fresh
    ``GaussNewtonFit(config)``, the ranks' buffers merge (Algorithm 2), U = factor of H_GN⁺
    (Algorithm 3, ``damping`` λ added), and P = (R G) U is computed ``batch_size`` tasks at a time
    (never the M × q gradient matrix). ``checkpoint`` = (cache-entry directory, its inputs): the
    buffer is saved there every ``save_every`` tasks and a killed fit's saved buffers (any world
    size) are resumed. Returns the influence (truncation chosen by self-rank when ``select``) and
    the fit's record (world size and tasks per rank; empty in a single process).
    """
    args = (model, spec, params, taskset, dataset)
    m = len(taskset)
    directory, inputs = checkpoint if checkpoint is not None else (None, {})
    device = next(iter(params.values())).device if compute_device is None else compute_device
    stream = distributed.stream_curvature(
        lambda: resume or GaussNewtonFit(*args, config), lambda state: GaussNewtonFit.from_state_dict(state, *args),
        directory, inputs, m, damping, compute_device=device, progress=progress, save_every=save_every,
    )  # fmt: skip
    u, space = stream.factor.factor, stream.fit.space

    def project(ids: np.ndarray) -> torch.Tensor:  # rows P_j of training tasks ``ids``
        return project_gradients(task_gradients(model, spec, params, taskset, dataset, ids, batch_size), u, space)

    proj = distributed.sharded_projections(project, m, u.shape[1], u.dtype, compute_device=device, batch=batch_size, progress=progress)
    inf = influence_from_projections(stream.factor, proj.to(u), InfluenceMethod.GN, select=select, candidates=candidates, sample=sample, space=space)
    return inf, stream.record
