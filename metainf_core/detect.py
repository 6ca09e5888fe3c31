"""Harmful-task detection (seed 001 §6.3; METHODS §5 "label-flip tasks"): inspect training tasks
in influence order and count how many corrupted ones turn up, then remove the worst ones.

Which score orders the inspection (``score=``):

- ``"mean"`` (default): helpfulness of every training task for the *whole test taskset*
  (``Target`` = all test tasks), i.e. the average over the test tasks of
  helpfulness(i, j) = −I_perf(i, j). Tasks are inspected in **increasing** helpfulness: the most
  harmful first (README sign convention: positive = the task helped).
- ``"self"``: self-influence, training task j as its own target, (1/M) g_jᵀ H⁺ g_j with
  g_j = ∇_ω L_j (the diagonal of the train × train score matrix; the classic mislabel detector of
  Koh & Liang). With a positive semi-definite H⁺ it is ≥ 0, so "harmful first" has no meaning;
  tasks are inspected in **decreasing** self-influence (the ones the model fits least like the
  others first). :func:`detection_scores` returns the negated value so that every score kind is
  inspected in increasing order.
- ``"rank"``: per-test-task ranks, averaged: for each test task i, the rank of helpfulness(i, j)
  among the M training tasks (0 = most harmful, ties share their mean rank), averaged over all
  test tasks; inspected in increasing mean rank. The proper-test view of TLXML 5.1.2 (each test
  task votes once, whatever the scale of its scores); costs a T × M score matrix.

Measured (see ``bench/bench_detect.py`` and ``tests/test_detect.py``): ``"mean"`` can come out near
random (AUC 0.545 on the fashion-mnist ProtoNet demo's earlier weights, 0.567 on the demo retrained 2026-12-02
(self 0.871, rank 0.555), 0.25–0.79 over small synthetic MAML runs) because
a few test tasks with large gradients dominate the average; ``"self"`` gave 0.87 on the demo and
0.58–0.91 on the synthetic runs; ``"rank"`` 0.52 on the demo and 0.65–0.92 on the synthetic runs.
Finding corrupted tasks and raising test accuracy are different goals: on the demo, removing the
64/128 lowest ``"mean"`` tasks by the ξ = −1 edit raised test accuracy by +1.35/+1.46 points (paired
95% interval ±0.8) while the ``"self"`` order (which finds most noise tasks) and even removing exactly
the 64 noise tasks changed it by < 0.5 points. ``"mean"`` stays the default (it is the score the edit
optimises); use ``"self"`` to find corrupted tasks.

Ties (equal scores) are handled by their *expectation over a uniformly random order within
the tie*: inspecting t of a tied group of g tasks holding c corrupted ones finds c·t/g of them,
so the curve is linear across a tie and never depends on task ids.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from metainf_core.config import InfluenceConfig
from metainf_core.edit import EditSpec, edited_params
from metainf_core.evaluation import TaskMetrics, mean_ci95, stack_metrics, unstack_metrics
from metainf_core.exceptions import ConfigError
from metainf_core.fits import edit_metrics_entry, fit_influence, removal_entry
from metainf_core.influence import TaskInfluence
from metainf_core.leave_out import leave_out_retrain
from metainf_core.ranking import test_score_matrix
from metainf_core.service import Run
from metainf_core.words import (
    SIGNIFICANT_SD,
    chance_words,
    chance_z,
    flipped_images,
    order_words,
    same_way_reading,
    same_way_words,
    two_comparisons,
    z_verdict,
)

# (stage, done, total): "curvature" and "gradients" (the fit), "edits", "retrain"
DetectProgress = Callable[[str, int, int], None]
# (blocked task ids, ξ) -> test metrics of ω̂ + ξ Σ I_meta over them (``blocked_evaluation``)
BlockedEvaluation = Callable[[np.ndarray, float], TaskMetrics]
SCORE_KINDS = ("mean", "self", "rank")
SCORE_ORDERS = {
    "mean": "increasing mean helpfulness over the test taskset (most harmful first)",
    "self": "decreasing self-influence",
    "rank": "increasing mean per-test-task rank of helpfulness (most harmful first)",
}
DEFAULT_FRACTIONS = (0.05, 0.1, 0.125, 0.25, 0.5, 0.75)


# ---- detection curve ------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectionCurve:
    """Fraction of corrupted tasks found vs fraction of the M training tasks inspected.

    ``inspected[k] = k/M`` and ``found[k]`` = (expected, under ties) corrupted tasks among the
    first k inspected / C, for k = 0..M; ``random[k] = k/M`` is the expectation of a uniformly
    random inspection order (hypergeometric mean), ``random_sd[k]`` its standard deviation.
    ``auc`` is the trapezoidal area under ``found`` over [0, 1]: 0.5 for random order,
    ``auc_max`` = 1 − C/(2M) for a perfect one (all corrupted tasks first), C/(2M) at worst.
    """

    inspected: np.ndarray
    found: np.ndarray
    random: np.ndarray
    random_sd: np.ndarray
    order: np.ndarray  # inspection order (ties broken by id; ``found`` does not depend on it)
    num_tasks: int
    num_corrupted: int

    @property
    def auc(self) -> float:
        return float(np.trapezoid(self.found, self.inspected))

    @property
    def auc_random(self) -> float:
        return 0.5

    @property
    def auc_max(self) -> float:
        return 1.0 - self.num_corrupted / (2.0 * self.num_tasks)

    @property
    def auc_sigma(self) -> float:
        """(AUC − 0.5) in sd units of a random order: without ties the AUC is an affine map of the
        corrupted tasks' rank sum W, AUC = (C·M + C/2 − W)/(C·M), so its null sd is
        sqrt(C·(M−C)·(M+1)/12)/(C·M) (Wilcoxon rank-sum)."""
        m, c = self.num_tasks, self.num_corrupted
        if c == m:
            return float("nan")
        return (self.auc - 0.5) / (math.sqrt(c * (m - c) * (m + 1) / 12.0) / (c * m))

    def found_at(self, fraction: float) -> float:
        """Fraction of corrupted tasks found after inspecting ``fraction`` of the tasks (linear
        between whole tasks)."""
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"inspected fraction must lie in [0, 1], got {fraction}")
        return float(np.interp(fraction, self.inspected, self.found))

    def inspected_to_find(self, fraction: float) -> float:
        """Smallest inspected fraction k/M at which ≥ ``fraction`` of the corrupted tasks are found."""
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"found fraction must lie in [0, 1], got {fraction}")
        k = int(np.argmax(self.found >= fraction - 1e-12))
        return float(self.inspected[k])

    def to_dict(self, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[str, Any]:
        m, c = self.num_tasks, self.num_corrupted
        return {
            "num_tasks": m, "num_corrupted": c, "auc": self.auc, "auc_random": self.auc_random, "auc_max": self.auc_max,
            "auc_sigma": self.auc_sigma,
            "points": [
                {"inspected": float(f), "found": self.found_at(f), "random": float(f),
                 "random_sd": float(np.interp(f, self.inspected, self.random_sd))}
                for f in fractions
            ],
            "inspected_to_find": {f"{p:g}": self.inspected_to_find(p) for p in (0.5, 0.9, 1.0)},
        }  # fmt: skip


def detection_curve(scores: np.ndarray | Sequence[float], corrupted_ids: Sequence[int] | np.ndarray, M: int | None = None) -> DetectionCurve:
    """The detection curve of inspecting tasks in order of increasing ``scores`` (most harmful
    first for helpfulness scores); ``M`` (default ``len(scores)``) must equal ``len(scores)``."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = len(s) if M is None else int(M)
    if m != len(s) or m < 1:
        raise ConfigError(f"expected {m} scores (one per training task), got {len(s)}")
    if not np.all(np.isfinite(s)):
        raise ConfigError("scores must be finite")
    ids = np.unique(np.asarray(corrupted_ids, dtype=np.int64).reshape(-1))
    if len(ids) == 0:
        raise ConfigError("no corrupted tasks: a detection curve needs at least one")
    if ids[0] < 0 or ids[-1] >= m:
        raise ConfigError(f"corrupted task ids must lie in 0..{m - 1}")
    is_bad = np.zeros(m, dtype=np.float64)
    is_bad[ids] = 1.0
    c = len(ids)
    order = np.argsort(s, kind="stable")
    # expected corrupted count after k inspections, k = 0..M, ties spread evenly over their group
    found = np.zeros(m + 1)
    sorted_s, sorted_bad = s[order], is_bad[order]
    start = 0
    while start < m:
        stop = start + 1
        while stop < m and sorted_s[stop] == sorted_s[start]:
            stop += 1
        g, bad = stop - start, sorted_bad[start:stop].sum()
        found[start + 1 : stop + 1] = found[start] + bad * np.arange(1, g + 1) / g
        start = stop
    k = np.arange(m + 1, dtype=np.float64)
    p = c / m
    var = k * p * (1 - p) * (m - k) / (m - 1) if m > 1 else np.zeros(m + 1)
    return DetectionCurve(
        inspected=k / m, found=found / c, random=k / m, random_sd=np.sqrt(np.maximum(var, 0.0)) / c,
        order=order, num_tasks=m, num_corrupted=c,
    )  # fmt: skip


