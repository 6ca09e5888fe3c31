"""Audit: which training tasks look suspicious, and what happens if they are dropped (seed 001 §6.3).

The whole training taskset is ordered by one of ``detect.SCORE_KINDS`` (the scores and detection
curve of the ``detect`` CLI), and removing the k most suspicious tasks by the one-step edit is
compared with removing k random ones (``detect.removal_effect``). Nothing is removed until the button
is pressed: its settings are kept under the non-widget key ``audit_request`` (set in its callback).
Sets not yet evaluated are tested by a background job (``jobs.submit_removal``): the page shows its
progress and reads the saved metrics when it ends; a default removal on a demo is shipped.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from metainf_core import jobs
from metainf_core.detect import (
    corrupted_ids,
    curve_verdict,
    detection_curve,
    detection_scores,
    removal_effect,
    removal_evaluated,
    removal_sets,
    removal_verdict,
    stored_blocked_evaluation,
)
from metainf_core.edit import EditSpec, edited_checkpoint_zip, edited_params
from metainf_core.exceptions import ConfigError
from metainf_core.fits import test_scores_entry
from metainf_core.ranking import fit_test_table, task_rows
from metainf_core.words import (
    CHANGE_DIGITS,
    CORRUPTIONS,
    SIGNIFICANT_SD,
    class_list,
    corruption_name,
    interval_words,
    percent,
    signed,
)
from metainf_core.words import points as points_
from ui import (
    DEFAULT_INFLUENCE,
    REMOVAL_STAGES,
    describe_task,
    influence_config,
    last_job_note,
    remember_job,
    running_job,
    require_influence,
    require_run,
    show_figure,
    task_alt,
    task_strip,
)

GALLERY, PER_ROW = 12, 4  # most suspicious tasks shown as thumbnails
DRAWS, SEED = 5, 0  # random removal sets compared with (detect's defaults)
XI_RANGE = (-8.0, -0.25)
REQUEST = "audit_request"  # the settings the removal button was pressed with (non-widget key)

st.set_page_config(page_title="metainf · Audit", layout="wide")
st.title("Audit the training tasks")
st.write("Which training tasks look suspicious, and what would happen to the model if you dropped them? "
         "A **training task** is one of the small problems the model learned from (tell a few classes apart from a handful "
         "of images each); the **test tasks** are new problems, on classes it never saw, that measure how well it learned.")
path, run = require_run()
inf = require_influence(path, run)
m, n_test, model = inf.num_tasks, len(run.test_tasks), Path(path).name
try:
    bad = corrupted_ids(run)  # planted on purpose when the taskset was made: the answer key
except ConfigError:
    bad = np.zeros(0, dtype=np.int64)
CORRUPTED = {int(j): kind for kind in CORRUPTIONS for j in run.train_tasks.ids_with(kind)}  # id -> "noise" / "label_flip"

# radio label -> (detect score kind, the number shown per task, how to read it, what it means)
SCORES = {
    "Size (self-influence)": (
        "self", "self-influence", "larger = pulls harder",
        "**Size**: how hard a training task pulls on the model, whatever the test task (the task's influence on "
        "itself, *self-influence*). A task unlike all the others, such as pure-noise images or shuffled labels, needs "
        "a big pull to be fitted at all. Most suspicious = biggest.",
    ),
    "Average harm over the test tasks": (
        "mean", "average helpfulness", "negative = it hurt the test tasks",
        "**Average harm**: how much a training task helped all test tasks together (its *helpfulness*: how much "
        "lower the average test loss, the model's error, would be had the task counted a little more in training). "
        "Most suspicious = most negative, the tasks that hurt the test tasks most.",
    ),
    "Average rank": (
        "rank", "average rank", f"0 = most harmful, {m - 1} = most helpful",
        f"**Average rank**: for every test task, all training tasks are ranked from most harmful (0) to most helpful "
        f"({m - 1}), and each task's ranks are averaged. Every test task gets one equal vote, however large its own "
        "scores. Most suspicious = lowest average rank.",
    ),
}  # fmt: skip
KIND_LABEL = {v[0]: label for label, v in SCORES.items()}
DEFAULT_K = min(m - 1, len(bad) or max(1, m // 8))  # the corrupted tasks when known, else 1/8 of the tasks


# ---- cached computations -----------------------------------------------------------------------------
@st.cache_data(show_spinner="Scoring every training task for every test task…", max_entries=8)
def test_table(path: str) -> np.ndarray:
    """T × M helpfulness for each test task (``ranking.fit_test_table``): on disk once per run and fit."""
    return fit_test_table(run, inf, DEFAULT_INFLUENCE.dtype, test_scores_entry(run, influence_config(path)))


@st.cache_data(show_spinner="Scoring every training task…", max_entries=16)
def suspicion(path: str, kind: str) -> np.ndarray:
    """detect's score: the task inspected first has the lowest value (``detect.detection_scores``)."""
    return detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, kind, None if kind == "self" else test_table(path))


