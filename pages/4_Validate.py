"""Validate: do the explanations behave as they should for this model? (TLXML 5.1, B.2–B.4)"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from metainf_core.explain import validation_report
from ui import DEFAULT_INFLUENCE, require_influence, require_run, show_figure

st.set_page_config(page_title="metainf · Validate", layout="wide")
st.title("Validate the explanations")
path, run = require_run()
inf = require_influence(path, run)


@st.cache_data(show_spinner="Scoring every training task for the test tasks…")
def report(path: str, max_tests: int) -> dict:
    return validation_report(run, inf, DEFAULT_INFLUENCE, max_tests=max_tests)


max_tests = st.slider("Test tasks used for proper tests", 16, len(run.test_tasks), min(128, len(run.test_tasks)), step=16, key="validate_tests")
rep = report(path, max_tests)

st.subheader("Self-rank (TLXML 5.1.1)")
st.write(
    "Make a test task identical to training task j and rank all training tasks: a faithful explanation puts j first "
    "(self-rank 0). Random ranking would give a mean of "
    f"{rep['self_rank_at_truncation']['random_mean']:.1f}."
)
sr = pd.DataFrame(rep["self_rank"])
c1, c2 = st.columns([1, 2])
c1.metric(f"Mean self-rank at k = {inf.truncation}", f"{rep['self_rank_at_truncation']['mean']:.2f}")
c1.metric("Training tasks ranked first for themselves", f"{rep['self_rank_at_truncation']['fraction_top1']:.0%}")
fig = go.Figure(go.Scatter(x=sr["k"], y=sr["mean_self_rank"], mode="lines+markers"))
fig.update_layout(xaxis_type="log", xaxis_title="kept eigen-directions k", yaxis_title="mean self-rank", height=300,
                  margin=dict(l=10, r=10, t=30, b=10), title="Truncation chosen by self-rank (TLXML B.3)")
show_figure(fig, "validate_selfrank", "self_rank_vs_truncation", c2)

st.subheader("Proper tests (TLXML 5.1.2–5.1.3)")
st.write(
    "A test is *proper* when the training tasks expected to matter more score higher on average than the rest. "
    "Under random ordering the count is binomial with mean T/2 and σ = √(T/4)."
)
rows = []
if "proper" in rep.get("noise", {}):
    rows.append({"subpopulation P": "normal tasks (vs noise tasks)", **rep["noise"]})
elif "noise" in rep:
    st.info(rep["noise"]["skipped"])
for s in rep.get("superclass", []):
    if s["total"]:
        rows.append({"subpopulation P": f"sharing ≥ {s['min_shared']} superclasses with the test task", **s})
table = pd.DataFrame(rows)[["subpopulation P", "proper", "total", "sigma", "z"]] if rows else pd.DataFrame()
if not table.empty:
    table = table.rename(columns={"z": "distance from T/2 (σ)"})
    st.dataframe(table, hide_index=True, use_container_width=True)

st.subheader("Gauss-Newton versus exact Hessian (TLXML B.3)")
agree = rep.get("exact_vs_gn", {})
if "skipped" in agree:
    st.info(f"Not computed: {agree['skipped']}.")
elif agree:
    a1, a2, a3 = st.columns(3)
    a1.metric("Pearson correlation of scores", f"{agree['pearson_mean']:.3f} ± {agree['pearson_sd']:.3f}", help=f"TLXML reports {agree['paper_pearson']}")
    a2.metric("Spearman correlation", f"{agree['spearman_mean']:.3f}")
    overlap = next(v for k, v in agree.items() if k.startswith("top") and k.endswith("_overlap_mean"))
    a3.metric("Top-10% overlap", f"{overlap:.0%}")
