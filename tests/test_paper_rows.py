"""TLXML Table 9/11 rows at the paper's settings (issue 23): configurations, a row run end to end
at toy size across two "sessions", its figures recomputed, the verdict rule and the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metainf_core.config import TaskConfig
from metainf_core.exceptions import ConfigError
from metainf_core.models import build_model, count_parameters
from metainf_core.reproduce.rows import (
    RESULT_FILE,
    ROWS,
    SCHEDULE,
    PaperRow,
    collect,
    differences,
    influence_config,
    row_configs,
    row_verdict,
    run_dir,
    run_rows,
    run_status,
)


def test_rows_hold_the_papers_settings():
    """TLXML 5.1 / B.3: 5-way 5-shot, meta-batch 32, ProtoNet 10,000 and MAML 40,000 meta-batches on
    Omniglot, 1/8 noise tasks, 128 test tasks, N_orth 8,192, self-rank over every training task;
    ProtoNet's network has the paper's 28,320 parameters and MAML's difference is stated."""
    for row in ROWS.values():
        task, train = row_configs(row, seed=42)
        assert (task.ways, task.shots, task.queries, task.test_tasks, task.seed) == (5, 5, 5, 128, 42)
        assert task.noise_tasks * 8 == task.train_tasks == row.train_tasks
        assert (train.meta_batch, train.seed, train.steps) == (32, 42, {"protonet": 10_000, "maml": 40_000}[row.algo])
        cfg = influence_config(row)
        assert (cfg.method, cfg.n_orth, cfg.truncation, cfg.self_rank_sample) == ("gn", 8192, 0, row.train_tasks)
        q = count_parameters(build_model(row.arch, row.algo, (1, 28, 28), row.ways, row.filters))
        if row.algo == "protonet":
            assert q == row.paper_parameters == 28_320
        else:  # our conv3×32 + head on 28×28: 20,453 against the paper's 19,178, said in the differences
            assert q == 20_453 and any("20,453" in d and "19,178" in d for d in differences(row))
    assert SCHEDULE[:5] == (("om-protonet-512", 0), ("om-protonet-1024", 0), ("om-protonet-512", 1), ("om-protonet-512", 2), ("om-maml-512", 0))
    assert ROWS["om-protonet-512"].proper == (112.6, 3.9) and ROWS["om-protonet-1024"].z == (3.5, 0.7)  # Table 11 as printed


def test_verdict_rule():
    row = ROWS["om-protonet-512"]  # paper 112.6 ± 3.9, +8.6σ

    def res(proper, z):
        return {"noise": {"proper": proper, "z": z}}

    assert row_verdict(row, [])["label"] == "pending"
    assert row_verdict(row, [res(110, 8.1), res(106, 7.4)])["label"] == "reproduced"  # 108 within 104.8–120.4
    assert row_verdict(row, [res(90, 4.6), res(96, 5.7)])["label"] == "reproduced"  # outside the band, but significant as the paper's
    assert row_verdict(row, [res(70, 1.1), res(72, 1.4)])["label"] == "partly"
    assert row_verdict(row, [res(60, -0.7), res(62, -0.4)])["label"] == "not reproduced"
    one = row_verdict(row, [res(110, 8.1)])
    assert one["label"] == "preliminary: reproduced" and "one seed" in one["reason"]


@pytest.mark.parametrize("bad", [["--rows", "om-protonet-512"], ["--scale", "paper", "--only", "e2-noise", "--rows", "om-protonet-99"]])
def test_cli_refuses_rows_outside_their_setting(bad, tmp_path):
    from helpers import run_cli

    res = run_cli("reproduce", "--out", str(tmp_path), *bad, "--rows-root", str(tmp_path / "rows"))
    assert res.returncode == 2 and ("--scale paper" in res.stderr or "unknown row" in res.stderr), res.stderr


