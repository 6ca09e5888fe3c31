"""Inverse-Hessian-vector products x ≈ (H + λI)⁻¹ v behind one interface (METHODS §6; seed 001 §5.1).

Every solver sees H only through an HVP ``v ↦ H v`` on flat length-q vectors, solves
(H + λI) x = v for damping λ ≥ 0, and reports an ``IHVPResult`` with the iteration count, the
residual ‖(H + λI) x − v‖ of the returned x (from one HVP of x itself, not a recursion), and
the time taken. Methods (``IHVPMethod``):

- ``exact``: the q × q matrix from q HVPs, then an eigendecomposition (q ≤ ``MAX_EXACT_PARAMS``).
  Indefinite or singular H is handled as in ``spectral_factor``: eigenvalues of H + λI within
  rtol·max|λ| of zero are dropped (pseudo-inverse), and so are negative ones unless
  ``keep_negative`` (TLXML 5.1.1, B.2). What is dropped shows up as residual, and ``converged``
  is then False.
- ``cg``: conjugate gradient (Hestenes–Stiefel) to ‖r‖ ≤ tol·‖v‖; stops with converged=False
  on negative curvature pᵀ(H + λI)p ≤ 0 rather than diverge.
- ``lanczos``: the positive-part pseudo-inverse of ``exact`` without the q × q matrix: Lanczos on
  (H + λI) from v (full reorthogonalisation) and the Ritz pairs' inverse on the Krylov space, negative
  Ritz values dropped (TLXML B.2); converged when x stops changing (or the space is invariant), the
  residual reporting what the dropped directions leave. Where CG meets negative curvature, this
  still solves the system the dense task-IF solves.
- ``neumann``: x = η Σ_{k=0}^{K} (I − η(H + λI))^k v (seed 001 §5.1), η = 1/λ_max by power
  iteration unless given; converges iff 0 < η λ_i < 2 for every eigenvalue λ_i of H + λI.
- ``gauss-newton``: x = U diag(s) Uᵀ v from a ``CurvatureFactor`` (Gauss-Newton or spectral),
  checked against the true HVP when one is given.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from metainf_core.exceptions import ConfigError
from metainf_core.influence.exact import MAX_EXACT_PARAMS, CurvatureFactor, spectral_factor
from metainf_core.influence.hvp import HVP, hessian_from_hvp, power_iteration


class IHVPMethod(str, Enum):
    """Solvers of (H + λI) x = v; ``solve_ihvp`` dispatches on these."""

    EXACT = "exact"
    CG = "cg"
    LANCZOS = "lanczos"
    NEUMANN = "neumann"
    GAUSS_NEWTON = "gauss-newton"


@dataclass(frozen=True)
class IHVPResult:
    """x ≈ (H + λI)⁻¹ v with what it cost and how well it solves the system.

    ``residual_norm`` = ‖(H + λI) x − v‖ for the returned x (NaN when no HVP was given to
    measure it); ``relative_residual`` divides by ‖v‖. ``hvp_calls`` counts HVPs, including
    the final residual check and any power iteration. ``note`` says why a solve stopped early.
    """

    x: Tensor
    method: IHVPMethod
    iterations: int
    residual_norm: float
    relative_residual: float
    seconds: float
    converged: bool
    damping: float = 0.0
    hvp_calls: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Everything but x, JSON-ready."""
        return {
            "method": self.method.value,
            "iterations": self.iterations,
            "residual_norm": self.residual_norm,
            "relative_residual": self.relative_residual,
            "seconds": self.seconds,
            "converged": self.converged,
            "damping": self.damping,
            "hvp_calls": self.hvp_calls,
            "note": self.note,
        }


class _Counted:
    """Wraps an HVP: checks shape and finiteness of each product and counts calls."""

    def __init__(self, hvp: HVP, v: Tensor) -> None:
        self.hvp, self.shape, self.calls = hvp, v.shape, 0

    def __call__(self, u: Tensor) -> Tensor:
        self.calls += 1
        out = self.hvp(u)
        if not isinstance(out, Tensor) or out.shape != self.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"HVP must map a vector of shape {tuple(self.shape)} to the same shape, got {got}")
        if not bool(torch.isfinite(out).all()):
            raise ConfigError("HVP returned non-finite values")
        return out