# ---- scores ---------------------------------------------------------------------------------
def corrupted_ids(run: Run, kinds: Sequence[str] = ("noise", "label_flip")) -> np.ndarray:
    """Ids of the run's corrupted training tasks (from the taskset manifest); ConfigError if none."""
    ids = np.unique(np.concatenate([run.train_tasks.ids_with(k) for k in kinds]))
    if len(ids) == 0:
        raise ConfigError(
            f"{run.checkpoint.path}: its training taskset has no noise or label-flip tasks, so there is "
            "nothing to detect (train with --noise-tasks / --label-flip-tasks)"
        )
    return ids


def self_influence(inf: TaskInfluence) -> np.ndarray:
    """(M,) self-helpfulness (1/M) g_jᵀ H⁺ g_j of each training task at the fit's truncation."""
    k = inf.truncation
    p = inf.projections[:, :k]
    return ((p * inf.signs[:k] * p).sum(1) / inf.num_tasks).cpu().numpy()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each entry along the last axis (0 = smallest), tied entries sharing their mean rank."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    for row_in, row_out in zip(v.reshape(-1, v.shape[-1]), out.reshape(-1, v.shape[-1]), strict=True):
        _, inverse, counts = np.unique(row_in, return_inverse=True, return_counts=True)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        row_out[:] = (first + (counts - 1) / 2.0)[inverse]
    return out


