"""Image drill-down (metainf_core/drilldown.py) on small real Fashion-MNIST runs, in float64.

Two tiny runs (MAML and ProtoNet on the 6×6 |FFT| mlp, 24 training tasks of which 3 are noise
and 3 label-flip tasks, 8 test tasks, 30 steps) with a Gauss-Newton fit, and a 5-step conv4×4
MAML (batch norm + max-pool through the inner step) scored along a random direction.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad

from metainf_core import drilldown as dd
from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError, TaskNotFoundError
from metainf_core.fits import fit_influence, params_as
from metainf_core.influence.flat import ParamLayout, create_flat_logits_function
from metainf_core.influence.gradients import task_gradients
from metainf_core.ranking import Target, target_gradient
from metainf_core.service import open_run
from metainf_core.train import train

TASKS = TaskConfig(
    dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=24, test_tasks=8, noise_tasks=3, label_flip_tasks=3
)
FIT = InfluenceConfig(method="gn", n_orth=64, dtype="float64", self_rank_sample=24)
TEST_TASK = 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """{"maml"|"protonet": (run, fitted influence)}, trained and fitted with the cache in a tmp dir."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(tmp_path_factory.mktemp("drill_cache")))
        out = {}
        for algo in ("maml", "protonet"):
            cfg = TrainConfig(algo=algo, arch="mlp", steps=30, meta_batch=8, lr=3e-3, checkpoint_every=30)
            run = open_run(train(TASKS, cfg, tmp_path_factory.mktemp(algo), progress=False, device="cpu"))
            out[algo] = (run, fit_influence(run, FIT))
        yield out


def _some_tasks(run) -> list[int]:
    """A normal, a noise and a label-flip training task."""
    ts = run.train_tasks
    normal = int(np.flatnonzero(ts.corruption == 0)[0])
    return [normal, int(ts.ids_with("noise")[0]), int(ts.ids_with("label_flip")[0])]


def _score_fn(run, v, j):
    params = params_as(run, "float64")
    layout = ParamLayout.from_params(params)
    loss_fn, x0 = dd.create_drill_loss_function(run.model, run.spec, layout, layout.flatten(params))
    task = dd._task_tensors(run, "train", j, torch.float64)
    return dd.create_score_function(loss_fn, x0, v, task), task


def _central_difference(score, u, w, which: str, k: int, eps: float) -> float:
    e = torch.zeros_like(u if which == "u" else w)
    e[k] = eps
    if which == "u":
        return float((score(u + e, w) - score(u - e, w)) / (2 * eps))
    return float((score(u, w + e) - score(u, w - e)) / (2 * eps))


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_direction_reproduces_helpfulness(runs, algo):
    run, inf = runs[algo]
    g = dd.target_task_gradient(run, TEST_TASK)
    torch.testing.assert_close(g, target_gradient(run, Target((TEST_TASK,)), "float64"), rtol=0, atol=0)
    v = dd.score_direction(inf, g)
    ids = _some_tasks(run)
    gj = task_gradients(run.model, run.spec, params_as(run, "float64"), run.train_tasks, run.dataset, ids)
    h = inf.helpfulness(g)[ids]
    # Two summation orders of the same float64 products (q ≈ 1.4k–2.3k terms through a rank-k
    # factor): rounding ≲ q·ε_mach ≈ 5e-13 of the Cauchy-Schwarz scale ‖v‖‖g_j‖; 1e-10 leaves room.
    bound = 1e-10 * v.norm() * gj.norm(dim=1)
    assert ((gj @ v - h).abs() <= bound).all(), (gj @ v - h, bound)
    assert h.abs().max() > 1e3 * bound.max()  # the scores are far above the tolerance


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_query_and_support_derivatives(runs, algo):
    run, inf = runs[algo]
    g = dd.target_task_gradient(run, TEST_TASK)
    v = dd.score_direction(inf, g)
    h = inf.helpfulness(g)
    for j in _some_tasks(run):
        d = dd.drill_training_task(run, inf, TEST_TASK, j, test_grad=g)
        scale = float(np.abs(d.query.values).sum())
        # Shares are one float64 jvp each; the sum of 15 and the fitted score differ by rounding only.
        assert d.query.values.sum() == pytest.approx(d.score, abs=1e-12 * scale)
        assert d.score == pytest.approx(float(h[j]), abs=1e-10 * scale)
        assert d.fitted_score == float(h[j])
        score, task = _score_fn(run, v, j)
        u1 = torch.ones(len(task.query_y), dtype=torch.float64)
        w1 = torch.ones(len(task.support_y), dtype=torch.float64)
        assert float(score(u1, w1)) == pytest.approx(d.score, abs=1e-12 * scale)
        # The score is linear in query weights: a central difference is exact up to rounding,
        # ε_mach·|score|/ε ≈ 1e-14 for ε = 1e-3.
        for k in (0, 7, 14):
            fd = _central_difference(score, u1, w1, "u", k, 1e-3)
            assert fd == pytest.approx(d.query.values[k], abs=1e-10 * scale)
        # Support weights act nonlinearly. Truncation error O(ε²) (measured ~1e-3·ε², 1e-13 at
        # ε = 1e-5); rounding ε_mach·|score|/ε ≈ 1e-11. Larger ε can cross a ReLU kink in MAML's
        # adapted network, where the score (a gradient) jumps (seen at ε = 1e-2). Tolerance 1e-7 of
        # the largest effect (≈ 1e-9) is 100× the measured error.
        tol = 1e-7 * float(np.abs(d.support.values).max())
        for s in (0, 6, 13):
            fd = _central_difference(score, u1, w1, "w", s, 1e-5)
            assert fd == pytest.approx(d.support.values[s], abs=tol), (j, s)
        assert np.abs(d.support.values).max() > 1e-5  # effects are far from zero


