"""Checks that explanations behave as they should (TLXML 5.1, B.2–B.4; METHODS §5).

Pure functions over score matrices (``scores[t, j]`` is the helpfulness of training task j for
test t; positive = up-weighting j lowers the test loss), and ``validation_report``, which runs
them on a fitted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from metainf_core.config import InfluenceConfig, InfluenceMethod
from metainf_core.exceptions import ConfigError

if TYPE_CHECKING:
    from metainf_core.influence import TaskInfluence
    from metainf_core.service import Run


@dataclass(frozen=True)
class ProperTestResult:
    """How many of T tests put subpopulation P above the rest, against the binomial null T/2."""

    proper: int
    total: int
    sigma: float  # sqrt(T/4), the null's standard deviation
    z: float  # (proper − T/2) / sigma

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def proper_tests(scores: np.ndarray, expected_higher: np.ndarray) -> ProperTestResult:
    """A test is proper when the mean score over P exceeds the mean over the rest (TLXML 5.1.2).

    ``expected_higher`` is a ``T x M`` (or ``M``) boolean mask of P; tests where P or its
    complement is empty are left out of T.
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    mask = np.broadcast_to(np.asarray(expected_higher, dtype=bool), s.shape)
    n_in, n_out = mask.sum(1), (~mask).sum(1)
    valid = (n_in > 0) & (n_out > 0)
    mean_in = np.where(mask, s, 0).sum(1) / np.maximum(n_in, 1)
    mean_out = np.where(~mask, s, 0).sum(1) / np.maximum(n_out, 1)
    proper = int(((mean_in > mean_out) & valid).sum())
    total = int(valid.sum())
    sigma = math.sqrt(total / 4) if total else float("nan")
    return ProperTestResult(proper, total, sigma, (proper - total / 2) / sigma if total else float("nan"))


def superclass_overlap(test_sets: list[frozenset[str]], train_sets: list[frozenset[str]]) -> np.ndarray:
    """``T x M`` number of superclasses each training task shares with each test task (TLXML 5.1.3)."""
    vocab = sorted(set().union(*test_sets, *train_sets))
    index = {s: i for i, s in enumerate(vocab)}

    def onehot(sets: list[frozenset[str]]) -> np.ndarray:
        m = np.zeros((len(sets), len(vocab)), dtype=np.int64)
        for r, ss in enumerate(sets):
            m[r, [index[s] for s in ss]] = 1
        return m

    return onehot(test_sets) @ onehot(train_sets).T


