"""Removal fidelity (seed 001 Table 1, metainf_core/fidelity.py) against brute force.

Real data: a 1,347-parameter MAML mlp on fashion-mnist (16 training tasks, ~3 s to train); the
task-IF estimate is rebuilt from freshly computed meta-gradients and the fit's eigen-factor, and
retraining rows from direct ``leave_out_retrain`` calls. Smooth proximal MAML (tests/test_task_if.py's
35-parameter problem, where ω̂ is an exact minimum): the task-IF set removal is closer to
Newton re-optimisation without the set than direct IF's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_task_if import M as SMOOTH_M  # noqa: F401 - the fixture is used by name
from test_task_if import _reoptimise, problem

from metainf_core import fidelity
from metainf_core.compare import CompareConfig, maml_task_if_fit, removal_vectors
from metainf_core.config import FidelityConfig, TaskConfig, TrainConfig
from metainf_core.detect import random_removal_sets
from metainf_core.edit import apply_delta
from metainf_core.exceptions import ConfigError
from metainf_core.fidelity import removal_fidelity, removal_sum, with_train_seed
from metainf_core.fits import params_as
from metainf_core.influence import TaskIFConfig, fit_task_if_tasks, task_gradients
from metainf_core.leave_out import leave_out_retrain
from metainf_core.service import open_run
from metainf_core.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
DAMPING, STEPS = 0.01, 30


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """MAML mlp, fashion-mnist 3-way 5-shot, 16 training / 32 test tasks, 100 steps; its report."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAINF_CACHE", str(tmp_path_factory.mktemp("cache")))
        task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=16, test_tasks=32)
        train_cfg = TrainConfig(algo="maml", arch="mlp", steps=100, meta_batch=8, checkpoint_every=100)
        run = open_run(train(task_cfg, train_cfg, tmp_path_factory.mktemp("run"), progress=False, device="cpu"))
        sets = random_removal_sets(16, 3, 2, seed=0)
        seen = []
        rep = removal_fidelity(
            run, sets, methods=("task-if", "direct-if", "tlxml-gn"), retrain_seeds=(0, 1), retrain_steps=STEPS,
            retrain_dir=tmp_path_factory.mktemp("retrain"), damping=DAMPING, progress=lambda *a: seen.append(a),
        )  # fmt: skip
        yield run, sets, rep, seen


