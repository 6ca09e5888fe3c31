"""Cached, resumable TLXML fits of a trained run: cache entries, fits shipped in a run folder, fit orchestration.

A fit is stored under a content hash of (model weights, training taskset, settings); a
Gauss-Newton fit saves its streaming state every ``save_every`` tasks, so a killed fit resumes
without recomputing finished tasks (in one process or any number of torchrun ranks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from metainf_core.cache import CacheEntry, content_key
from metainf_core.checkpoint import MODEL_FILE, load_tensors, read_tensor_metadata, save_tensors
from metainf_core.config import InfluenceConfig, InfluenceMethod
from metainf_core.exceptions import CheckpointError
from metainf_core.influence import GaussNewtonConfig, TaskInfluence, distributed, fit_exact, fit_gauss_newton
from metainf_core.influence.fit import FitProgress
from metainf_core.influence.projection import InfluenceSpace
from metainf_core.io import sha256_file, write_json_atomic
from metainf_core.learners import Params
from metainf_core.service import Run

CACHE_FORMAT = 1
LEGACY_MODES = {"gauss_newton": InfluenceMethod.GN.value}  # TaskInfluence.mode in fits stored before one method vocabulary


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


def test_scores_entry(run: Run, cfg: InfluenceConfig) -> CacheEntry:
    """Where the fit's test table (``ranking.fit_test_table``: T × M helpfulness of every training
    task for each test task) lives: the disk cache, filled from a copy shipped in the run folder
    (``CacheEntry.ship``) when it has none."""
    entry = CacheEntry.for_inputs("test-scores", {**cache_inputs(run, cfg), "test_tasks": run.test_tasks.fingerprint()})
    entry.restore_shipped(run.checkpoint.path)
    return entry


def _edit_inputs(run: Run, cfg: InfluenceConfig, block: Sequence[int]) -> dict[str, Any]:
    """What the test metrics of an edit blocking ``block`` with this fit's I_meta depend on besides ξ."""
    return {**cache_inputs(run, cfg), "test_tasks": run.test_tasks.fingerprint(), "block": sorted({int(j) for j in block})}


def edit_metrics_entry(run: Run, cfg: InfluenceConfig, block: Sequence[int], xi: float) -> CacheEntry:
    """Where the test metrics of the edit ω̂ + ξ Σ_{j∈block} I_meta (this fit's I_meta) live: the disk
    cache, filled from a copy shipped in the run folder when it has none (a demo ships the Audit
    page's default random removals)."""
    entry = CacheEntry.for_inputs("edit-metrics", {**_edit_inputs(run, cfg, block), "xi": float(xi)})
    entry.restore_shipped(run.checkpoint.path)
    return entry


def xi_sweep_entry(run: Run, cfg: InfluenceConfig, block: Sequence[int], xis: Sequence[float]) -> CacheEntry:
    """Where the test metrics of ω̂ + ξ Σ_{j∈block} I_meta at every ξ of ``xis`` live (the Edit page's
    accuracy-versus-ξ curve, ``edit.stored_xi_sweep``; the enhanced set is not part of the sweep):
    one entry for the whole sweep, whichever test task the page reads it at, and the home of its job."""
    return CacheEntry.for_inputs("xi-sweep", {**_edit_inputs(run, cfg, block), "xis": [float(x) for x in xis]})


def removal_entry(run: Run, cfg: InfluenceConfig, sets: Sequence[Sequence[int]], xi: float) -> CacheEntry:
    """Where the test metrics of each removed set of ``sets`` at ξ live together (the Audit page's
    k most suspicious and its random sets, ``detect.stored_removal_evaluations``): the home of their
    job; each set's metrics are also kept alone (``edit_metrics_entry``), shared with other requests."""
    blocks = [sorted({int(j) for j in ids}) for ids in sets]
    return CacheEntry.for_inputs("removal", {**cache_inputs(run, cfg), "test_tasks": run.test_tasks.fingerprint(),
                                             "sets": blocks, "xi": float(xi)})  # fmt: skip


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
        mode=LEGACY_MODES.get(info["mode"], info["mode"]),
        num_negative=int(info["num_negative"]),
        num_positive=int(info["num_positive"]),
        self_ranks=tuple((int(k), float(r)) for k, r in info["self_ranks"]),
        space=InfluenceSpace.from_dict(info["space"]) if info.get("space") else None,
    )


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
        else:  # one process, or one rank of a torchrun launch (influence/distributed.py)
            inf, record = fit_gauss_newton(
                run.model, run.spec, params, run.train_tasks, run.dataset, config=GaussNewtonConfig.from_influence_config(cfg),
                damping=cfg.damping, checkpoint=(entry.directory, entry.inputs), save_every=save_every, progress=progress,
                compute_device=run.device, batch_size=grad_batch, select=False,
            )  # fmt: skip
            if not distributed.is_primary():  # ranks > 0: rank 0 chooses the truncation and writes the entry; read it
                return _from_tensors(*distributed.wait_for_entry(entry)).to(run.device)
    inf = inf.with_truncation(cfg.truncation) if cfg.truncation else inf.select_truncation(sample=cfg.self_rank_sample)
    tensors, info = _to_tensors(inf)
    distributed.save_entry(entry, tensors, {**info, "fit_seconds": round(time.time() - started, 2), **record})  # entry.save on rank 0
    return inf.to(run.device)
