"""Fixed, enumerated tasksets (TLXML 3): task j of a training taskset keeps id j forever.

learn2learn samples tasks on the fly with unseeded shuffles; influence needs task identity,
so tasks are drawn once from a seed, stored as index arrays, and saved as a JSON manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metainf_core.config import TaskConfig
from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError, TaskNotFoundError

MANIFEST_FORMAT = "metainf-taskset/1"
CORRUPTIONS = ("none", "noise", "label_flip")
_SPLIT_CODE = {"train": 1, "test": 2}


@dataclass(frozen=True)
class Task:
    """One few-shot task: label position k of the task is dataset class ``classes[k]``."""

    id: int
    split: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    superclasses: tuple[str, ...]
    support: tuple[int, ...]  # ways*shots sample indices, class-major
    query: tuple[int, ...]  # ways*queries sample indices, class-major
    corruption: str = "none"


@dataclass(frozen=True)
class TaskBatch:
    """Model-ready tensors of B tasks: support ``B x (ways*shots) x ...``, query likewise."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    def task(self, b: int) -> TaskBatch:
        """The b-th task as a batch of one."""
        return TaskBatch(*(t[b : b + 1] for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


@dataclass(frozen=True, eq=False)
class TaskSet:
    """M tasks with ids 0..M-1, stored as index arrays (compact for M = 8,192)."""

    split: str
    config: TaskConfig
    classes: np.ndarray  # M x ways, dataset class ids
    support: np.ndarray  # M x ways x shots, sample indices
    query: np.ndarray  # M x ways x queries, sample indices
    corruption: np.ndarray  # M, index into CORRUPTIONS

    def __len__(self) -> int:
        return self.classes.shape[0]

    @property
    def ways(self) -> int:
        return self.classes.shape[1]

    def ids_with(self, corruption: str) -> np.ndarray:
        """Ids of tasks carrying ``corruption`` ("none", "noise" or "label_flip")."""
        return np.flatnonzero(self.corruption == CORRUPTIONS.index(corruption))

    def check_id(self, task_id: int) -> int:
        if not (0 <= int(task_id) < len(self)):
            raise TaskNotFoundError(f"{self.split} task id {task_id} is not in 0..{len(self) - 1}")
        return int(task_id)

    def task(self, task_id: int, dataset: FewShotDataset) -> Task:
        j = self.check_id(task_id)
        classes = tuple(int(c) for c in self.classes[j])
        return Task(
            id=j,
            split=self.split,
            classes=classes,
            class_names=tuple(dataset.class_names[c] for c in classes),
            superclasses=tuple(dataset.superclasses[c] for c in classes),
            support=tuple(int(i) for i in self.support[j].reshape(-1)),
            query=tuple(int(i) for i in self.query[j].reshape(-1)),
            corruption=CORRUPTIONS[int(self.corruption[j])],
        )

    def superclass_sets(self, dataset: FewShotDataset) -> list[frozenset[str]]:
        """The set of superclasses of each task (for groups and overlap validation, TLXML A.3, 5.1.3)."""
        sup = np.asarray(dataset.superclasses, dtype=object)
        return [frozenset(sup[row]) for row in self.classes]

    def batch(self, ids: np.ndarray | list[int], dataset: FewShotDataset) -> TaskBatch:
        """Materialise tasks ``ids`` as tensors, applying their corruptions deterministically."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for j in ids:
            self.check_id(j)
        ways, shots, queries = self.ways, self.support.shape[2], self.query.shape[2]
        sx = dataset.load(self.support[ids].reshape(-1)).reshape(len(ids), ways * shots, *dataset.input_shape)
        qx = dataset.load(self.query[ids].reshape(-1)).reshape(len(ids), ways * queries, *dataset.input_shape)
        sy = torch.arange(ways).repeat_interleave(shots).expand(len(ids), -1).clone()
        qy = torch.arange(ways).repeat_interleave(queries).expand(len(ids), -1).clone()
        for b, j in enumerate(ids):
            kind = CORRUPTIONS[int(self.corruption[j])]
            if kind == "none":
                continue
            gen = torch.Generator().manual_seed(_task_seed(self.config.seed, self.split, int(j)))
            if kind == "noise":
                sx[b] = dataset.noise_like(sx.shape[1], gen)
                qx[b] = dataset.noise_like(qx.shape[1], gen)
            else:  # label_flip: shuffle labels across the task's samples (seed 001 §6.3)
                sy[b] = sy[b][torch.randperm(sy.shape[1], generator=gen)]
                qy[b] = qy[b][torch.randperm(qy.shape[1], generator=gen)]
        return TaskBatch(sx, sy, qx, qy)

    def fingerprint(self) -> str:
        """Content hash of the tasks (config + every index), the key for caches."""
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        h.update(self.split.encode())
        for a in (self.classes, self.support, self.query, self.corruption):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()

    # ---- manifest -------------------------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "split": self.split,
            "config": self.config.to_dict(),
            "num_tasks": len(self),
            "classes": self.classes.tolist(),
            "support": self.support.reshape(len(self), -1).tolist(),
            "query": self.query.reshape(len(self), -1).tolist(),
            "corrupted": {k: self.ids_with(k).tolist() for k in CORRUPTIONS[1:]},
            "fingerprint": self.fingerprint(),
        }

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> TaskSet:
        if m.get("format") != MANIFEST_FORMAT:
            raise ConfigError(f"not a taskset manifest (format {m.get('format')!r})")
        config = TaskConfig.from_dict(m["config"])
        n = int(m["num_tasks"])
        ways = config.ways
        corruption = np.zeros(n, dtype=np.int64)
        for k, ids in m.get("corrupted", {}).items():
            corruption[np.asarray(ids, dtype=np.int64)] = CORRUPTIONS.index(k)
        ts = cls(
            split=m["split"],
            config=config,
            classes=np.asarray(m["classes"], dtype=np.int64).reshape(n, ways),
            support=np.asarray(m["support"], dtype=np.int64).reshape(n, ways, config.shots),
            query=np.asarray(m["query"], dtype=np.int64).reshape(n, ways, config.queries),
            corruption=corruption,
        )
        if ts.fingerprint() != m["fingerprint"]:
            raise ConfigError("taskset manifest fingerprint mismatch: the file was altered or truncated")
        return ts

    def save(self, path: str | Path) -> None:
        from metainf_core.io import write_json_atomic

        write_json_atomic(path, self.to_manifest(), compact=True)

    @classmethod
    def load(cls, path: str | Path) -> TaskSet:
        with open(path, encoding="utf-8") as f:
            return cls.from_manifest(json.load(f))


def _task_seed(seed: int, split: str, task_id: int) -> int:
    return int(np.random.SeedSequence([seed, _SPLIT_CODE[split], task_id]).generate_state(1)[0])


def make_taskset(dataset: FewShotDataset, config: TaskConfig, split: str) -> TaskSet:
    """Draw ``config.train_tasks`` (or ``test_tasks``) tasks deterministically from ``config.seed``.

    Each task picks ``ways`` distinct classes of the split, then ``shots + queries`` distinct
    samples per class. Corrupted training tasks are a seeded random subset of ids.
    """
    classes_pool = np.asarray(dataset.split_classes(split), dtype=np.int64)
    if len(classes_pool) < config.ways:
        raise ConfigError(
            f"{dataset.name} has {len(classes_pool)} {split} classes; {config.ways}-way tasks need more"
        )
    per_class = config.shots + config.queries
    smallest = min(len(dataset.indices_of_class(int(c))) for c in classes_pool)
    if smallest < per_class:
        raise ConfigError(f"{dataset.name}: a {split} class has {smallest} samples < shots+queries={per_class}")
    m = config.train_tasks if split == "train" else config.test_tasks
    rng = np.random.Generator(np.random.PCG64([config.seed, _SPLIT_CODE[split]]))
    classes = np.empty((m, config.ways), dtype=np.int64)
    samples = np.empty((m, config.ways, per_class), dtype=np.int64)
    for j in range(m):
        classes[j] = rng.choice(classes_pool, size=config.ways, replace=False)
        for k, c in enumerate(classes[j]):
            samples[j, k] = rng.choice(dataset.indices_of_class(int(c)), size=per_class, replace=False)
    corruption = np.zeros(m, dtype=np.int64)
    if split == "train" and (config.noise_tasks or config.label_flip_tasks):
        order = rng.permutation(m)
        corruption[order[: config.noise_tasks]] = CORRUPTIONS.index("noise")
        flip = order[config.noise_tasks : config.noise_tasks + config.label_flip_tasks]
        corruption[flip] = CORRUPTIONS.index("label_flip")
    return TaskSet(
        split=split,
        config=config,
        classes=classes,
        support=samples[:, :, : config.shots].copy(),
        query=samples[:, :, config.shots :].copy(),
        corruption=corruption,
    )


# ---- tasks given sample by sample (imported runs: tasks.json) ----------------------------------
SAMPLE_KEYS = ("index", "label", "target", "support")


def taskset_from_samples(dataset: FewShotDataset, split: str, tasks: list[Any], where: str = "") -> TaskSet:
    """A TaskSet from tasks written sample by sample, as a model trained elsewhere saw them.

    Each task is a list of ``{"index": i, "label": y, "target": t, "support": bool}``: sample i of
    ``dataset`` (its own order), its class y (checked against the dataset, which catches an index
    offset), the output position t the model was trained to give it, and whether it was in the
    adaptation set. Targets must be 0..ways−1, each target one class, the same ways, shots and
    queries in every task. Order within a task does not matter: the learners' losses are means and
    batch norm uses batch statistics. Any violation raises ConfigError naming the task and sample.
    """
    where = where or f"{split} tasks"
    if not isinstance(tasks, list) or not tasks:
        raise ConfigError(f"{where}: expected a non-empty list of tasks")
    n, shape = len(dataset.samples), None
    classes, support, query = [], [], []
    for j, task in enumerate(tasks):
        at = f"{where}, task {j}"
        if not isinstance(task, list) or not task:
            raise ConfigError(f"{at}: expected a non-empty list of samples")
        by_target: dict[int, tuple[list[int], list[int], set[int]]] = {}
        for s, sample in enumerate(task):
            if not isinstance(sample, dict) or set(sample) != set(SAMPLE_KEYS):
                raise ConfigError(f"{at}, sample {s}: expected exactly the keys {', '.join(SAMPLE_KEYS)}")
            i, y, t, sup = sample["index"], sample["label"], sample["target"], sample["support"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (i, y, t)) or not isinstance(sup, bool):
                raise ConfigError(f"{at}, sample {s}: index, label and target must be integers, support true or false")
            if not 0 <= i < n:
                raise ConfigError(f"{at}, sample {s}: index {i} is not in {dataset.name} (0..{n - 1})")
            if int(dataset.labels[i]) != y:
                real = int(dataset.labels[i])
                raise ConfigError(
                    f"{at}, sample {s}: label {y} but {dataset.name} sample {i} is class {real} ({dataset.class_names[real]}); "
                    "indices must follow the dataset's own order"
                )
            sup_ids, qry_ids, labels = by_target.setdefault(t, ([], [], set()))
            (sup_ids if sup else qry_ids).append(i)
            labels.add(y)
        ways = len(by_target)
        if sorted(by_target) != list(range(ways)):
            raise ConfigError(f"{at}: targets are {sorted(by_target)}, expected 0..{ways - 1}")
        for t, (sup_ids, qry_ids, labels) in by_target.items():
            if len(labels) != 1:
                raise ConfigError(f"{at}: target {t} mixes classes {sorted(labels)}; each target must be one class")
            if not qry_ids:
                raise ConfigError(f"{at}: target {t} has no query samples")
            if not sup_ids:
                raise ConfigError(f"{at}: target {t} has no support samples")
        task_classes = [next(iter(by_target[t][2])) for t in range(ways)]
        if len(set(task_classes)) != ways:
            raise ConfigError(f"{at}: two targets share one class ({task_classes})")
        sizes = {(len(by_target[t][0]), len(by_target[t][1])) for t in range(ways)}
        if len(sizes) != 1:
            raise ConfigError(f"{at}: targets have different (shots, queries): {sorted(sizes)}")
        this = (ways, *sizes.pop())
        if shape is None:
            shape = this
        elif this != shape:
            raise ConfigError(f"{at}: {this[0]}-way {this[1]}-shot {this[2]}-query, but task 0 is {shape[0]}-way {shape[1]}-shot {shape[2]}-query")
        classes.append(task_classes)
        support.append([by_target[t][0] for t in range(ways)])
        query.append([by_target[t][1] for t in range(ways)])
    ways, shots, queries = shape
    m = len(tasks)
    config = TaskConfig(dataset=dataset.name, ways=ways, shots=shots, queries=queries, train_tasks=m if split == "train" else 1,
                        test_tasks=m if split == "test" else 1)  # fmt: skip
    return TaskSet(
        split=split,
        config=config,
        classes=np.asarray(classes, dtype=np.int64),
        support=np.asarray(support, dtype=np.int64),
        query=np.asarray(query, dtype=np.int64),
        corruption=np.zeros(m, dtype=np.int64),
    )


def taskset_to_samples(ts: TaskSet, ids: Sequence[int] | None = None) -> list[list[dict[str, Any]]]:
    """The inverse of ``taskset_from_samples`` for uncorrupted tasks (corruptions are generated
    from the seed, not stored as samples, so a noise or label-flip task cannot be written out)."""
    ids = range(len(ts)) if ids is None else ids
    out = []
    for j in ids:
        j = ts.check_id(j)
        if ts.corruption[j]:
            raise ConfigError(f"{ts.split} task {j} is a {CORRUPTIONS[int(ts.corruption[j])]} task; only clean tasks can be written as samples")
        out.append([
            {"index": int(i), "label": int(ts.classes[j, k]), "target": k, "support": sup}
            for k in range(ts.ways) for sup, part in ((True, ts.support), (False, ts.query)) for i in part[j, k]
        ])  # fmt: skip
    return out
