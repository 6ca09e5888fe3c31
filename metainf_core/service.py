"""What the CLI and the pages share: a checkpoint opened together with its data and tasksets."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metainf_core.cache import CacheEntry
from metainf_core.checkpoint import MODEL_FILE, Checkpoint, load_checkpoint
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.data import load_dataset
from metainf_core.data.base import FewShotDataset
from metainf_core.evaluation import TaskMetrics, evaluate_tasks
from metainf_core.exceptions import CheckpointError
from metainf_core.learners import LearnerSpec, Params, create_batched_task_metrics_function
from metainf_core.models import build_network
from metainf_core.tasks import TaskSet


AS_TRAINED_FORMAT = 1  # of the stored ``Run.as_trained``: raise it when evaluation's numbers change


@dataclass(eq=False)
class Run:
    """A trained meta-learner: ω̂, its network, learner spec, dataset and both fixed tasksets."""

    checkpoint: Checkpoint
    dataset: FewShotDataset
    model: nn.Module
    spec: LearnerSpec
    train_tasks: TaskSet
    test_tasks: TaskSet
    device: torch.device

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    @cached_property
    def params(self) -> Params:
        return {k: v.to(self.device) for k, v in self.checkpoint.params.items()}

    @cached_property
    def batched_metrics(self):  # noqa: ANN201 - a closure from learners
        return create_batched_task_metrics_function(self.model, self.spec)

    def as_trained_entry(self) -> CacheEntry:
        """Where ``as_trained`` lives on disk: keyed by the weights, learner, test taskset and data,
        filled from a copy shipped in the run folder (``CacheEntry.ship``) when the cache has none."""
        inputs = {"format": AS_TRAINED_FORMAT, "model": self.meta["hashes"][MODEL_FILE], "learner": self.spec.key(),
                  "test_tasks": self.test_tasks.fingerprint(), "dataset": self.dataset.fingerprint}  # fmt: skip
        entry = CacheEntry.for_inputs("as-trained", inputs)
        entry.restore_shipped(self.checkpoint.path)
        return entry

    @cached_property
    def as_trained(self) -> TaskMetrics:
        """ω̂'s per-test-task metrics, evaluated once per run (the weights never change after loading)
        and kept on disk (``as_trained_entry``; the demos ship theirs): the "before" of every edit, on
        every page and in the CLI; the bytes read back are the ones computed."""
        def compute():
            metrics = self.evaluate()
            return metrics.to_tensors(), {"num_test_tasks": len(metrics.task_ids)}

        return TaskMetrics.from_tensors(self.as_trained_entry().load_or_compute(compute)[0])

    def evaluate(
        self, params: Params | None = None, split: str = "test", task_ids=None, batch_size: int | None = None, workers: int | None = None
    ) -> TaskMetrics:
        """Per-task query loss/accuracy of ``params`` (default ω̂) on the chosen taskset (``evaluation.evaluate_tasks``)."""
        ts = self.test_tasks if split == "test" else self.train_tasks
        return evaluate_tasks(
            self.batched_metrics, self.params if params is None else params, ts, self.dataset, task_ids, batch_size, self.device, workers
        )


RUNS_ROOT_ENV = "METAINF_RUNS_ROOT"  # set on a shared server: typed folder paths must lie under it (unset: any folder)


def check_folder_allowed(path: str | Path, also: tuple[Path, ...] = ()) -> None:
    """On a shared server (``$METAINF_RUNS_ROOT`` set), refuse a run folder outside that root and
    outside ``also`` (the bundled demos and paper runs), so a visitor cannot make the server read
    any folder of its disk; on a laptop (unset) every folder is allowed. Symlinks are resolved first."""
    import os

    root = os.environ.get(RUNS_ROOT_ENV, "").strip()
    if not root:
        return
    where = Path(path).expanduser().resolve()
    roots = [Path(root).expanduser().resolve(), *(Path(r).resolve() for r in also)]
    if not any(where == r or r in where.parents for r in roots):
        raise CheckpointError(f"{path}: this server opens run folders only under {roots[0]} (it is shared: {RUNS_ROOT_ENV})")


def open_run(path: str | Path, device: str = "cpu") -> Run:
    """Load and verify a checkpoint directory, rebuild its model, dataset and tasksets."""
    from metainf_core.train import resolve_device

    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    try:
        task_cfg = TaskConfig.from_dict(meta["task_config"])
        train_cfg = TrainConfig.from_dict(meta["train_config"])
        files = meta["tasksets"]
    except KeyError as e:
        raise CheckpointError(f"{ckpt.path}: meta.json lacks {e.args[0]!r}") from None
    dataset = load_dataset(task_cfg.dataset)
    recorded = meta.get("dataset", {}).get("fingerprint")
    if recorded and recorded != dataset.fingerprint:
        raise CheckpointError(f"{ckpt.path}: the {task_cfg.dataset} data here differs from the data it was trained on")
    train_ts = TaskSet.load(ckpt.path / files["train"])
    test_ts = TaskSet.load(ckpt.path / files["test"])
    dev = resolve_device(device)
    model = build_network(train_cfg.model, train_cfg.arch, train_cfg.algo, tuple(meta["input_shape"]), task_cfg.ways, train_cfg.filters)
    model = model.to(dev)
    missing = set(dict(model.named_parameters())) ^ set(ckpt.params)
    if missing:
        raise CheckpointError(f"{ckpt.path}: weights do not fit a {train_cfg.model or train_cfg.arch} network (e.g. {sorted(missing)[0]})")
    return Run(ckpt, dataset, model, LearnerSpec.from_train_config(train_cfg, task_cfg.ways), train_ts, test_ts, dev)


@dataclass(frozen=True)
class TaskView:
    """What a page shows of one task: its images (support then query) and labels."""

    task_id: int
    split: str
    class_names: tuple[str, ...]
    superclasses: tuple[str, ...]
    corruption: str
    support_images: torch.Tensor  # ways*shots x C x H x W, class-major
    query_images: torch.Tensor


def task_view(run: Run, split: str, task_id: int) -> TaskView:
    """Images and labels of one task as the model sees them (corruptions applied)."""
    ts = run.test_tasks if split == "test" else run.train_tasks
    task = ts.task(task_id, run.dataset)
    batch = ts.batch([task.id], run.dataset)
    return TaskView(task.id, split, task.class_names, task.superclasses, task.corruption, batch.support_x[0], batch.query_x[0])