def test_a_row_trains_over_two_sessions_and_its_figures_recompute(tmp_path, monkeypatch):
    """A toy row (fashion-mnist 3-way, conv4×4, M = 16 with 2 noise tasks, 8 meta-batches): the first
    "session" stops at meta-batch 4 and leaves no result; the second resumes, finishes, fits, and
    writes row.json whose truncation, self-rank and proper tests equal a recomputation from the fit."""
    from metainf_core.fits import fit_influence
    from metainf_core.ranking import test_score_matrix
    from metainf_core.service import open_run
    from metainf_core.validate import proper_tests, self_ranks

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))  # a fresh cache: the row fits here, with progress
    row = PaperRow("toy", "Table 11", "protonet", "conv4", 4, 16, 2, 8, 0, (0.9, 0.1), (1.0, 0.0), (80.0, 5.0), (3.0, 1.0),
                   dataset="fashion-mnist", ways=3)  # fmt: skip
    logs: list[str] = []
    assert run_rows([row], [0], tmp_path, steps=4, log=logs.append) == []
    assert run_status(row, 0, tmp_path)["steps_done"] == 4 and not (run_dir(row, 0, tmp_path) / RESULT_FILE).exists()
    assert "test_accuracy" not in run_status(row, 0, tmp_path)  # unfinished training: no accuracy to show
    assert "training" in logs[0] and "4 of 8" in logs[-1]
    seen: list[tuple[str, int, int]] = []
    (result,) = run_rows([row], [0], tmp_path, log=logs.append, progress=lambda *x: seen.append(x))
    assert any("resuming" in line for line in logs)
    assert seen and seen[-1][1] == seen[-1][2] and max(t for _, _, t in seen) == 16  # the fit's progress, every training task
    run = open_run(run_dir(row, 0, tmp_path))
    assert run.meta["step"] == 8 and run.meta["train_config"]["checkpoint_every"] == 100
    assert TaskConfig.from_dict(run.meta["task_config"]).noise_tasks == 2
    cfg = influence_config(row)
    inf = fit_influence(run, cfg)  # from the cache the row filled
    table = {r["k"]: r["mean_self_rank"] for r in result["self_rank_table"]}
    assert result["truncation"] == min(table, key=lambda k: (table[k], k))  # best mean self-rank, smallest k on ties
    m = len(run.train_tasks)  # the mean self-rank over *every* training task, by brute force at the chosen k
    brute = self_ranks(inf.with_truncation(result["truncation"]).train_score_matrix().numpy(), np.arange(m)).mean()
    assert result["mean_self_rank"] == pytest.approx(brute, abs=1e-12)
    normal = np.ones(m, dtype=bool)
    normal[run.train_tasks.ids_with("noise")] = False
    again = proper_tests(test_score_matrix(run, inf, cfg.dtype, np.arange(128)), normal)
    assert (result["noise"]["proper"], result["noise"]["total"]) == (again.proper, again.total) and again.total == 128
    assert result["parameters"] == count_parameters(run.model)
    # a third call reuses row.json, and leaves the finished run's meta as it was (its training time and test
    # accuracy: resuming a finished training trains nothing and rewrites nothing); the summary and the report
    # show the run beside the paper's row
    meta_before = (run_dir(row, 0, tmp_path) / "meta.json").read_bytes()
    assert run_rows([row], [0], tmp_path, log=logs.append) == [json.loads((run_dir(row, 0, tmp_path) / RESULT_FILE).read_text())]
    assert (run_dir(row, 0, tmp_path) / "meta.json").read_bytes() == meta_before
    (summary,) = collect(tmp_path, rows=[row])
    assert summary["verdict"]["label"].startswith("preliminary") and summary["status"][0]["steps_done"] == 8
    from metainf_core.reproduce.report import render_paper_rows

    text = render_paper_rows([summary])
    assert f"{result['noise']['proper']:.1f} (1 seed) / 80.0 ± 5.0" in text and "seed 0: 8 / 8" in text
    assert f"| {result['train_accuracy']:.3f} (1 seed) / 1.000 ± 0.000 |" in text  # training accuracy beside the paper's
    # finished training whose fit is not done (row.json absent): its test accuracy shows, the verdict says what is missing
    (run_dir(row, 0, tmp_path) / RESULT_FILE).rename(tmp_path / "row.json.away")
    (pending,) = collect(tmp_path, rows=[row])
    assert pending["status"][0]["test_accuracy"] == run.meta["test"]["accuracy"] and not pending["results"]
    assert pending["verdict"] == {"label": "pending", "reason": "training finished; its influence fit and proper tests are not done yet"}
    assert f"| {run.meta['test']['accuracy']:.3f} (1 seed), fit pending / 0.900 ± 0.100 | — / 1.000 ± 0.000 | — |" in render_paper_rows([pending])


def test_unknown_row_is_a_config_error():
    from metainf_core.reproduce.rows import get_row

    with pytest.raises(ConfigError, match="om-protonet-512"):
        get_row("om-protonet-99")


def test_batch_norm_check_evaluates_as_the_core_and_averages_the_sets():
    """scripts/paper_row_batch_norm.py on the ProtoNet demo (conv4 with batch norm): with each set's
    own statistics its per-task accuracy is the core's evaluation; with momentum None the first batch
    norm's running mean after the gathering pass is the mean of the sets' channel means."""
    import importlib.util
    from pathlib import Path

    import torch

    from metainf_core.api import DEMO_DIR
    from metainf_core.service import open_run

    spec = importlib.util.spec_from_file_location("bn_check", Path(__file__).resolve().parents[1] / "scripts" / "paper_row_batch_norm.py")
    bn_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bn_check)
    run = open_run(DEMO_DIR / "protonet-fashion-mnist", device="cpu")
    params = {k: v.detach() for k, v in run.params.items()}
    net = bn_check.with_running_statistics(run.model, params, None)
    acc, _ = bn_check.per_task(net, run.test_tasks, run, train_mode=True)
    # the same tasks and weights, looped here and vmapped there: accuracies are fractions of a few queries, float32 rounding moves no argmax here
    np.testing.assert_allclose(acc, run.evaluate().accuracy, atol=1e-6)
    ids = np.arange(6)
    net = bn_check.with_running_statistics(run.model, params, None)  # fresh: training-mode passes above updated the statistics
    bn_check.gather_statistics(net, run, ids)
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    first_bn = next(m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    with torch.no_grad():
        means = [first_conv(x).mean((0, 2, 3)) for j in ids for b in [run.train_tasks.batch([int(j)], run.dataset)] for x in (b.support_x[0], b.query_x[0])]
    torch.testing.assert_close(first_bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)  # float32 averages in another order
    assert int(first_bn.num_batches_tracked) == 2 * len(ids)
