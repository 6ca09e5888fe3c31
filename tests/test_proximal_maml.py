"""Proximal (implicit) MAML: the implicit meta-gradient against unrolled inner steps, a finite
difference and an explicit Hessian solve; training, checkpoints and the CLI; the TLXML guard."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from metainf_core.checkpoint import TRAIN_STATE_FILE, load_checkpoint, load_tensors, read_tensor_metadata, save_tensors
from metainf_core.config import Algorithm, TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import with_composite_batch_norm
from metainf_core.learners import (
    LearnerSpec,
    ProximalSolver,
    create_batched_task_metrics_function,
    create_task_loss_function,
    params_of,
)
from metainf_core.models import build_model, count_parameters

from helpers import run_cli, tiny_task  # tests/helpers.py (pytest puts tests/ on sys.path)

pytestmark = pytest.mark.usefixtures("one_thread")

LAM = 1.0
# converged inner solve and CG, for comparisons with references
TIGHT = LearnerSpec(
    "proximal-maml", 3, prox_lambda=LAM, prox_lr=0.1, prox_steps=5000, prox_tol=1e-12, cg_steps=200, cg_tol=1e-13
)


def _smooth_net() -> nn.Module:
    """2-4-3 with batch norm and tanh: smooth, so the inner problem converges to 1e-12 (ReLU kinks
    stall gradient descent at ‖∇‖ ≈ 0.3 on mlp-synthetic); batch norm exercises the composite-BN HVPs."""
    bn = nn.BatchNorm1d(4, track_running_stats=False)
    return nn.Sequential(nn.Linear(2, 4), bn, nn.Tanh(), nn.Linear(4, 3)).double()


def _implicit_gradient(model: nn.Module, spec: LearnerSpec, task) -> tuple[torch.Tensor, torch.Tensor]:
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    loss = create_task_loss_function(model, spec)(params, *task)
    loss.backward()
    return loss.detach(), torch.cat([p.grad.reshape(-1) for p in params.values()])


def _unrolled_gradient(model: nn.Module, task, steps: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: differentiate through ``steps`` gradient steps on L_S(θ) + (λ/2)‖θ − ω‖² (composite BN,
    since the fused kernel's double backward is wrong in this torch)."""
    sx, sy, qx, qy = task
    net = with_composite_batch_norm(model)
    omega = {k: v.requires_grad_() for k, v in params_of(model).items()}
    theta = dict(omega)
    for _ in range(steps):
        inner = F.cross_entropy(functional_call(net, theta, (sx,)), sy)
        inner = inner + 0.5 * LAM * sum(((theta[k] - omega[k]) ** 2).sum() for k in theta)
        g = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
        theta = {k: t - lr * gk for (k, t), gk in zip(theta.items(), g, strict=True)}
    loss = F.cross_entropy(functional_call(net, theta, (qx,)), qy)
    grads = torch.autograd.grad(loss, list(omega.values()))
    return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


def test_inner_solution_is_stationary_and_implicit_gradient_matches_unrolling():
    model, task = _smooth_net(), tiny_task()
    sx, sy = task[0], task[1]
    solver = ProximalSolver(model, TIGHT)
    w = solver.flatten(params_of(model))
    theta = solver.solve(w, sx, sy)
    g_support, _ = solver._grad_value(theta, sx, sy)
    stationarity = (g_support + LAM * (theta - w)).norm().item()
    print(f"\n‖∇L_S(θ̂) + λ(θ̂ − ω)‖ = {stationarity:.2e}, ‖θ̂ − ω‖ = {(theta - w).norm().item():.3f}")
    assert stationarity < 1e-10

    loss_i, g_implicit = _implicit_gradient(model, TIGHT, task)
    loss_u, g_unrolled = _unrolled_gradient(model, task, steps=2000, lr=0.01)
    rel = ((g_implicit - g_unrolled).norm() / g_unrolled.norm()).item()
    # the Jacobian dθ̂/dω matters: dropping it (the first-order gradient ∇_θ L_out(θ̂)) is far off
    params = {k: v.requires_grad_() for k, v in solver.unflatten(theta.clone()).items()}
    out_loss = F.cross_entropy(functional_call(model, params, (task[2],)), task[3])
    g_fo = torch.autograd.grad(out_loss, list(params.values()))
    rel_fo = ((torch.cat([g.reshape(-1) for g in g_fo]) - g_unrolled).norm() / g_unrolled.norm()).item()
    print(f"implicit vs unrolled (2,000 steps, lr 0.01): rel. error {rel:.2e}; first-order: {rel_fo:.2e}")
    assert abs(loss_i.item() - loss_u.item()) < 1e-8
    assert rel < 1e-4
    assert rel_fo > 1e-2


