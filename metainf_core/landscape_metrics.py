"""What the Landscape page shows of the diagnostics rows (seed 003 Fig. 5, 7): the statistics and
their labels, each one's correlation with test accuracy across snapshots, and the ``train``
command that retrains a run with its history kept (for runs trained without it).

The rows come from ``diagnostics.cached_diagnostics_over_history``; nothing here computes them.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import fields
from typing import Any

import numpy as np

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.diagnostics import DiagnosticsRow
from metainf_core.validate import spearman

METRICS = {  # field -> plain label, in the order seed 003 introduces them
    "gradient_inner": "gradient agreement (inner product)",
    "gradient_cosine": "gradient agreement (cosine)",
    "trajectory_cosine": "adaptation-step agreement (cosine)",
    "sharpness_power": "sharpness (power iteration)",
    "sharpness_lanczos": "sharpness (Lanczos)",
    "representation_inner": "feature agreement (inner product)",
    "adapted_support_loss": "support loss after adaptation",
}
PAPER_NAMES = {  # field -> the quantity as seed 003 writes it (for researchers)
    "gradient_inner": "gradient coherence E[g_iᵀg_j]",
    "gradient_cosine": "gradient coherence, cosine of g_i, g_j",
    "trajectory_cosine": "trajectory coherence E[cos(θ̃_i − ω, θ̃_j − ω)] (Eq. 5)",
    "sharpness_power": "E_i ‖∇²L(S_i; θ̃_i)‖σ by power iteration (Eq. 3–4; lower = flatter)",
    "sharpness_lanczos": "E_i ‖∇²L(S_i; θ̃_i)‖σ by Lanczos",
    "representation_inner": "representation coherence E[h_iᵀh_j]",
    "adapted_support_loss": "E_i L(S_i; θ̃_i)",
}


def metric_correlations(rows: list[DiagnosticsRow], target: str = "accuracy") -> dict[str, dict[str, float]]:
    """Per metric, Pearson r and Spearman ρ (average ranks for ties, ``validate.spearman``) with
    ``target`` across the snapshots — how seed 003 relates coherence and flatness to
    generalisation. NaN with fewer than 3 snapshots, a constant series or a non-finite value."""
    y = np.array([getattr(r, target) for r in rows], dtype=np.float64)
    out = {}
    for name in METRICS:
        x = np.array([getattr(r, name) for r in rows], dtype=np.float64)
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 or not np.isfinite(x).all():
            out[name] = {"pearson": math.nan, "spearman": math.nan}
            continue
        out[name] = {"pearson": float(np.corrcoef(x, y)[0, 1]), "spearman": spearman(x, y)}
    return out


def phase_correlations(steps: np.ndarray, accuracy: np.ndarray, values: np.ndarray) -> dict[str, tuple[float, int]]:
    """Spearman ρ of ``values`` with test accuracy and the number of snapshots, over the whole run,
    without its first snapshot (at initialisation gradients are large and alike, and one such point
    can decide a ρ), while accuracy rises (first snapshot to the peak) and after the peak (meta-
    overfitting, when training runs past it): seed 003 follows both phases. NaN with < 3 snapshots."""
    steps, acc, x = np.asarray(steps), np.asarray(accuracy, dtype=np.float64), np.asarray(values, dtype=np.float64)
    peak = int(np.argmax(acc))
    parts = {"whole run": slice(None), "without the first snapshot": slice(1, None),
             "rising (to the peak)": slice(0, peak + 1), "after the peak": slice(peak, None)}  # fmt: skip
    out = {}
    for name, part in parts.items():
        a, v = acc[part], x[part]
        out[name] = (spearman(a, v) if len(a) >= 3 else math.nan, len(a))
    return out


def coherence_phase_table(rows: list[dict[str, float]]) -> dict[str, dict[str, tuple[float, int]]]:
    """``phase_correlations`` of each coherence quantity of ``diagnostics.coherence_over_history`` rows."""
    from metainf_core.diagnostics import COHERENCE_FIELDS

    steps, acc = np.array([r["step"] for r in rows]), np.array([r["accuracy"] for r in rows])
    return {name: phase_correlations(steps, acc, np.array([r[name] for r in rows])) for name in COHERENCE_FIELDS}


def keep_history_command(meta: dict[str, Any], out: str) -> str:
    """The ``train`` command that retrains the run of ``meta`` with the same tasksets, seeds and
    settings (those that differ from the defaults) and keeps its history."""
    task, trn = TaskConfig.from_dict(meta["task_config"]), TrainConfig.from_dict(meta["train_config"])
    task_default, train_default = TaskConfig(), TrainConfig()
    network = f"--model {shlex.quote(trn.model)}" if trn.model else f"--arch {trn.arch}"
    args = [f"--dataset {task.dataset}", f"--algo {trn.algo}", network]
    for cfg, default, rename in ((task, task_default, {"seed": "task_seed"}), (trn, train_default, {})):
        for f in fields(cfg):
            value = getattr(cfg, f.name)
            if f.name in ("dataset", "algo", "arch", "model", "keep_history") or value == getattr(default, f.name):
                continue
            flag = "--" + rename.get(f.name, f.name).replace("_", "-")
            if isinstance(value, bool):
                args.append(flag)
            elif isinstance(value, tuple):
                args.append(f"{flag} {','.join(map(str, value))}")
            else:
                args.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(["python -m metainf_core train", *args, "--keep-history", f"--out {out}"])
