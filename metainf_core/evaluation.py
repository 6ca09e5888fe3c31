"""Few-shot evaluation over a fixed taskset: per-task query loss/accuracy, mean and 95% interval."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from metainf_core.data.base import FewShotDataset
from metainf_core.learners import Params
from metainf_core.tasks import TaskSet

BatchedMetrics = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and the half-width of its normal 95% interval, 1.96·s/√n (0 for n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), 0.0
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


@dataclass(frozen=True)
class TaskMetrics:
    """Query loss and accuracy of each evaluated task, in the order of ``task_ids``."""

    task_ids: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The three arrays as tensors (for ``cache.CacheEntry.save``), losslessly."""
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in ("task_ids", "loss", "accuracy")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TaskMetrics:
        return cls(*(tensors[name].numpy() for name in ("task_ids", "loss", "accuracy")))

    def summary(self) -> dict[str, float]:
        acc, acc_ci = mean_ci95(self.accuracy)
        loss, loss_ci = mean_ci95(self.loss)
        return {
            "accuracy": acc,
            "accuracy_ci95": acc_ci,
            "loss": loss,
            "loss_ci95": loss_ci,
            "num_tasks": int(len(self.task_ids)),
        }


def stack_metrics(rows: list[TaskMetrics]) -> dict[str, torch.Tensor]:
    """Several evaluations of the same tasks as tensors (loss and accuracy: one row each), losslessly."""
    return {"task_ids": torch.from_numpy(np.ascontiguousarray(rows[0].task_ids)),
            "loss": torch.from_numpy(np.stack([r.loss for r in rows])),
            "accuracy": torch.from_numpy(np.stack([r.accuracy for r in rows]))}  # fmt: skip


def unstack_metrics(tensors: dict[str, torch.Tensor]) -> list[TaskMetrics]:
    """``stack_metrics`` read back: one ``TaskMetrics`` per row."""
    ids = tensors["task_ids"].numpy()
    return [TaskMetrics(ids, loss.numpy(), acc.numpy()) for loss, acc in zip(tensors["loss"], tensors["accuracy"], strict=True)]


def default_eval_batch(device: torch.device | str) -> int:
    """Tasks per vmapped evaluation call: 8 on the CPU, where small batches keep the activations
    in cache (2× faster than 64 for the conv4 demos; bench/bench_app_responsiveness.py), 64 on a GPU."""
    return 64 if torch.device(device).type == "cuda" else 8


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_eval_workers(device: torch.device | str) -> int:
    """Batches evaluated at once on the CPU: the usable cores over torch's intra-op threads, so a
    server at one thread per session (app.py) still gives one viewer's evaluation every core (2.4×
    faster on both demos on 2 cores; bench/bench_app_responsiveness.py); 1 on a GPU."""
    if torch.device(device).type == "cuda":
        return 1
    return max(1, usable_cores() // max(1, torch.get_num_threads()))


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (its size, the pool)
_POOL_LOCK = threading.Lock()  # sessions' threads may ask at once


def _pool(workers: int) -> ThreadPoolExecutor:
    """One lasting pool for every evaluation of the process (its threads keep their network copies,
    learners.call_network); replaced by a larger one when more workers are asked for."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] < workers:
            _POOL = (workers, ThreadPoolExecutor(workers, thread_name_prefix="metainf-eval"))
        return _POOL[1]


def evaluate_tasks(
    metrics_fn: BatchedMetrics,
    params: Params,
    taskset: TaskSet,
    dataset: FewShotDataset,
    task_ids: np.ndarray | list[int] | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    workers: int | None = None,
) -> TaskMetrics:
    """Run ``metrics_fn`` (from ``create_batched_task_metrics_function``) over tasks in batches
    (``batch_size`` tasks per call; default ``default_eval_batch(device)``), ``workers`` batches
    at once on threads (default ``default_eval_workers``). Each batch is computed alone, so the
    numbers do not depend on ``workers``."""
    batch_size = batch_size or default_eval_batch(device)
    ids = np.arange(len(taskset)) if task_ids is None else np.asarray(task_ids, dtype=np.int64)
    chunks = [ids[start : start + batch_size] for start in range(0, len(ids), batch_size)]

    def one(chunk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():  # grad mode is per thread
            batch = taskset.batch(chunk, dataset).to(device)
            loss, acc = metrics_fn(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y)
            return loss.cpu().numpy(), acc.cpu().numpy()

    workers = min(len(chunks), workers or default_eval_workers(device))
    out = list(_pool(workers).map(one, chunks)) if workers > 1 else [one(c) for c in chunks]
    if not out:
        return TaskMetrics(ids, np.zeros(0), np.zeros(0))
    return TaskMetrics(ids, np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]))