def test_protonet_class_effects_sum_to_zero(runs):
    run, inf = runs["protonet"]
    g = dd.target_task_gradient(run, TEST_TASK)
    for j in _some_tasks(run):
        d = dd.drill_training_task(run, inf, TEST_TASK, j, test_grad=g)
        e, labels = d.support.values, d.support.images.label
        per_class = np.array([e[labels == c].sum() for c in range(3)])
        # Prototypes are invariant to scaling a class's weights together (Euler): the sums are
        # rounding of five float64 terms (measured ~1e-16 of the largest effect).
        assert np.abs(per_class).max() < 1e-12 * np.abs(e).max(), per_class
        assert np.abs(e).max() > 1e-5


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_target_image_shares(runs, algo):
    run, inf = runs[algo]
    g = dd.target_task_gradient(run, TEST_TASK)
    h = inf.helpfulness(g).numpy()
    t = dd.target_image_shares(run, inf, TEST_TASK)
    assert t.shares.shape == (15, inf.num_tasks)
    # Columns are sums of 15 float64 products of the same factor: rounding ≲ 1e-12 of Σ|shares|.
    np.testing.assert_allclose(t.scores, h, rtol=0, atol=1e-12 * np.abs(t.shares).sum(0).max())
    # Direct route: ∇ℓ_k of one query image by torch.func.grad, times −I_meta(j)/n_q.
    params = params_as(run, "float64")
    layout = ParamLayout.from_params(params)
    logits_fn = create_flat_logits_function(run.model, run.spec, layout)
    task = dd._task_tensors(run, "test", TEST_TASK, torch.float64)
    def image_loss(w, k):
        logits = logits_fn(w, task.support_x, task.support_y, task.query_x)
        return F.cross_entropy(logits, task.query_y, reduction="none")[k]

    for k in (0, 9):
        gk = grad(image_loss)(layout.flatten(params), k)
        for j in _some_tasks(run):
            direct = float(-(gk @ inf.i_meta(j)) / 15)
            assert t.shares[k, j] == pytest.approx(direct, abs=1e-10 * np.abs(t.shares[:, j]).sum())
    one = t.for_training_task(3)
    assert one.additive and one.total == pytest.approx(h[3], abs=1e-12)
    assert one.images.split == "test" and one.images.role == "query"


def test_corrupted_task_images(runs):
    run, inf = runs["maml"]
    noise, flip = (int(run.train_tasks.ids_with(k)[0]) for k in ("noise", "label_flip"))
    d = dd.drill_training_task(run, inf, TEST_TASK, noise)
    assert d.support.images.corruption == "noise" and d.query.images.role == "query"
    np.testing.assert_array_equal(d.support.images.sample_index, run.train_tasks.support[noise].reshape(-1))
    assert np.isfinite(d.support.values).all() and np.isfinite(d.query.values).all()
    imgs = dd.task_images(run, "train", flip, "query")
    batch = run.train_tasks.batch([flip], run.dataset)
    np.testing.assert_array_equal(imgs.label, batch.query_y[0].numpy())  # what the learner was told
    np.testing.assert_array_equal(imgs.true_label, np.repeat(np.arange(3), 5))
    assert (imgs.label != imgs.true_label).any()
    names = run.train_tasks.task(flip, run.dataset).class_names
    assert imgs.class_name == tuple(names[k] for k in imgs.label)
    assert dd.plain_summary(d).count(".") >= 1 and "gradient" not in dd.plain_summary(d)


