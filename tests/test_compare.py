"""Method comparison (compare.py): each registry method against an independent computation, the
pair statistics against scipy and plain sets, proximal-MAML task-IF / direct IF, caching, the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import positive_definite_damping, run_cli  # tests/helpers.py
from scipy import stats
from torch.func import grad

from metainf_core import compare
from metainf_core.compare import METHODS, CompareConfig, compare_methods, method_scores, task_if_config
from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.fits import fit_influence
from metainf_core.influence import fit_task_if
from metainf_core.influence.exact import MAX_EXACT_PARAMS
from metainf_core.influence.flat import with_composite_batch_norm
from metainf_core.influence.gradients import iter_task_batches
from metainf_core.influence.task_if import batch_tasks
from metainf_core.learners import create_task_loss_function
from metainf_core.ranking import Target, all_scores
from metainf_core.service import open_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One cache for the module, so fits made by one test are reused by the next."""
    return tmp_path_factory.mktemp("compare_cache")


@pytest.fixture()
def cache(cache_dir, monkeypatch) -> Path:
    monkeypatch.setenv("METAINF_CACHE", str(cache_dir))
    return cache_dir


@pytest.fixture(scope="module")
def prox_run(tmp_path_factory) -> Path:
    """A tiny proximal MAML (63 parameters, 16 training tasks), trained for a few steps (~2 s)."""
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=16, test_tasks=4)
    train_cfg = TrainConfig(
        algo="proximal-maml", arch="mlp-synthetic", steps=20, meta_batch=4, lr=0.02,
        prox_lambda=1.0, prox_lr=0.3, prox_steps=10, cg_steps=10, checkpoint_every=20,
    )  # fmt: skip
    return train(task_cfg, train_cfg, tmp_path_factory.mktemp("prox") / "run", progress=False, device="cpu")


def _tasks(run, taskset, ids):
    out = []
    for _, b in iter_task_batches(taskset, run.dataset, ids, 64, torch.float64):
        out.extend(batch_tasks(b))
    return out


def test_grad_sim_is_the_dot_product_of_meta_gradients(synthetic_run, cache):
    run = open_run(synthetic_run)
    scores = method_scores(run, Target((3,)), "grad-sim")
    # brute force: torch.func.grad of each task's loss through MAML's inner step, on a dict of
    # float64 weights (composite batch norm: second derivatives through the inner step)
    loss = create_task_loss_function(with_composite_batch_norm(run.model), run.spec)
    params = {k: v.double() for k, v in run.params.items()}

    def flat_grad(task) -> torch.Tensor:
        g = grad(loss)(params, *task)
        return torch.cat([g[k].reshape(-1) for k in params])

    g_train = torch.stack([flat_grad(t) for t in _tasks(run, run.train_tasks, np.arange(len(run.train_tasks)))])
    g_test = flat_grad(_tasks(run, run.test_tasks, [3])[0])
    expected = (g_train @ g_test).numpy()
    print(f"\ngrad-sim: max |diff| {np.abs(scores - expected).max():.2e}, scale {np.abs(expected).max():.2e}")
    assert scores.shape == (48,)
    np.testing.assert_allclose(scores, expected, rtol=1e-8, atol=1e-12 * np.abs(expected).max())
    # sign: the target's own gradient direction; a training task's self-score is ‖g_j‖² > 0
    self_scores = np.array([method_scores(run, Target((j,), "train"), "grad-sim")[j] for j in (0, 7)])
    np.testing.assert_allclose(self_scores, (g_train[[0, 7]] ** 2).sum(1).numpy(), rtol=1e-8)


