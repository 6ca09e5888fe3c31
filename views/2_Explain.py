"""Explain: which training tasks helped or hurt a chosen test task (TLXML Eq. 9, 12)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from metainf_core.ranking import Target, group_scores, ranking_table, score_parts, task_rows
from metainf_core.words import class_list, corruption_name, ranking_summary, score, signed
from ui import (
    DEFAULT_INFLUENCE,
    describe_task,
    drilldown_section,
    require_influence,
    require_run,
    set_test_task,
    show_figure,
    task_alt,
    task_strip,
    test_task_picker,
)

st.set_page_config(page_title="metainf · Explain", layout="wide")
st.title("Explain a test task")
path, run = require_run(uses_test_task=True)
inf = require_influence(path, run)
n_test = len(run.test_tasks)
ORDERS = {
    "Score": "helpfulness",
    "Alignment only": "alignment",
}

# ---- choose a test task: URL ?test=ID, number input, random, or the gallery ---------------------
c1, c2, c3 = st.columns([2, 2, 3])
test_id = test_task_picker(n_test, c1)
order_by = c2.radio("Order training tasks by", list(ORDERS), horizontal=True, key="explain_order",
                    help="Score = size × alignment. Alignment only ignores how strongly a task pulls on the model.")
k = c3.slider("Tasks shown at each end", 3, 15, 5, key="explain_k")

GALLERY_PAGE = 12  # test tasks per page of the gallery
with st.expander("Browse test tasks (click one to explain it)"):
    pages = -(-n_test // GALLERY_PAGE)
    page = int(st.number_input(f"Page (of {pages}; {GALLERY_PAGE} test tasks each)", 1, pages, 1, key="explain_gallery_page"))
    cols = st.columns(4)
    for n, i in enumerate(range((page - 1) * GALLERY_PAGE, min(n_test, page * GALLERY_PAGE))):
        with cols[n % 4]:
            strip = task_strip(path, "test", i, scale=2, per_class=2)
            if strip is not None:
                st.image(strip, output_format="PNG", alt=task_alt(path, "test", i))
            st.caption(describe_task(path, "test", i))
            st.button(f"Test task {i}", key=f"explain_pick_{i}", on_click=set_test_task, args=(i,), width="stretch",
                      type="primary" if i == test_id else "secondary")

st.subheader(f"Test task {test_id}")
st.caption(describe_task(path, "test", test_id))
strip = task_strip(path, "test", test_id, scale=3)
if strip is not None:
    st.image(strip, output_format="PNG", caption="support images, one class after another", alt=task_alt(path, "test", test_id))

# ---- ranking ----------------------------------------------------------------------------------
parts = score_parts(run, inf, Target((test_id,)), DEFAULT_INFLUENCE.dtype)
scores = parts["helpfulness"]


def size_words(j: int) -> str:
    """A task's size as a person can read it: how many training tasks it is bigger than (a count,
    so the largest never reads "bigger than 100 %")."""
    smaller, m = int((parts["size"] < parts["size"][j]).sum()), len(parts["size"])
    return f"the largest of all {m} training tasks" if smaller == m - 1 else f"bigger than {smaller} of the {m} training tasks"


order, ranks = ranking_table(parts[ORDERS[order_by]])
helpful = task_rows(run, order[:k], scores[order[:k]], ranks[order[:k]])
harmful = task_rows(run, order[::-1][:k], scores[order[::-1][:k]], ranks[order[::-1][:k]])
st.success(ranking_summary(helpful, harmful, ORDERS[order_by]))

with st.expander("What the numbers mean: score, size and alignment", expanded=False):
    st.markdown(
        "- **Score** (helpfulness): how much this test task's loss would fall if the training task had counted a "
        "little more in training. Positive = it helped, negative = it hurt.\n"
        "- Every score is **size × alignment** (× the test task's own size, the same for all rows):\n"
        "  - **size**: how hard the training task pulls on the model at all, whatever the test task. Odd tasks, "
        "such as pure-noise tasks, often pull hard.\n"
        "  - **alignment**: whether that pull points the way this test task needs, from -1 (exactly against) "
        "to +1 (exactly along).\n"
        "- A task can rank near the top because it is big, not because it is relevant: order by **alignment only** to see "
        "the tasks most like this test task regardless of size.\n"
        "- That is also why a **pure-noise task** can rank among the most helpful or the most harmful: it pulls very hard "
        "(large size), so even a slight alignment, either way, gives it a large score."
    )
with st.expander("For researchers: how the scores are computed", expanded=False):
    st.markdown(
        f"TLXML with a Gauss-Newton fit over {inf.num_tasks} training tasks, {inf.truncation} directions kept (TLXML Eq. 9, 12). "
        "Alignment is the cosine of the two gradients in the metric of the fitted curvature (RelatIF-style normalisation); "
        "size is the training task's gradient norm in that metric."
    )


def show_rows(rows: list[dict], title: str, key: str) -> None:
    st.markdown(f"#### {title}")
    for r in rows:
        j = r["task"]
        a, b = st.columns([3, 2])
        img = task_strip(path, "train", j, scale=2, rows=True)
        if img is not None:
            a.image(img, output_format="PNG", alt=task_alt(path, "train", j))
        what = corruption_name(r["corruption"])  # "" for a normal task
        labels = ", ".join(f"{c} ({s})" for c, s in zip(r["classes"], r["superclasses"], strict=True))
        b.markdown(
            f"**#{r['rank'] + 1}** · training task {j}" + (f" · **{what}**" if what else "") + "  \n"
            f"score {score(r['helpfulness'])} · size: {size_words(j)} · "
            f"alignment {signed(parts['alignment'][j], 2)}  \n"
            + (f"labelled {labels}" if what else labels)
        )
        b.button("Which images?", key=f"{key}_drill_{j}", on_click=open_drilldown, args=(j,),
                 help="Show which of this task's images carry its score")


def open_drilldown(j: int) -> None:
    """The "Which images?" callback: this task in the drill-down below, and opened at once in a dialog."""
    st.session_state["explain_drill"] = j
    st.session_state["explain_drill_dialog"] = j


@st.dialog("Which images carry the score?", width="large")
def drilldown_dialog(j: int) -> None:
    drilldown_section(path, run, inf, test_id, j)


titles = ((f"{k} most helpful", f"{k} most harmful") if ORDERS[order_by] == "helpfulness"
          else (f"{k} most aligned with this test task", f"{k} most opposed to it"))
left, right = st.columns(2)
with left:
    show_rows(helpful, titles[0], "helpful")
with right:
    show_rows(harmful, titles[1], "harmful")

asked = st.session_state.pop("explain_drill_dialog", None)
if asked is not None:  # shown where it was asked for: over the row whose button was pressed
    drilldown_dialog(int(asked))

# ---- one training task beside the test task, down to its images ---------------------------------
st.markdown("#### Look inside a training task")
choices = [r["task"] for r in helpful + harmful]
if st.session_state.get("explain_drill") not in choices:
    st.session_state["explain_drill"] = choices[0]
picked = int(st.selectbox("Training task", choices, key="explain_drill",
                          format_func=lambda j: f"task {j} (#{int(ranks[j]) + 1}, score {score(scores[j])})"))
drilldown_section(path, run, inf, test_id, picked)

# ---- charts -------------------------------------------------------------------------------------
c1, c2 = st.columns(2)
fig = go.Figure(go.Histogram(x=scores, nbinsx=60, name="all training tasks", marker_color="#9aa5b1"))
for rows, colour, name in ((helpful, "#2e7d32", "shown as most helpful"), (harmful, "#c62828", "shown as most harmful")):
    fig.add_trace(go.Scatter(x=[r["helpfulness"] for r in rows], y=[0] * len(rows), mode="markers", name=name,
                             marker=dict(color=colour, size=11, symbol="triangle-up"), text=[f"task {r['task']}" for r in rows]))
noise = run.train_tasks.ids_with("noise")
if len(noise):
    fig.add_trace(go.Scatter(x=scores[noise], y=[0] * len(noise), mode="markers", name="noise tasks",
                             marker=dict(color="#6a1b9a", size=6, symbol="x"), text=[f"task {j}" for j in noise]))
fig.update_layout(title=f"Scores of all {len(scores)} training tasks", xaxis_title="score (helpfulness)", yaxis_title="tasks",
                  height=380, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))
fig.update_layout(title=dict(y=0.98, yanchor="top"), margin=dict(t=80))
show_figure(fig, "explain_hist", f"scores-{Path(path).name}-test{test_id}", c1)

groups = group_scores(run, scores)
gfig = go.Figure(go.Bar(x=list(groups.values()), y=list(groups.keys()), orientation="h",
                        marker_color=["#2e7d32" if v > 0 else "#c62828" for v in groups.values()]))
gfig.update_layout(title="Summed score by the superclasses a training task holds", height=380, margin=dict(l=10, r=10, t=40, b=10),
                   yaxis=dict(autorange="reversed", automargin=True), xaxis_title="summed score")
show_figure(gfig, "explain_groups", f"superclasses-{Path(path).name}-test{test_id}", c2)

rank_by_score = ranking_table(scores)[1]
table = pd.DataFrame(task_rows(run, order, scores[order], rank_by_score[order] + 1)).rename(columns={"rank": "rank_by_score"})
table.insert(3, "size", parts["size"][order])
table.insert(4, "alignment", parts["alignment"][order])
for col in ("classes", "superclasses"):  # one readable cell: "Trouser; Sandal; Pullover"
    table[col] = table[col].map(class_list)
st.download_button("Download the full ranking (CSV)", table.to_csv(index=False), f"ranking-{Path(path).name}-test{test_id}.csv", "text/csv", key="explain_csv",
                   help="Every training task, in the order shown; rank 1 = most helpful by score")
st.session_state["explain_ranking"] = {"test": test_id, "order": order.tolist()}
