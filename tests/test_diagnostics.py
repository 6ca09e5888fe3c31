"""Landscape diagnostics (METHODS §7, seed 003) against brute force on tiny float64 models."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metainf_core.checkpoint import load_tensors
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.data import load_dataset
from metainf_core.diagnostics import (
    DiagnosticsConfig,
    adapted_parameters,
    create_feature_function,
    create_support_loss_function,
    diagnostics_over_history,
    landscape_diagnostics,
    mean_pairwise_cosine,
    support_gradients,
    support_hessian_norms,
    task_representations,
)
from metainf_core.exceptions import ConfigError, MetainfError
from metainf_core.influence.exact import hessian_of
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.hvp import hvp_of, lanczos, power_iteration
from metainf_core.learners import LearnerSpec, create_maml_adapt_function, params_of, prototype_logits
from metainf_core.models import build_model
from metainf_core.service import open_run
from metainf_core.tasks import TaskBatch, make_taskset
from metainf_core.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
N_TASKS = 5


@pytest.fixture(scope="module")
def tasks() -> TaskBatch:
    ds = load_dataset("synthetic")
    cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=8, test_tasks=8, seed=1)
    b = make_taskset(ds, cfg, "test").batch(list(range(N_TASKS)), ds)
    return TaskBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y)


def _net(algo: str):
    torch.manual_seed(0)
    model = build_model("mlp-synthetic", algo, (2,), 3).double()
    return model, LearnerSpec(algo, 3, inner_lr=0.4, inner_steps=1), params_of(model)


def _brute_gradient(model, algo: str, sx, sy) -> torch.Tensor:
    """−∇ of the support loss by plain autograd on the nn.Module, flattened in parameter order."""
    out = model(sx).flatten(1)
    logits = prototype_logits(out, sy, out, 3) if algo == "protonet" else out
    g = torch.autograd.grad(F.cross_entropy(logits, sy), list(model.parameters()))
    return -torch.cat([t.reshape(-1) for t in g])


def _pair_mean(vectors, fn) -> float:
    n = len(vectors)
    return sum(float(fn(vectors[i], vectors[j])) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))


def test_eigen_solvers_on_known_spectrum():
    torch.manual_seed(1)
    q = 40
    lam = torch.linspace(-1.0, 2.0, q, dtype=torch.float64)
    lam[0] = -5.0  # dominant eigenvalue is negative: |λ| is what counts
    basis, _ = torch.linalg.qr(torch.randn(q, q, dtype=torch.float64))
    a = basis @ torch.diag(lam) @ basis.T
    pi = power_iteration(lambda v: a @ v, q, num_iters=500, tol=1e-8, dtype=torch.float64)
    la = lanczos(lambda v: a @ v, q, num_iters=q, dtype=torch.float64)
    assert pi.converged and la.converged
    assert pi.value == pytest.approx(-5.0, rel=1e-10) and la.value == pytest.approx(-5.0, rel=1e-10)
    assert la.iterations < 20  # a well-separated extreme eigenvalue needs few Krylov steps
    shifted = power_iteration(lambda v: a @ v, q, num_iters=500, tol=1e-8, damping=1.0, dtype=torch.float64)
    assert shifted.converged and shifted.value == pytest.approx(-4.0, rel=1e-10)  # of H + I: spectrum [−4, 3]
    fixed = power_iteration(lambda v: a @ v, q, num_iters=7, tol=0.0, dtype=torch.float64)
    assert fixed.iterations == 7 and not fixed.converged  # tol=0: every step is taken
    with pytest.raises(ConfigError):
        power_iteration(lambda v: a @ v, q, num_iters=0)
    with pytest.raises(ConfigError):
        lanczos(lambda v: a @ v, q, num_iters=0)


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_sharpness_matches_explicit_hessian(algo, tasks):
    model, spec, params = _net(algo)
    layout = ParamLayout.from_params(params)
    # MAML: Hessian at θ̃_i (one inner step); ProtoNet: at ω itself (no weight adaptation).
    at = adapted_parameters(model, spec, params, tasks, 1, 0.4)
    if algo == "protonet":
        at = layout.flatten(params).expand_as(at)
    loss = create_support_loss_function(model, spec, layout, second_order=True)
    cfg = DiagnosticsConfig(power_iters=3000, power_tol=1e-7, lanczos_iters=63, lanczos_tol=1e-10)
    power, lanc = support_hessian_norms(model, spec, params, at, tasks, cfg)
    for b in range(len(tasks)):
        h = hessian_of(lambda w, b=b: loss(w, tasks.support_x[b], tasks.support_y[b]), at[b])
        ev = torch.linalg.eigvalsh(h)
        ref = float(ev.abs().max())
        print(f"{algo} task {b}: |λ|max={ref:.10g} power={power[b].value:.10g} ({power[b].iterations} it) "
              f"lanczos={lanc[b].value:.10g} ({lanc[b].iterations} it)")
        assert abs(power[b].value) == pytest.approx(ref, rel=1e-6)
        assert abs(lanc[b].value) == pytest.approx(ref, rel=1e-6)
        # HVP agrees with the explicit Hessian times a vector
        v = torch.randn(layout.numel, dtype=torch.float64)
        hvp = hvp_of(lambda w, b=b: loss(w, tasks.support_x[b], tasks.support_y[b]), at[b])
        torch.testing.assert_close(hvp(v), h @ v, rtol=1e-9, atol=1e-10)
    diag = landscape_diagnostics(model, spec, params, tasks, cfg)
    assert diag.sharpness_power == pytest.approx(np.mean([abs(e.value) for e in power]), rel=1e-12)
    assert diag.sharpness_lanczos == pytest.approx(diag.sharpness_power, rel=1e-6)


@pytest.mark.parametrize("algo", ["maml", "protonet"])
def test_gradient_and_representation_coherence_brute_force(algo, tasks):
    model, spec, params = _net(algo)
    grads = [_brute_gradient(model, algo, tasks.support_x[b], tasks.support_y[b]) for b in range(N_TASKS)]
    got = support_gradients(model, spec, params, tasks)
    torch.testing.assert_close(got, torch.stack(grads), rtol=1e-10, atol=1e-12)
    # representations: the last hidden layer (MAML: before the final Linear) / the embedding (ProtoNet)
    trunk = model.features[:-1] if algo == "maml" else model
    with torch.no_grad():
        reps = [trunk(tasks.support_x[b]).flatten(1).mean(0) for b in range(N_TASKS)]
    torch.testing.assert_close(task_representations(model, spec, params, tasks), torch.stack(reps))

    diag = landscape_diagnostics(model, spec, params, tasks, DiagnosticsConfig(power_iters=5, lanczos_iters=3))
    cos = torch.nn.functional.cosine_similarity
    g_inner, g_cos = _pair_mean(grads, torch.dot), _pair_mean(grads, lambda a, b: cos(a, b, dim=0))
    h_inner = _pair_mean(reps, torch.dot)
    print(f"{algo}: E[g_i·g_j]={g_inner:.6g} cos={g_cos:.6g} E[h_i·h_j]={h_inner:.6g}")
    assert diag.gradient_inner == pytest.approx(g_inner, rel=1e-10, abs=1e-14)
    assert diag.gradient_cosine == pytest.approx(g_cos, rel=1e-10, abs=1e-14)
    assert diag.representation_inner == pytest.approx(h_inner, rel=1e-10, abs=1e-14)


def test_conv4_features_are_the_flattened_embedding():
    torch.manual_seed(0)
    model = build_model("conv4", "maml", (1, 16, 16), 3, filters=2)
    x = torch.randn(6, 1, 16, 16)
    feats = create_feature_function(model, LearnerSpec("maml", 3))(params_of(model), x)
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(x).flatten(1))
        torch.testing.assert_close(model.head(feats), model(x))


def test_trajectory_coherence_one_step_is_cosine_of_gradient_steps(tasks):
    model, spec, params = _net("maml")
    alpha = 0.4
    w = ParamLayout.from_params(params).flatten(params)
    # explicit one-step displacements −α∇L(S_i; ω)
    steps = [alpha * _brute_gradient(model, "maml", tasks.support_x[b], tasks.support_y[b]) for b in range(N_TASKS)]
    adapted = adapted_parameters(model, spec, params, tasks, 1, alpha)
    torch.testing.assert_close(adapted - w, torch.stack(steps), rtol=1e-10, atol=1e-12)
    cos = torch.nn.functional.cosine_similarity
    ref = _pair_mean(steps, lambda a, b: cos(a, b, dim=0))
    cfg = DiagnosticsConfig(steps=1, step_size=alpha, power_iters=5, lanczos_iters=3)
    diag = landscape_diagnostics(model, spec, params, tasks, cfg)
    print(f"trajectory coherence T=1: {diag.trajectory_cosine:.8g} (brute force {ref:.8g})")
    assert diag.trajectory_cosine == pytest.approx(ref, rel=1e-10, abs=1e-14)
    assert mean_pairwise_cosine(adapted - w) == pytest.approx(diag.gradient_cosine, rel=1e-10, abs=1e-14)
    # T = 3 matches the learner's own inner loop
    spec3 = LearnerSpec("maml", 3, inner_lr=alpha, inner_steps=3)
    adapt = create_maml_adapt_function(model, spec3)
    layout = ParamLayout.from_params(params)
    ref3 = torch.stack([layout.flatten(adapt(params, tasks.support_x[b], tasks.support_y[b])) for b in range(N_TASKS)])
    torch.testing.assert_close(adapted_parameters(model, spec3, params, tasks, 3, alpha), ref3.detach())


@pytest.fixture(scope="module")
def history_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("history_run")
    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=24, test_tasks=12)
    train_cfg = TrainConfig(
        algo="maml", arch="mlp-synthetic", steps=60, meta_batch=8, lr=0.01, inner_lr=0.4,
        checkpoint_every=20, keep_history=True,
    )
    return train(task_cfg, train_cfg, out, progress=False, device="cpu")


def test_diagnostics_over_history(history_run):
    calls: list[tuple[int, int]] = []
    cfg = DiagnosticsConfig(num_tasks=6, power_iters=60, lanczos_iters=15)
    rows = diagnostics_over_history(history_run, cfg, progress=lambda d, t: calls.append((d, t)))
    assert [r.step for r in rows] == [20, 40, 60]
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    for r in rows:
        print({k: round(v, 5) if isinstance(v, float) else v for k, v in r.to_dict().items()})
        assert all(math.isfinite(v) for v in r.to_dict().values())
        assert r.num_tasks == 6 and 0.0 <= r.accuracy <= 1.0 and r.sharpness_power > 0
        assert r.sharpness_lanczos == pytest.approx(r.sharpness_power, rel=1e-2)
    run = open_run(history_run)
    snap = load_tensors(history_run / "history" / "step_0000040.safetensors")
    acc = run.evaluate(snap, split="test").summary()["accuracy"]
    assert rows[1].accuracy == pytest.approx(acc, abs=1e-12)
    assert rows[-1].accuracy == pytest.approx(run.meta["test"]["accuracy"], abs=1e-6)  # last snapshot = final ω
    assert len({r.accuracy for r in rows} | {r.gradient_inner for r in rows}) > 1  # snapshots really differ


def test_history_missing_is_a_clear_error(history_run, tmp_path):
    bare = tmp_path / "no_history"
    shutil.copytree(history_run, bare, ignore=shutil.ignore_patterns("history"))
    with pytest.raises(ConfigError, match="keep_history"):
        diagnostics_over_history(bare)
    assert issubclass(ConfigError, MetainfError)
    with pytest.raises(ConfigError):
        DiagnosticsConfig(num_tasks=1)


def test_diagnose_cli(history_run, tmp_path, python_exe):
    """`python -m metainf_core diagnose DIR`: JSON rows per snapshot; a run without history exits 2."""
    import json
    import subprocess

    out = subprocess.run([python_exe, "-m", "metainf_core", "diagnose", str(history_run), "--tasks", "4", "--quiet"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rows"]
    direct = diagnostics_over_history(history_run, DiagnosticsConfig(num_tasks=4))
    assert [r["step"] for r in rows] == [r.step for r in direct]
    assert rows[-1]["gradient_inner"] == pytest.approx(direct[-1].gradient_inner, rel=1e-5)  # float32, other thread count
    bare = tmp_path / "bare"
    shutil.copytree(history_run, bare, ignore=shutil.ignore_patterns("history"))
    bad = subprocess.run([python_exe, "-m", "metainf_core", "diagnose", str(bare)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_cached_diagnostics_resume_and_reuse(history_run, tmp_path, monkeypatch):
    """Disk cache: a computation killed after 2 of 3 snapshots resumes with the third only; a
    complete entry is read back bit-identical without computing; new settings or an altered
    snapshot get a new key."""
    from metainf_core import diagnostics
    from metainf_core.checkpoint import save_tensors
    from metainf_core.diagnostics import cached_diagnostics_over_history, diagnostics_cache_entry, load_cached_diagnostics

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    cfg = DiagnosticsConfig(num_tasks=4, power_iters=40, lanczos_iters=10)
    run = open_run(history_run)
    ref = diagnostics_over_history(run, cfg)
    real, calls = diagnostics.landscape_diagnostics, []

    def counting(*a, **k):
        calls.append(1)
        if len(calls) == kill_at:
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(diagnostics, "landscape_diagnostics", counting)
    kill_at = 3
    with pytest.raises(RuntimeError, match="killed"):
        cached_diagnostics_over_history(run, cfg)
    done, total = load_cached_diagnostics(run, cfg)
    assert total == 3 and done == ref[:2] and not diagnostics_cache_entry(run, cfg).complete
    calls.clear()
    kill_at, progress = 0, []
    rows = cached_diagnostics_over_history(run, cfg, progress=lambda d, t: progress.append((d, t)))
    assert len(calls) == 1 and progress == [(2, 3), (3, 3)] and rows == ref  # resumed at the third snapshot
    assert diagnostics_cache_entry(run, cfg).complete
    calls.clear()
    again = cached_diagnostics_over_history(history_run, cfg, progress=lambda d, t: progress.append((d, t)))
    assert again == ref and not calls and len(progress) == 2  # read from disk: nothing computed, no progress
    assert load_cached_diagnostics(run, cfg) == (ref, 3)

    other = DiagnosticsConfig(num_tasks=3, power_iters=40, lanczos_iters=10)
    assert diagnostics_cache_entry(run, other).directory != diagnostics_cache_entry(run, cfg).directory
    assert load_cached_diagnostics(run, other) == ([], 3)
    altered = tmp_path / "altered"
    shutil.copytree(history_run, altered)
    snap = altered / "history" / "step_0000040.safetensors"
    save_tensors(snap, {k: v * 1.001 for k, v in load_tensors(snap).items()})
    moved = open_run(altered)
    assert diagnostics_cache_entry(moved, cfg).directory != diagnostics_cache_entry(run, cfg).directory
    assert load_cached_diagnostics(moved, cfg) == ([], 3)


def test_metric_correlations_against_scipy():
    from scipy import stats

    from metainf_core.diagnostics import DiagnosticsRow
    from metainf_core.landscape_metrics import METRICS, metric_correlations

    rng = np.random.default_rng(0)
    acc = [0.5, 0.6, 0.6, 0.7, 0.65]  # a tie: Spearman uses average ranks
    rows = [DiagnosticsRow(num_tasks=4, **{m: float(rng.normal()) for m in METRICS}, step=10 * i, accuracy=a)
            for i, a in enumerate(acc)]  # fmt: skip
    rows[2] = DiagnosticsRow(**{**rows[2].to_dict(), "sharpness_power": rows[1].sharpness_power})
    corr = metric_correlations(rows)
    for m in METRICS:
        x = [getattr(r, m) for r in rows]
        assert corr[m]["pearson"] == pytest.approx(stats.pearsonr(x, acc).statistic, rel=1e-12)
        assert corr[m]["spearman"] == pytest.approx(stats.spearmanr(x, acc).statistic, rel=1e-12)
    assert all(math.isnan(v) for c in metric_correlations(rows[:2]).values() for v in c.values())  # < 3 snapshots
    flat = [DiagnosticsRow(**{**r.to_dict(), "accuracy": 0.5}) for r in rows]
    assert math.isnan(metric_correlations(flat)["gradient_inner"]["spearman"])  # constant accuracy


def test_diagnose_ship_then_a_fresh_cache_loads_without_computing(history_run, tmp_path, python_exe, monkeypatch):
    """`diagnose DIR --ship` stores the result in the run folder; with an empty cache the page's
    loader then finds every row at once (no computation), and an altered copy is refused."""
    import json
    import subprocess

    from metainf_core.diagnostics import load_cached_diagnostics
    from metainf_core.exceptions import CacheError
    from metainf_core.service import open_run

    run_dir = tmp_path / "run"
    shutil.copytree(history_run, run_dir)
    env = {**os.environ, "METAINF_CACHE": str(tmp_path / "computed-here")}
    out = subprocess.run([python_exe, "-m", "metainf_core", "diagnose", str(run_dir), "--tasks", "4", "--quiet", "--ship"],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert Path(printed["shipped"]).is_relative_to(run_dir)
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "fresh-clone"))
    rows, total = load_cached_diagnostics(open_run(run_dir), DiagnosticsConfig(num_tasks=4))
    assert total == len(rows) == len(printed["rows"])
    assert [r.to_dict() for r in rows] == printed["rows"]  # the same float64 rows, stored and read back
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "another-clone"))
    result = Path(printed["shipped"]) / "result.safetensors"
    data = bytearray(result.read_bytes())
    data[-2] ^= 0xFF
    result.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="altered or stale"):
        load_cached_diagnostics(open_run(run_dir), DiagnosticsConfig(num_tasks=4))


def _diagnostics_worker(rank: int, world: int, init_file: str, run_dir: str, cache_dir: str, counts_dir: str) -> None:
    """One rank of a torchrun-like launch: the cached diagnostics, counting the snapshots it computes."""
    from helpers import gloo_group  # tests/helpers.py

    from metainf_core import diagnostics

    os.environ["METAINF_CACHE"] = cache_dir.format(rank=rank)
    torch.set_num_threads(1)
    real, steps = diagnostics._snapshot_row, []

    def counting(run, batch, step, path, config):
        steps.append(step)
        return real(run, batch, step, path, config)

    diagnostics._snapshot_row = counting
    with gloo_group(init_file, rank, world, timeout_s=60):  # mismatched collectives fail in a minute, not torch's 30
        rows = diagnostics.cached_diagnostics_over_history(run_dir, DiagnosticsConfig(num_tasks=4, power_iters=40, lanczos_iters=10))
    Path(counts_dir, f"rank{rank}.json").write_text(__import__("json").dumps({"steps": steps, "rows": [r.to_dict() for r in rows]}))


def test_diagnostics_are_sharded_over_ranks(history_run, tmp_path, monkeypatch):
    """Under torchrun the snapshots are dealt one per rank per round (3 snapshots, 2 ranks: rank 0
    computes steps 20 and 60, rank 1 step 40); every rank gets all rows, equal to one process's.
    Each rank has its own cache directory here (node-local), and only rank 0's holds the first two
    rows of a killed computation: the ranks agree to start from what all of them hold."""
    import json

    import torch.multiprocessing as mp

    from metainf_core import diagnostics
    from metainf_core.cache import INFO
    from metainf_core.diagnostics import cached_diagnostics_over_history, diagnostics_cache_entry, load_cached_diagnostics

    cfg = DiagnosticsConfig(num_tasks=4, power_iters=40, lanczos_iters=10)
    ref = [r.to_dict() for r in diagnostics_over_history(history_run, cfg)]
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache-0"))
    real, calls = diagnostics.landscape_diagnostics, []

    def killed_at_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(diagnostics, "landscape_diagnostics", killed_at_third)
        with pytest.raises(RuntimeError, match="killed"):
            cached_diagnostics_over_history(history_run, cfg)
    assert len(load_cached_diagnostics(open_run(history_run), cfg)[0]) == 2
    counts = tmp_path / "counts"
    counts.mkdir()
    args = (2, str(tmp_path / "store"), str(history_run), str(tmp_path / "cache-{rank}"), str(counts))
    mp.spawn(_diagnostics_worker, args=args, nprocs=2, join=True)
    got = {r: json.loads((counts / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert got[0]["steps"] == [20, 60] and got[1]["steps"] == [40]
    for r in (0, 1):
        assert [row["step"] for row in got[r]["rows"]] == [20, 40, 60]
        for a, b in zip(got[r]["rows"], ref, strict=True):  # same code, same thread count, other processes:
            assert a == pytest.approx(b, rel=1e-9, abs=1e-12)  # float64 copies of float32 results; 1e-9 is rounding slack
    entry = diagnostics_cache_entry(open_run(history_run), cfg)  # rank 0's directory: written by rank 0
    assert entry.complete and json.loads((entry.directory / INFO).read_text())["ranks"] == 2
    assert not list(entry.directory.glob("partial*"))
