"""Total-derivative influence for proximal MAML: task-IF, direct IF, instance-IF (seed 001 §4–5; METHODS §6).

Outer loss of task j: L_out,j(ω) = L(Q_j; θ̂_j(ω)), θ̂_j = argmin_θ F_j(θ), F_j = L(S_j; θ) + (λ/2)‖θ − ω‖².
With H_in = ∇²_θ L(S_j; θ̂_j), H_out = ∇²_θ L(Q_j; θ̂_j), g_out = ∇_θ L(Q_j; θ̂_j), A = (H_in + λI)⁻¹:

- Jacobian (implicit function theorem): J = dθ̂_j/dω = λA (symmetric).
- Total gradient (seed 001 Thm 4.3): dL_out,j/dω = J g_out = λ x, x = A g_out (one iHVP, ``solve_ihvp``).
- Total Hessian, ``mode="exact"``: differentiating λ x(ω) through the implicit solve,
  (H + λI) dx + ∇³L_S[dθ̂, x] = H_out dθ̂ gives d²L_out,j/dω² = J (H_out − T_x) J, T_x = ∇³L_S(θ̂)[x, ·, ·].
  Chosen over finite differences of the total gradient: exact to solve tolerance, symmetric,
  matrix-free (HVP form), no step size; the tests check it against such finite differences.
  ``mode="approx"`` drops the third-order T_x (seed 001 §5, "Total Hessian Matrix Approximation").
- ``mode="direct"`` (seed 001 eq. 6–7, the paper's baseline): partial derivatives only, as if
  dθ̂/dω = I with θ̂_j held at its value: gradient g_out, Hessian H_out.

H_T is the Hessian of the *averaged, damped* meta-objective R = (1/M) Σ_j L_out,j + (λ_d/2)‖ω − ω̂‖²,
i.e. (1/M) Σ_j d²L_out,j/dω² + λ_d I. Sign convention (checked by finite differences and
leave-one-out re-optimisation in tests/test_task_if.py): up-weighting task j by ε moves
ω̂ by −(ε/M) H_T⁻¹ g_j, so

    task-IF(j) = −H_T⁻¹ g_j,   removal  ω̂₋ⱼ − ω̂ ≈ −(1/M) task-IF(j) = (1/M) H_T⁻¹ g_j,
    helpfulness(i, j) = g_iᵀ (ω̂₋ⱼ − ω̂)  (predicted rise of test loss i when j is removed;
    positive = task j helped, as TLXML's helpfulness = −I_perf, README "Sign convention").

Instance-IF (seed 001 Thm 4.5–4.6), as removal changes of ω̂ (point weight 1 → 0, normalisers
kept; batch norm statistics are not re-weighted):
- query point z ∈ Q_j (n_q points): Δω̂ ≈ (1/(M n_q)) H_T⁻¹ J ∇_θ ℓ(z; θ̂_j);
- support point z ∈ S_j (n points), two stages: Δθ̂_j ≈ (1/n) A ∇_θ ℓ(z; θ̂_j) (inner IF),
  ΔL_out,j(ω) ≈ g_outᵀ Δθ̂_j = (1/n) xᵀ∇ℓ_z, then Δω̂ ≈ −(1/M) H_T⁻¹ d(ΔL_out,j)/dω with
  d(xᵀ∇ℓ_z)/dω = J (H_out y − T_x y + ∇²ℓ_z x), y = A ∇ℓ_z (T_x dropped in "approx"; J = I in "direct").

Explicit adaptation (MAML, ProtoNet) at users' sizes, matrix-free (``meta_hessian_hvp``,
``direct_hessian_hvp``, ``target_solve``): one iHVP per *target* instead of one per training task,
helpfulness(i, ·) = (1/M) G (H + λ_d I)⁻¹ g_i by symmetry of H, with H the total Hessian
(TLXML's meta-Hessian, third order incl.) or direct IF's H_D = (1/M) Σ_j ∇²_θ L(Q_j; θ̂_j).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, grad_and_value, jvp

from metainf_core.config import Algorithm
from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError, TaskNotFoundError
from metainf_core.influence.ekfac import ekfac_report, fit_ekfac
from metainf_core.influence.flat import ParamLayout, create_flat_forward_function
from metainf_core.influence.gradients import create_meta_objective_function, iter_task_batches
from metainf_core.influence.hvp import HVP, hessian_from_hvp, hvp_of
from metainf_core.influence.ihvp import IHVPMethod, IHVPResult, solve_ihvp
from metainf_core.influence.scores import Ranking
from metainf_core.learners import LearnerSpec, Params, ProximalSolver
from metainf_core.tasks import TaskBatch, TaskSet

Task = tuple[Tensor, Tensor, Tensor, Tensor]  # support_x, support_y, query_x, query_y (one task)


class IFMode(str, Enum):
    """Which derivatives of L_out,j(ω) the influence uses (module docstring)."""

    EXACT = "exact"  # total gradient, total Hessian J (H_out − T_x) J
    APPROX = "approx"  # total gradient, J H_out J (third-order term dropped, seed 001 §5)
    DIRECT = "direct"  # partial derivatives only: g_out, H_out (seed 001 eq. 6–7)


class InnerSolver(str, Enum):
    """How θ̂_j is found: the learner's gradient descent (``ProximalSolver``) or damped Newton (small q)."""

    GD = "gd"
    NEWTON = "newton"


