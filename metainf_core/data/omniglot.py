"""Omniglot: 1,623 handwritten characters x 20 drawers, alphabet = superclass (TLXML 5.1, B.1).

Images are downsampled from 105x105 to 28x28 by area averaging and inverted so that
ink = 255 and background = 0 (the source PNGs / npz are white-background); stored uint8.
Split: within every alphabet the first ceil(2n/3) characters in id order go to meta-train and
the rest to meta-test, so each of the alphabets appears in both splits.

Sources (``source=`` forces one; ``"auto"`` tries them in order):

* ``npz``: ``<shared>/omniglot/images_{background,evaluation}.npz`` + ``alphabets.csv``, all 50
  alphabets; the resized array is cached in ``<root>/omniglot28.npz`` keyed by the source
  files' size and mtime.
* ``folder``: torchvision's ``<root>/omniglot-py/images_{background,evaluation}/`` read by
  ``torchvision.datasets.Omniglot`` (``download=True`` fetches it). When absent, the shared
  ``images_background_small{1,2}.zip`` (8 alphabets) are extracted there first.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from metainf_core.data.base import FewShotDataset, data_root, shared_data_root
from metainf_core.exceptions import ConfigError, DatasetNotFoundError

NAME = "omniglot"
SIZE = 28
DRAWERS = 20
SOURCES = ("auto", "npz", "folder")
NPZ_FILES = ("images_background.npz", "images_evaluation.npz", "alphabets.csv")
SMALL_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
CACHE_NAME = "omniglot28.npz"
_CACHE_VERSION = "area28-inverted-v1"


def resize_ink(white: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """``N x H x W`` white-background images (bool, or uint8 0..255) -> ``N x 1 x 28 x 28`` uint8 ink."""
    out = torch.empty(len(white), 1, SIZE, SIZE, dtype=torch.uint8)
    for s in range(0, len(white), chunk):
        x = white[s : s + chunk].unsqueeze(1)
        ink = 1.0 - (x.float() if x.dtype == torch.bool else x.float() / 255.0)
        out[s : s + chunk] = F.interpolate(ink, size=(SIZE, SIZE), mode="area").mul_(255.0).round_().to(torch.uint8)
    return out


def split_by_alphabet(class_names: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First ceil(2n/3) characters of each alphabet (class ids in order) -> train, the rest -> test."""
    by_alpha: dict[str, list[int]] = {}
    for c, name in enumerate(class_names):
        by_alpha.setdefault(name.split("/")[0], []).append(c)
    train: list[int] = []
    test: list[int] = []
    for ids in by_alpha.values():
        k = math.ceil(2 * len(ids) / 3)
        train += ids[:k]
        test += ids[k:]
    return tuple(sorted(train)), tuple(sorted(test))


def _make(images: torch.Tensor, labels: np.ndarray, names: list[str], source: str) -> FewShotDataset:
    train, test = split_by_alphabet(names)
    return FewShotDataset(
        name=NAME,
        samples=images,
        labels=labels.astype(np.int64),
        class_names=tuple(names),
        superclasses=tuple(n.split("/")[0] for n in names),
        train_classes=train,
        test_classes=test,
        source=source,
    )


# ---- npz ------------------------------------------------------------------------------------
def _npz_dir(root: Path) -> Path | None:
    for d in (root / "omniglot", shared_data_root() / "omniglot"):
        if all((d / f).is_file() for f in NPZ_FILES):
            return d
    return None