@st.cache_data(show_spinner=False, max_entries=64)
def blocked(path: str, ids: tuple[int, ...], xi: float):  # noqa: ANN201 - TaskMetrics
    """Test metrics with ``ids`` removed at ξ, on disk once per run (``detect.stored_blocked_evaluation``):
    the random draws serve every score kind, and the demos ship their default ones."""
    return stored_blocked_evaluation(run, inf, influence_config(path), ids, xi)


def removal(path: str, kind: str, k: int, xi: float) -> dict:
    """``detect.removal_effect`` for one k and ξ: the k most suspicious vs DRAWS random k-sets, read from
    their saved metrics (``blocked``; the removal job or a shipped copy made them). Not cached itself:
    another score kind reuses the random draws and evaluates only its own set."""
    return removal_effect(run, inf, suspicion(path, kind), [k], xis=[xi], random_draws=DRAWS, seed=SEED,
                          corrupted=bad if len(bad) else None, before=run.as_trained,
                          evaluate=lambda ids, xi: blocked(path, tuple(int(j) for j in ids), xi))


def sets_for(path: str, kind: str, k: int) -> list[np.ndarray]:
    """The k most suspicious by ``kind``, then the DRAWS random k-sets (``detect.removal_sets``)."""
    return removal_sets(suspicion(path, kind), k, DRAWS, SEED)


def start_removal(path: str, kind: str, k: int, xi: float) -> None:
    """Test the sets not yet on disk in the background (or join the job already testing them)."""
    sets = sets_for(path, kind, k)
    if not removal_evaluated(run, influence_config(path), sets, xi):
        remember_job(jobs.submit_removal(run, influence_config(path), sets, xi))


def shown_values(kind: str, scores: np.ndarray) -> np.ndarray:
    """The number a person reads: self-influence itself (detect negates it to inspect it first)."""
    return -scores if kind == "self" else scores


def fmt(kind: str, value: float) -> str:
    return {"rank": f"{value:.1f}", "self": f"{value:.3g}"}.get(kind) or signed(value)


def pct(x: float) -> str:
    return percent(x, CHANGE_DIGITS)


def points(x: float) -> str:
    return points_(x, CHANGE_DIGITS)  # ASCII sign: st.metric reads it for the arrow and colour


# ---- 1. order by a suspicion score ---------------------------------------------------------------------
st.subheader("1. Order the training tasks by suspicion")
label = st.radio("Suspicion score", list(SCORES), horizontal=True, key="audit_score",
                 help="What makes a training task suspicious; the page explains the chosen one below")
kind, value_name, reading, meaning = SCORES[label]
st.markdown(meaning)
with st.expander("Why a task can be influential without being harmful", expanded=False):
    st.markdown(
        "A task's influence has a **size** and a **direction**. A big task pulls the model hard, but it only hurts a "
        "test task when it pulls *against* what that test task needs; a pull at right angles to it does neither good "
        "nor harm. On the bundled demos, pure-noise tasks are 4–6× bigger than normal ones yet point at nearly right "
        "angles to every test task: **Size** finds them, **Average harm** hardly notices them, and removing them changes "
        "test accuracy little. Use Size to find broken tasks, Average harm (or Average rank) to find the tasks whose "
        "removal should help the test tasks."
    )
scores = suspicion(path, kind)
values = shown_values(kind, scores)
order = np.argsort(scores, kind="stable")  # most suspicious first: detect's inspection order

top = [int(j) for j in order[:GALLERY]]
n_flagged = sum(j in CORRUPTED for j in top)
known = (f" {n_flagged} of them are known corrupted tasks (the training taskset holds {len(bad)} of {m}, "
         f"{percent(len(bad) / m)})." if len(bad) else "")
