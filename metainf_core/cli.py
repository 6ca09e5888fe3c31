"""``python -m metainf_core COMMAND``: JSON on stdout, a one-line reason on stderr on failure."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import Field, fields
from typing import Any, get_args, get_type_hints

from metainf_core.config import (
    DATASET_ARCHITECTURES,
    METHOD_ALIASES,
    Architecture,
    CompareConfig,
    DiagnosticsConfig,
    FidelityConfig,
    InfluenceConfig,
    LDSConfig,
    TaskConfig,
    TrainConfig,
    default_arch,
    default_dtype,
)
from metainf_core.exceptions import ConfigError, MetainfError


def _train(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.checkpoint import read_meta
    from metainf_core.train import train

    task_cfg = _config_from(a, TaskConfig)
    train_cfg = _config_from(a, TrainConfig, arch=a.arch or default_arch(a.dataset))
    out = train(task_cfg, train_cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet)
    meta = read_meta(out)
    return {"out": str(out), "step": meta["step"], "test": meta["test"], "num_parameters": meta["num_parameters"]}


def _import(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.checkpoint import read_meta
    from metainf_core.importing import import_run, read_tasks_file, tasks_dataset

    tasks = read_tasks_file(a.tasks)
    out = import_run(
        a.model, a.out, algo=a.algo, dataset=tasks_dataset(tasks, a.dataset), train_tasks=tasks["train_tasks"], test_tasks=tasks.get("test_tasks"),
        weights=a.weights, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order,
        protonet_embedding=a.protonet_embedding, num_test_tasks=a.test_tasks, seed=a.task_seed, filters=a.filters,
    )  # fmt: skip
    meta = read_meta(out)
    return {
        "out": str(out), "num_parameters": meta["num_parameters"], "train_tasks": meta["task_config"]["train_tasks"],
        "test_tasks": meta["task_config"]["test_tasks"], "test": meta["test"], "imported": meta["imported"],
    }  # fmt: skip


def _info(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(a.path)  # verifies hashes and shapes, loads tensors safely
    meta = dict(ckpt.meta)
    if not a.full:
        meta["curve"] = f"{len(meta.get('curve', []))} points (--full to print)"
    return meta


def _evaluate(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.service import open_run

    run = open_run(a.path, device=a.device)
    splits = [a.split] if a.split else ["test", *(["train"] if a.train else [])]
    result: dict[str, Any] = {}
    for split in splits:
        ts = run.test_tasks if split == "test" else run.train_tasks
        ids = None
        if a.tasks:
            try:
                ids = [ts.check_id(int(x)) for x in a.tasks.split(",")]
            except ValueError:
                raise ConfigError(f"--tasks {a.tasks!r}: expected comma-separated task ids") from None
        metrics = run.evaluate(split=split, task_ids=ids)
        result[split] = metrics.summary()
        if a.per_task:  # each task's query loss/accuracy after adaptation: compare with another library's numbers
            result[split]["tasks"] = [{"id": int(i), "loss": float(lo), "accuracy": float(ac)}
                                      for i, lo, ac in zip(metrics.task_ids, metrics.loss, metrics.accuracy, strict=True)]
    return result


def _influence_config(a: argparse.Namespace) -> InfluenceConfig:
    """The InfluenceConfig of an influence subcommand's options; --dtype left out follows config.default_dtype."""
    return _config_from(a, InfluenceConfig, dtype=a.dtype or default_dtype(a.method))


@contextmanager
def _stage_bars(quiet: bool, unit: str) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(stage, done, total)`` that shows one tqdm bar on stderr per stage (the previous
    stage's bar closed when the next starts); None when ``quiet``. Every bar is closed on exit."""
    if quiet:
        yield None
        return
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        for name in [n for n in bars if n != stage]:
            bars.pop(name).close()
        if stage not in bars:
            bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr)
        bars[stage].n = done
        bars[stage].refresh()

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()


def _fitted(a: argparse.Namespace):
    """The run and its TLXML fit (from the cache, or fitted now with a progress bar on stderr)."""
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run

    run = open_run(a.path, device=a.device)
    cfg = _influence_config(a)
    with _stage_bars(getattr(a, "quiet", False), "task") as progress:
        inf = fit_influence(run, cfg, progress=progress)
    return run, cfg, inf