def test_implicit_gradient_matches_central_finite_difference():
    model, task = _smooth_net(), tiny_task()
    loss_fn = create_task_loss_function(model, TIGHT)
    _, g = _implicit_gradient(model, TIGHT, task)
    solver = ProximalSolver(model, TIGHT)
    w = solver.flatten(params_of(model))
    d = torch.randn_like(w)
    d /= d.norm()
    eps = 1e-4
    with torch.no_grad():
        fd = (loss_fn(solver.unflatten(w + eps * d), *task) - loss_fn(solver.unflatten(w - eps * d), *task)) / (2 * eps)
    rel = abs(fd.item() - (g @ d).item()) / abs(fd.item())
    print(f"\ndirectional derivative: implicit {(g @ d).item():.10f}, central diff. {fd.item():.10f}, rel. {rel:.2e}")
    assert rel < 1e-6


def test_cg_meta_gradient_equals_explicit_solve_on_mlp_synthetic():
    """On the real 63-parameter network: CG on composite-BN HVPs = λ(H_in + λI)⁻¹ g, H_in by torch.func.hessian."""
    model = build_model("mlp-synthetic", "proximal-maml", (2,), 3).double()
    assert count_parameters(model) == count_parameters(build_model("mlp-synthetic", "maml", (2,), 3)) == 63
    spec = LearnerSpec("proximal-maml", 3, prox_lambda=LAM, prox_steps=200, cg_steps=500, cg_tol=1e-13)
    sx, sy, _, _ = tiny_task()
    solver = ProximalSolver(model, spec)
    theta = solver.solve(solver.flatten(params_of(model)), sx, sy)
    net = with_composite_batch_norm(model)
    h = hessian(lambda t: F.cross_entropy(functional_call(net, solver.unflatten(t), (sx,)), sy))(theta)
    g = torch.randn_like(theta)
    expected = LAM * torch.linalg.solve(h + LAM * torch.eye(len(theta), dtype=h.dtype), g)
    rel = ((solver.meta_gradient(theta, sx, sy, g) - expected).norm() / expected.norm()).item()
    min_eig = torch.linalg.eigvalsh(h).min().item() + LAM
    print(f"\nCG vs explicit (H_in + λI)⁻¹ solve: rel. error {rel:.2e}, min eig of H_in + λI {min_eig:.3f}")
    assert rel < 1e-8


def test_batched_metrics_loop_equals_single_task_loss():
    model = _smooth_net()
    spec = LearnerSpec("proximal-maml", 3, prox_steps=50)
    tasks = [tiny_task() for _ in range(3)]
    sx, sy, qx, qy = (torch.stack([t[i] for t in tasks]) for i in range(4))
    params = params_of(model)
    loss, acc = create_batched_task_metrics_function(model, spec)(params, sx, sy, qx, qy)
    single = create_task_loss_function(model, spec)
    for b, t in enumerate(tasks):
        torch.testing.assert_close(loss[b], single(params, *t))
    assert ((acc >= 0) & (acc <= 1)).all()


