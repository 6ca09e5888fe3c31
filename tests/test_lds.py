"""Task-level LDS (metainf_core/lds.py) on a real smoke-scale run: the 63-parameter synthetic MAML,
K = 5 half-subsets of 16 training tasks, R = 2 seeds, each retraining 40 meta-batches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import run_cli

from metainf_core.compare import CompareConfig, method_scores
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.exceptions import ConfigError
from metainf_core.ranking import Target
from metainf_core.lds import (
    RANDOM,
    LDSConfig,
    lds_per_test,
    lds_subsets,
    noise_ceiling,
    parse_lds_methods,
    retrain_configs,
    score_matrix,
    spearman_brown,
    task_lds,
)
from metainf_core.reproduce import runs
from metainf_core.service import open_run
from metainf_core.train import train

CFG = LDSConfig(subsets=5, alpha=0.5, seeds=2, subset_seed=3)
METHODS = ["tlxml-exact", "grad-sim", RANDOM]
DAMPING = CompareConfig(damping=0.01)


@pytest.fixture(scope="module")
def lds_setting(tmp_path_factory, one_thread):
    """(run, work folder, result) with the fits cached in a folder of this module's."""
    root = tmp_path_factory.mktemp("lds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(root / "cache"))
        task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=16, test_tasks=6, noise_tasks=4)
        train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=40, meta_batch=8, lr=0.01, inner_lr=0.4, checkpoint_every=20)
        run = open_run(train(task_cfg, train_cfg, root / "base", progress=False, device="cpu"))
        result = task_lds(run, CFG, methods=METHODS, work=root / "work", config=DAMPING, progress=lambda d, t: None)
        yield run, root / "work", result


def test_spearman_brown_by_hand() -> None:
    # halves (K = 5): ranks 1..5 and 2,1,4,3,5: Σd² = 4, ρ = 1 − 6·4 / (5·(25 − 1)) = 0.8; 2·0.8 / 1.8 = 8/9
    a, b = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    odd = np.stack([a, b, np.array([5.0, 4.0, 3.0, 2.0, 1.0])], 1)[:, :, None]  # (K, R = 3, T = 1): seed 3 joins no half
    four = np.stack([a - 0.1, a + 0.1, b + 0.2, b - 0.2], 1)[:, :, None]  # halves' means are a and b again
    for losses in (odd, four):
        c = noise_ceiling(losses)
        assert c["split_half_mean"] == pytest.approx(0.8, abs=1e-12)  # exact ranks: only rounding differs
        assert c["mean"] == pytest.approx(8 / 9, abs=1e-12)
    assert spearman_brown(0.0) == 0.0 and spearman_brown(1.0) == 1.0
    with pytest.raises(ConfigError, match="at least 2 seeds"):
        noise_ceiling(odd[:, :1])


def test_subsets_are_deterministic() -> None:
    cfg = LDSConfig(subsets=8, alpha=0.25, subset_seed=7)
    s = lds_subsets(64, cfg)
    assert s.shape == (8, 16)
    np.testing.assert_array_equal(s, lds_subsets(64, cfg))
    assert all(len(np.unique(row)) == 16 and (np.diff(row) > 0).all() and row[0] >= 0 and row[-1] < 64 for row in s)
    assert not np.array_equal(s, lds_subsets(64, LDSConfig(subsets=8, alpha=0.25, subset_seed=8)))
    # the first K' of K subsets are the K' subsets: a longer job extends a shorter one's retrainings
    np.testing.assert_array_equal(s[:5], lds_subsets(64, LDSConfig(subsets=5, alpha=0.25, subset_seed=7)))
    with pytest.raises(ConfigError, match="alpha"):
        LDSConfig(alpha=1.0)
    with pytest.raises(ConfigError, match="between 1 and M"):
        lds_subsets(3, LDSConfig(alpha=0.1))


def test_retrain_configs_exclude_the_complement(lds_setting) -> None:
    run, _, result = lds_setting
    kept = np.asarray(result["data"]["subsets"])
    configs = retrain_configs(run, kept, CFG)
    for ids, row in zip(kept, configs, strict=True):
        for r, (task_cfg, train_cfg) in enumerate(row):
            assert sorted(set(train_cfg.exclude_tasks) | set(ids.tolist())) == list(range(16))
            assert not set(train_cfg.exclude_tasks) & set(ids.tolist())
            assert train_cfg.seed == run.meta["train_config"]["seed"] + r
            assert task_cfg.to_dict() == run.meta["task_config"] and train_cfg.steps == 40