def _fit(a: argparse.Namespace) -> dict[str, Any] | None:
    from metainf_core.fits import cache_entry, ship_fit

    from metainf_core.influence import distributed

    run, cfg, inf = _fitted(a)
    if not distributed.is_primary():  # torchrun: rank 0 alone reads the entry back, ships and prints
        return None
    _, info = cache_entry(run, cfg).load()
    shipped = {"shipped": str(ship_fit(run, cfg, inf))} if a.ship else {}  # rank 0 alone: no second fit_influence
    return {**shipped, 
        "method": cfg.method, "num_tasks": inf.num_tasks, "num_parameters": int(inf.num_params),
        "columns": inf.num_columns, "truncation": inf.truncation, "num_negative_eigenvalues": inf.num_negative,
        "self_rank_table": [{"k": k, "mean_self_rank": r} for k, r in inf.self_ranks],
        "fit_seconds": info.get("fit_seconds"), "cache": str(cache_entry(run, cfg).directory),
        "world_size": info.get("world_size", 1), "tasks_per_rank": info.get("tasks_per_rank", [inf.num_tasks]),
    }  # fmt: skip


# rank --method: the TLXML spellings of fit/edit/validate, and compare's registry names
_TLXML_ALIASES = {name: m.value for name, m in METHOD_ALIASES.items()}  # config.py's one TLXML vocabulary


def _rank_other(a: argparse.Namespace) -> dict[str, Any]:
    """rank --method task-if | direct-if | grad-sim: a compare.py registry method (no TLXML truncation)."""
    from metainf_core.compare import SIGN, CompareConfig, get_method
    from metainf_core.ranking import Target, group_scores, ranking_table, task_rows
    from metainf_core.service import open_run

    method = get_method(a.method)  # ConfigError (exit 2, one line) for an unknown name
    run = open_run(a.path, device=a.device)
    target = Target.parse(a.test_task, run)
    scores, details = method.scores(run, target, CompareConfig(damping=a.damping))
    order, ranks = ranking_table(scores)
    worst = order[::-1][: a.top]
    out: dict[str, Any] = {
        "target": {"split": target.split, "ids": list(target.ids)}, "method": a.method, "sign": SIGN, "details": details,
        "most_helpful": task_rows(run, order[: a.top], scores[order[: a.top]], ranks[order[: a.top]]),
        "most_harmful": task_rows(run, worst, scores[worst], ranks[worst]),
    }  # fmt: skip
    if a.group:
        out["groups"] = group_scores(run, scores, a.group)
    return out


