"""mini-ImageNet (84x84) and Tiny-ImageNet (32x32) with WordNet superclasses (TLXML 5.1, B.1).

Superclass = a class's WordNet hypernym at a fixed depth (``superclass_depth``, entity = 0;
default 6: animal, device, container, conveyance, ...). A class whose depth-6 group has fewer
than ``min_superclass_size`` (default 5) classes is lifted to the parent hypernym, repeatedly,
so small groups pool into "other X" groups named by the shared ancestor (e.g. ``artifact``
holds artifacts that are neither devices, containers, ...). Classes still in a small group at
the root are labelled ``other``. This gives 9 groups for mini-ImageNet and 15 for Tiny-ImageNet.

Splits: mini-ImageNet keeps Ravi & Larochelle's (train -> meta-train, val + test -> meta-test;
every meta-test superclass also occurs in meta-train). Tiny-ImageNet, with no standard
few-shot split, alternates classes train/test within each superclass (FC60-style).

Sources: ``<root>/<set>/`` then ``<shared>/<set>/`` (zip of JPEGs + classes.csv), decoded with
PIL and cached in ``<root>/<set>.npz``. mini-ImageNet with ``download=True`` goes through
``learn2learn.vision.datasets.MiniImagenet`` instead.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metainf_core.data.base import FewShotDataset, data_root, shared_data_root
from metainf_core.data.omniglot import file_key, read_cache, write_cache
from metainf_core.exceptions import ConfigError, DatasetNotFoundError

SUPERCLASS_DEPTH = 6
MIN_SUPERCLASS_SIZE = 5
# dataset name -> (folder, zip, image size, extension)
SETS = {
    "mini-imagenet": ("mini_imagenet84", "images_100_per_class.zip", 84, ".jpg"),
    "tiny-imagenet": ("tiny_imagenet32", "train_100_per_class.zip", 32, ".jpeg"),
}
_CACHE_VERSION = "rgb-chw-v1"


def wordnet_superclasses(paths: list[list[str]], depth: int, min_size: int) -> list[str]:
    """Hypernym at ``depth`` of each path, lifted a level at a time while its group is < min_size."""
    if depth < 1 or min_size < 1:
        raise ConfigError(f"superclass_depth and min_superclass_size must be >= 1, got {depth}, {min_size}")
    level = [min(depth, len(p) - 1) for p in paths]
    while True:
        counts = Counter(p[lv] for p, lv in zip(paths, level))
        small = [i for i, (p, lv) in enumerate(zip(paths, level)) if lv > 0 and counts[p[lv]] < min_size]
        if not small:
            break
        for i in small:
            level[i] -= 1
    return ["other" if lv == 0 else p[lv] for p, lv in zip(paths, level)]


def _find(folder: str, root: Path, *files: str) -> Path:
    for d in (root / folder, shared_data_root() / folder):
        if all((d / f).is_file() for f in files):
            return d
    raise DatasetNotFoundError(
        f"{' and '.join(files)} not found in {root / folder} or {shared_data_root() / folder}; "
        "place the prepared files there (see shared/data/README.md)"
    )


def _read_classes(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _decode_zip(path: Path, wnids: list[str], size: int, ext: str) -> tuple[np.ndarray, np.ndarray]:
    """All images of the listed classes (member name order within a class) as N x 3 x H x W uint8."""
    index = {w: c for c, w in enumerate(wnids)}
    with zipfile.ZipFile(path) as zf:
        members = sorted(
            (index[p[-2]], n)
            for n in zf.namelist()
            if n.lower().endswith(ext) and len(p := n.split("/")) >= 2 and p[-2] in index
        )
        images = np.empty((len(members), size, size, 3), dtype=np.uint8)
        for k, (_, name) in enumerate(members):
            with Image.open(io.BytesIO(zf.read(name))) as im:
                rgb = im.convert("RGB")
                images[k] = np.asarray(rgb if rgb.size == (size, size) else rgb.resize((size, size), Image.BILINEAR))
    labels = np.array([c for c, _ in members], dtype=np.int64)
    missing = sorted(set(range(len(wnids))) - set(labels.tolist()))
    if missing:
        raise DatasetNotFoundError(f"{path} has no images of {len(missing)} classes, e.g. {wnids[missing[0]]}")
    return images.transpose(0, 3, 1, 2).copy(), labels


def _load_images(name: str, root: Path, folder: Path, wnids: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    sub, zip_name, size, ext = SETS[name]
    zpath = folder / zip_name
    key = f"{_CACHE_VERSION};{file_key(zpath)};{','.join(wnids)}"
    cache = root / f"{sub}.npz"
    hit = read_cache(cache, key)
    if hit is not None:
        return torch.from_numpy(hit["images"]), hit["labels"]
    images, labels = _decode_zip(zpath, wnids, size, ext)
    write_cache(cache, key, images=images, labels=labels)
    return torch.from_numpy(images), labels


def _make(name, images, labels, rows, superclasses, train, test, source) -> FewShotDataset:
    return FewShotDataset(
        name=name,
        samples=images,
        labels=labels,
        class_names=tuple(r["words"].split(",")[0].strip() for r in rows),
        superclasses=tuple(superclasses),
        train_classes=tuple(train),
        test_classes=tuple(test),
        source=source,
        extra={"wnids": tuple(r["wnid"] for r in rows)},
    )


def _mini_from_learn2learn(root: Path) -> tuple[torch.Tensor, np.ndarray, list[str], dict[str, str]]:
    """Downloads through learn2learn. NOTE: MiniImagenet unpickles its cache files; acceptable only
    because download=True makes it fetch them itself; never point it at pickles of unknown origin."""
    from learn2learn.vision.datasets import MiniImagenet

    images, labels, wnids, split = [], [], [], {}
    for mode in ("train", "validation", "test"):
        try:
            data = MiniImagenet(str(root), mode=mode, download=True).data
        except Exception as exc:  # network and unpickling errors
            raise DatasetNotFoundError(f"mini-ImageNet download into {root} failed: {exc}") from exc
        y = np.empty(len(data["image_data"]), dtype=np.int64)
        for wnid, idx in data["class_dict"].items():
            y[np.asarray(idx)] = len(wnids)
            wnids.append(wnid)
            split[wnid] = "train" if mode == "train" else "test"
        images.append(torch.from_numpy(np.asarray(data["image_data"])).permute(0, 3, 1, 2).contiguous())
        labels.append(y)
    return torch.cat(images), np.concatenate(labels), wnids, split


def load_mini_imagenet(
    root: Path | None = None,
    download: bool = False,
    superclass_depth: int = SUPERCLASS_DEPTH,
    min_superclass_size: int = MIN_SUPERCLASS_SIZE,
) -> FewShotDataset:
    """mini-ImageNet, 100 classes, Ravi split (val + test -> meta-test), N x 3 x 84 x 84 uint8."""
    root = Path(root) if root is not None else data_root()
    if download:
        images, labels, wnids, split = _mini_from_learn2learn(root)
        try:
            by_wnid = {r["wnid"]: r for r in _read_classes(_find("mini_imagenet84", root, "classes.csv") / "classes.csv")}
        except DatasetNotFoundError:
            by_wnid = {}  # no hypernym table: one superclass
        rows = [by_wnid.get(w, {"wnid": w, "words": w, "wordnet_hypernym_path": "entity"}) for w in wnids]
        source = f"learn2learn:{root}"
    else:
        folder = _find("mini_imagenet84", root, SETS["mini-imagenet"][1], "classes.csv")
        rows = _read_classes(folder / "classes.csv")
        wnids = [r["wnid"] for r in rows]
        split = {r["wnid"]: "train" if r["ravi_split"] == "train" else "test" for r in rows}
        images, labels = _load_images("mini-imagenet", root, folder, wnids)
        source = f"zip:{folder}"
    paths = [r["wordnet_hypernym_path"].split(" > ") for r in rows]
    supers = wordnet_superclasses(paths, superclass_depth, min_superclass_size)
    train = [c for c, w in enumerate(wnids) if split[w] == "train"]
    test = [c for c, w in enumerate(wnids) if split[w] != "train"]
    return _make("mini-imagenet", images, labels, rows, supers, train, test, source)


def load_tiny_imagenet(
    root: Path | None = None,
    download: bool = False,
    superclass_depth: int = SUPERCLASS_DEPTH,
    min_superclass_size: int = MIN_SUPERCLASS_SIZE,
) -> FewShotDataset:
    """Tiny-ImageNet, 200 classes x 100 training images, N x 3 x 32 x 32 uint8, FC60-style split."""
    del download  # no downloader: the 100-per-class subset is prepared offline
    root = Path(root) if root is not None else data_root()
    folder = _find("tiny_imagenet32", root, SETS["tiny-imagenet"][1], "classes.csv")
    rows = _read_classes(folder / "classes.csv")
    images, labels = _load_images("tiny-imagenet", root, folder, [r["wnid"] for r in rows])
    supers = wordnet_superclasses(
        [r["wordnet_hypernym_path"].split(" > ") for r in rows], superclass_depth, min_superclass_size
    )
    train, test = [], []
    seen: Counter[str] = Counter()
    for c, s in enumerate(supers):
        (train if seen[s] % 2 == 0 else test).append(c)
        seen[s] += 1
    return _make("tiny-imagenet", images, labels, rows, supers, train, test, f"zip:{folder}")