def test_first_order_maml_and_conv4(tmp_path, one_thread):
    """Conv4×4 MAML (batch norm and max-pool inside the inner step), second and first order, along a
    random direction v: Σ query shares = vᵀ g_j and support effects match central differences."""
    cfg = TrainConfig(algo="maml", arch="conv4", filters=4, steps=5, meta_batch=4, lr=3e-3, checkpoint_every=5)
    tasks = dataclasses.replace(TASKS, train_tasks=4, test_tasks=2, noise_tasks=1, label_flip_tasks=0)
    run = open_run(train(tasks, cfg, tmp_path / "c4", progress=False, device="cpu"))
    for first_order in (False, True):
        r = dataclasses.replace(run, spec=dataclasses.replace(run.spec, first_order=first_order))
        params = params_as(r, "float64")
        layout = ParamLayout.from_params(params)
        v = torch.randn(layout.numel, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        gj = task_gradients(r.model, r.spec, params, r.train_tasks, r.dataset, [0, 1])
        for j in (0, 1):
            score, task = _score_fn(r, v, j)
            loss_fn, x0 = dd.create_drill_loss_function(r.model, r.spec, layout, layout.flatten(params))
            du, dw = dd.image_effects(loss_fn, x0, v, task)
            assert float(du.sum()) == pytest.approx(float(gj[j] @ v), abs=1e-10 * float(v.norm() * gj[j].norm()))
            u1, w1 = torch.ones_like(du), torch.ones_like(dw)
            tol = 1e-7 * float(dw.abs().max())  # as in test_query_and_support_derivatives
            for s in (2, 11):
                assert _central_difference(score, u1, w1, "w", s, 1e-5) == pytest.approx(float(dw[s]), abs=tol)


def _shares(values, corruption="none"):
    n = len(values)
    zeros, names = np.zeros(n, int), ("Sneaker",) * n
    images = dd.TaskImages("train", 0, "query", np.arange(n), zeros, names, zeros, names, corruption)
    return dd.ImageShares(images, np.asarray(values, float), float(np.sum(values)), True)


def test_plain_summary_numbers():
    # 0.5 + 0.3 of 1.0 is the first prefix to reach 80 %; image numbers count from 1.
    assert dd.plain_summary(_shares([0.1, 0.5, 0.3, 0.05, 0.05])) == (
        "2 of the 5 query images carry 80 % of how much this training task helped the test task; "
        "the largest share is image 2 (Sneaker)."
    )
    assert dd.plain_summary(_shares([-0.1, 0.3, -1.2, 0.0])) == (  # −1.2 of −1.0: more than all of it
        "Query image 3 (Sneaker) alone carries more than all of how much this training task hurt the test task "
        "(other images work against it)."
    )
    assert dd.plain_summary(_shares([-0.1, 0.02, -0.9, 0.0])).startswith("Query image 3 (Sneaker) alone carries 92 %")
    assert "nearly cancel out" in dd.plain_summary(_shares([0.5, -0.49, 0.2, -0.2]))
    assert "(noise labelled Sneaker)" in dd.plain_summary(_shares([0.1, 0.5], "noise"))
    with pytest.raises(ConfigError):
        dd.plain_summary(dataclasses.replace(_shares([1.0]), additive=False))


def test_errors(runs):
    run, inf = runs["protonet"]
    with pytest.raises(TaskNotFoundError):
        dd.drill_training_task(run, inf, TEST_TASK, 999)
    with pytest.raises(TaskNotFoundError):
        dd.target_image_shares(run, inf, 99)
    with pytest.raises(ConfigError):
        dd.score_direction(inf, torch.zeros(3, dtype=torch.float64))
    prox = dataclasses.replace(run, spec=dataclasses.replace(run.spec, algo="proximal-maml"))
    with pytest.raises(ConfigError):
        dd.create_drill_loss_function(prox.model, prox.spec, ParamLayout.from_params(prox.params), torch.zeros(1))
