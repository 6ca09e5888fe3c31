"""Report experiment e8: the task-level LDS (issue 27) of every method on every committed measurement.

Built from ``docs/results/lds/*.json`` (``lds.task_lds`` results, made by ``python -m metainf_core lds``)
and the methods scored later on their retrainings (``methods/*.json``: fixed TLXML truncations, EK-FAC,
dattri, CG; ``lds_results.load_results``); rendering retrains nothing. A *measurement* is one set of
retrainings: the files that share a base run and an LDS configuration (K subsets of fraction α, R
seeds, the subset seed) are one, their methods pooled. The section gives each measurement's noise
ceiling and chance band, each method's mean LDS ± sd over test tasks with its fraction of the
ceiling, how each approximate or peer solve went, the measurements that differ in one factor side by
side, a bar chart, and which settings (the demos', Omniglot) are not measured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metainf_core.api import DEMO_DIR
from metainf_core.data.base import REPO_ROOT
from metainf_core.lds_results import LEARNERS, RANDOM, best_lds_method, load_results, ranked_methods, solved
from metainf_core.reproduce.runs import is_complete

Section = dict[str, Any]
TLXML = ("tlxml-gn", "tlxml-exact")  # the paper's methods, whose claim the verdict tests
FACTORS = {  # what one try changed: (column name, value from a measurement)
    "learner": lambda m: LEARNERS.get(m["run"]["train_config"]["algo"], m["run"]["train_config"]["algo"]),
    "noise tasks": lambda m: m["run"]["task_config"].get("noise_tasks", 0),
    "α": lambda m: m["config"]["alpha"],  # the fraction of training tasks each subset keeps
    "R": lambda m: m["config"]["seeds"],  # training seeds per subset
}


def measurements(results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The measurements of ``load_results`` (one per set of retrainings, its files' methods already
    joined there), ordered by learner, noise tasks, α and R."""
    return sorted(results.values(), key=lambda m: [get(m) for get in FACTORS.values()])


def label(m: Mapping[str, Any]) -> str:
    """A measurement's short name: "ProtoNet, 12 noise, α 0.5, R 32"."""
    noise = m["run"]["task_config"].get("noise_tasks", 0)
    return f"{FACTORS['learner'](m)}, {f'{noise} noise' if noise else 'no noise'}, α {m['config']['alpha']:g}, R {m['config']['seeds']}"


def _factor_text(name: str, value: Any) -> str:
    return str(value) if name == "learner" else f"{value} {name}" if name == "noise tasks" else f"{name} {value:g}"


def _ceiling(m: Mapping[str, Any]) -> float | None:
    return None if m.get("ceiling") is None else float(m["ceiling"]["mean"])


UNSOLVED = "†"  # marks the LDS of a solve that stopped without converging (lds_results.solved)


def _lds_cell(row: Mapping[str, Any]) -> str:
    frac = row.get("fraction_of_ceiling")
    return f"{row['mean']:+.3f} ± {row['sd']:.3f}" + ("" if frac is None else f" ({frac:.2f})") + ("" if solved(row) else f" {UNSOLVED}")


def method_order(ms: list[dict[str, Any]]) -> list[str]:
    """Every method scored in any measurement (fixed truncations ``@K`` aside), in first-seen order, random last."""
    names = dict.fromkeys(n for m in ms for n in m["methods"] if "@" not in n)
    return [n for n in names if n != RANDOM] + ([RANDOM] if RANDOM in names else [])


def try_rows(ms: list[dict[str, Any]]) -> list[list[Any]]:
    """Each measurement beside the next one (in that factor's order) of the same data, network and
    training that differs from it in exactly one of ``FACTORS``: what the change did to the noise
    ceiling and to the best method's LDS."""
    rows = []
    for a in ms:
        for f, get in FACTORS.items():
            others = [g for g in FACTORS if g != f]
            later = [b for b in ms if _base(b) == _base(a) and b["config"]["subsets"] == a["config"]["subsets"] and get(b) > get(a)
                     and all(FACTORS[g](b) == FACTORS[g](a) for g in others)]  # fmt: skip
            if not later:
                continue
            b = min(later, key=get)
            held = ", ".join(_factor_text(g, FACTORS[g](a)) for g in others)
            rows.append([f, held, f"{get(a)} → {get(b)}", " → ".join(_fmt(_ceiling(x)) for x in (a, b)),
                         f"{_best_text(a)} → {_best_text(b)}"])  # fmt: skip
    return rows


