"""What every experiment of the reproduction report shares: the ``Context`` an experiment runs in
(where runs live, the runs it used) and the helpers that build run configurations, table cells,
verdicts and reduction lines from a configuration dict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.reproduce.runs import ensure_run, is_complete, run_key, train_runs
from metainf_core.service import Run

Section = dict[str, Any]


@dataclass
class Context:
    """Where runs live, where to say what is happening, and the runs an experiment used
    (folder -> training seconds recorded in its metadata)."""

    work: Path
    log: Callable[[str], None] = field(default=lambda msg: None)
    device: str = "cpu"  # where runs train and fits compute (cli: reproduce --device)
    used: dict[str, float] = field(default_factory=dict)
    trained: set[str] = field(default_factory=set)

    nets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def networks(self) -> dict[str, dict[str, Any]]:
        """The networks the runs used, per learner; keyed "<learner> <dataset>" (with a "dataset" entry)
        where a learner used different networks on different datasets (the paper scale)."""
        out: dict[str, dict[str, Any]] = {}
        for algo in dict.fromkeys(a for a, _ in self.nets):
            mine = [(d, n) for (a, d), n in self.nets.items() if a == algo]
            if all(n == mine[0][1] for _, n in mine):
                out[algo] = mine[0][1]
            else:
                out.update({f"{algo} {d}": {**n, "dataset": d} for d, n in mine})
        return out

    def run(self, task_cfg: TaskConfig, train_cfg: TrainConfig) -> Run:
        """The trained run for these configurations (``runs.ensure_run``), recorded as used (and as
        trained here when it was not complete before), its network recorded per learner."""
        if not is_complete(Path(self.work) / "runs" / run_key(task_cfg, train_cfg)):
            self.trained.add(run_key(task_cfg, train_cfg))
        run = ensure_run(self.work, task_cfg, train_cfg, self.log, device=self.device)
        self.used[str(run.checkpoint.path)] = float(run.meta.get("train_seconds_this_session", 0.0))
        self.nets.setdefault((train_cfg.algo, task_cfg.dataset), {"arch": train_cfg.arch, "filters": train_cfg.filters,
                                                                   "num_parameters": int(run.meta["num_parameters"])})  # fmt: skip
        return run

    def train_all(self, configs: list[tuple[TaskConfig, TrainConfig]]) -> None:
        """Under torchrun, train the runs an experiment will need N at a time (``runs.train_runs``)
        before it asks for them one by one; nothing in a single process."""
        self.trained.update(train_runs(self.work, configs, self.log, device=self.device))


def _mean_sd(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(values, digits: int = 3) -> str:
    m, s = _mean_sd(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"title": title, "columns": columns, "rows": rows}


def _grade(reproduced: tuple[bool, str], partly: tuple[bool, str], otherwise: str) -> dict[str, str]:
    """The section's verdict: the first of (reproduced, partly) whose condition holds, else "not
    reproduced"; each with its reason (a sentence built from the measured numbers)."""
    for label, (holds, reason) in (("reproduced", reproduced), ("partly", partly)):
        if holds:
            return {"label": label, "reason": reason}
    return {"label": "not reproduced", "reason": otherwise}


def _configs(c: dict[str, Any], *, dataset: str, ways: int, algo: str, seed: int, train_tasks: int,
             noise: int = 0, flips: int = 0, keep_history: bool = False) -> tuple[TaskConfig, TrainConfig]:  # fmt: skip
    task = TaskConfig(dataset=dataset, ways=ways, shots=c["shots"], queries=c["queries"], train_tasks=train_tasks,
                      test_tasks=c["test_tasks"], seed=seed, noise_tasks=noise, label_flip_tasks=flips)  # fmt: skip
    # the network: one for all learners ("arch") or one per learner ("arch_by_algo"), with "filters"
    # for the conv nets (absent: TrainConfig's default, so the report scale's run keys do not change)
    # "filters_by" / "steps_by" (the paper scale): per learner, an int or {dataset: int}
    steps = by(c, "steps", algo, dataset)
    train = TrainConfig(algo=algo, arch=arch_of(c, algo), filters=by(c, "filters", algo, dataset, TrainConfig.filters), steps=steps,
                        meta_batch=c["meta_batch"], lr=c["lr"], inner_lr=c.get("inner_lr", 0.4), inner_steps=c.get("inner_steps", 1), seed=seed,
                        checkpoint_every=c.get("checkpoint_every", steps), keep_history=keep_history)  # fmt: skip
    return task, train


