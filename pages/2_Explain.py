"""Explain: which training tasks helped or hurt a chosen test task (TLXML Eq. 9, 12)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from metainf_core.explain import Target, all_scores, group_scores, plain_summary, ranking_table, task_rows
from ui import DEFAULT_INFLUENCE, describe_task, require_influence, require_run, show_figure, task_strip

st.set_page_config(page_title="metainf · Explain", layout="wide")
st.title("Explain a test task")
path, run = require_run()
inf = require_influence(path, run)
n_test = len(run.test_tasks)

# ---- choose a test task: URL ?test=ID, number input, random, or the gallery ---------------------
if "explain_test" not in st.session_state:
    q = str(st.query_params.get("test", "0"))
    st.session_state["explain_test"] = min(int(q), n_test - 1) if q.isdigit() else 0
c1, c2, c3 = st.columns([2, 1, 3])
c1.number_input(f"Test task (0–{n_test - 1})", 0, n_test - 1, key="explain_test")
if c2.button("Random task", key="explain_random"):
    st.session_state["explain_test"] = int(np.random.default_rng().integers(n_test))
    st.rerun()
k = c3.slider("Tasks shown at each end", 3, 15, 5, key="explain_k")
test_id = int(st.session_state["explain_test"])
st.query_params["test"] = str(test_id)

with st.expander("Browse test tasks"):
    cols = st.columns(4)
    for n, i in enumerate(range(min(n_test, 12))):
        with cols[n % 4]:
            strip = task_strip(path, "test", i, scale=1, per_class=2)
            if strip is not None:
                st.image(strip, output_format="PNG")
            if st.button(f"Task {i}: {describe_task(path, 'test', i)}", key=f"explain_pick_{i}"):
                st.session_state["explain_test"] = i
                st.rerun()

st.subheader(f"Test task {test_id}")
st.caption(describe_task(path, "test", test_id))
strip = task_strip(path, "test", test_id, scale=3)
if strip is not None:
    st.image(strip, output_format="PNG", caption="support images, one class after another")

# ---- ranking ----------------------------------------------------------------------------------
scores = all_scores(run, inf, Target((test_id,)), DEFAULT_INFLUENCE.dtype)
order, ranks = ranking_table(scores)
helpful = task_rows(run, order[:k], scores[order[:k]], ranks[order[:k]])
harmful = task_rows(run, order[::-1][:k], scores[order[::-1][:k]], ranks[order[::-1][:k]])
st.success(plain_summary(helpful, harmful))
st.caption(
    "Score = helpfulness = −I_perf: positive means giving that training task more weight would lower this "
    f"test task's loss. TLXML Gauss-Newton fit over {inf.num_tasks} training tasks, {inf.truncation} eigen-directions kept."
)


def show_rows(rows: list[dict], title: str) -> None:
    st.markdown(f"#### {title}")
    for r in rows:
        a, b = st.columns([3, 2])
        img = task_strip(path, "train", r["task"], scale=2, rows=True)
        if img is not None:
            a.image(img, output_format="PNG")
        tag = f" · **{r['corruption']}**" if r["corruption"] != "none" else ""
        b.markdown(
            f"**#{r['rank'] + 1}** · training task {r['task']} · score {r['helpfulness']:+.3g}{tag}  \n"
            + ", ".join(f"{c} ({s})" for c, s in zip(r["classes"], r["superclasses"], strict=True))
        )


left, right = st.columns(2)
with left:
    show_rows(helpful, f"{k} most helpful")
with right:
    show_rows(harmful, f"{k} most harmful")

# ---- side by side ----------------------------------------------------------------------------------
st.markdown("#### Compare a training task with the test task")
choices = [r["task"] for r in helpful + harmful]
picked = st.selectbox("Training task", choices, format_func=lambda j: f"task {j} (rank {int(ranks[j]) + 1}, score {scores[j]:+.3g})",
                      key="explain_compare")
a, b = st.columns(2)
for col, split, tid, title in ((a, "test", test_id, f"Test task {test_id}"), (b, "train", int(picked), f"Training task {picked}")):
    col.markdown(f"**{title}** — {describe_task(path, split, tid)}")
    img = task_strip(path, split, tid, scale=3, rows=True)
    if img is not None:
        col.image(img, output_format="PNG")

# ---- charts -------------------------------------------------------------------------------------
c1, c2 = st.columns(2)
fig = go.Figure(go.Histogram(x=scores, nbinsx=60, name="all training tasks", marker_color="#9aa5b1"))
for rows, colour, name in ((helpful, "#2e7d32", "most helpful"), (harmful, "#c62828", "most harmful")):
    fig.add_trace(go.Scatter(x=[r["helpfulness"] for r in rows], y=[0] * len(rows), mode="markers", name=name,
                             marker=dict(color=colour, size=11, symbol="triangle-up"), text=[f"task {r['task']}" for r in rows]))
noise = run.train_tasks.ids_with("noise")
if len(noise):
    fig.add_trace(go.Scatter(x=scores[noise], y=[0] * len(noise), mode="markers", name="noise tasks",
                             marker=dict(color="#6a1b9a", size=6, symbol="x"), text=[f"task {j}" for j in noise]))
fig.update_layout(title=f"Helpfulness of all {len(scores)} training tasks", xaxis_title="helpfulness", yaxis_title="tasks",
                  height=340, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h"))
show_figure(fig, "explain_hist", f"helpfulness_test{test_id}", c1)

groups = group_scores(run, scores)
gfig = go.Figure(go.Bar(x=list(groups.values()), y=list(groups.keys()), orientation="h",
                        marker_color=["#2e7d32" if v > 0 else "#c62828" for v in groups.values()]))
gfig.update_layout(title="Summed helpfulness by superclass set (TLXML A.3)", height=340, margin=dict(l=10, r=10, t=40, b=10),
                   yaxis=dict(autorange="reversed"))
show_figure(gfig, "explain_groups", f"superclasses_test{test_id}", c2)

table = pd.DataFrame(task_rows(run, order, scores[order], ranks[order]))
st.download_button("Download the full ranking (CSV)", table.to_csv(index=False), f"ranking_test{test_id}.csv", "text/csv", key="explain_csv")
st.session_state["explain_ranking"] = {"test": test_id, "order": order.tolist()}