def _rank(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.ranking import Target, all_scores, group_scores, ranking_table, task_rows

    if a.method not in _TLXML_ALIASES:
        return _rank_other(a)
    a.method = _TLXML_ALIASES[a.method]
    run, cfg, inf = _fitted(a)
    target = Target.parse(a.test_task, run)
    scores = all_scores(run, inf, target, cfg.dtype)
    order, ranks = ranking_table(scores)
    top = order[: a.top]
    out: dict[str, Any] = {
        "target": {"split": target.split, "ids": list(target.ids)},
        "sign": "helpfulness = -I_perf: positive means up-weighting the training task lowers the target's loss",
        "truncation": inf.truncation,
        "most_helpful": task_rows(run, top, scores[top], ranks[top]),
        "most_harmful": task_rows(run, order[::-1][: a.top], scores[order[::-1][: a.top]], ranks[order[::-1][: a.top]]),
    }
    if a.group:
        out["groups"] = group_scores(run, scores, a.group)
    return out


def _compare(a: argparse.Namespace) -> dict[str, Any]:
    """Scores of several influence methods for one target and every pair's agreement (compare.py)."""
    from metainf_core.compare import compare_methods, parse_methods
    from metainf_core.ranking import Target
    from metainf_core.lds_results import lds_summary
    from metainf_core.service import open_run

    names = parse_methods(a.methods)  # before loading anything: unknown names fail fast
    if (a.test_task is None) == (not a.tables):
        raise ConfigError("give --test-task (one target) or --tables (every test task), not both")
    if a.ship and not a.tables:
        raise ConfigError("--ship stores test tables: give --tables")
    run = open_run(a.path, device=a.device)
    config = _config_from(a, CompareConfig)
    if a.tables:
        return _compare_tables(a, run, names if a.methods else None, config)
    target = Target.parse(a.test_task, run)
    out = compare_methods(run, target, names, k=a.top, config=config, include_scores=a.scores)
    return {**out, "lds": lds_summary(run)}  # the method with the best committed LDS on runs trained like this one


def _compare_tables(a: argparse.Namespace, run, names: list[str] | None, config: CompareConfig) -> dict[str, Any]:  # noqa: ANN001 - a Run
    """Every test task's scores by each method (``compare.test_score_table``), cached, and with
    --ship stored in the run folder: what the demos ship so their Compare page answers at once."""
    from tqdm import tqdm

    from metainf_core.compare import METHODS, test_score_table, test_table_entry

    if names is None:  # every method that applies; a named one that does not is an error below
        names = [n for n, m in METHODS.items() if not m.skip_reason(run, config)]
    out: dict[str, Any] = {"config": config.to_dict(), "tables": {}}
    for n in names:
        with tqdm(desc=n, unit="test task", disable=a.quiet, file=sys.stderr) as bar:

            def progress(done: int, total: int, bar=bar) -> None:  # noqa: ANN001
                bar.total, bar.n = total, done
                bar.refresh()

            table = test_score_table(run, n, config, progress)
        entry = test_table_entry(run, n, config)
        out["tables"][n] = {"shape": list(table.shape), "cache": str(entry.directory),
                            **({"shipped": str(entry.ship(run.checkpoint.path))} if a.ship else {})}  # fmt: skip
    return out


def _parse_ids(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"task ids must be comma-separated integers, got {text!r}") from None


def _edit(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.edit import EditSpec, edit_report, edited_params, save_edited_checkpoint
    from metainf_core.leave_out import leave_out_retrain

    spec = EditSpec(_parse_ids(a.block), a.xi_block, _parse_ids(a.enhance), a.xi_enhance)
    run, cfg, inf = _fitted(a)
    params = edited_params(run, inf, spec)
    report = edit_report(run, params, a.test_task)
    report["edit"] = {"block": list(spec.block), "xi_block": spec.xi_block, "enhance": list(spec.enhance), "xi_enhance": spec.xi_enhance}
    if a.out:
        report["out"] = str(save_edited_checkpoint(run, params, a.out, {**report["edit"], "test": report["taskset"]["after"]}))
    if a.leave_out:
        if not spec.block:
            raise ConfigError("--leave-out retrains without the blocked tasks: give --block")
        report["leave_out"] = leave_out_retrain(run, spec.block, a.leave_out, a.leave_out_steps)
    return report


def _validate(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.validate import validation_report

    run, cfg, inf = _fitted(a)
    return validation_report(run, inf, cfg, self_rank=a.self_rank, noise=a.noise, superclass=a.superclass, max_tests=a.max_tests)


def _diagnose(a: argparse.Namespace) -> dict[str, Any] | None:
    """Landscape diagnostics (seed 003) over the run's training snapshots, with their test accuracy;
    under torchrun the snapshots are shared out over the ranks and rank 0 ships and prints."""
    from tqdm import tqdm

    from metainf_core.diagnostics import cached_diagnostics_over_history, diagnostics_cache_entry, history_snapshots
    from metainf_core.influence import distributed
    from metainf_core.service import open_run

    cfg = _config_from(a, DiagnosticsConfig)
    snapshots = history_snapshots(a.path)  # a clear error before any progress bar
    run = open_run(a.path, device=a.device)
    if a.coherence_tasks:  # seed 003's coherence alone on many tasks, with its ρ by phase of training
        from metainf_core.diagnostics import coherence_over_history
        from metainf_core.landscape_metrics import coherence_phase_table

        rows = coherence_over_history(run, snapshots, a.coherence_tasks, steps=cfg.steps, step_size=cfg.step_size)
        if not distributed.is_primary():
            return None
        phases = coherence_phase_table(rows)
        return {"rows": rows, "spearman_with_accuracy_by_phase": {q: {k: {"rho": r, "snapshots": n} for k, (r, n) in ph.items()}
                                                                  for q, ph in phases.items()}}  # fmt: skip
    bar = tqdm(desc="diagnose", unit="snapshot", disable=a.quiet or not distributed.is_primary(), file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    rows = cached_diagnostics_over_history(run, cfg, progress)  # saved snapshot by snapshot: a killed run resumes
    bar.close()
    if not distributed.is_primary():
        return None
    shipped = {"shipped": str(diagnostics_cache_entry(run, cfg).ship(run.checkpoint.path))} if a.ship else {}
    return {"config": cfg.to_dict(), "rows": [r.to_dict() for r in rows], **shipped}


def _reproduce(a: argparse.Namespace) -> dict[str, Any]:
    """The reproduction report (issue 6): experiments → data/*.json → README.md + figures."""
    from metainf_core.reproduce import load_sections, reproduce

    only = [k.strip() for k in a.only.split(",") if k.strip()] if a.only else None
    if a.rows:
        return _paper_rows(a, only)
    if a.estimate:
        from metainf_core.reproduce.estimate import estimate, format_table

        rows = estimate(a.scale, only, log=lambda msg: print(msg, file=sys.stderr, flush=True), ranks=a.ranks)
        print(format_table(rows, a.scale), file=sys.stderr, flush=True)
        return {"scale": a.scale, "estimate": rows}
    readme = reproduce(a.out, only=only, scale=a.scale, work=a.work, force=a.force, figures=not a.no_figures,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True), device=a.device)  # fmt: skip
    from metainf_core.influence import distributed

    if not distributed.is_primary():  # torchrun: rank 0 alone wrote the report and prints
        return None
    return {"report": str(readme), "verdicts": {s["key"]: s["verdict"] for s in load_sections(a.out)}}


def _paper_rows(a: argparse.Namespace, only: list[str] | None) -> dict[str, Any]:
    """TLXML Table 9/11 rows at the paper's settings (reproduce/rows.py): train or resume each
    (row, seed) run under docs/results/paper/, evaluate the finished ones, re-render the report."""
    from pathlib import Path

    from metainf_core.reproduce import render
    from metainf_core.reproduce.rows import collect, run_rows, run_schedule

    if a.scale != "paper" or only != ["e2-noise"]:
        raise ConfigError("--rows are TLXML's noise-task rows: use them with --scale paper --only e2-noise")
    keys = [k.strip() for k in a.rows.split(",") if k.strip()]
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()] if a.seeds else [0]
    root = Path(a.rows_root) if a.rows_root else Path(a.out) / "paper"  # the report renders <out>/paper

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with _stage_bars(getattr(a, "quiet", False), "task") as progress:  # the influence fits' progress
        if keys == ["schedule"]:  # issue 23's order, finished runs skipped
            results = run_schedule(root, device=a.device, steps=a.steps, log=log, progress=progress)
            keys = sorted({r["row"] for r in results} | {s["row"] for r in collect(root) for s in r["status"]})
        else:
            results = run_rows(keys, seeds, root, device=a.device, steps=a.steps, log=log, progress=progress)
    if not a.rows_root:
        render(a.out, figures=not a.no_figures)
    return {"results": results, "rows": [{"row": r["row"]["key"], "status": r["status"], "verdict": r["verdict"]}
                                         for r in collect(root) if r["row"]["key"] in keys]}


def _detect(a: argparse.Namespace) -> dict[str, Any]:
    """Harmful-task detection (seed 001 §6.3): detection curves and removal effect, see metainf_core.detect."""
    from metainf_core.detect import detect_report
    from metainf_core.service import open_run

    run = open_run(a.path, device=a.device)
    xis = tuple(float(x) for x in a.xi.split(",")) if a.xi else (-1.0,)
    with _stage_bars(a.quiet, "step") as progress:
        return detect_report(
            run, _influence_config(a), score=a.score, k_values=_parse_ids(a.k) or None, xis=xis, random_draws=a.draws,
            seed=a.seed, retrain=a.retrain, retrain_dir=a.retrain_dir, retrain_steps=a.retrain_steps, progress=progress,
        )  # fmt: skip


def _fidelity(a: argparse.Namespace) -> dict[str, Any]:
    """Removal fidelity (seed 001 Table 1): random task removals by retraining vs task-IF, direct IF, TLXML."""
    from metainf_core.fidelity import fidelity_report
    from metainf_core.service import open_run

    cfg = _config_from(a, FidelityConfig)  # before loading anything: bad settings fail fast
    run = open_run(a.path, device=a.device)

    def progress(stage: str, done: int, total: int) -> None:
        if not a.quiet:
            print(f"{stage} {done}/{total}", file=sys.stderr, flush=True)

    return fidelity_report(run, cfg, retrain_dir=a.retrain_dir, progress=progress)


def _lds(a: argparse.Namespace) -> dict[str, Any] | None:
    """Task-level LDS of each method with its noise ceiling (metainf_core.lds): a table, or JSON with --json."""
    from pathlib import Path

    from metainf_core.compare import CompareConfig
    from metainf_core.ranking import Target
    from metainf_core.influence import distributed
    from metainf_core.lds import format_table, parse_lds_methods, task_lds
    from metainf_core.service import open_run

    cfg = _config_from(a, LDSConfig)
    methods = parse_lds_methods(a.methods)  # before loading anything: unknown names fail fast
    run = open_run(a.path, device=a.device)
    target = Target.parse(a.test_tasks, run)
    if target.split != "test":
        raise ConfigError(f"--test-tasks {a.test_tasks!r}: LDS is measured on test tasks (ids, comma-separated, or all)")
    measured = json.loads(Path(a.losses_from).read_text()) if a.losses_from else None
    result = task_lds(run, cfg, methods=methods, test_ids=target.ids, work=a.work, config=CompareConfig(damping=a.damping),
                      progress=(lambda done, total: None) if a.quiet else None, include_data=a.data, measured=measured)  # fmt: skip
    if measured is not None:
        result["source"] = f"{a.losses_from} (same subsets, seeds and retrainings; methods scored {datetime.date.today()})"
    if not distributed.is_primary():  # torchrun: rank 0 prints
        return None
    if a.out:
        from metainf_core.io import write_json_atomic

        write_json_atomic(a.out, result, compact=True)  # a data file: the arrays on one line
    if a.json:
        return result
    print(format_table(result))
    return None


# ---- options: one per config.setting field, so a new setting is added in one place ---------------
def _names(text: str) -> tuple[str, ...]:
    """Comma-separated names (``--param-groups features.3,head``)."""
    return tuple(g.strip() for g in text.split(",") if g.strip())


_PARSERS = {int: int, float: float, str: str, tuple[int, ...]: _parse_ids, tuple[str, ...]: _names}


def config_options(cls: type) -> list[Field]:
    """The fields of a config dataclass that are command-line options (made by ``config.setting``)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def option_name(f: Field) -> str:
    """``--field-name``, or the field's own ``flag`` (TaskConfig.seed is ``--task-seed``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _dest(f: Field) -> str:
    return option_name(f)[2:].replace("-", "_")


def _add_config_args(p: argparse.ArgumentParser, cls: type, **overrides: dict[str, Any]) -> None:
    """One option per setting of ``cls``: name, type, default, choices and help from the field;
    ``overrides`` (field name -> add_argument keywords) adapt a subcommand's (e.g. a default chosen by rule)."""
    hints = get_type_hints(cls)
    for f in config_options(cls):
        kind = hints[f.name]
        if type(None) in get_args(kind):  # X | None: an option of type X, left out = None (the field's default)
            (kind,) = (t for t in get_args(kind) if t is not type(None))
        kw: dict[str, Any] = {"default": f.default, "help": f.metadata["help"]}
        kw.update({"action": "store_true"} if kind is bool else {"type": _PARSERS[kind]})
        kw.update({k: f.metadata[k] for k in ("choices", "metavar") if f.metadata.get(k)})
        kw.update(overrides.get(f.name, {}))
        p.add_argument(option_name(f), dest=_dest(f), **kw)


def _config_from(a: argparse.Namespace, cls: type, **resolved: Any) -> Any:
    """The config ``cls`` from the parsed options of its settings; ``resolved`` replaces those chosen by rule."""
    return cls(**{**{f.name: getattr(a, _dest(f)) for f in config_options(cls)}, **resolved})


# every influence subcommand's --dtype: "" = config.default_dtype(method), as api.ExplainerConfig's
_DTYPE = {"default": "", "help": "arithmetic of the fit (default: float64 for exact, float32 for gn)"}


def _add_influence_args(p: argparse.ArgumentParser, **overrides: dict[str, Any]) -> None:
    p.add_argument("path", help="checkpoint directory")
    _add_config_args(p, InfluenceConfig, dtype=_DTYPE, **overrides)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device_arg(p)


_DEVICE_HELP = "auto (CUDA when present) | cpu | cuda[:N]; results and cache entries do not depend on it"


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)


# ---- subcommands ----------------------------------------------------------------------------------
def _train_parser(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="meta-train MAML, ProtoNet or proximal MAML on fixed tasksets")
    by_dataset = ", ".join(f"{v.value} for {d}" for d, v in DATASET_ARCHITECTURES.items())
    _add_config_args(t, TaskConfig)
    arch = {"default": None, "help": f"network (default: {TrainConfig.arch}; {by_dataset})"}  # default_arch(dataset)
    _add_config_args(t, TrainConfig, arch=arch)
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_device_arg(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)


def _import_parser(sub: argparse._SubParsersAction) -> None:
    td, rd = TaskConfig(), TrainConfig()
    im = sub.add_parser("import", help="make a run folder from a meta-learner trained elsewhere (learn2learn, torch.save)")
    im.add_argument("out", help="new run folder")
    im.add_argument("--weights", required=True, help="model.safetensors or a torch.save state dict (.pt; loaded weights-only)")
    im.add_argument("--model", required=True,
                    help='network constructor, e.g. "l2l.vision.models.OmniglotCNN(output_size=3, hidden_size=16, layers=4)", '
                         f"or a metainf architecture ({', '.join(a.value for a in Architecture)}; with --filters)")  # fmt: skip
    im.add_argument("--algo", choices=["maml", "protonet"], required=True)
    im.add_argument("--dataset", default=None,
                    help="the dataset the tasks' indices refer to (e.g. fashion-mnist); optional when the tasks file names it")
    im.add_argument("--tasks", required=True, help="tasks.json: train_tasks (and optionally test_tasks), sample by sample")
    im.add_argument("--inner-lr", type=float, default=rd.inner_lr, help="MAML inner step size α (learn2learn's MAML lr)")
    im.add_argument("--inner-steps", type=int, default=rd.inner_steps, help="MAML adaptation steps")
    im.add_argument("--first-order", action="store_true", help="MAML trained first-order")
    im.add_argument("--protonet-embedding", choices=["joint", "separate"], default=None,
                    help="ProtoNet: support and query through the network in one call (learn2learn's example; default) or two")
    im.add_argument("--test-tasks", type=int, default=td.test_tasks, help="test tasks to draw when tasks.json has none")
    im.add_argument("--task-seed", type=int, default=td.seed, help="seed of the drawn test tasks")
    im.add_argument("--filters", type=int, default=32, help="filters of a metainf architecture named by --model")
    im.set_defaults(func=_import)


def _info_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("info", help="print a checkpoint's metadata (verified, never unpickled)")
    i.add_argument("path")
    i.add_argument("--full", action="store_true", help="include the training curve")
    i.set_defaults(func=_info)


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="test accuracy and loss over the test taskset")
    e.add_argument("path")
    e.add_argument("--train", action="store_true", help="also evaluate on the training taskset")
    e.add_argument("--split", choices=["test", "train"], default=None, help="evaluate only this taskset")
    e.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
    e.add_argument("--per-task", action="store_true", help="also print each task's adapted query loss and accuracy")
    _add_device_arg(e)
    e.set_defaults(func=_evaluate)


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fit", help="fit TLXML influence for a checkpoint (cached, resumable)")
    _add_influence_args(f)
    f.add_argument("--ship", action="store_true",
                   help="also store the fit inside the checkpoint folder (influence/, float16), so it loads at once elsewhere")
    f.set_defaults(func=_fit)