@dataclass(frozen=True)
class TaskIFConfig:
    """Settings of a task-IF fit: ``damping`` λ_d of the meta-objective, the outer iHVP ``method`` on H_T,
    the ``inner_method`` for (H_in + λI)⁻¹, their relative ``tol``; ``dense`` builds per-task q × q
    matrices once (small q) instead of nested matrix-free solves. The defaults (dense, Newton inner
    solves) suit q ≲ 1,000; for larger networks use ``dense=False, inner_solver="gd"`` (the learner's
    own solve, then every product is an HVP and H_T is inverted by CG)."""

    mode: str = "exact"
    damping: float = 0.0
    method: str = "cg"
    inner_method: str = "cg"
    tol: float = 1e-10
    inner_solver: str = "newton"
    inner_tol: float = 1e-11
    dense: bool = True

    def __post_init__(self) -> None:
        for name, enum in (("mode", IFMode), ("inner_solver", InnerSolver)):
            try:
                enum(getattr(self, name))
            except ValueError:
                allowed = [e.value for e in enum]
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}") from None
        if self.method not in ("exact", "cg", "lanczos", "neumann"):
            raise ConfigError(f"method must be 'exact', 'cg', 'lanczos' or 'neumann', got {self.method!r}")
        if self.inner_method not in ("exact", "cg", "neumann", "ekfac"):
            raise ConfigError(f"inner_method must be 'exact', 'cg', 'neumann' or 'ekfac', got {self.inner_method!r}")
        if not (self.damping >= 0 and math.isfinite(self.damping)):
            raise ConfigError(f"damping must be a non-negative finite number, got {self.damping}")
        if not (self.tol > 0 and self.inner_tol > 0):
            raise ConfigError(f"tol and inner_tol must be positive, got {self.tol}, {self.inner_tol}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ProximalFunctions:
    """Flat-θ losses of one proximal-MAML network (composite batch norm, so they differentiate twice or more)."""

    layout: ParamLayout
    lam: float
    solver: ProximalSolver
    point_losses: Callable[[Tensor, Tensor, Tensor], Tensor]  # (θ, x, y) -> per-example cross-entropy (n)
    model: nn.Module | None = None  # the network, for EK-FAC's layer structure (inner_method "ekfac")

    def support_loss(self, theta: Tensor, x: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor:
        """L(S; θ) = (1/n) Σ_k w_k ℓ_k(θ) (w = 1 by default)."""
        losses = self.point_losses(theta, x, y)
        return losses.mean() if weights is None else (weights.to(losses) * losses).sum() / losses.numel()

    def query_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.point_losses(theta, x, y).mean()


def create_proximal_functions(model: nn.Module, spec: LearnerSpec, params: Params) -> ProximalFunctions:
    """The losses task-IF differentiates; ``ConfigError`` unless ``spec`` is proximal MAML."""
    if Algorithm(spec.algo) is not Algorithm.PROXIMAL_MAML:
        raise ConfigError(
            f"task-IF needs proximal-maml (implicit inner solution), got {spec.algo!r}; "
            "use TLXML (fit_exact / fit_gauss_newton)"
        )
    layout = ParamLayout.from_params(params)
    forward = create_flat_forward_function(model, layout, second_order=True)

    def point_losses(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(forward(theta, x), y, reduction="none")

    return ProximalFunctions(layout, float(spec.prox_lambda), ProximalSolver(model, spec), point_losses, model)


def solve_inner(fns: ProximalFunctions, w: Tensor, sx: Tensor, sy: Tensor, config: TaskIFConfig,
                weights: Tensor | None = None, theta0: Tensor | None = None) -> tuple[Tensor, float]:
    """θ̂ = argmin_θ L(S; θ) + (λ/2)‖θ − ω‖² and its stationarity ‖∇F(θ̂)‖.

    ``newton``: damped Newton from ``theta0`` (default ω) on the dense Hessian, eigenvalues shifted to
    stay a descent step, with backtracking; ``gd``: the learner's solver (its own steps and tolerance).
    """
    w = w.detach()

    def objective(t: Tensor) -> Tensor:
        d = t - w
        return fns.support_loss(t, sx, sy, weights) + 0.5 * fns.lam * (d * d).sum()

    if InnerSolver(config.inner_solver) is InnerSolver.GD:
        if weights is not None:
            raise ConfigError("weighted support losses need inner_solver='newton'")
        theta = fns.solver.solve(w, sx, sy)
        return theta, float(grad(objective)(theta).norm())
    theta = w.clone() if theta0 is None else theta0.detach().clone()
    g_fn = grad_and_value(objective)
    for _ in range(100):
        g, f = g_fn(theta)
        if float(g.norm()) <= config.inner_tol:
            break
        ev, vec = torch.linalg.eigh(_matrix(hvp_of(objective, theta), theta))
        step = vec @ ((vec.T @ g) / (ev + max(0.0, 1e-3 - float(ev.min()))))
        t = 1.0
        while float(objective(theta - t * step)) > float(f) + 1e-14 * (1 + abs(float(f))) and t > 1e-8:
            t *= 0.5
        theta = theta - t * step
    return theta.detach(), float(grad(objective)(theta).norm())


@dataclass(frozen=True, eq=False)
class ProximalTaskState:
    """One task at ω: θ̂, the outer loss and gradient, x = A g_out, and the operators of module docstring.

    ``inner_solve`` v ↦ A v; ``outer`` v ↦ H_out v; ``third`` u ↦ T_x u. ``report``: the solve for x.
    """

    task: Task
    theta: Tensor
    outer_loss: float
    outer_grad: Tensor
    x: Tensor
    lam: float
    inner_solve: Callable[[Tensor], Tensor]
    outer: HVP
    third: HVP
    report: IHVPResult
    stationarity: float
    weights: Tensor | None = None

    @property
    def total_gradient(self) -> Tensor:
        """dL_out,j/dω = λ (H_in + λI)⁻¹ ∇_θ L_out,j(θ̂_j) (seed 001 Thm 4.3; METHODS §6)."""
        return self.lam * self.x

    def jacobian(self, v: Tensor) -> Tensor:
        """J v = λ (H_in + λI)⁻¹ v (dθ̂/dω is symmetric)."""
        return self.lam * self.inner_solve(v)

    def gradient(self, mode: IFMode) -> Tensor:
        return self.outer_grad if mode is IFMode.DIRECT else self.total_gradient

    def hessian_vector(self, v: Tensor, mode: IFMode) -> Tensor:
        """d²L_out,j/dω² v: J (H_out − T_x) J v ("exact"), J H_out J v ("approx"), H_out v ("direct")."""
        if mode is IFMode.DIRECT:
            return self.outer(v)
        a = self.jacobian(v)
        b = self.outer(a) - self.third(a) if mode is IFMode.EXACT else self.outer(a)
        return self.jacobian(b)


def _matrix(op: HVP, like: Tensor) -> Tensor:
    """The q × q matrix of an HVP, all q products in one vmap for small q."""
    return hessian_from_hvp(op, like.numel(), like.dtype, like.device, chunk=min(like.numel(), 64))


def _dense(op: HVP, like: Tensor) -> HVP:
    m = _matrix(op, like)
    return lambda v: m @ v


def task_state(fns: ProximalFunctions, w: Tensor, task: Task, config: TaskIFConfig,
               weights: Tensor | None = None, theta0: Tensor | None = None) -> ProximalTaskState:
    """Solve task j's inner problem at ω and set up its derivatives (module docstring)."""
    sx, sy, qx, qy = task
    theta, stat = solve_inner(fns, w, sx, sy, config, weights, theta0)
    g_out, loss = grad_and_value(lambda t: fns.query_loss(t, qx, qy))(theta)
    s_grad = grad(lambda t: fns.support_loss(t, sx, sy, weights))
    inner: HVP = hvp_of(lambda t: fns.support_loss(t, sx, sy, weights), theta)
    outer: HVP = hvp_of(lambda t: fns.query_loss(t, qx, qy), theta)
    q = theta.numel()
    if config.dense:
        inner, outer = _dense(inner, theta), _dense(outer, theta)
    ekfac = None
    if config.inner_method == "ekfac":  # seed 001 §5.1: EK-FAC of the support loss's Fisher at θ̂ for A = (H_in + λI)⁻¹
        if fns.model is None or weights is not None:
            raise ConfigError("inner_method 'ekfac' needs the network (create_proximal_functions) and unweighted support losses")
        ekfac = fit_ekfac(fns.model, fns.layout.unflatten(theta), sx, sy)
        report = ekfac_report(ekfac, inner, g_out.detach(), fns.lam, config.inner_tol)
    else:
        report = solve_ihvp(inner, g_out.detach(), config.inner_method, damping=fns.lam, tol=config.inner_tol)
    x = report.x

    def hx(t: Tensor) -> Tensor:  # H_in(t) x
        return jvp(s_grad, (t,), (x,))[1]

    def third(u: Tensor) -> Tensor:  # T_x u = d/dε H_in(θ̂ + εu) x
        return jvp(hx, (theta,), (u.to(theta),))[1].detach()

    if ekfac is not None:
        if config.dense:
            third = _dense(third, theta)

        def inner_solve(v: Tensor) -> Tensor:
            return ekfac.ihvp(v, fns.lam)
    elif config.dense:
        third = _dense(third, theta)
        lu = torch.linalg.lu_factor(_matrix(inner, theta) + fns.lam * torch.eye(q, dtype=theta.dtype, device=theta.device))

        def inner_solve(v: Tensor) -> Tensor:
            return torch.linalg.lu_solve(*lu, v.unsqueeze(-1)).squeeze(-1)
    else:

        def inner_solve(v: Tensor) -> Tensor:
            return solve_ihvp(inner, v, config.inner_method, damping=fns.lam, tol=config.inner_tol).x

    return ProximalTaskState(task, theta, float(loss), g_out.detach(), x, fns.lam, inner_solve, outer, third,
                             report, stat, weights)


def total_hessian_hvp(states: Sequence[ProximalTaskState], mode: IFMode | str, damping: float = 0.0) -> HVP:
    """v ↦ H_T v = (1/M) Σ_j d²L_out,j/dω² v + λ_d v, matrix-free (CG-ready; module docstring)."""
    m = IFMode(mode)

    def hvp(v: Tensor) -> Tensor:
        acc = sum(s.hessian_vector(v, m) for s in states)
        return acc / len(states) + damping * v  # type: ignore[operator]

    return hvp


def proximal_task_gradients(
    fns: ProximalFunctions, w: Tensor, tasks: Sequence[Task], config: TaskIFConfig, mode: IFMode | str
) -> Tensor:
    """(T × q) per-task gradients of L_out,j at ω̂ of the kind ``mode`` scores with: total (implicit,
    through the proximal inner solution; seed 001 Thm 4.3) or partial ("direct", seed 001 eq. 6).
    The one per-task gradient of proximal MAML: ``TaskIF.target_gradient`` and ``ranking.target_gradient``'s."""
    mode = IFMode(mode)
    return torch.stack([task_state(fns, w, t, config).gradient(mode) for t in tasks])


@dataclass(frozen=True, eq=False)
class TaskIF:
    """A fitted task-IF (or direct IF) for M training tasks at ω̂ (module docstring for the maths).

    ``gradients`` (M × q): g_j (total, or partial in "direct" mode); ``removals`` (M × q): ω̂₋ⱼ − ω̂ ≈
    (1/M) H_T⁻¹ g_j; ``reports``: the outer iHVP per task; ``inner_reports``: the solves for x_j;
    ``hvp``: v ↦ (1/M) Σ_j d²L_out,j/dω² v *without* λ_d (the solves add ``config.damping``).
    """

    mode: IFMode
    config: TaskIFConfig
    w: Tensor
    gradients: Tensor
    removals: Tensor
    reports: tuple[IHVPResult, ...]
    inner_reports: tuple[IHVPResult, ...]
    states: tuple[ProximalTaskState, ...] = field(repr=False)
    hvp: HVP = field(repr=False)
    fns: ProximalFunctions = field(repr=False)
    seconds: float = 0.0

    @property
    def num_tasks(self) -> int:
        return int(self.removals.shape[0])

    def _check_task(self, j: int) -> int:
        if not 0 <= int(j) < self.num_tasks:
            raise TaskNotFoundError(f"training task {j} is not in 0..{self.num_tasks - 1}")
        return int(j)

    def task_if(self, j: int) -> Tensor:
        """task-IF(j) = −H_T⁻¹ g_j (seed 001 Thm 4.3): dω̂/dε of up-weighting task j, times M."""
        return -self.num_tasks * self.removals[self._check_task(j)]

    def removal(self, j: int) -> Tensor:
        """ω̂₋ⱼ − ω̂ ≈ (1/M) H_T⁻¹ g_j, the first-order effect of removing task j."""
        return self.removals[self._check_task(j)]

    def solve(self, v: Tensor) -> IHVPResult:
        """H_T⁻¹ v by the configured outer method (damping λ_d included)."""
        return _outer_solve(self.hvp, v, self.config)

    def target_gradient(self, tasks: Sequence[Task]) -> Tensor:
        """Gradient of the mean loss of test ``tasks`` at ω̂, of the fit's kind (total, or partial in "direct")."""
        return proximal_task_gradients(self.fns, self.w, tasks, self.config, self.mode).mean(0)

    def helpfulness(self, test_grad: Tensor) -> Tensor:
        """(M,) g_iᵀ(ω̂₋ⱼ − ω̂): predicted rise of the test loss when j is removed (positive = j helped)."""
        if test_grad.shape[-1] != self.removals.shape[1]:
            raise ConfigError(f"gradient has {test_grad.shape[-1]} entries, the model has q = {self.removals.shape[1]}")
        return test_grad.to(self.removals) @ self.removals.T

    def rank(self, test_grad: Tensor, top: int | None = None) -> Ranking:
        """Training tasks by decreasing helpfulness for a target gradient ``test_grad`` (as TaskInfluence.rank)."""
        scores = self.helpfulness(test_grad)
        order = torch.argsort(scores, descending=True, stable=True)[:top]
        return Ranking(order.cpu().numpy(), scores[order].cpu().numpy())

    def query_point_removal(self, j: int, k: int) -> Tensor:
        """Δω̂ ≈ (1/(M n_q)) H_T⁻¹ dℓ(z_k; θ̂_j)/dω for query point k of task j (seed 001 Thm 4.5)."""
        s = self.states[self._check_task(j)]
        _, _, qx, qy = s.task
        g_z = self._point_grad(s, qx, qy, k)
        d = g_z if self.mode is IFMode.DIRECT else s.jacobian(g_z)
        return self.solve(d).x / (self.num_tasks * len(qy))

    def support_point_removal(self, j: int, k: int) -> Tensor:
        """Δω̂ ≈ −(1/M) H_T⁻¹ d(ΔL_out,j)/dω for support point k of task j, ΔL_out,j = (1/n) xᵀ∇ℓ_z.

        Two stages (seed 001 Thm 4.6): inner IF Δθ̂_j = (1/n) A ∇ℓ_z, then the outer change up-weighted.
        """
        s = self.states[self._check_task(j)]
        sx, sy, _, _ = s.task
        g_z = self._point_grad(s, sx, sy, k)
        y = s.inner_solve(g_z)
        h_z = hvp_of(lambda t: self.fns.point_losses(t, sx, sy)[k], s.theta)(s.x)
        b = s.outer(y) + h_z
        if self.mode is IFMode.EXACT:
            b = b - s.third(y)
        d = b if self.mode is IFMode.DIRECT else s.jacobian(b)
        return -self.solve(d / len(sy)).x / self.num_tasks

    def _point_grad(self, s: ProximalTaskState, x: Tensor, y: Tensor, k: int) -> Tensor:
        if not 0 <= int(k) < len(y):
            raise ConfigError(f"point {k} is not in 0..{len(y) - 1}")
        return grad(lambda t: self.fns.point_losses(t, x, y)[int(k)])(s.theta).detach()

    def summary(self) -> dict[str, Any]:
        """iHVP reports, aggregated: iterations, residuals, seconds (outer and inner)."""

        def agg(rs: Sequence[IHVPResult]) -> dict[str, Any]:
            return {"solves": len(rs), "iterations_mean": float(np.mean([r.iterations for r in rs])),
                    "max_relative_residual": max(r.relative_residual for r in rs),
                    "seconds": sum(r.seconds for r in rs), "converged": all(r.converged for r in rs)}

        return {"mode": self.mode.value, "config": self.config.to_dict(), "seconds": self.seconds,
                "outer": agg(self.reports), "inner": agg(self.inner_reports)}


def _outer_solve(hvp: HVP, v: Tensor, config: TaskIFConfig) -> IHVPResult:
    opts: dict[str, Any] = {"damping": config.damping, "tol": config.tol}
    if IHVPMethod(config.method) is IHVPMethod.EXACT:
        opts["chunk"] = 1  # nested solves are not vmappable
    return solve_ihvp(hvp, v, config.method, **opts)


def fit_task_if_tasks(
    fns: ProximalFunctions, w: Tensor, tasks: Sequence[Task], config: TaskIFConfig = TaskIFConfig()
) -> TaskIF:
    """Task-IF (or direct IF) at ω̂ = ``w`` over the given training tasks (ω̂ must minimise the damped objective)."""
    if not tasks:
        raise ConfigError("task-IF needs at least one training task")
    t0, mode = time.perf_counter(), IFMode(config.mode)
    w = w.detach()
    states = tuple(task_state(fns, w, t, config) for t in tasks)
    hvp = total_hessian_hvp(states, mode)  # undamped: the solver adds λ_d
    if config.dense:  # H_T once (q products), then cheap mat-vecs for every solve
        h = hessian_from_hvp(hvp, w.numel(), w.dtype, w.device, chunk=1)
        hvp = lambda v: h @ v
    grads = torch.stack([s.gradient(mode) for s in states])
    reports = tuple(_outer_solve(hvp, g, config) for g in grads)
    removals = torch.stack([r.x for r in reports]) / len(tasks)
    return TaskIF(mode, config, w, grads, removals, reports, tuple(s.report for s in states), states, hvp, fns,
                  time.perf_counter() - t0)


def batch_tasks(batch: TaskBatch) -> list[Task]:
    """A TaskBatch as a list of single-task tuples."""
    return [(batch.support_x[b], batch.support_y[b], batch.query_x[b], batch.query_y[b]) for b in range(len(batch))]


def fit_task_if(model: nn.Module, spec: LearnerSpec, params: Params, taskset: TaskSet, dataset: FewShotDataset,
                ids: Sequence[int] | np.ndarray | None = None, config: TaskIFConfig = TaskIFConfig(),
                batch_size: int = 32) -> TaskIF:
    """Fit task-IF over training tasks ``ids`` (all by default) of a proximal-MAML run at ``params``."""
    fns = create_proximal_functions(model, spec, params)
    w = fns.layout.flatten(params).detach()
    ids = np.arange(len(taskset)) if ids is None else np.asarray(ids, dtype=np.int64)
    tasks: list[Task] = []
    for _, b in iter_task_batches(taskset, dataset, ids, batch_size, w.dtype, w.device):
        tasks.extend(batch_tasks(b))
    return fit_task_if_tasks(fns, w, tasks, config)


# ---- explicit adaptation (MAML / ProtoNet), matrix-free ---------------------------------------
def meta_hessian_hvp(loss_fn: Callable[..., Tensor], w: Tensor, batches: Sequence[TaskBatch], num_tasks: int) -> HVP:
    """v ↦ (1/M) Σ_j ∇²_ω L_j(ω) v over the tasks of ``batches`` (TLXML Eq. 5; seed 001's total
    Hessian for explicit adaptation), forward-over-reverse per batch: ``meta_hessian`` without the matrix."""
    seen = sum(len(b) for b in batches)
    if seen != num_tasks:
        raise ConfigError(f"meta_hessian_hvp got {seen} tasks, expected {num_tasks}")
    hvps = [hvp_of(create_meta_objective_function(loss_fn, b, torch.full((len(b),), 1.0 / num_tasks, dtype=w.dtype,
                                                                          device=w.device)), w) for b in batches]  # fmt: skip

    def hvp(v: Tensor) -> Tensor:
        return sum(h(v) for h in hvps)  # type: ignore[return-value]

    return hvp


def direct_hessian_hvp(query_loss: Callable[[Tensor, Tensor, Tensor], Tensor], thetas: Tensor, tasks: Sequence[Task]) -> HVP:
    """v ↦ H_D v = (1/M) Σ_j ∇²_θ L(Q_j; θ̂_j) v (seed 001 eq. 6–7, direct IF's Hessian), ``thetas`` (M × q)
    the adapted weights held fixed."""
    hvps = [hvp_of(lambda t, x=t_[2], y=t_[3]: query_loss(t, x, y), th) for th, t_ in zip(thetas, tasks, strict=True)]

    def hvp(v: Tensor) -> Tensor:
        return sum(h(v) for h in hvps) / len(hvps)  # type: ignore[operator]

    return hvp


def target_solve(hvp: HVP, g: Tensor, method: str, damping: float, tol: float, max_iter: int) -> IHVPResult:
    """x = (H + λ_d I)⁻¹ g by CG (at most ``max_iter`` HVPs), Lanczos (the positive-part pseudo-inverse of the
    dense task-IF, at most ``max_iter`` HVPs) or a Neumann series (``max_iter`` terms), to relative residual
    ``tol`` (Lanczos: to a relative change of x); on an indefinite H + λ_d I, CG stops at the first negative
    curvature (Steihaug's rule: the Krylov iterate so far, reported ``converged=False`` with its residual)."""
    if method == IHVPMethod.NEUMANN.value:
        return solve_ihvp(hvp, g, method, damping=damping, tol=tol, terms=max_iter)
    if method not in (IHVPMethod.CG.value, IHVPMethod.LANCZOS.value):
        raise ConfigError(f"matrix-free solves use 'cg', 'lanczos' or 'neumann', got {method!r}")
    return solve_ihvp(hvp, g, method, damping=damping, tol=tol, max_iter=max_iter)
