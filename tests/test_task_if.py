"""Task-IF for proximal MAML (seed 001; METHODS §6) on a 35-parameter smooth network, float64, vs brute force.

ω̂ must be a true minimum (METHODS §8): after a short meta-training to ω_A, the objective is
damped and tilted so that ω_A is an exact strict minimum,

    R(ω) = (1/M) Σ_j L_out,j(ω) + (λ_d/2)‖ω − ω_A‖² − ∇L(ω_A)ᵀ(ω − ω_A),   λ_d = max(0, −λ_min(H_T)) + 0.1,

whose Hessian is H_T + λ_d I, the fit's ``damping``. Re-optimisations (leave-one-task-out, point
re-weighting) are Newton on R with the exact total gradient and Hessian, started from ω̂.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from metainf_core.config import TaskConfig
from metainf_core.data import load_dataset
from metainf_core.exceptions import ConfigError
from metainf_core.influence import (
    IFMode,
    TaskIFConfig,
    create_proximal_functions,
    fit_task_if,
    fit_task_if_tasks,
    task_state,
    total_hessian_hvp,
)
from metainf_core.influence.hvp import hessian_from_hvp
from metainf_core.influence.task_if import batch_tasks
from metainf_core.learners import LearnerSpec, params_of
from metainf_core.tasks import make_taskset

pytestmark = pytest.mark.usefixtures("one_thread")

M, LAM = 6, 1.0
SPEC = LearnerSpec("proximal-maml", 3, prox_lambda=LAM)


def _smooth_net() -> nn.Module:
    """2-4-3 with batch norm and tanh (as tests/test_proximal_maml.py): smooth, so inner and outer
    problems converge to ~1e-12 by Newton."""
    bn = nn.BatchNorm1d(4, track_running_stats=False)
    return nn.Sequential(nn.Linear(2, 4), bn, nn.Tanh(), nn.Linear(4, 3)).double()


def _matrix(op, q: int) -> torch.Tensor:
    return hessian_from_hvp(op, q, torch.float64, chunk=1)


def _states(p, w, weights=None, support=None, theta0=None):
    """Task states at ω; ``support`` = (j, k, weight) re-weights support point k of task j."""
    out = []
    for j, t in enumerate(p["tasks"]):
        sw = None
        if support is not None and support[0] == j:
            sw = torch.ones(len(t[1]), dtype=torch.float64)
            sw[support[1]] = support[2]
        out.append(task_state(p["fns"], w, t, p["cfg"], sw, None if theta0 is None else theta0[j]))
    return out


def _objective_parts(p, w, weights, support=None, theta0=None, hessian=True):
    """R(ω), ∇R(ω) and (optionally) ∇²R(ω) of the damped, tilted objective with task weights."""
    states = _states(p, w, weights, support, theta0)
    d = w - p["w"]
    value = sum(c * s.outer_loss for c, s in zip(weights, states))
    value += 0.5 * p["damping"] * float(d @ d) - float(p["tilt"] @ d)
    g = sum(c * s.total_gradient for c, s in zip(weights, states)) + p["damping"] * d - p["tilt"]
    h = None
    if hessian:
        q = w.numel()
        parts = [(c, s) for c, s in zip(weights, states) if c != 0]
        h = sum(c * _matrix(lambda v, s=s: s.hessian_vector(v, IFMode.EXACT), q) for c, s in parts)
        h = h + p["damping"] * torch.eye(q, dtype=torch.float64)
    return value, g, h, [s.theta for s in states]


def _reoptimise(p, weights, support=None, tol=1e-10, max_iter=20) -> torch.Tensor:
    """Newton on R (task ``weights``, optional support re-weighting) from ω̂, with backtracking.

    A step is rejected only if it raises R by more than float64 rounding of R (slack 1e-12·|R|):
    near the optimum a full step lowers R by ~‖∇R‖²/λ_d, below R's rounding once ‖∇R‖ ≲ 1e-8, and a
    strict comparison there is a coin toss that would shrink steps and stall Newton above ``tol``
    on some CPUs. Far from the optimum an overshoot raises R by far more than the slack."""
    w, theta = p["w"].clone(), p["thetas"]
    for _ in range(max_iter):
        r0, g, h, theta = _objective_parts(p, w, weights, support, theta)
        if g.norm() <= tol:
            return w
        step = torch.linalg.solve(h, g)
        t = 1.0
        slack = 1e-12 * abs(r0)
        while _objective_parts(p, w - t * step, weights, support, theta, hessian=False)[0] > r0 + slack and t > 1e-4:
            t *= 0.5
        w = w - t * step
    raise AssertionError(f"Newton did not converge: |g| = {g.norm().item():.3e}")


def _double(tasks):
    return [tuple(x.double() if x.is_floating_point() else x for x in t) for t in tasks]


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    ds = load_dataset("synthetic")
    cfg = TaskConfig(dataset="synthetic", ways=3, shots=4, queries=3, train_tasks=M, test_tasks=2, seed=3)
    train_ts, test_ts = make_taskset(ds, cfg, "train"), make_taskset(ds, cfg, "test")
    model = _smooth_net()
    params = params_of(model)
    fns = create_proximal_functions(model, SPEC, params)
    tasks = _double(batch_tasks(train_ts.batch(np.arange(M), ds)))
    test_tasks = _double(batch_tasks(test_ts.batch([0, 1], ds)))
    base = TaskIFConfig(mode="exact", method="exact", dense=True)
    # short meta-training with the implicit (total) gradient, inner solves warm-started
    w = fns.layout.flatten(params).requires_grad_()
    opt, thetas = torch.optim.Adam([w], lr=0.08), [None] * M
    for _ in range(12):
        states = [task_state(fns, w.detach(), t, TaskIFConfig(dense=False), theta0=th) for t, th in zip(tasks, thetas)]
        thetas = [s.theta for s in states]
        opt.zero_grad()
        w.grad = torch.stack([s.total_gradient for s in states]).mean(0)
        opt.step()
    w_hat = w.detach().clone()
    states = [task_state(fns, w_hat, t, base) for t in tasks]
    h0 = _matrix(total_hessian_hvp(states, IFMode.EXACT), w_hat.numel())
    lam_min = torch.linalg.eigvalsh(h0).min().item()
    damping = max(0.0, -lam_min) + 0.1
    p = dict(ds=ds, train=train_ts, test=test_ts, model=model, params=fns.layout.unflatten(w_hat.clone()), fns=fns,
             tasks=tasks, test_tasks=test_tasks, w=w_hat, thetas=[s.theta for s in states], damping=damping,
             tilt=torch.stack([s.total_gradient for s in states]).mean(0), cfg=base, lam_min=lam_min,
             losses=[s.outer_loss for s in states])
    print(f"\nq = {w_hat.numel()}, M = {M}, mean query loss {np.mean(p['losses']):.3f}, "
          f"λ_min(H_T) = {lam_min:.3f}, damping λ_d = {damping:.3f}")
    return p


@pytest.fixture(scope="module")
def fits(problem):
    p = problem
    out = {}
    for mode in IFMode:
        # H_T + λ_d I is positive definite at ω̂ (CG); the approximate and direct Hessians need not be, so
        # they use the positive-part pseudo-inverse (method "exact", as TLXML B.2): CG stops on them.
        method = "cg" if mode is IFMode.EXACT else "exact"
        t0 = time.perf_counter()
        out[mode] = fit_task_if(p["model"], SPEC, p["params"], p["train"], p["ds"],
                                config=TaskIFConfig(mode=mode.value, damping=p["damping"], method=method))
        h = _matrix(out[mode].hvp, p["w"].numel())
        summary = out[mode].summary()["outer"]
        lam_min = torch.linalg.eigvalsh(h).min().item() + p["damping"]
        print(f"{mode.value:>6} ({method}): fit {time.perf_counter() - t0:.2f} s, λ_min(H + λ_d I) = "
              f"{lam_min:+.3f}, iterations {summary['iterations_mean']:.1f}, "
              f"max rel. residual {summary['max_relative_residual']:.1e}, {summary['seconds']:.4f} s in solves")
    cg = fit_task_if_tasks(p["fns"], p["w"], p["tasks"], TaskIFConfig(mode="approx", damping=p["damping"], method="cg"))
    notes = sorted({r.note[:40] for r in cg.reports})
    print(f"approx with CG: converged {cg.summary()['outer']['converged']}, notes {notes[:2]}")
    return out


@pytest.fixture(scope="module")
def leave_one_out(problem):
    p = problem
    out = {}
    for j in range(M):
        weights = [1.0 / M] * M
        weights[j] = 0.0
        out[j] = _reoptimise(p, weights) - p["w"]
    return out


def test_minimum_is_polished(problem):
    p = problem
    _, g, h, _ = _objective_parts(p, p["w"], [1.0 / M] * M)
    eig = torch.linalg.eigvalsh(h)
    print(f"‖∇R(ω̂)‖ = {g.norm().item():.2e}, eigenvalues of ∇²R in [{eig.min().item():.3f}, {eig.max().item():.3f}]")
    assert g.norm() < 1e-12 and eig.min() > 0.05


def test_total_gradient_and_hessian_match_finite_differences(problem):
    """dL_out,j/dω = λ(H_in + λI)⁻¹∇_θL_out vs central differences of L_out,j(ω) (converged inner solves);
    exact H_T,j d vs central differences of that gradient; the partial gradient is far off."""
    p, eps = problem, 1e-4
    fns, cfg = p["fns"], p["cfg"]
    rel_g, rel_h, rel_direct = [], [], []
    for j in (0, 3):
        task, s = p["tasks"][j], task_state(fns, p["w"], p["tasks"][j], cfg)
        for _ in range(3):
            d = torch.randn_like(p["w"])
            d /= d.norm()
            plus, minus = task_state(fns, p["w"] + eps * d, task, cfg), task_state(fns, p["w"] - eps * d, task, cfg)
            fd = (plus.outer_loss - minus.outer_loss) / (2 * eps)
            rel_g.append(abs(fd - float(s.total_gradient @ d)) / abs(fd))
            rel_direct.append(abs(fd - float(s.outer_grad @ d)) / abs(fd))
            fd_h = (plus.total_gradient - minus.total_gradient) / (2 * eps)
            rel_h.append(((fd_h - s.hessian_vector(d, IFMode.EXACT)).norm() / fd_h.norm()).item())
    # the matrix-free path (nested CG solves, third-order jvp) equals the dense one
    s_free = task_state(fns, p["w"], p["tasks"][0], TaskIFConfig(dense=False, inner_method="cg"))
    s_dense = task_state(fns, p["w"], p["tasks"][0], cfg)
    v = torch.randn_like(p["w"])
    pairs = [(s_free.hessian_vector(v, m), s_dense.hessian_vector(v, m)) for m in IFMode]
    rel_free = max(((a - b).norm() / b.norm()).item() for a, b in pairs)
    print(f"total gradient vs central diff.: max rel. {max(rel_g):.2e} "
          f"(partial gradient: min rel. {min(rel_direct):.2e}); "
          f"exact H_T,j d vs diff. of total gradient: max rel. {max(rel_h):.2e}; matrix-free vs dense {rel_free:.2e}")
    assert max(rel_g) < 1e-6
    assert max(rel_h) < 1e-5
    assert min(rel_direct) > 1e-2
    assert rel_free < 1e-8


def test_up_weighting_matches_task_if_sign_and_size(problem, fits):
    """dω̂/dε for R + (ε/M) L_out,j by central differences of re-optimisations = −(1/M)H_T⁻¹ g_j, i.e.
    removal (ε = −1) ≈ +(1/M) H_T⁻¹ g_j = fit.removal(j) = −task-IF(j)/M."""
    p, eps, inf = problem, 1e-3, fits[IFMode.EXACT]
    rels = []
    for j in (1, 4):
        up, down = [1.0 / M] * M, [1.0 / M] * M
        up[j] += eps / M
        down[j] -= eps / M
        fd = (_reoptimise(p, up) - _reoptimise(p, down)) / (2 * eps)
        rels.append(((-fd - inf.removal(j)).norm() / fd.norm()).item())
        torch.testing.assert_close(inf.task_if(j), -M * inf.removal(j))
    print(f"removal estimate vs −dω̂/dε (central diff., ε = {eps}): rel. errors {np.round(rels, 8).tolist()}")
    assert max(rels) < 1e-4


def test_task_if_beats_direct_if_against_leave_one_out(problem, fits, leave_one_out):
    """ω̂₋ⱼ − ω̂ after removing task j and re-optimising, vs each mode's removal estimate (all j)."""
    errors = {}
    for mode, inf in fits.items():
        rel, cos = [], []
        for j, actual in leave_one_out.items():
            pred = inf.removal(j)
            rel.append(((pred - actual).norm() / actual.norm()).item())
            cos.append(torch.nn.functional.cosine_similarity(pred, actual, dim=0).item())
        errors[mode] = (np.mean(rel), np.mean(cos))
        print(f"{mode.value:>6}: LOO mean rel. error {np.mean(rel):.3f} (per task {np.round(rel, 3).tolist()}), "
              f"cosine mean {np.mean(cos):.3f}, min {np.min(cos):.3f}")
    assert errors[IFMode.EXACT][0] < errors[IFMode.DIRECT][0]
    assert errors[IFMode.APPROX][0] < errors[IFMode.DIRECT][0]
    assert errors[IFMode.EXACT][1] > errors[IFMode.DIRECT][1]
    # ε = −1/M is not infinitesimal: the first-order estimate is good, not exact
    assert errors[IFMode.EXACT][0] < 0.4 and errors[IFMode.EXACT][1] > 0.9


