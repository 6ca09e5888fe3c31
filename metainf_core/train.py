"""Meta-training on a fixed taskset (TLXML 5.1: Adam, meta-batch 32) with resumable checkpoints.

Meta-batch ``s`` is drawn from a generator seeded by ``(seed, s)``, so a run resumed from the
checkpoint of step ``s`` replays exactly the steps an uninterrupted run would take.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import metainf_core
from metainf_core.checkpoint import (
    TEST_TASKS_FILE,
    TRAIN_STATE_FILE,
    TRAIN_TASKS_FILE,
    load_tensors,
    read_meta,
    read_tensor_metadata,
    save_checkpoint,
    save_tensors,
)
from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.data import load_dataset
from metainf_core.data.base import FewShotDataset
from metainf_core.evaluation import evaluate_tasks
from metainf_core.exceptions import CheckpointError, ConfigError, TrainingStopped
from metainf_core.learners import LearnerSpec, create_batched_task_metrics_function, params_of
from metainf_core.models import build_network
from metainf_core.tasks import TaskSet, make_taskset

CURVE_POINTS = 200  # the training curve keeps about this many points


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → CUDA when present, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} requested but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported")
    return dev


# glibc mallopt parameters and their defaults (malloc.h): memory above M_MMAP_THRESHOLD is mapped
# fresh and unmapped on free, at most M_MMAP_MAX such maps; heap tops above M_TRIM_THRESHOLD go back.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _libc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None elsewhere (macOS, musl: nothing to tune)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return None
    return fn


_RETAINED_LOCK = threading.Lock()
_retained_users = 0  # how many retained_allocations blocks are open in this process


@contextmanager
def retained_allocations() -> Iterator[None]:
    """While training, serve large tensors from the heap and keep freed memory for the next step.

    glibc maps each activation above 128 KiB afresh and unmaps it on free, so every step the kernel
    zeroes the same ~80 MB of new pages again: 40 % of a ProtoNet Omniglot step (conv4×32, 32 tasks)
    was system time (1.19 s of 3.2 s CPU; 0.05 s with this, ``bench/bench_training.py``). Restored on
    exit, so a long-lived process (the dashboard) gives the memory back afterwards. The setting is
    process-wide: nested or concurrent uses (threads of one server) count, and the last to leave restores it.
    """
    global _retained_users
    mallopt = _libc_mallopt()
    with _RETAINED_LOCK:
        _retained_users += 1
        if mallopt is not None and _retained_users == 1:
            mallopt(_M_MMAP_MAX, 0)
            mallopt(_M_TRIM_THRESHOLD, 2**30)
    try:
        yield
    finally:
        with _RETAINED_LOCK:
            _retained_users -= 1
            if mallopt is not None and _retained_users == 0:
                mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)


class StopRequest:
    """Set by SIGTERM or SIGINT while training, so the loop saves the step it finished and stops
    (a killed run would lose up to ``checkpoint_every`` steps). Installed only in the main thread
    (where Python delivers signals); the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def meta_batch_ids(num_tasks: int, meta_batch: int, seed: int, step: int, exclude: tuple[int, ...] = ()) -> np.ndarray:
    """The training task ids of meta-batch ``step`` (without replacement when enough tasks),
    never one of ``exclude`` (leave-out retraining, TLXML Table 3)."""
    allowed = np.setdiff1d(np.arange(num_tasks), np.asarray(exclude, dtype=np.int64))
    if len(allowed) == 0:
        raise ConfigError("every training task is excluded")
    rng = np.random.default_rng([seed, step])
    return allowed[rng.choice(len(allowed), size=meta_batch, replace=len(allowed) < meta_batch)]


