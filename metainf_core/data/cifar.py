"""CIFAR-FS and FC100 through learn2learn's loaders, CIFAR-100 coarse labels as superclasses (TLXML 5.1).

Both need the files learn2learn downloads (``download=True`` on an online machine); offline
without them a DatasetNotFoundError says so. Splits: learn2learn's train -> meta-train,
validation + test -> meta-test. FC100 splits by superclass by design, so its meta-train and
meta-test share none; CIFAR-FS's random class split shares most.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metainf_core.data.base import FewShotDataset, data_root
from metainf_core.exceptions import DatasetNotFoundError

MODES = ("train", "validation", "test")
# CIFAR-100 superclass -> its 5 fine classes (public constants of the dataset)
CIFAR100_COARSE = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
FINE_TO_COARSE = {fine: coarse for coarse, fines in CIFAR100_COARSE.items() for fine in fines}
CIFAR100_FINE = tuple(sorted(FINE_TO_COARSE))  # CIFAR-100's fine label ids are alphabetical


def _missing(name: str, root: Path, what: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name}: {what} not found under {root}; load with download=True on an online machine "
        "(learn2learn fetches it; CIFAR-100 is not available offline here)"
    )


def _build(name: str, parts: list[tuple[str, np.ndarray, list[str]]], source: str) -> FewShotDataset:
    """parts: (mode, N x 32 x 32 x 3 uint8 images, fine class name of each image)."""
    names = list(dict.fromkeys(n for _, _, ns in parts for n in ns))
    index = {n: c for c, n in enumerate(names)}
    modes = {n: mode for mode, _, ns in parts for n in ns}
    images = torch.from_numpy(np.concatenate([x for _, x, _ in parts])).permute(0, 3, 1, 2).contiguous()
    return FewShotDataset(
        name=name,
        samples=images,
        labels=np.array([index[n] for _, _, ns in parts for n in ns], dtype=np.int64),
        class_names=tuple(names),
        superclasses=tuple(FINE_TO_COARSE.get(n, "unknown") for n in names),
        train_classes=tuple(c for c, n in enumerate(names) if modes[n] == "train"),
        test_classes=tuple(c for c, n in enumerate(names) if modes[n] != "train"),
        source=source,
    )


def load_cifar_fs(root: Path | None = None, download: bool = False) -> FewShotDataset:
    """CIFAR-FS (Bertinetto et al. 2019): 100 classes x 600 PNGs in learn2learn's ImageFolder layout."""
    root = Path(root) if root is not None else data_root()
    if not download and not (root / "cifarfs").is_dir():
        raise _missing("cifar-fs", root, "cifarfs/")
    from learn2learn.vision.datasets import CIFARFS

    parts = []
    for mode in MODES:
        try:
            ds = CIFARFS(str(root), mode=mode, download=download)
        except Exception as exc:  # network or layout errors
            raise _missing("cifar-fs", root, f"a usable cifarfs/ ({exc})") from exc
        x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in ds.samples])
        parts.append((mode, x, [ds.classes[c] for _, c in ds.samples]))
    return _build("cifar-fs", parts, f"learn2learn:{root / 'cifarfs'}")


def load_fc100(root: Path | None = None, download: bool = False) -> FewShotDataset:
    """FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, labels = CIFAR-100 fine ids.

    learn2learn unpickles FC100_*.pickle; it is only run with download=True so that it reads
    files it fetched itself, never pickles of unknown origin.
    """
    root = Path(root) if root is not None else data_root()
    if not download:
        raise _missing("fc100", root, "FC100_{train,val,test}.pickle (read only via download=True)")
    from learn2learn.vision.datasets import FC100

    parts = []
    for mode in MODES:
        try:
            ds = FC100(str(root), mode=mode, download=True)
        except Exception as exc:
            raise _missing("fc100", root, f"usable FC100 pickles ({exc})") from exc
        parts.append((mode, np.asarray(ds.images, dtype=np.uint8), [CIFAR100_FINE[int(y)] for y in ds.labels]))
    return _build("fc100", parts, f"learn2learn:{root}")
