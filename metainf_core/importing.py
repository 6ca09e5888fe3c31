"""Meta-learners trained elsewhere as metainf runs: learn2learn models, ``torch.save`` state dicts,
tasks written sample by sample (``tasks.json``).

``import_run`` writes an ordinary run folder (model.safetensors + meta.json + taskset manifests),
after which every command and page works on it unchanged. Weights files are read with
safetensors or ``torch.load(weights_only=True)`` (the restricted unpickler: tensors and plain
containers only); nothing a user hands over is executed.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metainf_core.checkpoint import (
    MODEL_FILE,
    TEST_TASKS_FILE,
    TRAIN_TASKS_FILE,
    load_tensors,
    save_checkpoint,
    strip_module_prefix,
)
from metainf_core.config import Algorithm, Architecture, TaskConfig, TrainConfig
from metainf_core.data import load_dataset
from metainf_core.data.base import FewShotDataset
from metainf_core.evaluation import evaluate_tasks
from metainf_core.exceptions import CheckpointError, ConfigError, UnsafeFileError
from metainf_core.io import sha256_file
from metainf_core.learners import LearnerSpec, create_batched_task_metrics_function
from metainf_core.models import build_network, construct
from metainf_core.tasks import make_taskset, taskset_from_samples
from metainf_core.train import library_versions

TASKS_FORMAT = "metainf-tasks/1"
# state-dict nestings people save: torch.save({"state_dict": ...}) and friends
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module")


# ---- weights -----------------------------------------------------------------------------
def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save``d state dict.

    The latter go through ``torch.load(weights_only=True)``: a file holding anything but tensors
    and plain containers (a pickled class, a crafted ``__reduce__``) is refused before any of it
    runs. A single nesting level (``{"state_dict": {...}}``) and ``module.`` prefixes are undone.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not (head.startswith(b"\x80") or head.startswith(b"PK\x03\x04")):
        return load_tensors(path)  # safetensors (its own checks)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise UnsafeFileError(f"{path}: refused: it holds more than tensors ({first[:160]})") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for damaged archives
        raise CheckpointError(f"{path}: not a readable torch.save file ({e.__class__.__name__}: {str(e)[:160]})") from None
    if isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _NESTED_KEYS and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), found {type(obj).__name__}")
    return strip_module_prefix(dict(obj))


@dataclasses.dataclass(frozen=True)
class MatchedWeights:
    """A state dict matched to a network: its parameters by their canonical names, and what was set aside."""

    params: dict[str, torch.Tensor]
    aliases: int  # duplicate entries of tied modules (checked equal)
    dropped_buffers: int  # batch-norm running statistics and counters (batch statistics are used)


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor], buffer_names: Sequence[str] = ()) -> MatchedWeights:
    """Pick ``model``'s parameters out of ``state``; one-line errors name the first mismatch.

    Canonical names are ``named_parameters()``'s (a module registered twice, as learn2learn's
    OmniglotCNN does, counts once; its second copy in the file must hold the same values).
    ``buffer_names`` (batch-norm statistics of the original network) may appear and are dropped.
    """
    state = strip_module_prefix(state)
    canonical = dict(model.named_parameters())
    alias_of = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first = next(n for n, q in canonical.items() if q is p)
        if name != first:
            alias_of[name] = first
    params, aliases, dropped = {}, 0, 0
    for name, t in state.items():
        if name in canonical:
            continue
        if name in alias_of:
            aliases += 1
            continue
        if name in buffer_names:
            dropped += 1
            continue
        raise CheckpointError(f"the weights hold {name!r}, which the model does not have (it has e.g. {next(iter(canonical))!r})")
    for name, p in canonical.items():
        if name not in state:
            alias = next((a for a, c in alias_of.items() if c == name and a in state), None)
            if alias is None:
                raise CheckpointError(f"the weights lack {name!r} ({len(canonical)} parameters expected)")
            t = state[alias]
        else:
            t = state[name]
        if tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(f"{name!r} has shape {list(t.shape)} in the weights, the model expects {list(p.shape)}")
        params[name] = t.detach().to(torch.float32).clone()
    for alias, name in alias_of.items():
        if alias in state and name in state and not torch.equal(state[alias].float(), state[name].float()):
            raise CheckpointError(f"the weights hold different values for {alias!r} and {name!r}, which are one tied module")
    return MatchedWeights(params, aliases, dropped)


# ---- tasks -------------------------------------------------------------------------------
def read_tasks_file(path: str | Path) -> dict[str, Any]:
    """A ``tasks.json``: ``{"train_tasks": [...], "test_tasks": [...] (optional), "dataset": name
    (optional)}`` (see ``tasks.taskset_from_samples`` for one task's samples)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or "train_tasks" not in doc:
        raise ConfigError(f"{path}: expected an object with train_tasks (and optionally test_tasks)")
    unknown = sorted(set(doc) - {"train_tasks", "test_tasks", "format", "source", "dataset"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if "dataset" in doc and not (isinstance(doc["dataset"], str) and doc["dataset"].strip()):
        raise ConfigError(f"{path}: dataset must be a dataset name such as fashion-mnist, got {doc['dataset']!r}")
    return doc


def tasks_dataset(doc: dict[str, Any], dataset: str | None) -> str:
    """The dataset the tasks' indices refer to: the one the tasks file names, checked against
    ``dataset`` (``--dataset``) when both are given, or ``dataset`` when the file names none."""
    named = doc.get("dataset")
    if named is not None and dataset is not None and named != dataset:
        raise ConfigError(f"the tasks file names dataset {named!r} but --dataset is {dataset!r}; its indices refer to one of them only")
    if named is None and dataset is None:
        raise ConfigError("which dataset do the tasks' indices refer to? pass --dataset (e.g. fashion-mnist) or name it in the tasks file")
    return named or dataset


def alternate_support(targets: torch.Tensor) -> torch.Tensor:
    """learn2learn's MAML examples: samples at even positions adapt, odd ones are queried."""
    mask = torch.zeros(len(targets), dtype=torch.bool)
    mask[0::2] = True
    return mask


def first_shots_support(shots: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """learn2learn's ProtoNet examples: the first ``shots`` samples of each target adapt (in task
    order, i.e. after their sort by label)."""

    def rule(targets: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(len(targets), dtype=torch.bool)
        for t in targets.unique():
            mask[torch.nonzero(targets == t).flatten()[:shots]] = True
        return mask

    return rule


def tasks_from_learn2learn(
    taskset: Any,
    support: Callable[[torch.Tensor], torch.Tensor] = alternate_support,
    index_map: Callable[[int], int] | Sequence[int] | None = None,
    sort_by_target: bool = False,
) -> list[list[dict[str, Any]]]:
    """``tasks.json`` entries from a learn2learn ``TaskDataset(num_tasks=M)``: its tasks in id
    order, each sample's dataset index (``sampled_descriptions``), class, target (the label the
    task yields, after ``RemapLabels``) and support flag from ``support(targets)``.

    ``index_map`` turns the TaskDataset's indices into the named dataset's (e.g. a Subset's
    ``indices``); ``sort_by_target`` sorts each task by target first, as learn2learn's ProtoNet
    examples do before taking the first shots of each class.
    """
    m = getattr(taskset, "num_tasks", -1)
    if m is None or m < 1:
        raise ConfigError("the TaskDataset must have a fixed num_tasks (tasks are identified by their ids)")
    labels_of = taskset.dataset.indices_to_labels
    mapped = (lambda i: index_map(i)) if callable(index_map) else (lambda i: int(index_map[i])) if index_map is not None else int
    tasks = []
    for j in range(m):
        _, y = taskset[j]  # samples (and caches) task j's description
        descriptions = taskset.sampled_descriptions[j]
        y = torch.as_tensor(y).reshape(-1)
        order = torch.argsort(y, stable=True) if sort_by_target else torch.arange(len(y))
        y = y[order]
        mask = support(y)
        rows = []
        for k, d in zip(order.tolist(), range(len(order)), strict=True):
            i = descriptions[k].index
            rows.append({"index": mapped(int(i)), "label": int(labels_of[i]), "target": int(y[d]), "support": bool(mask[d])})
        tasks.append(rows)
    return tasks


def write_tasks_file(path: str | Path, train_tasks: list, test_tasks: list | None = None, source: str = "") -> Path:
    """Write a ``tasks.json`` (atomically)."""
    from metainf_core.io import write_json_atomic

    doc: dict[str, Any] = {"format": TASKS_FORMAT, "train_tasks": train_tasks}
    if test_tasks is not None:
        doc["test_tasks"] = test_tasks
    if source:
        doc["source"] = source
    write_json_atomic(path, doc, compact=True)
    return Path(path)


# ---- the run folder ------------------------------------------------------------------------
def _check_runs(model: nn.Module, algo: Algorithm, dataset: FewShotDataset, ways: int) -> None:
    """The network must take the dataset's inputs and (MAML) give ``ways`` outputs."""
    x = dataset.load(np.arange(min(4, len(dataset.samples))))
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # noqa: BLE001 - any failure means the shapes do not fit
        raise ConfigError(f"the model cannot take {dataset.name} inputs of shape {list(dataset.input_shape)} ({e.__class__.__name__}: {e})") from None
    if algo.has_classifier_head and (out.dim() != 2 or out.shape[1] != ways):
        raise ConfigError(f"a {algo.value} model must give {ways} outputs per input (one per target); it gives {list(out.shape[1:])}")


def import_run(
    model: nn.Module | str,
    out: str | Path,
    *,
    algo: str,
    dataset: str,
    train_tasks: list,
    test_tasks: list | None = None,
    weights: str | Path | dict[str, torch.Tensor] | None = None,
    constructor: str | None = None,
    inner_lr: float = 0.4,
    inner_steps: int = 1,
    first_order: bool = False,
    protonet_embedding: str | None = None,
    num_test_tasks: int = 128,
    seed: int = 0,
    filters: int = 32,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write a metainf run folder for a meta-learner trained elsewhere; returns ``out``.

    ``model``: a constructor expression (``"l2l.vision.models.CNN4(output_size=5)"``, or a metainf
    architecture name such as ``"conv4"``) or an ``nn.Module`` — then ``constructor`` must say how
    to rebuild it (its class must come from learn2learn or ``$METAINF_TRUSTED_MODULES``).
    ``weights``: a file (safetensors or ``torch.save`` state dict) or a state dict; default: the
    module's own. ``train_tasks`` / ``test_tasks``: tasks as lists of samples
    (``tasks.taskset_from_samples``); without test tasks, ``num_test_tasks`` are drawn from the
    dataset's test classes. ProtoNet embeds support and query jointly by default, as
    learn2learn's ProtoNet example does. Nothing is written unless every check passes.
    """
    algo_ = Algorithm(algo)
    if algo_ is Algorithm.PROXIMAL_MAML:
        raise ConfigError("import supports maml and protonet (proximal MAML is metainf-trained only)")
    if isinstance(model, str):
        spec_text, module = model.strip(), None
    else:
        if not constructor:
            raise ConfigError("pass constructor='package.Class(args)' so the run can rebuild this network later")
        spec_text, module = constructor.strip(), model
    builtin = spec_text in {a.value for a in Architecture}
    data = load_dataset(dataset)
    train_ts = taskset_from_samples(data, "train", train_tasks, "train_tasks")
    ways, shots, queries = train_ts.ways, train_ts.support.shape[2], train_ts.query.shape[2]
    test_given = test_tasks is not None
    test_ts = taskset_from_samples(data, "test", test_tasks, "test_tasks") if test_given else None
    if test_ts is not None and test_ts.ways != ways:
        raise ConfigError(f"test_tasks are {test_ts.ways}-way, train_tasks {ways}-way")
    task_cfg = TaskConfig(dataset=dataset, ways=ways, shots=shots, queries=queries, train_tasks=len(train_ts),
                          test_tasks=len(test_ts) if test_ts is not None else num_test_tasks, seed=seed)  # fmt: skip
    train_ts = dataclasses.replace(train_ts, config=task_cfg)
    if test_ts is None:
        test_ts = make_taskset(data, task_cfg, "test")
    else:  # shots/queries of the test tasks may differ from training's; the manifest keeps their own
        test_ts = dataclasses.replace(test_ts, config=dataclasses.replace(task_cfg, shots=test_ts.support.shape[2], queries=test_ts.query.shape[2]))
    embedding = protonet_embedding or ("joint" if algo_ is Algorithm.PROTONET and not builtin else "separate")
    train_cfg = TrainConfig(
        algo=algo_.value, arch=spec_text if builtin else "conv4", filters=filters, model="" if builtin else spec_text,
        inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, protonet_embedding=embedding, steps=1,
    )  # fmt: skip
    net = build_network(train_cfg.model, train_cfg.arch, algo_.value, data.input_shape, ways, filters)
    original = build_network("", train_cfg.arch, algo_.value, data.input_shape, ways, filters) if builtin else construct(spec_text)
    buffers = [n for n, _ in original.named_buffers(remove_duplicate=False)]
    if module is not None and type(module) is not type(net):
        raise ConfigError(f"the model is a {type(module).__name__}, the constructor builds a {type(net).__name__}")
    if weights is None:
        if module is None:
            raise ConfigError("pass weights (a file or a state dict) with a constructor expression")
        state, weights_file = module.state_dict(), None
    elif isinstance(weights, dict):
        state, weights_file = weights, None
    else:
        state, weights_file = read_weights(weights), Path(weights)
    matched = match_state_dict(net, state, buffers)
    net.load_state_dict(matched.params, strict=False)
    _check_runs(net, algo_, data, ways)
    spec = LearnerSpec.from_train_config(train_cfg, ways)
    metrics = create_batched_task_metrics_function(net, spec)
    test = evaluate_tasks(metrics, matched.params, test_ts, data)
    provenance = {
        "library": "metainf" if builtin else spec_text.split(".")[0].replace("l2l", "learn2learn"),
        "constructor": spec_text,
        "weights_file": weights_file.name if weights_file is not None else None,
        "weights_sha256": sha256_file(weights_file) if weights_file is not None else None,
        "aliased_entries": matched.aliases,
        "dropped_buffers": matched.dropped_buffers,
        "test_tasks": "given in its tasks file" if test_given else f"drawn from {dataset}'s test classes (seed {seed})",
        **(source or {}),
    }
    meta = {
        "dataset": data.describe(),
        "task_config": task_cfg.to_dict(),
        "train_config": train_cfg.to_dict(),
        "algorithm": algo_.value,
        "architecture": spec_text,
        "input_shape": list(data.input_shape),
        "ways": ways,
        "tasksets": {"train": TRAIN_TASKS_FILE, "test": TEST_TASKS_FILE},
        "versions": library_versions(),
        "imported": provenance,
        "step": None,
        "complete": True,
        "curve": [],
        "test": test.summary(),
        "command": "python -m metainf_core " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("__main__.py") else None,
    }
    out = Path(out)
    if (out / MODEL_FILE).exists():
        raise ConfigError(f"{out} already holds a run; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    train_ts.save(out / TRAIN_TASKS_FILE)
    test_ts.save(out / TEST_TASKS_FILE)
    return save_checkpoint(out, matched.params, meta, (TRAIN_TASKS_FILE, TEST_TASKS_FILE))


def imported_description(meta: dict[str, Any]) -> str | None:
    """Where an imported run's model came from, in one line (None for metainf-trained runs)."""
    imp = meta.get("imported")
    if not imp:
        return None
    weights = f"weights {imp['weights_file']} (sha256 {imp['weights_sha256'][:12]}…)" if imp.get("weights_file") else "weights from a module"
    return f"imported from {imp['library']}: {imp['constructor']}, {weights}"


__all__ = [
    "MatchedWeights", "alternate_support", "first_shots_support", "import_run", "imported_description",
    "match_state_dict", "read_tasks_file", "read_weights", "tasks_from_learn2learn", "write_tasks_file",
]  # fmt: skip