def _npz_names(folder: Path) -> list[str]:
    """Class names ``Alphabet/characterNN`` in character-id order (id 1..1623) from alphabets.csv."""
    names: list[str] = []
    with open(folder / "alphabets.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: int(r["first_char_id"]))
    for r in rows:
        first, last = int(r["first_char_id"]), int(r["last_char_id"])
        names += [f"{r['alphabet']}/character{k:02d}" for k in range(1, last - first + 2)]
    return names


def _load_npz(root: Path, folder: Path) -> FewShotDataset:
    names = _npz_names(folder)
    key = _CACHE_VERSION + ";" + file_key(*(folder / f for f in NPZ_FILES))
    cache = root / CACHE_NAME
    hit = read_cache(cache, key)
    if hit is not None:
        return _make(torch.from_numpy(hit["images"]), hit["labels"], names, f"npz:{folder} (cached)")
    parts = []
    for f in NPZ_FILES[:2]:
        with np.load(folder / f) as z:
            parts.append(torch.from_numpy(z["images"].reshape(-1, 105, 105)))
    images = resize_ink(torch.cat(parts))
    if len(images) != len(names) * DRAWERS:
        raise DatasetNotFoundError(f"{folder}: {len(images)} images for {len(names)} characters in alphabets.csv")
    labels = np.repeat(np.arange(len(names)), DRAWERS)
    write_cache(cache, key, images=images.numpy(), labels=labels)
    return _make(images, labels, names, f"npz:{folder}")


def file_key(*paths: Path) -> str:
    """Cache key of source files: name, size and mtime of each."""
    return ";".join(f"{p.name}:{st.st_size}:{st.st_mtime_ns}" for p in paths for st in [p.stat()])


def read_cache(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """Arrays of an npz cache written by ``write_cache`` with the same key, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:  # allow_pickle stays False: plain arrays only
            return {k: z[k] for k in z.files if k != "key"} if str(z["key"]) == key else None
    except (OSError, ValueError, KeyError):
        return None  # unreadable or truncated: rebuild


def write_cache(path: Path, key: str, **arrays: np.ndarray) -> None:
    """Best-effort atomic write of an uncompressed npz cache (a read-only root only costs speed)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, key=np.array(key), **arrays)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


# ---- torchvision folder layout --------------------------------------------------------------
def _extract_small_zips(root: Path) -> bool:
    """Unpack the shared PNG zips (5 alphabets each, 8 in all) into ``<root>/omniglot-py/images_background``."""
    zips = [shared_data_root() / "omniglot" / z for z in SMALL_ZIPS]
    if not all(z.is_file() for z in zips):
        return False
    base = root / "omniglot-py"
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        target = tmp / "images_background"
        target.mkdir(parents=True)
        for z in zips:
            with zipfile.ZipFile(z) as zf:
                zf.extractall(tmp)  # zipfile strips absolute and '..' components
            top = tmp / z.stem
            for alphabet in sorted(top.iterdir()):
                if not (target / alphabet.name).exists():  # Greek and Latin are in both zips
                    alphabet.rename(target / alphabet.name)
            shutil.rmtree(top)
        try:
            target.rename(base / "images_background")
        except OSError:
            if not (base / "images_background").is_dir():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def _torchvision_omniglot():
    from torchvision.datasets import Omniglot

    class ExtractedOmniglot(Omniglot):
        """torchvision's Omniglot, also accepting an already extracted folder without its zip."""

        def _check_integrity(self) -> bool:
            return super()._check_integrity() or os.path.isdir(os.path.join(self.root, self._get_target_folder()))

    return ExtractedOmniglot


def _load_folder(root: Path, download: bool) -> FewShotDataset:
    base = root / "omniglot-py"
    if not download and not (base / "images_background").is_dir():
        _extract_small_zips(root)
    omniglot_cls = _torchvision_omniglot()
    records: list[tuple[int, int, str, int, object]] = []
    for background in (True, False):
        folder = base / ("images_background" if background else "images_evaluation")
        if not download and not folder.is_dir():
            continue
        try:
            ds = omniglot_cls(str(root), background=background, download=download)
        except Exception as exc:  # RuntimeError when missing, network errors when downloading
            raise DatasetNotFoundError(f"Omniglot folder {folder} unavailable: {exc}") from exc
        # torchvision lists directories unsorted; order by the character id in '<id>_<drawer>.png'
        for i, (image_name, c) in enumerate(ds._flat_character_images):
            char_id, drawer = (int(p) for p in Path(image_name).stem.split("_"))
            records.append((char_id, drawer, ds._characters[c].replace(os.sep, "/"), i, ds))
    if not records:
        raise DatasetNotFoundError(
            f"Omniglot not found: no {base}/images_background and no {SMALL_ZIPS[0]} in "
            f"{shared_data_root() / 'omniglot'}; load with download=True on an online machine"
        )
    records.sort(key=lambda r: (r[0], r[1]))
    names = list(dict.fromkeys(r[2] for r in records))
    index = {n: c for c, n in enumerate(names)}
    white = torch.from_numpy(np.stack([np.asarray(ds[i][0], dtype=np.uint8) for *_, i, ds in records]))
    labels = np.array([index[r[2]] for r in records])
    return _make(resize_ink(white), labels, names, f"folder:{base}")


def load(root: Path | None = None, download: bool = False, source: str = "auto") -> FewShotDataset:
    """Omniglot at 28x28 (ink bright) from the npz arrays or the torchvision folder layout."""
    if source not in SOURCES:
        raise ConfigError(f"omniglot source must be one of {SOURCES}, got {source!r}")
    root = Path(root) if root is not None else data_root()
    folder = _npz_dir(root) if source in ("auto", "npz") else None
    if folder is not None:
        return _load_npz(root, folder)
    if source == "npz":
        raise DatasetNotFoundError(
            f"Omniglot npz files {', '.join(NPZ_FILES)} not found in {root / 'omniglot'} or "
            f"{shared_data_root() / 'omniglot'}; use source='folder' (torchvision layout)"
        )
    return _load_folder(root, download)
