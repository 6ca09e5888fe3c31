"""Few-shot datasets by name: ``load_dataset("fashion-mnist")`` -> FewShotDataset (TLXML 3, 5.1, B.1).

Loaded datasets are cached per process, keyed by name, root (or the data directories in effect),
download flag and keyword arguments, since the CLI and the app load the same one repeatedly.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metainf_core.data import cifar, fashion_mnist, imagenet_like, omniglot, synthetic
from metainf_core.data.base import FewShotDataset, data_root, shared_data_root
from metainf_core.exceptions import ConfigError

__all__ = ["DATASETS", "DEFAULT_DATASET", "FewShotDataset", "clear_cache", "list_datasets", "load_dataset"]

Loader = Callable[..., FewShotDataset]
DEFAULT_DATASET = "fashion-mnist"
DATASETS: dict[str, Loader] = {
    "fashion-mnist": fashion_mnist.load,
    "omniglot": omniglot.load,
    "synthetic": synthetic.load,
    "mini-imagenet": imagenet_like.load_mini_imagenet,
    "tiny-imagenet": imagenet_like.load_tiny_imagenet,
    "cifar-fs": cifar.load_cifar_fs,
    "fc100": cifar.load_fc100,
}


def list_datasets() -> list[str]:
    """Registered dataset names, the default first."""
    return [DEFAULT_DATASET] + sorted(n for n in DATASETS if n != DEFAULT_DATASET)


@functools.lru_cache(maxsize=4)
def _load_cached(
    name: str, root: str | None, download: bool, frozen: tuple[tuple[str, Any], ...], _dirs: tuple[str, str]
) -> FewShotDataset:
    return DATASETS[name](Path(root) if root is not None else None, download, **dict(frozen))


def load_dataset(name: str, *, root: str | Path | None = None, download: bool = False, **kwargs: Any) -> FewShotDataset:
    """The dataset ``name`` (see ``list_datasets()``); ``kwargs`` go to its loader (e.g. omniglot ``source``)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    options = [p for p in inspect.signature(DATASETS[name]).parameters if p not in ("root", "download")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {', '.join(unknown)}; it takes {', '.join(options) or 'none'}")
    frozen = tuple(sorted(kwargs.items()))
    try:
        hash(frozen)
    except TypeError as exc:
        raise ConfigError(f"{name}: dataset keyword arguments must be hashable scalars, got {kwargs!r}") from exc
    dirs = (str(data_root()), str(shared_data_root()))  # env vars in effect are part of the key
    return _load_cached(name, None if root is None else str(root), bool(download), frozen, dirs)


def clear_cache() -> None:
    """Forget datasets loaded so far (frees their memory on the next garbage collection)."""
    _load_cached.cache_clear()
