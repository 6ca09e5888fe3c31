"""The peer library at task level (peer.py, compare's dattri-if-* methods) against metainf's own
task-IF on the same run: the same estimator, (1/M) g_iᵀ (H + λI)⁻¹ g_j with H the meta-Hessian."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import positive_definite_damping  # tests/helpers.py

from metainf_core.compare import METHODS, CompareConfig, maml_task_if_fit, method_scores
from metainf_core.ranking import Target
from metainf_core.service import open_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))


def test_dattri_influence_at_task_level_matches_task_if(synthetic_run, cache):
    run = open_run(synthetic_run)
    # H + λI positive definite on this run (asserted; helpers.positive_definite_damping), so metainf's
    # positive-part pseudo-inverse and dattri's plain solve are the same operator
    cfg = CompareConfig(damping=positive_definite_damping(run), max_iter=60)  # dattri-if-cg: min(60, q = 63) iterations
    assert maml_task_if_fit(run, cfg).num_negative == 0
    target = Target((4, 11))
    ours = method_scores(run, target, "task-if", cfg)
    scale = np.abs(ours).max()
    for name in ("dattri-if-explicit", "dattri-if-cg"):
        theirs, details = METHODS[name].scores(run, target, cfg)
        err = np.abs(theirs - ours).max()
        print(f"\n{name}: {details}; max |diff| {err:.2e}, scale {scale:.2e}, Spearman-free check of order "
              f"{(np.argsort(theirs) == np.argsort(ours)).mean():.2f}")
        # dattri accumulates its score table in float32 (rel. 6e-8 per entry) and its CG runs a fixed
        # 60 iterations on a system with κ(H + λI) < 10³ (residual far below 1e-6): 1e-5 of the scale
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5 * scale)
    assert details["library"] == "dattri 0.3.0"


def test_dattri_methods_say_why_they_do_not_apply(synthetic_run):
    from types import SimpleNamespace

    import torch

    from metainf_core.influence.exact import MAX_EXACT_PARAMS
    from metainf_core.learners import LearnerSpec

    damped = CompareConfig(damping=0.01)
    big = SimpleNamespace(spec=LearnerSpec("maml", 3), params={"w": torch.zeros(MAX_EXACT_PARAMS + 1)})
    assert "q × q Hessian" in METHODS["dattri-if-explicit"].skip_reason(big, damped)
    assert METHODS["dattri-if-cg"].skip_reason(big, damped) is None
    assert "damping" in METHODS["dattri-if-cg"].skip_reason(big)  # λ_d = 0: dattri has no pseudo-inverse
    prox = SimpleNamespace(spec=LearnerSpec("proximal-maml", 3), params={"w": torch.zeros(10)})
    assert "proximal-maml" in METHODS["dattri-if-cg"].skip_reason(prox, damped)


def test_lds_defaults_take_the_peer_where_it_is_cheap():
    from metainf_core.lds import RANDOM, default_methods

    names = default_methods()
    assert "dattri-if-explicit" in names and "direct-if-ekfac" in names and "dattri-if-cg" not in names
    assert names[-1] == RANDOM and set(names) | {"dattri-if-cg"} == set(METHODS) | {RANDOM}


def test_dattri_trak_at_task_level_is_the_projected_kernel_regression(synthetic_run, cache):
    """dattri's TRAK with a task as one example, against the formula written out here: dattri's own
    seeded projection P (q × d, read off by projecting the identity), φ = Pᵀg per task, and
    τ_ji = φ_iᵀ (ΦᵀΦ)⁻¹ φ_j (1 − e^(−L_j)), L_j from the run's own evaluation of the training tasks."""
    import torch
    from dattri.func.projection import random_project

    from metainf_core.fits import params_as
    from metainf_core.influence.flat import ParamLayout
    from metainf_core.influence.gradients import iter_task_batches, task_gradients
    from metainf_core.influence.task_if import batch_tasks
    from metainf_core.peer import dattri_trak_scores, trak_dimension, trak_train_side

    run = open_run(synthetic_run)

    def tasks(taskset, ids):
        return [t for _, b in iter_task_batches(taskset, run.dataset, ids, 32, torch.float64) for t in batch_tasks(b)]

    train, m = tasks(run.train_tasks, np.arange(len(run.train_tasks))), len(run.train_tasks)
    test_ids = np.array([0, 3, 9])
    d = trak_dimension(m)
    assert d == m // 2 == 24  # the kernel of 24 projected gradients of 48 tasks has full rank
    side = trak_train_side(run, train)
    theirs = dattri_trak_scores(run, train, tasks(run.test_tasks, test_ids), train_side=side)
    assert theirs.shape == (m, len(test_ids))

    params = params_as(run, "float64")
    g_train = task_gradients(run.model, run.spec, params, run.train_tasks, run.dataset)  # (M, q), float64
    g_test = task_gradients(run.model, run.spec, params, run.test_tasks, run.dataset, test_ids)
    # metainf's flat layout orders parameters by name; dattri flattens in named_parameters() order
    layout = ParamLayout.from_params(params)
    offsets = dict(zip(layout.names, np.cumsum([0, *layout.sizes]).tolist(), strict=False))
    order = torch.cat([torch.arange(offsets[n], offsets[n] + p.numel()) for n, p in run.model.named_parameters()])
    g_train, g_test = g_train[:, order], g_test[:, order]
    q = len(order)
    assert q == layout.numel
    eye = torch.eye(q, dtype=torch.float64)
    proj = random_project(eye, q, proj_dim=d, proj_max_batch_size=32, proj_seed=0, device="cpu",
                          proj_type="normal")(eye, ensemble_id=0)  # fmt: skip  (row k = P's image of e_k)
    phi, phi_test = g_train @ proj, g_test @ proj
    one_minus_p = 1 - np.exp(-run.evaluate(split="train").loss)  # float32 evaluation: rel. ~1e-6
    want = (phi_test @ torch.linalg.solve(phi.T @ phi, phi.T)).T.numpy() * one_minus_p[:, None]
    scale = np.abs(want).max()
    # κ(ΦᵀΦ) on this run is < 10⁵ (float64 solve: error ≪ 1e-9) and dattri accumulates in float32
    # (rel. 6e-8 per entry); the float32 losses add rel. ~1e-6 through 1 − p: 1e-5 of the scale
    print(f"\nTRAK max abs diff {np.abs(theirs - want).max():.2e}, scale {scale:.2e}")
    np.testing.assert_allclose(theirs, want, rtol=1e-5, atol=1e-5 * scale)
    # its self-scores are the leverages h_jj (1 − p_j) > 0: a task helps itself, the helpfulness sign
    self_scores = dattri_trak_scores(run, train, train[:6], train_side=side)
    assert (np.diag(self_scores[:6]) > 0).all()
    # Compare's method: the target's mean over its tasks, over M (the influence attributors' scale)
    via_compare, details = METHODS["dattri-trak"].scores(run, Target(tuple(int(i) for i in test_ids)), CompareConfig())
    np.testing.assert_allclose(via_compare, theirs.mean(1) / m, rtol=1e-6, atol=1e-6 * scale / m)  # same code path, float32 sums
    assert details["projection_dim"] == d and METHODS["dattri-trak"].skip_reason(run, CompareConfig()) is None
