"""The incremental paths behind the Edit and Audit pages' clicks (issue 25 item 3), against the old
computations on the bundled demos' real data:

- the test table (``ranking.fit_test_table``: T × M helpfulness, saved on disk once per run and
  fit; each demo ships its own) against scoring each test task alone (``all_scores``) and, for the
  Audit page's "mean" score and first-order prediction, against the helpfulness of the mean test
  gradient (the old path);
- ``Run.as_trained`` (on disk; the demos ship theirs) against ``Run.evaluate()``, and ``detect.stored_blocked_evaluation`` (a removed
  set evaluated once per run, on disk; the demos ship the Audit page's default random draws) against
  evaluating the set;
- ``removal_effect`` with a cached ``evaluate`` against the default one, and that a second score kind
  re-evaluates only its own set (the random draws depend on k, ξ and the seed only).

Tolerances: the table takes 8 test gradients per vmapped call where a single task's score takes one,
and a mean of rows where the old score took the row of a mean; in float32 that moves a score by a few
ulps of the largest (measured ≤ 2.6e-6 relative to a row's largest |score| on both demos), so
scores are compared at rtol 0 / atol 2e-5 × the largest |score|, and orders exactly (no two scores
are that close on the demos).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMOS = REPO / "assets" / "demo"
TOL = 2e-5  # of the largest |score| (module docstring)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def opened(name: str, cache_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from metainf_core.fits import fit_influence, influence_config_for
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    monkeypatch.setenv("METAINF_CACHE", str(cache_dir))  # the shipped fit is restored into it
    run = open_run(DEMOS / name)
    cfg = influence_config_for(run, DEFAULT_INFLUENCE)
    return run, fit_influence(run, cfg), cfg


@pytest.mark.parametrize("name", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_test_table_equals_scoring_each_test_task_and_the_old_mean(name, cache_dir, monkeypatch, tmp_path):
    from metainf_core.cache import CacheEntry
    from metainf_core.detect import average_ranks, detection_scores
    from metainf_core.fits import test_scores_entry
    from metainf_core.ranking import Target, all_scores, fit_test_table

    run, inf, cfg = opened(name, cache_dir, monkeypatch)
    table = fit_test_table(run, inf, cfg.dtype)  # computed here
    assert table.shape == (len(run.test_tasks), inf.num_tasks)
    entry = test_scores_entry(run, cfg)  # restored from the copy shipped in the demo folder
    assert entry.complete, "the demo ships its test table (CacheEntry.ship)"
    shipped = fit_test_table(run, inf, cfg.dtype, entry)
    np.testing.assert_allclose(shipped, table, rtol=0, atol=TOL * np.abs(table).max())
    for i in (0, 7, len(run.test_tasks) - 1):  # brute force: each test task scored alone, as Explain does
        alone = all_scores(run, inf, Target((i,)), cfg.dtype)
        np.testing.assert_allclose(table[i], alone, rtol=0, atol=TOL * np.abs(alone).max())
    # the old "mean": helpfulness of the mean gradient over all test tasks (one target of 128 tasks)
    old_mean = all_scores(run, inf, Target(tuple(range(len(run.test_tasks)))), cfg.dtype)
    new_mean = detection_scores(run, inf, cfg.dtype, "mean", table)
    np.testing.assert_allclose(new_mean, old_mean, rtol=0, atol=TOL * np.abs(old_mean).max())
    np.testing.assert_array_equal(np.argsort(new_mean, kind="stable"), np.argsort(old_mean, kind="stable"))
    np.testing.assert_array_equal(detection_scores(run, inf, cfg.dtype, "rank", table), average_ranks(table).mean(0))
    # an entry the table is saved into gives back the same numbers, bit for bit
    fresh = CacheEntry.for_inputs("test-scores", {"test": name}, root=tmp_path)
    fit_test_table(run, inf, cfg.dtype, fresh)
    assert fresh.complete
    np.testing.assert_array_equal(fit_test_table(run, inf, cfg.dtype, fresh), table)


def test_as_trained_is_evaluate_once(cache_dir, monkeypatch, tmp_path):
    from metainf_core.service import open_run

    run, _, _ = opened("protonet-fashion-mnist", cache_dir, monkeypatch)
    assert run.as_trained_entry().complete, "the demo ships ω̂'s test metrics"
    shipped = run.as_trained
    assert run.as_trained is shipped  # memoised: every page's "before" is this one object
    fresh = run.evaluate()
    np.testing.assert_allclose(shipped.loss, fresh.loss, rtol=1e-5, atol=1e-6)  # float32 rounding elsewhere
    assert np.abs(shipped.accuracy - fresh.accuracy).sum() <= 2 / 15  # (module docstring of the shipped draws)
    # with no shipped copy: evaluated once, saved, and read back bit for bit by the next server
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("metainf_core.cache.CacheEntry.restore_shipped", lambda self, run_dir: False)
    computed = open_run(DEMOS / "protonet-fashion-mnist").as_trained
    again = open_run(DEMOS / "protonet-fashion-mnist")
    assert again.as_trained_entry().complete
    for name in ("task_ids", "loss", "accuracy"):
        np.testing.assert_array_equal(getattr(computed, name), getattr(fresh, name))
        np.testing.assert_array_equal(getattr(again.as_trained, name), getattr(fresh, name))


def test_removal_effect_reuses_random_draws_across_score_kinds(cache_dir, monkeypatch):
    from metainf_core.detect import blocked_evaluation, detection_scores, removal_effect
    from metainf_core.ranking import fit_test_table

    run, inf, cfg = opened("protonet-fashion-mnist", cache_dir, monkeypatch)
    calls: list[tuple[int, ...]] = []
    seen: dict = {}

    def cached(ids, xi):  # as the Audit page's st.cache_data blocked()
        key = (tuple(int(j) for j in ids), float(xi))
        if key not in seen:
            calls.append(key[0])
            seen[key] = blocked_evaluation(run, inf, ids, xi)
        return seen[key]

    table = fit_test_table(run, inf, cfg.dtype)
    kw = {"xis": [-1.0], "random_draws": 3, "seed": 0}
    by_self = removal_effect(run, inf, detection_scores(run, inf, cfg.dtype, "self"), [16], evaluate=cached, **kw)
    assert len(calls) == 4  # the 16 most suspicious and 3 random sets
    by_mean = removal_effect(run, inf, detection_scores(run, inf, cfg.dtype, "mean", table), [16], evaluate=cached, **kw)
    assert len(calls) == 5  # only the new suspicious set: the random draws are reused
    assert by_mean["rows"][0]["random_edit"] == by_self["rows"][0]["random_edit"]
    direct = removal_effect(run, inf, detection_scores(run, inf, cfg.dtype, "mean", table), [16], **kw)
    assert direct == by_mean  # the default evaluate: the same calls, the same numbers


def test_stored_blocked_evaluation_reads_back_what_was_computed_and_the_shipped_draws(cache_dir, monkeypatch):
    from metainf_core.detect import blocked_evaluation, random_removal_sets, stored_blocked_evaluation
    from metainf_core.fits import edit_metrics_entry

    run, inf, cfg = opened("protonet-fashion-mnist", cache_dir, monkeypatch)
    ids = np.arange(3, 40, 3)  # a set no demo ships: computed once, then read back bit for bit
    entry = edit_metrics_entry(run, cfg, ids, -2.0)
    assert not entry.complete
    first = stored_blocked_evaluation(run, inf, cfg, ids, -2.0)
    assert entry.complete
    direct = blocked_evaluation(run, inf, ids, -2.0)
    for metrics in (first, stored_blocked_evaluation(run, inf, cfg, ids[::-1], -2.0)):  # any order of the ids
        for name in ("task_ids", "loss", "accuracy"):
            np.testing.assert_array_equal(getattr(metrics, name), getattr(direct, name))
    # the demo ships the Audit page's default random removals (k = 64, ξ = -1, 5 draws, seed 0): they are
    # the evaluations made here, up to float32 rounding (another BLAS may flip an image whose two top logits
    # tie: at most two of the 15 × 128 query images)
    for draw in random_removal_sets(inf.num_tasks, 64, 5, 0)[:2]:
        assert edit_metrics_entry(run, cfg, draw, -1.0).complete
        shipped, here = stored_blocked_evaluation(run, inf, cfg, draw, -1.0), blocked_evaluation(run, inf, draw, -1.0)
        np.testing.assert_allclose(shipped.loss, here.loss, rtol=1e-5, atol=1e-6)
        assert np.abs(shipped.accuracy - here.accuracy).sum() <= 2 / 15


@pytest.mark.parametrize("demo", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_the_demos_ship_every_default_audit_removal(demo, tmp_path, monkeypatch):
    """The Audit page's default click (k = 64, ξ = -1, 5 draws, seed 0) for each score kind reads shipped
    metrics from an empty cache: no job starts, and a suspicious set's metrics are its evaluation here
    (float32 rounding as above)."""
    from metainf_core import jobs
    from metainf_core.detect import SCORE_KINDS, blocked_evaluation, detection_scores, removal_evaluated, removal_sets
    from metainf_core.detect import stored_blocked_evaluation
    from metainf_core.fits import test_scores_entry
    from metainf_core.ranking import fit_test_table

    run, inf, cfg = opened(demo, tmp_path, monkeypatch)
    table = fit_test_table(run, inf, cfg.dtype, test_scores_entry(run, cfg))  # shipped too
    for kind in SCORE_KINDS:
        sets = removal_sets(detection_scores(run, inf, cfg.dtype, kind, table), 64, 5, 0)
        assert removal_evaluated(run, cfg, sets, -1.0), kind
        assert jobs.submit_removal(run, cfg, sets, -1.0).state == "done" and not jobs.list_jobs(tmp_path)
    shipped, here = stored_blocked_evaluation(run, inf, cfg, sets[0], -1.0), blocked_evaluation(run, inf, sets[0], -1.0)
    np.testing.assert_allclose(shipped.loss, here.loss, rtol=1e-5, atol=1e-6)
    assert np.abs(shipped.accuracy - here.accuracy).sum() <= 2 / 15


@pytest.mark.parametrize("demo", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_the_demos_ship_each_test_tasks_default_edit(demo, tmp_path, monkeypatch):
    """The Edit page's default click, "Block the 16 most harmful" at ξ = -1, reads shipped metrics from an
    empty cache for every test task (the sets taken from the shipped test table, whose orders equal
    scoring each test task alone: see above), and test task 5's are its evaluation here."""
    from metainf_core.detect import blocked_evaluation, lowest_ids, removal_evaluated, stored_blocked_evaluation
    from metainf_core.fits import test_scores_entry
    from metainf_core.ranking import Target, all_scores, fit_test_table
    from ui import DEFAULT_EDIT

    run, inf, cfg = opened(demo, tmp_path, monkeypatch)
    k, xi = DEFAULT_EDIT["edit_k"], DEFAULT_EDIT["edit_xi_block"]
    table = fit_test_table(run, inf, cfg.dtype, test_scores_entry(run, cfg))
    sets = [lowest_ids(row, k) for row in table]
    assert len(sets) == len(run.test_tasks) and removal_evaluated(run, cfg, sets, xi)
    page_set = lowest_ids(all_scores(run, inf, Target((5,)), cfg.dtype), k)  # what the page computes
    np.testing.assert_array_equal(page_set, sets[5])
    shipped, here = stored_blocked_evaluation(run, inf, cfg, page_set, xi), blocked_evaluation(run, inf, page_set, xi)
    np.testing.assert_allclose(shipped.loss, here.loss, rtol=1e-5, atol=1e-6)
    assert np.abs(shipped.accuracy - here.accuracy).sum() <= 2 / 15
    assert not removal_evaluated(run, cfg, [lowest_ids(table[5], k + 1)], xi)  # a set not shipped is not on disk
