"""Checkpoints: ``DIR/model.safetensors`` + ``DIR/meta.json`` (+ taskset manifests).

Nothing here unpickles: weights are read with ``safetensors`` only, and a file that looks like
a pickle or a ``torch.save`` archive is refused before any of its bytes are interpreted.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from metainf_core.exceptions import CheckpointError, UnsafeFileError
from metainf_core.io import sha256_file, write_atomic, write_json_atomic

META_FORMAT = "metainf-checkpoint/1"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
TRAIN_TASKS_FILE = "train_tasks.json"
TEST_TASKS_FILE = "test_tasks.json"
TRAIN_STATE_FILE = "train_state.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, zip (torch.save)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded, verified checkpoint: metadata plus the meta-parameters ω̂."""

    path: Path
    meta: dict[str, Any]
    params: dict[str, torch.Tensor]

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.params.values())


def _check_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header without loading tensors; refuse pickles and truncated files."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if any(head.startswith(m) for m in _PICKLE_MAGIC):
            raise UnsafeFileError(f"{path}: looks like a pickle/torch.save archive; refusing to load it (use safetensors)")
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated ({size} bytes), not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file or truncated (header size {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) > size:
        raise CheckpointError(f"{path}: truncated: tensors end past the file's {size} bytes")
    return header


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept learn2learn-style state dicts (``module.`` prefix from ``l2l.algorithms.MAML``)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_tensors(path: str | Path, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file after header checks (only ``names`` when given: the others
    are not read); never executes file content."""
    path = Path(path)
    header = _check_safetensors_header(path)
    try:
        if names is None:
            return strip_module_prefix(load_file(str(path)))
        missing = [n for n in names if n not in header]
        if missing:
            raise CheckpointError(f"{path}: no tensor named {', '.join(missing)}")
        with safe_open(str(path), framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> None:
    """Atomically write contiguous CPU copies of ``tensors``; ``metadata`` (JSON-able) rides in
    the same file, so tensors and the bookkeeping that describes them can never disagree."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"json": json.dumps(metadata, sort_keys=True)} if metadata is not None else None
    write_atomic(path, lambda tmp: save_file(data, tmp, metadata=header))


def read_tensor_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata stored by ``save_tensors(..., metadata=...)`` (header only)."""
    header = _check_safetensors_header(Path(path))
    try:
        return json.loads(header.get("__metadata__", {}).get("json", "{}"))
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: corrupt metadata") from None


def resolve_dir(path: str | Path) -> Path:
    """A checkpoint directory from a directory, its meta.json or its model.safetensors."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.name in (META_FILE, MODEL_FILE):
        return path.parent
    if path.is_file():
        _check_safetensors_header(path)  # refuses pickles with their own message
        raise CheckpointError(f"{path}: a checkpoint is a directory with {MODEL_FILE} and {META_FILE}")
    raise CheckpointError(f"{path}: no such checkpoint directory")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata, checked for format and hashes (model and manifests)."""
    d = resolve_dir(path)
    meta_path = d / META_FILE
    if (d / MODEL_FILE).exists():
        _check_safetensors_header(d / MODEL_FILE)  # an unsafe weights file is named as such first
    if not meta_path.is_file():
        raise CheckpointError(f"{d}: {META_FILE} not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise CheckpointError(f"{meta_path}: not a metainf checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    _check_safetensors_header(d / MODEL_FILE)
    for name, expected in meta.get("hashes", {}).items():
        f = d / name
        if not f.is_file():
            raise CheckpointError(f"{d}: {name} listed in {META_FILE} but missing")
        if sha256_file(f) != expected:
            raise CheckpointError(f"{f}: content hash mismatch with {META_FILE} (file altered or truncated)")
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Verified metadata and parameters; shapes are checked against the recorded ones."""
    d = resolve_dir(path)
    meta = read_meta(d)
    params = load_tensors(d / MODEL_FILE)
    expected = meta.get("parameter_shapes", {})
    got = {k: list(v.shape) for k, v in params.items()}
    if expected and got != expected:
        missing = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got.get(k)]
        raise CheckpointError(f"{d}: parameters do not match {META_FILE} (first mismatch: {missing[0]})")
    return Checkpoint(d, meta, params)


def save_checkpoint(
    directory: str | Path, params: dict[str, torch.Tensor], meta: dict[str, Any], extra_files: tuple[str, ...] = ()
) -> Path:
    """Write weights, then meta.json last (with hashes), so a crash never leaves a valid-looking
    meta.json beside stale weights."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_tensors(d / MODEL_FILE, params)
    meta = dict(meta)
    meta["format"] = META_FORMAT
    meta["num_parameters"] = int(sum(t.numel() for t in params.values()))
    meta["parameter_shapes"] = {k: list(v.shape) for k, v in params.items()}
    meta["hashes"] = {name: sha256_file(d / name) for name in (MODEL_FILE, *extra_files)}
    write_json_atomic(d / META_FILE, meta)
    return d


def run_folder_zip(directory: str | Path, name: str | None = None) -> bytes:
    """The run folder ``directory`` (safetensors + JSON, no subfolders) as .zip bytes, its files under
    ``name/`` (default: the folder's name): the one checkpoint exporter (the pages' downloads), read
    back by ``import_checkpoint_zip``."""
    import io
    import zipfile

    directory = Path(directory)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in directory.iterdir() if p.is_file()):
            z.write(f, f"{name or directory.name}/{f.name}")
    return buf.getvalue()


ALLOWED_UPLOAD_FILES = (MODEL_FILE, META_FILE, TRAIN_TASKS_FILE, TEST_TASKS_FILE, TRAIN_STATE_FILE)
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


def import_checkpoint_zip(data: bytes, dest_root: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> Path:
    """Unpack an uploaded checkpoint (a .zip of one checkpoint directory) into
    ``dest_root/<sha256 prefix>/`` and verify it; nothing is unpickled or executed.

    Only the known file names are extracted (no paths, so no traversal); sizes are checked
    before extraction; the result must pass ``read_meta`` and the shape checks of ``load_checkpoint``.
    """
    import hashlib
    import io
    import shutil
    import tempfile
    import zipfile

    if len(data) > max_bytes:
        raise CheckpointError(f"upload is {len(data) / 2**20:.1f} MiB; the limit is {max_bytes / 2**20:.0f} MiB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CheckpointError("upload is not a .zip of a checkpoint folder (model.safetensors + meta.json + tasksets)") from None
    members = {}
    for info in archive.infolist():
        name = Path(info.filename).name
        if info.is_dir() or name not in ALLOWED_UPLOAD_FILES:
            continue
        if name in members:
            raise CheckpointError(f"upload holds {name} twice")
        if info.file_size > max_bytes:
            raise CheckpointError(f"{name} in the upload is larger than {max_bytes / 2**20:.0f} MiB")
        members[name] = info
    missing = [n for n in (MODEL_FILE, META_FILE) if n not in members]
    if missing:
        raise CheckpointError(f"upload lacks {', '.join(missing)}")
    dest = Path(dest_root) / hashlib.sha256(data).hexdigest()[:16]
    if dest.is_dir():
        load_checkpoint(dest)
        return dest
    Path(dest_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".upload-", dir=dest_root))
    try:
        for name, info in members.items():
            (tmp / name).write_bytes(archive.read(info))
        load_checkpoint(tmp)  # refuses pickles, truncated or altered files, shape mismatches
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