def test_tlxml_and_task_if_match_explain(synthetic_run, cache):
    run = open_run(synthetic_run)
    target = Target((0, 1))
    inf = fit_influence(run, InfluenceConfig(method="exact", dtype="float64"))
    expected = all_scores(run, inf, target, "float64")
    np.testing.assert_allclose(method_scores(run, target, "tlxml-exact"), expected, rtol=1e-10, atol=1e-14)
    gn = fit_influence(run, InfluenceConfig(method="gn", dtype="float64"))
    np.testing.assert_allclose(method_scores(run, target, "tlxml-gn"), all_scores(run, gn, target, "float64"), rtol=1e-10, atol=1e-14)
    # the documented equivalence: MAML task-IF = exact TLXML, damped, every positive eigen-direction
    full = inf.with_truncation(inf.num_positive)
    np.testing.assert_allclose(method_scores(run, target, "task-if"), all_scores(run, full, target, "float64"), rtol=1e-10, atol=1e-14)
    damped = fit_influence(run, InfluenceConfig(method="exact", dtype="float64", damping=0.5))
    damped = damped.with_truncation(damped.num_positive)
    np.testing.assert_allclose(
        method_scores(run, target, "task-if", CompareConfig(damping=0.5)), all_scores(run, damped, target, "float64"), rtol=1e-10
    )
    print(f"\nexact truncation {inf.truncation}, all positive {inf.num_positive} of {inf.num_columns} columns")


def test_direct_if_for_maml_uses_partial_derivatives(synthetic_run, cache):
    """direct IF: (1/M) g_iᵀ (H_D + λ I)⁻¹ g_j with g, H_D of the query loss at θ̂ (θ̂ held fixed)."""
    run = open_run(synthetic_run)
    lam = 2.0  # large enough that H_D + λI is positive definite here: a plain solve is the reference
    scores = method_scores(run, Target((5,)), "direct-if", CompareConfig(damping=lam))
    params = {k: v.double() for k, v in run.params.items()}
    net = with_composite_batch_norm(run.model)
    names = list(params)
    sizes = [params[k].numel() for k in names]

    def unflat(w):
        return {k: p.view(params[k].shape) for k, p in zip(names, torch.split(w, sizes), strict=True)}

    def ce(w, x, y):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, unflat(w), (x,)), y)

    w = torch.cat([params[k].reshape(-1) for k in names])

    def adapted(task):
        sx, sy, _, _ = task
        return (w - run.spec.inner_lr * grad(ce)(w, sx, sy)).detach()

    train = _tasks(run, run.train_tasks, np.arange(48))
    thetas = [adapted(t) for t in train]
    g = torch.stack([grad(ce)(th, t[2], t[3]) for th, t in zip(thetas, train, strict=True)])
    h = sum(torch.autograd.functional.hessian(lambda v, t=t: ce(v, t[2], t[3]), th) for th, t in zip(thetas, train, strict=True)) / 48
    assert torch.linalg.eigvalsh(h + lam * torch.eye(63)).min() > 0
    test = _tasks(run, run.test_tasks, [5])[0]
    g_i = grad(ce)(adapted(test), test[2], test[3])
    expected = (torch.linalg.solve(h + lam * torch.eye(63), g.T).T @ g_i / 48).numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-7, atol=1e-12 * np.abs(expected).max())


def test_matrix_free_task_if_and_direct_if_match_the_dense_solve(synthetic_run, cache):
    """Above MAX_EXACT_PARAMS task-IF / direct IF solve (H + λ_d I) x = g_i by CG on HVPs; forced here on
    a 63-parameter MAML where the dense solve fits, both must agree (issue 27 item 4)."""
    run = open_run(synthetic_run)
    # H + λ_d I positive definite (asserted; helpers.positive_definite_damping): then the dense
    # positive-part pseudo-inverse is the plain inverse that CG converges to
    lam, tol = positive_definite_damping(run), 1e-10
    dense_cfg = CompareConfig(damping=lam)
    assert compare.solver_for(run, dense_cfg) == "dense"
    assert compare.maml_task_if_fit(run, dense_cfg).num_negative == 0
    target = Target((2, 9))
    for name in ("task-if", "direct-if"):
        dense = method_scores(run, target, name, dense_cfg)
        s, details = METHODS[name].scores(run, target, CompareConfig(damping=lam, solver="cg", tol=tol))
        print(f"\n{name} matrix-free: {details}; max |diff| {np.abs(s - dense).max():.2e}, scale {np.abs(dense).max():.2e}")
        assert details["solver"] == "cg" and details["converged"] and details["relative_residual"] <= tol
        assert 0 < details["iterations"] < 63 * 2
        # ‖x − x*‖/‖x*‖ ≤ κ · (relative residual) and κ(H + λ_d I) < 10³ here, so 1e-10 leaves 1e-7 in x; the
        # scores (1/M) G x inherit it
        np.testing.assert_allclose(s, dense, rtol=1e-6, atol=1e-7 * np.abs(dense).max())
    # the auto solver switches by size: dense at q = 63, Lanczos beyond MAX_EXACT_PARAMS (and dense forced there is refused)
    assert compare.solver_for(SimpleNamespace(params={"w": torch.zeros(MAX_EXACT_PARAMS + 1)}), CompareConfig()) == "lanczos"
    with pytest.raises(ConfigError, match="removal vectors need M"):
        compare.removal_vectors(run, "task-if", CompareConfig(damping=lam, solver="cg"))


