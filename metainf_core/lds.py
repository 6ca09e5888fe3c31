"""Task-level linear datamodeling score (LDS; TRAK, Park et al. 2023): ground truth for attributions.

K random α-fractions S_1..S_K of the M training tasks are drawn from a seed
(``detect.random_removal_sets``: |S_k| = round(α·M)); the run is retrained on each — the run's own
task and training configuration with the complement never drawn (``leave_out.leave_out_configs``),
once per training seed s₀, s₀+1, …, s₀+R−1 (s₀ the run's seed; ``fidelity.with_train_seed``) — and
every test task t's adapted query loss ℓ_t(S_k, s) is measured (``Run.evaluate``).

Sign convention. metainf's scores are *helpfulness* h_j(t) (positive = task j lowered t's loss;
``compare.SIGN``). The linear datamodel they imply predicts, for a model trained on S only,

    ℓ̂_t(S) = ℓ_t(all) + Σ_{j∉S} h_j(t) = const − Σ_{j∈S} h_j(t),

so the predicted loss of subset S is **minus** the summed helpfulness, and

    LDS_t = Spearman_k( −Σ_{j∈S_k} h_j(t),  ℓ̄_t(S_k) ),   ℓ̄ = the mean over the R seeds,

positive for a good method (≈ 0 for random scores). Reported: mean ± sd over the test tasks.
Equivalently ``dattri.metric.lds(h.T, (−ℓ̄, S))`` (scores train × test, ground truth a "higher is
better" target); tests/test_lds.py checks the two agree.

Noise ceiling. Meta-training noise can swamp the subset effect (issue 27), so the seeds are split
into halves A = the first ⌊R/2⌋, B = the next ⌊R/2⌋ (an odd R's last seed joins neither, since
Spearman–Brown assumes equal halves), r_t = Spearman_k(ℓ̄ᴬ_t(S_k), ℓ̄ᴮ_t(S_k)), and the ceiling is
the mean over t of the Spearman–Brown reliability of the R-seed mean, 2r_t / (1 + r_t) (a test task
with r_t near −1 gives a large negative term: ``of_mean_split_half`` = 2r̄/(1 + r̄) of the mean r̄
is the steadier companion when the ceiling is low). Each method's LDS is also given as a fraction
of it, where the ceiling lies above the chance band (``null_band``). A noise-free predictor's
expected correlation with the R-seed mean is √reliability (attenuation), so ``attainable`` =
√ceiling is reported too.

Chance. The test tasks' LDS are correlated (a subset that raises one test task's loss tends to
raise all), so the spread over test tasks understates how far a mean LDS can stray by chance:
``null`` gives the mean LDS of 200 random score tables on the same retrainings. ``pooled`` is the
LDS (and ceiling) of the mean test loss as one target, a smoother one than any single test task.

Retrainings are run folders under ``<work>/runs/<readable prefix + content hash of both
configurations>`` (``reproduce.runs``): written atomically, reused when complete, resumed from
their last checkpoint when a job was killed, and under torchrun trained N at a time (one per
rank, ``runs.train_runs``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from metainf_core.cache import cache_root
from metainf_core.compare import METHODS, SIGN, CompareConfig, get_method, tlxml_config
from metainf_core.config import InfluenceMethod, LDSConfig, TaskConfig, TrainConfig  # noqa: F401 - LDSConfig re-exported
from metainf_core.detect import random_removal_sets
from metainf_core.evaluation import mean_ci95
from metainf_core.exceptions import ConfigError
from metainf_core.fidelity import DEFAULT_DAMPING, with_train_seed
from metainf_core.fits import fit_influence
from metainf_core.influence import distributed
from metainf_core.leave_out import leave_out_configs
from metainf_core.ranking import Target, test_score_matrix
from metainf_core.reproduce import runs
from metainf_core.service import Run
from metainf_core.validate import spearman

TLXML_NAMES = tuple(m.compare_name for m in InfluenceMethod)  # "tlxml-exact", "tlxml-gn": the one method vocabulary

RANDOM = "random"  # the baseline: i.i.d. standard normal scores, seeded by the subset seed
LDS_SIGN = "predicted loss of a subset = −Σ helpfulness over its tasks; LDS > 0 = the method predicts retraining"
Progress = Callable[[int, int], None]  # (retrainings done, total)
DEFAULT_CONFIG = CompareConfig(damping=DEFAULT_DAMPING)  # λ_d of task-IF / direct IF, as removal fidelity's


# ---- subsets and retrainings -----------------------------------------------------------------
def lds_subsets(num_tasks: int, cfg: LDSConfig) -> np.ndarray:
    """(K, round(α·M)) sorted training-task ids kept by each subset; the same for the same seed."""
    return np.stack(random_removal_sets(num_tasks, cfg.subset_size(num_tasks), cfg.subsets, cfg.subset_seed))


def train_seeds(run: Run, cfg: LDSConfig) -> list[int]:
    """The R training seeds of each subset: the run's own seed s₀, then s₀+1, …"""
    s0 = int(run.meta["train_config"]["seed"])
    return [s0 + r for r in range(cfg.seeds)]


