"""Hessian-vector products and what is built from them alone: dense Hessians and extreme eigenvalues.

An HVP is a function ``v ↦ H v`` on flat length-q vectors; H is never formed unless asked for.

- ``hvp_of(f, w)``: the HVP of a scalar f at w, forward-over-reverse (jvp of grad), every
  derivative order inside f kept (e.g. MAML's inner step, TLXML A.4).
- ``hessian_from_hvp`` / ``hessian_of``: the symmetrised q × q matrix from q HVPs on basis vectors.
- ``power_iteration`` / ``lanczos``: the eigenvalue of largest |λ| of H (signed), as an
  ``EigenEstimate`` with its residual. Used for Neumann's scale (ihvp.py) and sharpness
  (diagnostics.py, seed 003 Eq. 3–4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from metainf_core.exceptions import ConfigError

HVP = Callable[[Tensor], Tensor]  # v (q) ↦ H v (q)


def hvp_of(objective: Callable[[Tensor], Tensor], w: Tensor) -> HVP:
    """v ↦ ∇²f(w) v for a scalar ``objective`` f of a flat vector, forward-over-reverse (jvp of grad).

    Every derivative order inside f is kept (e.g. MAML's inner step, TLXML A.4); use with
    ``create_meta_objective_function`` for the meta-Hessian. The result is vmappable and detached.
    """
    w = w.detach()
    g = grad(objective)

    def hvp(v: Tensor) -> Tensor:
        return jvp(g, (w,), (v.to(w),))[1].detach()

    return hvp


def hessian_from_hvp(
    hvp: HVP, q: int, dtype: torch.dtype, device: torch.device | str = "cpu", chunk: int = 16
) -> Tensor:
    """Symmetrised q × q matrix of ``hvp`` from q HVPs on basis vectors, ``chunk`` at a time by vmap.

    ``chunk=1`` loops without vmap, for HVPs that cannot be vmapped.
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be positive, got {chunk}")
    eye = torch.eye(q, dtype=dtype, device=device)
    if chunk == 1:
        h = torch.stack([hvp(eye[i]) for i in range(q)])
    else:
        h = torch.cat([vmap(hvp)(eye[i : i + chunk]) for i in range(0, q, chunk)])
    h = h.detach()
    return 0.5 * (h + h.T)


def hessian_of(fn: Callable[[Tensor], Tensor], w: Tensor, chunk: int = 16) -> Tensor:
    """q × q Hessian of a scalar ``fn`` at ``w``: ``hessian_from_hvp`` of ``hvp_of(fn, w)``."""
    return hessian_from_hvp(hvp_of(fn, w), w.numel(), w.dtype, w.device, chunk)


@dataclass(frozen=True)
class EigenEstimate:
    """Estimate of the eigenvalue of largest |λ| of a symmetric operator (signed), with its residual ‖Hv − λv‖."""

    value: float
    residual: float
    iterations: int
    converged: bool


def _start_vector(q: int, v0: Tensor | None, dtype: torch.dtype, device: torch.device | str, seed: int) -> Tensor:
    """Unit start vector: ``v0`` normalised, or N(0, I) from a CPU generator seeded ``seed`` (device-independent)."""
    if v0 is None:
        v0 = torch.randn(q, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    if v0.shape != (q,) or not bool(v0.norm() > 0):
        raise ConfigError(f"start vector must be a non-zero vector of length {q}")
    return v0 / v0.norm()


def _check_iters(num_iters: int) -> None:
    if num_iters < 1:
        raise ConfigError(f"num_iters must be positive, got {num_iters}")


def power_iteration(
    hvp: HVP,
    q: int,
    *,
    num_iters: int = 100,
    tol: float = 1e-5,
    damping: float = 0.0,
    v0: Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Largest-|λ| eigenvalue (signed) of H + ``damping``·I (q × q, via ``hvp``: v ↦ Hv) by power iteration.

    λ is the Rayleigh quotient vᵀ(H + λ_d I)v; stops once ‖Hv − λv‖ ≤ ``tol``·|λ| (eigenvalue
    error ≈ residual²/gap), ``tol=0``: after all ``num_iters`` steps. Converges like |λ₂/λ₁|^k,
    so slowly when ±λ_max nearly tie. Hv = 0 stops with λ = 0 (converged); a non-finite Hv stops
    with converged=False. Power iteration underestimates |λ_max| (hence η = 1/λ keeps Neumann's
    η λ_max < 2 once the estimate exceeds λ_max/2).
    """
    _check_iters(num_iters)
    v = _start_vector(q, v0, dtype, device, seed)
    lam, res = 0.0, math.inf
    for it in range(1, num_iters + 1):
        hv = hvp(v).detach() + damping * v
        lam = float(v @ hv)
        res = float((hv - lam * v).norm())
        n = hv.norm()
        if not bool(torch.isfinite(n)):
            return EigenEstimate(lam, res, it, False)
        if res <= tol * abs(lam) or not bool(n > 0):
            return EigenEstimate(lam, res, it, True)
        v = hv / n
    return EigenEstimate(lam, res, num_iters, False)


def lanczos(
    hvp: HVP,
    q: int,
    *,
    num_iters: int = 20,
    tol: float = 1e-8,
    v0: Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> EigenEstimate:
    """Largest-|λ| Ritz value of H after ≤ ``num_iters`` Lanczos steps (full reorthogonalisation).

    With V_k orthonormal and T_k = V_kᵀ H V_k tridiagonal, the Ritz pair (θ, y) of T_k has residual
    β_k |y_k| (Golub & Van Loan §10.1); stops once that is ≤ ``tol``·|θ| or the Krylov space is invariant.
    """
    _check_iters(num_iters)
    k_max = min(num_iters, q)
    basis = torch.zeros(k_max + 1, q, dtype=dtype, device=device)
    basis[0] = _start_vector(q, v0, dtype, device, seed)
    alphas: list[float] = []
    betas: list[float] = []
    theta, res = 0.0, math.inf
    for j in range(k_max):
        w = hvp(basis[j]).detach()
        alphas.append(float(w @ basis[j]))
        for _ in range(2):  # classical Gram-Schmidt twice against all previous vectors
            w = w - basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        evals, evecs = torch.linalg.eigh(t)
        top = int(evals.abs().argmax())
        theta, res = float(evals[top]), beta * abs(float(evecs[-1, top]))
        scale = max(abs(a) for a in alphas) + max(betas, default=0.0)
        if res <= tol * abs(theta) or beta <= 1e3 * torch.finfo(dtype).eps * max(scale, 1e-300):
            return EigenEstimate(theta, res, j + 1, True)
        betas.append(beta)
        basis[j + 1] = w / beta
    return EigenEstimate(theta, res, k_max, k_max == q)