def test_training_writes_a_checkpoint_that_loads_and_evaluates(tmp_path):
    from metainf_core.service import open_run
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=48, test_tasks=16)
    train_cfg = TrainConfig(
        algo="proximal-maml", arch="mlp-synthetic", steps=40, meta_batch=4, lr=0.02,
        prox_lambda=1.0, prox_lr=0.3, prox_steps=10, cg_steps=10, checkpoint_every=20,
    )  # fmt: skip
    out = train(task_cfg, train_cfg, tmp_path / "prox", progress=False, device="cpu")
    meta = load_checkpoint(out).meta
    assert meta["algorithm"] == "proximal-maml" and meta["train_config"]["prox_steps"] == 10 and meta["complete"]
    curve = [c["loss"] for c in meta["curve"]]
    run = open_run(out)
    assert run.spec == LearnerSpec.from_train_config(train_cfg, 3)
    test = run.evaluate(split="test").summary()
    print(f"\nproximal MAML, 40 steps: loss {curve[0]:.3f} -> {curve[-1]:.3f}, test accuracy {test['accuracy']:.3f}")
    assert test["accuracy"] == pytest.approx(meta["test"]["accuracy"])
    assert test["accuracy"] > 0.6  # 3-way chance is 1/3
    assert sum(curve[-3:]) < 0.8 * sum(curve[:3])


def test_old_style_configs_load_and_resume(tmp_path):
    """A run saved before the prox_* fields existed opens with their defaults and resumes."""
    from metainf_core.service import open_run
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="synthetic", ways=3, train_tasks=16, test_tasks=4)
    train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=2, meta_batch=4, lr=0.01, checkpoint_every=1)
    out = train(task_cfg, train_cfg, tmp_path / "old", progress=False, device="cpu")
    new_fields = ("prox_lambda", "prox_lr", "prox_steps", "prox_tol", "cg_steps", "cg_tol")
    meta = json.loads((out / "meta.json").read_text())
    meta["train_config"] = {k: v for k, v in meta["train_config"].items() if k not in new_fields}
    (out / "meta.json").write_text(json.dumps(meta))
    state = read_tensor_metadata(out / TRAIN_STATE_FILE)
    state["configs"]["train"] = {k: v for k, v in state["configs"]["train"].items() if k not in new_fields}
    save_tensors(out / TRAIN_STATE_FILE, load_tensors(out / TRAIN_STATE_FILE), metadata=state)

    assert TrainConfig.from_dict(meta["train_config"]) == train_cfg
    assert open_run(out).spec == LearnerSpec("maml", 3, 0.4, 1, False)
    resumed = TrainConfig.from_dict({**meta["train_config"], "steps": 3})
    assert load_checkpoint(train(task_cfg, resumed, out, resume=True, progress=False)).meta["step"] == 3


def test_config_validation():
    assert TrainConfig(algo="proximal-maml").algorithm is Algorithm.PROXIMAL_MAML
    for bad in ({"prox_lambda": 0.0}, {"prox_lr": -1.0}, {"prox_steps": 0}, {"cg_steps": 0}, {"prox_tol": -1.0}):
        with pytest.raises(ConfigError):
            TrainConfig(algo="proximal-maml", **bad)


def test_cli_train_info_evaluate(tmp_path):
    """train / info / evaluate through the CLI (in this process: tests/helpers.run_cli)."""
    out = tmp_path / "cli"
    res = run_cli(
        "train", "--dataset", "synthetic", "--algo", "proximal-maml",
        "--arch", "mlp-synthetic", "--ways", "3", "--train-tasks", "16", "--test-tasks", "4", "--steps", "3",
        "--meta-batch", "2", "--prox-lambda", "2", "--prox-steps", "5", "--cg-steps", "3", "--out", out, "--quiet",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    info = run_cli("info", out)
    assert info.returncode == 0, info.stderr
    meta = json.loads(info.stdout)
    assert meta["algorithm"] == "proximal-maml" and meta["train_config"]["prox_lambda"] == 2.0
    ev = run_cli("evaluate", out)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["test"]["accuracy"] == pytest.approx(meta["test"]["accuracy"])


def test_tlxml_fits_refuse_proximal_maml():
    from metainf_core.influence import GaussNewtonFit, ParamLayout, fit_exact
    from metainf_core.influence.columns import create_columns_function

    model = build_model("mlp-synthetic", "proximal-maml", (2,), 3).double()
    spec, params = LearnerSpec("proximal-maml", 3), params_of(model)
    with pytest.raises(ConfigError, match="not supported for proximal-maml yet; use task-IF"):
        fit_exact(model, spec, params, None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not supported for proximal-maml yet; use task-IF"):
        GaussNewtonFit(model, spec, params, None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not supported for proximal-maml yet; use task-IF"):
        create_columns_function(model, spec, ParamLayout.from_params(params))