def test_helpfulness_predicts_test_loss_change_on_removal(problem, fits, leave_one_out):
    """helpfulness(i, j) = g_iᵀ(ω̂₋ⱼ − ω̂) vs L_i(ω̂₋ⱼ) − L_i(ω̂) for a test task i (positive = j helped)."""
    p, inf = problem, fits[IFMode.EXACT]
    test = p["test_tasks"][:1]
    g_i = inf.target_gradient(test)
    ranking = inf.rank(g_i)
    torch.testing.assert_close(torch.as_tensor(ranking.scores), inf.helpfulness(g_i)[torch.as_tensor(ranking.ids)])
    base = task_state(p["fns"], p["w"], test[0], p["cfg"]).outer_loss
    after = [task_state(p["fns"], p["w"] + leave_one_out[j], test[0], p["cfg"]).outer_loss for j in range(M)]
    actual = np.array(after) - base
    pred = inf.helpfulness(g_i).numpy()
    print(f"test-loss change on removal: predicted {np.round(pred, 5).tolist()}, "
          f"actual {np.round(actual, 5).tolist()}; "
          f"ranking {ranking.ids.tolist()}")
    top = int(ranking.ids[0])
    assert np.sign(pred[top]) == np.sign(actual[top])
    assert np.corrcoef(pred, actual)[0, 1] > 0.8
    assert ranking.scores[0] >= ranking.scores[-1]


