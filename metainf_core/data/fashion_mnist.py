"""Fashion-MNIST, the default dataset: 70,000 grey 28x28 images of 10 clothing classes.

train and t10k are pooled; few-shot tasks only need a class-disjoint split (TLXML 3, B.1).
Superclasses and the class split follow FC60 (TLXML B.1): meta-train and meta-test share
every superclass, so a test task can be explained by training tasks of the same kind.

=========  ==================================  =================  ===============
superclass classes (id)                        meta-train         meta-test
=========  ==================================  =================  ===============
tops       T-shirt/top 0, Pullover 2, Coat 4,  T-shirt/top,       Coat, Shirt
           Shirt 6                             Pullover
footwear   Sandal 5, Sneaker 7, Ankle boot 9   Sandal, Sneaker    Ankle boot
other      Trouser 1, Dress 3, Bag 8           Trouser, Dress     Bag
=========  ==================================  =================  ===============

Files are looked for in torchvision's raw layout ``<root>/FashionMNIST/raw/`` (plain or
``.gz``), then in Debian's ``/usr/share/datasets/fashion-mnist/``; ``download=True`` goes
through ``torchvision.datasets.FashionMNIST`` instead.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from metainf_core.data.base import FewShotDataset, data_root
from metainf_core.exceptions import DatasetNotFoundError

NAME = "fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
SUPERCLASSES = ("tops", "other", "tops", "other", "tops", "footwear", "tops", "footwear", "other", "footwear")
TRAIN_CLASSES = (0, 2, 5, 7, 1, 3)
TEST_CLASSES = (4, 6, 9, 8)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
PARTS = ("train", "t10k")
_IDX_MAGIC = {1: 2049, 3: 2051}  # idx1 labels, idx3 images


def read_idx(path: Path) -> np.ndarray:
    """An idx-ubyte file (optionally gzipped) as a uint8 array of its declared shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if magic != _IDX_MAGIC.get(ndim):
        raise DatasetNotFoundError(f"{path} is not an idx-ubyte file (magic {magic}); re-extract it")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetNotFoundError(f"{path} is truncated ({data.size} of {int(np.prod(shape))} bytes)")
    return data.reshape(shape)


def find_idx(stem: str, root: Path) -> Path:
    """The first existing ``stem`` or ``stem.gz`` in the raw layout under ``root`` or Debian's copy."""
    for folder in (root / "FashionMNIST" / "raw", root, DEBIAN_DIR):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DatasetNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root / 'FashionMNIST' / 'raw'} or {DEBIAN_DIR}; "
        "run scripts/setup.sh (Debian package dataset-fashion-mnist) or load with download=True"
    )


def _read_raw(root: Path) -> tuple[np.ndarray, np.ndarray, str]:
    images, labels = [], []
    for part in PARTS:
        img_path = find_idx(f"{part}-images-idx3-ubyte", root)
        images.append(read_idx(img_path))
        labels.append(read_idx(find_idx(f"{part}-labels-idx1-ubyte", root)))
    return np.concatenate(images), np.concatenate(labels), str(img_path.parent)


def _read_torchvision(root: Path) -> tuple[np.ndarray, np.ndarray, str]:
    from torchvision.datasets import FashionMNIST

    try:
        parts = [FashionMNIST(str(root), train=train, download=True) for train in (True, False)]
    except Exception as exc:  # network errors come in many types
        raise DatasetNotFoundError(f"Fashion-MNIST download into {root} failed: {exc}") from exc
    images = np.concatenate([p.data.numpy() for p in parts])
    labels = np.concatenate([p.targets.numpy() for p in parts])
    return images, labels, f"torchvision:{root}"


def load(root: Path | None = None, download: bool = False) -> FewShotDataset:
    """Fashion-MNIST pooled to 70,000 x 1 x 28 x 28 uint8 with the FC60-style split above."""
    root = Path(root) if root is not None else data_root()
    images, labels, source = _read_torchvision(root) if download else _read_raw(root)
    if len(images) != len(labels):
        raise DatasetNotFoundError(f"Fashion-MNIST in {source}: {len(images)} images but {len(labels)} labels")
    return FewShotDataset(
        name=NAME,
        samples=torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
        labels=labels.astype(np.int64),
        class_names=CLASS_NAMES,
        superclasses=SUPERCLASSES,
        train_classes=TRAIN_CLASSES,
        test_classes=TEST_CLASSES,
        source=source,
    )
