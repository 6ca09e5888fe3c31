"""Leave-out retraining: the slow baseline of an edit (TLXML Table 3's leave-out) — retrain from
scratch with the run's settings, never drawing the excluded training tasks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.service import Run, open_run


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
