"""The learners' maths: parameter counts, ProtoNet logits, MAML meta-gradients (finite differences
and learn2learn's MAML wrapper agree with our functional form)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metainf_core.learners import (
    LearnerSpec,
    create_batched_task_metrics_function,
    create_task_loss_function,
    params_of,
    prototype_logits,
)
from metainf_core.models import build_model, count_parameters
from helpers import tiny_task  # tests/helpers.py (pytest puts tests/ on sys.path)


@pytest.mark.parametrize(
    ("arch", "algo", "shape", "ways", "filters", "expected"),
    [
        ("mlp-synthetic", "maml", (2,), 3, 32, 63),  # TLXML B.3
        ("mlp", "maml", (32,), 5, 32, 1285),  # TLXML 5.1.1 (32-d BoVW features)
        ("mlp", "maml", (1, 28, 28), 5, 32, 1413),  # 36 FFT features (Omniglot, B.2)
        ("conv4", "protonet", (1, 28, 28), 5, 32, 28320),  # TLXML B.3, Omniglot ProtoNet
        ("conv4", "protonet", (3, 84, 84), 5, 32, 28896),  # TLXML B.3, MiniImageNet ProtoNet
        ("conv3", "maml", (3, 32, 32), 5, 16, 6469),  # TLXML B.4/B.5, FC60 MAML
    ],
)
def test_parameter_counts_match_paper(arch, algo, shape, ways, filters, expected):
    assert count_parameters(build_model(arch, algo, shape, ways, filters)) == expected


def test_prototype_logits_brute_force():
    emb_s, emb_q = torch.randn(6, 4), torch.randn(5, 4)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = prototype_logits(emb_s, y, emb_q, 3)
    for i in range(5):
        for k in range(3):
            c = emb_s[y == k].mean(0)
            assert logits[i, k].item() == pytest.approx(-((emb_q[i] - c) ** 2).sum().item(), rel=1e-5)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_maml_meta_gradient_matches_finite_differences(inner_steps):
    model = build_model("mlp-synthetic", "maml", (2,), 3).double()
    spec = LearnerSpec("maml", 3, inner_lr=0.5, inner_steps=inner_steps)
    loss_fn = create_task_loss_function(model, spec)
    task = tiny_task()
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    loss = loss_fn(params, *task)
    grads = torch.autograd.grad(loss, list(params.values()))
    eps = 1e-6
    worst = 0.0
    for (name, p), g in zip(params.items(), grads, strict=True):
        for idx in range(p.numel()):
            with torch.no_grad():
                plus = {k: v.detach().clone() for k, v in params.items()}
                minus = {k: v.detach().clone() for k, v in params.items()}
                plus[name].view(-1)[idx] += eps
                minus[name].view(-1)[idx] -= eps
                fd = (loss_fn(plus, *task) - loss_fn(minus, *task)) / (2 * eps)
            worst = max(worst, abs(fd.item() - g.view(-1)[idx].item()))
    assert worst < 1e-6, worst
    # The first-order variant drops the second-order term: its gradient must differ.
    fo = create_task_loss_function(model, LearnerSpec("maml", 3, 0.5, inner_steps, first_order=True))
    g_fo = torch.autograd.grad(fo(params, *task), list(params.values()))
    assert max((a - b).abs().max().item() for a, b in zip(g_fo, grads, strict=True)) > 1e-4


def test_functional_maml_equals_learn2learn_maml():
    """Training/influence use one functional MAML; learn2learn's stateful wrapper gives the same
    query loss and second-order meta-gradient on the same task."""
    import learn2learn as l2l

    model = build_model("conv3", "maml", (1, 28, 28), 3, filters=8).double()
    sx, sy = torch.rand(9, 1, 28, 28, dtype=torch.float64), torch.arange(3).repeat_interleave(3)
    qx, qy = torch.rand(6, 1, 28, 28, dtype=torch.float64), torch.arange(3).repeat_interleave(2)
    spec = LearnerSpec("maml", 3, inner_lr=0.3, inner_steps=2)

    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    ours = create_task_loss_function(model, spec)(params, sx, sy, qx, qy)
    ours_grad = torch.autograd.grad(ours, list(params.values()))

    maml = l2l.algorithms.MAML(copy.deepcopy(model), lr=0.3, first_order=False)
    learner = maml.clone()
    for _ in range(2):
        learner.adapt(F.cross_entropy(learner(sx), sy))
    theirs = F.cross_entropy(learner(qx), qy)
    theirs_grad = torch.autograd.grad(theirs, list(maml.parameters()))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(ours_grad, theirs_grad, strict=True):
        torch.testing.assert_close(a, b)


def test_batched_metrics_equal_per_task_loop():
    model = build_model("conv4", "protonet", (1, 28, 28), 3, filters=8)
    params = params_of(model)
    spec = LearnerSpec("protonet", 3)
    b = 4
    sx, qx = torch.rand(b, 6, 1, 28, 28), torch.rand(b, 9, 1, 28, 28)
    sy = torch.arange(3).repeat_interleave(2).expand(b, -1)
    qy = torch.arange(3).repeat_interleave(3).expand(b, -1)
    loss, acc = create_batched_task_metrics_function(model, spec)(params, sx, sy, qx, qy)
    single = create_task_loss_function(model, spec)
    for i in range(b):
        assert loss[i].item() == pytest.approx(single(params, sx[i], sy[i], qx[i], qy[i]).item(), rel=1e-5)
    assert ((acc >= 0) & (acc <= 1)).all()


def test_max_pool_2x2_equals_torch_max_pool_and_its_gradient():
    """models.MaxPool2x2 vs nn.MaxPool2d(2) on both of its kernels: the strided maxima (no grad,
    fast under vmap) give the values bitwise, and so does the fused kernel (grad mode) with its
    gradient (odd sizes floor like torch)."""
    from torch.func import vmap

    from metainf_core.models import MaxPool2x2

    for shape in ((3, 4, 28, 28), (3, 4, 7, 7), (2, 5, 3, 3)):
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        ours, ref = MaxPool2x2()(x), torch.nn.MaxPool2d(2)(x)
        assert torch.equal(ours, ref)
        g = torch.randn_like(ref)
        (ga,), (gb,) = torch.autograd.grad(ours, x, g), torch.autograd.grad(ref, x, g)
        assert torch.equal(ga, gb)
        with torch.no_grad():
            assert torch.equal(MaxPool2x2()(x), ref)  # the strided kernel
    batched = torch.randn(4, 6, 3, 14, 14)
    expected = torch.nn.MaxPool2d(2)(batched.flatten(0, 1)).view(4, 6, 3, 7, 7)
    assert torch.equal(vmap(MaxPool2x2())(batched), expected)
    with torch.no_grad():
        assert torch.equal(vmap(MaxPool2x2())(batched), expected)


def test_learners_stand_below_influence_and_own_the_composite_batch_norm(python_exe):
    """No import circle: learners imports nothing of ``influence`` (flat builds on learners), and the
    composite batch-norm copy it provides gives the network's outputs (conv4: BatchNorm2d)."""
    import subprocess

    from metainf_core.influence import flat
    from metainf_core.learners import CompositeBatchNorm, with_composite_batch_norm

    probe = "import sys, metainf_core.learners as _; print([m for m in sys.modules if m.startswith('metainf_core.influence')])"
    res = subprocess.run([python_exe, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", (res.stdout, res.stderr)
    assert flat.with_composite_batch_norm is with_composite_batch_norm
    model = build_model("conv4", "protonet", (1, 28, 28), 3, 4).double()
    copy_ = with_composite_batch_norm(model)
    assert sum(isinstance(m, CompositeBatchNorm) for m in copy_.modules()) == 4
    assert [n for n, _ in copy_.named_parameters()] == [n for n, _ in model.named_parameters()]
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    torch.testing.assert_close(copy_(x), model(x), rtol=1e-12, atol=1e-12)  # same maths; float64 rounding only
