"""Removal fidelity (seed 001 §6.2, Table 1): how close cheap removal estimates come to retraining.

For removed training-task sets B (e.g. several random draws of k tasks, as the paper "randomly
removes some tasks"), the test accuracy (mean ± sd over the draws, 95% interval) and runtime of:

- ``retrain``: retraining from scratch without B (``leave_out.leave_out_retrain``), once per training
  seed in ``retrain_seeds``; the spread over seeds gives the *retraining interval*;
- ``task-if``: ω̂₋B ≈ ω̂ + Σ_{j∈B} r_j with r_j = ω̂₋ⱼ − ω̂ ≈ (1/M) H_T⁺ g_j (seed 001 Thm 4.3; the
  1/M is task j's share of the meta-objective, so removing B = up-weighting each j ∈ B by ε = −1/M).
  Proximal MAML: the implicit total-derivative fit; MAML / ProtoNet: TLXML-exact with damping and
  every positive eigen-direction (``compare`` module docstring). Both from compare.py's cache;
- ``direct-if``: the same sum with partial derivatives only (seed 001 eq. 6–7; refused for ProtoNet);
- ``tlxml-exact`` / ``tlxml-gn``: the one-step edit ξ = −1 on B (TLXML Eq. 13, ``edit.edited_params``),
  self-rank truncation, no damping (MAML / ProtoNet only);
- ``unedited``: ω̂ itself.

Runtimes: ``fit_seconds`` is the one-off fit (recorded when it was computed, also when it now
comes from the disk cache), amortised over all removals; ``update_seconds`` is the mean time to
form ω̂₋B from the fit; evaluation is not counted for any method. ``retrain`` seconds are one
training run (as ``leave_out_retrain`` measures it). Per method also: ‖ω̂_method − ω̂_retrain‖ to the
retraining with the run's own seed (started from the same initialisation, so comparable in weight
space; ``distance_unedited`` is ω̂'s for reference) and the error of the predicted test-loss change.
First-order estimates describe the removal at ω̂; retraining from scratch also re-runs the whole
(non-convex, unfinished) optimisation, so exact agreement is not expected (METHODS §8).

``fidelity_report(run, config.FidelityConfig(...))`` draws the random removal sets and runs it all, as
``python -m metainf_core fidelity`` does (its options are FidelityConfig's fields).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metainf_core.compare import CompareConfig, get_method, removal_vectors, tlxml_config
from metainf_core.config import REMOVAL_ESTIMATORS, FidelityConfig, check_removal_estimates
from metainf_core.detect import random_removal_sets
from metainf_core.edit import EditSpec, apply_delta, edited_params
from metainf_core.evaluation import TaskMetrics, mean_ci95
from metainf_core.exceptions import ConfigError
from metainf_core.fits import cache_entry, fit_influence
from metainf_core.influence.flat import ParamLayout
from metainf_core.learners import Params
from metainf_core.leave_out import leave_out_retrain
from metainf_core.service import Run, open_run

# (stage, done, total): "fit:<method>", "estimates", "retrain"
FidelityProgress = Callable[[str, int, int], None]
ESTIMATORS = REMOVAL_ESTIMATORS
DEFAULT_DAMPING = FidelityConfig.damping
Estimate = Callable[[np.ndarray], Params]  # removal set B -> ω̂₋B


# ---- estimators -----------------------------------------------------------------------------
def removal_sum(removals: Tensor, ids: Sequence[int] | np.ndarray) -> Tensor:
    """Σ_{j∈B} r_j: the first-order ω̂₋B − ω̂ from per-task removal rows (M × q)."""
    rows = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(-1))
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= removals.shape[0]):
        raise ConfigError(f"removed task ids must lie in 0..{removals.shape[0] - 1}")
    return removals[rows].sum(0)


def _fit_estimator(run: Run, name: str, cfg: CompareConfig) -> tuple[Estimate, dict[str, Any]]:
    """The fitted estimator ``name`` (B -> ω̂₋B) and details: ``fit_seconds`` (recorded when the fit
    was computed, also when it now comes from the disk cache) and ``load_seconds`` (this call)."""
    started = time.time()
    if name in ("task-if", "direct-if"):
        removals, details = removal_vectors(run, name, cfg)
        recorded = details.pop("fit_seconds", None)
        if recorded is None:  # MAML / ProtoNet task-IF: the damped TLXML fit records it
            recorded = cache_entry(run, tlxml_config("exact", cfg, damping=cfg.damping)).load()[1].get("fit_seconds")

        def estimate(ids: np.ndarray) -> Params:
            return apply_delta(run.params, removal_sum(removals, ids))

    else:
        icfg = tlxml_config(name.removeprefix("tlxml-"), cfg)
        inf = fit_influence(run, icfg)
        recorded = cache_entry(run, icfg).load()[1].get("fit_seconds")
        details = {"truncation": inf.truncation, "num_negative": inf.num_negative, "xi": -1.0}

        def estimate(ids: np.ndarray) -> Params:
            return edited_params(run, inf, EditSpec(block=tuple(int(j) for j in ids), xi_block=-1.0))

    load = time.time() - started
    details.update(fit_seconds=round(float(load if recorded is None else recorded), 3), load_seconds=round(load, 3))
    return estimate, details


# ---- retraining -----------------------------------------------------------------------------
def with_train_seed(run: Run, seed: int) -> Run:
    """The run with its recorded training seed replaced, so ``leave_out_retrain`` retrains under ``seed``."""
    meta = {**run.meta, "train_config": {**run.meta["train_config"], "seed": int(seed)}}
    return dataclasses.replace(run, checkpoint=dataclasses.replace(run.checkpoint, meta=meta))


def _retrain_all(run, sets, seeds, steps, retrain_dir, progress) -> tuple[list[list[Run]], list[list[float]]]:
    """Retrained runs [draw][seed] and their seconds; checkpoints under ``retrain_dir`` (a temporary
    folder when None, loaded into memory before it is deleted)."""
    tmp = tempfile.TemporaryDirectory(prefix="metainf-fidelity-") if retrain_dir is None else None
    base = Path(tmp.name if tmp is not None else retrain_dir)
    runs: list[list[Run]] = []
    secs: list[list[float]] = []
    try:
        for d, ids in enumerate(sets):
            runs.append([])
            secs.append([])
            for s in seeds:
                res = leave_out_retrain(with_train_seed(run, s), ids, base / f"draw{d}-seed{s}", steps)
                retrained = open_run(res["out"])
                _ = retrained.params  # load the weights before a temporary folder goes
                runs[-1].append(retrained)
                secs[-1].append(float(res["seconds"]))
                if progress is not None:
                    progress("retrain", d * len(seeds) + len(runs[-1]), len(sets) * len(seeds))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return runs, secs


# ---- summaries ------------------------------------------------------------------------------
def _flat(params: Params) -> Tensor:
    return ParamLayout.from_params(params).flatten(params).detach().double()


def _accuracy_stats(acc: np.ndarray) -> dict[str, Any]:
    """Mean, sd (ddof 1) and 95% interval half-width over the draws of the test accuracy."""
    mean, ci = mean_ci95(acc)
    return {"accuracy_mean": mean, "accuracy_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
            "accuracy_ci95": ci, "accuracies": [float(a) for a in acc]}  # fmt: skip


def _row(metrics: list[TaskMetrics], params: list[Params], ref: dict[str, Any]) -> dict[str, Any]:
    """A method's accuracy over the draws and how far it is from retraining's (``ref``)."""
    acc = np.array([m.summary()["accuracy"] for m in metrics])
    loss = np.array([m.summary()["loss"] for m in metrics])
    dist = [float((_flat(p) - w).norm()) for p, w in zip(params, ref["weights"], strict=True)]
    lo, hi = ref["interval"]
    return {
        **_accuracy_stats(acc), "loss_mean": float(loss.mean()),
        "distance_to_retrain": float(np.mean(dist)),
        "relative_distance": float(np.mean(np.array(dist) / np.array(ref["distance_unedited"]))),
        "loss_change_error": float(np.mean(np.abs((loss - ref["before_loss"]) - ref["loss_change"]))),
        "inside_retrain_interval": bool(lo <= acc.mean() <= hi),
    }  # fmt: skip


def _retrain_row(run: Run, runs: list[list[Run]], secs: list[list[float]], seeds: Sequence[int], before: TaskMetrics):
    """Retraining's row (accuracy over draws and seeds, interval = mean ± 1.96 seed-sd) and the
    reference other rows are measured against."""
    acc = np.array([[r.evaluate().summary()["accuracy"] for r in row] for row in runs])  # draws × seeds
    loss = np.array([[r.evaluate().summary()["loss"] for r in row] for row in runs])
    seed_sd = float(np.sqrt(np.mean(np.var(acc, axis=1, ddof=1)))) if acc.shape[1] > 1 else 0.0
    mean = float(acc.mean())
    own = seeds.index(run.meta["train_config"]["seed"]) if run.meta["train_config"]["seed"] in seeds else 0
    w_hat = _flat(run.params)
    weights = [_flat(row[own].params) for row in runs]
    row = {
        **_accuracy_stats(acc.mean(1)), "per_seed": acc.tolist(), "seeds": list(seeds), "seed_sd": seed_sd,
        "interval": [mean - 1.96 * seed_sd, mean + 1.96 * seed_sd], "loss_mean": float(loss.mean()),
        "seconds": float(np.mean(secs)), "seconds_sd": float(np.std(secs, ddof=1)) if np.size(secs) > 1 else 0.0,
        "distance_seed": int(seeds[own]), "distance_unedited": float(np.mean([float((w - w_hat).norm()) for w in weights])),
    }  # fmt: skip
    before_loss = float(before.summary()["loss"])
    ref = {"weights": weights, "interval": row["interval"], "before_loss": before_loss,
           "loss_change": loss.mean(1) - before_loss, "distance_unedited": [float((w - w_hat).norm()) for w in weights]}  # fmt: skip
    return row, ref


def _speedup(retrain_seconds: float, fit: float, update: float, n: int) -> dict[str, float]:
    """Retraining time over the method's, for one removal (fit + update), amortised over ``n``, update only."""
    def ratio(t: float) -> float:
        return float(retrain_seconds / t) if t > 0 else float("inf")

    return {"one_removal": ratio(fit + update), "amortised": ratio(fit / n + update), "update_only": ratio(update)}


