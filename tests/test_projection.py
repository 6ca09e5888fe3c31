"""Large-backbone curvature (issue 13 item 5): CountSketch Φ and parameter groups (``influence/projection.py``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from metainf_core.cache import content_key
from metainf_core.config import InfluenceConfig, InfluenceMethod, TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.influence import (
    GaussNewtonConfig,
    GaussNewtonFit,
    fit_gauss_newton,
    influence_from_factor,
    task_gradients,
)
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.projection import CountSketch, InfluenceSpace, sketch_hash
from metainf_core.learners import params_of
from metainf_core.models import build_model

from helpers import explicit_gauss_newton, synthetic_tasksets, trained_synthetic  # tests/helpers.py

M = 24
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- configuration and cache keys -------------------------------------------------------------
def test_default_cache_keys_unchanged():
    """The new fields stay out of to_dict() at their defaults: the keys of existing (and shipped)
    fits are byte-identical to those computed before the fields existed (literals taken then)."""
    assert content_key(InfluenceConfig().to_dict()) == "5ef76ad10e84cef004568fa6"
    assert content_key(InfluenceConfig(dtype="float32").to_dict()) == "1876f37a9393b3d40efd94e4"  # ui.DEFAULT_INFLUENCE
    assert content_key(InfluenceConfig(projection_seed=7).to_dict()) == "5ef76ad10e84cef004568fa6"  # no sketch: seed unused
    cfg = InfluenceConfig(projection_dim=64, projection_seed=3, param_groups=("features.3", "head"))
    assert cfg.to_dict()["param_groups"] == ["features.3", "head"] and cfg.to_dict()["projection_dim"] == 64
    assert InfluenceConfig.from_dict(cfg.to_dict()) == cfg and InfluenceConfig.from_dict(InfluenceConfig().to_dict()) == InfluenceConfig()
    assert content_key(cfg.to_dict()) != content_key(InfluenceConfig().to_dict())


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="projection_dim must be a non-negative integer"):
        InfluenceConfig(projection_dim=-1)
    with pytest.raises(ConfigError, match="Gauss-Newton"):
        InfluenceConfig(method="exact", param_groups=("head",))
    with pytest.raises(ConfigError, match="dotted parameter-name prefix"):
        InfluenceConfig(param_groups=("features.",))
    layout = ParamLayout.from_params(params_of(build_model("conv4", "maml", (1, 28, 28), 3, filters=4)))
    with pytest.raises(ConfigError, match="top-level modules: features, head"):
        InfluenceSpace.build(layout, ("classifier",))


# ---- (a) the sketch itself ----------------------------------------------------------------------
@pytest.mark.parametrize("nnz", [1, 3])
def test_sketch_linear_and_adjoint_exact(nnz):
    q, d = 5000, 97
    phi = CountSketch(q, d, seed=5, nnz=nnz)
    x, x2, y = torch.randn(3, q, dtype=torch.float64), torch.randn(q, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    # ⟨Φx, y⟩ = ⟨x, Φᵀy⟩: both are the same sum of q·nnz products in another order; float64
    # rounding of ~5e3 terms of size ~1 is ≤ ~1e-12 relative.
    for xi in x:
        assert torch.dot(phi.apply(xi), y).item() == pytest.approx(torch.dot(xi, phi.adjoint(y)).item(), rel=1e-11, abs=1e-11)
    # linear (and batched rows = row by row), to float64 rounding
    torch.testing.assert_close(phi.apply(2.0 * x[0] - 3.0 * x2), 2.0 * phi.apply(x[0]) - 3.0 * phi.apply(x2), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(phi.apply(x), torch.stack([phi.apply(r) for r in x]), rtol=0, atol=1e-12)
    # stored as int32 buckets + int8 signs, regenerated identically from the seed, other seeds differ
    assert phi.buckets.dtype == torch.int32 and phi.signs.dtype == torch.int8 and phi.buckets.shape == (nnz, q)
    b, s = sketch_hash(q, d, 5, nnz)
    assert np.array_equal(b, phi.buckets.numpy()) and np.array_equal(s, phi.signs.numpy())
    assert not np.array_equal(sketch_hash(q, d, 6, nnz)[0], b)


def test_sketch_preserves_inner_products_in_expectation():
    """E⟨Φx, Φy⟩ = ⟨x, y⟩ over seeds. For CountSketch (nnz = 1) the variance of one draw is
    (‖x‖²‖y‖² + ⟨x,y⟩² − 2 Σ x_i² y_i²)/d; the mean of n draws must lie within 4 sd/√n of
    ⟨x, y⟩ (a false alarm has probability ~6e-5; the draws are seeded, so the test is fixed)."""
    q, d, n = 400, 32, 400
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(q, generator=gen, dtype=torch.float64)
    y = 0.6 * x + torch.randn(q, generator=gen, dtype=torch.float64)
    est = np.array([torch.dot(*CountSketch(q, d, seed=s).apply(torch.stack([x, y]))).item() for s in range(n)])
    exact = torch.dot(x, y).item()
    var = ((x @ x) * (y @ y) + exact**2 - 2 * ((x * x) * (y * y)).sum()).item() / d
    assert abs(est.mean() - exact) < 4 * (var / n) ** 0.5
    # the empirical variance matches the formula: for n = 400 the sample variance's relative sd is
    # about sqrt(2/n) ≈ 0.07 (Gaussian-like), so ±35% is a 5-sd band
    assert est.var() == pytest.approx(var, rel=0.35)


# ---- small float64 models on the synthetic data (as tests/test_influence_gn.py) -------------------
@pytest.fixture(scope="module")
def data():
    return synthetic_tasksets(M)


def _trained(algo: str, data, inner_steps: int = 1, steps: int = 60):
    return trained_synthetic(algo, data, inner_steps, steps)


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_signed_permutation_sketch_reproduces_full_fit(data, algo):
    """(b) Φ an injective signed permutation (d = q, ΦᵀΦ = I): Φᵀ(ΦHΦᵀ)⁺Φ = H⁺ exactly, so the
    sketched fit gives the full fit's scores and I_meta. MAML runs the structured columns then Φ
    per chunk, ProtoNet the naive ones."""
    ds, train_ts, test_ts = data
    model, spec, params = _trained(algo, data)
    layout = ParamLayout.from_params(params)
    q = layout.numel
    cfg = GaussNewtonConfig(n_orth=64, chunk=4)  # chunk 4 < rows per task: the per-chunk sketch path
    full, _ = fit_gauss_newton(model, spec, params, train_ts, ds, config=cfg, select=False)
    rng = np.random.default_rng(0)
    phi = CountSketch(q, q, buckets=rng.permutation(q), signs=rng.choice([-1, 1], q))
    space = InfluenceSpace.build(layout, projection_dim=q).with_sketch(phi)
    fit = GaussNewtonFit(model, spec, params, train_ts, ds, cfg, space=space)
    sk, _ = fit_gauss_newton(model, spec, params, train_ts, ds, resume=fit, select=False)
    assert sk.num_columns == full.num_columns and sk.factor.shape == (q, full.num_columns)
    # Same maths in rotated coordinates, so only float64 rounding differs, amplified by 1/λ of the
    # smallest kept eigenvalue: the fit keeps eigenvalues down to ~q·eps of the largest, where the
    # rounding is O(1). Compare on the well-conditioned part, eigenvalues ≥ 1e-6 of the largest:
    # there the error is ≲ eps·1e6 ≈ 1e-10 of the largest score; bound 1e-8.
    k = int((full.eigenvalues >= 1e-6 * full.eigenvalues[0]).sum())
    full, sk = full.with_truncation(k), sk.with_truncation(k)
    g = task_gradients(model, spec, params, test_ts, ds)
    a, b = full.helpfulness(g), sk.helpfulness(g)
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-8
    for j in (0, 5):
        torch.testing.assert_close(sk.i_meta(j), full.i_meta(j), rtol=0, atol=1e-8 * full.i_meta(j).abs().max().item())




@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_param_groups_equal_brute_force_sub_block(data, algo):
    """(c) Influence restricted to parameter groups S = the sub-block of the brute-force GN matrix:
    helpfulness(i, j) = (1/M) g_i[S]ᵀ pinv(H[S, S]) g_j[S], I_meta zero outside S. The middle layer
    "features.3" is chosen so that MAML's adaptation of the *other* layers (held fixed as
    meta-parameters, still adapted) enters the Jacobian."""
    ds, train_ts, test_ts = data
    model, spec, params = _trained(algo, data)
    layout = ParamLayout.from_params(params)
    sel = torch.cat([torch.full((n,), name.startswith("features.3."), dtype=torch.bool) for name, n in zip(layout.names, layout.sizes)])
    h = explicit_gauss_newton(model, spec, params, data)[sel][:, sel]
    fit = GaussNewtonFit(model, spec, params, train_ts, ds, GaussNewtonConfig(n_orth=64, param_groups=("features.3",)))
    fit.add_tasks(np.arange(M))
    # Prop. 5 on the sub-block, with tests/test_influence_gn.py's 1e-9 cut-off on both sides (the
    # default n·eps cut-off keeps rounding-level eigenvalues whose inverses are noise)
    g_test = task_gradients(model, spec, params, test_ts, ds)
    g_train = task_gradients(model, spec, params, train_ts, ds)
    inf = influence_from_factor(fit.factor(rtol=1e-9), g_train, InfluenceMethod.GN, select=False, space=fit.space)
    assert inf.factor.shape[0] == int(sel.sum()) and inf.num_params == layout.numel
    pinv = torch.linalg.pinv(h, rtol=1e-9, hermitian=True)
    u = inf.factor
    assert ((u @ u.T - pinv).norm() / pinv.norm()).item() < 1e-5  # tests/test_influence_gn.py's bound
    brute = g_test[:, sel] @ pinv @ g_train[:, sel].T / M
    got = inf.helpfulness(g_test)
    assert ((got - brute).abs().max() / brute.abs().max()).item() < 1e-5  # same bound, propagated
    d = inf.i_meta(3)
    assert d[~sel].abs().max().item() == 0.0  # edits change only the selected parameters
    torch.testing.assert_close(d[sel], -(pinv @ g_train[3, sel]) / M, rtol=0, atol=1e-5 * d.abs().max().item())


def test_param_groups_with_sketch_compose(data):
    """Groups + sketch: R = Φ S; U is d × r, and the adjoint maps I_meta back inside S only."""
    ds, train_ts, _ = data
    model, spec, params = _trained("protonet", data, steps=10)
    cfg = GaussNewtonConfig(n_orth=64, projection_dim=8, projection_seed=1, param_groups=("features.6", "features.3"))
    inf, _ = fit_gauss_newton(model, spec, params, train_ts, ds, config=cfg, select=False)
    layout = ParamLayout.from_params(params)
    assert inf.factor.shape[0] == 8 and inf.i_meta(0).shape == (layout.numel,)
    outside = torch.cat([torch.full((n,), not name.startswith(("features.3.", "features.6.")))
                         for name, n in zip(layout.names, layout.sizes)])  # fmt: skip
    assert inf.i_meta(0)[outside].abs().max().item() == 0.0
    again = InfluenceSpace.from_dict(inf.space.to_dict())  # what a cached fit rebuilds
    g = torch.randn(3, layout.numel, dtype=torch.float64)
    torch.testing.assert_close(again.reduce(g), inf.space.reduce(g), rtol=0, atol=0)


# ---- (d) end to end through explain.fit_influence on real data ------------------------------------
def test_fit_influence_projection_end_to_end(tmp_path, monkeypatch):
    """ProtoNet conv4 (8 filters, q = 1,896) on fashion-mnist, 32 training tasks: the sketched fit
    (d = 1,024) ranks training tasks like the full fit; it is cached and reloaded with its sketch;
    a parameter-group edit changes only those parameters."""
    from metainf_core.edit import EditSpec, edited_params
    from metainf_core.fits import cache_entry, fit_influence
    from metainf_core.ranking import Target, all_scores
    from metainf_core.service import open_run
    from metainf_core.train import train

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=32, test_tasks=6)
    train_cfg = TrainConfig(algo="protonet", arch="conv4", filters=8, steps=60, meta_batch=8, lr=2e-3, checkpoint_every=60)
    t0 = time.perf_counter()
    run = open_run(train(task_cfg, train_cfg, tmp_path / "run", progress=False, device="cpu"))
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    base = dict(dtype="float32", n_orth=128, self_rank_sample=32)  # float32: the CLI default for gn, 2× faster
    t0 = time.perf_counter()
    full = fit_influence(run, InfluenceConfig(**base))
    t1 = time.perf_counter()
    cfg = InfluenceConfig(**base, projection_dim=1024)
    sk = fit_influence(run, cfg)
    print(f"full fit {t1 - t0:.1f} s, sketched fit {time.perf_counter() - t1:.1f} s")
    assert sk.factor.shape[0] == 1024 and sk.num_params == full.num_params == 1896
    rho = []
    for i in range(6):
        a, b = all_scores(run, full, Target((i,)), "float32"), all_scores(run, sk, Target((i,)), "float32")
        rho.append(spearmanr(a, b)[0])
    print(f"full vs sketched (d = 1024 of q = 1896) Spearman per test task: {np.round(rho, 3)}")
    # A random ranking of M = 32 tasks has Spearman sd 1/√31 ≈ 0.18, so a mean over 6 test tasks
    # of 0.5 is ≈ 7 sd above chance; the sketch merges q/d ≈ 1.9 coordinates per bucket and the
    # inverse amplifies that distortion in the small eigen-directions, so agreement is partial
    # (bench/bench_projection.py: mean ≈ 0.7 at this ratio on M = 48), hence no higher bar.
    assert np.mean(rho) > 0.5 and min(rho) > 0.2
    # reloaded from the disk cache: the sketch is rebuilt from its seed, scores identical
    again = fit_influence(run, cfg)
    assert cache_entry(run, cfg).complete and again.space is not None
    # reloaded contiguous tensors may take another BLAS summation order (see tests/test_compare.py):
    # float32 rounding of sums of r = 128 terms, measured ≤ 1e-6 of the largest score (bound 1e-5);
    # a wrong sketch (other seed, no sketch) would change the scores at O(1)
    before, after = all_scores(run, sk, Target((0,)), "float32"), all_scores(run, again, Target((0,)), "float32")
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
    pg = fit_influence(run, InfluenceConfig(**base, param_groups=("features.3",)))
    new = edited_params(run, pg, EditSpec(block=(0, 1)))
    changed = {k for k in new if not torch.equal(new[k], run.params[k])}
    assert changed and all(k.startswith("features.3.") for k in changed)


# ---- sampled rows per task (columns.sample_cotangents) -------------------------------------------
def test_sampled_rows_are_an_unbiased_estimate_of_the_task_block(data):
    """E[V ΩΩᵀ Vᵀ]/s = V Vᵀ for one task's columns (ProtoNet, 15 queries × 2 = 30 rows → s = 3)."""
    from metainf_core.influence.columns import create_columns_function

    ds, train_ts, _ = data
    model, spec, params = _trained("protonet", data, steps=10)
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params)
    b = train_ts.batch([0], ds)
    args = (b.support_x[0].double(), b.support_y[0], b.query_x[0].double())
    full = create_columns_function(model, spec, layout)(w, *args)
    target = full.T @ full
    sampled = create_columns_function(model, spec, layout, rows_per_task=3)
    n = 400
    blocks = torch.stack([(lambda v: v.T @ v)(sampled(w, *args, key=k)) for k in range(n)])
    assert sampled(w, *args, key=7).shape == (3, w.numel())
    torch.testing.assert_close(sampled(w, *args, key=7), sampled(w, *args, key=7))  # the key fixes the draw
    # Each entry's sample mean is within 5 standard errors of the exact block (a Gaussian-weighted
    # sum: finite variance; 5σ makes a false alarm over the 63² entries unlikely, ~4e-3 at worst).
    err = (blocks.mean(0) - target).abs()
    se = blocks.std(0) / n**0.5
    assert bool((err <= 5 * se + 1e-12).all()), float((err / (se + 1e-30)).max())
    # s ≥ the number of rows: the task's own columns, unchanged
    torch.testing.assert_close(create_columns_function(model, spec, layout, rows_per_task=full.shape[0])(w, *args, key=3), full)


