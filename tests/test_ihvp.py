"""iHVP solvers (METHODS §6) against dense float64 solves: random SPD/indefinite/singular systems and
the meta-Hessian of the 63-parameter synthetic MAML (TLXML B.3).

Error bound used throughout: for A = H + λI ≻ 0, x − x* = A⁻¹(Ax − v), so
‖x − x*‖ ≤ ‖Ax − v‖ / λ_min(A): a solver's *reported* residual bounds its true error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.func import hessian

from metainf_core.exceptions import ConfigError
from metainf_core.influence import (
    IHVPMethod,
    hessian_from_hvp,
    hessian_of,
    hvp_of,
    meta_hessian,
    solve_ihvp,
    spectral_factor,
)
from metainf_core.influence.gauss_newton import orthogonal_columns, pseudo_inverse_factor

pytestmark = pytest.mark.usefixtures("one_thread")

Q = 40
DAMPING = 0.1


def _sym(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a seeded random orthogonal Q (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64, generator=g))
    a = q @ torch.diag(eigenvalues.double()) @ q.T
    return 0.5 * (a + a.T)


def _rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def spd():
    """40 × 40 SPD system, eigenvalues log-spaced in [1, 100] (cond(H + 0.1 I) ≈ 91)."""
    h = _sym(torch.logspace(0, 2, Q), seed=1)
    v = _rand(Q, seed=2)
    a = h + DAMPING * torch.eye(Q, dtype=torch.float64)
    return dict(h=h, v=v, a=a, x_star=torch.linalg.solve(a, v), lam_min=float(torch.linalg.eigvalsh(a)[0]))


def _recomputed_residual(a: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> float:
    return float((a @ x - v).norm())


def _residual_rounding(a: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> float:
    """How far two float64 evaluations of ‖Ax − v‖ may differ (the solver's h @ x + λx − v vs
    ``_recomputed_residual``'s (h + λI) @ x − v; other kernels, summation orders, CPUs): the
    matrix-vector rounding bound n·eps·‖A‖‖x‖ for each, plus eps‖v‖ (~3e-12 for ``spd``). Used for
    an exact solve, whose residual is itself rounding noise (3.5e-14 seen), so a fixed 1e-13 could
    fail on another CPU; iterative solves stop at residuals ≥ 1e-8·‖v‖, where 1e-13 is ~100× the
    difference seen (3e-16) and stays."""
    eps = torch.finfo(torch.float64).eps
    return 2 * len(v) * eps * float(torch.linalg.matrix_norm(a, ord=2) * x.norm()) + eps * float(v.norm())


def test_hvp_of_matches_torch_func_hessian():
    """Forward-over-reverse HVP and the matrix built from it equal torch.func.hessian."""

    def f(w: torch.Tensor) -> torch.Tensor:
        return (torch.sin(w) * w**2).sum() + torch.tanh(w[:3] @ w[3:6]) * w[6] ** 3

    w, v = _rand(7, seed=3), _rand(7, seed=4)
    h_ref = hessian(f)(w)
    torch.testing.assert_close(hvp_of(f, w)(v), h_ref @ v, rtol=1e-12, atol=1e-12)
    for chunk in (1, 3, 16):
        torch.testing.assert_close(hessian_from_hvp(hvp_of(f, w), 7, torch.float64, chunk=chunk), h_ref,
                                   rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hessian_of(f, w), h_ref, rtol=1e-12, atol=1e-12)


def test_exact_matches_dense_solve(spd):
    r = solve_ihvp(lambda u: spd["h"] @ u, spd["v"], "exact", damping=DAMPING)
    torch.testing.assert_close(r.x, spd["x_star"], rtol=1e-11, atol=1e-12)
    assert r.converged and r.method is IHVPMethod.EXACT and r.iterations == Q and r.hvp_calls == Q + 1
    assert r.residual_norm == pytest.approx(_recomputed_residual(spd["a"], r.x, spd["v"]), rel=1e-6,
                                            abs=_residual_rounding(spd["a"], r.x, spd["v"]))
    assert r.residual_norm < 1e-11 and r.seconds >= 0
    json.dumps(r.to_dict())


@pytest.mark.parametrize(
    ("method", "options", "should_converge"),
    [
        ("cg", dict(tol=1e-8), True),
        ("cg", dict(tol=1e-8, max_iter=6), False),
        ("neumann", dict(terms=3000, tol=1e-7), True),
        ("neumann", dict(terms=40), False),
        ("neumann", dict(terms=3000, tol=1e-7, scale=1.9 / (100 + DAMPING)), True),  # η λ_max = 1.9 < 2: converges
    ],
)
def test_iterative_solution_within_reported_residual(spd, method, options, should_converge):
    """‖x − x*‖ ≤ reported ‖r‖ / λ_min(H + λI); the reported ‖r‖ is the true one; converged ⇔ ‖r‖/‖v‖ ≤ tol."""
    calls = []

    def hvp(u: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return spd["h"] @ u

    r = solve_ihvp(hvp, spd["v"], method, damping=DAMPING, **options)
    err = float((r.x - spd["x_star"]).norm())
    true_res = _recomputed_residual(spd["a"], r.x, spd["v"])
    print(f"{method} {options}: {r.iterations} iterations, {r.hvp_calls} HVPs, residual {r.residual_norm:.3e} "
          f"(rel {r.relative_residual:.3e}), error {err:.3e}, converged={r.converged} {r.note!r}")
    assert r.residual_norm == pytest.approx(true_res, rel=1e-6, abs=1e-13)
    assert r.relative_residual == pytest.approx(true_res / float(spd["v"].norm()), rel=1e-6, abs=1e-15)
    assert err <= r.residual_norm / spd["lam_min"] * (1 + 1e-8) + 1e-13
    assert r.converged is should_converge
    assert r.hvp_calls == len(calls)
    tol = options.get("tol", math.sqrt(torch.finfo(torch.float64).eps))
    assert r.converged == (r.relative_residual <= tol)
    if should_converge:
        assert err / float(spd["x_star"].norm()) < 1e-5
    else:
        assert r.note and err / float(spd["x_star"].norm()) > 1e-5


def test_neumann_diverges_with_too_large_scale(spd):
    """η λ_max = 2.5 > 2: the series blows up; the solver stops and says so."""
    r = solve_ihvp(lambda u: spd["h"] @ u, spd["v"], "neumann", damping=DAMPING, scale=2.5 / (100 + DAMPING), terms=500)
    assert not r.converged and "diverging" in r.note and r.iterations < 500
    assert torch.isfinite(r.x).all()


@pytest.fixture(scope="module")
def indefinite():
    """40 × 40 symmetric with 8 negative eigenvalues in [−2, −0.5] and 32 positive in [0.5, 10]."""
    lam = torch.cat([-torch.linspace(0.5, 2.0, 8), torch.linspace(0.5, 10.0, 32)]).double()
    h = _sym(lam, seed=5)
    return dict(h=h, v=_rand(Q, seed=6), lam=lam)


def test_cg_flags_indefinite_matrix(indefinite):
    h, v = indefinite["h"], indefinite["v"]
    r = solve_ihvp(lambda u: h @ u, v, "cg", tol=1e-10)
    print(f"cg on indefinite H: {r.iterations} iterations, rel residual {r.relative_residual:.3e}, note {r.note!r}")
    assert not r.converged and "negative curvature" in r.note
    assert torch.isfinite(r.x).all()
    assert r.residual_norm == pytest.approx(float((h @ r.x - v).norm()), rel=1e-9)
    assert r.relative_residual > 1e-10
    # damping λ > |λ_min| makes H + λI positive definite: CG converges to the plain solve
    r = solve_ihvp(lambda u: h @ u, v, "cg", tol=1e-10, damping=2.5)
    assert r.converged and not r.note
    torch.testing.assert_close(r.x, torch.linalg.solve(h + 2.5 * torch.eye(Q, dtype=torch.float64), v),
                               rtol=1e-8, atol=1e-9)


def test_neumann_flags_indefinite_matrix(indefinite):
    h, v = indefinite["h"], indefinite["v"]
    r = solve_ihvp(lambda u: h @ u, v, "neumann", terms=2000)  # η = 1/10: 1 − η(−2) = 1.2 > 1
    assert not r.converged and "diverging" in r.note
    r = solve_ihvp(lambda u: -h @ u, v, "neumann")  # dominant eigenvalue −10
    assert not r.converged and "dominant eigenvalue" in r.note and r.x.abs().max() == 0


def test_exact_on_indefinite_and_singular(indefinite):
    h, v, lam = indefinite["h"], indefinite["v"], indefinite["lam"]
    # default: positive part only; the residual is v's component on the dropped (negative) eigenspace
    r = solve_ihvp(lambda u: h @ u, v, "exact")
    evals, evecs = torch.linalg.eigh(h)
    neg = evecs[:, evals < 0]
    assert not r.converged and "8 negative" in r.note and r.iterations == 32
    assert r.residual_norm == pytest.approx(float((neg.T @ v).norm()), rel=1e-9)
    pos = evecs[:, evals > 0]
    torch.testing.assert_close(r.x, pos @ ((pos.T @ v) / evals[evals > 0]), rtol=1e-10, atol=1e-12)
    # keep_negative: the plain inverse
    r = solve_ihvp(lambda u: h @ u, v, "exact", keep_negative=True)
    assert r.converged and r.iterations == Q
    torch.testing.assert_close(r.x, torch.linalg.solve(h, v), rtol=1e-10, atol=1e-12)
    assert lam.min() < 0
    # singular PSD: pseudo-inverse = torch.linalg.pinv; converged only when v lies in range(H)
    b = torch.randn(20, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    hs = b @ b.T
    vs = _rand(20, seed=8)
    r = solve_ihvp(lambda u: hs @ u, vs, "exact")
    torch.testing.assert_close(r.x, torch.linalg.pinv(hs, hermitian=True) @ vs, rtol=1e-9, atol=1e-10)
    assert not r.converged and "14 zero" in r.note and r.iterations == 6
    r = solve_ihvp(lambda u: hs @ u, hs @ vs, "exact")
    assert r.converged
    torch.testing.assert_close(hs @ r.x, hs @ vs, rtol=1e-9, atol=1e-9)


def test_gauss_newton_factor(spd):
    h, v, a = spd["h"], spd["v"], spd["a"]
    fac = spectral_factor(h, damping=DAMPING)
    r = solve_ihvp(lambda u: h @ u, v, "gauss_newton", factor=fac, damping=DAMPING)  # "_" alias accepted
    assert r.method is IHVPMethod.GAUSS_NEWTON and r.converged and r.iterations == Q and r.hvp_calls == 1
    torch.testing.assert_close(r.x, spd["x_star"], rtol=1e-10, atol=1e-12)
    # truncated: the residual grows and is reported truthfully
    r = solve_ihvp(lambda u: h @ u, v, IHVPMethod.GAUSS_NEWTON, factor=fac, damping=DAMPING, truncation=5)
    assert not r.converged and r.iterations == 5
    assert r.residual_norm == pytest.approx(_recomputed_residual(a, r.x, v), rel=1e-9)
    # no HVP: residual unknown, never "converged"
    r = solve_ihvp(None, v, "gauss-newton", factor=fac)
    assert math.isnan(r.residual_norm) and not r.converged and "not measured" in r.note
    # a real Gauss-Newton factor (Algorithms 2-3): H_GN = (1/M) VᵀV of rank 6; v in its range
    m, rows = 6, torch.randn(6, Q, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    gn = pseudo_inverse_factor(orthogonal_columns(rows, 6), m)
    h_gn = rows.T @ rows / m
    v_gn = h_gn @ v
    r = solve_ihvp(lambda u: h_gn @ u, v_gn, "gauss-newton", factor=gn)
    torch.testing.assert_close(r.x, torch.linalg.pinv(h_gn, hermitian=True) @ v_gn, rtol=1e-8, atol=1e-10)
    assert r.converged and r.relative_residual < 1e-10


def test_errors(spd):
    h, v = spd["h"], spd["v"]
    hvp = lambda u: h @ u  # noqa: E731
    bad_v = v.clone()
    bad_v[3] = float("nan")
    cases = [
        lambda: solve_ihvp(hvp, v, "bicgstab"),  # no such method
        lambda: solve_ihvp(hvp, bad_v, "cg"),
        lambda: solve_ihvp(hvp, bad_v, "exact"),
        lambda: solve_ihvp(hvp, torch.full_like(v, float("inf")), "neumann"),
        lambda: solve_ihvp(hvp, v.reshape(4, 10), "cg"),
        lambda: solve_ihvp(hvp, torch.arange(Q), "cg"),
        lambda: solve_ihvp(lambda u: h[:10] @ u, v, "cg"),
        lambda: solve_ihvp(lambda u: h[:10] @ u, v, "exact"),
        lambda: solve_ihvp(lambda u: u * float("nan"), v, "cg"),
        lambda: solve_ihvp(hvp, v, "cg", damping=-1.0),
        lambda: solve_ihvp(hvp, v, "cg", terms=10),  # a Neumann option given to CG
        lambda: solve_ihvp(hvp, v, "exact", max_size=Q - 1),
        lambda: solve_ihvp(hvp, v, "neumann", scale=-1.0),
        lambda: solve_ihvp(hvp, v, "gauss-newton"),
        lambda: solve_ihvp(hvp, v[:10], "gauss-newton", factor=spectral_factor(h)),
        lambda: solve_ihvp(None, v, "cg"),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(ConfigError):
            case()
    assert issubclass(ConfigError, ValueError)


# --- the real meta-Hessian: 63-parameter synthetic MAML, 8 tasks ---------------------------------


@pytest.fixture(scope="module")
def meta_problem():
    """Meta-objective of 8 synthetic tasks after 60 Adam steps; λ = |λ_min(H)| + 0.5 (H + λI ≻ 0)."""
    from metainf_core.config import TaskConfig
    from metainf_core.data import load_dataset
    from metainf_core.influence.flat import ParamLayout, create_flat_loss_function
    from metainf_core.influence.gradients import create_meta_objective_function
    from metainf_core.learners import LearnerSpec, params_of
    from metainf_core.models import build_model
    from metainf_core.tasks import TaskBatch, make_taskset

    torch.manual_seed(0)
    m = 8
    ds = load_dataset("synthetic")
    cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=m, test_tasks=4, seed=1)
    train = make_taskset(ds, cfg, "train")
    model = build_model("mlp-synthetic", "maml", (2,), 3).double()
    spec = LearnerSpec("maml", 3, inner_lr=0.4, inner_steps=1)
    layout = ParamLayout.from_params(params_of(model))
    loss_fn = create_flat_loss_function(model, spec, layout)
    b = train.batch(np.arange(m), ds)
    batch = TaskBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y)
    objective = create_meta_objective_function(loss_fn, batch)
    w = layout.flatten(params_of(model)).detach().requires_grad_()
    opt = torch.optim.Adam([w], lr=0.03)
    for _ in range(60):
        opt.zero_grad()
        objective(w).backward()
        opt.step()
    w = w.detach()
    h = meta_hessian(loss_fn, w, [batch], m)
    evals = torch.linalg.eigvalsh(h)
    lam = float(evals[0].clamp(max=0).abs()) + 0.5
    g = torch.func.grad(create_meta_objective_function(loss_fn, TaskBatch(*(t[:1] for t in (
        batch.support_x, batch.support_y, batch.query_x, batch.query_y)))))(w)  # task 0's meta-gradient
    a = h + lam * torch.eye(len(w), dtype=torch.float64)
    print(f"meta-Hessian q={len(w)}: eigenvalues [{evals[0]:.3f}, {evals[-1]:.3f}], λ = {lam:.3f}, "
          f"cond(H + λI) = {(evals[-1] + lam) / (evals[0] + lam):.1f}")
    return dict(hvp=hvp_of(objective, w), g=g, lam=lam, a=a, x_star=torch.linalg.solve(a, g),
                lam_min=float(evals[0]) + lam)


def test_meta_hessian_solvers_agree(meta_problem):
    """Exact (from 63 HVPs) = dense solve with meta_hessian; CG to 1e-6 and Neumann to 1e-3 relative."""
    p = meta_problem
    x_star = p["x_star"]
    rel = lambda x: float((x - x_star).norm() / x_star.norm())  # noqa: E731
    exact = solve_ihvp(p["hvp"], p["g"], "exact", damping=p["lam"])
    cg = solve_ihvp(p["hvp"], p["g"], "cg", damping=p["lam"], tol=1e-10)
    neumann = solve_ihvp(p["hvp"], p["g"], "neumann", damping=p["lam"], terms=300, tol=1e-4, power_iters=10)
    for r in (exact, cg, neumann):
        print(f"meta {r.method.value}: {r.iterations} iterations, {r.hvp_calls} HVPs, residual {r.residual_norm:.3e} "
              f"(rel {r.relative_residual:.3e}), rel. error vs dense {rel(r.x):.3e}, {r.seconds:.2f} s, "
              f"converged={r.converged}")
        assert r.converged
        assert r.residual_norm == pytest.approx(_recomputed_residual(p["a"], r.x, p["g"]), rel=1e-6, abs=1e-12)
        assert float((r.x - x_star).norm()) <= r.residual_norm / p["lam_min"] * (1 + 1e-6) + 1e-10
    assert rel(exact.x) < 1e-9
    assert float((cg.x - exact.x).norm() / exact.x.norm()) < 1e-6
    assert float((neumann.x - exact.x).norm() / exact.x.norm()) < 1e-3
    assert cg.iterations < 63 and neumann.iterations < 300


def test_lanczos_is_the_positive_part_solve_matrix_free(indefinite, spd):
    """Lanczos on HVPs gives ``exact``'s positive-part pseudo-inverse where CG stops at negative
    curvature: at the full Krylov space to rounding (float64 eigh of a 40 × 40 tridiagonal: 1e-10),
    the dropped directions reported, the residual that of the full system (v's negative part, as
    exact's); with keep_negative the plain inverse; on an SPD system the dense solve; fewer steps
    than q give a partial, unconverged answer."""
    h, v = indefinite["h"], indefinite["v"]
    exact = solve_ihvp(lambda u: h @ u, v, "exact")
    r = solve_ihvp(lambda u: h @ u, v, "lanczos", max_iter=Q)
    assert r.method is IHVPMethod.LANCZOS and r.converged and "8 Ritz value(s)" in r.note
    torch.testing.assert_close(r.x, exact.x, rtol=1e-10, atol=1e-10)
    assert r.residual_norm == pytest.approx(exact.residual_norm, rel=1e-8)  # ‖v's negative-eigenspace part‖
    cg = solve_ihvp(lambda u: h @ u, v, "cg", tol=1e-10)
    assert not cg.converged and float((cg.x - exact.x).norm()) > 0.1 * float(exact.x.norm())  # CG does not get there
    r = solve_ihvp(lambda u: h @ u, v, "lanczos", keep_negative=True, max_iter=Q)
    torch.testing.assert_close(r.x, torch.linalg.solve(h, v), rtol=1e-9, atol=1e-10)
    s = solve_ihvp(lambda u: spd["h"] @ u, spd["v"], "lanczos", damping=DAMPING, tol=1e-12)
    assert s.converged and "Ritz" not in s.note  # nothing dropped (it may end on the invariant space)
    torch.testing.assert_close(s.x, spd["x_star"], rtol=1e-8, atol=1e-9)
    short = solve_ihvp(lambda u: h @ u, v, "lanczos", max_iter=5, tol=1e-12)
    assert not short.converged and short.iterations == 5 and "max_iter=5 reached" in short.note
    with pytest.raises(ConfigError, match="lanczos needs"):
        solve_ihvp(lambda u: h @ u, v, "lanczos", max_iter=0)


def test_lanczos_on_the_real_indefinite_meta_hessian(meta_problem):
    """The synthetic MAML's meta-Hessian at λ = 0.01, indefinite (the LDS settings' case, where CG stops
    at negative curvature): Lanczos over the 63-dimensional Krylov space is exact's positive-part
    solve (float64; 1e-8 relative leaves room for the Ritz values near zero that either keeps or drops)."""
    p = meta_problem
    exact = solve_ihvp(p["hvp"], p["g"], "exact", damping=0.01)
    assert "negative" in exact.note and not exact.note.startswith("0 negative")
    r = solve_ihvp(p["hvp"], p["g"], "lanczos", damping=0.01, max_iter=63, tol=1e-12)
    assert r.converged and "Ritz" in r.note
    assert float((r.x - exact.x).norm() / exact.x.norm()) < 1e-8
