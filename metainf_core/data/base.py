"""The one shape every few-shot dataset takes: images, fine labels, class names, a superclass
per class, and a meta-train / meta-test class split (TLXML 3, B.1)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from metainf_core.exceptions import ConfigError

SPLITS = ("train", "test")
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """Where datasets are unpacked or downloaded: ``$METAINF_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("METAINF_DATA", REPO_ROOT / "data"))


def shared_data_root() -> Path:
    """Read-only real data placed beside the project: ``$METAINF_SHARED_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("METAINF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def portable_source(source: str) -> str:
    """Where data came from, without the machine's own paths (recorded in run folders that travel):
    a kind prefix kept (``torchvision:``, ``zip:``…), a folder under the data roots made relative to
    its root (``data/FashionMNIST/raw``), any other absolute folder cut to its last two parts."""
    kind, sep, rest = source.rpartition(":") if ":" in source and not Path(source).is_absolute() else ("", "", source)
    if not rest or not Path(rest).is_absolute():
        return source
    where = Path(rest)
    for root, name in ((data_root(), "data"), (shared_data_root(), "shared data")):
        try:
            where_rel = where.resolve().relative_to(root.resolve())
        except (ValueError, OSError):
            continue
        return f"{kind}{sep}{name}/{where_rel.as_posix()}".rstrip("/.")
    return f"{kind}{sep}…/{'/'.join(where.parts[-2:])}"


@dataclass(frozen=True, eq=False)
class FewShotDataset:
    """A labelled pool of samples with a class-disjoint meta-train / meta-test split.

    ``samples`` is ``N x C x H x W`` (uint8 in 0..255, or float in [0, 1]) for images, or
    ``N x d`` float for vector data; ``load`` always returns float32.
    """

    name: str
    samples: torch.Tensor
    labels: np.ndarray  # N, fine class id of each sample
    class_names: tuple[str, ...]
    superclasses: tuple[str, ...]  # superclass of each class
    train_classes: tuple[int, ...]
    test_classes: tuple[int, ...]
    source: str = ""  # where the data came from, for metadata
    noise_scale: float = 1.0  # vector data: std of the noise points (TLXML B.1)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_cls = len(self.class_names)
        if len(self.superclasses) != n_cls:
            raise ConfigError(f"{self.name}: {len(self.superclasses)} superclasses for {n_cls} classes")
        if len(self.labels) != len(self.samples):
            raise ConfigError(f"{self.name}: {len(self.labels)} labels for {len(self.samples)} samples")
        if set(self.train_classes) & set(self.test_classes):
            raise ConfigError(f"{self.name}: meta-train and meta-test classes overlap")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.samples.dim() == 4

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split_classes(self, split: str) -> tuple[int, ...]:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        return self.train_classes if split == "train" else self.test_classes

    @cached_property
    def _class_index(self) -> list[np.ndarray]:
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def indices_of_class(self, c: int) -> np.ndarray:
        """Sample indices of class ``c`` in ascending order."""
        return self._class_index[c]

    def load(self, indices: np.ndarray | list[int]) -> torch.Tensor:
        """Samples at ``indices`` as float32 (images scaled to [0, 1])."""
        x = self.samples[torch.as_tensor(np.asarray(indices, dtype=np.int64))]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()

    def noise_like(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` noise samples: uniform images in [0, 1] (TLXML 5.1.2) or N(0, noise_scale²) points (B.1)."""
        if self.is_image:
            return torch.rand(n, *self.input_shape, generator=generator)
        return torch.randn(n, *self.input_shape, generator=generator) * self.noise_scale

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of samples, labels, classes and split: checkpoints record it, so a run is
        never silently re-opened on different data."""
        h = hashlib.sha256(np.ascontiguousarray(self.samples.numpy()).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        h.update(repr((self.class_names, self.superclasses, self.train_classes, self.test_classes)).encode())
        return h.hexdigest()

    def superclass_of(self, c: int) -> str:
        return self.superclasses[c]

    def as_torch_dataset(self) -> SampleView:
        """The samples as a ``torch.utils.data.Dataset`` of (x, class) in this dataset's own order,
        e.g. for ``l2l.data.MetaDataset``: tasks drawn from it index this dataset directly."""
        return SampleView(self)

    def describe(self) -> dict:
        """Metadata recorded in checkpoints: sizes, split and where the data came from."""
        return {
            "name": self.name,
            "source": portable_source(self.source),
            "num_samples": int(len(self.samples)),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train_classes": list(self.train_classes),
            "test_classes": list(self.test_classes),
            "superclasses": sorted(set(self.superclasses)),
            "fingerprint": self.fingerprint,
        }


class SampleView(torch.utils.data.Dataset):
    """(image as float32, class id) by sample index; ``indices_to_labels`` spares learn2learn's
    MetaDataset a pass over every sample to build its bookkeeping."""

    def __init__(self, dataset: FewShotDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.dataset.load([i])[0], int(self.dataset.labels[i])

    @property
    def indices_to_labels(self) -> dict[int, int]:
        return {i: int(y) for i, y in enumerate(self.dataset.labels)}
