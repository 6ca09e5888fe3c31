"""The TLXML paper's noise-task rows at the paper's own settings (TLXML B.3, Tables 9 and 11; issue 23).

One row is one (learner, dataset, M / noise) line of Table 9 or 11; one run of it is one training seed.
``run_row`` trains the run into ``<root>/<row>/seed<k>/`` (a run folder: weights, Adam state,
tasksets, meta; resumed after a kill or in a later session, committed with the repository),
fits TLXML with the paper's Gauss-Newton settings (N_orth = 8,192, N_max = 2·N_orth), chooses the
truncation by the best mean self-rank over all training tasks among 64, 128, …, 8,192 (the smallest
on ties), counts the proper tests of Eq. 7/9 on 128 test tasks and writes ``row.json`` beside it.

The verdict rule is fixed here, before any number came in (``row_verdict``).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from metainf_core.checkpoint import TRAIN_STATE_FILE
from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig
from metainf_core.data.base import REPO_ROOT
from metainf_core.exceptions import ConfigError
from metainf_core.io import write_json_atomic

if TYPE_CHECKING:
    from metainf_core.influence.fit import FitProgress

Log = Callable[[str], None]

ROOT = REPO_ROOT / "docs" / "results" / "paper"  # committed run folders, one per row and seed
RESULT_FILE = "row.json"
BATCH_NORM_FILE = "batch_norm.json"  # scripts/paper_row_batch_norm.py: training accuracy with running batch-norm statistics
# TLXML 5.1: "We train the meta-parameters with Adam, employing a meta-batch size of 32."; B.3: seeds
# 0, 1, 2, 3, 42, 128 test tasks, N_orth = 8,192, N_max = 2 × 8,192, truncation by self-rank.
PAPER_SEEDS = (0, 1, 2, 3, 42)
CHECKPOINT_EVERY = 100  # meta-batches: ≤ 10 minutes at this CPU's slowest measured step (MAML conv3×32, 3.1 s)
N_ORTH = 8192
TEST_TASKS = 128


@dataclass(frozen=True)
class PaperRow:
    """One line of TLXML Table 9 (MAML, Omniglot) or 11 (ProtoNet, Omniglot): settings and figures (mean, sd over 5 seeds)."""

    key: str
    table: str
    algo: str
    arch: str
    filters: int
    train_tasks: int
    noise_tasks: int
    steps: int
    paper_parameters: int
    accuracy: tuple[float, float]
    train_accuracy: tuple[float, float]
    proper: tuple[float, float]
    z: tuple[float, float]
    dataset: str = "omniglot"
    ways: int = 5
    shots: int = 5
    queries: int = 5  # the paper's Q = 5 × 5 (5 per class)


def _protonet(m: int, acc: tuple, train: tuple, proper: tuple, z: tuple) -> PaperRow:
    return PaperRow(f"om-protonet-{m}", "Table 11", "protonet", "conv4", 32, m, m // 8, 10_000, 28_320, acc, train, proper, z)


def _maml(m: int, acc: tuple, train: tuple, proper: tuple, z: tuple) -> PaperRow:
    return PaperRow(f"om-maml-{m}", "Table 9", "maml", "conv3", 32, m, m // 8, 40_000, 19_178, acc, train, proper, z)


ROWS: dict[str, PaperRow] = {r.key: r for r in [
    _protonet(128, (0.937, 0.007), (1.000, 0.000), (77.4, 4.7), (2.4, 0.8)),
    _protonet(256, (0.958, 0.003), (1.000, 0.000), (61.0, 3.4), (-0.5, 0.6)),
    _protonet(512, (0.963, 0.004), (0.986, 0.004), (112.6, 3.9), (8.6, 0.7)),
    _protonet(1024, (0.973, 0.002), (0.928, 0.002), (84.0, 4.1), (3.5, 0.7)),
    _maml(512, (0.824, 0.010), (0.984, 0.032), (118.4, 4.4), (9.6, 0.8)),
    _maml(1024, (0.882, 0.032), (0.999, 0.003), (114.8, 7.2), (9.0, 1.3)),
]}  # fmt: skip
# The order issue 23 asks for: 512 / 64 seed 0, 1,024 / 128 seed 0, 512 / 64 seeds 1 and 2, MAML 512 / 64 seed 0.
SCHEDULE: tuple[tuple[str, int], ...] = (
    ("om-protonet-512", 0), ("om-protonet-1024", 0), ("om-protonet-512", 1), ("om-protonet-512", 2), ("om-maml-512", 0),
    ("om-protonet-1024", 1), ("om-protonet-512", 3), ("om-protonet-512", 42),
)  # fmt: skip


def differences(row: PaperRow) -> list[str]:
    """Where a run of ``row`` differs from the paper's text, or fills in what it leaves unsaid."""
    out = [
        "Adam learning rate 0.001 (not stated; learn2learn's ProtoNet example)",
        "5 query images per class (the paper's Q = 5 × 5 for Omniglot)",
        "Omniglot 28×28, 5-way 5-shot; training and test characters split within each alphabet (2/3 train), "
        "not the paper's background / evaluation alphabets (not stated for these tables)",
        "batch norm on each set's own statistics (transductive), no running statistics",
    ]
    if row.algo == "maml":
        out.insert(0, "conv3×32 + linear head: 20,453 parameters on 28×28 inputs, the paper's 19,178 (its final map or "
                      "input size is not stated); MAML second order, one inner step of α = 0.4 (α not stated)")  # fmt: skip
    return out


