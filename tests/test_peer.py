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