def detection_scores(run: Run, inf: TaskInfluence, dtype: str, score: str = "mean", table: np.ndarray | None = None) -> np.ndarray:
    """(M,) scores inspected in increasing order: mean helpfulness over all test tasks (``"mean"``),
    minus self-influence (``"self"``) or the mean per-test-task rank (``"rank"``); see the module
    docstring. ``"mean"`` and ``"rank"`` read the T × M test table (``table``: ``ranking.fit_test_table``,
    computed here when not given); the mean of its rows is the helpfulness for the whole test taskset
    (the score is linear in the target gradient: equal to float rounding)."""
    if score not in SCORE_KINDS:
        raise ConfigError(f"score must be one of {SCORE_KINDS}, got {score!r}")
    if score == "self":
        return -self_influence(inf)
    table = test_score_matrix(run, inf, dtype, range(len(run.test_tasks))) if table is None else np.asarray(table)
    return table.mean(0) if score == "mean" else average_ranks(table).mean(0)


# ---- removal effect -------------------------------------------------------------------------
def lowest_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-scored task ids (ties broken by id)."""
    return np.sort(np.argsort(np.asarray(scores), kind="stable")[:k])


def random_removal_sets(num_tasks: int, k: int, draws: int, seed: int) -> list[np.ndarray]:
    """``draws`` random k-subsets of the tasks: ``np.random.default_rng([seed, k])`` without replacement."""
    rng = np.random.default_rng([seed, k])
    return [np.sort(rng.choice(num_tasks, size=k, replace=False)) for _ in range(draws)]


def _accuracy(summary: dict[str, float]) -> dict[str, float]:
    return {"accuracy": summary["accuracy"], "accuracy_ci95": summary["accuracy_ci95"], "loss": summary["loss"]}


def _with_gain(metrics: TaskMetrics, before: TaskMetrics) -> dict[str, float]:
    """Accuracy summary plus the paired gain over ω̂ (mean ± 95% interval of the per-test-task
    accuracy differences, tighter than comparing two unpaired intervals)."""
    gain, gain_ci = mean_ci95(metrics.accuracy - before.accuracy)
    return {**_accuracy(metrics.summary()), "gain": gain, "gain_ci95": gain_ci}


def _check_k(k_values: Sequence[int], m: int) -> list[int]:
    ks = [int(k) for k in k_values]
    if not ks or any(not 1 <= k < m for k in ks):
        raise ConfigError(f"removal sizes k must lie in 1..{m - 1}, got {ks}")
    return ks


def blocked_evaluation(run: Run, inf: TaskInfluence, ids: np.ndarray | Sequence[int], xi: float) -> TaskMetrics:
    """Test metrics of ω̂ + ξ Σ_{j∈ids} I_meta (``edit.edited_params``; ξ = −1 ≈ removing ``ids``)."""
    return run.evaluate(edited_params(run, inf, EditSpec(block=tuple(int(j) for j in ids), xi_block=float(xi))))


def stored_blocked_evaluation(
    run: Run, inf: TaskInfluence, cfg: InfluenceConfig, ids: np.ndarray | Sequence[int], xi: float
) -> TaskMetrics:
    """``blocked_evaluation`` saved on disk beside the fit ``cfg`` that made ``inf``
    (``fits.edit_metrics_entry``): a removed set is evaluated once per run, whichever page, score
    kind, session or server asks; the bytes read back are the ones computed."""
    def compute():
        metrics = blocked_evaluation(run, inf, ids, xi)
        return metrics.to_tensors(), {"num_test_tasks": len(metrics.task_ids)}

    return TaskMetrics.from_tensors(edit_metrics_entry(run, cfg, ids, xi).load_or_compute(compute)[0])


def removal_sets(scores: np.ndarray, k: int, draws: int, seed: int) -> list[np.ndarray]:
    """The sets ``removal_effect`` removes for one k: the k lowest-scored first, then ``draws`` random k-sets."""
    return [lowest_ids(np.asarray(scores, dtype=np.float64), k), *random_removal_sets(len(scores), k, draws, seed)]


def removal_evaluated(run: Run, cfg: InfluenceConfig, sets: Sequence[Sequence[int]], xi: float) -> bool:
    """True when every set's test metrics at ξ are on disk or shipped (reading them costs no evaluation)."""
    return all(edit_metrics_entry(run, cfg, ids, xi).complete for ids in sets)