st.markdown(f"#### The {len(top)} most suspicious of {m} training tasks")
st.caption(f"Most suspicious first; {value_name}: {reading}.{known}")
for start in range(0, len(top), PER_ROW):
    for n, (col, j) in enumerate(zip(st.columns(PER_ROW), top[start : start + PER_ROW]), start + 1):
        img = task_strip(path, "train", j, scale=1, per_class=3)
        if img is not None:
            col.image(img, output_format="PNG", alt=task_alt(path, "train", j))
        flag = f" · **{corruption_name(CORRUPTED[j])}**" if j in CORRUPTED else ""
        col.markdown(f"**#{n}** · training task {j}{flag}  \n{value_name} {fmt(kind, values[j])}")
        col.caption(describe_task(path, "train", j))


def ordering_csv() -> str:
    """Every training task, most suspicious first (built when the button is clicked)."""
    rows = pd.DataFrame(task_rows(run, order, values[order], np.arange(1, m + 1)))
    for col in ("classes", "superclasses"):  # one readable cell: "Trouser; Sandal; Pullover"
        rows[col] = rows[col].map(class_list)
    return rows.rename(columns={"helpfulness": value_name}).to_csv(index=False)


st.download_button("Download the full ordering (CSV)", ordering_csv, f"suspicion-{model}-{kind}.csv", "text/csv",
                   key="audit_csv", on_click="ignore", icon=":material/download:",
                   help="All training tasks, most suspicious first (rank 1), with their classes and known corruption")

c1, c2 = st.columns(2)
hist = go.Figure()
groups = [("normal tasks", "#9aa5b1", [j for j in range(m) if j not in CORRUPTED])]
groups += [(corruption_name(kind, 2), colour, [j for j, c in CORRUPTED.items() if c == kind])
           for kind, colour in (("noise", "#6a1b9a"), ("label_flip", "#ef6c00"))]
for name, colour, ids in groups:
    if ids:
        hist.add_trace(go.Histogram(x=values[ids], name=name, marker_color=colour, nbinsx=60, bingroup="all"))
hist.update_layout(barmode="group", title=f"{value_name.capitalize()} of all {m} training tasks",
                   xaxis_title=f"{value_name} ({reading})", height=380, margin=dict(l=10, r=10, t=80, b=10),
                   yaxis=dict(title="tasks (log scale: single tasks stay visible)", type="log", dtick=1),
                   legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0))
show_figure(hist, "audit_hist", f"suspicion-{model}-{kind}", c1)

if len(bad):
    curve = detection_curve(scores, bad, m)  # as `python -m metainf_core detect --score KIND`
    x = 100 * curve.inspected
    fig = go.Figure([
        go.Scatter(x=x, y=100 * (curve.random + curve.random_sd), mode="lines", line=dict(width=0), showlegend=False,
                   hoverinfo="skip"),
        go.Scatter(x=x, y=100 * np.maximum(curve.random - curve.random_sd, 0), mode="lines", line=dict(width=0),
                   fill="tonexty", fillcolor="rgba(120,120,120,0.2)", name="random order ± 1 sd"),
        go.Scatter(x=x, y=100 * curve.random, mode="lines", line=dict(dash="dash", color="#777"), name="random order"),
        go.Scatter(x=x, y=100 * curve.found, mode="lines", line=dict(color="#c62828"), name=f"in {label} order"),
    ])  # fmt: skip
    fig.update_layout(title=f"Known corrupted tasks found, going down the list (AUC {curve.auc:.3f})",
                      xaxis_title="training tasks inspected (%)", yaxis_title=f"of the {len(bad)} corrupted tasks found (%)",
                      height=380, margin=dict(l=10, r=10, t=80, b=10),
                      legend=dict(x=0.98, y=0.04, xanchor="right", yanchor="bottom"))
    show_figure(fig, "audit_curve", f"detection-{model}-{kind}", c2)
    found = curve_verdict(curve)
    c = found.num_corrupted
    t1, t2, t3 = st.columns(3)
    t1.metric("AUC", f"{found.auc:.3f}", help="Area under the red curve: 0.5 = no better than a random order, "
              f"{found.auc_max:.3f} = every corrupted task first")
    t2.metric("Distance from a random order", signed(found.auc_sigma, 1) + " sd",
              help="How many standard deviations (sd: the usual scatter of random orders) the AUC lies above 0.5; "
                   f"beyond ±{SIGNIFICANT_SD:g} is unlikely by chance")
    t3.metric(f"Found among the first {c}", f"{found.found_first:.0f} of {c}",
              help=f"A random order would find {found.random_first:.1f} ± {found.random_first_sd:.1f}")
    st.caption(f"This training taskset has {c} corrupted tasks planted on purpose when it was made (pure-noise images or "
               "shuffled labels), so we know the answer: the curve shows how many of them you would find reading the list "
               "from the most suspicious down. The dashed diagonal is what a random order finds; the grey band its usual scatter "
               f"(± 1 sd, standard deviation). The AUC, the area under the red curve, sums it up: 0.5 for a random order, "
               f"{found.auc_max:.3f} if every corrupted task came first. In the {label} order, {found.words}.")