def _base(m: Mapping[str, Any]) -> dict[str, Any]:
    """A measurement's data, network and training apart from the learner and the noise tasks (two of ``FACTORS``)."""
    task = {k: v for k, v in m["run"]["task_config"].items() if k != "noise_tasks"}
    return {**task, **{k: v for k, v in m["run"]["train_config"].items() if k != "algo"}}


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def best_of(m: Mapping[str, Any]) -> tuple[str, float] | None:
    """The method (not random, not a fixed truncation, not an unconverged solve) with the highest mean
    LDS in a measurement; None when it scored no such method."""
    return next(iter(ranked_methods(m)), None)


def _best_text(m: Mapping[str, Any]) -> str:
    best = best_of(m)
    return "no solved method" if best is None else f"{best[0]} {best[1]:+.3f}"


def solver_text(details: Mapping[str, Any]) -> str | None:
    """How an approximate or outside method was solved, from its stored details (``lds.task_lds``):
    CG's convergence, EK-FAC's residual against the exact solve, the peer library and its attributor;
    None for the methods solved exactly here."""
    d = details
    if d.get("solver") == "cg":
        how = (f"converged in {d['iterations']} iterations" if d["converged"]
               else f"stopped at iteration {d['iterations']} without converging ({d['note']})" if d.get("note")
               else f"not converged after {d['iterations']} iterations")  # fmt: skip
        return f"conjugate gradient at λ = {d['damping']:g}: {how}; relative residual {d['relative_residual']:.2f}"
    if "residual_against" in d:
        return (f"EK-FAC ({d['kronecker_layers']} Kronecker-factored layers, {d['diagonal_parameters']} parameters diagonal) at λ = {d['damping']:g}: "
                f"relative residual {d['relative_residual']:.2f} against the solve with the exact {d['residual_against'].removeprefix('exact ')}")  # fmt: skip
    if "library" in d and "projection_dim" in d:  # TRAK: no Hessian, so no damping
        return f"{d['library']}, its {d['attributor']} attributor, gradients projected to {d['projection_dim']} dimensions (seed {d['projection_seed']})"
    if "library" in d:
        return f"{d['library']}, its {d['attributor']} attributor, at λ = {d['damping']:g}"
    return None


def why_not_scored(ms: list[dict[str, Any]]) -> list[list[str]]:
    """(method, measurements, reason) for every recorded skip or cost reason, one row per method and reason."""
    rows: dict[tuple[str, str], list[str]] = {}
    for m in ms:
        for kind in ("skipped", "not_scored"):
            for method, why in m.get(kind, {}).items():
                rows.setdefault((method, why), []).append(label(m))
    return [[method, "; ".join(labels), why] for (method, why), labels in rows.items()]


def lds_verdict(ms: list[dict[str, Any]]) -> dict[str, str]:
    """TLXML's scores should predict retraining: where the noise ceiling lies above the chance band
    (there is something to predict), is the better TLXML method's mean LDS above it too?"""
    room = [m for m in ms if (_ceiling(m) or -1.0) > m["null"]["q95"] and any(t in m["methods"] for t in TLXML)]
    hits = [m for m in room if max(m["methods"][t]["mean"] for t in TLXML if t in m["methods"]) > m["null"]["q95"]]
    top = max(ms, key=lambda m: _ceiling(m) or -1.0)
    best = best_of(top)
    why = (f"the better TLXML method's LDS lies above the chance band on {len(hits)} of the {len(room)} measurements whose noise ceiling "
           f"does; the highest ceiling, {_fmt(_ceiling(top))} ({label(top)}), has "
           + ("no solved method" if best is None else f"{best[0]} best at {best[1]:+.3f}"))  # fmt: skip
    if room and len(hits) == len(room):
        return {"label": "reproduced", "reason": why}
    return {"label": "partly" if hits else "not reproduced", "reason": why}


def retraining_folder(folder: Path, run_name: str) -> Path:
    """Where a setting's LDS retrainings are committed while they accumulate over sessions
    (``lds --work``; weights, meta and tasksets, without snapshots or optimiser state:
    ``docs/results/lds/runs/.gitignore``; an unfinished run there restarts from step 0)."""
    return Path(folder) / "runs" / run_name


