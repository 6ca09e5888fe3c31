"""Content-addressed disk cache for expensive results (influence fits, score tables).

An entry lives in ``<root>/<kind>/<key>/`` where ``key`` hashes everything the result depends
on (checkpoint hash, taskset fingerprints, method and settings). Files are written atomically;
a partial state saved during a long fit lets a killed fit resume where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metainf_core.checkpoint import load_tensors, read_tensor_metadata, save_tensors
from metainf_core.data.base import REPO_ROOT
from metainf_core.exceptions import CacheError
from metainf_core.io import sha256_file, write_json_atomic

RESULT, PARTIAL, INFO = "result.safetensors", "partial.safetensors", "info.json"


def cache_root() -> Path:
    """``$METAINF_CACHE`` or ``<repo>/.cache/metainf``."""
    return Path(os.environ.get("METAINF_CACHE", REPO_ROOT / ".cache" / "metainf"))


def content_key(inputs: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``inputs`` (first 24 hex digits)."""
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


@dataclass(frozen=True)
class CacheEntry:
    """One cached result: a final tensor file + JSON info, or a resumable partial state."""

    directory: Path
    inputs: dict[str, Any]

    @classmethod
    def for_inputs(cls, kind: str, inputs: dict[str, Any], root: Path | None = None) -> CacheEntry:
        return cls((root or cache_root()) / kind / content_key(inputs), inputs)

    @property
    def complete(self) -> bool:
        return (self.directory / RESULT).is_file() and (self.directory / INFO).is_file()

    def save(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Write the final result (tensors first, info last) and drop any partial state."""
        save_tensors(self.directory / RESULT, tensors)
        write_json_atomic(self.directory / INFO, {"inputs": self.inputs, **info})
        (self.directory / PARTIAL).unlink(missing_ok=True)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        info = json.loads((self.directory / INFO).read_text(encoding="utf-8"))
        return load_tensors(self.directory / RESULT), info

    def load_or_compute(
        self, compute: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]]
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``compute()`` once per content hash: the saved tensors and info when complete, else computed,
        saved (with ``fit_seconds``, how long it took) and returned as read back, so every caller gets the
        bytes that are on disk whichever process computed them."""
        if not self.complete:
            started = time.time()
            tensors, info = compute()
            info = {**info, "fit_seconds": round(time.time() - started, 3)}
            self.save({k: v.contiguous() for k, v in tensors.items()}, info)
        tensors, info = self.load()
        return tensors, {k: v for k, v in info.items() if k != "inputs"}

    def save_partial(self, tensors: dict[str, torch.Tensor], progress: dict[str, Any]) -> None:
        """Checkpoint a running computation: tensors and progress in one atomic file."""
        save_tensors(self.directory / PARTIAL, tensors, metadata={"inputs": self.inputs, **progress})

    def load_partial(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The last partial state, or None when there is none (or it is unreadable)."""
        progress = self.partial_progress()
        if progress is None:
            return None
        try:
            return load_tensors(self.directory / PARTIAL), progress
        except (ValueError, OSError):
            return None

    def partial_progress(self) -> dict[str, Any] | None:
        """The progress saved with the partial state (header only, no tensors), or None."""
        path = self.directory / PARTIAL
        if not path.is_file():
            return None
        try:
            return read_tensor_metadata(path)
        except (ValueError, OSError):
            return None

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- copies shipped inside a run folder (bundled demos answer without computing) ----------
    def shipped_directory(self, run_dir: str | Path) -> Path:
        """``<run_dir>/cache/<kind>/<key>/``: where ``ship`` puts this entry inside a run folder."""
        return Path(run_dir) / "cache" / self.directory.parent.name / self.directory.name

    def ship(self, run_dir: str | Path) -> Path:
        """Copy the complete result into the run folder, with the SHA-256 of its tensor file."""
        if not self.complete:
            raise CacheError(f"{self.directory}: nothing complete to ship")
        dest = self.shipped_directory(run_dir)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.directory / RESULT, dest / RESULT)
        info = json.loads((self.directory / INFO).read_text(encoding="utf-8"))
        info.pop("source", None)  # where this cache's copy came from: not part of what is shipped
        write_json_atomic(dest / INFO, {**info, "sha256": sha256_file(dest / RESULT)})
        return dest

    def restore_shipped(self, run_dir: str | Path) -> bool:
        """Fill this entry from a copy shipped in the run folder, if there is one for exactly these
        inputs and its tensor file is intact; True when restored."""
        src = self.shipped_directory(run_dir)
        if self.complete or not (src / RESULT).is_file() or not (src / INFO).is_file():
            return False
        info = json.loads((src / INFO).read_text(encoding="utf-8"))
        if content_key(info.get("inputs", {})) != content_key(self.inputs) or info.get("sha256") != sha256_file(src / RESULT):
            raise CacheError(f"{src}: shipped result does not match its inputs or its hash (altered or stale)")
        tensors = load_tensors(src / RESULT)
        self.save(tensors, {k: v for k, v in info.items() if k not in ("inputs", "sha256")} | {"source": f"shipped ({src})"})
        return True