def test_support_point_instance_if_matches_reweighting(problem, fits):
    """Removal effect of support point k of task j (two-stage instance-IF) vs central differences of ω̂
    when that point's inner-loss weight goes 1 → 1 ∓ ε (removal = weight 1 → 0)."""
    p, eps = problem, 1e-3
    rels, test_rels = [], []
    g_i = fits[IFMode.EXACT].target_gradient(p["test_tasks"][:1])
    for j, k in ((0, 2), (5, 7)):
        uniform = [1.0 / M] * M
        fd = (_reoptimise(p, uniform, (j, k, 1 - eps)) - _reoptimise(p, uniform, (j, k, 1 + eps))) / (2 * eps)
        pred = fits[IFMode.EXACT].support_point_removal(j, k)
        rels.append(((pred - fd).norm() / fd.norm()).item())
        test_rels.append(abs(float(g_i @ (pred - fd))) / abs(float(g_i @ fd)))
        approx = fits[IFMode.APPROX].support_point_removal(j, k)
        print(f"task {j}, support point {k}: |Δω̂| {fd.norm().item():.3e}, exact rel. {rels[-1]:.2e}, "
              f"approx rel. {((approx - fd).norm() / fd.norm()).item():.2e}, test-loss rel. {test_rels[-1]:.2e}")
    assert max(rels) < 1e-4 and max(test_rels) < 1e-3


