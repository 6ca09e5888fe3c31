"""Compare: two influence methods' rankings for one test task, side by side, and how much they agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from metainf_core import jobs
from metainf_core.compare import METHODS, compare_methods, scores_on_disk, test_task_entry
from metainf_core.ranking import Target, ranking_table
from metainf_core.lds_results import best_lds_method, compare_sentence
from metainf_core.words import METHOD_HELP, method_name, percent, signed
from ui import (
    COMPARE_CONFIG as CFG,
    TABLE_STAGES,
    describe_task,
    get_run,
    last_job_note,
    remember_job,
    require_influence,
    require_run,
    running_job,
    show_figure,
    task_alt,
    task_strip,
    test_task_picker,
)

st.set_page_config(page_title="metainf · Compare", layout="wide")
st.title("Compare influence methods")
st.caption("One method's ranking is an opinion: here two methods rank the same training tasks for the same test task. "
           "Positive score = the training task helped (up-weighting it lowers the test loss), for every method.")
path, run = require_run(uses_test_task=True)
# tlxml-gn then shares the app's cached fit; dense solves only (ui.COMPARE_CONFIG), so above q = 5,000 the page
# says why task-IF is left out; a test task's scores come from the run's test tables when it has them (the demos ship theirs)
reasons = {name: m.skip_reason(run, CFG) for name, m in METHODS.items()}
names = [n for n, r in reasons.items() if not r]
if len(names) < 2:
    st.warning("Fewer than two methods apply to this model: " + "; ".join(f"{method_name(n)}: {r}" for n, r in reasons.items() if r))
    st.stop()

n_test = len(run.test_tasks)
c1, c2, c3, c4 = st.columns([1.2, 2, 2, 1])
test_id = test_task_picker(n_test, c1)
a = c2.selectbox("Method A", names, index=names.index("tlxml-gn") if "tlxml-gn" in names else 0, key="compare_a",
                 format_func=method_name)
b = c3.selectbox("Method B", names, index=names.index("grad-sim") if "grad-sim" in names else 1, key="compare_b",
                 format_func=method_name)
c2.caption(METHOD_HELP.get(a, ""))
c3.caption(METHOD_HELP.get(b, ""))
k = int(c4.number_input("Tasks shown", 3, 10, 5, key="compare_k"))
skipped = {n: r for n, r in reasons.items() if r}
if skipped:
    st.caption("Not applicable to this model: " + "; ".join(f"**{method_name(n)}**" for n in skipped)
               + " (see “For researchers” below for why).")
st.markdown(compare_sentence(best_lds_method(run)))  # before any scoring: which method retraining bears out on models trained like this one
if a == b:
    st.info("Choose two different methods.")
    st.stop()
if "tlxml-gn" in (a, b):
    require_influence(path, run)  # offers the fit, with progress, when it is not cached yet


def start_table(path: str, name: str) -> None:
    """Score every test task with method ``name`` in the background (or join the job doing it)."""
    remember_job(jobs.submit_compare_table(get_run(path), name, CFG))


def start_test_task(path: str, name: str, test_id: int) -> None:
    """Score this test task only with method ``name`` in the background (or join the job doing it)."""
    remember_job(jobs.submit_compare_test_task(get_run(path), name, CFG, test_id))


# Each method's scores come from its test table (every test task at once; the demos ship theirs) or from
# this test task's stored scores: a method with neither is scored by a background job, started with a click.
missing = [n for n in (a, b) if not scores_on_disk(run, n, CFG, test_id)]
for n in missing:
    table_job = jobs.job_status(jobs.compare_table_entry(run, n, CFG))
    one_job = jobs.job_status(test_task_entry(run, n, CFG, test_id).directory)
    running = table_job if table_job is not None and table_job.active else one_job
    words = (f"Scoring all {len(run.train_tasks)} training tasks with {method_name(n)} in the background "
             f"({'for each of the ' + str(n_test) + ' test tasks' if running is table_job else f'for test task {test_id}'}): "
             "you can use other pages; the comparison appears here when it ends.")
    if not running_job(running, TABLE_STAGES, f"scoring with {method_name(n)}", words):
        st.info(f"{method_name(n)} has not scored this model's training tasks for test task {test_id} yet. Score this test "
                f"task alone, or all {n_test} test tasks at once (longer; afterwards every test task compares at once). "
                "Both run in the background and are kept.")
        last_job_note(table_job, f"Scoring with {method_name(n)}", "; the test tasks already scored are kept")
        last_job_note(one_job, f"Scoring test task {test_id} with {method_name(n)}")
        o1, o2 = st.columns(2)
        o1.button(f"Score test task {test_id}", key=f"compare_one_{n}", type="primary", on_click=start_test_task,
                  args=(path, n, test_id), width="stretch", help=f"With {method_name(n)}, this test task only")
        o2.button(f"Score all {n_test} test tasks", key=f"compare_table_{n}", on_click=start_table, args=(path, n),
                  width="stretch", help=f"With {method_name(n)}, every test task (longer)")
if missing:
    st.stop()


@st.cache_data(show_spinner="Reading both methods' scores…", max_entries=64)
def comparison(path: str, test_id: int, a: str, b: str, k: int) -> dict:
    return compare_methods(get_run(path), Target((test_id,)), [a, b], k, CFG)


res = comparison(path, test_id, a, b, k)
pair = res["pairs"][0]
st.markdown(f"**Test task {test_id}** — {describe_task(path, 'test', test_id)}")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Same order? (Spearman)", signed(pair["spearman"], 2),
          help="Do the two methods rank all training tasks in the same order? +1 = the same order, 0 = unrelated, -1 = reversed")
m2.metric("Same scores? (Pearson)", signed(pair["pearson"], 2),
          help="Do the scores themselves rise and fall together? +1 = in step, 0 = unrelated")
m3.metric(f"Same {res['k']} most helpful", percent(pair["top_k_helpful_overlap"], 0),
          help=f"Share of the {res['k']} most helpful tasks that both methods name")
m4.metric(f"Same {res['k']} most harmful", percent(pair["top_k_harmful_overlap"], 0),
          help=f"Share of the {res['k']} most harmful tasks that both methods name")
st.caption("A correlation near 0 means the two methods tell different stories about this test task. When they disagree, "
           "prefer the one you can check: the Validate page tests TLXML's rankings on this model (does a training task "
           "find itself, do pure-noise tasks score apart).")

scores = {n: np.asarray(res["methods"][n]["scores"]) for n in (a, b)}
cols = st.columns(2)
for col, n in zip(cols, (a, b), strict=True):
    other = b if n == a else a
    (_, ranks), (_, other_ranks) = ranking_table(scores[n]), ranking_table(scores[other])  # 0 = most helpful
    for which, title in (("most_helpful", "most helpful"), ("most_harmful", "most harmful")):
        col.markdown(f"#### {method_name(n)}: {k} {title}")
        for j in res["methods"][n][which]:
            img = task_strip(path, "train", int(j), scale=1, per_class=5)
            if img is not None:
                col.image(img, output_format="PNG", alt=task_alt(path, "train", int(j)))
            col.caption(f"#{ranks[j] + 1} · training task {j} · score {signed(scores[n][j])} · "
                        f"rank by {method_name(other)}: #{other_ranks[j] + 1} · {describe_task(path, 'train', int(j))}")

fig = go.Figure(go.Scatter(x=scores[a], y=scores[b], mode="markers", name="training tasks", marker=dict(size=5, color="#455a64", opacity=0.6),
                           text=[f"task {j}" for j in range(len(scores[a]))]))
noise = run.train_tasks.ids_with("noise")
if len(noise):
    fig.add_trace(go.Scatter(x=scores[a][noise], y=scores[b][noise], mode="markers", name="noise tasks",
                             marker=dict(size=7, color="#6a1b9a", symbol="x")))
fig.update_layout(title=f"Scores of all {len(scores[a])} training tasks", xaxis_title=method_name(a), yaxis_title=method_name(b), height=380,
                  margin=dict(l=10, r=10, t=40, b=10), showlegend=bool(len(noise)))
show_figure(fig, "compare_scatter", f"compare-{Path(path).name}-{a}-{b}-test{test_id}")
with st.expander("For researchers: the methods as the papers define them"):
    st.markdown("\n".join(f"- **{method_name(n)}** (`{n}`): {m.summary}" + (f" — not applicable here: {reasons[n]}" if reasons[n] else "")
                           for n, m in METHODS.items()))
