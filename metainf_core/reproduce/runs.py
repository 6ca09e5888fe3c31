"""Trained runs for the reproduction report: one folder per (task, training) configuration under
a work directory, trained once, resumed after a kill, reused by every experiment that needs it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metainf_core.cache import content_key
from metainf_core.checkpoint import META_FILE, TRAIN_STATE_FILE
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.influence import distributed
from metainf_core.service import Run, open_run
from metainf_core.train import train

Log = Callable[[str], None]


def run_key(task_cfg: TaskConfig, train_cfg: TrainConfig) -> str:
    """Folder name: readable prefix + content hash of both configurations."""
    inputs = {"task": task_cfg.to_dict(), "train": train_cfg.to_dict()}
    return f"{train_cfg.algo}-{task_cfg.dataset}-m{task_cfg.train_tasks}-s{train_cfg.seed}-{content_key(inputs)[:10]}"


def is_complete(directory: Path) -> bool:
    meta = directory / META_FILE
    return meta.is_file() and bool(json.loads(meta.read_text(encoding="utf-8")).get("complete"))


def _train(directory: Path, task_cfg: TaskConfig, train_cfg: TrainConfig, device: str) -> None:
    """Train the run into ``directory``, resuming a half-done one."""
    train(task_cfg, train_cfg, directory, resume=(directory / TRAIN_STATE_FILE).is_file(), device=device, progress=False)


def ensure_run(work: Path, task_cfg: TaskConfig, train_cfg: TrainConfig, log: Log | None = None, device: str = "cpu") -> Run:
    """The trained run for these configurations: reused when complete, resumed when half-done;
    trained and opened on ``device`` (the folder does not depend on it)."""
    directory = Path(work) / "runs" / run_key(task_cfg, train_cfg)
    if distributed.is_primary() and not is_complete(directory):  # under torchrun rank 0 trains
        if log is not None:
            log(f"{'resuming' if (directory / TRAIN_STATE_FILE).is_file() else 'training'} {directory.name}")
        _train(directory, task_cfg, train_cfg, device)
    distributed.barrier()  # on every call: a rank deciding from the folder alone could skip it (a late rank sees it complete)
    return open_run(directory, device=device)


def train_runs(work: Path, configs: list[tuple[TaskConfig, TrainConfig]], log: Log | None = None, device: str = "cpu") -> list[str]:
    """Under torchrun: the runs of ``configs`` not yet complete, trained N at a time — dealt
    round-robin over the ranks, each rank training its share one after another — so that
    independent runs (seeds, learners, taskset sizes) do not wait for rank 0; returns their keys.
    Nothing in a single process (``ensure_run`` trains each run when it is first needed)."""
    if not distributed.active():
        return []
    dirs = {run_key(t, tr): (Path(work) / "runs" / run_key(t, tr), t, tr) for t, tr in configs}
    # decided together (one all-reduce per run, before any rank starts): a rank that listed the
    # folders after another had finished a short run would deal the runs differently
    todo = [key for key, (d, _, _) in dirs.items() if not distributed.all_ranks(is_complete(d))]
    r, n = distributed.rank(), distributed.world_size()
    if log is not None and distributed.is_primary():
        for i, key in enumerate(todo):
            log(f"training {key} on rank {i % n}")
    for key in todo[r::n]:
        _train(*dirs[key], device)
    distributed.barrier()
    return todo


def describe(run: Run) -> dict[str, Any]:
    """What a table needs to say about a run: its test accuracy and size."""
    test = run.meta["test"]
    return {"accuracy": test["accuracy"], "accuracy_ci95": test["accuracy_ci95"], "num_parameters": run.meta["num_parameters"]}