def retrain_configs(run: Run, kept: np.ndarray, cfg: LDSConfig) -> list[list[tuple[TaskConfig, TrainConfig]]]:
    """[k][r]: the run's configurations with the tasks outside subset k excluded, under seed r."""
    if run.meta.get("imported"):
        raise ConfigError("LDS retrains the run with its own training configuration; an imported run has none here")
    every = np.arange(len(run.train_tasks))
    return [
        [leave_out_configs(with_train_seed(run, s), np.setdiff1d(every, ids), cfg.steps or None) for s in train_seeds(run, cfg)]
        for ids in kept
    ]


def default_work() -> Path:
    """Where retrainings are kept unless told: ``<cache root>/lds``."""
    return cache_root() / "lds"


def retrained_losses(
    run: Run, kept: np.ndarray, cfg: LDSConfig, work: str | Path | None = None, progress: Progress | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(K, R, T_all) adapted query loss of every test task of ``run`` after each retraining, and a
    record (trained now, reused, seconds). Complete retrainings are reused; half-done ones resume."""
    work = Path(work) if work is not None else default_work()
    configs = [c for row in retrain_configs(run, kept, cfg) for c in row]
    trained_now = set(runs.train_runs(work, configs, device=str(run.device)))  # torchrun: N at a time; else nothing
    losses, seconds = [], []
    bar = tqdm(total=len(configs), desc="lds retrain", unit="run", disable=progress is not None or not distributed.is_primary())
    for i, (task_cfg, train_cfg) in enumerate(configs):
        key = runs.run_key(task_cfg, train_cfg)
        if not runs.is_complete(work / "runs" / key):
            trained_now.add(key)
        retrained = runs.ensure_run(work, task_cfg, train_cfg, device=str(run.device))
        losses.append(run.evaluate(retrained.params).loss)
        seconds.append(float(retrained.meta.get("train_seconds_this_session", math.nan)))
        bar.update(1)
        if progress is not None:
            progress(i + 1, len(configs))
    bar.close()
    record = {"work": str(work), "count": len(configs), "trained_now": len(trained_now),
              "reused": len(configs) - len(trained_now), "train_seconds_mean": float(np.nanmean(seconds))}  # fmt: skip
    return np.asarray(losses, dtype=np.float64).reshape(len(kept), cfg.seeds, -1), record


# ---- the statistics --------------------------------------------------------------------------
def spearman_brown(r: float) -> float:
    """Reliability of a mean over both halves from the halves' correlation r: 2r / (1 + r)."""
    return 2.0 * r / (1.0 + r) if r > -1.0 else math.nan


def lds_per_test(scores: np.ndarray, kept: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """LDS of each test task (T,): Spearman over the K subsets of −Σ_{j∈S_k} h_j(t) and ℓ̄_t(S_k).

    Args:
        scores: (T, M) helpfulness of every training task for each test task.
        kept: (K, n) training-task ids of each subset.
        losses: (K, T) seed-averaged adapted query loss of each test task after each retraining.
    """
    predicted = -scores[:, kept].sum(-1)  # (T, K)
    return np.array([spearman(predicted[t], losses[:, t]) for t in range(scores.shape[0])])


def noise_ceiling(losses: np.ndarray) -> dict[str, Any]:
    """Split-half reliability over seeds of ``losses`` (K, R, T), Spearman–Brown corrected, per test
    task and averaged (module docstring); needs R ≥ 2."""
    half = losses.shape[1] // 2
    if half < 1:
        raise ConfigError("the noise ceiling splits the seeds into halves: it needs at least 2 seeds per subset")
    a, b = losses[:, :half].mean(1), losses[:, half : 2 * half].mean(1)  # (K, T)
    r = np.array([spearman(a[:, t], b[:, t]) for t in range(losses.shape[2])])
    sb = np.array([spearman_brown(x) for x in r])
    ceiling = float(np.nanmean(sb))
    r_mean = float(np.nanmean(r))
    return {"mean": ceiling, "sd": _sd(sb), "split_half_mean": r_mean, "of_mean_split_half": spearman_brown(r_mean), "seeds_per_half": half,
            "attainable": math.sqrt(ceiling) if ceiling > 0 else math.nan, "per_test": sb.tolist()}  # fmt: skip


def null_band(kept: np.ndarray, losses: np.ndarray, num_train: int, draws: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean-over-test-tasks LDS of ``draws`` i.i.d. standard-normal score tables (the random
    baseline drawn again and again) for seed-averaged ``losses`` (K, T): its sd and 95th percentile
    are the chance band of a method's mean LDS (``pooled_*``: of its LDS for the mean test loss).
    The test tasks' LDS are not independent (a subset that raises one test task's loss tends to
    raise all), so their sd / √T understates it."""
    rng = np.random.default_rng([seed, num_train, losses.shape[1], draws])
    tables = [rng.standard_normal((losses.shape[1], num_train)) for _ in range(draws)]
    means = np.array([np.nanmean(lds_per_test(t, kept, losses)) for t in tables])
    pool = np.array([lds_per_test(t.mean(0, keepdims=True), kept, losses.mean(1, keepdims=True))[0] for t in tables])
    return {"draws": draws, "sd": _sd(means), "q95": float(np.quantile(means, 0.95)),
            "pooled_sd": _sd(pool), "pooled_q95": float(np.quantile(pool, 0.95))}  # fmt: skip


def pooled(scores: dict[str, np.ndarray], kept: np.ndarray, losses: np.ndarray) -> dict[str, Any]:
    """LDS for the loss averaged over the test tasks (K, R, T) -> one target, the ``Target("all")``
    whose helpfulness is the mean of the test tasks' (scores are linear in the target's gradient),
    and its noise ceiling: a smoother target than any single test task."""
    target = losses.mean(2, keepdims=True)  # (K, R, 1)
    ceiling = noise_ceiling(target)["mean"] if losses.shape[1] >= 2 else None
    lds = {n: float(lds_per_test(s.mean(0, keepdims=True), kept, target.mean(1))[0]) for n, s in scores.items()}
    return {"ceiling": ceiling, "methods": lds}


def summarize(values: np.ndarray, ceiling: float | None = None) -> dict[str, Any]:
    """Mean, sd and 95% interval over the test tasks (NaN-free ones), and mean / ceiling (None
    without a positive ceiling)."""
    v = values[np.isfinite(values)]
    mean, ci = mean_ci95(v)
    frac = mean / ceiling if ceiling is not None and ceiling > 0 else None
    return {"mean": mean, "sd": _sd(v), "ci95": ci, "fraction_of_ceiling": frac, "num_tests": int(v.size),
            "per_test": values.tolist()}  # fmt: skip


def _sd(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if v.size > 1 else 0.0


# ---- scores ----------------------------------------------------------------------------------
def truncated(name: str) -> tuple[str, int] | None:
    """``tlxml-exact@K`` / ``tlxml-gn@K`` -> (the registry name, K kept eigen-directions); None otherwise."""
    base, sep, k = name.partition("@")
    if not sep:
        return None
    if base not in TLXML_NAMES or not k.isdigit() or int(k) < 1:
        raise ConfigError(f"{name!r}: a fixed truncation is written tlxml-exact@K or tlxml-gn@K with K ≥ 1")
    return base, int(k)


def skip_reason(run: Run, name: str, config: CompareConfig) -> str | None:
    """Why method ``name`` (registry, ``@K`` truncation of a TLXML one, or ``random``) does not apply, or None."""
    if name == RANDOM:
        return None
    fixed = truncated(name)
    return get_method(fixed[0] if fixed else name).skip_reason(run, config)


def score_matrix(run: Run, name: str, test_ids: Sequence[int], cfg: LDSConfig, config: CompareConfig,
                 tick: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """(T, M) helpfulness by method ``name`` for each test task: a ``compare`` registry name, a
    TLXML fit at a fixed truncation (``tlxml-gn@K``: the registry's cached fit, K eigen-directions
    kept instead of the self-rank choice) or ``random``. ``tick()`` after each test task a
    registry method scores (minutes on the demos: a progress bar's step)."""
    m = len(run.train_tasks)
    if name == RANDOM:
        rng = np.random.default_rng([cfg.subset_seed, m, len(test_ids)])
        return rng.standard_normal((len(test_ids), m)), {}
    fixed = truncated(name)
    if fixed:
        icfg = tlxml_config(fixed[0].removeprefix("tlxml-"), config)
        inf = fit_influence(run, icfg)
        if fixed[1] > inf.num_columns:
            raise ConfigError(f"{name}: the fit has {inf.num_columns} eigen-directions, fewer than {fixed[1]}")
        return test_score_matrix(run, inf.with_truncation(fixed[1]), icfg.dtype, test_ids), {"truncation": fixed[1]}
    method = get_method(name)
    rows, details = [], {}
    for t in test_ids:
        s, details = method.scores(run, Target((int(t),)), config)
        rows.append(s)
        if tick is not None:
            tick()
    return np.stack(rows), details


SLOW_PEERS = ("dattri-if-cg",)  # dattri's CG runs all its q iterations per test task; dattri-if-explicit scores alike where it fits


def default_methods() -> list[str]:
    """Every registered method but ``SLOW_PEERS`` (those that do not apply to a run are listed as skipped,
    with why) and the random baseline; ``--methods`` adds them."""
    return [*(m for m in METHODS if m not in SLOW_PEERS), RANDOM]


def parse_lds_methods(text: str | None) -> list[str] | None:
    """``"a,b"`` -> validated names (registry, ``tlxml-gn@K`` / ``tlxml-exact@K`` or ``random``);
    None (= defaults) when empty."""
    if not text:
        return None
    names = [x.strip() for x in text.split(",") if x.strip()]
    for n in names:
        if n != RANDOM:
            get_method((truncated(n) or (n, 0))[0])
    if len(set(names)) != len(names):
        raise ConfigError(f"methods listed twice in {text!r}")
    return names


# ---- the report ------------------------------------------------------------------------------
STORED_TEST_TOLERANCE = 1e-4  # relative: the same training on another CPU moves the mean test loss by ~1e-7 (measured 2e-7)


def stored_losses(run: Run, measured: Mapping[str, Any], kept: np.ndarray, tests: Sequence[int], seeds: Sequence[int]
                  ) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """(K, R, T) per-seed losses of ``tests`` read from a committed measurement (``task_lds``'s result
    with ``include_data``) instead of retraining: for scoring a method added later on the same
    retrainings. Refused unless it measured this run's configuration on the same subsets and training
    ``seeds`` (``train_seeds``), and the run is the one it measured (its mean test loss within
    ``STORED_TEST_TOLERANCE``, since a run trained again elsewhere agrees with the original only to rounding)."""
    if "data" not in measured:
        raise ConfigError("the measurement has no per-seed losses: it was written without --data")
    for key in ("task_config", "train_config"):
        if measured["run"][key] != run.meta[key]:
            raise ConfigError(f"the measurement is of another run: its {key} differs from this run's")
    if not np.array_equal(np.asarray(measured["data"]["subsets"]), kept):
        raise ConfigError("the measurement used other subsets (K, α or --subset-seed differ)")
    if list(measured["train_seeds"]) != list(seeds):
        raise ConfigError(f"the measurement has {len(measured['train_seeds'])} seeds per subset {measured['train_seeds']}, "
                          f"not this configuration's {list(seeds)} (--seeds)")  # fmt: skip
    was, now = measured["run"]["test"]["loss"], run.meta["test"]["loss"]
    if abs(was - now) > STORED_TEST_TOLERANCE * abs(was):
        raise ConfigError(f"this run's mean test loss {now:.6g} is not the measured run's {was:.6g}: another model")
    index = {int(t): i for i, t in enumerate(measured["test_tasks"])}
    missing = [t for t in tests if int(t) not in index]
    if missing:
        raise ConfigError(f"test tasks {missing[:5]} were not measured")
    return (np.asarray(measured["data"]["losses"], dtype=np.float64)[:, :, [index[int(t)] for t in tests]],
            {**measured["retraining"], "trained_now": 0, "losses_read_from_measurement": True})  # fmt: skip


def task_lds(
    run: Run, cfg: LDSConfig = LDSConfig(), *, methods: Sequence[str] | None = None, test_ids: Sequence[int] | None = None,
    work: str | Path | None = None, config: CompareConfig = DEFAULT_CONFIG,
    progress: Progress | None = None, include_data: bool = True, measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Task-level LDS of each method on ``run`` with its noise ceiling (module docstring).

    Scores come first (cached fits; under torchrun every rank takes part in them), then the K·R
    retrainings (cached under ``work``). Methods that do not apply are listed under ``skipped``.
    ``include_data`` adds the subsets, how many corrupted tasks each keeps, and the per-seed losses
    (K × R × T): enough to recompute every number here. ``measured``: such a result of this run, whose
    losses are used instead of retraining (``stored_losses``).
    """
    names = default_methods() if methods is None else list(methods)
    tests = list(range(len(run.test_tasks))) if test_ids is None else [run.test_tasks.check_id(int(t)) for t in test_ids]
    m = len(run.train_tasks)
    kept = lds_subsets(m, cfg)
    out: dict[str, Any] = {
        "config": cfg.to_dict(), "compare_config": config.to_dict(), "num_train_tasks": m, "subset_size": int(kept.shape[1]),
        "train_seeds": train_seeds(run, cfg), "test_tasks": tests, "sign": SIGN, "lds_sign": LDS_SIGN,
        "run": {"path": str(run.checkpoint.path), "task_config": run.meta["task_config"], "train_config": run.meta["train_config"],
                "test": run.meta.get("test")},
        "methods": {}, "skipped": {},
    }  # fmt: skip
    stored = None if measured is None else stored_losses(run, measured, kept, tests, train_seeds(run, cfg))  # refused before any scoring
    scores: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(names) * len(tests), desc="lds scores", unit="score", disable=progress is not None or not distributed.is_primary())
    for n in names:
        reason = skip_reason(run, n, config)
        if reason:
            out["skipped"][n] = reason
            bar.update(len(tests))
            continue
        started, before = time.time(), bar.n
        scores[n], details = score_matrix(run, n, tests, cfg, config, tick=lambda: bar.update(1))
        bar.update(before + len(tests) - bar.n)  # methods scored at once (random, fixed truncations) count whole
        out["methods"][n] = {"details": details, "score_seconds": round(time.time() - started, 3)}
    bar.close()
    if stored is not None:
        losses, out["retraining"] = stored
    else:
        all_losses, out["retraining"] = retrained_losses(run, kept, cfg, work, progress)
        losses = all_losses[:, :, tests]  # (K, R, T)
    out["null"] = null_band(kept, losses.mean(1), m, seed=cfg.subset_seed)
    out["ceiling"] = ceiling = noise_ceiling(losses) if cfg.seeds >= 2 else None
    # a ceiling inside the chance band of a mean correlation over these K subsets (its 95th
    # percentile) is not told apart from 0: a fraction of it would divide noise by noise
    usable = ceiling["mean"] if ceiling and ceiling["mean"] > out["null"]["q95"] else None
    for n, s in scores.items():
        out["methods"][n].update(summarize(lds_per_test(s, kept, losses.mean(1)), usable))
    out["pooled"] = pooled(scores, kept, losses)
    if include_data:
        corrupted = run.train_tasks.corruption != 0  # noise or label-flip tasks (TaskConfig), kept per subset
        out["data"] = {"subsets": kept.tolist(), "corrupted_kept": corrupted[kept].sum(1).tolist(), "losses": losses.tolist()}
    return out


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table: method, LDS mean ± sd over test tasks, fraction of ceiling."""
    cfg, ceiling = result["config"], result["ceiling"]
    lines = [(f"task-level LDS: K = {cfg['subsets']} subsets of {result['subset_size']}/{result['num_train_tasks']} tasks "
              f"(α = {cfg['alpha']}), R = {cfg['seeds']} seeds, {len(result['test_tasks'])} test tasks")]  # fmt: skip
    if ceiling:
        lines.append(f"noise ceiling (split-half over seeds, Spearman–Brown, mean over test tasks): {ceiling['mean']:.3f} ± "
                     f"{ceiling['sd']:.3f}; split-half r {ceiling['split_half_mean']:.3f} (corrected {ceiling['of_mean_split_half']:.3f}); "
                     f"√ceiling {ceiling['attainable']:.3f}")  # fmt: skip
    null = result["null"]
    lines.append(f"chance band ({null['draws']} random score tables): mean LDS sd {null['sd']:.3f}, 95th percentile {null['q95']:+.3f}; "
                 f"mean-test-loss LDS sd {null['pooled_sd']:.3f}, 95th percentile {null['pooled_q95']:+.3f}")  # fmt: skip
    pool = result["pooled"]
    ceiling_text = "—" if pool["ceiling"] is None else f"{pool['ceiling']:.3f}"
    w = max([12, *map(len, result["methods"]), *map(len, result["skipped"])])
    lines.append(f"{'method':<{w}} {'LDS mean ± sd':>17} {'/ ceiling':>10} {'mean test loss (ceiling ' + ceiling_text + ')':>32}")
    for name, row in result["methods"].items():
        frac = "—" if row["fraction_of_ceiling"] is None else f"{row['fraction_of_ceiling']:.2f}"
        lines.append(f"{name:<{w}} {row['mean']:>+8.3f} ± {row['sd']:<6.3f} {frac:>10} {pool['methods'][name]:>+32.3f}")
    lines += [f"{name:<{w}} skipped: {why}" for name, why in result["skipped"].items()]
    return "\n".join(lines)

