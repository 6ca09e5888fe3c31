"""One-step block/enhance edits of the meta-parameters (TLXML Eq. 13, Tables 3–4, 15).

δω = ξ_B Σ_{j∈B} I_meta(j) + ξ_E Σ_{j∈E} I_meta(j),  ω' = ω̂ + δω.
ξ = −1 approximates removing the tasks (ω̂ − I_meta ≈ ω̂₋ⱼ, since ε = −1 cancels task j's
1/M share of the meta-objective); ξ < −1 blocks harder; ξ > 0 enhances.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from metainf_core.checkpoint import run_folder_zip, save_checkpoint
from metainf_core.exceptions import ConfigError
from metainf_core.learners import Params

if TYPE_CHECKING:
    from metainf_core.config import InfluenceConfig
    from metainf_core.evaluation import TaskMetrics
    from metainf_core.influence import TaskInfluence
    from metainf_core.service import Run

# ids -> Σ_{j∈ids} I_meta(j), a flat vector of length q
IMetaSum = Callable[[np.ndarray], Tensor]
# one evaluation of a model on the test taskset: per-task loss, per-task accuracy, taskset summary (as edit_words.figures)
Evaluation = tuple[np.ndarray, np.ndarray, dict[str, float]]


def _ids(values: Sequence[int] | np.ndarray) -> tuple[int, ...]:
    out = tuple(int(v) for v in np.asarray(values, dtype=np.int64).reshape(-1))
    if any(v < 0 for v in out):
        raise ConfigError("task ids must be non-negative")
    return out


@dataclass(frozen=True)
class EditSpec:
    """Blocked set B with shift ξ_B and enhanced set E with shift ξ_E (Eq. 13)."""

    block: tuple[int, ...] = field(default=())
    xi_block: float = -1.0
    enhance: tuple[int, ...] = field(default=())
    xi_enhance: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", _ids(self.block))
        object.__setattr__(self, "enhance", _ids(self.enhance))
        for name in ("xi_block", "xi_enhance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        both = set(self.block) & set(self.enhance)
        if both:
            raise ConfigError(f"tasks {sorted(both)[:5]} are both blocked and enhanced")


@dataclass(frozen=True)
class EditDirections:
    """Σ_{j∈B} I_meta(j) and Σ_{j∈E} I_meta(j) (flat, length q; zero for an empty set): ξ only
    rescales them, so a page moving ξ reuses them (TLXML A.3: a group's influence is the sum)."""

    block: Tensor
    enhance: Tensor

    def delta(self, xi_block: float, xi_enhance: float) -> Tensor:
        """δω = ξ_B Σ_B I_meta + ξ_E Σ_E I_meta (Eq. 13)."""
        return xi_block * self.block + xi_enhance * self.enhance


def edit_directions(i_meta_sum: IMetaSum, block: Sequence[int], enhance: Sequence[int] = ()) -> EditDirections:
    """The group sums of I_meta over the blocked and the enhanced set (at least one non-empty)."""
    block, enhance = _ids(block), _ids(enhance)
    if not (block or enhance):
        raise ConfigError("an edit needs at least one blocked or enhanced task")
    b = i_meta_sum(np.asarray(block)) if block else None
    e = i_meta_sum(np.asarray(enhance)) if enhance else None
    return EditDirections(torch.zeros_like(e) if b is None else b, torch.zeros_like(b) if e is None else e)


def edit_delta(i_meta_sum: IMetaSum, spec: EditSpec) -> Tensor:
    """δω of Eq. 13 from the group sums of I_meta."""
    return edit_directions(i_meta_sum, spec.block, spec.enhance).delta(spec.xi_block, spec.xi_enhance)


def predicted_loss_change(helpfulness: np.ndarray, spec: EditSpec) -> float:
    """First-order change of a target's loss under the edit: g_iᵀ δω = Σ ξ I_perf = −ξ_B Σ_B
    helpfulness − ξ_E Σ_E helpfulness (Eq. 9, 13), from every training task's helpfulness for it."""
    h = np.asarray(helpfulness, dtype=np.float64)
    return -(spec.xi_block * float(h[list(spec.block)].sum()) + spec.xi_enhance * float(h[list(spec.enhance)].sum()))


def apply_delta(params: Params, delta: Tensor | np.ndarray) -> Params:
    """ω' = ω̂ + δω, with δω flat in the order of ``params`` (as ``influence.flat.ParamLayout``);
    a NumPy δω is taken too (pages hold arrays, not tensors)."""
    delta = torch.as_tensor(delta)
    sizes = [v.numel() for v in params.values()]
    if sum(sizes) != delta.numel():
        raise ConfigError(f"edit has {delta.numel()} entries, the model {sum(sizes)} parameters")
    parts = torch.split(delta.to(next(iter(params.values()))), sizes)  # the weights' dtype and device
    return {k: v.detach() + d.view_as(v) for (k, v), d in zip(params.items(), parts, strict=True)}


def edited_params(run: Run, inf: TaskInfluence, spec: EditSpec) -> Params:
    """ω' = ω̂ + δω of TLXML Eq. 13."""
    return apply_delta(run.params, edit_delta(inf.i_meta_sum, spec))


def edit_report(run: Run, params: Params, test_task: int | None = None) -> dict[str, Any]:
    """Loss and accuracy before and after on the test taskset (mean, 95% interval) and one test task."""
    before, after = run.as_trained, run.evaluate(params)
    report: dict[str, Any] = {"taskset": {"before": before.summary(), "after": after.summary()}}
    if test_task is not None:
        i = run.test_tasks.check_id(test_task)
        report["test_task"] = {
            "id": i,
            "before": {"loss": float(before.loss[i]), "accuracy": float(before.accuracy[i])},
            "after": {"loss": float(after.loss[i]), "accuracy": float(after.accuracy[i])},
        }
    return report


def save_edited_checkpoint(run: Run, params: Params, out: str | Path, edit: dict[str, Any]) -> Path:
    """Write ω' as a checkpoint of its own (same tasksets), recording the edit that made it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in run.meta["tasksets"].values():
        shutil.copyfile(run.checkpoint.path / name, out / name)
    meta = {k: v for k, v in run.meta.items() if k not in ("hashes", "test")}
    meta.update(edited_from=str(run.checkpoint.path), edit=edit, test=edit.get("test"))
    return save_checkpoint(out, params, meta, tuple(run.meta["tasksets"].values()))


def edited_checkpoint_zip(run: Run, params: Params, edit: dict[str, Any], name: str = "edited") -> bytes:
    """ω' as a run folder of its own (``save_edited_checkpoint``) zipped under ``name/``: the one
    download of an edited or cleaned model, which ``checkpoint.import_checkpoint_zip`` opens again."""
    with tempfile.TemporaryDirectory() as tmp:
        return run_folder_zip(save_edited_checkpoint(run, params, Path(tmp) / name, edit))


XI_SWEEP = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)  # ξ values of the accuracy-versus-ξ curve


@dataclass(frozen=True)
class XiSweep:
    """A blocked set re-evaluated along ξ (TLXML Table 15's ξ sweep): the taskset's mean accuracy,
    one test task's accuracy and loss, and that loss's first-order predicted change −ξ Σ_B helpfulness."""

    xis: tuple[float, ...]
    taskset_accuracy: tuple[float, ...]
    task_accuracy: tuple[float, ...]
    task_loss: tuple[float, ...]
    predicted_loss_change: tuple[float, ...]


def xi_sweep(
    evaluate: Callable[[float], Evaluation], helpfulness: np.ndarray, block: Sequence[int], test_task: int,
    xis: Sequence[float] = XI_SWEEP, progress: Callable[[int, int], None] | None = None,
) -> XiSweep:  # fmt: skip
    """The edit that blocks ``block`` at each ξ of ``xis`` (``evaluate(ξ)``: the test taskset's
    evaluation of ω̂ + ξ Σ_B I_meta, of ω̂ itself at ξ = 0; a page passes its cached one), read at
    ``test_task``; ``helpfulness``: every training task's for that test task; ``progress(done, total)``
    after each ξ."""
    acc, task_acc, task_loss, predicted = [], [], [], []
    for n, xi in enumerate(xis):
        loss, accuracy, summary = evaluate(float(xi))
        acc.append(float(summary["accuracy"]))
        task_acc.append(float(accuracy[test_task]))
        task_loss.append(float(loss[test_task]))
        predicted.append(predicted_loss_change(helpfulness, EditSpec(block=tuple(block), xi_block=float(xi))))
        if progress is not None:
            progress(n + 1, len(xis))
    return XiSweep(tuple(float(x) for x in xis), tuple(acc), tuple(task_acc), tuple(task_loss), tuple(predicted))


# ---- the sweep on disk: the Edit page's curve as a background job (jobs.submit_xi_sweep) ----------
def metrics_evaluation(metrics: TaskMetrics) -> Evaluation:
    """A ``TaskMetrics`` as ``xi_sweep``'s ``evaluate`` returns it: per-task loss, accuracy, summary."""
    return metrics.loss, metrics.accuracy, metrics.summary()


def _sweep_metrics(tensors: dict[str, torch.Tensor], info: dict) -> dict[float, TaskMetrics]:
    """A saved sweep (``xi_sweep_entry``'s tensors and info) as the test metrics at each ξ."""
    from metainf_core.evaluation import unstack_metrics

    return dict(zip((float(xi) for xi in info["xis"]), unstack_metrics(tensors), strict=True))


def load_xi_sweep(run: Run, cfg: InfluenceConfig, block: Sequence[int], xis: Sequence[float] = XI_SWEEP) -> dict[float, TaskMetrics] | None:
    """The test metrics at each ξ that ``stored_xi_sweep`` saved for ``block`` and this fit, or
    None when the sweep is not on disk (never computes)."""
    from metainf_core.fits import xi_sweep_entry

    entry = xi_sweep_entry(run, cfg, block, xis)
    return _sweep_metrics(*entry.load()) if entry.complete else None


def stored_xi_sweep(
    run: Run, inf: TaskInfluence, cfg: InfluenceConfig, block: Sequence[int], xis: Sequence[float] = XI_SWEEP,
    progress: Callable[[int, int], None] | None = None,
) -> dict[float, TaskMetrics]:  # fmt: skip
    """The test metrics of ω̂ + ξ Σ_{j∈block} I_meta at each ξ of ``xis`` (``Run.as_trained`` at ξ = 0;
    ``inf``: the fit ``cfg`` made), saved in one cache entry (``fits.xi_sweep_entry``) once all are
    evaluated, and read from it when there; ``progress(done, total)`` after each ξ. A sweep cut
    before its end leaves no result, so the next one evaluates every ξ again (seconds)."""
    from metainf_core.detect import blocked_evaluation
    from metainf_core.evaluation import stack_metrics
    from metainf_core.fits import xi_sweep_entry

    block = sorted({int(j) for j in block})

    def compute():
        rows = []
        for n, xi in enumerate(xis):
            rows.append(run.as_trained if xi == 0 else blocked_evaluation(run, inf, block, xi))
            if progress is not None:
                progress(n + 1, len(xis))
        return stack_metrics(rows), {"xis": [float(x) for x in xis], "num_test_tasks": len(rows[0].task_ids)}

    return _sweep_metrics(*xi_sweep_entry(run, cfg, block, xis).load_or_compute(compute))