def _rank_parser(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rank", help="rank training tasks by helpfulness for a target")
    # --method also takes compare's registry names: checked by the handler (one-line error, exit 2)
    method = {"choices": None, "help": "exact | gn (= tlxml-exact | tlxml-gn), task-if, direct-if, grad-sim"}
    _add_influence_args(r, method=method)
    r.add_argument("--test-task", required=True, help="ID, ID,ID,..., all, or train:J")
    r.add_argument("--group", choices=["superclass"], default=None, help="also sum scores per group (TLXML A.3)")
    r.add_argument("--top", type=int, default=10)
    r.set_defaults(func=_rank)


def _compare_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="compare influence methods for one target: scores, Spearman/Pearson, top-k overlap")
    c.add_argument("path", help="checkpoint directory")
    c.add_argument("--test-task", default=None, help="ID, ID,ID,..., all, or train:J (or --tables)")
    c.add_argument("--methods", default=None, help="comma-separated registry names (default: every method that applies; "
                                                   "see docs/influence-methods.md), e.g. tlxml-gn,grad-sim,task-if")
    c.add_argument("--top", type=int, default=10, help="k of the top-k lists and overlaps")
    _add_config_args(c, CompareConfig)
    c.add_argument("--scores", action="store_true", help="also print every method's full score vector")
    c.add_argument("--tables", action="store_true",
                   help="instead of one target: score every test task with each method (default: every method that "
                        "applies) and cache the (test × training tasks) tables, which compare and the Compare page then read")
    c.add_argument("--ship", action="store_true", help="with --tables: also store them inside the checkpoint folder (cache/)")
    c.add_argument("--quiet", action="store_true", help="no progress bar (--tables)")
    _add_device_arg(c)
    c.set_defaults(func=_compare)


