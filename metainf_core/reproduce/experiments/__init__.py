"""The experiments of the reproduction report (issue 6), each a function ``(config, ctx) -> section``.

A section is plain JSON: ``tables`` (title, columns, rows), ``figures`` (series the report draws
with Plotly), ``paper`` (the paper's figure it is compared with), ``reductions`` (every way the
run is smaller than the paper's), and ``verdict`` (reproduced / partly / not, with the reason),
computed from the numbers here, never typed by hand.

Every experiment runs at 2-CPU-core scale: small networks (TLXML's 1,285/1,413-parameter MLP
on 6×6 |FFT| features instead of 20–28k-parameter CNNs), hundreds instead of thousands of
training tasks, hundreds of training steps. Trained runs and influence fits are cached
(``runs.ensure_run``, ``fits.fit_influence``), so a second run of the report is fast.

The medium scale (``MEDIUM``, issue 14) reruns e2, e3, e4 and e6 with conv3 MAML / conv4 ProtoNet
(16 filters) on M = 1,024 tasks, one seed, in about an hour on 2 cores (``MEDIUM_COST``); its
sections go to ``data/<key>.medium.json`` and its verdicts come from the same code.

The package: ``common`` (``Context`` and the helpers every experiment shares), one module per
experiment (``e1_distinction`` … ``e7_exact_vs_gn``; e8 is ``reproduce.lds_report``), ``scales`` (the
configurations at each scale), and here the registry ``EXPERIMENTS`` and ``run_experiment``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metainf_core.reproduce.experiments.common import (
    Context,
    Section,
    _configs,
    arch_of,
    at_paper_scale,
    by,
    network_text,
    networks_line,
    noise_count,
)
from metainf_core.reproduce.experiments.e1_distinction import darkened, distinction_of_tasks
from metainf_core.reproduce.experiments.e2_noise import _validation, noise_tasks
from metainf_core.reproduce.experiments.e3_superclass import superclass_consistency
from metainf_core.reproduce.experiments.e4_one_step import one_step_update
from metainf_core.reproduce.experiments.e5_removal import removal_and_harmful_tasks
from metainf_core.reproduce.experiments.e6_landscapes import landscapes
from metainf_core.reproduce.experiments.e7_exact_vs_gn import exact_vs_gn
from metainf_core.reproduce.experiments.scales import (
    LANDSCAPE_PAPER_PARAMETERS,
    MEDIUM,
    MEDIUM_COST,
    PAPER,
    PAPER_PARAMETERS,
    REPORT,
    SMOKE,
)
from metainf_core.reproduce.lds_report import lds_report

__all__ = [  # the registry, the experiments, and the names other modules and the tests import from here
    "EXPERIMENTS", "LANDSCAPE_PAPER_PARAMETERS", "MEDIUM", "MEDIUM_COST", "PAPER", "PAPER_PARAMETERS", "REPORT", "SMOKE",
    "Context", "Experiment", "Section", "_configs", "_validation", "arch_of", "at_paper_scale", "by", "darkened",
    "distinction_of_tasks", "exact_vs_gn", "landscapes", "lds_report", "network_text", "networks_line", "noise_count",
    "noise_tasks", "one_step_update", "removal_and_harmful_tasks", "run_experiment", "superclass_consistency",
]  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    key: str
    function: Callable[[dict[str, Any], Context], Section]
    config: dict[str, Any]  # the report's scale
    smoke: dict[str, Any]  # a minutes-long version for tests
    medium: dict[str, Any] | None = None  # conv nets, M ≥ 1,024, about an hour for all of them (None: not run at that scale)
    paper: dict[str, Any] | None = None  # the TLXML paper's settings (PAPER; days on this CPU, see estimate.py)

    def at(self, scale: str) -> dict[str, Any] | None:
        """The configuration at ``scale`` ("report", "medium", "paper" or "smoke"); None when it has none."""
        return {"report": self.config, "medium": self.medium, "paper": self.paper, "smoke": self.smoke}[scale]


# one function per experiment (e8 in ``lds_report``), with its configuration at each scale (``scales``)
EXPERIMENTS: dict[str, Experiment] = {key: Experiment(key, function, REPORT[key], SMOKE[key], MEDIUM.get(key), PAPER.get(key)) for key, function in [
    ("e1-distinction", distinction_of_tasks),
    ("e2-noise", noise_tasks),
    ("e3-superclass", superclass_consistency),
    ("e4-one-step", one_step_update),
    ("e5-removal", removal_and_harmful_tasks),
    ("e6-landscapes", landscapes),
    ("e7-exact-vs-gn", exact_vs_gn),
    ("e8-lds", lds_report),
]}  # fmt: skip


def run_experiment(key: str, config: dict[str, Any], ctx: Context) -> Section:
    """One experiment with its configuration, timing, key and the runs it used and had to train
    (the others came from the work directory) recorded in the section."""
    started = time.time()
    inner = Context(ctx.work, ctx.log, device=ctx.device)
    section = EXPERIMENTS[key].function(config, inner)
    return {"key": key, "config": config, **section, "seconds": round(time.time() - started, 1), "runs_trained": len(inner.trained),
            "runs_used": len(inner.used), "train_seconds": round(sum(inner.used.values()), 1), "networks": inner.networks}  # fmt: skip
