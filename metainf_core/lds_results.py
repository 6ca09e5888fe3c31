"""The committed task-level LDS measurements (``docs/results/lds/*.json``, written by ``lds.task_lds``)
and what they say about a run: which method predicts retraining best on models trained like it.

One place for the question "which method should I believe here?": the report's LDS section
(``reproduce/lds_report.py``), the Compare and Validate pages and the CLI's ``compare`` read it here.

**Matching.** A measurement speaks for a run when the run was *trained like* the measured one: the
same recipe, i.e. equal ``TaskConfig`` and ``TrainConfig`` (defaults filled in for fields a file
predates) apart from ``RECIPE_IGNORED`` — the taskset and training seeds (the LDS retrains with R
seeds of its own and asks how models trained this way behave), the number of test tasks (not used
in training) and bookkeeping (checkpoint interval, history). So dataset, ways/shots/queries, the
number of training tasks and of corrupted ones, learner, network, optimiser, steps and the inner
loop must all agree. A leave-out retraining (``exclude_tasks``) or an imported run (no training
recipe here) matches nothing. Of several matching measurements the one with the highest noise
ceiling is used (it separates the methods best; on a tie the one scoring more methods, then the first
file name).

Numbers are the file's own: mean LDS over its test tasks, its noise ceiling (split-half over seeds,
Spearman–Brown), and the chance band's 95th percentile (``lds.null_band``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.data.base import REPO_ROOT
from metainf_core.words import listed, method_name

RESULTS = REPO_ROOT / "docs" / "results" / "lds"  # one task_lds result a file (absent outside a source checkout)
SUPPLEMENTS = "methods"  # RESULTS' subfolder: methods scored later on a committed measurement's own retrainings
RECIPE_IGNORED = ("seed", "test_tasks", "checkpoint_every", "keep_history")
RANDOM = "random"  # lds.RANDOM: the baseline, never "the best method" (importing lds would pull in training)
LEARNERS = {"maml": "MAML", "protonet": "ProtoNet", "proximal-maml": "proximal MAML"}


def result_files(folder: str | Path = RESULTS) -> list[Path]:
    """The committed result files: ``folder/*.json`` (a measurement each), then ``folder/methods/*.json``
    (more methods scored later on a measurement's own retrainings), each sorted; [] when there are none."""
    folder = Path(folder)
    return [*sorted(folder.glob("*.json")), *sorted((folder / SUPPLEMENTS).glob("*.json"))] if folder.is_dir() else []


def measurement_key(result: Mapping[str, Any]) -> str:
    """What makes two results one set of retrainings: base run, its training, the LDS configuration
    (K, α, R, subset seed, steps) and the test tasks."""
    r = result
    return json.dumps([r["run"]["path"], r["run"]["task_config"], r["run"]["train_config"], r["config"], r["test_tasks"]], sort_keys=True)


def load_results(folder: str | Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every committed measurement in ``folder`` by the name of its first file (``result_files``
    order: a top-level file before its supplements), with the methods of every later file of the same
    ``measurement_key`` merged in, the first file's own first; ``"files"`` lists the files it was read
    from (paths relative to ``folder``); ``skipped`` (does not apply) and ``not_scored`` (applies but too
    costly here) reasons are merged alike. A supplement whose measurement is not committed stands alone.
    {} when there is none."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    by_key: dict[str, dict[str, Any]] = {}
    for path in result_files(folder):
        name, r = path.relative_to(folder).as_posix(), json.loads(path.read_text(encoding="utf-8"))
        key = measurement_key(r)
        base = by_key.get(key)
        if base is None:
            out[name] = by_key[key] = {**r, "files": [name]}
            continue
        base["methods"] = {**base["methods"], **{n: v for n, v in r["methods"].items() if n not in base["methods"]}}
        base["skipped"] = {**r.get("skipped", {}), **base.get("skipped", {})}
        base["not_scored"] = {**r.get("not_scored", {}), **base.get("not_scored", {})}
        base["files"].append(name)
    return out


def recipe(setting: Any) -> dict[str, Any] | None:
    """How a run was trained, as matching compares it (module docstring): a ``Run``, a run's meta or
    a result's ``run`` entry (anything with ``task_config`` and ``train_config``) -> one flat dict;
    None for an imported run or a leave-out retraining."""
    meta = setting.meta if hasattr(setting, "meta") else setting
    if not isinstance(meta, Mapping) or meta.get("imported") or "train_config" not in meta:
        return None
    task, train = TaskConfig.from_dict(meta["task_config"]).to_dict(), TrainConfig.from_dict(meta["train_config"]).to_dict()
    if train["exclude_tasks"]:
        return None
    return {k: v for k, v in {**task, **train}.items() if k not in RECIPE_IGNORED}


def setting_name(run_entry: Mapping[str, Any]) -> str:
    """A measured setting in words: "ProtoNet on synthetic data, 64 training tasks (12 pure-noise)"."""
    task, train = run_entry["task_config"], run_entry["train_config"]
    corrupted = [f"{n} {what}" for n, what in ((task.get("noise_tasks", 0), "pure-noise"), (task.get("label_flip_tasks", 0), "label-flipped")) if n]
    return (f"{LEARNERS.get(train['algo'], train['algo'])} on {task['dataset']} data, {task['train_tasks']} training tasks"
            + (f" ({', '.join(corrupted)})" if corrupted else ""))  # fmt: skip


def measured_settings(folder: str | Path = RESULTS) -> list[str]:
    """The distinct settings measured in ``folder``, in words, in file order."""
    return list(dict.fromkeys(setting_name(r["run"]) for r in load_results(folder).values()))


@dataclass(frozen=True)
class MeasuredLDS:
    """One method's task-level LDS in one committed measurement of a setting like the run's."""

    method: str
    lds: float  # mean over the measurement's test tasks
    sd: float  # over the test tasks
    ceiling: float | None  # noise ceiling; None with one seed per subset
    fraction: float | None  # lds / ceiling, where the ceiling lies above the chance band (else None)
    chance_q95: float  # 95th percentile of the mean LDS of random score tables: chance rarely exceeds it
    source: str  # file name in docs/results/lds
    subsets: int  # K
    seeds: int  # R
    alpha: float
    test_tasks: int
    others: tuple[tuple[str, float], ...] = ()  # every other method's (not random's) mean LDS there, best first

    @property
    def retrainings(self) -> int:
        return self.subsets * self.seeds

    @property
    def above_chance(self) -> bool:
        return self.lds > self.chance_q95

    @property
    def ceiling_above_chance(self) -> bool:
        """Whether retraining agrees with itself beyond chance: else no LDS there can tell a ranking's worth."""
        return self.ceiling is not None and self.ceiling > self.chance_q95

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "others": dict(self.others), "retrainings": self.retrainings, "above_chance": self.above_chance}


def matching_results(setting: Any, folder: str | Path = RESULTS) -> list[tuple[str, dict[str, Any]]]:
    """(file name, result) of every measurement of a setting trained like ``setting``, the highest
    noise ceiling first (module docstring); [] when none matches."""
    mine = recipe(setting)
    if mine is None:
        return []
    found = [(name, r) for name, r in load_results(folder).items() if recipe(r["run"]) == mine]
    def order(item: tuple[str, dict[str, Any]]) -> tuple[float, int]:  # highest ceiling, then most methods; sorted() keeps file order
        return -(item[1].get("ceiling") or {}).get("mean", float("-inf")), -len(ranked_methods(item[1]))

    return sorted(found, key=order)


def solved(row: Mapping[str, Any]) -> bool:
    """Whether a scored method's solve did what it names: False for an iterative solve that stopped
    without converging (CG meeting negative curvature where H + λI is not positive definite), whose
    scores are not that method's."""
    return bool(row.get("details", {}).get("converged", True))


def ranked_methods(result: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(method, mean LDS) of a result's methods, best first; the random baseline, fixed-truncation
    variants (``tlxml-gn@K``, not a method one picks) and unconverged solves (``solved``) left out."""
    rows = [(n, float(m["mean"])) for n, m in result["methods"].items() if n != RANDOM and "@" not in n and solved(m)]
    return sorted(rows, key=lambda x: -x[1])


def _measured(name: str, result: Mapping[str, Any], method: str) -> MeasuredLDS:
    row, cfg, ceiling = result["methods"][method], result["config"], result.get("ceiling")
    return MeasuredLDS(method=method, lds=float(row["mean"]), sd=float(row["sd"]), ceiling=None if ceiling is None else float(ceiling["mean"]),
                       fraction=row.get("fraction_of_ceiling"), chance_q95=float(result["null"]["q95"]), source=name,
                       subsets=int(cfg["subsets"]), seeds=int(cfg["seeds"]), alpha=float(cfg["alpha"]), test_tasks=len(result["test_tasks"]),
                       others=tuple(x for x in ranked_methods(result) if x[0] != method))  # fmt: skip


def best_lds_method(setting: Any, folder: str | Path = RESULTS) -> MeasuredLDS | None:
    """The method with the highest mean LDS in the best measurement (highest noise ceiling) of a
    setting trained like ``setting`` (a ``Run`` or its meta); None when no committed measurement
    matches (module docstring) or it has no method but the random baseline."""
    for name, result in matching_results(setting, folder)[:1]:
        ranked = ranked_methods(result)
        if ranked:
            return _measured(name, result, ranked[0][0])
    return None


def method_lds(setting: Any, method: str, folder: str | Path = RESULTS) -> MeasuredLDS | None:
    """``method``'s LDS in the best measurement of a setting like ``setting`` that scored it; None if none did."""
    for name, result in matching_results(setting, folder):
        if method in result["methods"]:
            return _measured(name, result, method)
    return None


# ---- in words ----------------------------------------------------------------------------------------
def _scale(m: MeasuredLDS) -> str:
    part = "halves" if m.alpha == 0.5 else f"selections of {100 * m.alpha:g} %"
    return f"{m.subsets} random {part} of the training tasks, each retrained {m.seeds} times ({m.retrainings:,} retrainings)"


def _chance(m: MeasuredLDS) -> str:
    return f"random rankings exceed {m.chance_q95:.2f} only one time in 20"


def not_measured_sentence(folder: str | Path = RESULTS) -> str:
    """What is said where no measurement matches."""
    settings = measured_settings(folder)
    head = ("Not yet checked against retraining for models trained like this one. That check retrains the model many times, each "
            "time on a random part of its training tasks, and asks whether the ranking predicts which retrained models do worse "
            "(the task-level LDS of the reproduction report)")
    if not settings:
        return head + "; no such check is committed yet."
    kinds = list(dict.fromkeys(s.split(" (")[0] for s in settings))  # the settings without their corrupted-task counts
    noisy = sum(" (" in s for s in settings)
    mix = "" if not noisy else " (all with corrupted tasks)" if noisy == len(settings) else " (with and without corrupted tasks)"
    return head + f"; so far it has been run only for {listed(kinds)}{mix}."


def validate_sentence(m: MeasuredLDS | None, folder: str | Path = RESULTS) -> str:
    """The Validate page's plain statement of the app's ranking method's LDS (``method_lds``)."""
    if m is None:
        return not_measured_sentence(folder)
    text = (f"Checked against retraining: a model trained like this one was retrained on {_scale(m)}. The order of their test "
            f"losses that the ranking by {method_name(m.method)} predicts agrees with the order retraining gave at {m.lds:.2f} "
            f"(a rank correlation, averaged over {m.test_tasks} test tasks: 1 = the same order, 0 = no relation; {_chance(m)}).")  # fmt: skip
    if not m.above_chance:
        text += " That is no better than chance: here retraining does not confirm the ranking."
    if m.ceiling is not None:
        text += (f" Retraining is itself noisy: two independent rounds of these retrainings would agree with each other at about "
                 f"{m.ceiling:.2f} (the noise ceiling)")
        text += f", so the ranking reaches {m.fraction:.2f} of that." if m.fraction is not None and m.above_chance else "."
        if not m.ceiling_above_chance:
            text += f" That is {_too_noisy(m)}"
    return text


def _too_noisy(m: MeasuredLDS) -> str:
    """Said where retraining does not agree with itself beyond chance (``ceiling_above_chance`` False)."""
    return (f"no more than random rankings reach, so with {m.seeds} retrainings each the check cannot yet tell how far to "
            "trust any ranking here: more retrainings would be needed.")


def compare_sentence(best: MeasuredLDS | None, folder: str | Path = RESULTS) -> str:
    """The Compare page's statement of which method's ranking predicts retraining best (``best_lds_method``)."""
    if best is None:
        return not_measured_sentence(folder)
    head = f"Checked against retraining on models trained like this one ({_scale(best)}"
    ceiling = "" if best.ceiling is None else f"; retraining's own noise ceiling {best.ceiling:.2f}"
    noisy = "" if best.ceiling is None or best.ceiling_above_chance else f" That noise ceiling is {_too_noisy(best)}"
    if not best.above_chance:
        return (f"{head}{ceiling}): no method predicts it better than chance — the highest LDS, {method_name(best.method)}'s "
                f"{best.lds:+.2f}, is below the {best.chance_q95:.2f} that random rankings exceed one time in 20.{noisy}")  # fmt: skip
    others = ", ".join(f"{method_name(n)} {v:+.2f}" for n, v in best.others)
    return (f"{head}{ceiling}), **{method_name(best.method)}** has the highest LDS: {best.lds:+.2f} ({_chance(best)})"
            + (f"; the others: {others}." if others else ".") + noisy)  # fmt: skip


def lds_summary(setting: Any, folder: str | Path = RESULTS) -> dict[str, Any]:
    """What the CLI's ``compare`` prints about LDS: the best method's record (or None) and the sentence."""
    best = best_lds_method(setting, folder)
    return {"best": None if best is None else best.to_dict(), "text": compare_sentence(best, folder).replace("**", "")}
