"""Validation statistics against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metainf_core.validate import proper_tests, score_agreement, self_ranks, superclass_overlap, top_k_overlap


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