def _check_vector(v: Tensor, damping: float) -> None:
    if not isinstance(v, Tensor) or v.ndim != 1 or v.numel() == 0:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ConfigError(f"v must be a non-empty flat vector (q,), got {shape}")
    if not v.is_floating_point():
        raise ConfigError(f"v must be floating point, got {v.dtype}")
    if not bool(torch.isfinite(v).all()):
        raise ConfigError("v has non-finite entries")
    if not (damping >= 0 and math.isfinite(damping)):
        raise ConfigError(f"damping must be a non-negative finite number, got {damping}")


def _default_tol(v: Tensor) -> float:
    return math.sqrt(torch.finfo(v.dtype).eps)  # ≈ 1.5e-8 in float64, 3.5e-4 in float32


def _result(method: IHVPMethod, x: Tensor, v: Tensor, residual: Tensor | None, t0: float, *, iterations: int,
            tol: float, damping: float, hvp_calls: int, note: str = "", ok: bool = True) -> IHVPResult:
    """Pack x with ‖residual‖, ‖residual‖/‖v‖ and converged = ok and relative residual ≤ tol."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    vn = float(v.norm())
    res = float(residual.norm()) if residual is not None else math.nan
    rel = res / vn if vn > 0 else (0.0 if res == 0 else math.inf)
    converged = ok and residual is not None and rel <= tol
    if residual is None and not note:
        note = "no HVP given: residual not measured"
    return IHVPResult(x=x, method=method, iterations=iterations, residual_norm=res, relative_residual=rel,
                      seconds=time.perf_counter() - t0, converged=converged, damping=damping, hvp_calls=hvp_calls,
                      note=note)


def solve_exact(hvp: HVP, v: Tensor, *, damping: float = 0.0, keep_negative: bool = False, rtol: float | None = None,
                tol: float | None = None, max_size: int = MAX_EXACT_PARAMS, chunk: int = 16) -> IHVPResult:
    """x = (H + λI)⁺ v from the full matrix (q HVPs) and its eigendecomposition (``spectral_factor``).

    Negative eigenvalues of H + λI are dropped (positive-part pseudo-inverse, TLXML B.2) unless
    ``keep_negative``, in which case x is the minimum-norm least-squares solution (= pinv).
    ``iterations`` is the number of eigen-directions kept.
    """
    _check_vector(v, damping)
    q = v.numel()
    if q > max_size:
        raise ConfigError(f"exact iHVP builds a q × q matrix, needs q ≤ {max_size}, got q = {q}; use cg or neumann")
    t0 = time.perf_counter()
    _Counted(hvp, v)(v)  # shape/finiteness check outside vmap (it cannot branch on data)
    h = hessian_from_hvp(hvp, q, v.dtype, v.device, chunk)
    if not bool(torch.isfinite(h).all()):
        raise ConfigError("HVP returned non-finite values")
    fac = spectral_factor(h, damping, rtol, keep_negative)
    x = fac.factor @ (fac.signs * (fac.factor.T @ v))
    residual = h @ x + damping * x - v
    dropped = fac.num_zero + (0 if keep_negative else fac.num_negative)
    note = f"{fac.num_negative} negative, {fac.num_zero} zero eigenvalue(s) of H + λI; {dropped} dropped"
    tol = _default_tol(v) if tol is None else tol
    return _result(IHVPMethod.EXACT, x, v, residual, t0, iterations=fac.rank, tol=tol, damping=damping,
                   hvp_calls=q + 1, note=note if dropped else "")


def solve_cg(hvp: HVP, v: Tensor, *, damping: float = 0.0, tol: float | None = None, max_iter: int | None = None,
             x0: Tensor | None = None) -> IHVPResult:
    """Conjugate gradient on (H + λI) x = v until ‖r‖ ≤ tol·‖v‖ (default tol = √eps, max_iter = 2q).

    When the recursive residual meets tol the true residual v − (H + λI)x is computed; if it does
    not, CG restarts from x with it (residual replacement). On pᵀ(H + λI)p ≤ 0 (H + λI not
    positive definite) it stops before that step with converged=False and returns the last iterate,
    which may be worse than x = 0 (the residual says how much).
    """
    _check_vector(v, damping)
    tol = _default_tol(v) if tol is None else tol
    max_iter = 2 * v.numel() if max_iter is None else max_iter
    if tol <= 0 or max_iter < 0:
        raise ConfigError(f"cg needs tol > 0 and max_iter ≥ 0, got tol={tol}, max_iter={max_iter}")
    t0, op = time.perf_counter(), _Counted(hvp, v)

    def apply(u: Tensor) -> Tensor:
        return op(u) + damping * u

    x = torch.zeros_like(v) if x0 is None else x0.detach().to(v).clone()
    if x.shape != v.shape or not bool(torch.isfinite(x).all()):
        raise ConfigError(f"x0 must be a finite vector of shape {tuple(v.shape)}, got {tuple(x.shape)}")
    r = v - apply(x) if x0 is not None else v.clone()
    p, rr, target = r.clone(), float(r @ r), (tol * float(v.norm())) ** 2
    it, note, ok = 0, "", True
    while True:
        if rr <= target:
            r_true = v - apply(x)
            if float(r_true @ r_true) <= target:
                r = r_true
                break
            r, p, rr = r_true, r_true.clone(), float(r_true @ r_true)  # drifted: restart from the true residual
        if it >= max_iter:
            note = f"max_iter={max_iter} reached"
            break
        ap = apply(p)
        curv = float(p @ ap)
        if curv <= 0:
            note = f"negative curvature pᵀ(H+λI)p = {curv:.3e} at iteration {it}: H + λI is not positive definite"
            ok = False
            break
        alpha = rr / curv
        x, r = x + alpha * p, r - alpha * ap
        rr_new = float(r @ r)
        p, rr = r + (rr_new / rr) * p, rr_new
        it += 1
    if note:
        r = v - apply(x)
    return _result(IHVPMethod.CG, x, v, -r, t0, iterations=it, tol=tol, damping=damping, hvp_calls=op.calls,
                   note=note, ok=ok)


def solve_lanczos(hvp: HVP, v: Tensor, *, damping: float = 0.0, tol: float | None = None, max_iter: int | None = None,
                  keep_negative: bool = False, rtol: float | None = None) -> IHVPResult:
    """x = ‖v‖ Q_k S f(Θ) Sᵀ e₁ after k Lanczos steps on H + λI from v (Q_k orthonormal, T_k = S Θ Sᵀ),
    f(θ) = 1/θ for Ritz values above rtol·max|θ| (default k·eps, as ``spectral_factor``) and 0 for the
    others, negative ones included unless ``keep_negative``: ``solve_exact``'s positive-part
    pseudo-inverse (TLXML B.2) restricted to the Krylov space, equal to it once the space is invariant.
    Stops when ‖x_k − x_{k−1}‖ ≤ tol·‖x_k‖ (converged), the next Lanczos vector vanishes (converged,
    exact on the space) or at ``max_iter`` (default min(q, 200); not converged). ``iterations`` = k;
    the residual is that of the full system, so dropped directions show in it (as for ``exact``)."""
    _check_vector(v, damping)
    tol = _default_tol(v) if tol is None else tol
    max_iter = min(v.numel(), 200) if max_iter is None else min(max_iter, v.numel())
    if tol <= 0 or max_iter < 1:
        raise ConfigError(f"lanczos needs tol > 0 and max_iter ≥ 1, got tol={tol}, max_iter={max_iter}")
    t0, op = time.perf_counter(), _Counted(hvp, v)
    beta0 = v.norm()
    basis = v.new_zeros(v.numel(), max_iter)  # Q: the Lanczos vectors as columns, filled in place
    basis[:, 0] = v / beta0
    alphas, betas = [], []
    x, x_prev, ok, note, dropped = torch.zeros_like(v), None, False, "", 0
    for k in range(1, max_iter + 1):
        q, last = basis[:, :k], basis[:, k - 1]
        w = op(last) + damping * last
        alphas.append(w @ last)
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - q @ (q.T @ w)
        t = torch.diag(torch.stack(alphas))
        if betas:
            off = torch.stack(betas)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        theta, s_vecs = torch.linalg.eigh(t)
        cut = (rtol if rtol is not None else k * torch.finfo(theta.dtype).eps) * theta.abs().max().clamp_min(1e-300)
        keep = (theta.abs() > cut) if keep_negative else (theta > cut)
        dropped = int((~keep).sum())
        x = q @ (s_vecs[:, keep] @ (beta0 * s_vecs[0, keep] / theta[keep]))
        beta = w.norm()
        if x_prev is not None and float((x - x_prev).norm()) <= tol * float(x.norm()):
            ok = True
            break
        if float(beta) <= tol * float(theta.abs().max()):
            ok, note = True, "invariant Krylov space"
            break
        x_prev = x
        if k < max_iter:
            betas.append(beta)
            basis[:, k] = w / beta
    else:
        note = f"max_iter={max_iter} reached"
    if dropped:
        note = "; ".join(filter(None, [note, f"{dropped} Ritz value(s) of H + λI ≤ 0 dropped (positive part)"]))
    residual = op(x) + damping * x - v
    res = _result(IHVPMethod.LANCZOS, x, v, residual, t0, iterations=k, tol=tol, damping=damping, hvp_calls=op.calls,
                  note=note, ok=ok)
    return replace(res, converged=ok)  # the Krylov solve converged; the residual shows what the positive part leaves


def solve_neumann(hvp: HVP, v: Tensor, *, damping: float = 0.0, terms: int = 1000, scale: float | None = None,
                  tol: float | None = None, power_iters: int = 20) -> IHVPResult:
    """x = η Σ_{k=0}^{K} (I − η(H + λI))^k v, K = ``terms`` (METHODS §6), stopping early at tol.

    The term t_{k+1} = (I − η(H + λI)) t_k is also the residual v − (H + λI) x_k, so tol (on
    ‖t‖/‖v‖; default √eps, 0 = all K terms) costs nothing; the reported residual is recomputed
    from x with one extra HVP. η defaults to 1/λ_max of H + λI by ``power_iteration``.
    ``iterations`` is the number of HVPs in the series (K, or fewer when stopped early).
    """
    _check_vector(v, damping)
    tol = _default_tol(v) if tol is None else tol
    if terms < 0 or tol < 0:
        raise ConfigError(f"neumann needs terms ≥ 0 and tol ≥ 0, got terms={terms}, tol={tol}")
    t0, op = time.perf_counter(), _Counted(hvp, v)

    def apply(u: Tensor) -> Tensor:
        return op(u) + damping * u

    if scale is None:  # all power_iters steps (tol=0), at least one
        top = power_iteration(op, v.numel(), num_iters=max(1, power_iters), tol=0.0, damping=damping,
                              dtype=v.dtype, device=v.device).value
        if top <= 0:
            x = torch.zeros_like(v)
            return _result(IHVPMethod.NEUMANN, x, v, -v, t0, iterations=0, tol=tol, damping=damping,
                           hvp_calls=op.calls, note=f"dominant eigenvalue {top:.3e} ≤ 0: no convergent η", ok=False)
        scale = 1.0 / top
    if not (scale > 0 and math.isfinite(scale)):
        raise ConfigError(f"neumann scale η must be positive and finite, got {scale}")
    term, acc, vn = v.clone(), v.clone(), float(v.norm())
    it, note, ok = 0, "", True
    while it < terms:
        term = term - scale * apply(term)
        it += 1
        tn = float(term.norm())
        if tn <= tol * vn:
            break
        if not math.isfinite(tn) or tn > 1e8 * vn:
            note = f"series diverging at term {it} (‖t‖/‖v‖ = {tn / vn:.2e}): need 0 < ηλ < 2 for every λ of H + λI"
            ok = False
            break
        acc = acc + term
    else:
        note = f"all {terms} terms used"
    if ok and it and tn <= tol * vn:
        acc = acc + term  # the term that met tol still belongs to the series up to K = it
    x = scale * acc
    residual = apply(x) - v
    return _result(IHVPMethod.NEUMANN, x, v, residual, t0, iterations=it, tol=tol, damping=damping,
                   hvp_calls=op.calls, note=note, ok=ok)


def solve_gauss_newton(hvp: HVP | None, v: Tensor, *, factor: CurvatureFactor, damping: float = 0.0,
                       truncation: int | None = None, tol: float | None = None) -> IHVPResult:
    """x = U_k diag(s_k) U_kᵀ v from a curvature factor (first k = ``truncation`` columns, default all).

    The factor carries its own damping; ``damping`` (pass the same) and ``hvp`` only measure the
    residual against H + λI. With ``hvp=None`` the residual is NaN and converged is False.
    A Gauss-Newton factor is an approximation, so a large residual against the exact HVP is expected.
    """
    _check_vector(v, damping)
    u = factor.factor
    if u.ndim != 2 or u.shape[0] != v.numel():
        raise ConfigError(f"factor must be q × r with q = {v.numel()}, got {tuple(u.shape)}")
    k = u.shape[1] if truncation is None else truncation
    if not 0 <= k <= u.shape[1]:
        raise ConfigError(f"truncation must lie in [0, {u.shape[1]}], got {truncation}")
    t0 = time.perf_counter()
    uk, sk = u[:, :k].to(v), factor.signs[:k].to(v)
    x = uk @ (sk * (uk.T @ v))
    op = _Counted(hvp, v) if hvp is not None else None
    residual = op(x) + damping * x - v if op is not None else None
    tol = _default_tol(v) if tol is None else tol
    return _result(IHVPMethod.GAUSS_NEWTON, x, v, residual, t0, iterations=k, tol=tol, damping=damping,
                   hvp_calls=op.calls if op is not None else 0)


_SOLVERS: dict[IHVPMethod, Callable[..., IHVPResult]] = {
    IHVPMethod.EXACT: solve_exact,
    IHVPMethod.CG: solve_cg,
    IHVPMethod.LANCZOS: solve_lanczos,
    IHVPMethod.NEUMANN: solve_neumann,
    IHVPMethod.GAUSS_NEWTON: solve_gauss_newton,
}


def solve_ihvp(hvp: HVP | None, v: Tensor, method: IHVPMethod | str = IHVPMethod.CG, **options: Any) -> IHVPResult:
    """x ≈ (H + λI)⁻¹ v by ``method`` (``IHVPMethod`` or its name); ``options`` go to that solver.

    Common options: ``damping`` λ ≥ 0, ``tol`` (relative residual). See ``solve_exact``,
    ``solve_cg``, ``solve_neumann``, ``solve_gauss_newton`` for the rest.
    """
    try:
        m = IHVPMethod(method.replace("_", "-").lower() if isinstance(method, str) else method)
    except ValueError:
        raise ConfigError(f"unknown iHVP method {method!r}; choose one of {[e.value for e in IHVPMethod]}") from None
    solver = _SOLVERS[m]
    allowed = [p for p in inspect.signature(solver).parameters if p not in ("hvp", "v")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for iHVP method {m.value!r}; allowed: {allowed}")
    if hvp is None and m is not IHVPMethod.GAUSS_NEWTON:
        raise ConfigError(f"iHVP method {m.value!r} needs an HVP")
    if m is IHVPMethod.GAUSS_NEWTON and "factor" not in options:
        raise ConfigError("iHVP method 'gauss-newton' needs factor=CurvatureFactor")
    return solver(hvp, v, **options)
