"""Influence fits shipped inside a run folder (the bundled demos answer without fitting): the
float16 round trip, the integrity checks, and the demos' own shipped fits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from metainf_core.config import InfluenceConfig
from metainf_core.exceptions import CheckpointError
from metainf_core.fits import fit_influence, fit_status, is_fitted, ship_fit, shipped_fit_path
from metainf_core.ranking import Target, all_scores
from metainf_core.service import open_run

REPO = Path(__file__).resolve().parents[1]
CFG = InfluenceConfig(method="gn", n_orth=32, dtype="float32")


@pytest.fixture()
def shipped_run(synthetic_run, tmp_path, monkeypatch):
    """A copy of the small synthetic run with its fit shipped, and an empty cache."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "fit-here"))
    run_dir = tmp_path / "run"
    shutil.copytree(synthetic_run, run_dir)
    run = open_run(run_dir)
    reference = fit_influence(run, CFG)
    ship_fit(run, CFG)
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "fresh"))  # as on a fresh clone
    return run_dir, run, reference


def test_a_shipped_fit_loads_without_fitting_and_scores_like_the_full_fit(shipped_run, tmp_path):
    run_dir, run, reference = shipped_run
    fresh = open_run(run_dir)
    assert is_fitted(fresh, CFG) and fit_status(fresh, CFG)["state"] == "complete"
    loaded = fit_influence(fresh, CFG)
    assert any((tmp_path / "fresh" / "influence").iterdir())  # copied into the cache once verified
    assert loaded.truncation == reference.truncation and loaded.num_tasks == reference.num_tasks
    for i in range(len(run.test_tasks)):
        a = all_scores(run, reference, Target((i,)), "float32")
        b = all_scores(fresh, loaded, Target((i,)), "float32")
        # U and P are stored as float16 scaled per column: each entry is off by ≤ 2⁻¹¹ of its column's
        # largest entry, so a score (a sum of k such products) is off by at most ~k·2⁻¹⁰ of the largest score
        # in the worst case and ~√k·2⁻¹⁰ typically; 1e-2 of the largest score leaves room and still fails
        # on a wrong scale or a swapped column.
        assert np.abs(a - b).max() <= 1e-2 * np.abs(a).max(), i
        assert np.corrcoef(a, b)[0, 1] > 0.9999


def test_an_altered_shipped_fit_is_refused(shipped_run):
    run_dir, run, _ = shipped_run
    path = shipped_fit_path(run, CFG)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        fit_influence(open_run(run_dir), CFG)


def test_a_shipped_fit_is_used_only_for_its_own_settings(shipped_run):
    run_dir, run, _ = shipped_run
    other = InfluenceConfig(method="gn", n_orth=16, dtype="float32")
    assert not is_fitted(open_run(run_dir), other)  # another cache key: the shipped file does not apply
    record = shipped_fit_path(run, CFG).with_suffix(".json")
    moved = shipped_fit_path(run, other)
    shutil.copyfile(shipped_fit_path(run, CFG), moved)
    shutil.copyfile(record, moved.with_suffix(".json"))  # a fit renamed to pose as another's
    with pytest.raises(CheckpointError, match="shipped for other"):
        fit_influence(open_run(run_dir), other)


@pytest.mark.parametrize("demo", ["protonet-fashion-mnist", "maml-fashion-mnist"])
def test_the_demos_ship_their_default_fit(demo, tmp_path, monkeypatch):
    """A fresh clone has the demos' default fits: Explain and Edit answer without the minutes-long fit."""
    from ui import DEFAULT_INFLUENCE

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path))
    run = open_run(REPO / "assets" / "demo" / demo)
    assert is_fitted(run, DEFAULT_INFLUENCE), f"{demo}: shipped fit missing or stale (python -m metainf_core fit DIR --ship)"
    inf = fit_influence(run, DEFAULT_INFLUENCE)
    assert inf.mode == "gn"  # shipped before one method vocabulary (stored "gauss_newton"): read in today's words
    scores = all_scores(run, inf, Target((0,)), DEFAULT_INFLUENCE.dtype)
    assert scores.shape == (512,) and np.isfinite(scores).all() and np.ptp(scores) > 0