def test_lds_matches_dattri_and_an_oracle(lds_setting) -> None:
    dattri_metric = pytest.importorskip("dattri.metric")
    run, _, result = lds_setting
    kept = np.asarray(result["data"]["subsets"])
    mean_loss = np.asarray(result["data"]["losses"]).mean(1)  # (K, T)
    assert mean_loss.shape == (5, 6) and result["retraining"]["count"] == 10
    for name in METHODS:
        scores, _ = score_matrix(run, name, result["test_tasks"], CFG, DAMPING)  # (T, M) helpfulness
        ours = np.asarray(result["methods"][name]["per_test"])
        # dattri: scores train × test, ground truth a higher-is-better target (−loss), subsets' indices
        theirs, _ = dattri_metric.lds(torch.as_tensor(scores.T), (torch.as_tensor(-mean_loss), torch.as_tensor(kept)))
        # the same Pearson of the same average ranks (ours numpy, dattri scipy): only rounding differs
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-12)
        assert result["methods"][name]["mean"] == pytest.approx(np.nanmean(ours), abs=1e-12)
    # a fixed truncation at the self-rank choice is the registry's method
    k = result["methods"]["tlxml-exact"]["details"]["truncation"]
    fixed, details = score_matrix(run, f"tlxml-exact@{k}", result["test_tasks"], CFG, DAMPING)
    ticks: list[int] = []
    registry = score_matrix(run, "tlxml-exact", result["test_tasks"], CFG, DAMPING, tick=lambda: ticks.append(1))[0]
    assert len(ticks) == len(result["test_tasks"])  # one progress step per test task scored
    np.testing.assert_allclose(fixed, registry, rtol=1e-9, atol=1e-12)  # batched vs per-target float64 gradients: rounding only
    assert details == {"truncation": k}
    for bad in ("grad-sim@3", "tlxml-gn@0", "tlxml-gn@x"):
        with pytest.raises(ConfigError, match="tlxml-exact@K or tlxml-gn@K"):
            parse_lds_methods(bad)
    # the mean test loss as one target: TLXML's helpfulness for Target(all tests) is the tests' mean (linear in the gradient)
    whole = method_scores(run, Target(tuple(result["test_tasks"])), "tlxml-exact", DAMPING)
    per_test, _ = score_matrix(run, "tlxml-exact", result["test_tasks"], CFG, DAMPING)
    np.testing.assert_allclose(whole, per_test.mean(0), rtol=1e-9, atol=1e-12)  # float64 sums in another order
    pooled_mean = np.asarray(result["data"]["losses"]).mean((1, 2))[:, None]
    assert result["pooled"]["methods"]["tlxml-exact"] == pytest.approx(lds_per_test(whole[None], kept, pooled_mean)[0], abs=1e-12)
    # an oracle whose summed helpfulness is exactly minus each subset's loss (K = 5 < M = 16: solvable)
    indicator = np.zeros((5, 16))
    np.put_along_axis(indicator, kept, 1.0, axis=1)
    oracle = np.linalg.lstsq(indicator, -mean_loss, rcond=None)[0].T  # (T, M)
    np.testing.assert_allclose(lds_per_test(oracle, kept, mean_loss), 1.0, atol=1e-12)  # rank-exact fit
    np.testing.assert_allclose(lds_per_test(-oracle, kept, mean_loss), -1.0, atol=1e-12)


