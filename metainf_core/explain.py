"""Influence for a trained run, end to end: cached resumable fit → ranking rows → one-step edits.

The orchestration the CLI and the pages share. A fit is stored under a content hash of
(model weights, training taskset, settings); a Gauss-Newton fit saves its streaming state every
``save_every`` tasks, so a killed fit resumes without recomputing finished tasks.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metainf_core.cache import PARTIAL, CacheEntry, content_key
from metainf_core.checkpoint import MODEL_FILE, load_tensors, read_tensor_metadata, save_checkpoint, save_tensors
from metainf_core.config import InfluenceConfig, InfluenceMethod, TaskConfig, TrainConfig
from metainf_core.edit import EditSpec, apply_delta, edit_delta
from metainf_core.exceptions import CheckpointError, ConfigError
from metainf_core.influence import (
    CurvatureMode,
    GaussNewtonConfig,
    GaussNewtonFit,
    TaskInfluence,
    fit_exact,
    influence_from_projections,
    sum_by_group,
    superclass_groups,
    task_gradients,
)
from metainf_core.learners import Params
from metainf_core.service import Run, open_run
from metainf_core.influence import distributed
from metainf_core.influence.exact import MAX_EXACT_PARAMS
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.projection import InfluenceSpace
from metainf_core.io import sha256_file, write_json_atomic
from metainf_core.validate import proper_tests, score_agreement, self_ranks, superclass_overlap, top_k_overlap

CACHE_FORMAT = 1
# (stage, done, total) — stage is "curvature" or "gradients"
FitProgress = Callable[[str, int, int], None]


# Beyond this many parameters a full Gauss-Newton fit's q × 2·N_orth buffer passes ~2 GB (float32,
# N_orth = 512) and each task's n_q·(c−1) backward passes take minutes on a CPU (ResNet-12: 226 s).
LARGE_MODEL_PARAMETERS = 500_000
LARGE_MODEL_SKETCH = 4096  # d of the CountSketch for large models (buffer 1,024 × 4,096)
LARGE_MODEL_ROWS = 8  # sampled columns per task for large models (columns.sample_cotangents)


def influence_config_for(run: Run, base: InfluenceConfig) -> InfluenceConfig:
    """``base``, or for a large model (> LARGE_MODEL_PARAMETERS) ``base`` with a CountSketch to
    4,096 dimensions and 8 sampled columns per task, so an imported ResNet-12 fits in memory and
    in minutes per hundred tasks instead of hours (bench/bench_projection.py)."""
    q = sum(v.numel() for v in run.checkpoint.params.values())
    if q <= LARGE_MODEL_PARAMETERS or base.reduces or base.rows_per_task or InfluenceMethod(base.method) is not InfluenceMethod.GN:
        return base
    return replace(base, projection_dim=LARGE_MODEL_SKETCH, rows_per_task=LARGE_MODEL_ROWS)


def params_as(run: Run, dtype: str) -> Params:
    """The run's weights cast to ``dtype`` (influence is computed in float64 by default)."""
    return {k: v.to(getattr(torch, dtype)) for k, v in run.params.items()}


def run_fingerprint(run: Run) -> dict[str, Any]:
    """What any cached influence result depends on besides its settings: weights hash, learner,
    training taskset and dataset fingerprints."""
    return {
        "model": run.meta["hashes"][MODEL_FILE],
        "learner": run.spec.key(),
        "train_tasks": run.train_tasks.fingerprint(),
        "dataset": run.dataset.fingerprint,
    }


def cache_inputs(run: Run, cfg: InfluenceConfig) -> dict[str, Any]:
    """Everything a fit depends on: the run's fingerprint and the settings."""
    return {"format": CACHE_FORMAT, **run_fingerprint(run), "config": cfg.to_dict()}


def cache_entry(run: Run, cfg: InfluenceConfig) -> CacheEntry:
    return CacheEntry.for_inputs("influence", cache_inputs(run, cfg))


def is_fitted(run: Run, cfg: InfluenceConfig) -> bool:
    """True when the fit is in the disk cache or shipped inside the run folder (loads at once)."""
    entry = cache_entry(run, cfg)
    return entry.complete or shipped_fit_path(run, entry).is_file()


# ---- fits shipped inside a run folder --------------------------------------------------------
# A bundled demo carries its default fit so a fresh clone answers at once. The file holds the
# cache entry's inputs and a SHA-256 of the tensors, so it is used only for exactly these
# weights, tasksets, data and settings, and a truncated or altered file is refused.
SHIPPED_DIR = "influence"
QUANTISED = ("factor", "projections")  # float16 with a float32 scale per column; the rest float32


