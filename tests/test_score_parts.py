"""Size and direction of a task's score (``TaskInfluence.task_norms`` / ``score_parts``) on a real
trained run, against explicit per-task gradients and a dense fitted metric A = (1/M) U_k diag(s) U_kᵀ."""

from __future__ import annotations

import pytest
import torch

from metainf_core.config import InfluenceConfig
from metainf_core.fits import fit_influence, params_as
from metainf_core.influence import TaskInfluence, task_gradients
from metainf_core.service import Run, open_run

FITS = {  # the 63-parameter synthetic MAML of conftest: exact meta-Hessian (indefinite) and Gauss-Newton
    "exact": InfluenceConfig(method="exact", dtype="float64"),
    "gn": InfluenceConfig(method="gn", n_orth=32, dtype="float64"),
    "gn-float32": InfluenceConfig(method="gn", n_orth=32, dtype="float32"),
}


@pytest.fixture(scope="module")
def fitted(synthetic_run, tmp_path_factory) -> dict[str, tuple[Run, TaskInfluence]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(tmp_path_factory.mktemp("cache")))
        run = open_run(synthetic_run)
        return {name: (run, fit_influence(run, cfg)) for name, cfg in FITS.items()}


def _gradients(run: Run, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit per-task gradients g_j (training, M × q) and g_i (test, T × q)."""
    p = params_as(run, dtype)
    return tuple(task_gradients(run.model, run.spec, p, ts, run.dataset) for ts in (run.train_tasks, run.test_tasks))


def _dense_metric(inf: TaskInfluence) -> tuple[torch.Tensor, torch.Tensor]:
    """A = (1/M) U_k diag(s) U_kᵀ as a q × q matrix, and |A| from its own eigendecomposition."""
    k = inf.truncation
    u = inf.factor[:, :k].double()
    a = u @ torch.diag(inf.signs[:k].double()) @ u.T / inf.num_tasks
    lam, q = torch.linalg.eigh(a)
    return a, q @ torch.diag(lam.abs()) @ q.T


def _truncations(inf: TaskInfluence) -> list[TaskInfluence]:
    """The fit at its chosen k, at "all positive" (A ⪰ 0) and at every column (A indefinite when
    the fit kept negative eigen-directions)."""
    return [inf.with_truncation(k) for k in sorted({inf.truncation, inf.num_positive, inf.num_columns})]


@pytest.mark.parametrize("name", ["exact", "gn"])
def test_task_norms_equal_explicit_metric_norms(fitted, name):
    run, inf = fitted[name]
    g_train, g_test = _gradients(run, "float64")
    if name == "exact":
        assert inf.num_negative > 0  # the indefinite case is exercised below (|A| ≠ A)
    for f in _truncations(inf):
        a, abs_a = _dense_metric(f)
        explicit = torch.einsum("mq,qr,mr->m", g_train, abs_a, g_train).sqrt()
        # both sides sum the same k squared coordinates in float64; the dense |A| comes from a q × q
        # eigh (error ~ q·eps relative, 5e-15 measured), so 1e-10 is a wide margin that a wrong formula misses
        torch.testing.assert_close(f.task_norms(), explicit, rtol=1e-10, atol=0)
        parts = f.score_parts(g_test)
        test_norm = torch.einsum("tq,qr,tr->t", g_test, abs_a, g_test).sqrt()
        torch.testing.assert_close(parts.test_norm, test_norm, rtol=1e-10, atol=0)
        # helpfulness is g_iᵀ A g_j with the same A (float64 mat-products of O(1e2) terms: rounding ≪ 1e-10)
        h = g_test @ a @ g_train.T
        torch.testing.assert_close(parts.helpfulness, h, rtol=1e-10, atol=1e-10 * float(h.abs().max()))


@pytest.mark.parametrize("name", list(FITS))
def test_product_identity_and_bounds(fitted, name):
    run, inf = fitted[name]
    dtype = FITS[name].dtype
    g_train, g_test = _gradients(run, dtype)
    eps = torch.finfo(getattr(torch, dtype)).eps
    for f in _truncations(inf):
        parts = f.score_parts(g_test)
        assert parts.alignment.shape == parts.helpfulness.shape == (len(run.test_tasks), f.num_tasks)
        torch.testing.assert_close(parts.helpfulness, f.helpfulness(g_test), rtol=0, atol=0)  # same ops, same order
        product = parts.test_norm[:, None] * parts.sizes * parts.alignment
        # one division and two multiplications: a few ulps of each score
        torch.testing.assert_close(product, parts.helpfulness, rtol=8 * eps, atol=0)
        # Cauchy–Schwarz with weights |s_k| bounds |alignment| by 1 for any signs; a few ulps of rounding
        assert parts.alignment.abs().max() <= 1 + 8 * eps
        torch.testing.assert_close(f.alignment(g_test), parts.alignment, rtol=0, atol=0)


@pytest.mark.parametrize("name", list(FITS))
def test_self_alignment_is_one_when_the_metric_is_psd(fitted, name):
    run, inf = fitted[name]
    dtype = FITS[name].dtype
    g_train, _ = _gradients(run, dtype)
    psd = inf.with_truncation(inf.num_positive)
    own = psd.score_parts(g_train).alignment.diagonal()
    # the target's coordinates U_kᵀ g_j are recomputed here, the stored P_j came from the fit's own
    # gradient pass (chunked, same dtype): they agree to rounding, ~1e2 ulps after the sums
    tol = 1e-10 if dtype == "float64" else 1e-4
    torch.testing.assert_close(own, torch.ones_like(own), rtol=0, atol=tol)
    if inf.num_negative and inf.num_columns > inf.num_positive:  # indefinite A: self-alignment ≤ 1, not 1
        own = inf.with_truncation(inf.num_columns).score_parts(g_train).alignment.diagonal()
        assert own.max() <= 1 + tol and own.min() < 1 - 1e-3


def test_zero_size_task_has_zero_alignment(fitted):
    """A training task whose projection vanishes has size 0; its alignment is 0 (not NaN) and the
    product identity still holds (its score is 0)."""
    run, inf = fitted["gn"]
    g_train, g_test = _gradients(run, "float64")
    proj = inf.projections.clone()
    proj[3] = 0
    f = TaskInfluence(inf.factor, proj, inf.signs, inf.eigenvalues, inf.truncation, inf.mode)
    parts = f.score_parts(g_test)
    assert parts.sizes[3] == 0 and (parts.alignment[:, 3] == 0).all() and (parts.helpfulness[:, 3] == 0).all()
    assert torch.isfinite(parts.alignment).all()
