"""Landscape: coherence and flatness of the training snapshots beside their test accuracy (seed 003).

The diagnostics run as a background job (``jobs.submit_diagnostics``): the page shows its progress
and draws the rows when it ends; sessions asking for the same settings share one job."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from metainf_core import jobs
from metainf_core.diagnostics import DiagnosticsConfig, history_snapshots, load_cached_diagnostics
from metainf_core.exceptions import ConfigError
from metainf_core.landscape_metrics import METRICS, PAPER_NAMES, keep_history_command, metric_correlations
from metainf_core.words import column_name, percent
from ui import DIAGNOSTICS_STAGES, get_run, last_job_note, remember_job, require_run, running_job, show_figure

DEFAULT_TASKS = 16  # seed 003 (and `diagnose`) use 60; 16 keeps a CPU run to seconds per snapshot for small networks
GRID = dict(rows=math.ceil(len(METRICS) / 2), cols=2)

st.set_page_config(page_title="metainf · Landscape", layout="wide")
st.title("Loss landscape over training")
st.caption("Copies of the model were saved along its training (snapshots). For each snapshot: do its test tasks pull "
           "the weights the same way (agreement), does it sit in a flat region of the loss (low sharpness), and does that "
           "go with better test accuracy?")
path, run = require_run()
try:
    history_snapshots(run.checkpoint.path)
except ConfigError:
    if run.meta.get("imported"):
        st.info("This model was trained outside metainf, so it has no training snapshots here. To see its landscape over "
                "training, save its weights during training (e.g. every few hundred steps), import each file with "
                "`python -m metainf_core import` into `history/step_<N>.safetensors` of a run folder, or retrain it with "
                "metainf (`python -m metainf_core train --model \"…\" --keep-history`).")
        st.stop()
    st.info("This run was trained without `--keep-history`: it keeps no training snapshots (`history/step_*.safetensors`). "
            "Retrain it with its own settings, keeping ω at every checkpoint, then open the new folder on the home page:")
    st.code(keep_history_command(run.meta, f"runs/{Path(path).name}-history"), language="bash", wrap_lines=True)
    st.stop()

n_test = len(run.test_tasks)
num_tasks = st.slider("Test tasks used for the statistics (the first ones)", 2, max(3, min(n_test, 128)),
                      min(DEFAULT_TASKS, n_test), key="landscape_tasks",
                      help="Seed 003 uses 60 fixed test tasks. Test accuracy always uses all of them.")
cfg = DiagnosticsConfig(num_tasks=min(num_tasks, n_test))
rows, total = load_cached_diagnostics(run, cfg)


def start_diagnostics(path: str, cfg: DiagnosticsConfig) -> None:
    """The "Compute diagnostics" callback: submit the job (or join the one running for these settings)."""
    remember_job(jobs.submit_diagnostics(get_run(path), cfg))


if len(rows) < total:
    job = jobs.job_status(jobs.diagnostics_entry(run, cfg))
    if running_job(job, DIAGNOSTICS_STAGES, "diagnostics", f"Computing the diagnostics of the {total} training snapshots on "
                   f"{cfg.num_tasks} test tasks in the background: you can use other pages, leave and come back; the "
                   "curves appear here when it ends."):
        st.stop()
    left = f" ({len(rows)} of {total} done, it resumes from there)" if rows else ""
    st.info(f"Diagnostics of the {total} training snapshots on {cfg.num_tasks} test tasks are not computed yet{left}. "
            "Each snapshot needs power iteration and Lanczos on every task's Hessian; they run in the background and "
            "are saved snapshot by snapshot.")
    last_job_note(job, "The last computation")
    st.button("Compute diagnostics" if not rows else "Resume the diagnostics", type="primary", key="landscape_compute",
              on_click=start_diagnostics, args=(path, cfg))
    st.stop()

corr = metric_correlations(rows)
last = rows[-1]
st.write(f"**{len(rows)} snapshots** (steps {rows[0].step}–{last.step}), statistics on {cfg.num_tasks} test tasks; "
         f"accuracy on all {n_test}.")
c1, c2, c3, c4 = st.columns(4)
c1.metric(f"Test accuracy at step {last.step}", percent(last.accuracy), help=f"± {percent(last.accuracy_ci95)} (95 % interval)")
c2.metric(f"Sharpness at step {last.step}", f"{last.sharpness_lanczos:.4g}",
          help="How sharply the loss curves around the weights (its largest curvature); lower = flatter")
c3.metric(f"Gradient agreement at step {last.step}", f"{last.gradient_cosine:+.4f}",
          help="Average cosine between the test tasks' gradients: +1 = they all pull the same way, 0 = unrelated")
c4.metric("Sharpness vs accuracy", f"{corr['sharpness_lanczos']['spearman']:+.2f}",
          help="Rank correlation (Spearman ρ) over the snapshots: -1 = the sharper, the less accurate; +1 = the sharper, the more accurate")

st.subheader("Correlation with test accuracy across snapshots")
signed = st.column_config.NumberColumn(format="%+.3f")
st.dataframe(pd.DataFrame([{"statistic": METRICS[m], "Spearman ρ": c["spearman"], "Pearson r": c["pearson"]} for m, c in corr.items()]),
             hide_index=True, width="stretch", key="landscape_corr", column_config={"Spearman ρ": signed, "Pearson r": signed})
if len(rows) < 3:
    st.caption("Correlations need at least 3 snapshots.")
steps_taken, _ = cfg.trajectory(run.spec)
same = all(abs(r.gradient_cosine - r.trajectory_cosine) < 5e-4 for r in rows)  # equal to the 3 decimals shown
if steps_taken == 1 and same:  # (w - αg) - w is αg up to float rounding: equal, not identical bits
    st.caption(f"“{METRICS['gradient_cosine']}” and “{METRICS['trajectory_cosine']}” show the same values, and that is "
               "right: the adaptation here is a single gradient step, so each task's step is its gradient times the step "
               "size, and the cosines between steps are the cosines between gradients.")

steps = [r.step for r in rows]
acc = [r.accuracy for r in rows]
curves = make_subplots(**GRID, specs=[[{"secondary_y": True}] * 2] * GRID["rows"], subplot_titles=list(METRICS.values()))
scatter = make_subplots(**GRID, vertical_spacing=0.1, subplot_titles=[f"{label}<br>ρ = {corr[m]['spearman']:+.2f}, r = {corr[m]['pearson']:+.2f}"
                                                for m, label in METRICS.items()])
for i, (m, label) in enumerate(METRICS.items()):
    at = dict(row=i // 2 + 1, col=i % 2 + 1)
    values = [getattr(r, m) for r in rows]
    curves.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=label, line=dict(color="#1565c0"), showlegend=False), **at)
    curves.add_trace(go.Scatter(x=steps, y=acc, mode="lines", name="test accuracy", line=dict(color="#9e9e9e", dash="dot"),
                                showlegend=i == 0), secondary_y=True, **at)
    scatter.add_trace(go.Scatter(x=values, y=acc, mode="markers", name=label, text=[f"step {s}" for s in steps], showlegend=False,
                                 marker=dict(size=8, color=steps, colorscale="Viridis", showscale=i == 0,
                                             colorbar=dict(title="step") if i == 0 else None)), **at)
    scatter.update_yaxes(title_text="test accuracy", **at)
curves.update_layout(title="Statistics (blue, left axis) and test accuracy (dotted, right axis) over meta-training steps",
                     height=240 * GRID["rows"], margin=dict(l=10, r=10, t=70, b=10))
scatter.update_layout(title="Each statistic against test accuracy, one point per snapshot", height=260 * GRID["rows"],
                      margin=dict(l=10, r=10, t=110, b=10))
show_figure(curves, "landscape_curves", f"landscape_over_training-{Path(path).name}-{cfg.num_tasks}tasks")
show_figure(scatter, "landscape_scatter", f"landscape_vs_accuracy-{Path(path).name}-{cfg.num_tasks}tasks")

st.subheader("Every snapshot")
table = pd.DataFrame([r.to_dict() for r in rows])
table = table[["step", "accuracy", "accuracy_ci95", "loss", *METRICS, "num_tasks"]]
names = {c: METRICS.get(c) or column_name(c) for c in table.columns}
st.dataframe(table.rename(columns=names), hide_index=True, width="stretch", key="landscape_rows")
st.download_button("Rows as CSV", table.to_csv(index=False), f"landscape_{Path(path).name}.csv", "text/csv",
                   key="landscape_csv", icon=":material/download:", help="Column names as the code writes them, for analysis")
with st.expander("For researchers: the statistics as seed 003 (Guiroy et al.) defines them"):
    st.markdown("\n".join(f"- **{METRICS[m]}** (`{m}`): {PAPER_NAMES[m]}" for m in METRICS)
                + "\n\nStatistics on the first test tasks' support sets; accuracy on all test tasks.")