def test_resume_skips_finished_retrainings(lds_setting, monkeypatch) -> None:
    run, work, result = lds_setting
    monkeypatch.setenv("METAINF_CACHE", str(work.parent / "cache"))
    again = task_lds(run, CFG, methods=METHODS, work=work, config=DAMPING, progress=lambda d, t: None)
    assert again["retraining"]["trained_now"] == 0 and again["retraining"]["reused"] == 10
    # a killed job: one retraining gone, another stopped after its last checkpoint (meta not complete)
    folders = sorted((work / "runs").iterdir())
    shutil.rmtree(folders[0])
    meta = json.loads((folders[1] / "meta.json").read_text())
    (folders[1] / "meta.json").write_text(json.dumps({**meta, "complete": False}))
    resumed = task_lds(run, CFG, methods=METHODS, work=work, config=DAMPING, progress=lambda d, t: None)
    assert resumed["retraining"]["trained_now"] == 2 and runs.is_complete(folders[1])
    np.testing.assert_array_equal(resumed["data"]["losses"], result["data"]["losses"])  # seeded: the same retrainings
    for name in METHODS:
        assert resumed["methods"][name]["per_test"] == result["methods"][name]["per_test"]
    assert resumed["ceiling"] == result["ceiling"]


def test_cli_lds_table_and_json(lds_setting, monkeypatch) -> None:
    run, work, result = lds_setting
    monkeypatch.setenv("METAINF_CACHE", str(work.parent / "cache"))
    args = ("lds", run.checkpoint.path, "--subsets", 5, "--seeds", 2, "--subset-seed", 3, "--work", work, "--quiet",
            "--methods", "tlxml-exact,random")  # fmt: skip
    table = run_cli(*args)
    assert table.returncode == 0, table.stderr
    assert "noise ceiling" in table.stdout and "tlxml-exact" in table.stdout and "random" in table.stdout
    js = run_cli(*args, "--json")
    assert js.returncode == 0, js.stderr
    got = json.loads(js.stdout)
    assert got["methods"]["tlxml-exact"]["mean"] == pytest.approx(result["methods"]["tlxml-exact"]["mean"], abs=1e-12)
    assert got["ceiling"]["mean"] == pytest.approx(result["ceiling"]["mean"], abs=1e-12) and "data" not in got
    bad = run_cli("lds", run.checkpoint.path, "--methods", "nope")
    assert bad.returncode == 2 and "unknown method" in bad.stderr


def test_a_method_added_later_is_scored_on_a_measurement_s_losses(lds_setting, monkeypatch, tmp_path) -> None:
    """``lds --losses-from``: a committed measurement's retrained losses stand in for the retrainings,
    so a method added later is scored on the same ground truth; refused for another run or design."""
    run, work, result = lds_setting
    monkeypatch.setenv("METAINF_CACHE", str(work.parent / "cache"))
    measured, out, empty = tmp_path / "measured.json", tmp_path / "later.json", tmp_path / "no-retrainings"
    measured.write_text(json.dumps(result))
    done = run_cli("lds", run.checkpoint.path, "--subsets", 5, "--seeds", 2, "--subset-seed", 3, "--work", empty, "--quiet",
                   "--methods", "grad-sim", "--losses-from", measured, "--out", out, "--data")  # fmt: skip
    assert done.returncode == 0, done.stderr
    later = json.loads(out.read_text())
    assert not empty.exists() and later["retraining"]["losses_read_from_measurement"] and later["source"].startswith(str(measured))
    assert later["data"]["losses"] == result["data"]["losses"] and json.dumps(later["ceiling"]) == json.dumps(result["ceiling"])
    # the same cached scores against the same losses: the same LDS (NaN where a test task's losses tie)
    np.testing.assert_array_equal(later["methods"]["grad-sim"]["per_test"], result["methods"]["grad-sim"]["per_test"])
    for bad, why in (
        ({k: v for k, v in result.items() if k != "data"}, "without --data"),
        ({**result, "run": {**result["run"], "test": {**result["run"]["test"], "loss": result["run"]["test"]["loss"] * 1.01}}}, "another model"),
        ({**result, "run": {**result["run"], "train_config": {**result["run"]["train_config"], "lr": 0.5}}}, "another run"),
    ):
        with pytest.raises(ConfigError, match=why):
            task_lds(run, CFG, methods=[RANDOM], measured=bad)
    with pytest.raises(ConfigError, match="other subsets"):
        task_lds(run, LDSConfig(subsets=5, alpha=0.5, seeds=2, subset_seed=4), methods=[RANDOM], measured=result)
    with pytest.raises(ConfigError, match="seeds per subset"):
        task_lds(run, LDSConfig(subsets=5, alpha=0.5, seeds=3, subset_seed=3), methods=[RANDOM], measured=result)