def _installed_version(package: str) -> str:
    """The installed version of ``package``, or "absent" (a GPU machine's image has no learn2learn)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def library_versions() -> dict[str, str]:
    return {
        "metainf": metainf_core.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "learn2learn": _installed_version("learn2learn"),
        "numpy": np.__version__,
    }


@dataclass
class _State:
    """Everything a resumed run needs: parameters, Adam moments, step and curve so far."""

    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Adam
    step: int
    curve: list[dict[str, float]]


def _save_train_state(path: Path, st: _State, configs: dict[str, Any]) -> None:
    """One atomic file: ω, Adam state and progress (never a half-updated pair of files)."""
    tensors = {f"param.{k}": v for k, v in st.params.items()}
    names = list(st.params)
    for i, s in st.optimizer.state_dict()["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{key}.{names[i]}"] = torch.as_tensor(s[key]).reshape(-1)
    save_tensors(path, tensors, metadata={"step": st.step, "curve": st.curve, "configs": configs})


def _load_train_state(path: Path, st: _State, configs: dict[str, Any]) -> None:
    meta = read_tensor_metadata(path)
    for part, cls in (("task", TaskConfig), ("train", TrainConfig)):
        # a field added after the run was saved (e.g. prox_* for an old MAML run) counts as its default
        a = json.loads(json.dumps({**cls().to_dict(), **meta.get("configs", {}).get(part, {})}))
        b = json.loads(json.dumps(configs[part]))  # tuples as JSON lists, as saved
        a.pop("steps", None), b.pop("steps", None)  # a resumed run may train longer
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise ConfigError(f"cannot resume {path.parent}: {part} config differs in {', '.join(diff)}")
    saved = load_tensors(path)
    names = list(st.params)
    with torch.no_grad():
        for k in names:
            st.params[k].copy_(saved[f"param.{k}"])
    sd = st.optimizer.state_dict()
    sd["state"] = {
        i: {
            "step": saved[f"adam.step.{k}"].reshape(()),
            "exp_avg": saved[f"adam.exp_avg.{k}"].reshape(st.params[k].shape),
            "exp_avg_sq": saved[f"adam.exp_avg_sq.{k}"].reshape(st.params[k].shape),
        }
        for i, k in enumerate(names)
    }
    st.optimizer.load_state_dict(sd)
    st.step = int(meta["step"])
    st.curve = list(meta["curve"])


def base_meta(
    dataset: FewShotDataset, task_cfg: TaskConfig, train_cfg: TrainConfig, num_params: int
) -> dict[str, Any]:
    return {
        "dataset": dataset.describe(),
        "task_config": task_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "algorithm": train_cfg.algo,
        "architecture": train_cfg.model or train_cfg.arch,
        "input_shape": list(dataset.input_shape),
        "ways": task_cfg.ways,
        "tasksets": {"train": TRAIN_TASKS_FILE, "test": TEST_TASKS_FILE},
        "versions": library_versions(),
        "command": "python -m metainf_core " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else None,
    }


def _finished_at(out: Path, step: int) -> bool:
    """Whether ``out``'s meta.json records a finished training at ``step`` (test accuracy evaluated)."""
    try:
        meta = read_meta(out)
    except (CheckpointError, OSError, ValueError):
        return False
    return bool(meta.get("complete")) and meta.get("step") == step and "test" in meta