else:
    c2.info("This training taskset records no corrupted tasks (noise or shuffled labels), so there is no answer key to "
            "check the ordering against.")


# ---- 2. remove the most suspicious: one-step edit vs random removals -------------------------------------
st.subheader("2. Remove the most suspicious tasks: does it do better than removing random ones?")
st.write("Pretend the k most suspicious training tasks had been left out of training, without retraining: the "
         "**one-step edit** moves the trained weights by ξ × each task's influence (ξ = -1 is about the same as removing "
         f"the task; see the Edit page). For comparison, {DRAWS} random sets of k tasks are removed the same way.")
if st.session_state.get("audit_for") != path:  # another model: other tasks, other defaults (before the widgets exist)
    st.session_state.pop(REQUEST, None)
    st.session_state.update(audit_for=path, audit_k=DEFAULT_K, audit_xi=-1.0)
st.session_state.setdefault("audit_k", DEFAULT_K)  # a widget's state is forgotten on other pages
st.session_state.setdefault("audit_xi", -1.0)


def request() -> None:
    """The button's callback: remember what to remove (read from the widgets, before the page reruns) and
    start testing the sets that are not on disk yet."""
    req = {"path": path, "kind": SCORES[st.session_state["audit_score"]][0], "k": int(st.session_state["audit_k"]),
           "xi": float(st.session_state["audit_xi"])}  # fmt: skip
    st.session_state[REQUEST] = req
    start_removal(path, req["kind"], req["k"], req["xi"])


q1, q2, q3 = st.columns([1, 2, 2], vertical_alignment="bottom")
k = int(q1.number_input("How many tasks (k)", 1, m - 1, key="audit_k",
                        help=f"Default: the number of known corrupted tasks ({len(bad)})" if len(bad)
                        else "Default: 1/8 of the training tasks"))
xi = q2.slider("ξ (-1 ≈ removed; lower = pushed further away)", *XI_RANGE, step=0.25, format="%.2f", key="audit_xi",
               help="Each removed task then counts (1 + ξ) times as much as in training")
q3.button(f"Remove the {k} most suspicious", type="primary", key="audit_remove", on_click=request, width="stretch",
          help=f"Test the model without them, and without {DRAWS} random sets of {k}")

req = st.session_state.get(REQUEST)
if not req or req["path"] != path:
    st.info(f"Nothing is removed yet: the model is as trained. Press “Remove the {k} most suspicious” to compare.")
    st.stop()

rk, rkind, rxi, rlabel = req["k"], req["kind"], req["xi"], KIND_LABEL[req["kind"]]
mean_helpfulness = suspicion(path, "mean")  # for the first-order prediction below
requested_sets = sets_for(path, rkind, rk)
if not removal_evaluated(run, influence_config(path), requested_sets, rxi):
    job = jobs.job_status(jobs.removal_entry(run, influence_config(path), requested_sets, rxi))
    if not running_job(job, REMOVAL_STAGES, "removal", f"Testing the model without the {rk} most suspicious tasks ({rlabel}, "
                       f"ξ = {rxi:+g}) and without {DRAWS} random sets of {rk}, each on all {n_test} test tasks, in the "
                       "background: you can change the settings above or use other pages; the results appear here when it ends."):
        last_job_note(job, "Testing the removed sets", "; the sets already tested are kept")
        st.button("Test them again", key="audit_retry", on_click=start_removal, args=(path, rkind, rk, rxi),
                  icon=":material/refresh:", help="Resumes with the sets not tested yet")
    st.stop()
effect = removal(path, rkind, rk, rxi)
v = removal_verdict(run, effect, suspicion(path, rkind), mean_helpfulness)
removed = v.removed  # the set removal_effect removed
if (rkind, rk, rxi) != (kind, k, xi):
    st.caption(f"The results below are for the {rk} most suspicious by {rlabel} at ξ = {rxi:+g}; "
               "press the button to update them.")