# ---- report ---------------------------------------------------------------------------------
def removal_fidelity(
    run: Run, removal_sets: Sequence[Sequence[int]], *, methods: Sequence[str] = ESTIMATORS,
    retrain_seeds: Sequence[int] = FidelityConfig.retrain_seeds, retrain_steps: int | None = None,
    retrain_dir: str | Path | None = None, damping: float = DEFAULT_DAMPING, dtype: str = "float64",
    progress: FidelityProgress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Seed 001 Table 1 for one run: per method, test accuracy over the removal sets vs retraining
    without them, runtimes and distances (module docstring). Methods that do not apply to the
    learner (or size) are listed under ``skipped`` with compare.py's reason."""
    m = len(run.train_tasks)
    sets = [np.unique(np.asarray(b, dtype=np.int64).reshape(-1)) for b in removal_sets]
    if not sets or any(len(b) == 0 or b[0] < 0 or b[-1] >= m or len(b) >= m for b in sets):
        raise ConfigError(f"removal sets must be non-empty proper subsets of 0..{m - 1}")
    seeds = [int(s) for s in retrain_seeds]
    check_removal_estimates(methods, seeds)
    # removal vectors need M solves: dense only, so above q = 5,000 task-IF and direct IF are skipped with why
    cfg = CompareConfig(damping=damping, dtype=dtype, solver="dense")
    before = run.evaluate()
    out: dict[str, Any] = {
        "num_tasks": m, "removal_sets": [b.tolist() for b in sets], "sizes": sorted({len(b) for b in sets}),
        "config": {**cfg.to_dict(), "retrain_steps": retrain_steps or run.meta["train_config"]["steps"], "retrain_seeds": seeds},
        "rows": {}, "skipped": {},
    }  # fmt: skip
    runs, secs = _retrain_all(run, sets, seeds, retrain_steps, retrain_dir, progress)
    out["rows"]["retrain"], ref = _retrain_row(run, runs, secs, seeds, before)
    for name in methods:
        reason = get_method(name).skip_reason(run, cfg)
        if reason:
            out["skipped"][name] = reason
            continue
        if progress is not None:
            progress(f"fit:{name}", 0, 1)
        estimate, details = _fit_estimator(run, name, cfg)
        params, update = [], []
        for d, ids in enumerate(sets):
            t = time.perf_counter()
            params.append(estimate(ids))
            update.append(time.perf_counter() - t)
            if progress is not None:
                progress("estimates", d + 1, len(sets))
        row = _row([run.evaluate(p) for p in params], params, ref)
        row.update(details, update_seconds=float(np.mean(update)))
        row["speedup"] = _speedup(out["rows"]["retrain"]["seconds"], row["fit_seconds"], row["update_seconds"], len(sets))
        out["rows"][name] = row
    out["rows"]["unedited"] = {**_row([before] * len(sets), [run.params] * len(sets), ref), "fit_seconds": 0.0, "update_seconds": 0.0}
    return out


def fidelity_report(
    run: Run, config: FidelityConfig = FidelityConfig(), *, retrain_dir: str | Path | None = None,
    progress: FidelityProgress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`removal_fidelity` over ``config.draws`` random sets of ``config.k`` training tasks
    (``detect.random_removal_sets`` with ``config.seed``): what ``python -m metainf_core fidelity`` prints."""
    sets = random_removal_sets(len(run.train_tasks), config.k, config.draws, config.seed)
    return removal_fidelity(
        run, sets, methods=config.methods, retrain_seeds=config.retrain_seeds, retrain_steps=config.retrain_steps,
        retrain_dir=retrain_dir, damping=config.damping, progress=progress,
    )  # fmt: skip