def test_task_if_estimate_is_omega_plus_sum_of_removals(fashion):
    run, sets, rep, _ = fashion
    cfg = CompareConfig(damping=DAMPING)
    inf = maml_task_if_fit(run, cfg)
    assert inf.truncation == inf.num_positive  # every positive eigen-direction of H + λ_d I
    # independently: fresh meta-gradients g_j and (H + λ_d I)⁺ = U_k U_kᵀ on the kept positive columns
    g = task_gradients(run.model, run.spec, params_as(run, "float64"), run.train_tasks, run.dataset)
    assert torch.all(inf.signs[: inf.truncation] > 0)
    u = inf.factor[:, : inf.truncation]
    independent = (g @ u) @ u.T / len(run.train_tasks)  # r_j = (1/M) (H + λ_d I)⁺ g_j
    rows, _ = removal_vectors(run, "task-if", cfg)
    torch.testing.assert_close(rows, independent, rtol=1e-8, atol=1e-12)
    losses, accs = [], []
    for b in sets:
        w = torch.cat([v.double().reshape(-1) for v in run.params.values()]) + independent[b].sum(0)
        expected = apply_delta({k: torch.zeros_like(v) for k, v in run.params.items()}, w)
        torch.testing.assert_close(apply_delta(run.params, removal_sum(rows, b)), expected, rtol=1e-6, atol=1e-6)
        s = run.evaluate(expected).summary()
        losses.append(s["loss"])
        accs.append(s["accuracy"])
    row = rep["rows"]["task-if"]
    # The report's weights come from another code path (the cached rows, summed, added in float32 by
    # apply_delta) than `expected` (fresh gradients, summed in float64): they agree to float32
    # rounding (above), so losses agree to ~1e-7 relative, but an accuracy is a count of argmaxes and
    # a query whose two largest logits tie to within that rounding may flip: allow one query
    # prediction of the taskset (1/480 here), far below what a wrong removal set or sign changes.
    tc = run.meta["task_config"]
    one_prediction = 1.0 / (len(run.test_tasks) * tc["ways"] * tc["queries"]) + 1e-9
    np.testing.assert_allclose(row["accuracies"], accs, rtol=0, atol=one_prediction)
    assert row["loss_mean"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert row["accuracy_sd"] == pytest.approx(np.std(accs, ddof=1), abs=one_prediction)
    with pytest.raises(ConfigError, match="removed task ids"):
        removal_sum(rows, [16])


def test_retrain_rows_equal_direct_leave_out_retraining(fashion, tmp_path):
    run, sets, rep, seen = fashion
    r = rep["rows"]["retrain"]
    assert r["seeds"] == [0, 1] and np.shape(r["per_seed"]) == (2, 2)
    own = leave_out_retrain(run, sets[1], tmp_path / "own", STEPS)  # the run's own seed (0)
    other = leave_out_retrain(with_train_seed(run, 1), sets[0], tmp_path / "other", STEPS)
    assert r["per_seed"][1][0] == pytest.approx(own["test"]["accuracy"], abs=1e-7)
    assert r["per_seed"][0][1] == pytest.approx(other["test"]["accuracy"], abs=1e-7)
    meta = open_run(other["out"]).meta["train_config"]
    assert meta["seed"] == 1 and list(meta["exclude_tasks"]) == sets[0].tolist() and meta["steps"] == STEPS
    acc = np.array(r["per_seed"])
    assert r["accuracy_mean"] == pytest.approx(acc.mean()) and r["accuracies"] == pytest.approx(acc.mean(1).tolist())
    sd = float(np.sqrt(np.var(acc, axis=1, ddof=1).mean()))
    assert r["interval"] == pytest.approx([acc.mean() - 1.96 * sd, acc.mean() + 1.96 * sd])
    for name in ("task-if", "direct-if", "tlxml-gn", "unedited"):
        row = rep["rows"][name]
        assert row["inside_retrain_interval"] == (r["interval"][0] <= row["accuracy_mean"] <= r["interval"][1])
    t = rep["rows"]["task-if"]
    assert t["speedup"]["one_removal"] == pytest.approx(r["seconds"] / (t["fit_seconds"] + t["update_seconds"]))
    assert t["speedup"]["amortised"] == pytest.approx(r["seconds"] / (t["fit_seconds"] / 2 + t["update_seconds"]))
    assert rep["rows"]["unedited"]["relative_distance"] == pytest.approx(1.0)
    assert ("retrain", 4, 4) in seen and ("fit:task-if", 0, 1) in seen and rep["skipped"] == {}
    print({k: (round(v["accuracy_mean"], 4), round(v.get("relative_distance", 0), 2)) for k, v in rep["rows"].items()})


def test_removal_fidelity_rejects_bad_sets(fashion):
    run = fashion[0]
    with pytest.raises(ConfigError, match="proper subsets"):
        removal_fidelity(run, [[0, 99]])
    with pytest.raises(ConfigError, match="unknown removal estimator"):
        removal_fidelity(run, [[0]], methods=("grad-sim",))
    with pytest.raises(ConfigError, match="distinct"):
        removal_fidelity(run, [[0]], retrain_seeds=(1, 1))


def test_fidelity_report_draws_the_configured_sets(fashion, monkeypatch):
    """``fidelity_report`` (what the CLI runs) passes FidelityConfig's draws of k tasks and its settings on."""
    seen = {}
    monkeypatch.setattr(fidelity, "removal_fidelity", lambda run, sets, **kw: seen.update(sets=sets, **kw))
    cfg = FidelityConfig(k=3, draws=2, seed=4, methods=("task-if",), retrain_seeds=(0, 5), retrain_steps=7, damping=0.1)
    fidelity.fidelity_report(fashion[0], cfg, retrain_dir="DIR")
    assert [list(b) for b in seen.pop("sets")] == [list(b) for b in random_removal_sets(16, 3, 2, 4)]
    assert seen == {"methods": ("task-if",), "retrain_seeds": (0, 5), "retrain_steps": 7, "retrain_dir": "DIR", "damping": 0.1,
                    "progress": None}  # fmt: skip


def test_smooth_proximal_task_if_beats_direct_if_on_set_removal(problem):  # noqa: F811
    p = problem
    est = {
        mode: fit_task_if_tasks(p["fns"], p["w"], p["tasks"], TaskIFConfig(mode=mode, damping=p["damping"], method=method)).removals
        for mode, method in (("exact", "cg"), ("direct", "exact"))
    }  # fmt: skip
    errors = {"exact": [], "direct": []}
    for b in ([0, 3], [1, 2, 5]):
        weights = [0.0 if j in b else 1.0 / SMOOTH_M for j in range(SMOOTH_M)]  # ε = −1/M on each j ∈ B
        actual = _reoptimise(p, weights) - p["w"]
        for mode, rows in est.items():
            errors[mode].append(float((removal_sum(rows, b) - actual).norm() / actual.norm()))
    print("relative error of ω̂ + Σ r_j vs re-optimised ω̂₋B:", errors)
    assert max(errors["exact"]) < 0.5 and all(e < d for e, d in zip(errors["exact"], errors["direct"], strict=True))