before, after = v.accuracy_before, v.accuracy_after
say = {1: st.success, -1: st.warning, 0: st.info}[v.verdict]
say(f"Removing the {rk} most suspicious tasks ({rlabel}, ξ = {rxi:+g}) took test accuracy from "
    f"{pct(before)} to {pct(after)}; removing {rk} random tasks the same way gave {pct(v.random_mean)} "
    f"on average over {v.draws} draws (spread ± {100 * v.random_sd:.2f} points): {v.words}.")
t1, t2, t3 = st.columns(3)
t1.metric("Test accuracy as trained", pct(before), help=f"Average over all {n_test} test tasks")
t1.caption(f"95 % interval ± {100 * v.accuracy_before_ci95:.2f} points")
t2.metric(f"Without the {rk} most suspicious", pct(after), points(after - before))
t2.caption(f"95 % interval ± {100 * v.accuracy_after_ci95:.2f} points; against the model as trained, test task by "
           f"test task: {interval_words(v.gain, v.gain_ci95)}")
t3.metric(f"Without {rk} random tasks (average of {v.draws})", pct(v.random_mean), points(v.random_mean - before))
t3.caption(f"spread over the {v.draws} draws (sd) ± {100 * v.random_sd:.2f} points")
st.caption(f"A 95 % interval is the range the average would likely fall in on other test tasks like these {n_test}. "
           f"The verdict above compares the suspicious set with the random draws: it needs more than {SIGNIFICANT_SD:g} times "
           "their spread (sd) either way.")
if v.reading:
    st.markdown(v.reading)
if v.corrupted_removed is not None:
    st.markdown(f"**{v.corrupted_removed} of the {rk} removed tasks are known corrupted tasks**; a random set of {rk} "
                f"holds {v.corrupted_random_mean:.1f} on average.")
st.markdown(f"Predicted from the scores alone, the average test loss changes by **{signed(v.loss_predicted)}**; "
            f"re-testing the cleaned model, it changed by **{signed(v.loss_change)}**.")
st.caption("The loss measures how wrong and how unsure the model is on the test images; lower is better. The prediction is "
           "-ξ × the removed tasks' summed average helpfulness (whichever score chose them): a straight-line (first-order) "
           "estimate that holds for small edits and drifts as |ξ| × k grows.")
if v.same_way:
    st.caption(v.same_way)

# ---- take it away: cleaned checkpoint, the removed ids, the slow check -------------------------------------
stem = f"{model}-{rkind}-k{rk}-xi{rxi:g}"


def cleaned_zip() -> bytes:
    """The edited checkpoint as a .zip (built when the button is clicked)."""
    params = edited_params(run, inf, EditSpec(block=removed, xi_block=rxi))
    record = {"block": removed.tolist(), "xi_block": rxi, "enhance": [], "xi_enhance": 0.0,
              "audit": {"score": rkind, "k": rk}, "test": blocked(path, tuple(int(j) for j in removed), rxi).summary()}
    return edited_checkpoint_zip(run, params, record, "cleaned")


removed_json = json.dumps({"model": model, "score": rkind, "k": rk, "xi": rxi, "removed": removed.tolist(),
                           "corrupted": [int(j) for j in removed if int(j) in CORRUPTED]}, indent=1)
d1, d2 = st.columns(2)
d1.download_button("Download the cleaned checkpoint (.zip)", cleaned_zip, f"cleaned-{stem}.zip", "application/zip",
                   key="audit_zip", on_click="ignore", icon=":material/download:", width="stretch",
                   help="The edited weights and a meta.json recording what was removed; open it on the Home page. "
                        "Built when you click.")
d2.download_button("Download the removed task ids (JSON)", lambda: removed_json, f"removed-{stem}.json", "application/json",
                   key="audit_ids", on_click="ignore", icon=":material/download:", width="stretch")
try:
    where = Path(path).resolve().relative_to(Path.cwd().resolve())
except ValueError:
    where = Path(path)
st.markdown("**The slow check: retrain without them.** The one-step edit is a shortcut; this command retrains from scratch "
            "with the same settings, never drawing these tasks (as long as the original training), and prints the edit's "
            "numbers beside the retrained model's:")
st.code(f"python -m metainf_core edit {shlex.quote(str(where))} --block {','.join(map(str, removed.tolist()))} "
        f"--xi-block {rxi:g} --leave-out runs/{model}-without-{rkind}-k{rk}", language="bash", wrap_lines=True)