def row_configs(row: PaperRow, seed: int) -> tuple[TaskConfig, TrainConfig]:
    """The task and training configuration of one run of ``row`` (TLXML 5.1, B.3)."""
    task = TaskConfig(dataset=row.dataset, ways=row.ways, shots=row.shots, queries=row.queries, train_tasks=row.train_tasks,
                      test_tasks=TEST_TASKS, seed=seed, noise_tasks=row.noise_tasks)  # fmt: skip
    train = TrainConfig(algo=row.algo, arch=row.arch, filters=row.filters, steps=row.steps, meta_batch=32, lr=1e-3,
                        inner_lr=0.4, inner_steps=1, seed=seed, checkpoint_every=CHECKPOINT_EVERY)  # fmt: skip
    return task, train


def influence_config(row: PaperRow) -> InfluenceConfig:
    """TLXML B.3: Gauss-Newton, N_orth = 8,192, truncation by the mean self-rank over every training task."""
    return InfluenceConfig(method="gn", n_orth=N_ORTH, truncation=0, self_rank_sample=row.train_tasks)


def run_dir(row: PaperRow, seed: int, root: str | Path = ROOT) -> Path:
    return Path(root) / row.key / f"seed{seed}"


def get_row(key: str) -> PaperRow:
    if key not in ROWS:
        raise ConfigError(f"unknown row {key!r}; choose from {', '.join(ROWS)}")
    return ROWS[key]


def train_row(row: PaperRow, seed: int, root: str | Path = ROOT, *, device: str = "cpu", steps: int | None = None,
              progress: bool = True) -> Path:  # fmt: skip
    """Train (or resume) one run of ``row``; ``steps`` stops earlier than the paper's count (a
    session's share: the run resumes from there next time)."""
    from metainf_core.train import train

    task, train_cfg = row_configs(row, seed)
    directory = run_dir(row, seed, root)
    resume = (directory / TRAIN_STATE_FILE).is_file()
    if steps is not None:
        train_cfg = replace(train_cfg, steps=min(steps, row.steps))
    return train(task, train_cfg, directory, resume=resume, device=device, progress=progress)


def run_status(row: PaperRow, seed: int, root: str | Path = ROOT) -> dict[str, Any]:
    """How far a run is: steps done of the paper's, whether its result is in."""
    directory = run_dir(row, seed, root)
    meta_path, result = directory / "meta.json", directory / RESULT_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    step = meta.get("step", 0)
    status = {"row": row.key, "seed": seed, "steps_done": step, "steps": row.steps, "result": result.is_file()}
    if step >= row.steps and "test" in meta:  # training finished: its test accuracy is known before the fit
        status["test_accuracy"] = meta["test"]["accuracy"]
    return status


