"""The reproduction report (issue 6): run the experiments, save each as JSON, render README.md.

``python -m metainf_core reproduce --out docs/results`` trains what it needs (cached under
``--work``), runs every experiment whose saved section is missing or was made with another
configuration, writes ``data/<key>.json`` atomically after each one (a crash loses at most the
experiment in progress) and renders ``README.md`` and ``figures/*.png`` from all saved sections.

``--scale medium`` runs the experiments that have a medium configuration (conv nets, M ≥ 1,024;
``experiments.MEDIUM_COST`` says what it costs) into ``data/<key>.medium.json``; the README shows
each experiment's medium-scale results under its small-scale ones, and the verdict table gets a
row per scale.

``--scale paper`` holds the TLXML paper's settings for e2, e3, e4 (``experiments.PAPER``: 8,192
tasks, the paper's CNNs and meta-batches) and seed 003's for e6 (``data/<key>.paper.json``,
rendered like the medium ones); it takes weeks on this CPU: ``--estimate`` prints what any scale would cost (``estimate.py``)
without training anything.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from metainf_core.data.base import REPO_ROOT
from metainf_core.exceptions import ConfigError
from metainf_core.influence import distributed
from metainf_core.io import sha256_file, write_atomic, write_json_atomic
from metainf_core.reproduce.dataset_check import collect as collect_dataset_checks
from metainf_core.reproduce.experiments import EXPERIMENTS, Context, run_experiment
from metainf_core.reproduce.report import render_readme, write_figures
from metainf_core.reproduce.rows import collect as collect_rows

__all__ = ["EXPERIMENTS", "SCALES", "environment", "select", "load_sections", "render", "reproduce", "section_path"]

SCALES = ("report", "medium", "paper", "smoke")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        git = ["git", "-C", str(REPO_ROOT)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "metainf_core"], capture_output=True, text=True, timeout=10).stdout.strip()
        return (head + ("+uncommitted changes" if dirty else "")) if head else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """Hardware and software a section was measured on (and the number of torchrun ranks, if several)."""
    ranks = {"ranks": distributed.world_size()} if distributed.active() else {}
    return {"cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "commit": _commit(), "date": _dt.date.today().isoformat(), **ranks}  # fmt: skip


def select(only: Sequence[str] | None) -> list[str]:
    keys = list(EXPERIMENTS)
    if not only:
        return keys
    unknown = [k for k in only if k not in EXPERIMENTS]
    if unknown:
        raise ConfigError(f"unknown experiment(s) {unknown}; choose from {keys}")
    return [k for k in keys if k in only]


def section_path(out: str | Path, key: str, scale: str = "report") -> Path:
    """``data/<key>.json`` (report and smoke scale) or ``data/<key>.<scale>.json`` (medium, paper)."""
    return Path(out) / "data" / (f"{key}.{scale}.json" if scale in ("medium", "paper") else f"{key}.json")


def load_sections(out: str | Path, scale: str = "report") -> list[dict[str, Any]]:
    """Saved sections in report order: ``data/<key>.json`` (``scale`` "report", also what a smoke run
    writes) or ``data/<key>.<scale>.json`` (``scale`` "medium" or "paper")."""
    paths = [section_path(out, k, scale) for k in EXPERIMENTS]
    return [json.loads(p.read_text(encoding="utf-8")) for p in paths if p.is_file()]


def render(out: str | Path, figures: bool = True) -> Path:
    """README.md (and PNG figures unless ``figures`` is False) from the saved sections."""
    out = Path(out)
    sections, medium, paper = load_sections(out), load_sections(out, "medium"), load_sections(out, "paper")
    drawn = {str(p.relative_to(out)) for p in (out / "figures").glob("*.png")} if (out / "figures").is_dir() else set()
    if figures:
        new, why = write_figures([*sections, *medium, *paper], out)
        drawn |= new
        if why is not None:
            print(f"figures: {why}")
    text = render_readme(sections, drawn, medium, paper, collect_rows(out / "paper"), collect_dataset_checks(out))
    write_atomic(out / "README.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return out / "README.md"


def committed_inputs(config: dict[str, Any]) -> dict[str, str]:
    """SHA-256 of each committed result an experiment reads (``config["folder"]``'s result files, e8's
    LDS results and their supplements, ``lds_results.result_files``), so that a result added or changed there makes its saved section stale."""
    from metainf_core.lds_results import result_files

    folder = config.get("folder")
    return {p.relative_to(REPO_ROOT / folder).as_posix(): sha256_file(p) for p in result_files(REPO_ROOT / folder)} if folder else {}


def _saved_for(section: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a saved section was made with this configuration and from these committed inputs."""
    return section.get("config") == config and section.get("inputs", {}) == committed_inputs(config)


def reproduce(
    out: str | Path, *, only: Sequence[str] | None = None, scale: str = "report", work: str | Path | None = None,
    force: bool = False, figures: bool = True, log: Callable[[str], None] = print, device: str = "cpu",
) -> Path:  # fmt: skip
    """Run the selected experiments at ``scale`` ("report", "medium", "paper" or "smoke"), then render the
    report. At medium and paper scale, experiments without a configuration there are skipped (with a log line).

    Under ``torchrun`` every rank runs every experiment, so that each influence fit is sharded across
    the ranks (``influence/distributed.py``); independent runs train N at a time (``runs.train_runs``),
    a history's snapshots and e4's edited models are shared out (``distributed.map_in_rounds``);
    rank 0 alone trains the runs that depend on a fit, logs, and writes the sections and the report."""
    if scale not in SCALES:
        raise ConfigError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    out = Path(out)
    work = Path(work) if work is not None else REPO_ROOT / ".cache" / "metainf" / "reproduce"
    primary = distributed.is_primary()
    log = log if primary else (lambda msg: None)
    ctx = Context(work=work, log=log, device=device)
    todo = []
    for key in select(only):
        config = EXPERIMENTS[key].at(scale)
        path = section_path(out, key, scale)
        if config is None:
            log(f"{key}: no {scale}-scale configuration; skipped")
        elif not force and path.is_file() and _saved_for(json.loads(path.read_text(encoding="utf-8")), config):
            log(f"{key}: up to date ({path})")
        else:
            todo.append((key, config, path))
    distributed.barrier()  # every rank has chosen the same experiments before rank 0 writes any
    for key, config, path in todo:
        log(f"{key}: running")
        env = environment()  # before running: the code that was imported, not later edits
        section = {**run_experiment(key, config, ctx), "scale": scale, "environment": env, "inputs": committed_inputs(config)}
        if primary:
            write_json_atomic(path, section)
        log(f"{key}: {section['verdict']['label']} in {section['seconds']:.0f} s")
    return render(out, figures=figures) if primary else out / "README.md"