def train(
    task_cfg: TaskConfig,
    train_cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    eval_batch: int | None = None,
) -> Path:
    """Meta-train on a fixed training taskset; checkpoint every ``checkpoint_every`` steps.

    Writes ``out/{model.safetensors, meta.json, train_tasks.json, test_tasks.json,
    train_state.safetensors}``; at the end meta.json holds the test accuracy with its 95% interval.
    """
    out = Path(out)
    dev = resolve_device(device)
    dataset = load_dataset(task_cfg.dataset)
    train_ts, test_ts = make_taskset(dataset, task_cfg, "train"), make_taskset(dataset, task_cfg, "test")
    for j in train_cfg.exclude_tasks:
        train_ts.check_id(j)
    state_path = out / TRAIN_STATE_FILE
    if not resume and state_path.exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and not state_path.exists():
        raise CheckpointError(f"{out}: nothing to resume ({TRAIN_STATE_FILE} not found)")

    torch.manual_seed(train_cfg.seed)
    model = build_network(train_cfg.model, train_cfg.arch, train_cfg.algo, dataset.input_shape, task_cfg.ways, train_cfg.filters).to(dev)
    spec = LearnerSpec.from_train_config(train_cfg, task_cfg.ways)
    params = {k: v.to(dev).requires_grad_() for k, v in params_of(model).items()}
    st = _State(params, torch.optim.Adam(params.values(), lr=train_cfg.lr), 0, [])
    configs = {"task": task_cfg.to_dict(), "train": train_cfg.to_dict()}
    if resume:
        _load_train_state(state_path, st, configs)
    else:
        out.mkdir(parents=True, exist_ok=True)
        train_ts.save(out / TRAIN_TASKS_FILE)
        test_ts.save(out / TEST_TASKS_FILE)
    for split, ts, name in (("train", train_ts, TRAIN_TASKS_FILE), ("test", test_ts, TEST_TASKS_FILE)):
        if TaskSet.load(out / name).fingerprint() != ts.fingerprint():
            raise CheckpointError(f"{out / name}: the {split} taskset on disk differs from the regenerated one")
    if resume and st.step >= train_cfg.steps and _finished_at(out, st.step):
        return out  # nothing to train: the finished run's meta (test accuracy, training time) stays as written

    metrics_fn = create_batched_task_metrics_function(model, spec)
    meta = base_meta(dataset, task_cfg, train_cfg, sum(p.numel() for p in params.values()))
    meta["device"] = str(dev)
    record_every = max(1, train_cfg.steps // CURVE_POINTS)
    window: list[tuple[float, float]] = []
    started = time.time()
    with retained_allocations(), StopRequest() as stop:
        bar = tqdm(total=train_cfg.steps, initial=st.step, disable=not progress, desc="meta-train", unit="step", file=sys.stderr)
        while st.step < train_cfg.steps:
            ids = meta_batch_ids(len(train_ts), train_cfg.meta_batch, train_cfg.seed, st.step, train_cfg.exclude_tasks)
            b = train_ts.batch(ids, dataset).to(dev)
            loss, acc = metrics_fn(st.params, b.support_x, b.support_y, b.query_x, b.query_y)
            st.optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            st.optimizer.step()
            st.step += 1
            window.append((loss.mean().item(), acc.mean().item()))
            if st.step % record_every == 0 or st.step == train_cfg.steps:
                mean = np.mean(window, axis=0)
                st.curve.append({"step": st.step, "loss": float(mean[0]), "accuracy": float(mean[1])})
                window.clear()
                bar.set_postfix(loss=f"{mean[0]:.3f}", acc=f"{mean[1]:.3f}")
            bar.update(1)
            if st.step % train_cfg.checkpoint_every == 0 or st.step == train_cfg.steps or stop.signal is not None:
                _save_train_state(state_path, st, configs)
                if train_cfg.keep_history and (st.step % train_cfg.checkpoint_every == 0 or st.step == train_cfg.steps):
                    save_tensors(out / "history" / f"step_{st.step:07d}.safetensors", st.params)
                meta.update(step=st.step, complete=False, curve=st.curve)
                save_checkpoint(out, st.params, meta, extra_files=(TRAIN_TASKS_FILE, TEST_TASKS_FILE))
            if stop.signal is not None and st.step < train_cfg.steps:
                bar.close()
                raise TrainingStopped(f"stopped by signal {stop.signal} after step {st.step:,} of {train_cfg.steps:,}; "
                                      f"everything up to it is saved in {out} (resume with --resume)")
    bar.close()
    params_eval = {k: v.detach() for k, v in st.params.items()}
    test = evaluate_tasks(metrics_fn, params_eval, test_ts, dataset, batch_size=eval_batch, device=dev)
    meta.update(
        step=st.step,
        complete=True,
        curve=st.curve,
        test=test.summary(),
        train_seconds_this_session=round(time.time() - started, 2),
    )
    save_checkpoint(out, st.params, meta, extra_files=(TRAIN_TASKS_FILE, TEST_TASKS_FILE))
    return out
