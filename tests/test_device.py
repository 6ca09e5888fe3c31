"""Device placement (issue 14, GPU path) checked without a GPU.

The fit, scoring and edit paths must create every tensor on the device of the weights they are
given; a stray ``torch.zeros(n)`` lands on the CPU and breaks a CUDA run that no CPU test would
notice. PyTorch's ``meta`` device catches exactly that here: any op that mixes a meta tensor with
a CPU tensor raises, so running a path on meta weights proves it allocates on their device. (Meta
tensors hold no data, so only the data-independent parts can run that way: the streamed
Gauss-Newton columns, the scores and the edit, not the eigendecomposition's rank decisions.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from metainf_core import cli
from metainf_core.config import InfluenceConfig
from metainf_core.edit import EditSpec, apply_delta, edit_delta
from metainf_core.exceptions import ConfigError
from metainf_core.fits import fit_influence, params_as
from metainf_core.influence.gauss_newton import GaussNewtonConfig, GaussNewtonFit
from metainf_core.ranking import Target, all_scores
from metainf_core.service import open_run
from metainf_core.train import resolve_device

REPO = Path(__file__).resolve().parents[1]
DEMOS = ["protonet-fashion-mnist", "maml-fashion-mnist"]
META = torch.device("meta")
CFG = InfluenceConfig(method="gn", dtype="float32")  # the demos ship this fit: no fitting here


def _on_meta(run):
    """The run with its network and weights on the meta device (``Run.params`` follows ``device``)."""
    return dataclasses.replace(run, model=run.model.to(META), device=META)


@pytest.mark.parametrize("name", DEMOS)
def test_scores_and_edits_allocate_on_the_weights_device(name, one_thread):
    run = open_run(REPO / "assets" / "demo" / name, device="cpu")
    inf = fit_influence(run, CFG)
    assert inf.factor.device == run.device
    moved = inf.to(META)
    g = torch.empty(moved.num_params, device=META)
    for out in (moved.helpfulness(g), moved.score_parts(g).alignment, moved.score_parts(g).sizes):
        assert out.device == META and out.shape == (inf.num_tasks,)
    assert moved.score_direction(g).device == META and moved.score_direction(g).shape == (inf.num_params,)
    delta = edit_delta(moved.i_meta_sum, EditSpec((1, 2), -1.0, (3,), 1.0))
    edited = apply_delta(_on_meta(run).params, delta)
    assert all(v.device == META for v in edited.values())
    # a CPU-made edit vector applied to meta weights is moved, not mixed (a fit loaded on the CPU,
    # a run on CUDA); the CPU edit itself is the same vector as before the move
    cpu_delta = edit_delta(inf.i_meta_sum, EditSpec((1, 2), -1.0, (3,), 1.0))
    assert all(v.device == META for v in apply_delta(_on_meta(run).params, cpu_delta).values())
    assert torch.equal(inf.to("cpu").factor, inf.factor)  # .to keeps the values (CPU to CPU: the same tensor)


@pytest.mark.parametrize("name", DEMOS)
@pytest.mark.parametrize("options", [{}, {"projection_dim": 256, "rows_per_task": 4}], ids=["full", "sketch+rows"])
def test_gauss_newton_columns_stream_on_the_weights_device(name, options, one_thread):
    """Algorithm 1's per-task columns (MAML's inner loop or ProtoNet's prototypes, vmapped jvp/vjp)
    and the buffer they go into stay on the weights' device."""
    run = _on_meta(open_run(REPO / "assets" / "demo" / name, device="cpu"))
    fit = GaussNewtonFit(run.model, run.spec, params_as(run, "float32"), run.train_tasks, run.dataset, GaussNewtonConfig(**options))
    fit.add_tasks(np.arange(3))
    rows = fit.state_dict()["rows"]
    assert rows.device == META
    c = run.train_tasks.ways
    n_q = run.train_tasks.query.shape[1] * run.train_tasks.query.shape[2]
    per_task = options.get("rows_per_task") or n_q * (c - 1)
    assert rows.shape == (3 * per_task, options.get("projection_dim") or fit.w.numel())


def test_device_names_are_checked_before_any_work():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "meta", "cuda:99"):
        with pytest.raises(ConfigError):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
@pytest.mark.parametrize("command", ["fit", "rank", "edit", "evaluate", "validate"])
def test_cuda_without_a_gpu_is_a_one_line_error(command, capsys):
    args = [command, str(REPO / "assets" / "demo" / "protonet-fashion-mnist"), "--device", "cuda"]
    args += ["--test-task", "0"] if command == "rank" else []
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no CUDA device is available" in err and "\n" not in err


def test_cli_device_cpu_ranks_like_the_default(capsys, one_thread):
    """``--device cpu`` and the default (``auto``: the CPU here) give the same ranking."""
    import json

    demo = str(REPO / "assets" / "demo" / "protonet-fashion-mnist")
    outs = []
    for extra in ([], ["--device", "cpu"]):
        assert cli.main(["rank", demo, "--test-task", "3", "--top", "5", "--quiet", *extra]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    run = open_run(demo, device="cpu")
    scores = all_scores(run, fit_influence(run, CFG), Target((3,)), "float32")
    top = [int(j) for j in np.argsort(-scores, kind="stable")[:5]]
    for out in outs:
        assert [row["task"] for row in out["most_helpful"]] == top
