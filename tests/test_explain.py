"""Cached, resumable influence fits, rankings, one-step edits and the influence CLI, on a real
(small) trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli  # tests/helpers.py

from metainf_core.config import InfluenceConfig
from metainf_core.edit import (
    EditSpec,
    apply_delta,
    edit_delta,
    edit_directions,
    edit_report,
    edited_params,
    predicted_loss_change,
    xi_sweep,
)
from metainf_core.exceptions import ConfigError
from metainf_core.fits import cache_entry, fit_influence, fit_status
from metainf_core.ranking import Target, all_scores, ranking_table, target_gradient, task_rows
from metainf_core.service import open_run
from metainf_core.validate import validation_report

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


def test_edit_directions_prediction_and_xi_sweep(synthetic_run, cache):
    """The Edit page's science (edit.py): the group sums ξ rescales, the first-order Δloss, the ξ sweep."""
    run = open_run(synthetic_run)
    inf = fit_influence(run, GN)
    target = Target((3,))
    scores = all_scores(run, inf, target, GN.dtype)
    order, _ = ranking_table(scores)
    block, enhance = tuple(int(j) for j in order[-3:]), tuple(int(j) for j in order[:2])
    dirs = edit_directions(inf.i_meta_sum, block, enhance)
    # brute force: Σ over the set of I_meta(j), one task at a time (another summation order: float64
    # rounding, ~1e-16 of the largest entry; bound 1e-12 of it)
    for got, ids in ((dirs.block, block), (dirs.enhance, enhance)):
        brute = torch.stack([inf.i_meta(j) for j in ids]).sum(0)
        torch.testing.assert_close(got, brute, rtol=0, atol=1e-12 * brute.abs().max().item())
    spec = EditSpec(block, -2.0, enhance, 0.5)
    torch.testing.assert_close(dirs.delta(-2.0, 0.5), edit_delta(inf.i_meta_sum, spec), rtol=0, atol=0)  # the same code
    assert edit_directions(inf.i_meta_sum, block).enhance.abs().max().item() == 0.0
    with pytest.raises(ConfigError):
        edit_directions(inf.i_meta_sum, ())
    # the prediction is g_iᵀ δω (TLXML Eq. 9 with 13), computed here from the target gradient
    # itself: the same sum by another route (float64; bound 1e-9 of the largest term's size)
    g = target_gradient(run, target, GN.dtype)
    direct = float(g @ dirs.delta(-2.0, 0.5))
    predicted = predicted_loss_change(scores, spec)
    assert predicted == pytest.approx(direct, rel=1e-9, abs=1e-12 * float(np.abs(scores).max()))
    assert scores[list(block)].max() < 0 < scores[list(enhance)].min()  # harmful and helpful tasks, as chosen
    # the sign: blocking harmful and enhancing helpful tasks lowers the predicted loss, enhancing the harmful raises it
    assert predicted < 0 < predicted_loss_change(scores, EditSpec(block, 2.0))
    # ξ sweep on the blocked set: ξ = 0 is the trained model, each ξ the edit ω̂ + ξ Σ_B I_meta
    def evaluate(xi):
        m = run.evaluate(apply_delta(run.params, dirs.delta(xi, 0.0)) if xi else None)
        return m.loss, m.accuracy, m.summary()

    done = []
    sweep = xi_sweep(evaluate, scores, block, 3, xis=(-1.0, 0.0, 2.0), progress=lambda d, t: done.append((d, t)))
    assert done == [(1, 3), (2, 3), (3, 3)] and sweep.xis == (-1.0, 0.0, 2.0)
    base = run.evaluate()
    assert sweep.task_loss[1] == pytest.approx(float(base.loss[3]), rel=1e-12)  # the same evaluation: rounding only
    assert sweep.taskset_accuracy[1] == pytest.approx(base.summary()["accuracy"], rel=1e-12)
    removed = run.evaluate(edited_params(run, inf, EditSpec(block, -1.0)))
    # float32 weights: the same edit by another route (edited_params) differs by float32 rounding of
    # ω̂ + δω at most; the loss then by ~1e-6 relative (bound 1e-4)
    assert sweep.task_loss[0] == pytest.approx(float(removed.loss[3]), rel=1e-4)
    assert sweep.predicted_loss_change == pytest.approx(tuple(-xi * float(scores[list(block)].sum()) for xi in sweep.xis), rel=1e-12)


def test_one_method_vocabulary_and_one_target_gradient(synthetic_run):
    """config.py's TLXML names serve the settings, the compare registry and the CLI's rank; a
    training-task target's gradient is that task's own meta-gradient."""
    from metainf_core.cli import _TLXML_ALIASES
    from metainf_core.compare import METHODS
    from metainf_core.config import METHOD_ALIASES, InfluenceMethod
    from metainf_core.fits import params_as
    from metainf_core.influence import task_gradients

    assert [m.compare_name for m in InfluenceMethod] == ["tlxml-exact", "tlxml-gn"] and {"tlxml-exact", "tlxml-gn"} <= set(METHODS)
    assert {k: v.value for k, v in METHOD_ALIASES.items()} == _TLXML_ALIASES == {
        "exact": "exact", "gn": "gn", "tlxml-exact": "exact", "tlxml-gn": "gn"}  # fmt: skip
    with pytest.raises(ConfigError):  # settings hold canonical names only (one cache key per method)
        InfluenceConfig(method="tlxml-gn")
    run = open_run(synthetic_run)
    params = params_as(run, "float64")
    g = task_gradients(run.model, run.spec, params, run.train_tasks, run.dataset, [5, 9])
    # the same per-task gradients averaged by another route: float64 rounding only (bound 1e-12 of the size)
    torch.testing.assert_close(target_gradient(run, Target.parse("train:5", run), "float64"), g[0], rtol=0, atol=1e-12 * g.abs().max().item())
    torch.testing.assert_close(target_gradient(run, Target((5, 9), "train"), "float64"), g.mean(0), rtol=0, atol=1e-12 * g.abs().max().item())
    doubled = target_gradient(run, Target((5, 9), "train"), "float64", gradients=lambda ts, ids: 2 * task_gradients(
        run.model, run.spec, params, ts, run.dataset, ids))  # fmt: skip
    torch.testing.assert_close(doubled, 2 * g.mean(0), rtol=0, atol=1e-12 * g.abs().max().item())


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