def stored_removal_evaluations(
    run: Run, inf: TaskInfluence, cfg: InfluenceConfig, sets: Sequence[Sequence[int]], xi: float,
    progress: Callable[[int, int], None] | None = None,
) -> list[TaskMetrics]:  # fmt: skip
    """``stored_blocked_evaluation`` of each set at ξ, in order (each saved as it ends, so a stopped run
    resumes with the sets not yet evaluated), then all of them in one entry (``fits.removal_entry``,
    the home of the Audit page's removal job); ``progress(done, total)`` after each set."""

    def compute():
        rows = []
        for n, ids in enumerate(sets):
            rows.append(stored_blocked_evaluation(run, inf, cfg, ids, xi))
            if progress is not None:
                progress(n + 1, len(sets))
        return stack_metrics(rows), {"num_sets": len(rows)}

    return unstack_metrics(removal_entry(run, cfg, sets, xi).load_or_compute(compute)[0])


def removal_effect(
    run: Run, inf: TaskInfluence, scores: np.ndarray, k_values: Sequence[int], *, xis: Sequence[float] = (-1.0,),
    random_draws: int = 5, seed: int = 0, corrupted: Sequence[int] | np.ndarray | None = None, retrain: bool = False,
    retrain_dir: str | Path | None = None, retrain_steps: int | None = None, progress: DetectProgress | None = None,
    before: TaskMetrics | None = None, evaluate: BlockedEvaluation | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Test accuracy (mean ± 95% interval over the test tasks) after removing the k lowest-scored
    training tasks by the one-step edit ω̂ + ξ Σ I_meta (``edit.edited_params``, ξ = −1 ≈
    removal) vs removing k random tasks the same way (``random_draws`` draws of
    :func:`random_removal_sets`; mean ± sd over draws of their test accuracy).

    ``retrain`` also retrains from scratch without the k lowest-scored tasks and without the first
    random draw (``leave_out.leave_out_retrain``; slow: 2 trainings per k) into ``retrain_dir``
    (a temporary folder, deleted afterwards, when not given).

    Edited rows also carry ``gain`` ± ``gain_ci95``: the paired per-test-task accuracy difference to
    ω̂ (``before``: ω̂'s test metrics, ``Run.as_trained`` when not given). ``evaluate(ids, ξ)`` gives
    the test metrics of ω̂ + ξ Σ_{j∈ids} I_meta (default: ``blocked_evaluation``); a page passes a
    cached one, so that the random draws, which depend on k, ξ and the seed only, are evaluated once
    for every score kind.
    """
    scores = np.asarray(scores, dtype=np.float64)
    m = inf.num_tasks
    if len(scores) != m:
        raise ConfigError(f"expected {m} scores, got {len(scores)}")
    ks = _check_k(k_values, m)
    if random_draws < 1:
        raise ConfigError("random_draws must be at least 1")
    xis = [float(x) for x in xis]
    bad = None if corrupted is None else set(int(j) for j in corrupted)
    total = len(ks) * len(xis) * (1 + random_draws)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress("edits", done, total)

    before = run.as_trained if before is None else before
    evaluate = partial(blocked_evaluation, run, inf) if evaluate is None else evaluate
    out: dict[str, Any] = {"before": _accuracy(before.summary()), "xis": xis, "random_draws": random_draws, "seed": seed, "rows": []}
    sets = {}
    for k in ks:
        low, *rand = removal_sets(scores, k, random_draws, seed)
        sets[k] = (low, rand)
    for k in ks:
        low, rand = sets[k]
        row: dict[str, Any] = {"k": k, "edit": {}, "random_edit": {}}
        if bad is not None:
            row["corrupted_in_lowest"] = sum(int(j) in bad for j in low)
            row["corrupted_in_random_mean"] = float(np.mean([sum(int(j) in bad for j in r) for r in rand]))
        for xi in xis:
            row["edit"][f"{xi:g}"] = _with_gain(evaluate(low, xi), before)
            tick()
            accs = []
            for r in rand:
                accs.append(evaluate(r, xi).summary()["accuracy"])
                tick()
            row["random_edit"][f"{xi:g}"] = {"accuracy_mean": float(np.mean(accs)), "accuracy_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0, "accuracies": accs}
        out["rows"].append(row)
    if retrain:
        out["retrain"] = _retrain_rows(run, sets, retrain_dir, retrain_steps, progress)
    return out


def _retrain_rows(run: Run, sets, retrain_dir, steps, progress) -> list[dict[str, Any]]:
    tmp = None
    if retrain_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="metainf-detect-")
        retrain_dir = tmp.name
    base = Path(retrain_dir)
    rows, total, done = [], 2 * len(sets), 0
    try:
        for k, (low, rand) in sets.items():
            row: dict[str, Any] = {"k": k}
            for name, ids in (("lowest", low), ("random", rand[0])):
                started = time.time()
                res = leave_out_retrain(run, ids, base / f"k{k}-{name}", steps)
                row[name] = {**_accuracy(res["test"]), "seconds": round(time.time() - started, 2)}
                if tmp is None:
                    row[name]["out"] = res["out"]
                done += 1
                if progress is not None:
                    progress("retrain", done, total)
            rows.append(row)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


# ---- report ---------------------------------------------------------------------------------
def default_k_values(num_corrupted: int, num_tasks: int) -> list[int]:
    """C/2, C and 2C (clipped to 1..M−1, duplicates dropped) for C corrupted tasks."""
    ks = sorted({min(num_tasks - 1, max(1, v)) for v in (num_corrupted // 2, num_corrupted, 2 * num_corrupted)})
    return ks


def detect_report(
    run: Run, cfg: InfluenceConfig, *, inf: TaskInfluence | None = None, score: str = "mean",
    k_values: Sequence[int] | None = None, xis: Sequence[float] = (-1.0,), random_draws: int = 5, seed: int = 0,
    retrain: bool = False, retrain_dir: str | Path | None = None, retrain_steps: int | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS, removal: bool = True, compare_scores: Sequence[str] | None = SCORE_KINDS,
    progress: DetectProgress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Detection curves (all corrupted tasks, and per kind when both noise and label-flip tasks
    exist) and the removal effect for a run whose training taskset has corrupted tasks.

    ``score`` orders the removals; ``curves`` also holds the detection curve of every score kind in
    ``compare_scores`` (``"rank"`` costs one T × M score matrix).

    Raises ConfigError before any fitting when the taskset has no noise or label-flip task. The fit
    comes from the disk cache when present (``fits.fit_influence``); ``progress`` sees its
    stages, then "edits" and "retrain".
    """
    for kind in [score, *(compare_scores or ())]:
        if kind not in SCORE_KINDS:
            raise ConfigError(f"score must be one of {SCORE_KINDS}, got {kind!r}")
    bad = corrupted_ids(run)
    m = len(run.train_tasks)
    ks = default_k_values(len(bad), m) if k_values is None else _check_k(k_values, m)
    started = time.time()
    if inf is None:
        inf = fit_influence(run, cfg, progress=progress)
    by_kind = {kind: run.train_tasks.ids_with(kind) for kind in ("noise", "label_flip")}
    kinds = [score] + [s for s in (compare_scores or ()) if s != score]
    table = test_score_matrix(run, inf, cfg.dtype, range(len(run.test_tasks))) if {"mean", "rank"} & set(kinds) else None
    curves: dict[str, Any] = {}
    for kind in kinds:
        kind_scores = detection_scores(run, inf, cfg.dtype, kind, table)
        if kind == score:
            scores = kind_scores
        curves[kind] = {"order": SCORE_ORDERS[kind], "corrupted": detection_curve(kind_scores, bad, m).to_dict(fractions)}
        if all(len(v) for v in by_kind.values()):
            curves[kind].update({c: detection_curve(kind_scores, ids, m).to_dict(fractions) for c, ids in by_kind.items()})
    out: dict[str, Any] = {
        "score": score, "method": cfg.method, "truncation": inf.truncation, "num_tasks": m,
        "corrupted": {kind: len(v) for kind, v in by_kind.items()},
        "curves": curves,
    }  # fmt: skip
    if removal:
        before = run.as_trained
        out["removal"] = removal_effect(
            run, inf, scores, ks, xis=xis, random_draws=random_draws, seed=seed, corrupted=bad, retrain=retrain,
            retrain_dir=retrain_dir, retrain_steps=retrain_steps, progress=progress,
            before=before,
        )  # fmt: skip
        # reference: the one-step edit removing exactly the corrupted tasks (what perfect detection buys)
        out["removal"]["all_corrupted_edit"] = {
            f"{xi:g}": _with_gain(blocked_evaluation(run, inf, bad, xi), before)
            for xi in xis
        }
    out["seconds"] = round(time.time() - started, 2)
    return out


# ---- verdicts: the Audit page's numbers and words ---------------------------------------------
@dataclass(frozen=True)
class CurveVerdict:
    """How an inspection order finds the C corrupted tasks among M (seed 001 §6.3), as a person reads
    it: the AUC (``auc_max`` for every corrupted task first), its distance from a random order in sd
    (``DetectionCurve.auc_sigma``), the ``verdict`` of that distance (+1 sooner, −1 later than
    random, 0 no clear difference; ``words.z_verdict``) and ``words``; ``found_first`` corrupted tasks
    among the first C inspected against a random order's ``random_first`` ± ``random_first_sd``
    (hypergeometric: C·C/M and its sd)."""

    num_tasks: int
    num_corrupted: int
    auc: float
    auc_max: float
    auc_sigma: float
    verdict: int
    words: str
    found_first: float
    random_first: float
    random_first_sd: float


def curve_verdict(curve: DetectionCurve, threshold: float = SIGNIFICANT_SD) -> CurveVerdict:
    """The verdict on a detection curve: is the order better than a random one, and how many corrupted
    tasks the first C inspected hold (``found`` and ``random_sd`` are fractions of C)."""
    c = curve.num_corrupted
    verdict = z_verdict(curve.auc_sigma, threshold)
    return CurveVerdict(
        num_tasks=curve.num_tasks, num_corrupted=c, auc=curve.auc, auc_max=curve.auc_max, auc_sigma=curve.auc_sigma,
        verdict=verdict, words=order_words(verdict, curve.auc_sigma), found_first=float(curve.found[c] * c),
        random_first=float(curve.random[c] * c), random_first_sd=float(curve.random_sd[c] * c),
    )  # fmt: skip


@dataclass(frozen=True)
class RemovalVerdict:
    """One row of :func:`removal_effect` (k tasks, one ξ) as the Audit page states it: the k
    lowest-scored tasks removed by the one-step edit ω̂ + ξ Σ_B I_meta (TLXML Eq. 13) against
    ``draws`` random k-sets removed the same way.

    ``z`` = (accuracy − random mean) / random sd, its ``verdict`` (+1 better, −1 worse, 0 no clear
    difference; ``words.z_verdict``) and ``words``; ``gain`` ± ``gain_ci95`` is the paired change
    against the model as trained, ``reading`` why the two comparisons need not agree (None when they
    do). ``loss_predicted`` is the first-order change of the mean test loss, g_allᵀ δω =
    −ξ Σ_B helpfulness(all test tasks) (Eq. 13 in the loss's linearisation), beside the re-tested
    ``loss_change``; when accuracy and loss moved the same way, ``flipped_images`` (net query images
    whose top guess became right) and ``same_way`` say why, else both are None.
    """

    removed: np.ndarray
    xi: float
    draws: int
    accuracy_before: float
    accuracy_before_ci95: float
    accuracy_after: float
    accuracy_after_ci95: float
    random_mean: float
    random_sd: float
    z: float
    verdict: int
    words: str
    gain: float
    gain_ci95: float
    reading: str | None
    loss_predicted: float
    loss_change: float
    flipped_images: int | None
    same_way: str | None
    corrupted_removed: int | None
    corrupted_random_mean: float | None

    @property
    def k(self) -> int:
        return len(self.removed)


def removal_verdict(
    run: Run, effect: dict[str, Any], scores: np.ndarray, mean_helpfulness: np.ndarray, threshold: float = SIGNIFICANT_SD
) -> RemovalVerdict:
    """The verdict on ``effect`` = :func:`removal_effect` for one k and one ξ, whose removals were
    ordered by ``scores``; ``mean_helpfulness`` (``detection_scores(..., "mean")``) predicts the loss."""
    if len(effect["rows"]) != 1 or len(effect["xis"]) != 1:
        raise ConfigError("removal_verdict states one removal: removal_effect with one k and one ξ")
    (row,), (xi,) = effect["rows"], effect["xis"]
    before, after, rand = effect["before"], row["edit"][f"{xi:g}"], row["random_edit"][f"{xi:g}"]
    removed = lowest_ids(scores, row["k"])  # the set removal_effect removed
    z = chance_z(after["accuracy"] - rand["accuracy_mean"], rand["accuracy_sd"])
    verdict = z_verdict(z, threshold)
    loss_change = after["loss"] - before["loss"]
    flips = same_way = None
    if np.sign(after["accuracy"] - before["accuracy"]) == np.sign(loss_change) != 0:
        n_test, tc = len(run.test_tasks), run.test_tasks.config
        flips = flipped_images(before["accuracy"], after["accuracy"], n_test * tc.ways * tc.queries)
        same_way = same_way_reading([same_way_words(f"On all {n_test} test tasks", flips, loss_change > 0)])
    return RemovalVerdict(
        removed=removed, xi=xi, draws=effect["random_draws"], accuracy_before=before["accuracy"],
        accuracy_before_ci95=before["accuracy_ci95"], accuracy_after=after["accuracy"], accuracy_after_ci95=after["accuracy_ci95"],
        random_mean=rand["accuracy_mean"], random_sd=rand["accuracy_sd"], z=z, verdict=verdict, words=chance_words(verdict, z),
        gain=after["gain"], gain_ci95=after["gain_ci95"], reading=two_comparisons(verdict, after["gain"], after["gain_ci95"]),
        loss_predicted=-xi * float(np.asarray(mean_helpfulness)[removed].sum()), loss_change=loss_change, flipped_images=flips,
        same_way=same_way, corrupted_removed=row.get("corrupted_in_lowest"), corrupted_random_mean=row.get("corrupted_in_random_mean"),
    )  # fmt: skip