def _edit_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("edit", help="one-step block/enhance update (TLXML Eq. 13) and its effect")
    _add_influence_args(d)
    d.add_argument("--block", help="comma-separated training task ids")
    d.add_argument("--xi-block", type=float, default=-1.0)
    d.add_argument("--enhance", help="comma-separated training task ids")
    d.add_argument("--xi-enhance", type=float, default=1.0)
    d.add_argument("--test-task", type=int, default=None, help="also report this test task")
    d.add_argument("--out", help="write the edited checkpoint here")
    d.add_argument("--leave-out", metavar="DIR", help="also retrain from scratch without the blocked tasks (slow baseline)")
    d.add_argument("--leave-out-steps", type=int, default=None, help="steps for --leave-out (default: as trained)")
    d.set_defaults(func=_edit)


def _validate_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("validate", help="explanation checks: self-rank, noise and superclass proper tests")
    _add_influence_args(v)
    v.add_argument("--self-rank", action="store_true")
    v.add_argument("--noise", action="store_true")
    v.add_argument("--superclass", action="store_true")
    v.add_argument("--max-tests", type=int, default=128, help="test tasks used for proper tests")
    v.set_defaults(func=_validate)


def _diagnose_parser(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("diagnose", help="landscape diagnostics over training snapshots (train with --keep-history)")
    g.add_argument("path", help="checkpoint directory with history/")
    _add_config_args(g, DiagnosticsConfig)
    g.add_argument("--coherence-tasks", type=int, default=0,
                   help="instead: only gradient and trajectory coherence over this many test tasks (seed 003: 500) per snapshot, "
                        "with their Spearman rho with test accuracy by phase (whole run, without the first snapshot, rising, after the peak)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--ship", action="store_true", help="also store the result inside the checkpoint folder (cache/), so it shows at once elsewhere")
    _add_device_arg(g)
    g.set_defaults(func=_diagnose)


def _detect_parser(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("detect", help="harmful-task detection: corrupted tasks found in score order, removal effect")
    _add_influence_args(h)
    h.add_argument("--k", default=None, help="comma-separated removal sizes (default: C/2, C, 2C for C corrupted tasks)")
    h.add_argument("--score", choices=["mean", "self", "rank"], default="mean", help="what orders the inspection (see detect.py)")
    h.add_argument("--xi", default=None, help="comma-separated edit shifts ξ (default -1: removal)")
    h.add_argument("--draws", type=int, default=5, help="random removal draws per k")
    h.add_argument("--seed", type=int, default=0, help="seed of the random removals")
    h.add_argument("--retrain", action="store_true", help="also leave-out retrain per k (slow: 2 trainings per k)")
    h.add_argument("--retrain-dir", default=None, help="keep the retrained checkpoints here (default: a temporary folder)")
    h.add_argument("--retrain-steps", type=int, default=None, help="steps of each retraining (default: as trained)")
    h.set_defaults(func=_detect)


def _fidelity_parser(sub: argparse._SubParsersAction) -> None:
    fi = sub.add_parser("fidelity", help="removal fidelity (seed 001 Table 1): retraining vs task-IF / direct IF / TLXML")
    fi.add_argument("path", help="checkpoint directory")
    _add_config_args(fi, FidelityConfig)
    fi.add_argument("--retrain-dir", default=None, help="keep the retrained checkpoints here (default: a temporary folder)")
    fi.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_device_arg(fi)
    fi.set_defaults(func=_fidelity)


def _lds_parser(sub: argparse._SubParsersAction) -> None:
    ld = sub.add_parser("lds", help="task-level linear datamodeling score of each method vs K·R subset retrainings, with the noise ceiling")
    ld.add_argument("path", help="checkpoint directory (a run trained by metainf: it is retrained with its own configuration)")
    _add_config_args(ld, LDSConfig)
    ld.add_argument("--methods", default=None, help="comma-separated compare methods, tlxml-gn@K / tlxml-exact@K (K eigen-directions kept) and/or random "
                    "(default: all and random; those that do not apply are listed as skipped)")
    ld.add_argument("--test-tasks", default="all", help="test task ids, comma-separated, or all")
    ld.add_argument("--damping", type=float, default=0.01, help="λ_d of task-if and direct-if")
    ld.add_argument("--work", default=None, help="where the retrained runs are kept (default .cache/metainf/lds); reused and resumed")
    ld.add_argument("--losses-from", default=None, help="a committed measurement of this run (an lds --data JSON): score the "
                    "methods against its retrained losses instead of retraining (the same K, α, R and subset seed)")
    ld.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    ld.add_argument("--data", action="store_true", help="include the subsets and per-seed losses in the JSON")
    ld.add_argument("--out", default=None, help="also write the JSON result (compact; with --data's arrays if given) to this file")
    ld.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device_arg(ld)
    ld.set_defaults(func=_lds)


def _reproduce_parser(sub: argparse._SubParsersAction) -> None:
    rp = sub.add_parser("reproduce", help="run the papers' experiments on our data and write the reproduction report")
    rp.add_argument("--out", default="docs/results", help="report folder: README.md, data/*.json, figures/*.png")
    rp.add_argument("--only", default=None, help="comma-separated experiment keys (default: all); see metainf_core/reproduce")
    rp.add_argument("--scale", choices=["report", "medium", "paper", "smoke"], default="report",
                    help="medium: conv nets, M = 1,024, about an hour (data/<key>.medium.json); paper: the TLXML paper's settings for "
                         "e2-e4 and seed 003's for e6 (data/<key>.paper.json; weeks on a CPU, see --estimate); smoke: a minutes-long version of each experiment")
    rp.add_argument("--estimate", action="store_true",
                    help="train nothing: print each experiment's predicted time at --scale from a short timing probe (about 1-2 minutes)")
    rp.add_argument("--ranks", type=int, default=2, help="with --estimate: the torchrun ranks (one thread each) of its last column")
    rp.add_argument("--work", default=None, help="where trained runs are kept (default .cache/metainf/reproduce)")
    rp.add_argument("--force", action="store_true", help="rerun experiments whose saved section is up to date")
    rp.add_argument("--no-figures", action="store_true", help="do not draw PNG figures")
    rp.add_argument("--device", default="cpu", help="cpu (default: the report's figures are CPU figures) | auto | cuda[:N]")
    rp.add_argument("--rows", default=None,
                    help="with --scale paper --only e2-noise: TLXML Table 9/11 rows to run at the paper's settings, e.g. "
                         "om-protonet-512,om-protonet-1024,om-maml-512, or 'schedule' (issue 23's order, skipping finished runs; "
                         "run folders under docs/results/paper/<row>/seed<k>/)")
    rp.add_argument("--seeds", default=None, help="with --rows: training seeds, e.g. 0,1,2 (default 0; the paper's: 0,1,2,3,42)")
    rp.add_argument("--steps", type=int, default=None,
                    help="with --rows: train up to meta-batch N for now (the run resumes from there next time)")
    rp.add_argument("--rows-root", default=None, help=argparse.SUPPRESS)  # tests: run folders elsewhere, report untouched
    rp.set_defaults(func=_reproduce)


SUBCOMMANDS = (_train_parser, _import_parser, _info_parser, _evaluate_parser, _fit_parser, _rank_parser, _compare_parser,
               _edit_parser, _validate_parser, _diagnose_parser, _detect_parser, _fidelity_parser, _lds_parser, _reproduce_parser)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metainf_core", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (MetainfError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if result is None:  # a torchrun rank other than 0: rank 0 prints
        return 0
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
