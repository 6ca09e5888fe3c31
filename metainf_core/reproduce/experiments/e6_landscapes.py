"""e6: landscapes (seed 003, Fig. 5, 7)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metainf_core.config import TrainConfig
from metainf_core.diagnostics import (
    COHERENCE_FIELDS,
    DiagnosticsConfig,
    cached_diagnostics_over_history,
    coherence_over_history,
    history_snapshots,
)
from metainf_core.influence import distributed
from metainf_core.landscape_metrics import coherence_phase_table, metric_correlations
from metainf_core.service import Run

# the helpers the experiments share, several a line
from metainf_core.reproduce.experiments.common import (  # isort: skip
    Context, Section, _configs, _grade, _table, at_paper_scale, network_text, networks_line,
)  # fmt: skip


# ---- 6. landscapes (seed 003, Fig. 5, 7) ------------------------------------------------------
DIAGNOSTIC_COLUMNS = ("gradient_inner", "gradient_cosine", "trajectory_cosine", "sharpness_lanczos", "representation_inner", "adapted_support_loss")


def initial_snapshot(run: Run) -> Path:
    """``history/step_0000000.safetensors``: the run's weights before its first step (chance
    accuracy), rebuilt exactly as ``train.train`` initialises them (``torch.manual_seed(seed)``,
    then the network); written once next to the run's other snapshots."""
    from metainf_core.checkpoint import save_tensors
    from metainf_core.learners import params_of
    from metainf_core.models import build_network

    path = Path(run.checkpoint.path) / "history" / "step_0000000.safetensors"
    if not path.is_file():
        cfg = TrainConfig.from_dict(run.meta["train_config"])
        torch.manual_seed(cfg.seed)
        model = build_network(cfg.model, cfg.arch, cfg.algo, run.dataset.input_shape, run.spec.ways, cfg.filters)
        save_tensors(path, {k: v.detach().contiguous() for k, v in params_of(model).items()})
    return path


def _overfitting(steps: list[int], test: np.ndarray, train: np.ndarray | None) -> tuple[str, bool]:
    """The course of test (and train) accuracy over the snapshots in words, and whether it shows
    meta-overfitting: test accuracy falls ≥ 0.01 after its peak while train accuracy does not."""
    peak = int(np.argmax(test))
    text = f"test accuracy goes from {test[0]:.3f} (step {steps[0]}) to its peak {test[peak]:.3f} (step {steps[peak]}) and ends at {test[-1]:.3f} (step {steps[-1]})"
    if train is None:
        return text, False
    overfit = bool(peak < len(steps) - 1 and test[-1] <= test[peak] - 0.01 and train[-1] >= train[peak])
    text += f" while train accuracy goes from {train[0]:.3f} to {train[peak]:.3f} at the peak and {train[-1]:.3f} at the end"
    return text + ("" if overfit else " (no meta-overfitting within these steps)"), overfit