def demo_rows(folder: Path, subsets: int, seeds: int, demo_dir: Path = DEMO_DIR) -> list[str]:
    """For each bundled demo: measured (in which file) or not, and what K·R retrainings would cost at its recorded training time."""
    out = []
    for meta_path in sorted(demo_dir.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        found = best_lds_method(meta, folder)
        tc, tr = meta["task_config"], meta["train_config"]
        what = f"the {meta_path.parent.name} demo's setting ({tc['dataset']}, {tr['arch']}×{tr['filters']}, M = {tc['train_tasks']}, {tr['steps']} steps)"
        seconds = meta.get("train_seconds_this_session")
        n = subsets * seeds
        cost = (f" (its meta.json records {seconds / 60:.1f} min of training; K = {subsets} × R = {seeds} retrainings at that pace: "
                f"{n * seconds / 3600:.1f} h)") if seconds else ""  # fmt: skip
        work = retraining_folder(folder, meta_path.parent.name)
        done = sum(is_complete(d) for d in (work / "runs").iterdir()) if (work / "runs").is_dir() else 0
        started = (f"; {done} retrainings finished so far, committed in `{work.relative_to(REPO_ROOT) if work.is_relative_to(REPO_ROOT) else work}` "
                   "and resumed there by `lds --work`") if done else ""  # fmt: skip
        out.append(f"{what}: {'measured in ' + found.source if found else 'not measured' + cost + started}")
    return out


def lds_report(c: dict[str, Any], ctx: Any) -> Section:
    """The section from the committed results in ``c["folder"]`` (relative to the repository)."""
    folder = REPO_ROOT / c["folder"]
    results = load_results(folder)
    ms = measurements(results)
    methods = method_order(ms)
    for m in ms:  # the retrainings each measurement used, once per distinct run (nested measurements share them)
        for k in range(m["config"]["subsets"]):
            for r in range(m["config"]["seeds"]):
                key = f"lds:{m['run']['path']}:a{m['config']['alpha']:g}:s{m['config']['subset_seed']}:{m['config']['steps']}:k{k}:r{r}"
                ctx.used[key] = float(m["retraining"]["train_seconds_mean"])
    settings = [[label(m), ", ".join(m["files"]), f"{m['run']['task_config']['dataset']} ({m['run']['train_config']['arch']})",
                 f"{m['num_train_tasks']} ({m['run']['task_config'].get('noise_tasks', 0)} noise)", m["run"]["train_config"]["steps"],
                 len(m["test_tasks"]), m["config"]["subsets"], f"{m['config']['alpha']:g}", m["config"]["seeds"],
                 m["config"]["subsets"] * m["config"]["seeds"],
                 "—" if m.get("ceiling") is None else f"{m['ceiling']['mean']:.3f} ± {m['ceiling']['sd']:.3f}",
                 "—" if (_ceiling(m) or 0.0) <= 0 else f"{m['ceiling']['attainable']:.3f}", f"{m['null']['q95']:+.3f}"]
                for m in ms]  # fmt: skip
    lds_rows = [[label(m), _fmt(_ceiling(m)), *(_lds_cell(m["methods"][n]) if n in m["methods"] else ("skipped" if n in m["skipped"]
                 else "not run" if n in m.get("not_scored", {}) else "—") for n in methods)] for m in ms]  # fmt: skip
    why_rows = why_not_scored(ms)
    fixed = [[label(m), n, _lds_cell(v)] for m in ms for n, v in m["methods"].items() if "@" in n]
    solves = [[label(m), n, how, _lds_cell(v)] for m in ms for n, v in m["methods"].items() if (how := solver_text(v.get("details", {})))]
    tables = [
        {"title": "Measurements: K subsets of α·M training tasks, each retrained with R seeds; noise ceiling (split-half over seeds, Spearman–Brown, "
                  "mean ± sd over test tasks), √ceiling (the correlation a noise-free predictor could reach) and the chance band (95th percentile "
                  "of the mean LDS of 200 random score tables)",
         "columns": ["measurement", "files", "data (network)", "M (noise tasks)", "meta-batches", "test tasks", "K", "α", "R", "retrainings",
                     "noise ceiling", "√ceiling", "chance 95 %"], "rows": settings},
        {"title": "LDS per method: mean ± sd over test tasks (fraction of the noise ceiling, where the ceiling lies above the chance band); "
                  f"skipped = the method does not apply to the learner or this network's size, not run = it applies but costs too much here "
                  f"(why: the table after the next), — = not scored, {UNSOLVED} = its iterative solve stopped without converging "
                  "(next table), so the numbers are not that method's and no verdict or 'best method' counts them",
         "columns": ["measurement", "noise ceiling", *methods], "rows": lds_rows},
        {"title": "What each try showed: measurements of the same data and network that differ in one factor (noise ceiling; best method's LDS)",
         "columns": ["changed", "held fixed", "from → to", "noise ceiling", "best method"], "rows": try_rows(ms)},
    ]  # fmt: skip
    if why_rows:
        tables.append({"title": "Why a method is skipped or not run on a measurement (the reason recorded with it)",
                       "columns": ["method", "measurements", "why"], "rows": why_rows})  # fmt: skip
    if fixed:
        tables.append({"title": "TLXML at fixed truncations (K eigen-directions kept; the registry method uses its self-rank choice)",
                       "columns": ["measurement", "method", "LDS (fraction of ceiling)"], "rows": fixed})  # fmt: skip
    if solves:
        tables.append({"title": "Methods solved approximately or by a peer library, on the same retrainings (files in methods/): how each solve went",
                       "columns": ["measurement", "method", "solve", "LDS (fraction of ceiling)"], "rows": solves})  # fmt: skip
    datasets = sorted({m["run"]["task_config"]["dataset"] for m in ms})
    nets = sorted({m["run"]["train_config"]["arch"] for m in ms})
    ks, tests = sorted({m["config"]["subsets"] for m in ms}), sorted({len(m["test_tasks"]) for m in ms})
    trained = sorted({(m["num_train_tasks"], m["run"]["train_config"]["steps"]) for m in ms})
    figure = {"name": "lds", "kind": "bar", "title": "Task-level LDS per method, with the noise ceiling (◆) and the chance band (–)",
              "x_title": "measurement", "y_title": "mean LDS over test tasks (± sd)", "categories": [label(m) for m in ms],
              "series": [{"name": n, "y": [m["methods"][n]["mean"] if n in m["methods"] else None for m in ms],
                          "error": [m["methods"][n]["sd"] if n in m["methods"] else None for m in ms]} for n in methods],
              "markers": [{"name": "noise ceiling", "y": [_ceiling(m) for m in ms], "symbol": "diamond"},
                          {"name": "chance band (95 %)", "y": [m["null"]["q95"] for m in ms], "symbol": "line-ew-open"}]}  # fmt: skip
    seeds = sorted({m["config"]["seeds"] for m in ms})
    seed_text = sorted({(m["config"]["seeds"], m["train_seeds"][0], m["train_seeds"][-1]) for m in ms})
    return {
        "title": "Task-level LDS (ground truth)",
        "paper": "The linear datamodeling score (TRAK, Park et al. 2023) is the field's check of an attribution against retraining: dattri's "
                 "benchmark reports CG influence ≈ 0.26 and TRAK-50 ≈ 0.45 (MNIST MLP), kronfluence EK-FAC 0.32 (RTE/BERT) and 0.44 "
                 "(WikiText-2/GPT-2), at the level of training examples. No paper reports a task-level LDS for meta-learning (TLXML §5 "
                 "validates by self-rank and planted noise tasks, seed 001 by removal accuracy), so the claim tested is TLXML's own: its "
                 "task scores predict what training without the tasks does.",
        "reductions": [f"measured only on {', '.join(datasets)} data with {', '.join(nets)} networks, "
                       + ", ".join(f"M = {m} trained for {st} meta-batches" for m, st in trained),
                       *demo_rows(folder, min(ks), min(seeds)),
                       "no Omniglot setting measured" if "omniglot" not in datasets else "Omniglot measured",
                       (f"K = {', '.join(map(str, ks))} subsets and R = {', '.join(map(str, seeds))} seeds per subset "
                        f"(kronfluence: 100 masks × 5 seeds), {', '.join(map(str, tests))} test tasks")],
        "tables": tables,
        "figures": [figure],
        "verdict": lds_verdict(ms),
        "data": f"{', '.join(datasets)} (committed results in {c['folder']}/)",
        "seeds_text": "; ".join(f"R = {r}: training seeds {a}–{b}" for r, a, b in seed_text),
    }  # fmt: skip
