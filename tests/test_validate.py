"""Validation statistics against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metainf_core.validate import (
    average_ranks,
    proper_tests,
    score_agreement,
    self_ranks,
    spearman,
    superclass_overlap,
    top_k_overlap,
)


def test_proper_tests_brute_force():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(40, 30))
    mask = rng.random((40, 30)) < 0.3
    mask[3] = False  # no member: left out
    scores[:20] += mask[:20] * 1.0  # the first 20 tests favour P
    res = proper_tests(scores, mask)
    count, total = 0, 0
    for t in range(40):
        if mask[t].any() and (~mask[t]).any():
            total += 1
            count += scores[t, mask[t]].mean() > scores[t, ~mask[t]].mean()
    assert (res.proper, res.total) == (count, total) == (res.proper, 39)
    assert res.sigma == pytest.approx(math.sqrt(39 / 4))
    assert res.z == pytest.approx((count - 19.5) / math.sqrt(39 / 4))


def test_self_ranks_and_overlap():
    scores = np.array([[0.1, 0.9, 0.5], [0.3, 0.3, 0.2], [0.0, 0.5, 0.7]])
    np.testing.assert_array_equal(self_ranks(scores, [1, 0, 2]), [0, 1, 0])  # tie counts against
    o = superclass_overlap([frozenset({"a", "b"})], [frozenset({"a"}), frozenset({"c"}), frozenset({"a", "b"})])
    np.testing.assert_array_equal(o, [[1, 0, 2]])
    agree = score_agreement(np.arange(10.0), np.arange(10.0) ** 3)
    assert agree["spearman"] == pytest.approx(1.0) and agree["pearson"] < 0.95
    assert top_k_overlap(np.arange(10.0), -np.arange(10.0), 3) == 0.0


def test_spearman_uses_average_ranks_like_scipy():
    from scipy import stats

    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.integers(0, 3, size=40)  # ties too, and correlated with x
    np.testing.assert_array_equal(average_ranks(x), stats.rankdata(x, "average"))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)  # same formula in float64
    assert score_agreement(x, y)["spearman"] == spearman(x, y)
    # ties by position (the old argsort ranks) would differ here: ranks of a constant block are not averaged
    by_position = np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1]
    assert abs(by_position - spearman(x, y)) > 1e-3
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_superclass_proper_tests_leave_noise_tasks_out(synthetic_run, tmp_path, monkeypatch):
    """validation_report's superclass tests compare normal training tasks only (noise tasks keep
    their classes' superclasses but not their images): brute force over normal tasks agrees, and
    including the noise tasks gives different counts on this run."""
    from metainf_core.config import InfluenceConfig
    from metainf_core.fits import fit_influence
    from metainf_core.ranking import test_score_matrix
    from metainf_core.service import open_run
    from metainf_core.validate import validation_report

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    run, cfg = open_run(synthetic_run), InfluenceConfig(method="exact", dtype="float64")
    inf = fit_influence(run, cfg)
    rows = validation_report(run, inf, cfg, self_rank=False, noise=False, exact_agreement=False)["superclass"]
    test_ids = np.arange(len(run.test_tasks))
    scores = test_score_matrix(run, inf, cfg.dtype, test_ids)
    tests, train = run.test_tasks.superclass_sets(run.dataset), run.train_tasks.superclass_sets(run.dataset)
    noisy = set(run.train_tasks.ids_with("noise").tolist())
    assert noisy  # the fixture has 6 noise tasks of 48

    def brute(members: list[int]) -> list[tuple[int, int, int]]:
        out = []
        for s in range(1, max(len(tests[t] & train[j]) for t in test_ids for j in members) + 1):
            proper = total = 0
            for t in test_ids:
                inside = [scores[t, j] for j in members if len(tests[t] & train[j]) >= s]
                rest = [scores[t, j] for j in members if len(tests[t] & train[j]) < s]
                if inside and rest:
                    total += 1
                    proper += np.mean(inside) > np.mean(rest)
            out.append((s, proper, total))
        return out

    normal_only = brute([j for j in range(len(train)) if j not in noisy])
    assert [(r["min_shared"], r["proper"], r["total"]) for r in rows] == normal_only
    assert normal_only != brute(list(range(len(train))))  # with the noise tasks the counts change


def test_noise_tests_by_truncation_match_the_validation_report_at_each_k(demo_fitted):
    """The proper tests of one fit at several truncations (issue 23 item 5's knob) equal the validation
    report of that fit truncated at each k; the test gradients are the same in both (same code,
    same process: exact equality of counts)."""
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from metainf_core.validate import noise_tests_by_truncation, validation_report
    from ui import DEFAULT_INFLUENCE

    run = open_run(demo_fitted)
    inf = fit_influence(run, DEFAULT_INFLUENCE)
    ks = sorted({16, 64, inf.truncation})
    rows = noise_tests_by_truncation(run, inf, DEFAULT_INFLUENCE.dtype, ks, max_tests=32)
    assert [r["k"] for r in rows] == ks and all(r["total"] == 32 for r in rows)
    for r in rows:
        report = validation_report(run, inf.with_truncation(r["k"]), DEFAULT_INFLUENCE, self_rank=False, noise=True,
                                   superclass=False, max_tests=32, exact_agreement=False)["noise"]  # fmt: skip
        assert (report["proper"], report["total"]) == (r["proper"], r["total"]) and report["z"] == pytest.approx(r["z"])
    assert len({r["proper"] for r in rows}) > 1 or len(ks) == 1  # the truncation changes the count on this run