def test_rows_per_task_fit_is_close_to_the_full_fit_and_order_independent(data):
    """Summed over 24 tasks the sampled GN keeps the full fit's ranking; streaming the tasks in
    another order draws the same samples (keys are per task), so the factor's product is unchanged."""
    from scipy.stats import spearmanr as rho

    ds, train_ts, test_ts = data
    model, spec, params = _trained("maml", data)
    g = task_gradients(model, spec, params, test_ts, ds)

    def fit(rows: int, order):
        f = GaussNewtonFit(model, spec, params, train_ts, ds, GaussNewtonConfig(n_orth=64, rows_per_task=rows))
        f.add_tasks(order)
        gradients = task_gradients(model, spec, params, train_ts, ds)
        inf = influence_from_factor(f.factor(), gradients, InfluenceMethod.GN, select=False)
        return inf.with_truncation(8).helpfulness(g)  # the 8 leading directions: the well-estimated ones

    ids = np.arange(M)
    full, sampled, reordered = fit(0, ids), fit(15, ids), fit(15, ids[::-1])
    # same draws, different streaming order: N_orth = 64 ≥ rank V (q = 63), so the sum is exact
    assert ((sampled - reordered).abs().max() / sampled.abs().max()).item() < 1e-8
    # 15 of the 30 rows per task (15 queries × 2) and only 24 tasks to average over: measured
    # Spearman 0.89–0.94 per test task (0.5–0.7 with 4–8 rows: the noise averages out over tasks,
    # so large M needs fewer rows; bench/bench_projection.py); a random ranking of 24 has sd 0.21
    r = [rho(full[i].numpy(), sampled[i].numpy())[0] for i in range(full.shape[0])]
    assert np.mean(r) > 0.7 and min(r) > 0.5, r


def test_the_app_sketches_only_large_models():
    """Small models keep the app's default fit (and its cache key); beyond 500k weights the fit is
    sketched to 4,096 dimensions with 8 sampled columns per task."""
    from types import SimpleNamespace

    from metainf_core.fits import influence_config_for

    base = InfluenceConfig(method="gn", n_orth=512, dtype="float32")

    def run_with(q: int):
        return SimpleNamespace(checkpoint=SimpleNamespace(params={"w": torch.zeros(q)}))

    assert influence_config_for(run_with(113_088), base) is base  # CNN4-64: exact GN still fits in memory
    big = influence_config_for(run_with(12_424_320), base)  # ResNet-12
    assert (big.projection_dim, big.rows_per_task, big.n_orth, big.dtype) == (4096, 8, 512, "float32")
    assert content_key(big.to_dict()) != content_key(base.to_dict())
    assert influence_config_for(run_with(12_424_320), InfluenceConfig(method="gn", projection_dim=256)).projection_dim == 256  # a user's choice stays
