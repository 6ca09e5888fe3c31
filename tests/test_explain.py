"""Cached, resumable influence fits, rankings, one-step edits and the influence CLI, on a real
(small) trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metainf_core.config import InfluenceConfig
from metainf_core.edit import EditSpec
from metainf_core.exceptions import ConfigError
from metainf_core.explain import (
    Target,
    all_scores,
    cache_entry,
    edit_report,
    edited_params,
    fit_influence,
    fit_status,
    ranking_table,
    task_rows,
    validation_report,
)
from metainf_core.service import open_run

from helpers import run_cli  # tests/helpers.py

pytestmark = pytest.mark.usefixtures("one_thread")
GN = InfluenceConfig(method="gn", n_orth=64, dtype="float64", self_rank_sample=48, task_batch=4)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fit_is_cached_and_resumes_after_interruption(synthetic_run, cache):
    run = open_run(synthetic_run)
    seen: list[int] = []

    def crash_after_16(stage, done, total):
        seen.append(done)
        if stage == "curvature" and done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_influence(run, GN, progress=crash_after_16, save_every=8)
    entry = cache_entry(run, GN)
    assert not entry.complete and entry.load_partial()[1]["tasks_done"] == 8  # the chunk that crashed was not saved
    assert fit_status(run, GN) == {"state": "partial", "tasks_done": 8, "total": len(run.train_tasks)}
    resumed_from: list[int] = []
    inf = fit_influence(run, GN, progress=lambda s, d, t: resumed_from.append(d) if s == "curvature" else None, save_every=8)
    assert min(resumed_from) > 8  # finished tasks were not recomputed
    assert entry.complete and entry.load_partial() is None
    assert fit_status(run, GN)["state"] == "complete"
    assert fit_status(run, InfluenceConfig(**{**GN.to_dict(), "n_orth": 7}))["state"] == "none"
    fresh_cache_run = InfluenceConfig(**{**GN.to_dict(), "task_batch": 8})  # another key: an uninterrupted fit
    ref = fit_influence(run, fresh_cache_run)
    torch.testing.assert_close(inf.projections @ inf.factor.T, ref.projections @ ref.factor.T, rtol=1e-8, atol=1e-10)
    again = fit_influence(run, GN, progress=lambda *a: pytest.fail("a cached fit must not recompute"))
    torch.testing.assert_close(again.factor, inf.factor)
    assert again.truncation == inf.truncation and again.self_ranks == inf.self_ranks


def test_rank_rows_and_edit_match_i_meta(synthetic_run, cache):
    run = open_run(synthetic_run)
    inf = fit_influence(run, GN)
    target = Target.parse("3", run)
    scores = all_scores(run, inf, target, GN.dtype)
    order, ranks = ranking_table(scores)
    assert np.all(np.diff(scores[order]) <= 0) and ranks[order[0]] == 0
    rows = task_rows(run, order[:3], scores[order[:3]], ranks[order[:3]])
    assert [r["rank"] for r in rows] == [0, 1, 2] and all(len(r["superclasses"]) == 3 for r in rows)
    # ξ = −1 on task j moves ω̂ by exactly −I_meta(j); ξ = 0 changes nothing
    j = int(order[-1])
    edited = edited_params(run, inf, EditSpec(block=(j,), xi_block=-1.0))
    delta = torch.cat([(edited[k] - run.params[k]).reshape(-1) for k in run.params]).double()
    torch.testing.assert_close(delta, -inf.i_meta(j), rtol=1e-4, atol=1e-7)
    unchanged = edited_params(run, inf, EditSpec(block=(j,), xi_block=0.0))
    for k in run.params:
        torch.testing.assert_close(unchanged[k], run.params[k])
    report = edit_report(run, edited, test_task=3)
    assert report["taskset"]["before"]["accuracy"] == pytest.approx(run.meta["test"]["accuracy"], abs=1e-6)
    assert set(report["test_task"]) == {"id", "before", "after"}
    with pytest.raises(ConfigError):
        EditSpec(block=(1,), xi_block=float("nan"))
    with pytest.raises(ConfigError):
        EditSpec(block=(1, 2), enhance=(2,))


def test_validation_report_on_noise_tasks(synthetic_run, cache):
    run = open_run(synthetic_run)
    inf = fit_influence(run, GN)
    rep = validation_report(run, inf, GN, max_tests=16)
    assert rep["noise"]["total"] == 16 and 0 <= rep["noise"]["proper"] <= 16
    assert rep["noise"]["sigma"] == pytest.approx(2.0)
    assert rep["self_rank_at_truncation"]["random_mean"] == pytest.approx(23.5)
    assert rep["self_rank_at_truncation"]["mean"] < 23.5  # far better than random ranking
    assert [s["min_shared"] for s in rep["superclass"]][0] == 1


def test_influence_cli(synthetic_run, cache, tmp_path):
    common = ["--method", "exact", "--quiet"]
    fit = run_cli("fit", str(synthetic_run), *common)
    assert fit.returncode == 0, fit.stderr
    info = json.loads(fit.stdout)
    assert info["num_parameters"] == 63 and info["num_tasks"] == 48 and info["self_rank_table"]
    rank = run_cli("rank", str(synthetic_run), *common, "--test-task", "train:5", "--top", "3", "--group", "superclass")
    assert rank.returncode == 0, rank.stderr
    out = json.loads(rank.stdout)
    assert len(out["most_helpful"]) == 3 and out["groups"]
    edit = run_cli("edit", str(synthetic_run), *common, "--block", "1,2", "--xi-block", "-2", "--test-task", "0", "--out", str(tmp_path / "edited"))
    assert edit.returncode == 0, edit.stderr
    rep = json.loads(edit.stdout)
    info_edited = run_cli("info", rep["out"])
    assert info_edited.returncode == 0 and json.loads(info_edited.stdout)["edit"]["xi_block"] == -2.0
    for bad, reason in (
        (["rank", str(synthetic_run), *common, "--test-task", "999"], "999"),
        (["edit", str(synthetic_run), *common, "--block", "1", "--xi-block", "inf"], "finite"),
        (["edit", str(synthetic_run), *common, "--block", "x"], "integers"),
    ):
        res = run_cli(*bad)
        assert res.returncode == 2 and reason in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