def test_query_point_removal_is_consistent_with_task_removal(fits):
    """Removing every query point of task j (weights 1/n_q each) is removing task j: Σ_k Δω̂_k = removal(j)."""
    inf = fits[IFMode.EXACT]
    n_q = len(inf.states[2].task[3])
    total = sum(inf.query_point_removal(2, k) for k in range(n_q))
    torch.testing.assert_close(total, inf.removal(2), rtol=1e-7, atol=1e-12)


def test_approximate_total_hessian_vs_exact(problem, fits, leave_one_out):
    """J H_out J (third order dropped, seed 001 §5) vs J (H_out − T_x) J: matrix and removal estimates."""
    p = problem
    q = p["w"].numel()
    eye = p["damping"] * torch.eye(q, dtype=torch.float64)
    h_exact, h_approx = (_matrix(fits[m].hvp, q) + eye for m in (IFMode.EXACT, IFMode.APPROX))
    rel_h = ((h_approx - h_exact).norm() / h_exact.norm()).item()
    rel_removal = np.mean([((fits[IFMode.APPROX].removal(j) - fits[IFMode.EXACT].removal(j)).norm()
                            / fits[IFMode.EXACT].removal(j).norm()).item() for j in range(M)])
    eig = torch.linalg.eigvalsh(h_approx)
    print(f"‖H_approx − H_exact‖/‖H_exact‖ = {rel_h:.3f} (damping included); mean rel. change of the removal "
          f"estimate {rel_removal:.3f}; eigenvalues of H_approx in [{eig.min().item():.3f}, {eig.max().item():.3f}]")
    assert 1e-6 < rel_h < 1.0
    assert rel_removal > 1e-6


def test_proximal_only_and_config_validation(problem):
    from metainf_core.models import build_model

    model = build_model("mlp-synthetic", "maml", (2,), 3).double()
    with pytest.raises(ConfigError, match="task-IF needs proximal-maml"):
        create_proximal_functions(model, LearnerSpec("maml", 3), params_of(model))
    for bad in ({"mode": "total"}, {"damping": -1.0}, {"method": "gauss-newton"}, {"tol": 0.0}, {"inner_solver": "x"}):
        with pytest.raises(ConfigError):
            TaskIFConfig(**bad)
    p = problem
    inf = fit_task_if_tasks(p["fns"], p["w"], p["tasks"][:2], TaskIFConfig(damping=p["damping"]))
    with pytest.raises(Exception, match="not in 0..1"):
        inf.removal(2)
    assert inf.summary()["inner"]["converged"] and inf.summary()["outer"]["converged"]