def shipped_fit_path(run: Run, where: InfluenceConfig | CacheEntry) -> Path:
    """``<run>/influence/<cache key>.safetensors`` for the fit with these settings (or cache entry)."""
    entry = where if isinstance(where, CacheEntry) else cache_entry(run, where)
    return run.checkpoint.path / SHIPPED_DIR / f"{entry.directory.name}.safetensors"


def ship_fit(run: Run, cfg: InfluenceConfig, inf: TaskInfluence | None = None) -> Path:
    """Store the run's fit ``inf`` (default: fitted now if not cached) in ``<run>/influence/``: U and P
    in float16 with a per-column scale (|error| ≤ 2⁻¹¹ of each column's largest entry), the rest float32."""
    tensors, info = _to_tensors(fit_influence(run, cfg) if inf is None else inf)
    packed: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name in QUANTISED:
            scale = t.abs().amax(0).clamp_min(torch.finfo(torch.float32).tiny).float()
            packed[name] = (t.float() / scale).half()
            packed[f"{name}_scale"] = scale
        else:
            packed[name] = t.float()
    entry = cache_entry(run, cfg)
    path = shipped_fit_path(run, entry)
    save_tensors(path, packed, metadata={"inputs": entry.inputs, "info": info})
    write_json_atomic(path.with_suffix(".json"), {"sha256": sha256_file(path), "inputs": entry.inputs})
    return path


def load_shipped_fit(run: Run, cfg: InfluenceConfig, entry: CacheEntry | None = None) -> TaskInfluence | None:
    """The fit shipped with the run, checked (hash, inputs) and copied into the disk cache entry;
    None when there is none. A file that fails the checks raises CheckpointError."""
    entry = cache_entry(run, cfg) if entry is None else entry
    path = shipped_fit_path(run, entry)
    if not path.is_file():
        return None
    record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8")) if path.with_suffix(".json").is_file() else {}
    if record.get("sha256") != sha256_file(path):
        raise CheckpointError(f"{path}: content hash mismatch with its .json record (file altered or truncated)")
    meta = read_tensor_metadata(path)
    if content_key(meta.get("inputs", {})) != content_key(entry.inputs):
        raise CheckpointError(f"{path}: shipped for other weights, tasksets, data or settings")
    packed = load_tensors(path)
    dtype = getattr(torch, cfg.dtype)
    tensors = {
        name: (t.to(dtype) * packed[f"{name}_scale"].to(dtype)) if name in QUANTISED else t.to(dtype)
        for name, t in packed.items() if not name.endswith("_scale")
    }  # fmt: skip
    info = {**meta["info"], "source": f"shipped with the run ({path.name}, float16 U and P)"}
    entry.save(tensors, info)
    return _from_tensors(tensors, info)


def fit_status(run: Run, cfg: InfluenceConfig) -> dict[str, Any]:
    """Whether the influence fit is cached: ``state`` complete / partial (a fit left half-way,
    with ``tasks_done`` of ``total``) / none; read from the cache without loading the fit."""
    entry = cache_entry(run, cfg)
    total = len(run.train_tasks)
    if entry.complete or shipped_fit_path(run, entry).is_file():
        return {"state": "complete", "tasks_done": total, "total": total}
    progress = distributed.partial_progress(entry.directory, total)  # a single process's or torchrun ranks' saved buffers
    if progress is not None:
        return {"state": "partial", "tasks_done": int(progress.get("tasks_done", 0)), "total": total}
    return {"state": "none", "tasks_done": 0, "total": total}


def _to_tensors(inf: TaskInfluence) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"factor": inf.factor, "projections": inf.projections, "signs": inf.signs, "eigenvalues": inf.eigenvalues}
    info = {
        "truncation": inf.truncation,
        "mode": inf.mode,
        "num_negative": inf.num_negative,
        "num_positive": inf.num_positive,
        "self_ranks": [list(x) for x in inf.self_ranks],
    }
    if inf.space is not None:  # sketch / parameter groups (projection.py): rebuilt from its seed on load
        info["space"] = inf.space.to_dict()
    return tensors, info