def by(c: dict[str, Any], name: str, algo: str, dataset: str, default: Any = None) -> Any:
    """Setting ``name`` for ``algo`` on ``dataset``: ``c[name + "_by"][algo]`` (an int, or a dict by
    dataset) where given, else ``c[name]`` (else ``default``)."""
    v = c.get(f"{name}_by", {}).get(algo)
    if isinstance(v, dict):
        v = v.get(dataset)
    if v is not None:
        return v
    return c[name] if default is None else c.get(name, default)


def noise_count(c: dict[str, Any], m: int) -> int:
    """Noise tasks among ``m`` training tasks: 1/8 (TLXML 5.1.2), none where ``c["noise"]`` is False
    (the paper's FC60 runs of 5.1.3 and 5.2 have none)."""
    return m // 8 if c.get("noise", True) else 0


def at_paper_scale(c: dict[str, Any]) -> bool:
    return c.get("scale") == "paper"


def arch_of(c: dict[str, Any], algo: str) -> str:
    """The network ``algo`` trains with under configuration ``c``."""
    return c.get("arch_by_algo", {}).get(algo, c.get("arch", "mlp"))


def network_text(c: dict[str, Any], algos: list[str] | None = None) -> str:
    """The learners' networks in words, e.g. "conv3 MAML / conv4 ProtoNet (16 filters)" or
    "~1.4k-parameter FFT-feature MLP"."""
    if "arch_by_algo" not in c:
        return "~1.4k-parameter FFT-feature MLP" if c.get("arch", "mlp") == "mlp" else f"{c['arch']}"
    names = {"maml": "MAML", "protonet": "ProtoNet", "proximal-maml": "proximal MAML"}
    algos = algos or list(c["arch_by_algo"])
    if "filters_by" in c:  # the paper scale: filters per learner (and dataset)
        def filters(a: str) -> str:
            f = c["filters_by"].get(a, c.get("filters", TrainConfig.filters))
            return ", ".join(f"{v} filters on {d}" for d, v in f.items()) if isinstance(f, dict) else f"{f} filters"
        return " / ".join(f"{arch_of(c, a)} {names.get(a, a)} ({filters(a)})" for a in algos)
    return " / ".join(f"{arch_of(c, a)} {names.get(a, a)}" for a in algos) + f" ({c.get('filters', TrainConfig.filters)} filters)"


def _conv(c: dict[str, Any]) -> bool:
    """Whether ``c`` is a conv-net configuration (the medium scale) rather than the small MLPs."""
    return "arch_by_algo" in c


def networks_line(c: dict[str, Any], ctx: Context) -> str:
    """The networks the runs used, with filters and parameter counts (a reduction line)."""
    nets = ", ".join(f"{n['arch']} {a} ({n['filters']} filters, {n['num_parameters']:,} parameters)" for a, n in ctx.networks.items())
    if "paper_networks" in c:
        return f"networks: {nets}; the paper's: {c['paper_networks']}"
    return f"networks: {nets} instead of the paper's 20–28k-parameter CNNs (32 filters)"


def _influence(c: dict[str, Any], method: str | None = None) -> InfluenceConfig:
    return InfluenceConfig(method=method or c["method"], n_orth=c.get("n_orth", 512), dtype=c.get("dtype", "float64"))
