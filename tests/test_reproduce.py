"""The reproduction report (issue 6) is what the current code produces: README.md re-renders from
the committed sections, the smallest experiment regenerates to the committed numbers (within the
spread the report records: training is not bit-reproducible across CPUs), and the ``reproduce``
command runs every experiment end to end (at smoke scale) with numbers that match direct calls of
the library."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from metainf_core.data.base import REPO_ROOT
from metainf_core.reproduce import EXPERIMENTS, load_sections
from metainf_core.reproduce.experiments import Context, darkened, run_experiment
from metainf_core.reproduce.report import figure_path, render_readme
from metainf_core.tasks import TaskBatch

REPORT = REPO_ROOT / "docs" / "results"
pytestmark = pytest.mark.usefixtures("one_thread")  # small models: one intra-op thread (conftest.one_thread)


def test_readme_is_rendered_from_the_committed_sections():
    sections, medium = load_sections(REPORT), load_sections(REPORT, "medium")
    assert [s["key"] for s in sections] == list(EXPERIMENTS), "every experiment must be in the committed report"
    assert all(s["scale"] == "report" and s["config"] == EXPERIMENTS[s["key"]].config for s in sections), "report-scale configs only"
    assert all(s["scale"] == "medium" and s["config"] == EXPERIMENTS[s["key"]].medium for s in medium), "medium-scale configs only"
    figures = {figure_path(s, f) for s in [*sections, *medium] for f in s["figures"]}
    drawn = {p for p in figures if (REPORT / p).is_file()}
    assert drawn == figures, f"missing figures: {sorted(figures - drawn)}"
    assert render_readme(sections, drawn, medium) == (REPORT / "README.md").read_text(encoding="utf-8")


# a table cell: "0.928", "0.799 ± 0.077" (mean ± sd) or "54 (+5.5σ)" (count of proper tests, z)
_CELL = re.compile(r"(?P<value>[-+]?\d+(?:\.(?P<decimals>\d+))?)(?: ± (?P<sd>\d+\.\d+))?(?: \((?P<z>[-+]\d+\.\d+)σ\))?")


def _numbers(cell) -> dict[str, tuple[float, float]]:
    """The numbers in a table cell, each with the unit of its last printed digit."""
    if isinstance(cell, int):
        return {"value": (float(cell), 1.0)}
    m = _CELL.fullmatch(cell)
    assert m, f"unparsed table cell {cell!r}"
    unit = 10.0 ** -len(m["decimals"] or "")
    out = {"value": (float(m["value"]), unit)}
    if m["sd"]:
        out["sd"] = (float(m["sd"]), unit)
    if m["z"]:
        out["z"] = (float(m["z"]), 0.1)
    return out


def test_smallest_experiment_regenerates(tmp_path, monkeypatch):
    """Experiment 7 (exact vs Gauss-Newton on the synthetic set), first training seed, from scratch,
    number by number against the committed row.

    Training (1,000 float32 Adam steps) is not bit-reproducible across CPUs, SIMD widths or thread
    counts: rounding differences grow until a regenerated seed-0 run is another draw of the same
    experiment (seed 0 gave test accuracy 0.928 in the report, 0.935 on one thread and 0.954 on two
    here; proper exact tests 54 / 46 / 53). So each number must lie within the spread the report
    records for that column: tolerance 3·√2·s, s = the column's sd over the report's training seeds
    (√2: the committed and the fresh value are two independent draws; 3: three sd of their
    difference). Counts of proper tests take s ≥ the σ unit the table prints beside them, √n/2 for
    n tests (the largest sd of a count of n binary outcomes), since three seeds can agree by chance
    (exact: 54, 57, 55, sd 1.5); nothing goes below the last printed digit. A broken pipeline still
    fails: training that does not learn (accuracy below 0.87), influence no better than chance
    (proper ≈ n/2 = 32, below 54 − 17) or of the wrong sign, GN unrelated to exact (Pearson < 0.45).
    """
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    saved = json.loads((REPORT / "data" / "e7-exact-vs-gn.json").read_text(encoding="utf-8"))
    config, table = saved["config"], saved["tables"][0]
    seed = config["seeds"][0]
    assert table["rows"][0][0] == seed and len(table["rows"]) == len(config["seeds"]) >= 3, "the spread needs the report's seeds"
    fresh = run_experiment("e7-exact-vs-gn", {**config, "seeds": [seed]}, Context(tmp_path / "work"))
    assert fresh["tables"][0]["columns"] == table["columns"]
    (row,) = fresh["tables"][0]["rows"]
    assert row[0] == seed
    committed = [[_numbers(c) for c in r] for r in table["rows"]]
    got = [_numbers(c) for c in row]
    n = config["test_tasks"]
    sigma = math.sqrt(n) / 2  # the σ of "54 (+5.5σ)": z = (proper − n/2) / σ
    failures = []
    for col, name in enumerate(table["columns"][1:], start=1):
        assert got[col].keys() == committed[0][col].keys(), (name, row[col])
        for part, (value, unit) in got[col].items():
            seeds = np.array([r[col][part][0] for r in committed])
            floor = {"value": sigma, "z": 1.0}.get(part, 0.0) if "z" in got[col] else 0.0
            tol = 3 * math.sqrt(2) * max(seeds.std(ddof=1), floor, unit)
            ref = committed[0][col][part][0]
            print(f"{name:>15} {part:>5}: fresh {value:.3f}, committed {ref:.3f} (seeds {seeds.tolist()}), tolerance {tol:.3f}")
            if abs(value - ref) > tol:
                failures.append(f"{name} {part}: {value} vs committed {ref} ± {tol:.3f}")
        if "z" in got[col]:  # the printed z is the printed count's
            assert got[col]["z"][0] == pytest.approx((got[col]["value"][0] - n / 2) / sigma, abs=0.05 + 1e-9), row[col]
    assert not failures, failures


def test_darkening_is_nested_and_exact():
    x = torch.rand(2, 10, 1, 4, 4) + 0.1
    batch = TaskBatch(x, torch.zeros(2, 10, dtype=torch.long), x.clone(), torch.zeros(2, 10, dtype=torch.long))
    half = darkened(batch, 1.0, 0.5, seed=3)
    most = darkened(batch, 1.0, 0.8, seed=3)
    black_half = (half.support_x.flatten(2) == 0).all(2)
    black_most = (most.support_x.flatten(2) == 0).all(2)
    assert black_half.sum(1).tolist() == [5, 5] and black_most.sum(1).tolist() == [8, 8]
    assert bool((black_most | ~black_half).all()), "a larger ratio darkens a superset"
    quarter = darkened(batch, 0.25, 1.0, seed=3)
    assert torch.allclose(quarter.query_x, 0.75 * x)


def test_reproduce_command_at_smoke_scale(tmp_path, python_exe):
    """Every experiment through the CLI at smoke scale; then a second call is up to date, and the
    numbers in the sections equal direct library calls on the same runs."""
    from metainf_core.config import InfluenceConfig
    from metainf_core.explain import fit_influence, validation_report
    from metainf_core.service import open_run

    out, work = tmp_path / "report", tmp_path / "work"
    # one thread, as this process (the module's one_thread): the proper-test counts below are compared
    # exactly with the CLI's, which holds when both run the same kernels on the same cached runs
    env = {"METAINF_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [python_exe, "-m", "metainf_core", "reproduce", "--out", str(out), "--work", str(work), "--scale", "smoke", "--no-figures"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    verdicts = json.loads(done.stdout)["verdicts"]
    assert set(verdicts) == set(EXPERIMENTS)
    assert all(v["label"] in ("reproduced", "partly", "not reproduced") and v["reason"] for v in verdicts.values())
    readme = (out / "README.md").read_text(encoding="utf-8")
    for key in EXPERIMENTS:
        assert f"--only {key}`" in readme

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120)
    assert again.returncode == 0 and again.stderr.count("up to date") == len(EXPERIMENTS), again.stderr[-2000:]

    # the noise section's proper-test counts = validation_report on the same (cached) runs and fits
    sec = json.loads((out / "data" / "e2-noise.json").read_text(encoding="utf-8"))
    c = sec["config"]
    runs = [open_run(p) for p in sorted((work / "runs").glob(f"protonet-fashion-mnist-m{c['train_tasks'][0]}-s*"))]
    runs = [r for r in runs if not r.meta["train_config"]["exclude_tasks"]]  # not the one-step section's leave-out retrainings
    assert len(runs) == len(c["seeds"])
    proper = []
    for run in runs:
        cfg = InfluenceConfig(method="gn", n_orth=c["n_orth"], dtype="float64")
        rep = validation_report(run, fit_influence(run, cfg), cfg, self_rank=False, superclass=False, max_tests=c["test_tasks"], exact_agreement=False)
        proper.append(rep["noise"]["proper"])
    cell = sec["tables"][0]["rows"][0][5]
    assert cell.startswith(f"{np.mean(proper):.1f} ± {np.std(proper, ddof=1):.1f} / {c['test_tasks']}"), (cell, proper)

    # unsafe or unknown input: a clear one-line error, exit status 2
    bad = subprocess.run([*cmd, "--only", "e9-nothing"], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60)
    assert bad.returncode == 2 and "unknown experiment" in bad.stderr


@pytest.mark.parametrize("key", list(EXPERIMENTS))
def test_every_experiment_states_paper_and_reductions(key):
    sec = next(s for s in load_sections(REPORT) if s["key"] == key)
    assert sec["paper"] and sec["reductions"] and sec["tables"] and sec["tables"][0]["rows"]
    assert {"cpu", "cores", "torch", "commit", "date"} <= set(sec["environment"]) and sec["seconds"] >= 0 and sec["train_seconds"] > 0
    assert Path(REPORT / "README.md").read_text(encoding="utf-8").count(f"## {int(key.split('-')[0][1:])}. {sec['title']}") == 1


def _tiny_medium(c: dict) -> dict:
    """A medium configuration cut to seconds: the same conv nets with 2 filters, 16 tasks, 3 steps."""
    small = {"filters": 2, "steps": 3, "test_tasks": 8, "n_orth": 64, "meta_batch": 4}
    if isinstance(c["train_tasks"], list):
        small["train_tasks"] = [16]
    else:
        small["train_tasks"] = 16
    if "k" in c:
        small.update(k=4, xis=[-1.0, 1.0])
    if "diag_tasks" in c:
        small.update(steps=4, checkpoint_every=2, diag_tasks=4, train_eval_tasks=4)
    return {**c, **small}


def test_medium_scale_end_to_end(tmp_path, monkeypatch):
    """``reproduce(scale="medium")`` with the medium configurations cut to seconds (conv3 MAML /
    conv4 ProtoNet with 2 filters, 16 tasks): writes ``<key>.medium.json`` for e2, e3, e4, e6 only,
    reuses e2's runs in e3/e4, starts e6 at the initial weights with T > 1 trajectories, and renders
    both scales in one README (medium sub-heading with networks, filters, parameter counts and M;
    a second verdict row per experiment; the numbers of the medium JSON)."""
    import dataclasses
    import shutil

    from metainf_core.reproduce import reproduce
    from metainf_core.reproduce import experiments as ex

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    medium_keys = [k for k, e in EXPERIMENTS.items() if e.medium is not None]
    assert medium_keys == ["e2-noise", "e3-superclass", "e4-one-step", "e6-landscapes"]
    for key in medium_keys:
        monkeypatch.setitem(ex.EXPERIMENTS, key, dataclasses.replace(EXPERIMENTS[key], medium=_tiny_medium(EXPERIMENTS[key].medium)))
    out, work = tmp_path / "report", tmp_path / "work"
    shutil.copytree(REPORT / "data", out / "data")  # the committed report-scale sections, rendered beside the medium ones
    logs: list[str] = []
    reproduce(out, scale="medium", work=work, figures=False, log=logs.append)
    assert sorted(p.name for p in (out / "data").glob("*.medium.json")) == sorted(f"{k}.medium.json" for k in medium_keys)
    assert sum("no medium-scale configuration; skipped" in m for m in logs) == len(EXPERIMENTS) - len(medium_keys)
    medium = {s["key"]: s for s in load_sections(out, "medium")}
    assert all(s["scale"] == "medium" and s["config"] == ex.EXPERIMENTS[k].medium for k, s in medium.items())
    nets = medium["e2-noise"]["networks"]
    assert {a: (n["arch"], n["filters"]) for a, n in nets.items()} == {"maml": ("conv3", 2), "protonet": ("conv4", 2)}
    assert medium["e3-superclass"]["runs_trained"] == 0, "e3 reuses e2's runs"
    assert medium["e4-one-step"]["runs_trained"] == 2, "e4 reuses e2's runs and trains only the two leave-out runs"

    land = medium["e6-landscapes"]
    course = land["tables"][1]["rows"]
    assert [r[1] for r in course if r[0] == "maml"] == [0, 2, 4], "snapshots from the initial weights on"
    assert any(r[5] != r[6] for r in course), "T > 1: trajectory coherence is not gradient coherence"
    assert all(r[2] for r in course), "train accuracy at every snapshot"

    readme = (out / "README.md").read_text(encoding="utf-8")
    assert readme == render_readme(load_sections(out), set(), list(medium.values()))
    for key, sec in medium.items():
        n = int(key.split("-")[0][1:])
        assert f"| {n} | {sec['title']} | " in readme and f"| {n} | {sec['title']} (medium scale) | " in readme
        assert readme.count(f"## {n}. {sec['title']}") == 1
        assert f"--scale medium --only {key}`" in readme and sec["verdict"]["reason"] in readme
        for row in sec["tables"][0]["rows"][:2]:
            assert "| " + " | ".join(str(v) for v in row) + " |" in readme
    q = nets["maml"]["num_parameters"]
    assert f"### Medium scale: conv3 MAML (2 filters, {q:,} parameters), conv4 ProtoNet (2 filters, " in readme
    assert "M = 16" in readme
    # the small-scale sections are untouched by the medium ones
    alone = render_readme(load_sections(out), set())
    assert readme.split("## 1. ")[1].split("## 2. ")[0] == alone.split("## 1. ")[1].split("## 2. ")[0]
    assert readme.split("## 2. ")[1].split("### Medium scale")[0] == alone.split("## 2. ")[1].split("## 3. ")[0]

    again: list[str] = []
    reproduce(out, scale="medium", work=work, figures=False, log=again.append)
    assert sum("up to date" in m for m in again) == len(medium_keys)