def self_ranks(scores: np.ndarray, identical: np.ndarray) -> np.ndarray:
    """Rank (0 = top) of training task ``identical[t]`` among the scores of test t (TLXML 5.1.1);
    ties count against it (a task tied with others gets the worst of their ranks)."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    own = s[np.arange(len(s)), np.asarray(identical)]
    return (s >= own[:, None]).sum(1) - 1


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (flattened) with ties given the mean of their ranks (as
    ``scipy.stats.rankdata(x, "average")``, without importing scipy: ~1 s at every CLI start)."""
    _, inverse, counts = np.unique(np.asarray(x, dtype=np.float64).ravel(), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks (ties share their mean rank; equals
    ``scipy.stats.spearmanr``). NaN when either input is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.shape != rb.shape:
        raise ConfigError(f"spearman needs inputs of equal size, got {ra.size} and {rb.size}")
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def score_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman (average ranks) correlation of two methods' scores for the same test (flattened)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return {"pearson": float(np.corrcoef(x, y)[0, 1]), "spearman": spearman(x, y)}


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Fraction of the k highest-scored tasks that two rankings share."""
    ta, tb = set(np.argsort(-np.asarray(a))[:k].tolist()), set(np.argsort(-np.asarray(b))[:k].tolist())
    return len(ta & tb) / k


# ---- the validation report of a fitted run (TLXML 5.1) -----------------------------------------
def validation_report(
    run: Run, inf: TaskInfluence, cfg: InfluenceConfig, *, self_rank: bool = True, noise: bool = True,
    superclass: bool = True, max_tests: int = 128, exact_agreement: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Self-rank table, noise-vs-normal and superclass-overlap proper tests with binomial σ (the
    superclass tests compare normal training tasks only: noise tasks are left out of both groups)."""
    from metainf_core.fits import fit_influence  # the run-level modules need torch; the checks above do not
    from metainf_core.influence.exact import MAX_EXACT_PARAMS
    from metainf_core.ranking import test_score_matrix

    out: dict[str, Any] = {"method": cfg.method, "truncation": inf.truncation, "num_tasks": inf.num_tasks}
    if self_rank:
        out["self_rank"] = [{"k": k, "mean_self_rank": r} for k, r in (inf.self_ranks or inf.self_rank_table(sample=cfg.self_rank_sample))]
        m = inf.num_tasks
        ranks = self_ranks(inf.train_score_matrix().cpu().numpy(), np.arange(m))
        out["self_rank_at_truncation"] = {"mean": float(ranks.mean()), "fraction_top1": float((ranks == 0).mean()), "random_mean": (m - 1) / 2}
    if not (noise or superclass or exact_agreement):
        return out
    test_ids = np.arange(min(max_tests, len(run.test_tasks)))
    scores = test_score_matrix(run, inf, cfg.dtype, test_ids)
    if exact_agreement and InfluenceMethod(cfg.method) is InfluenceMethod.GN:
        q = inf.num_params
        if q > MAX_EXACT_PARAMS:
            out["exact_vs_gn"] = {"skipped": f"exact Hessian infeasible for q = {q:,} > {MAX_EXACT_PARAMS:,} parameters"}
        else:
            exact_cfg = InfluenceConfig(**{**cfg.to_dict(), "method": "exact", "dtype": "float64", "projection_dim": 0, "param_groups": ()})
            exact = test_score_matrix(run, fit_influence(run, exact_cfg), "float64", test_ids)
            per_test = [score_agreement(a, b) for a, b in zip(exact, scores, strict=True)]
            pearson = np.array([d["pearson"] for d in per_test])
            spearman = np.array([d["spearman"] for d in per_test])
            k = max(1, inf.num_tasks // 10)
            overlap = np.array([top_k_overlap(a, b, k) for a, b in zip(exact, scores, strict=True)])
            out["exact_vs_gn"] = {
                "pearson_mean": float(pearson.mean()), "pearson_sd": float(pearson.std()),
                "spearman_mean": float(spearman.mean()), f"top{k}_overlap_mean": float(overlap.mean()),
                "num_tests": len(test_ids), "paper_pearson": "0.715 ± 0.092 (TLXML B.3)",
            }  # fmt: skip
    normal = np.ones(inf.num_tasks, dtype=bool)
    normal[run.train_tasks.ids_with("noise")] = False
    if noise:
        if normal.all():
            out["noise"] = {"skipped": "the training taskset has no noise tasks"}
        else:
            out["noise"] = {"expected_higher": "normal tasks", **proper_tests(scores, normal).to_dict()}
    if superclass:  # noise tasks carry their classes' superclasses but not their images: in neither group
        overlap = superclass_overlap(
            [run.test_tasks.superclass_sets(run.dataset)[i] for i in test_ids], run.train_tasks.superclass_sets(run.dataset)
        )[:, normal]
        out["superclass"] = [
            {"min_shared": s, **proper_tests(scores[:, normal], overlap >= s).to_dict()}
            for s in range(1, int(overlap.max(initial=0)) + 1)
        ]
    return out


def noise_tests_by_truncation(run: Run, inf: TaskInfluence, dtype: str, ks: Sequence[int], max_tests: int = 128) -> list[dict[str, Any]]:
    """The noise-vs-normal proper tests (TLXML 5.1.2, Eq. 7/9) of one fit at each truncation k of ``ks``:
    the knob a row's result can be checked against without refitting (issue 23 item 5); the test
    gradients are taken once and scored at each k."""
    from metainf_core.ranking import taskset_gradients

    normal = np.ones(inf.num_tasks, dtype=bool)
    normal[run.train_tasks.ids_with("noise")] = False
    if normal.all():
        raise ConfigError("the training taskset has no noise tasks")
    grads = taskset_gradients(run, dtype, run.test_tasks, np.arange(min(max_tests, len(run.test_tasks))))
    return [{"k": int(k), **proper_tests(inf.with_truncation(int(k)).helpfulness(grads).cpu().numpy(), normal).to_dict()} for k in ks]