def evaluate_row(row: PaperRow, seed: int, root: str | Path = ROOT, *, device: str = "cpu", log: Log = print,
                 cfg: InfluenceConfig | None = None, progress: FitProgress | None = None) -> dict[str, Any]:  # fmt: skip
    """Fit, truncation by self-rank, proper tests (Eq. 7/9) for a finished run; writes ``row.json``.
    ``progress(stage, done, total)`` follows the fit (hours at the paper's N_orth)."""
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from metainf_core.validate import validation_report

    directory = run_dir(row, seed, root)
    run = open_run(directory, device=device)
    if run.meta.get("step", 0) < row.steps:
        raise ConfigError(f"{directory}: trained {run.meta.get('step', 0):,} of {row.steps:,} meta-batches; finish training first")
    cfg = cfg or influence_config(row)
    started = time.time()
    log(f"{row.key} seed {seed}: fitting TLXML (Gauss-Newton, N_orth = {cfg.n_orth:,})")
    inf = fit_influence(run, cfg, progress=progress)
    report = validation_report(run, inf, cfg, self_rank=True, noise=True, superclass=False, max_tests=TEST_TASKS, exact_agreement=False)
    normal = np.ones(len(run.train_tasks), dtype=bool)
    normal[run.train_tasks.ids_with("noise")] = False
    train_acc = run.evaluate(split="train").accuracy
    k_table = {r["k"]: r["mean_self_rank"] for r in report["self_rank"]}
    result = {
        "row": row.key, "seed": seed, "table": row.table,
        "parameters": run.meta["num_parameters"], "paper_parameters": row.paper_parameters,
        "test_accuracy": run.meta["test"]["accuracy"], "test_accuracy_ci95": run.meta["test"]["accuracy_ci95"],
        "train_accuracy": float(np.mean(train_acc)), "train_accuracy_normal": float(np.mean(np.asarray(train_acc)[normal])),
        "truncation": int(inf.truncation), "mean_self_rank": float(k_table.get(inf.truncation, float("nan"))),
        "self_rank_table": report["self_rank"], "noise": report["noise"],
        "influence": cfg.to_dict(), "differences": differences(row), "fit_seconds": round(time.time() - started, 1),
    }  # fmt: skip
    write_json_atomic(directory / RESULT_FILE, result)
    n = report["noise"]
    log(f"{row.key} seed {seed}: accuracy {result['test_accuracy']:.3f}, k = {result['truncation']}, "
        f"proper {n['proper']} / {n['total']} (z = {n['z']:+.1f}); paper {row.proper[0]} ± {row.proper[1]} ({row.z[0]:+.1f}σ)")
    return result