def test_lanczos_task_if_is_the_dense_positive_part_where_cg_stops(synthetic_run, cache):
    """At the default damping the synthetic MAML's H + λ_d I is indefinite: the dense task-IF / direct IF
    keep its positive eigen-directions, CG stops at negative curvature, and the matrix-free Lanczos
    solve (solver "lanczos", at most q = 63 HVPs) gives the dense scores (float64; the Ritz values equal
    the eigenvalues once the Krylov space is the whole space: 1e-6 relative is rounding with room)."""
    run = open_run(synthetic_run)
    cfg = CompareConfig()
    target = Target((2, 9))
    assert compare.maml_task_if_fit(run, cfg).num_negative > 0
    for name in ("task-if", "direct-if"):
        dense = method_scores(run, target, name, cfg)
        s, details = METHODS[name].scores(run, target, CompareConfig(solver="lanczos", tol=1e-12, max_iter=63))
        print(f"\n{name} lanczos: {details}; max |diff| {np.abs(s - dense).max():.2e}, scale {np.abs(dense).max():.2e}")
        assert details["solver"] == "lanczos" and details["converged"]
        np.testing.assert_allclose(s, dense, rtol=1e-6, atol=1e-6 * np.abs(dense).max())
        cg, cg_details = METHODS[name].scores(run, target, CompareConfig(solver="cg", tol=1e-10))
        assert not cg_details["converged"] and "negative curvature" in cg_details["note"]