def landscapes(c: dict[str, Any], ctx: Context) -> Section:
    """Coherence and flatness over the training history, and their Spearman correlation with test accuracy.

    Configurations with ``initial_snapshot`` add the weights before training (chance accuracy) to
    the history; ``diag_steps`` T > 1 makes trajectory coherence differ from gradient coherence (at
    T = 1 both are the cosine of the first gradient step); ``train_eval_tasks`` > 0 evaluates every
    snapshot on that many training tasks too, to show meta-overfitting (train accuracy rising while
    test accuracy falls); ``coherence_tasks`` N adds seed 003's coherence quantities alone over N test
    tasks per snapshot (the paper: 500) with their ρ per phase (whole run, without the first
    snapshot, rising to the peak, after it), which the verdict then uses."""
    rows, figs, corr, spans, course, courses = [], [], {}, {}, [], {}
    coherence_rows, coherence_corr = [], {}
    diag_cfg = DiagnosticsConfig(num_tasks=c["diag_tasks"], steps=c.get("diag_steps"), power_iters=c.get("power_iters", 100))
    extended = "diag_steps" in c  # the medium scale's tables; the report scale keeps its layout
    configs = {algo: _configs(c, dataset=c["dataset"], ways=c["ways"], algo=algo, seed=c["seed"], train_tasks=c["train_tasks"], keep_history=True)
               for algo in c["algos"]}  # fmt: skip
    ctx.train_all(list(configs.values()))
    for algo in c["algos"]:
        run = ctx.run(*configs[algo])
        if c.get("initial_snapshot"):
            initial_snapshot(run)
        ctx.log(f"landscapes: {algo}")
        hist = cached_diagnostics_over_history(run, diag_cfg)
        acc = np.array([h.accuracy for h in hist])
        steps = [int(h.step) for h in hist]
        spans[algo] = f"{acc.min():.3f}–{acc.max():.3f}"
        train_acc = None
        if c.get("train_eval_tasks"):
            from metainf_core.checkpoint import load_tensors

            ids = np.arange(min(c["train_eval_tasks"], len(run.train_tasks)))
            snaps = history_snapshots(run.checkpoint.path)

            def train_accuracy(i: int, snaps=snaps, ids=ids, run=run) -> torch.Tensor:
                params = {k: v.to(run.params[k].dtype) for k, v in load_tensors(snaps[i][1]).items()}
                return torch.tensor([run.evaluate(params, split="train", task_ids=ids).summary()["accuracy"]])

            # under torchrun the snapshots are shared out over the ranks, as the diagnostics are
            train_acc = np.array([float(t[0]) for t in distributed.map_in_rounds(len(snaps), train_accuracy, 1)])
        courses[algo] = _overfitting(steps, acc, train_acc)
        if c.get("coherence_tasks"):  # seed 003's quantities on as many test tasks as the paper, by phase
            coherence = coherence_over_history(run, history_snapshots(run.checkpoint.path), c["coherence_tasks"], steps=c.get("diag_steps"))
            peak_step = steps[int(np.argmax(acc))]
            table = coherence_phase_table(coherence)
            for name in COHERENCE_FIELDS:
                values = np.array([r[name] for r in coherence])
                phases = coherence_corr[(algo, name)] = table[name]
                coherence_rows.append([algo, name, coherence[0]["num_tasks"], *[f"{rho:+.2f} ({n})" for rho, n in phases.values()]])
                if name != "gradient_cosine":
                    rising = np.array(steps) <= peak_step
                    scale = max(1e-300, float(np.abs(values).max()))
                    figs.append({"name": f"coherence-{algo}-{name}", "title": f"{algo}: {name} over {coherence[0]['num_tasks']} test tasks and test accuracy",
                                 "x_title": "training step", "y_title": "value (coherence scaled to its maximum)",
                                 "series": [{"name": "test accuracy", "x": steps, "y": acc.tolist()},
                                            {"name": f"{name}, rising phase", "x": np.array(steps)[rising].tolist(), "y": (values[rising] / scale).tolist()},
                                            {"name": f"{name}, after the peak", "x": np.array(steps)[~rising | (np.array(steps) == peak_step)].tolist(),
                                             "y": (values[~rising | (np.array(steps) == peak_step)] / scale).tolist()}]})  # fmt: skip
        rhos = metric_correlations(hist)  # the Landscape page's Spearman ρ with test accuracy
        peak = int(np.argmax(acc))
        for col in DIAGNOSTIC_COLUMNS:
            corr[(algo, col)] = rho = rhos[col]["spearman"]
            if extended:
                rows.append([algo, col, f"{getattr(hist[0], col):.4g}", f"{getattr(hist[peak], col):.4g}", f"{getattr(hist[-1], col):.4g}", f"{rho:+.2f}"])
            else:
                rows.append([algo, col, f"{getattr(hist[0], col):.4g}", f"{getattr(hist[-1], col):.4g}", f"{rho:+.2f}"])
        for i, h in enumerate(hist):
            course.append([algo, h.step, "" if train_acc is None else f"{train_acc[i]:.3f}", f"{h.accuracy:.3f}", f"{h.gradient_inner:.4g}",
                           f"{h.gradient_cosine:.4g}", f"{h.trajectory_cosine:.4g}", f"{h.sharpness_lanczos:.4g}"])
        shown = [col for col in DIAGNOSTIC_COLUMNS if col != "gradient_cosine" or diag_cfg.trajectory(run.spec)[0] > 1]  # = trajectory_cosine at T = 1
        figs.append({"name": f"landscape-{algo}", "title": f"{algo}: diagnostics vs test accuracy over training", "x_title": "test accuracy",
                     "y_title": "value (each metric scaled to its maximum)", "mode": "markers",
                     "series": [{"name": col, "x": acc.tolist(), "y": (np.array([getattr(h, col) for h in hist]) / max(1e-300, max(abs(getattr(h, col)) for h in hist))).tolist()}
                                for col in shown]})  # fmt: skip
        if extended:
            figs.append({"name": f"accuracy-{algo}", "title": f"{algo}: accuracy over training", "x_title": "training step", "y_title": "accuracy",
                         "series": [{"name": "test", "x": steps, "y": acc.tolist()}]
                                   + ([{"name": f"train (first {len(ids)} tasks)", "x": steps, "y": train_acc.tolist()}] if train_acc is not None else [])})  # fmt: skip
    # seed 003's claims are about MAML: gradient coherence (mean inner product, §5.3) and trajectory
    # coherence (mean cosine of directions, §5.2) rise with generalisation; flatness does not track it (§5.1)
    rho_g, rho_t = corr.get(("maml", "gradient_inner"), math.nan), corr.get(("maml", "trajectory_cosine"), math.nan)
    t_steps = c.get("diag_steps") or 1
    phase_text = ""
    if ("maml", "gradient_inner") in coherence_corr:  # the paper's quantities on its number of tasks decide
        rho_g, rho_t = coherence_corr[("maml", "gradient_inner")]["whole run"][0], coherence_corr[("maml", "trajectory_cosine")]["whole run"][0]

        def by_phase(name: str) -> str:
            ph = coherence_corr[("maml", name)]
            return ", ".join(f"{k} {v[0]:+.2f}" for k, v in list(ph.items())[1:])

        phase_text = (f"; over {c['coherence_tasks']} test tasks per snapshot, gradient coherence ρ by phase: {by_phase('gradient_inner')}; "
                      f"trajectory coherence: {by_phase('trajectory_cosine')}")
    if extended:
        course_text, overfit = courses.get("maml", ("", False))
        where = f" ({network_text(c, ['maml'])}, M = {c['train_tasks']}, T = {t_steps} inner steps; {course_text}{phase_text})"
        fails = (f"; the claim still fails at this scale{'' if overfit else ', though these snapshots do not reach meta-overfitting'}")
    else:
        where, fails = "", ""
    verdict = _grade(
        (rho_g > 0.5 and rho_t > 0.5, f"for MAML, gradient coherence (ρ = {rho_g:+.2f}) and trajectory coherence (ρ = {rho_t:+.2f}) rise with test accuracy over training{where}"),
        (rho_g > 0.5 or rho_t > 0.5, f"for MAML, gradient coherence ρ = {rho_g:+.2f} and trajectory coherence ρ = {rho_t:+.2f} with test accuracy: only one rises with it{where}"),
        (f"for MAML, neither gradient coherence (ρ = {rho_g:+.2f}) nor trajectory coherence (ρ = {rho_t:+.2f}) rises with test accuracy over training{where}{fails}"
         if extended else
         f"for MAML, neither gradient coherence (ρ = {rho_g:+.2f}) nor trajectory coherence (ρ = {rho_t:+.2f}) rises with test accuracy over "
         f"training; test accuracy spans {spans.get('maml', 'n/a')} across our snapshots (the paper follows it from chance through "
         "meta-overfitting)"),
    )
    trained_steps = c.get("inner_steps", 1)
    if extended:
        reductions = [networks_line(c, ctx),
                      f"{c['dataset']} {c['ways']}-way, M = {c['train_tasks']} training tasks, {c['steps']} meta-batches of {c['meta_batch']} at learning rate "
                      f"{c['lr']}, a snapshot every {c['checkpoint_every']} steps"
                      + (" plus the initial weights (step 0, chance accuracy)" if c.get("initial_snapshot") else ""),
                      f"trajectories of T = {t_steps} inner steps of size {c.get('inner_lr', 0.4)} (so trajectory coherence is not gradient coherence; "
                      f"the networks train with {'one inner step' if trained_steps == 1 else f'{trained_steps} inner steps'})",
                      f"diagnostics on {c['diag_tasks']} test tasks (seed 003: 60); sharpness by {DiagnosticsConfig.lanczos_iters} Lanczos iterations"]
        tables = [_table("Each diagnostic at the first snapshot, at the snapshot of highest test accuracy, at the last, and its Spearman correlation "
                         "with test accuracy across snapshots", ["learner", "diagnostic", "first", "at peak test accuracy", "last", "ρ with accuracy"], rows),
                  _table("Every snapshot: accuracy on training tasks and test tasks, coherence and sharpness",
                         ["learner", "step", "train accuracy", "test accuracy", "gradient_inner", "gradient_cosine", "trajectory_cosine", "sharpness_lanczos"],
                         course)]  # fmt: skip
        if coherence_rows:
            tables.append(_table("seed 003's coherence on many test tasks per snapshot (unnormalised E[g_iᵀg_j], its cosine, T-step trajectory "
                                 "cosines): Spearman ρ with test accuracy (number of snapshots) over each phase of training",
                                 ["learner", "quantity", "test tasks", "whole run", "without the first snapshot", "rising (to the peak)", "after the peak"],
                                 coherence_rows))  # fmt: skip
            reductions.append(f"coherence also on {c['coherence_tasks']} test tasks per snapshot, as seed 003's 500 (§5.2), without sharpness; "
                              "the verdict uses these")
    else:
        reductions = [f"{c['arch']} learner on fashion-mnist, {c['steps']} meta-batches at learning rate {c['lr']} (slow, so that accuracy "
                      f"rises over many snapshots), a snapshot every {c['checkpoint_every']} steps",
                      f"diagnostics on {c['diag_tasks']} test tasks (seed 003: 60)"]
        tables = [_table("Each diagnostic at the first and last snapshot, and its Spearman correlation with test accuracy across snapshots",
                         ["learner", "diagnostic", "first", "last", "ρ with accuracy"], rows)]
    if at_paper_scale(c):
        reductions = [networks_line(c, ctx), *c["paper_reductions"]]
    return {
        "title": "Landscapes",
        "paper": "seed 003 (§5, Fig. 5, 7; MAML): the coherence of adaptation trajectories (mean cosine of their directions) and of meta-test "
                 "gradients (mean inner product at ω) correlate with test accuracy; the flatness of adapted solutions does not (it peaks, then "
                 "falls as the support loss falls). ProtoNet rows are beyond the paper and not part of the verdict.",
        "reductions": reductions,
        "tables": tables,
        "figures": figs,
        "verdict": verdict,
    }
