"""Validate: do the explanations behave as they should for this model? (TLXML 5.1, B.2–B.4)

Three checks, each a section: self-rank (all training tasks), proper tests and the exact-computation
comparison (both on the first test tasks, the slider above them); the paper's names and section
numbers are in the "For researchers" expander at the end.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from metainf_core.validate import validation_report
from metainf_core.lds_results import method_lds, validate_sentence
from metainf_core.words import SIGNIFICANT_SD, percent, proper_test_verdict, signed, superclass_reading
from ui import influence_config, require_influence, require_run, show_figure

SIGNIFICANT = SIGNIFICANT_SD  # |z| from which a count is unlikely under chance (about 5 % two-sided)

st.set_page_config(page_title="metainf · Validate", layout="wide")
st.title("Validate the explanations")
st.write("Three checks that the rankings behave as a faithful explanation should, on this model's own tasks: does a "
         "training task find itself, do the training tasks expected to matter score higher, and does the fast approximation "
         "agree with the exact computation.")
path, run = require_run()
# ground truth first: the committed task-level LDS of the app's ranking method on models trained like this one
st.markdown(validate_sentence(method_lds(run, f"tlxml-{influence_config(path).method}")))
inf = require_influence(path, run)


@st.cache_data(show_spinner="Ranking every training task for itself…")
def self_rank_report(path: str) -> dict:
    return validation_report(run, inf, influence_config(path), noise=False, superclass=False, exact_agreement=False)


@st.cache_data(show_spinner="Scoring every training task for the test tasks…")
def report(path: str, max_tests: int) -> dict:
    return validation_report(run, inf, influence_config(path), self_rank=False, max_tests=max_tests)


# ---- self-rank ----------------------------------------------------------------------------------------
rep = self_rank_report(path)
at_k = rep["self_rank_at_truncation"]
k = inf.truncation

st.subheader("1. Self-rank: does a training task find itself?")
st.write(
    "Treat a training task as if it were the test task and rank all training tasks for it: a faithful explanation puts "
    "that task itself first, so its **self-rank** is 0. Lower is better; ranking at random would give "
    f"{at_k['random_mean']:.1f} on average."
)
sr = pd.DataFrame(rep["self_rank"])
c1, c2 = st.columns([1, 2])
c1.metric(f"Mean self-rank at k = {k}", f"{at_k['mean']:.2f}",
          help=f"Over all {rep['num_tasks']} training tasks; random ranking: {at_k['random_mean']:.1f}")
c1.metric("Training tasks ranked first for themselves", percent(at_k["fraction_top1"], 0))
best = int(sr.loc[sr["mean_self_rank"].idxmin(), "k"])  # the first minimum: the smallest k on a tie
how = ("the value with the lowest mean self-rank (the smallest one on a tie)" if k == best
       else f"set by hand (the lowest mean self-rank is at k = {best})")
c1.caption(f"k is how many directions of the model's curvature the scores keep. The app keeps k = {k}, {how}.")
at_chosen = sr.loc[sr["k"] == k, "mean_self_rank"]
y_k = float(at_chosen.iloc[0]) if len(at_chosen) else at_k["mean"]
if abs(y_k - at_k["mean"]) >= 0.005:
    c1.caption("The curve is measured on a sample of training tasks, so at the chosen k it differs a little from the "
               "mean above, which uses all of them.")
fig = go.Figure([
    go.Scatter(x=sr["k"], y=sr["mean_self_rank"], mode="lines+markers", name="mean self-rank", line_color="#1f77b4"),
    go.Scatter(x=[k, k], y=[0, float(sr["mean_self_rank"].max())], mode="lines", line=dict(color="#c62828", dash="dash"),
               hoverinfo="skip", showlegend=False),
    go.Scatter(x=[k], y=[y_k], mode="markers+text", text=[f"chosen k = {k}"], name=f"chosen k = {k}",
               textposition="top left" if k > sr["k"].median() else "top right",
               marker=dict(color="#c62828", size=12), textfont=dict(color="#c62828")),
])  # fmt: skip
fig.update_layout(xaxis=dict(type="log", tickvals=list(sr["k"]), title="directions kept, k"),
                  yaxis_title="mean self-rank (lower is better)", height=320,
                  margin=dict(l=10, r=10, t=50, b=10), title="Mean self-rank for each k")
show_figure(fig, "validate_selfrank", f"self_rank_vs_truncation-{Path(path).name}", c2)

# ---- proper tests -------------------------------------------------------------------------------------
st.subheader("2. Proper tests: do the expected tasks score higher?")
n_all = len(run.test_tasks)
max_tests = (st.slider("How many test tasks this check and the next use (the first ones)", min(16, n_all), n_all, min(128, n_all),
                       step=16 if n_all >= 32 else 1, key="validate_tests")
             if n_all > 16 else n_all)  # 16 or fewer: all of them (a slider needs min < max)  # fmt: skip
rep = report(path, max_tests)
st.write(
    "For each test task, a **proper test** checks whether the training tasks expected to matter (say, real tasks rather "
    "than pure-noise tasks) get a higher average score than the rest. By chance about half the test tasks would pass; "
    "z measures how far the count lies from that half, in units of the spread that chance alone gives; "
    f"|z| ≥ {SIGNIFICANT:g} happens by chance only about once in 20 tries, so it counts as significant."
)
rows = []
if "proper" in rep.get("noise", {}):
    rows.append(("real tasks (against pure-noise tasks)", rep["noise"]))
elif "noise" in rep:
    st.info(f"Noise test not run: {rep['noise']['skipped']}.")
for s in rep.get("superclass", []):
    if s["total"]:
        n = s["min_shared"]
        rows.append((f"tasks sharing {n} or more superclass{'es' if n > 1 else ''} with the test task (against the other real tasks)", s))
if rows:
    table = pd.DataFrame([{
        "Expected to score higher": what,
        "Passed": f"{r['proper']} of {r['total']} test tasks",
        "z": signed(r["z"], 2) + "σ",
        "Verdict": proper_test_verdict(r["z"], SIGNIFICANT),
    } for what, r in rows])  # fmt: skip
    st.table(table, hide_index=True, alt="Proper tests: what is expected to score higher, how many test tasks passed, z and verdict")
    reading = superclass_reading([(s["min_shared"], s["z"]) for s in rep.get("superclass", []) if s["total"]], SIGNIFICANT)
    if reading:
        st.caption(reading)

# ---- Gauss-Newton versus exact --------------------------------------------------------------------------
st.subheader("3. Fast approximation versus exact computation")
agree = rep.get("exact_vs_gn", {})
if "skipped" in agree:
    st.info(f"Not computed for this model: with {inf.num_params:,} weights it is too large for the exact computation, "
            "which is feasible only for small networks.")
elif agree:
    st.write("The scores use a fast approximation of the model's curvature (Gauss-Newton). On a small model it can be "
             "checked against the exact computation: a correlation of 1 means the same scores.")
    a1, a2, a3 = st.columns(3)
    a1.metric("Pearson correlation of scores", f"{agree['pearson_mean']:.3f} ± {agree['pearson_sd']:.3f}",
              help=f"TLXML reports {agree['paper_pearson']}")
    a2.metric("Spearman correlation (of ranks)", f"{agree['spearman_mean']:.3f}")
    overlap = next(v for k_, v in agree.items() if k_.startswith("top") and k_.endswith("_overlap_mean"))
    a3.metric("Same top 10 %", percent(overlap, 0), help="Share of the top tenth of tasks that both methods put there")

with st.expander("For researchers: where these checks come from"):
    st.markdown(
        "- Self-rank: TLXML §5.1.1; mean self-rank against the truncation k: TLXML B.3.\n"
        "- Proper tests (noise against normal tasks, superclass overlap): TLXML §5.1.2–5.1.3, z from the binomial "
        "count of test tasks passing, σ = √(T/4). Noise tasks are left out of both superclass groups.\n"
        "- Gauss-Newton against the exact meta-Hessian: TLXML B.3 (the paper reports a Pearson correlation of 0.715 ± 0.092)."
        + (f"\n- Exact comparison skipped: {agree['skipped']}." if "skipped" in agree else "")
    )