def test_compare_pairs_match_scipy_and_sets_and_are_cached(synthetic_run, cache, monkeypatch):
    run = open_run(synthetic_run)
    k = 8
    t0 = time.perf_counter()
    out = compare_methods(run, Target((2,)), k=k)
    first = time.perf_counter() - t0
    peer = {"dattri-if-explicit", "dattri-if-cg"}  # no pseudo-inverse: they need damping (tests/test_peer.py)
    assert set(out["methods"]) == set(METHODS) - peer and set(out["skipped"]) == peer
    assert all("damping" in out["skipped"][n] for n in peer)
    assert len(out["pairs"]) == len(out["methods"]) * (len(out["methods"]) - 1) // 2
    s = {n: np.asarray(e["scores"]) for n, e in out["methods"].items()}
    for pair in out["pairs"]:
        a, b = s[pair["a"]], s[pair["b"]]
        assert pair["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        assert pair["pearson"] == pytest.approx(stats.pearsonr(a, b).statistic, abs=1e-12)
        helpful = set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])
        harmful = set(np.argsort(a)[:k]) & set(np.argsort(b)[:k])
        assert pair["top_k_helpful_overlap"] == len(helpful) / k
        assert pair["top_k_harmful_overlap"] == len(harmful) / k
    for n, e in out["methods"].items():
        assert e["most_helpful"] == np.argsort(-s[n], kind="stable")[:k].tolist()
        assert s[n][e["most_helpful"][0]] == s[n].max() and s[n][e["most_harmful"][0]] == s[n].min()
    table = {(p["a"], p["b"]): p for p in out["pairs"]}
    print(f"\nfirst compare {first:.1f} s; test task 2, M = 48, k = {k}")
    for (a, b), p in table.items():
        print(f"  {a:>11} vs {b:<10} spearman {p['spearman']:+.3f} pearson {p['pearson']:+.3f} "
              f"top-{k} helpful {p['top_k_helpful_overlap']:.2f} harmful {p['top_k_harmful_overlap']:.2f}")
    # over several test tasks, exact and GN curvature should agree better than chance
    rho = [compare_methods(run, Target((i,)), ["tlxml-exact", "tlxml-gn"])["pairs"][0]["spearman"] for i in range(8)]
    print(f"  tlxml-exact vs tlxml-gn Spearman over test tasks 0-7: {np.mean(rho):+.3f} ± {np.std(rho):.3f}")
    assert np.mean(rho) > 0.2

    # second run: everything expensive comes from the disk cache
    def boom(*a, **kw):
        raise AssertionError("recomputed a cached fit")

    for name in ("fit_exact", "fit_gauss_newton"):
        monkeypatch.setattr(f"metainf_core.fits.{name}", boom)
    for name in ("spectral_factor", "task_gradients", "fit_task_if_tasks"):
        monkeypatch.setattr(compare, name, boom)
    t0 = time.perf_counter()
    again = compare_methods(run, Target((2,)), k=k)
    print(f"  cached compare {time.perf_counter() - t0:.2f} s")
    # Same numbers, another code path: the first call scores with the freshly computed (possibly
    # non-contiguous) tensors, this one with the contiguous copies reloaded from disk, so the float64
    # products may run through another BLAS kernel / summation order (seen: a Pearson differing in
    # the 17th digit). Scores agree to float64 rounding (~1e-16 relative, bound 1e-12); a stale or
    # wrong cache entry (other run, target, method or settings) changes them at O(1e-3) or more.
    for n, e in out["methods"].items():
        cached = np.asarray(again["methods"][n]["scores"])
        np.testing.assert_allclose(cached, e["scores"], rtol=1e-12, atol=1e-12 * np.abs(e["scores"]).max(), err_msg=n)
    assert [(p["a"], p["b"]) for p in again["pairs"]] == [(p["a"], p["b"]) for p in out["pairs"]]
    for p, q in zip(again["pairs"], out["pairs"], strict=True):
        assert set(p) == set(q)
        # correlations: smooth in the scores, so the same 1e-12; the top-k overlaps are multiples of
        # 1/k that could only change if two scores tied to within that rounding (none do here)
        for key in ("pearson", "spearman", "top_k_helpful_overlap", "top_k_harmful_overlap"):
            assert p[key] == pytest.approx(q[key], rel=0, abs=1e-12), (p["a"], p["b"], key)


def test_proximal_task_if_and_direct_if(prox_run, cache):
    run = open_run(prox_run)
    out = compare_methods(run, Target((0,)), k=4)
    assert set(out["skipped"]) == {"tlxml-exact", "tlxml-gn", "dattri-if-explicit", "dattri-if-cg", "dattri-trak", "direct-if-ekfac"}
    assert "proximal-maml" in out["skipped"]["tlxml-exact"] and "proximal-maml" in out["skipped"]["dattri-if-cg"]
    assert set(out["methods"]) == {"task-if", "direct-if", "grad-sim"}
    for n in ("task-if", "direct-if"):
        assert np.isfinite(out["methods"][n]["scores"]).all() and np.abs(out["methods"][n]["scores"]).max() > 0
        print(f"\n{n}: {out['methods'][n]['details']}")
    # the registry equals fit_task_if itself (TaskIF.helpfulness of its own target gradient)
    params = {k: v.double() for k, v in run.params.items()}
    test = _tasks(run, run.test_tasks, [0])
    for mode, name in (("exact", "task-if"), ("direct", "direct-if")):
        fit = fit_task_if(run.model, run.spec, params, run.train_tasks, run.dataset, config=task_if_config(run, mode, CompareConfig()))
        expected = fit.helpfulness(fit.target_gradient(test)).numpy()
        np.testing.assert_allclose(out["methods"][name]["scores"], expected, rtol=1e-8, atol=1e-12 * np.abs(expected).max())
    # documented sign: a training task helps itself (removing it raises its own loss)
    m = len(run.train_tasks)
    for name in ("task-if", "direct-if"):
        own = np.array([method_scores(run, Target((j,), "train"), name)[j] for j in range(m)])
        print(f"{name}: self-helpfulness positive for {(own > 0).sum()}/{m} training tasks")
        assert (own > 0).mean() >= 0.75


