"""seed 003's coherence on many test tasks (diagnostics.coherence_over_history) and its correlation
with test accuracy by phase of training (landscape_metrics.phase_correlations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metainf_core.diagnostics import adapted_parameters, coherence_over_history, history_snapshots, support_gradients
from metainf_core.influence.flat import ParamLayout
from metainf_core.landscape_metrics import phase_correlations
from metainf_core.service import open_run
from metainf_core.validate import spearman


def test_phase_correlations_split_at_the_peak():
    steps = np.arange(0, 70, 10)
    acc = np.array([0.3, 0.5, 0.6, 0.8, 0.7, 0.65, 0.55])  # peak at step 30
    values = np.array([9.0, 1.0, 2.0, 3.0, 2.5, 2.2, 1.5])  # large at initialisation, then follows accuracy
    ph = phase_correlations(steps, acc, values)
    assert ph["whole run"] == (pytest.approx(spearman(acc, values)), 7)
    assert ph["without the first snapshot"] == (pytest.approx(1.0), 6)  # the first point alone made the whole-run ρ small
    assert ph["rising (to the peak)"][1] == 4 and ph["rising (to the peak)"][0] == pytest.approx(spearman(acc[:4], values[:4]))
    assert ph["after the peak"] == (pytest.approx(1.0), 4)
    short = phase_correlations(steps[:3], np.array([0.3, 0.5, 0.9]), values[:3])
    assert short["after the peak"][1] == 1 and math.isnan(short["after the peak"][0])


def test_coherence_over_history_is_the_mean_over_task_pairs(synthetic_run, tmp_path):
    """On the synthetic MAML with two snapshots: the unnormalised mean inner product and the cosines
    equal a brute-force double loop over the task pairs, whatever the chunking."""
    from metainf_core.checkpoint import save_tensors

    run = open_run(synthetic_run)
    (tmp_path / "history").mkdir()
    snaps = []
    for step, scale in ((0, 0.5), (10, 1.0)):
        path = tmp_path / "history" / f"step_{step:07d}.safetensors"
        save_tensors(path, {k: (v * scale).contiguous() for k, v in run.params.items()})
        snaps.append((step, path))
    n = min(7, len(run.test_tasks))
    rows = coherence_over_history(run, snaps, n, steps=2, step_size=0.3, chunk=3)
    assert [r["step"] for r in rows] == [0, 10] and all(r["num_tasks"] == n for r in rows)
    batch = run.test_tasks.batch(np.arange(n), run.dataset)
    for (step, _), row, scale in zip(snaps, rows, (0.5, 1.0), strict=True):
        params = {k: v * scale for k, v in run.params.items()}
        g = support_gradients(run.model, run.spec, params, batch).double()
        d = (adapted_parameters(run.model, run.spec, params, batch, 2, 0.3) - ParamLayout.from_params(params).flatten(params)).double()
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        inner = np.mean([float(g[i] @ g[j]) for i, j in pairs])
        cos = lambda x, i, j: float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))  # noqa: E731
        # float32 gradients summed in another order: agreement to 1e-5 relative is float32 round-off
        assert row["gradient_inner"] == pytest.approx(inner, rel=1e-5, abs=1e-9)
        assert row["gradient_cosine"] == pytest.approx(np.mean([cos(g, i, j) for i, j in pairs]), rel=1e-5, abs=1e-9)
        assert row["trajectory_cosine"] == pytest.approx(np.mean([cos(d, i, j) for i, j in pairs]), rel=1e-5, abs=1e-9)
    assert history_snapshots(tmp_path)[0][0] == 0
    assert not torch.equal(torch.tensor(rows[0]["gradient_inner"]), torch.tensor(rows[1]["gradient_inner"]))
    assert rows[1]["accuracy"] == pytest.approx(run.meta["test"]["accuracy"], abs=1e-6)  # the last snapshot is the trained ω


def test_diagnose_cli_prints_coherence_by_phase(synthetic_run, tmp_path):
    """`diagnose DIR --coherence-tasks N`: rows per snapshot and ρ by phase, equal to the core's."""
    import json
    import shutil

    from helpers import run_cli

    from metainf_core.checkpoint import save_tensors
    from metainf_core.landscape_metrics import coherence_phase_table

    run_dir = tmp_path / "run"
    shutil.copytree(synthetic_run, run_dir)
    run = open_run(run_dir)
    for step, scale in ((0, 0.2), (5, 0.5), (10, 0.8), (15, 1.0)):
        save_tensors(run_dir / "history" / f"step_{step:07d}.safetensors", {k: (v * scale).contiguous() for k, v in run.params.items()})
    res = run_cli("diagnose", str(run_dir), "--coherence-tasks", "5", "--steps", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["step"] for r in out["rows"]] == [0, 5, 10, 15] and all(r["num_tasks"] == 5 for r in out["rows"])
    table = coherence_phase_table(out["rows"])
    whole = out["spearman_with_accuracy_by_phase"]["gradient_inner"]["whole run"]
    assert (whole["rho"], whole["snapshots"]) == (pytest.approx(table["gradient_inner"]["whole run"][0], nan_ok=True), 4)