def run_rows(rows: Sequence[str | PaperRow], seeds: Sequence[int], root: str | Path = ROOT, *, device: str = "cpu",
             steps: int | None = None, log: Log = print, progress: FitProgress | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Train each (row, seed) run up to meta-batch ``steps`` (all of the paper's by default) and
    evaluate the finished ones; returns their results (``row.json``). Rows by key or as ``PaperRow``."""
    results = []
    for key in rows:
        row = get_row(key) if isinstance(key, str) else key
        for seed in seeds:
            directory = run_dir(row, seed, root)
            log(f"{row.key} seed {seed}: {'resuming' if (directory / TRAIN_STATE_FILE).is_file() else 'training'} in {directory}")
            train_row(row, seed, root, device=device, steps=steps)
            status = run_status(row, seed, root)
            if status["steps_done"] < row.steps:
                log(f"{row.key} seed {seed}: {status['steps_done']:,} of {row.steps:,} meta-batches; resume to finish")
                continue
            result_path = directory / RESULT_FILE
            results.append(json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file()
                           else evaluate_row(row, seed, root, device=device, log=log, progress=progress))  # fmt: skip
    return results


def run_schedule(root: str | Path = ROOT, *, device: str = "cpu", steps: int | None = None, log: Log = print,
                 progress: FitProgress | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Work down ``SCHEDULE`` (issue 23's order): each run without a result is trained (or resumed)
    and evaluated before the next starts; finished runs are skipped (a GPU lease's script)."""
    results = []
    for key, seed in SCHEDULE:
        if (run_dir(ROWS[key], seed, root) / RESULT_FILE).is_file():
            continue
        done = run_rows([key], [seed], root, device=device, steps=steps, log=log, progress=progress)
        if not done:  # stopped at ``steps``: the later runs wait their turn
            break
        results += done
    return results


# ---- the verdict, fixed before the numbers (issue 23 item 4) ------------------------------------
def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def row_verdict(row: PaperRow, results: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Reproduced when our mean count of proper tests lies within the paper's mean ± 2 × its sd over
    seeds, or — where the paper's z exceeds 2 — ours does too (the property holds significantly);
    partly when the count is on the paper's side of random (z > 0) but not significant; not
    reproduced otherwise. Fewer than 2 seeds: "preliminary" with the same words."""
    if not results:
        return {"label": "pending", "reason": "no finished run yet"}
    count, _ = _mean_sd([r["noise"]["proper"] for r in results])
    z, _ = _mean_sd([r["noise"]["z"] for r in results])
    lo, hi = row.proper[0] - 2 * row.proper[1], row.proper[0] + 2 * row.proper[1]
    within = lo <= count <= hi
    if within or (row.z[0] > 2 and z > 2):
        label, reason = "reproduced", (f"mean {count:.1f} proper tests lies within the paper's {row.proper[0]} ± 2×{row.proper[1]}" if within
                                       else f"mean z = {z:+.1f} is significant as the paper's {row.z[0]:+.1f}σ (count {count:.1f} outside "
                                            f"{lo:.1f}–{hi:.1f})")  # fmt: skip
    elif z > 0:
        label, reason = "partly", f"mean z = {z:+.1f}: normal tasks above noise tasks in more tests than chance, not significantly (paper {row.z[0]:+.1f}σ)"
    else:
        label, reason = "not reproduced", f"mean z = {z:+.1f} against the paper's {row.z[0]:+.1f}σ"
    if len(results) < 2:
        return {"label": f"preliminary: {label}", "reason": f"{reason}; one seed (issue 23 asks for ≥ 2)"}
    return {"label": label, "reason": reason}


def run_seeds(row: PaperRow, root: str | Path = ROOT) -> list[int]:
    """The seeds of ``row`` with a run folder under ``root``, ascending."""
    folder = Path(root) / row.key
    return sorted(int(p.name[4:]) for p in folder.glob("seed*") if p.name[4:].isdigit()) if folder.is_dir() else []


def collect(root: str | Path = ROOT, rows: Sequence[PaperRow] | None = None) -> list[dict[str, Any]]:
    """One summary per row (of ``ROWS`` by default) with any run folder: progress of each seed, the
    finished results beside the paper's figures, and the verdict (what the report and the dashboard show)."""
    root = Path(root)
    out = []
    for row in rows if rows is not None else ROWS.values():
        seeds = run_seeds(row, root)
        if not seeds:
            continue
        status = [run_status(row, s, root) for s in seeds]
        results = [json.loads((run_dir(row, s, root) / RESULT_FILE).read_text(encoding="utf-8")) for s in seeds
                   if (run_dir(row, s, root) / RESULT_FILE).is_file()]  # fmt: skip
        verdict = row_verdict(row, results)
        if not results and any("test_accuracy" in st for st in status):
            verdict = {"label": "pending", "reason": "training finished; its influence fit and proper tests are not done yet"}
        checks = [json.loads((run_dir(row, s, root) / BATCH_NORM_FILE).read_text(encoding="utf-8")) for s in seeds
                  if (run_dir(row, s, root) / BATCH_NORM_FILE).is_file()]  # fmt: skip
        out.append({"row": asdict(row), "status": status, "results": results, "verdict": verdict, "batch_norm": checks})
    return out


# ---- the committed runs, as the dashboard lists them (issue 23 item 9) ---------------------------
LEARNER_NAMES = {"protonet": "ProtoNet", "maml": "MAML"}  # the learners of Tables 9 and 11


@dataclass(frozen=True)
class CommittedRun:
    """A run folder of a paper row under ``ROOT`` (finished or not), described from the folder itself."""

    path: Path
    row: str
    seed: int
    steps_done: int  # meta-batches behind the folder's weights (meta.json, written with the train state)
    steps: int  # the paper's meta-batches for this row
    fitted: bool  # an influence fit ships inside the folder (fits.SHIPPED_DIR): pages answer at once
    result: bool  # row.json: the paper's fit and proper tests are done (``evaluate_row``)
    description: str  # one plain sentence: what the run is and how far it got

    @property
    def partial(self) -> bool:
        return self.steps_done < self.steps


def committed_runs(root: str | Path = ROOT) -> list[CommittedRun]:
    """Every run folder of a row of ``ROWS`` under ``root`` that holds a checkpoint (rows in table
    order, seeds ascending): the paper's own setting (TLXML 5.1, B.3), for the dashboard to open."""
    from metainf_core.checkpoint import META_FILE
    from metainf_core.fits import SHIPPED_DIR
    from metainf_core.words import corrupted_among

    out = []
    for row in ROWS.values():
        for seed in run_seeds(row, root):
            directory = run_dir(row, seed, root)
            if not (directory / META_FILE).is_file():
                continue
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            tc, status = meta["task_config"], run_status(row, seed, root)
            done, fitted = status["steps_done"], any((directory / SHIPPED_DIR).glob("*.safetensors"))
            learner = LEARNER_NAMES.get(meta["algorithm"], meta["algorithm"])
            corrupted = corrupted_among({"noise": tc.get("noise_tasks", 0), "label_flip": tc.get("label_flip_tasks", 0)})  # fmt: skip
            progress = (f"trained {done:,} of {row.steps:,} meta-batches so far (partial)" if done < row.steps
                        else f"fully trained ({row.steps:,} meta-batches)")  # fmt: skip
            fit = "its influence fit ships with it" if fitted else "no influence fit ships with it"
            if status["result"]:  # evaluated: what its noise test found, beside the paper's
                n = json.loads((directory / RESULT_FILE).read_text(encoding="utf-8"))["noise"]
                progress += (f"; in {n['proper']} of its {n['total']} test tasks the pure-noise training tasks scored below the "
                             f"normal ones on average (the paper: {row.proper[0]:g})")  # fmt: skip
            description = (f"The paper's own setting (TLXML {row.table}): {learner} on {meta['dataset']['name'].capitalize()}, "
                           f"{tc['train_tasks']:,} training tasks{corrupted}, seed {tc['seed']} — {progress}; {fit}.")  # fmt: skip
            out.append(CommittedRun(directory, row.key, seed, done, row.steps, fitted, status["result"], description))
    return out


def row_fit_seconds(row: PaperRow, n_orths: Sequence[int], *, probe: Callable[..., Any] | None = None,
                linalg: Any = None) -> dict[int, float]:  # fmt: skip
    """Predicted seconds (one thread, this machine) of a Gauss-Newton fit over a run of ``row``'s
    training tasks for each N_orth: ``estimate.py``'s timing probe (seconds) and cost model."""
    from metainf_core.reproduce import estimate

    costs = (probe or estimate.probe_network)(estimate.Net.of(*row_configs(row, 0)))
    la = linalg or estimate.probe_linalg()
    return {n: estimate.fit_seconds(costs, row.train_tasks, n, la) for n in n_orths}


def fit_command(directory: str | Path, cfg: InfluenceConfig) -> str:
    """The command line that fits ``cfg`` for the run in ``directory`` (``python -m metainf_core fit``,
    resumable; the options ``cli`` makes from InfluenceConfig's settings, those at their default left
    out), the folder relative to the repository when inside it: what a page tells instead of
    starting an hours-long fit on a click."""
    from dataclasses import fields

    from metainf_core.cli import config_options, option_name
    from metainf_core.config import default_dtype

    options = config_options(InfluenceConfig)
    unsaid = [f.name for f in fields(InfluenceConfig) if f not in options and getattr(cfg, f.name) != f.default]
    if unsaid:
        raise ConfigError(f"the fit command has no option for {', '.join(unsaid)}")
    path = Path(directory).resolve()
    where = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)
    words = ["python", "-m", "metainf_core", "fit", where]
    for f in options:
        value, default = getattr(cfg, f.name), default_dtype(cfg.method) if f.name == "dtype" else f.default
        if value != default:  # a bool setting is a switch (store_true)
            words += [option_name(f)] if isinstance(value, bool) else [option_name(f), ",".join(value) if isinstance(value, tuple) else str(value)]  # fmt: skip
    return shlex.join(words)