def test_refusals(synthetic_run, prox_run, cache):
    with pytest.raises(ConfigError, match="unknown method"):
        compare_methods(open_run(synthetic_run), Target((0,)), ["tlxml-exact", "nope"])
    with pytest.raises(ConfigError, match="proximal-maml"):
        method_scores(open_run(prox_run), Target((0,)), "tlxml-gn")
    with pytest.raises(ConfigError, match="damping"):
        CompareConfig(damping=-1.0)


def test_compare_cli(synthetic_run, prox_run, cache):
    res = run_cli("compare", str(synthetic_run), "--test-task", "1", "--top", "5")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    names = list(out["methods"])
    assert set(names) | set(out["skipped"]) == set(METHODS) and len(names) >= 5
    assert sorted((p["a"], p["b"]) for p in out["pairs"]) == sorted(
        (a, b) for i, a in enumerate(names) for b in names[i + 1 :]
    )
    assert all(len(e["most_helpful"]) == 5 and "scores" not in e for e in out["methods"].values())

    res = run_cli("compare", str(prox_run), "--test-task", "0", "--methods", "tlxml-exact,grad-sim", "--scores")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert "tlxml-exact" in out["skipped"] and len(out["methods"]["grad-sim"]["scores"]) == 16 and out["pairs"] == []

    res = run_cli("compare", str(synthetic_run), "--test-task", "0", "--methods", "tlxml-exact,bogus")
    assert res.returncode == 2 and "bogus" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr

    res = run_cli("compare", str(prox_run), "--tables", "--methods", "grad-sim", "--quiet")  # every test task
    assert res.returncode == 0, res.stderr
    table = json.loads(res.stdout)["tables"]["grad-sim"]
    direct = method_scores(open_run(prox_run), Target((2,)), "grad-sim")
    assert table["shape"] == [4, 16] and "shipped" not in table
    np.testing.assert_array_equal(compare.test_score_table(open_run(prox_run), "grad-sim")[2], direct)  # cached, same path
    for args in (("--test-task", "0", "--tables"), (), ("--test-task", "0", "--ship")):
        res = run_cli("compare", str(prox_run), *args)
        assert res.returncode == 2 and ("--tables" in res.stderr) and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)


def test_rank_cli_methods(synthetic_run, cache):
    """rank --method: registry names (tlxml-exact = the old 'exact' path, grad-sim, ...); bad names exit 2."""
    res = run_cli("rank", str(synthetic_run), "--test-task", "0", "--method", "bogus")
    assert res.returncode == 2 and "bogus" in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    run = open_run(synthetic_run)
    expected = {
        "tlxml-exact": all_scores(run, fit_influence(run, InfluenceConfig(method="exact", dtype="float64")), Target((1,)), "float64"),
        "grad-sim": method_scores(run, Target((1,)), "grad-sim"),
    }
    for method, scores in expected.items():
        res = run_cli("rank", str(synthetic_run), "--method", method, "--test-task", "1", "--top", "3", "--quiet")
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)["most_helpful"]
        # another process, whose fit may be the cache's reloaded copy while `scores` came from a fresh
        # fit (run alone, this test fills the cache itself): scores agree to float64 rounding, not bit
        # for bit, so tasks are matched by score: the three named tasks are distinct and carry the
        # three highest scores (each the helpfulness the CLI reports), in order; a wrong task would
        # differ by far more than 1e-9 relative (the top scores here are not tied)
        ids = [r["task"] for r in rows]
        assert len(set(ids)) == 3
        np.testing.assert_allclose(scores[ids], [r["helpfulness"] for r in rows], rtol=1e-9)
        np.testing.assert_allclose([r["helpfulness"] for r in rows], np.sort(scores)[::-1][:3], rtol=1e-9)


