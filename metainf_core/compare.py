"""Method comparison: several task-level influence scores for one target, and how they agree.

Every registered method maps ``(run, target)`` to an (M,) array of **helpfulness** over all M
training tasks with one sign convention (README "Sign convention", METHODS §2):

    positive = the training task helped the target: up-weighting it lowers the target's loss
    (equivalently, removing it raises that loss, to first order).

Methods (g_j = gradient of training task j's query loss, g_i = the target's; 1/M as TLXML):

- ``tlxml-exact``: TLXML with the exact meta-Hessian (third-order terms included), positive-part
  pseudo-inverse truncated by self-rank: (1/M) g_iᵀ H⁺_k g_j (``fits.fit_influence``, method
  "exact"; needs q ≤ MAX_EXACT_PARAMS). MAML and ProtoNet.
- ``tlxml-gn``: the same with the Gauss-Newton curvature (Algorithm 1–3). MAML and ProtoNet.
- ``task-if`` (seed 001, total derivatives): (1/M) g_iᵀ (H_T + λ_d I)⁺ g_j with d/dω taken *through*
  the adaptation θ̂_j(ω). For proximal MAML: ``fit_task_if`` mode "exact" (implicit function
  theorem). For MAML / ProtoNet the adaptation is explicit, so the total gradient is ∇_ω L_j(ω̂)
  and the total Hessian is TLXML's exact meta-Hessian: **task-IF = TLXML-exact with damping λ_d
  and every positive eigen-direction kept** (no self-rank truncation). We map it to exactly that
  (an ``fits.fit_influence`` exact fit with damping λ_d, truncation = all positive columns).
- ``direct-if`` (seed 001's baseline, partial derivatives only): θ̂_j treated as moving one-for-one
  with ω, i.e. gradient g_j = ∇_θ L(Q_j; θ̂_j), Hessian H_D = (1/M) Σ_j ∇²_θ L(Q_j; θ̂_j); scores
  (1/M) g_iᵀ (H_D + λ_d I)⁺ g_i with the target's own partial gradient. Proximal MAML:
  ``fit_task_if`` mode "direct"; MAML: computed here for q ≤ MAX_EXACT_PARAMS (dense Hessians).
  ProtoNet is refused: it has no weight adaptation (only class centroids), so the partial derivative
  at adapted weights θ̂_j is undefined.
- Sizes: ``CompareConfig.solver`` "auto" keeps the dense solves above for q ≤ MAX_EXACT_PARAMS and
  above that solves matrix-free (MAML / ProtoNet: one Lanczos — or CG, or Neumann — solve of
  (H + λ_d I) x = g_i on Hessian-vector products per target, helpfulness (1/M) G x,
  ``task_if.meta_hessian_hvp`` / ``direct_hessian_hvp``; proximal MAML: ``fit_task_if`` with such an
  outer solve and CG inner ones). The residual ‖(H + λ_d I)x − g_i‖/‖g_i‖, iterations and convergence
  are in the details. Lanczos keeps the positive Ritz directions, the dense path's positive part
  matrix-free (equal once the Krylov space is invariant); on an indefinite H + λ_d I — a trained
  meta-learner's, on every LDS setting measured — CG stops at the first negative curvature
  (Steihaug), so CG agrees with the dense path only where H + λ_d I is positive definite.
- ``direct-if-ekfac`` (seed 001 §5.1, A.3): direct IF with H_D replaced by EK-FAC of the query sets'
  Fishers at the adapted weights (``influence.ekfac.fit_ekfac_sets``; Kronecker factors for linear
  and convolution layers, a diagonal for the rest); the residual of its x against the exact H_D is in the details.
  MAML only (EK-FAC does not apply to the total Hessian, seed 001 §5.1).
- ``dattri-if-explicit`` / ``dattri-if-cg`` (peer library, ``peer.py``): dattri 0.3.0's influence
  attributors with a task's query loss after adaptation as one training example, s_ji / M with
  s_ji = g_jᵀ (H + λ_d I)⁻¹ g_i (plain inverse). MAML and ProtoNet.
- ``dattri-trak`` (peer library, ``peer.dattri_trak_scores``): dattri's TRAK with the same task
  losses: randomly projected meta-gradients, φ_iᵀ (ΦᵀΦ)⁻¹ φ_j (1 − e^(−L_j)) / M; no Hessian, so it
  runs at the demos' sizes (the training side computed once per run and cached).
- ``grad-sim``: first-order baseline g_iᵀ g_j with meta-gradients (total derivatives) at ω̂; no
  Hessian (= TLXML with H replaced by M·I). Positive = a gradient step on task j lowers the target
  loss to first order. All learners.

Pseudo-inverses keep positive eigenvalues only (TLXML B.2): after ordinary training ω̂ is not a
minimum and the Hessians are indefinite (METHODS §8). Damping λ_d (``CompareConfig.damping``)
applies to task-IF and direct-IF only; the TLXML methods use the product's defaults (no damping,
truncation by self-rank) so that ``tlxml-exact`` equals what ``rank --method exact`` shows.
Proximal MAML's inner problem is solved by the learner's own solver (as in training); its
stationarity ‖∇F(θ̂)‖ is reported, since the implicit derivatives assume a stationary θ̂.

Expensive parts (curvature fits, training-task gradient matrices) are cached on disk under a
content hash (``cache.CacheEntry``; TLXML fits share ``fits``' cache), so a second comparison
only recomputes the target's gradient. ``test_score_table`` scores every test task at once and
caches the table; the demos ship theirs, and ``compare_methods`` reads a single test task's scores
from a complete table instead of computing them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad

from metainf_core.cache import CacheEntry
from metainf_core.config import SOLVERS, Algorithm, CompareConfig, InfluenceConfig, InfluenceMethod  # noqa: F401 - re-exported
from metainf_core.exceptions import ConfigError
from metainf_core.fits import fit_influence, params_as, run_fingerprint, test_scores_entry
from metainf_core.influence.ekfac import EKFACFactor, ekfac_report, fit_ekfac_sets
from metainf_core.influence.exact import MAX_EXACT_PARAMS, spectral_factor
from metainf_core.influence.flat import ParamLayout, create_flat_forward_function, create_flat_loss_function
from metainf_core.influence.gradients import iter_task_batches, task_gradients
from metainf_core.influence.hvp import hessian_from_hvp
from metainf_core.influence.scores import TaskInfluence
from metainf_core.influence.task_if import (
    TaskIFConfig,
    batch_tasks,
    create_proximal_functions,
    direct_hessian_hvp,
    fit_task_if_tasks,
    meta_hessian_hvp,
    proximal_task_gradients,
    target_solve,
)
from metainf_core.peer import DATTRI_VERSION, dattri_task_scores, dattri_trak_scores, trak_dimension, trak_train_side
from metainf_core.ranking import Target, TaskGradients, all_scores, target_gradient
from metainf_core.ranking import fit_test_table
from metainf_core.service import Run
from metainf_core.validate import score_agreement, top_k_overlap

CACHE_FORMAT = 1
SIGN = ("helpfulness: positive = the training task helped the target (up-weighting it lowers the target's loss; "
        "removing it raises it)")  # fmt: skip
DENSE_MAX_PARAMS = 1000  # task-IF builds per-task q × q matrices up to here, HVP products above


Scorer = Callable[[Run, Target, CompareConfig], tuple[np.ndarray, dict[str, Any]]]
Check = Callable[[Run, CompareConfig], "str | None"]


@dataclass(frozen=True)
class ScoringMethod:
    """One registered method: ``check`` gives the reason it does not apply to a run (or None),
    ``scorer`` returns the (M,) helpfulness and details (truncation, solve quality, ...)."""

    name: str
    summary: str
    check: Check
    scorer: Scorer

    def skip_reason(self, run: Run, config: CompareConfig = CompareConfig()) -> str | None:
        return self.check(run, config)

    def scores(self, run: Run, target: Target, config: CompareConfig = CompareConfig()) -> tuple[np.ndarray, dict[str, Any]]:
        reason = self.check(run, config)
        if reason:
            raise ConfigError(f"{self.name} does not apply to this run: {reason}")
        s, details = self.scorer(run, target, config)
        return np.asarray(s, dtype=np.float64), details

    def __call__(self, run: Run, target: Target, config: CompareConfig = CompareConfig()) -> np.ndarray:
        """Helpfulness of every training task for ``target`` (M,), positive = helped."""
        return self.scores(run, target, config)[0]


# ---- helpers --------------------------------------------------------------------------------
def _algo(run: Run) -> Algorithm:
    return Algorithm(run.spec.algo)


def _num_params(run: Run) -> int:
    return int(sum(v.numel() for v in run.params.values()))


def _cache_entry(run: Run, method: str, settings: dict[str, Any]) -> CacheEntry:
    inputs = {"format": CACHE_FORMAT, "method": method, **run_fingerprint(run), "settings": settings}
    return CacheEntry.for_inputs("compare", inputs)


def _tasks(run: Run, taskset, ids, dtype: torch.dtype):
    """The tasks ``ids`` of ``taskset`` as single-task tuples in ``dtype``."""
    tasks = []
    for _, b in iter_task_batches(taskset, run.dataset, ids, 32, dtype):
        tasks.extend(batch_tasks(b))
    return tasks


def _train_tasks(run: Run, dtype: torch.dtype):
    return _tasks(run, run.train_tasks, np.arange(len(run.train_tasks)), dtype)


# ---- TLXML (explain's cached fits) ----------------------------------------------------------
def _tlxml_check(exact: bool) -> Check:
    def check(run: Run, cfg: CompareConfig) -> str | None:
        if _algo(run) is Algorithm.PROXIMAL_MAML:
            return "TLXML differentiates through explicit adaptation steps; proximal-maml's is implicit (use task-if)"
        q = _num_params(run)
        if exact and q > MAX_EXACT_PARAMS:
            return f"exact Hessian infeasible for q = {q:,} > {MAX_EXACT_PARAMS:,} parameters (use tlxml-gn)"
        return None

    return check


def tlxml_config(method: str, cfg: CompareConfig, damping: float = 0.0) -> InfluenceConfig:
    """The InfluenceConfig the registry fits TLXML with (product defaults, ``cfg.dtype``)."""
    return InfluenceConfig(method=method, n_orth=cfg.n_orth, damping=damping, dtype=cfg.dtype)


def _tlxml(method: str) -> Scorer:
    def score(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
        icfg = tlxml_config(method, cfg)
        inf = fit_influence(run, icfg)
        details = {"truncation": inf.truncation, "columns": inf.num_columns, "num_negative": inf.num_negative}
        return all_scores(run, inf, target, icfg.dtype), details

    return score


# ---- task-IF ----------------------------------------------------------------------------------
def solver_for(run: Run, cfg: CompareConfig) -> str:
    """task-IF / direct IF's solver on this run: ``cfg.solver``, and for "auto" the dense positive-part
    pseudo-inverse when q ≤ MAX_EXACT_PARAMS, else the same positive part by Lanczos on Hessian-vector
    products (matrix-free; CG stops at the negative curvature a trained meta-learner's H has)."""
    if cfg.solver != "auto":
        return cfg.solver
    return "dense" if _num_params(run) <= MAX_EXACT_PARAMS else "lanczos"


def _dense_size_reason(run: Run, method: str, cfg: CompareConfig) -> str | None:
    """Why ``method`` with the dense solver asked for explicitly does not fit the run's size, or None."""
    q = _num_params(run)
    if solver_for(run, cfg) == "dense" and q > MAX_EXACT_PARAMS:
        return (f"{method} with solver 'dense' builds q × q Hessians, infeasible for q = {q:,} > {MAX_EXACT_PARAMS:,} "
                "(solver 'auto', 'lanczos' or 'cg' solves on Hessian-vector products)")  # fmt: skip
    return None


def _task_if_check(run: Run, cfg: CompareConfig) -> str | None:
    return _dense_size_reason(run, "task-IF", cfg)


def task_if_config(run: Run, mode: str, cfg: CompareConfig) -> TaskIFConfig:
    """Proximal MAML's task-IF settings: the learner's inner solver; positive-part pseudo-inverses when dense,
    else CG / Lanczos / Neumann on HVPs for the outer solve and CG / Neumann for the inner ones (the
    proximal inner Hessian is regularised by λ: CG where the outer solve is Lanczos)."""
    solver = solver_for(run, cfg)
    method = "exact" if solver == "dense" else solver
    inner = "cg" if method == "lanczos" else method
    return TaskIFConfig(mode=mode, damping=cfg.damping, method=method, inner_method=inner, inner_solver="gd",
                        dense=_num_params(run) <= DENSE_MAX_PARAMS,
                        **({} if solver == "dense" else {"tol": cfg.tol, "inner_tol": cfg.tol}))  # fmt: skip


def _proximal_fit(run: Run, mode: str, cfg: CompareConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tcfg = task_if_config(run, mode, cfg)

    def compute():
        params = params_as(run, cfg.dtype)
        fns = create_proximal_functions(run.model, run.spec, params)
        w = fns.layout.flatten(params).detach()
        fit = fit_task_if_tasks(fns, w, _train_tasks(run, w.dtype), tcfg)
        summ = fit.summary()
        info = {"mode": mode, "max_inner_stationarity": max(s.stationarity for s in fit.states),
                "outer_max_relative_residual": summ["outer"]["max_relative_residual"]}  # fmt: skip
        return {"removals": fit.removals, "gradients": fit.gradients}, info

    return _cache_entry(run, f"task-if-{mode}", tcfg.to_dict()).load_or_compute(compute)


def _proximal_gradients(run: Run, mode: str, cfg: CompareConfig) -> TaskGradients:
    """Proximal MAML's per-task gradients for ``ranking.target_gradient``: total (implicit) or partial ("direct")."""
    tcfg = task_if_config(run, mode, cfg)
    params = params_as(run, cfg.dtype)
    fns = create_proximal_functions(run.model, run.spec, params)
    w = fns.layout.flatten(params).detach()

    def gradients(taskset, ids) -> Tensor:
        return proximal_task_gradients(fns, w, _tasks(run, taskset, ids, w.dtype), tcfg, mode)

    return gradients


def _maml_partial_gradients(run: Run, dtype: str) -> TaskGradients:
    """Per task ∇_θ L(Q; θ̂) at MAML's adapted weights, for ``ranking.target_gradient`` (direct IF's target)."""
    return lambda taskset, ids: _maml_partial(run, _tasks(run, taskset, ids, getattr(torch, dtype)), dtype)[0]


def task_if_influence_config(cfg: CompareConfig) -> InfluenceConfig:
    """MAML / ProtoNet task-IF = this exact TLXML fit at truncation "all positive" (module docstring)."""
    return tlxml_config("exact", cfg, damping=cfg.damping)


def _task_if(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    if _algo(run) is Algorithm.PROXIMAL_MAML:
        tensors, info = _proximal_fit(run, "exact", cfg)
        g = target_gradient(run, target, cfg.dtype, _proximal_gradients(run, "exact", cfg))
        return (g @ tensors["removals"].T).cpu().numpy(), {**info, "damping": cfg.damping}
    if solver_for(run, cfg) != "dense":
        return _matrix_free(run, target, cfg, "exact")
    inf = maml_task_if_fit(run, cfg)
    details = {"equivalent_to": "tlxml-exact with damping, all positive eigen-directions", "damping": cfg.damping,
               "truncation": inf.truncation, "num_negative": inf.num_negative}  # fmt: skip
    return all_scores(run, inf, target, cfg.dtype), details


def maml_task_if_fit(run: Run, cfg: CompareConfig) -> TaskInfluence:
    """MAML / ProtoNet task-IF: the cached damped exact TLXML fit, truncated at all positive eigen-directions."""
    inf = fit_influence(run, task_if_influence_config(cfg))
    return inf.with_truncation(inf.num_positive if inf.num_positive > 0 else inf.num_columns)


# ---- direct IF --------------------------------------------------------------------------------
def _direct_check(run: Run, cfg: CompareConfig) -> str | None:
    if _algo(run) is Algorithm.PROTONET:
        return ("ProtoNet has no weight adaptation (it classifies with ω itself and adapts only class centroids), "
                "so direct IF's partial derivative at adapted weights θ̂_j is undefined (use task-if or tlxml-*)")
    return _dense_size_reason(run, "direct IF", cfg)


def _maml_loss(run: Run, dtype: str) -> tuple[Tensor, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """ω̂ flat in ``dtype`` and the cross-entropy L(D; θ) of the network at a flat θ (support and query alike)."""
    params = params_as(run, dtype)
    layout = ParamLayout.from_params(params)
    forward = create_flat_forward_function(run.model, layout, second_order=True)

    def loss(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(forward(t, x), y)

    return layout.flatten(params).detach(), loss


def _maml_partial(run: Run, tasks, dtype: str) -> tuple[Tensor, Tensor]:
    """Per task: ∇_θ L(Q; θ̂) (T × q) and θ̂ (T × q), MAML's adapted weights."""
    w, loss = _maml_loss(run, dtype)
    grads, thetas = [], []
    for sx, sy, qx, qy in tasks:
        theta = w
        for _ in range(run.spec.inner_steps):
            theta = theta - run.spec.inner_lr * grad(loss)(theta, sx, sy)
        thetas.append(theta.detach())
        grads.append(grad(loss)(thetas[-1], qx, qy).detach())
    return torch.stack(grads), torch.stack(thetas)


def _maml_direct_parts(run: Run, cfg: CompareConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Training tasks' partial gradients and adapted weights (cached)."""

    def compute():
        g, thetas = _maml_partial(run, _train_tasks(run, getattr(torch, cfg.dtype)), cfg.dtype)
        return {"gradients": g, "thetas": thetas}, {}

    return _cache_entry(run, "direct-if-maml-parts", {"dtype": cfg.dtype}).load_or_compute(compute)


def _maml_direct_fit(run: Run, cfg: CompareConfig) -> tuple[dict[str, Tensor], dict[str, Any]]:
    def compute():
        parts, _ = _maml_direct_parts(run, cfg)
        g, thetas = parts["gradients"], parts["thetas"]
        hvp = direct_hessian_hvp(_maml_loss(run, cfg.dtype)[1], thetas, _train_tasks(run, g.dtype))
        h = hessian_from_hvp(hvp, g.shape[1], g.dtype, g.device, chunk=min(g.shape[1], 64))  # H_D
        m = g.shape[0]
        fac = spectral_factor(h, cfg.damping)  # positive part of H_D + λ_d I
        removals = ((g @ fac.factor) * fac.signs) @ fac.factor.T / m  # (1/M) (H_D + λ_d I)⁺ g_j
        info = {"mode": "direct", "kept": fac.rank, "num_negative": fac.num_negative, "num_zero": fac.num_zero}
        return {"removals": removals, "gradients": g}, info

    return _cache_entry(run, "direct-if-maml", {"damping": cfg.damping, "dtype": cfg.dtype}).load_or_compute(compute)


def _direct_if(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    if _algo(run) is Algorithm.PROXIMAL_MAML:
        tensors, info = _proximal_fit(run, "direct", cfg)
        g = target_gradient(run, target, cfg.dtype, _proximal_gradients(run, "direct", cfg))
    elif solver_for(run, cfg) != "dense":
        return _matrix_free(run, target, cfg, "direct")
    else:
        tensors, info = _maml_direct_fit(run, cfg)
        g = target_gradient(run, target, cfg.dtype, _maml_partial_gradients(run, cfg.dtype))
    return (g @ tensors["removals"].T).cpu().numpy(), {**info, "damping": cfg.damping}


# ---- direct IF with EK-FAC (seed 001 §5.1) -----------------------------------------------------
def _direct_ekfac_check(run: Run, cfg: CompareConfig) -> str | None:
    if _algo(run) is not Algorithm.MAML:
        return ("EK-FAC here approximates direct IF's H_D, the query losses' Hessians at MAML's adapted weights; "
                f"{run.spec.algo} has no such explicit adaptation (proximal-maml: task-if's inner_method 'ekfac')")  # fmt: skip
    return None


def _direct_ekfac(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Direct IF with H_D ≈ EK-FAC of the query sets' Fishers at the adapted weights θ̂_j (``fit_ekfac_sets``):
    (1/M) G (F̂_D + λ_d I)⁻¹ g_i, and the residual of that x against the exact H_D (one HVP pass)."""
    parts, _ = _maml_direct_parts(run, cfg)
    grads, thetas = parts["gradients"], parts["thetas"]
    tasks = _train_tasks(run, grads.dtype)
    layout = ParamLayout.from_params(params_as(run, cfg.dtype))

    def compute():  # the factor does not depend on the target: once per run (a few minutes on the demos)
        factor = fit_ekfac_sets(run.model, [(layout.unflatten(th), t[2]) for th, t in zip(thetas, tasks, strict=True)])
        return factor.to_tensors()

    tensors, info = _cache_entry(run, "direct-if-ekfac-factor", {"dtype": cfg.dtype, "kronecker_layers": "linear, conv2d (KFC)"}).load_or_compute(compute)
    factor = EKFACFactor.from_tensors(tensors, info)
    g = target_gradient(run, target, cfg.dtype, _maml_partial_gradients(run, cfg.dtype))
    hvp = direct_hessian_hvp(_maml_loss(run, cfg.dtype)[1], thetas, tasks)
    rep = ekfac_report(factor, hvp, g.to(grads), cfg.damping, cfg.tol)
    details = {"relative_residual": rep.relative_residual, "residual_against": "exact H_D + λ_d I",
               "kronecker_layers": len(factor.blocks), "diagonal_parameters": int(factor.diagonal.numel()),
               "damping": cfg.damping, "fit_seconds": info["fit_seconds"], "solve_seconds": round(rep.seconds, 3)}  # fmt: skip
    return ((grads @ rep.x) / len(run.train_tasks)).cpu().numpy(), details


# ---- matrix-free task-IF / direct IF (MAML, ProtoNet) -----------------------------------------
def _matrix_free(run: Run, target: Target, cfg: CompareConfig, mode: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Helpfulness (1/M) G (H + λ_d I)⁻¹ g_i with one CG / Neumann solve on HVPs for the target (task_if
    module docstring): H the meta-Hessian (task-IF) or H_D (direct IF), G the training tasks' gradients of
    the same kind. The solve is cached per target; its residual and iterations go into the details."""
    solver, m = solver_for(run, cfg), len(run.train_tasks)
    if mode == "exact":
        gradients = _train_gradients(run, cfg)
    else:
        parts, _ = _maml_direct_parts(run, cfg)
        gradients = parts["gradients"]
    settings = {"mode": mode, "damping": cfg.damping, "dtype": cfg.dtype, "solver": solver, "tol": cfg.tol,
                "max_iter": cfg.max_iter, "target": {"split": target.split, "ids": list(target.ids)}}  # fmt: skip

    def compute():
        dtype = getattr(torch, cfg.dtype)
        params = params_as(run, cfg.dtype)
        layout = ParamLayout.from_params(params)
        if mode == "exact":
            w = layout.flatten(params).detach()
            loss_fn = create_flat_loss_function(run.model, run.spec, layout)
            batches = [b for _, b in iter_task_batches(run.train_tasks, run.dataset, np.arange(m), 32, dtype)]
            hvp = meta_hessian_hvp(loss_fn, w, batches, m)
            g = target_gradient(run, target, cfg.dtype)
        else:
            hvp = direct_hessian_hvp(_maml_loss(run, cfg.dtype)[1], parts["thetas"], _train_tasks(run, dtype))
            g = target_gradient(run, target, cfg.dtype, _maml_partial_gradients(run, cfg.dtype))
        rep = target_solve(hvp, g.to(gradients), solver, cfg.damping, cfg.tol, cfg.max_iter)
        info = {k: v for k, v in rep.to_dict().items() if k not in ("damping", "seconds", "method")}
        return {"x": rep.x}, {**info, "solver": solver, "solve_seconds": round(rep.seconds, 3)}

    tensors, info = _cache_entry(run, f"{mode}-matrix-free", settings).load_or_compute(compute)
    scores = (gradients @ tensors["x"].to(gradients)) / m
    return scores.cpu().numpy(), {**info, "mode": mode, "damping": cfg.damping}


def removal_vectors(run: Run, name: str, config: CompareConfig = CompareConfig()) -> tuple[Tensor, dict[str, Any]]:
    """(M × q) first-order removal effects ω̂₋ⱼ − ω̂ ≈ (1/M) H⁺ g_j of ``task-if`` or ``direct-if``
    (flat, ``ParamLayout`` order; the rows their scores use), from the cached fits above."""
    if name not in ("task-if", "direct-if"):
        raise ConfigError(f"removal vectors exist for task-if and direct-if, not {name!r}")
    reason = METHODS[name].skip_reason(run, config)
    if reason:
        raise ConfigError(f"{name} does not apply to this run: {reason}")
    mode = "exact" if name == "task-if" else "direct"
    if _algo(run) is not Algorithm.PROXIMAL_MAML and solver_for(run, config) != "dense":
        raise ConfigError(f"{name}'s removal vectors need M = {len(run.train_tasks):,} iHVPs with solver "
                          f"{solver_for(run, config)!r}; the matrix-free path solves once per target (scores only)")
    if _algo(run) is Algorithm.PROXIMAL_MAML:
        tensors, info = _proximal_fit(run, mode, config)
        return tensors["removals"], info
    if name == "direct-if":
        tensors, info = _maml_direct_fit(run, config)
        return tensors["removals"], info
    inf = maml_task_if_fit(run, config)  # rows −I_meta(j) = (1/M) U_k diag(s) P_j
    k = inf.truncation
    rows = (inf.projections[:, :k] * inf.signs[:k]) @ inf.factor[:, :k].T / inf.num_tasks
    return rows, {"equivalent_to": "tlxml-exact with damping, all positive eigen-directions", "truncation": k}


# ---- gradient similarity ------------------------------------------------------------------
def _grad_sim(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    if _algo(run) is Algorithm.PROXIMAL_MAML:  # total (implicit) meta-gradients, as task-IF's
        tensors, info = _proximal_fit(run, "exact", cfg)
        g = target_gradient(run, target, cfg.dtype, _proximal_gradients(run, "exact", cfg))
        return (tensors["gradients"] @ g).cpu().numpy(), {"max_inner_stationarity": info["max_inner_stationarity"]}

    g = target_gradient(run, target, cfg.dtype)
    return (_train_gradients(run, cfg) @ g).cpu().numpy(), {}


def _train_gradients(run: Run, cfg: CompareConfig) -> Tensor:
    """(M × q) meta-gradients g_j = ∇_ω L_j(ω̂) of the training tasks (cached; grad-sim's and matrix-free task-IF's)."""

    def compute():
        params = params_as(run, cfg.dtype)
        return {"gradients": task_gradients(run.model, run.spec, params, run.train_tasks, run.dataset)}, {}

    return _cache_entry(run, "grad-sim", {"dtype": cfg.dtype}).load_or_compute(compute)[0]["gradients"]


# ---- a peer library: dattri at task level (peer.py) --------------------------------------------
def _dattri_check(attributor: str) -> Check:
    def check(run: Run, cfg: CompareConfig) -> str | None:
        if _algo(run) is Algorithm.PROXIMAL_MAML:
            return "dattri differentiates the task loss with torch.func; proximal-maml's implicit adaptation is not composable"
        if attributor == "trak":
            return None
        if cfg.damping <= 0:
            return ("dattri solves (H + λ_d I) x = g with no pseudo-inverse, and a meta-Hessian with unused "
                    "directions (dead units) is singular: it needs damping λ_d > 0")  # fmt: skip
        q = _num_params(run)
        if attributor == "explicit" and q > MAX_EXACT_PARAMS:
            return f"dattri's explicit attributor builds the q × q Hessian, infeasible for q = {q:,} > {MAX_EXACT_PARAMS:,} (use dattri-if-cg)"
        return None

    return check


def _dattri(attributor: str) -> Scorer:
    def score(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
        dtype = getattr(torch, cfg.dtype)
        tests = _tasks(run, run.test_tasks if target.split == "test" else run.train_tasks, list(target.ids), dtype)
        iters = min(cfg.max_iter, _num_params(run))  # dattri's CG runs all its iterations; q suffice in exact arithmetic
        s = dattri_task_scores(run, _train_tasks(run, dtype), tests, attributor, cfg.damping, dtype, iters)
        details = {"library": f"dattri {DATTRI_VERSION}", "attributor": attributor, "damping": cfg.damping,
                   **({"cg_iterations": iters} if attributor == "cg" else {})}  # fmt: skip
        return s.mean(1) / len(run.train_tasks), details  # the target's mean loss; dattri's s_ji / M = helpfulness

    return score


def _dattri_trak(run: Run, target: Target, cfg: CompareConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """dattri's TRAK at task level; its training side (projected gradients' inverse kernel) is cached per run."""
    dtype = getattr(torch, cfg.dtype)
    train = _train_tasks(run, dtype)
    dim = trak_dimension(len(train))
    side, _ = _cache_entry(run, "dattri-trak", {"dtype": cfg.dtype, "proj_dim": dim, "proj_seed": 0}).load_or_compute(
        lambda: (trak_train_side(run, train, dtype), {}))  # fmt: skip
    tests = _tasks(run, run.test_tasks if target.split == "test" else run.train_tasks, list(target.ids), dtype)
    s = dattri_trak_scores(run, train, tests, dtype, train_side=side)
    details = {"library": f"dattri {DATTRI_VERSION}", "attributor": "trak", "projection_dim": dim, "projection_seed": 0}
    return s.mean(1) / len(train), details  # the target's mean loss, helpfulness as the influence attributors


def _always(run: Run, cfg: CompareConfig) -> str | None:
    return None


METHODS: dict[str, ScoringMethod] = {
    m.name: m
    for m in (
        ScoringMethod(InfluenceMethod.EXACT.compare_name, "TLXML, exact meta-Hessian, pseudo-inverse truncated by self-rank", _tlxml_check(True), _tlxml("exact")),
        ScoringMethod(InfluenceMethod.GN.compare_name, "TLXML, Gauss-Newton curvature (Algorithms 1-3)", _tlxml_check(False), _tlxml("gn")),
        ScoringMethod("task-if", "seed 001 task-IF: total derivatives through the adaptation, damped", _task_if_check, _task_if),
        ScoringMethod("direct-if", "seed 001 direct IF: partial derivatives at the adapted weights only", _direct_check, _direct_if),
        ScoringMethod("grad-sim", "first-order baseline: dot product of meta-gradients, no Hessian", _always, _grad_sim),
        ScoringMethod("direct-if-ekfac", "seed 001 direct IF with EK-FAC for H_D (Kronecker-factored Fisher at the adapted weights)", _direct_ekfac_check, _direct_ekfac),
        ScoringMethod("dattri-if-explicit", "peer library dattri: explicit-Hessian influence, one task = one example", _dattri_check("explicit"), _dattri("explicit")),
        ScoringMethod("dattri-if-cg", "peer library dattri: CG influence, one task = one example", _dattri_check("cg"), _dattri("cg")),
        ScoringMethod("dattri-trak", "peer library dattri: TRAK (projected meta-gradients, no Hessian), one task = one example", _dattri_check("trak"), _dattri_trak),
    )
}


TLXML_METHODS = {m.compare_name: m.value for m in InfluenceMethod}  # registry name -> the fit's method


def get_method(name: str) -> ScoringMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def parse_methods(text: str | None) -> list[str]:
    """``"a,b,c"`` -> validated method names (all registered methods when empty)."""
    if not text:
        return list(METHODS)
    names = [x.strip() for x in text.split(",") if x.strip()]
    for n in names:
        get_method(n)
    if len(set(names)) != len(names):
        raise ConfigError(f"methods listed twice in {text!r}")
    return names


def method_scores(run: Run, target: Target, name: str, config: CompareConfig = CompareConfig()) -> np.ndarray:
    """Helpfulness (M,) of every training task for ``target`` by the registered method ``name``."""
    return get_method(name)(run, target, config)


def test_table_entry(run: Run, name: str, config: CompareConfig = CompareConfig()) -> CacheEntry:
    """Where method ``name``'s test table (``test_score_table``) for ``config`` lives: the disk cache,
    filled from a copy shipped in the run folder (``CacheEntry.ship``) when the cache has none."""
    if name in TLXML_METHODS:  # the fit's own test table (the Audit page's too): one entry per fit
        return test_scores_entry(run, tlxml_config(TLXML_METHODS[name], config))
    settings = {**config.to_dict(), "test_tasks": run.test_tasks.fingerprint()}
    entry = _cache_entry(run, f"{name}:test-table", settings)
    entry.restore_shipped(run.checkpoint.path)
    return entry


TABLE_SAVE_EVERY = 8  # test tasks between the partial saves of a method's test table


def test_score_table(
    run: Run, name: str, config: CompareConfig = CompareConfig(), progress: Callable[[int, int], None] | None = None,
    save_every: int = TABLE_SAVE_EVERY,
) -> np.ndarray:  # fmt: skip
    """(T × M) helpfulness of every training task for each single test task by method ``name``: row
    i is ``method_scores(run, Target((i,)), name, config)``. Computed once per run and settings and
    cached, so a bundled demo can ship it and its Compare page answers for any test task at once;
    the rows done are saved every ``save_every`` test tasks, so a stopped table resumes there."""
    method = get_method(name)
    reason = method.skip_reason(run, config)
    if reason:
        raise ConfigError(f"{name} does not apply to this run: {reason}")
    n_test = len(run.test_tasks)
    if name in TLXML_METHODS:  # batched over test tasks, from the cached fit (ranking.fit_test_table)
        icfg = tlxml_config(TLXML_METHODS[name], config)
        table = fit_test_table(run, fit_influence(run, icfg), icfg.dtype, test_table_entry(run, name, config))
        if progress is not None:
            progress(n_test, n_test)
        return np.asarray(table, dtype=np.float64)
    entry = test_table_entry(run, name, config)

    def compute() -> tuple[dict[str, Tensor], dict[str, Any]]:
        saved = entry.load_partial()
        rows = list(saved[0]["rows"]) if saved is not None else []  # float64: the scores as computed
        for i in range(len(rows), n_test):
            rows.append(torch.from_numpy(np.asarray(method.scores(run, Target((i,)), config)[0], dtype=np.float64)))
            if progress is not None:
                progress(i + 1, n_test)
            if (i + 1) % save_every == 0 and i + 1 < n_test:
                entry.save_partial({"rows": torch.stack(rows)}, {"rows_done": i + 1})
        table = torch.stack(rows).to(getattr(torch, config.dtype))  # lossless: computed in this dtype
        return {"scores": table}, {"method": name, "num_test_tasks": n_test, "resumed_from": len(saved[0]["rows"]) if saved else 0}

    return entry.load_or_compute(compute)[0]["scores"].double().numpy()


def test_task_entry(run: Run, name: str, config: CompareConfig, test_id: int) -> CacheEntry:
    """Where method ``name``'s scores for the single test task ``test_id`` live when its whole test
    table is not wanted (a method whose table costs hours: one test task's scores as a job)."""
    settings = {**config.to_dict(), "test_tasks": run.test_tasks.fingerprint(), "test_id": int(test_id)}
    return _cache_entry(run, f"{name}:test-task", settings)


def test_task_scores(run: Run, name: str, config: CompareConfig, test_id: int) -> np.ndarray:
    """``method_scores`` for the single test task ``test_id``, computed once and kept on disk
    (``test_task_entry``): row ``test_id`` of the test table, for one test task only."""
    method = get_method(name)

    def compute() -> tuple[dict[str, Tensor], dict[str, Any]]:
        scores = np.asarray(method.scores(run, Target((int(test_id),)), config)[0], dtype=np.float64)
        return {"scores": torch.from_numpy(scores)}, {"method": name, "test_id": int(test_id)}

    return test_task_entry(run, name, config, test_id).load_or_compute(compute)[0]["scores"].numpy()


def _table_row(run: Run, target: Target, name: str, config: CompareConfig) -> np.ndarray | None:
    """Row ``i`` of a complete (cached or shipped) test table, or the test task's own stored scores
    (``test_task_scores``), when ``target`` is the single test task ``i``; None when neither is on disk."""
    if target.split != "test" or len(target.ids) != 1:
        return None
    entry = test_table_entry(run, name, config)
    if entry.complete:
        return entry.load()[0]["scores"][target.ids[0]].numpy().astype(np.float64)
    one = test_task_entry(run, name, config, target.ids[0])
    return one.load()[0]["scores"].numpy() if one.complete else None


def scores_on_disk(run: Run, name: str, config: CompareConfig, test_id: int) -> bool:
    """True when method ``name``'s scores for test task ``test_id`` can be read without computing."""
    return test_table_entry(run, name, config).complete or test_task_entry(run, name, config, test_id).complete


def pair_agreement(a: np.ndarray, b: np.ndarray, k: int) -> dict[str, float]:
    """Pearson, Spearman and the top-k overlap of the k most helpful and the k most harmful tasks."""
    return {**score_agreement(a, b), "top_k_helpful_overlap": top_k_overlap(a, b, k),
            "top_k_harmful_overlap": top_k_overlap(-np.asarray(a), -np.asarray(b), k)}  # fmt: skip


def compare_methods(
    run: Run, target: Target, methods: Sequence[str] | None = None, k: int = 10,
    config: CompareConfig = CompareConfig(), include_scores: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Scores of each method for ``target`` and every pair's agreement (module docstring).

    Methods that do not apply to the run's learner (or size) are listed under ``skipped`` with the
    reason. ``k`` is clipped to M. Per method: the k most helpful and most harmful task ids, the
    scores (``include_scores``), details and seconds; per pair: Pearson, Spearman, top-k overlaps.
    """
    names = list(METHODS) if methods is None else list(methods)
    for n in names:
        get_method(n)
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}")
    m = len(run.train_tasks)
    k = min(k, m)
    out: dict[str, Any] = {
        "target": {"split": target.split, "ids": list(target.ids)}, "num_tasks": m, "k": k, "sign": SIGN,
        "config": config.to_dict(), "methods": {}, "skipped": {}, "pairs": [],
    }  # fmt: skip
    scores: dict[str, np.ndarray] = {}
    for n in names:
        method = METHODS[n]
        reason = method.skip_reason(run, config)
        if reason:
            out["skipped"][n] = reason
            continue
        started = time.time()
        row = _table_row(run, target, n, config)
        s, details = (row, {"from": "test table (test_score_table)"}) if row is not None else method.scores(run, target, config)
        if s.shape != (m,) or not np.isfinite(s).all():
            raise ConfigError(f"{n} produced {s.shape} scores, {int((~np.isfinite(s)).sum())} non-finite")
        order = np.argsort(-s, kind="stable")
        entry = {"summary": method.summary, "most_helpful": order[:k].tolist(), "most_harmful": order[::-1][:k].tolist(),
                 "details": details, "seconds": round(time.time() - started, 3)}  # fmt: skip
        if include_scores:
            entry["scores"] = s.tolist()
        out["methods"][n] = entry
        scores[n] = s
    for a, b in itertools.combinations(scores, 2):
        out["pairs"].append({"a": a, "b": b, **pair_agreement(scores[a], scores[b], k)})
    return out