def _from_tensors(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> TaskInfluence:
    return TaskInfluence(
        factor=tensors["factor"],
        projections=tensors["projections"],
        signs=tensors["signs"],
        eigenvalues=tensors["eigenvalues"],
        truncation=int(info["truncation"]),
        mode=info["mode"],
        num_negative=int(info["num_negative"]),
        num_positive=int(info["num_positive"]),
        self_ranks=tuple((int(k), float(r)) for k, r in info["self_ranks"]),
        space=InfluenceSpace.from_dict(info["space"]) if info.get("space") else None,
    )


def _gn_config(cfg: InfluenceConfig) -> GaussNewtonConfig:
    """The streamed fit's settings for an influence configuration (large-backbone options included)."""
    return GaussNewtonConfig(
        n_orth=cfg.n_orth, task_batch=cfg.task_batch, projection_dim=cfg.projection_dim,
        projection_seed=cfg.projection_seed, param_groups=cfg.param_groups, rows_per_task=cfg.rows_per_task,
    )  # fmt: skip


def _gauss_newton_factor(run: Run, cfg: InfluenceConfig, entry: CacheEntry, params: Params, progress, save_every: int):
    """Algorithm 1 over all training tasks, checkpointed to the cache every ``save_every`` tasks."""
    args = (run.model, run.spec, params, run.train_tasks, run.dataset)
    total = len(run.train_tasks)
    # its own partial state, or what a killed torchrun launch saved per rank (any world size)
    fit = distributed.resume_buffer(entry.directory, total, lambda state: GaussNewtonFit.from_state_dict(state, *args))
    fit = fit or GaussNewtonFit(*args, _gn_config(cfg))
    todo = np.flatnonzero(~fit.done)
    for start in range(0, len(todo), save_every):
        fit.add_tasks(todo[start : start + save_every], None if progress is None else lambda d, _t: progress("curvature", d, total))
        distributed.save_buffer(entry.directory / PARTIAL, fit, entry.inputs)
    return fit.factor(cfg.damping)


def _gradient_projector(run: Run, cfg: InfluenceConfig, params: Params, u: torch.Tensor, grad_batch: int):
    """The fit's reduction R (sketch / parameter groups, rebuilt deterministically from the settings;
    None for all parameters) and ``project(ids)``: the rows P_j = (R g_j)ᵀ U of training tasks ``ids``."""
    space = InfluenceSpace.build(ParamLayout.from_params(params), cfg.param_groups, cfg.projection_dim, cfg.projection_seed)

    def project(ids: np.ndarray) -> torch.Tensor:
        g = task_gradients(run.model, run.spec, params, run.train_tasks, run.dataset, ids, grad_batch)
        return (g if space is None else space.reduce(g)) @ u

    return space, project


def _distributed_gauss_newton(run: Run, cfg: InfluenceConfig, entry: CacheEntry, params: Params, progress, save_every: int, grad_batch: int):
    """This rank's share of a torchrun fit (``influence/distributed.py``): its shard of the tasks
    streamed into its own buffer (checkpointed to its partial file), the buffers tree-merged into
    the factor, its shard of P = (R G) U; returns (TaskInfluence before truncation on rank 0, else
    None; the fit's record)."""
    args = (run.model, run.spec, params, run.train_tasks, run.dataset)
    m = len(run.train_tasks)
    stream = distributed.stream_curvature(
        lambda: GaussNewtonFit(*args, _gn_config(cfg)), lambda state: GaussNewtonFit.from_state_dict(state, *args),
        entry.directory, entry.inputs, m, cfg.damping, compute_device=run.device, progress=progress, save_every=save_every,
    )  # fmt: skip
    u = stream.factor.factor
    space, project = _gradient_projector(run, cfg, params, u, grad_batch)
    proj = distributed.sharded_projections(project, m, u.shape[1], u.dtype, compute_device=run.device, batch=grad_batch, progress=progress)
    if not distributed.is_primary():
        return None, stream.record
    return influence_from_projections(stream.factor, proj, CurvatureMode.GAUSS_NEWTON, select=False, space=space), stream.record


def fit_influence(
    run: Run, cfg: InfluenceConfig, *, progress: FitProgress | None = None, save_every: int = 64, grad_batch: int = 32
) -> TaskInfluence:
    """TLXML fitted on the run's training taskset, from the disk cache when already computed; its
    tensors on the run's device (the cache itself holds CPU tensors, whatever device fitted them)."""
    # torchrun: the ranks decide together (an all-reduce, so every rank looks at the cache before
    # any can write to it: none finds an entry rank 0 wrote in this very call and skips the collectives
    # of the fit), and use the cache only when every rank has the entry (node-local directories)
    entry = cache_entry(run, cfg)
    if distributed.all_ranks(entry.complete):
        return _from_tensors(*entry.load()).to(run.device)
    shipped = load_shipped_fit(run, cfg, entry)
    if distributed.all_ranks(shipped is not None):
        return shipped.to(run.device)
    from metainf_core.train import retained_allocations

    with retained_allocations():  # as training: no fresh zeroed pages for each task's columns (~12 % of a fit's CPU)
        started = time.time()
        params = params_as(run, cfg.dtype)
        record: dict[str, Any] = {}  # a distributed fit's world size and tasks per rank (none in a single process)
        if InfluenceMethod(cfg.method) is InfluenceMethod.EXACT:
            inf = fit_exact(run.model, run.spec, params, run.train_tasks, run.dataset, damping=cfg.damping, select=False)
        elif distributed.active():  # one rank of a torchrun launch (influence/distributed.py)
            inf, record = _distributed_gauss_newton(run, cfg, entry, params, progress, save_every, grad_batch)
            if inf is None:  # ranks > 0: rank 0 chooses the truncation and writes the entry; read it
                return _from_tensors(*distributed.wait_for_entry(entry)).to(run.device)
        else:
            factor = _gauss_newton_factor(run, cfg, entry, params, progress, save_every)
            space, project = _gradient_projector(run, cfg, params, factor.factor, grad_batch)
            m = len(run.train_tasks)
            proj = torch.empty(m, factor.factor.shape[1], dtype=factor.factor.dtype, device=factor.factor.device)
            for start in range(0, m, grad_batch):  # P = G U in chunks: never the whole M × q gradient matrix
                ids = np.arange(start, min(m, start + grad_batch))
                proj[ids] = project(ids)
                if progress is not None:
                    progress("gradients", int(ids[-1]) + 1, m)
            inf = influence_from_projections(factor, proj, CurvatureMode.GAUSS_NEWTON, select=False, space=space)
    inf = inf.with_truncation(cfg.truncation) if cfg.truncation else inf.select_truncation(sample=cfg.self_rank_sample)
    tensors, info = _to_tensors(inf)
    distributed.save_entry(entry, tensors, {**info, "fit_seconds": round(time.time() - started, 2), **record})  # entry.save on rank 0
    return inf.to(run.device)


# ---- targets and rankings -----------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What to explain: test tasks ``ids`` (average loss), or a training task (``split="train"``)."""

    ids: tuple[int, ...]
    split: str = "test"

    @classmethod
    def parse(cls, text: str, run: Run) -> Target:
        """``"7"``, ``"1,2,3"``, ``"all"`` (whole test taskset) or ``"train:J"`` (self-rank probe)."""
        text = text.strip()
        if text == "all":
            return cls(tuple(range(len(run.test_tasks))))
        split, _, rest = text.rpartition(":")
        split = split or "test"
        if split not in ("test", "train"):
            raise ConfigError(f"target {text!r}: expected ID, IDS, all or train:J")
        try:
            ids = tuple(int(x) for x in rest.split(","))
        except ValueError:
            raise ConfigError(f"target {text!r}: task ids must be integers") from None
        ts = run.test_tasks if split == "test" else run.train_tasks
        for i in ids:
            ts.check_id(i)
        return cls(ids, split)


def target_gradient(run: Run, target: Target, dtype: str) -> torch.Tensor:
    """∇_ω of the target's average query loss at ω̂ (TLXML Eq. 9's g_i)."""
    ts = run.test_tasks if target.split == "test" else run.train_tasks
    return task_gradients(run.model, run.spec, params_as(run, dtype), ts, run.dataset, list(target.ids)).mean(0)


def task_rows(run: Run, ids: Sequence[int], scores: np.ndarray, ranks: np.ndarray) -> list[dict[str, Any]]:
    """Ranked rows as users read them: id, score, rank, fine labels, superclasses, corruption."""
    rows = []
    for j, s, r in zip(ids, scores, ranks, strict=True):
        t = run.train_tasks.task(int(j), run.dataset)
        rows.append({
            "task": t.id, "rank": int(r), "helpfulness": float(s), "classes": list(t.class_names),
            "superclasses": list(t.superclasses), "corruption": t.corruption,
        })  # fmt: skip
    return rows


def all_scores(run: Run, inf: TaskInfluence, target: Target, dtype: str) -> np.ndarray:
    """Helpfulness of every training task for the target (M,), positive = lowers its loss."""
    return inf.helpfulness(target_gradient(run, target, dtype)).cpu().numpy()


def score_parts(run: Run, inf: TaskInfluence, target: Target, dtype: str) -> dict[str, np.ndarray]:
    """Every training task's helpfulness for the target with its two factors: ``size`` (how hard
    the task pulls at all, ‖g_j‖ in the fitted metric) and ``alignment`` (cosine with the target in
    that metric, RelatIF-style): helpfulness = test_size · size · alignment."""
    parts = inf.score_parts(target_gradient(run, target, dtype))
    return {
        "helpfulness": parts.helpfulness.cpu().numpy(), "size": parts.sizes.cpu().numpy(),
        "alignment": parts.alignment.cpu().numpy(), "test_size": float(parts.test_norm),
    }  # fmt: skip


def group_scores(run: Run, scores: np.ndarray, grouping: str = "superclass") -> dict[str, float]:
    """Sum of helpfulness per group (TLXML A.3); ``superclass`` groups by a task's superclass set."""
    if grouping != "superclass":
        raise ConfigError(f"unknown grouping {grouping!r} (built in: superclass)")
    return sum_by_group(scores, superclass_groups(run.train_tasks, run.dataset))


def ranking_table(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Task ids by decreasing helpfulness and the rank (0 = most helpful) of every task."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty_like(order)
    ranks[order] = np.arange(len(order))
    return order, ranks


# ---- one-step edits -----------------------------------------------------------------------
def edited_params(run: Run, inf: TaskInfluence, spec: EditSpec) -> Params:
    """ω' = ω̂ + δω of TLXML Eq. 13."""
    return apply_delta(run.params, edit_delta(inf.i_meta_sum, spec))


def edit_report(run: Run, params: Params, test_task: int | None = None) -> dict[str, Any]:
    """Loss and accuracy before and after on the test taskset (mean, 95% interval) and one test task."""
    before, after = run.evaluate(), run.evaluate(params)
    report: dict[str, Any] = {"taskset": {"before": before.summary(), "after": after.summary()}}
    if test_task is not None:
        i = run.test_tasks.check_id(test_task)
        report["test_task"] = {
            "id": i,
            "before": {"loss": float(before.loss[i]), "accuracy": float(before.accuracy[i])},
            "after": {"loss": float(after.loss[i]), "accuracy": float(after.accuracy[i])},
        }
    return report


def save_edited_checkpoint(run: Run, params: Params, out: str | Path, edit: dict[str, Any]) -> Path:
    """Write ω' as a checkpoint of its own (same tasksets), recording the edit that made it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in run.meta["tasksets"].values():
        shutil.copyfile(run.checkpoint.path / name, out / name)
    meta = {k: v for k, v in run.meta.items() if k not in ("hashes", "test")}
    meta.update(edited_from=str(run.checkpoint.path), edit=edit, test=edit.get("test"))
    return save_checkpoint(out, params, meta, tuple(run.meta["tasksets"].values()))


# ---- validation (TLXML 5.1) ---------------------------------------------------------------
def test_score_matrix(run: Run, inf: TaskInfluence, dtype: str, test_ids: Sequence[int]) -> np.ndarray:
    """T × M helpfulness of every training task for each test task in ``test_ids``."""
    g = task_gradients(run.model, run.spec, params_as(run, dtype), run.test_tasks, run.dataset, list(test_ids))
    return inf.helpfulness(g).cpu().numpy()


def validation_report(
    run: Run, inf: TaskInfluence, cfg: InfluenceConfig, *, self_rank: bool = True, noise: bool = True,
    superclass: bool = True, max_tests: int = 128, exact_agreement: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Self-rank table, noise-vs-normal and superclass-overlap proper tests with binomial σ (the
    superclass tests compare normal training tasks only: noise tasks are left out of both groups)."""
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


def leave_out_configs(run: Run, exclude: Sequence[int], steps: int | None = None) -> tuple[TaskConfig, TrainConfig]:
    """The run's task and training configurations with the tasks in ``exclude`` never drawn (and
    ``steps`` training steps when given): what leave-out retraining trains."""
    train_dict = {**run.meta["train_config"], "exclude_tasks": tuple(int(j) for j in exclude)}
    if steps is not None:
        train_dict["steps"] = int(steps)
    return TaskConfig.from_dict(run.meta["task_config"]), TrainConfig.from_dict(train_dict)


def leave_out_retrain(run: Run, exclude: Sequence[int], out: str | Path, steps: int | None = None) -> dict[str, Any]:
    """Slow baseline for an edit: retrain from scratch with the same settings, never drawing the
    tasks in ``exclude`` (TLXML Table 3's leave-out); returns its test summary and runtime."""
    from metainf_core.train import train

    task_cfg, train_cfg = leave_out_configs(run, exclude, steps)
    started = time.time()
    directory = train(task_cfg, train_cfg, out, progress=False, device=str(run.device))
    retrained = open_run(directory)
    return {"out": str(directory), "test": retrained.evaluate().summary(), "seconds": round(time.time() - started, 2)}