def test_test_tables_are_the_per_task_scores_cached_and_shipped(synthetic_run, cache, tmp_path, monkeypatch):
    """``test_score_table``'s row i is method_scores for test task i; the table is computed once
    (then loaded), ``compare_methods`` reads a single test task's scores from it, and a copy shipped
    in the run folder fills an empty cache (an altered copy is refused)."""
    import shutil

    from metainf_core.cache import RESULT
    from metainf_core.exceptions import CacheError

    run = open_run(synthetic_run)
    cfg, names, n_test = CompareConfig(), ["tlxml-gn", "grad-sim", "direct-if"], len(run.test_tasks)
    tables, seen = {}, []
    for n in names:
        tables[n] = compare.test_score_table(run, n, cfg, progress=lambda i, t: seen.append((i, t)))
        assert tables[n].shape == (n_test, len(run.train_tasks))
        for i in (0, n_test - 1):
            # the same scorer on the same float64 inputs: equal up to BLAS summation order (~1e-16 relative)
            direct = method_scores(run, Target((i,)), n, cfg)
            np.testing.assert_allclose(tables[n][i], direct, rtol=1e-12, atol=1e-12 * np.abs(direct).max(), err_msg=n)
    per_task = [(i + 1, n_test) for i in range(n_test)]
    assert seen == [(n_test, n_test)] + per_task * 2  # TLXML: one batched call from the fit's test table (ranking)
    assert np.abs(tables["tlxml-gn"] - tables["grad-sim"]).max() > 1e-3  # different methods, different tables

    def boom(*a, **kw):
        raise AssertionError("scored again instead of reading the table")

    monkeypatch.setattr(compare.ScoringMethod, "scores", boom)
    for n in names:
        np.testing.assert_array_equal(compare.test_score_table(run, n, cfg), tables[n])
    out = compare_methods(run, Target((3,)), names, k=4, config=cfg)  # a single test task: from the tables
    for n in names:
        assert out["methods"][n]["scores"] == tables[n][3].tolist() and out["methods"][n]["details"]["from"].startswith("test table")
    with pytest.raises(AssertionError, match="scored again"):  # two test tasks: no table row, computed
        compare_methods(run, Target((0, 1)), ["grad-sim"], config=cfg)

    copy = tmp_path / "shipped_run"
    shutil.copytree(synthetic_run, copy)
    shipped = compare.test_table_entry(run, "grad-sim", cfg).ship(copy)
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "empty_cache"))
    np.testing.assert_array_equal(compare.test_score_table(open_run(copy), "grad-sim", cfg), tables["grad-sim"])
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "another_empty_cache"))
    blob = bytearray((shipped / RESULT).read_bytes())
    blob[-1] ^= 0xFF
    (shipped / RESULT).write_bytes(bytes(blob))
    with pytest.raises(CacheError, match="altered or stale"):
        compare.test_score_table(open_run(copy), "grad-sim", cfg)
    with pytest.raises(ConfigError, match="does not apply"):
        compare.test_score_table(run, "dattri-if-cg", cfg)  # needs damping


def test_demos_ship_the_compare_pages_test_tables(tmp_path, monkeypatch):
    """Both demos answer the Compare page's default pair for any test task without computing: TLXML-GN
    and gradient similarity have their (128 × 512) tables shipped for the page's settings (EK-FAC on
    the MAML demo is not shipped: docs/benchmarks.md); a shipped TLXML row equals the scores
    computed here from the shipped fit."""
    from ui import COMPARE_CONFIG

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    for demo in ("protonet-fashion-mnist", "maml-fashion-mnist"):
        run = open_run(Path(__file__).resolve().parents[1] / "assets" / "demo" / demo)
        offered = [n for n, m in METHODS.items() if not m.skip_reason(run, COMPARE_CONFIG)]
        assert "tlxml-gn" in offered and "grad-sim" in offered, demo
        for n in ("tlxml-gn", "grad-sim"):
            assert compare.test_table_entry(run, n, COMPARE_CONFIG).complete, (demo, n)  # restored from the run folder
            assert compare.test_score_table(run, n, COMPARE_CONFIG).shape == (len(run.test_tasks), len(run.train_tasks))
        shipped = compare.test_score_table(run, "tlxml-gn", COMPARE_CONFIG)[5]
        here = METHODS["tlxml-gn"].scores(run, Target((5,)), COMPARE_CONFIG)[0]
        # float32 scores computed on another machine: rounding differs at ~1e-7 of the largest score,
        # summed over a 512-column projection (bound 1e-4); a wrong row or stale fit differs at O(1)
        np.testing.assert_allclose(shipped, here, rtol=0, atol=1e-4 * np.abs(here).max(), err_msg=demo)
