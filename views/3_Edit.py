"""Edit: block or enhance training tasks with TLXML's one-step update (Eq. 13) and see the effect.

The chosen sets live in non-widget session keys (``edit_block``, ``edit_enhance``: sorted training-task
ids), so they hold across pages and every control that changes them does so in a callback; the widgets
that show them (per-task radios, the two lists) are set from the sets before they are drawn.

The accuracy-versus-ξ curve runs as a background job (``jobs.submit_xi_sweep``): the page shows its
progress and draws the curve when it ends; a set whose sweep is on disk is drawn at once, for any test task.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from metainf_core import jobs
from metainf_core.detect import lowest_ids, stored_blocked_evaluation
from metainf_core.edit import (
    XI_SWEEP,
    EditSpec,
    apply_delta,
    edit_directions,
    edited_checkpoint_zip,
    load_xi_sweep,
    metrics_evaluation,
    predicted_loss_change,
    xi_sweep,
)
from metainf_core.edit_words import FIGURES, disagreement, edit_sentence, figures, shown, shown_change
from metainf_core.ranking import Target, all_scores, ranking_table
from metainf_core.words import CHANGE_DIGITS, outcome, plural, signed, xi_curve_words
from ui import (
    DEFAULT_EDIT,
    DEFAULT_INFLUENCE,
    XI_SWEEP_STAGES,
    describe_task,
    get_run,
    influence_config,
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

XI_RANGE = (-8.0, 8.0)
PICK_ROWS = 8  # most harmful and most helpful tasks offered one by one
BLOCK, ENHANCE = "edit_block", "edit_enhance"  # the chosen sets (non-widget keys)
DEFAULTS = DEFAULT_EDIT  # widget values Reset restores
CHOICES = {"keep": None, "block": BLOCK, "enhance": ENHANCE}

st.set_page_config(page_title="metainf · Edit", layout="wide")
st.title("Edit the model: block or enhance training tasks")
st.write("Pretend some training tasks had counted less (**block**) or more (**enhance**) and see how the model would "
         "change, without retraining. ξ = -1 is about the same as removing the task.")
with st.expander("For researchers: the one-step update", expanded=False):
    st.markdown(
        "ω' = ω̂ + ξ_B·Σ_{j∈B} I_meta(j) + ξ_E·Σ_{j∈E} I_meta(j)  (TLXML Eq. 13)\n\n"
        "- ω̂ are the trained weights, B the blocked and E the enhanced training tasks.\n"
        "- I_meta(j) is how the weights would move if training task j had counted a little more in training.\n"
        "- ξ says how far to move: each task then counts (1 + ξ) times as much as it did. ξ = -1 approximates removing it, "
        "ξ < -1 pushes the model away from it, ξ > 0 enhances it.\n"
        "- The update is a straight-line (first-order) estimate: large |ξ| × many tasks leaves the range where it holds, "
        "and accuracy usually drops."
    )
path, run = require_run(uses_test_task=True)
inf = require_influence(path, run)
n_test, m = len(run.test_tasks), inf.num_tasks
tc = run.meta["task_config"]
n_query = int(tc["queries"]) * int(tc["ways"])  # query images per test task
noise_ids = {int(j) for j in run.train_tasks.ids_with("noise")}


# ---- the chosen sets: changed only in callbacks ------------------------------------------------
def chosen(which: str) -> list[int]:
    return st.session_state.get(which, [])


def move(ids: Iterable[int], to: str | None) -> None:
    """Put ``ids`` in set ``to`` (BLOCK, ENHANCE or None = keep) and out of the other: never in both."""
    ids = {int(j) for j in ids}
    for which in (BLOCK, ENHANCE):
        rest = set(chosen(which)) - ids
        st.session_state[which] = sorted(rest | ids if which == to else rest)


def on_choice(j: int) -> None:
    move([j], CHOICES[st.session_state[f"edit_choice_{j}"]])


def on_list(which: str) -> None:
    new, old = set(st.session_state[f"{which}_list"]), set(chosen(which))
    move(old - new, None)
    move(new - old, which)


def remember(key: str) -> None:
    """Widget values kept under a non-widget key too: Streamlit forgets a widget on pages that do not draw it."""
    st.session_state[f"_{key}"] = st.session_state[key]


def restore(key: str, top: float = XI_RANGE[1]) -> None:
    st.session_state[key] = min(st.session_state.get(f"_{key}", DEFAULTS[key]), top)  # before the widget exists: allowed


def reset() -> None:
    for which in (BLOCK, ENHANCE):
        st.session_state[which] = []
    for key, value in DEFAULTS.items():
        st.session_state[key] = st.session_state[f"_{key}"] = value


if st.session_state.get("edit_for") != path:  # another model: its task ids mean other tasks
    st.session_state.update({"edit_for": path, BLOCK: [], ENHANCE: []})


# ---- cached computations -------------------------------------------------------------------------
@st.cache_data(show_spinner="Scoring every training task for this test task…", max_entries=64)
def test_scores(path: str, test_id: int) -> np.ndarray:
    return all_scores(get_run(path), inf, Target((test_id,)), DEFAULT_INFLUENCE.dtype)


@st.cache_data(show_spinner=False, max_entries=64)
def group_directions(path: str, block: tuple[int, ...], enhance: tuple[int, ...]):  # noqa: ANN201 - EditDirections
    """Σ I_meta over B and over E (``edit.edit_directions``); ξ only rescales them."""
    return edit_directions(inf.i_meta_sum, block, enhance)


def edited(block: tuple[int, ...], enhance: tuple[int, ...], xi_b: float, xi_e: float):  # noqa: ANN201 - Params
    return apply_delta(run.params, group_directions(path, block, enhance).delta(xi_b, xi_e))


@st.cache_data(show_spinner=False, max_entries=128)
def evaluate(path: str, block: tuple[int, ...] = (), enhance: tuple[int, ...] = (), xi_b: float = 0.0, xi_e: float = 0.0):  # noqa: ANN201
    """Per-test-task loss and accuracy (arrays) and the taskset summary, of ω̂ (no sets) or of ω'. A
    blocked set alone is read from or saved to disk (``detect.stored_blocked_evaluation``): once per
    run for every session, shared with the Audit page, and shipped by the demos for each test task's
    default pick, so the first "Block the k most harmful" answers without evaluating."""
    if block and not enhance:
        r = stored_blocked_evaluation(get_run(path), inf, influence_config(path), block, xi_b)
    else:
        r = get_run(path).evaluate(edited(block, enhance, xi_b, xi_e)) if block or enhance else get_run(path).as_trained
    return r.loss, r.accuracy, r.summary()


def tasks_word(n: int) -> str:
    return plural(n, "training task")


TILES = (  # label, figure, tooltip; lower loss is better
    ("Test task {i} accuracy", "task_acc", "Share of its {q} query images the model gets right"),
    ("Test task {i} loss", "task_loss", "How unsure the model is on its {q} query images; lower is better"),
    ("Test taskset accuracy ({n} tasks)", "set_acc", "Average over all {n} test tasks"),
    ("Test taskset loss", "set_loss", "Average over all {n} test tasks; lower is better"),
)


def show_tiles(test_id: int, fig: dict) -> None:
    for col, (label, name, help_) in zip(st.columns(4), TILES, strict=True):
        *_, was, now = fig[name]
        as_percent, digits = FIGURES[name]
        change = shown_change(fig, name)  # of the values shown, so that it adds up
        delta = None if was == now else signed(change, digits) + (" points" if as_percent else "")  # ASCII sign: st.metric reads it
        words = dict(i=test_id, q=n_query, n=n_test)
        col.metric(label.format(**words), now, delta, delta_color="normal" if as_percent else "inverse", help=help_.format(**words))


# ---- test task ---------------------------------------------------------------------------------------
c1, c2 = st.columns([1, 3])
test_id = test_task_picker(n_test, c1)
with c2:
    st.markdown(f"**Test task {test_id}**: {describe_task(path, 'test', test_id)}")
    strip = task_strip(path, "test", test_id, scale=2)
    if strip is not None:
        st.image(strip, output_format="PNG", caption="its support images, one class after another", alt=task_alt(path, "test", test_id))
scores = test_scores(path, test_id)
order, ranks = ranking_table(scores)

# ---- choose training tasks -----------------------------------------------------------------------------
st.subheader("1. Choose training tasks to block or enhance")
q1, q2, q3, q4 = st.columns([1, 2, 2, 1], vertical_alignment="bottom")
restore("edit_k", m)
k = int(q1.number_input("How many (k)", 1, m, key="edit_k", on_change=remember, args=("edit_k",), help="How many tasks the quick picks take"))
q2.button(f"Block the {k} most harmful", key="edit_pick_harmful", width="stretch",
          on_click=lambda: move(lowest_ids(scores, st.session_state["edit_k"]), BLOCK),
          help=f"The {k} training tasks that hurt test task {test_id} most")
q3.button(f"Enhance the {k} most helpful", key="edit_pick_helpful", width="stretch",
          on_click=lambda: move(order[: st.session_state["edit_k"]], ENHANCE),
          help=f"The {k} training tasks that helped test task {test_id} most")
q4.button("Reset", key="edit_reset", on_click=reset, width="stretch", help="Clear both sets and put every setting back")

harmful = [int(j) for j in order[::-1][:PICK_ROWS]]
helpful = [int(j) for j in order[:PICK_ROWS] if int(j) not in harmful]
st.caption(f"Or one by one, among the training tasks that hurt or helped test task {test_id} most. "
           "Score: how much the task helped this test task; negative = it hurt.")
for ids, title, hint in ((harmful, "most harmful", "blocking them should help this test task"),
                         (helpful, "most helpful", "enhancing them should help it more")):
    st.markdown(f"**The {len(ids)} {title}** ({hint})")
    for n, j in enumerate(ids, 1):
        a, b, c = st.columns([2, 4, 2], vertical_alignment="center")
        img = task_strip(path, "train", j, scale=1, per_class=3)
        if img is not None:
            a.image(img, output_format="PNG", alt=task_alt(path, "train", j))
        b.markdown(f"#{n} {title} · training task {j} · score {signed(scores[j])}  \n"
                   f"<small>{describe_task(path, 'train', j)}</small>", unsafe_allow_html=True)
        key = f"edit_choice_{j}"
        st.session_state[key] = "block" if j in chosen(BLOCK) else "enhance" if j in chosen(ENHANCE) else "keep"
        c.radio(f"Training task {j}", list(CHOICES), key=key, horizontal=True, label_visibility="collapsed",
                on_change=on_choice, args=(j,))

st.markdown("**Chosen so far**")
for which, word in ((BLOCK, "Blocked"), (ENHANCE, "Enhanced")):  # full width: every chip readable
    ids = chosen(which)
    n_noise = len(noise_ids.intersection(ids))
    st.markdown(f"{word}: **{tasks_word(len(ids))}**"
                + (f" ({n_noise} of them pure-noise, marked “noise”)" if n_noise else ""))
    st.session_state[f"{which}_list"] = ids
    st.multiselect(f"{word} training tasks: remove one with its ×, or type a task number to add it", range(m),
                   key=f"{which}_list", on_change=on_list, args=(which,), placeholder="none",
                   format_func=lambda j: f"task {j} · noise" if j in noise_ids else f"task {j}")


# ---- how strongly, and what it does (a fragment: moving ξ reruns only this part) -------------------------
def checkpoint_zip(block: tuple[int, ...], enhance: tuple[int, ...], xi_b: float, xi_e: float, test_id: int) -> bytes:
    loss0, acc0, _ = evaluate(path)
    loss1, acc1, summary = evaluate(path, block, enhance, xi_b, xi_e)
    task = {"id": test_id, "before": {"loss": float(loss0[test_id]), "accuracy": float(acc0[test_id])},
            "after": {"loss": float(loss1[test_id]), "accuracy": float(acc1[test_id])}}
    record = {"block": list(block), "xi_block": xi_b, "enhance": list(enhance), "xi_enhance": xi_e, "test_task": task, "test": summary}
    return edited_checkpoint_zip(run, edited(block, enhance, xi_b, xi_e), record, "edited")


def export_name(block: tuple[int, ...], enhance: tuple[int, ...], xi_b: float, xi_e: float, test_id: int) -> str:
    """Model, test task and a digest of everything the zip holds: different content, different name."""
    digest = hashlib.sha256(json.dumps([path, block, enhance, xi_b, xi_e, test_id]).encode()).hexdigest()[:8]
    return f"edited-{Path(path).name}-test{test_id}-{digest}.zip"


@st.fragment
def effect() -> None:
    """The ξ sliders and their results: a fragment, so a ξ move reruns only this part."""
    effect_body()


def effect_body() -> None:
    st.subheader("2. How strongly, and what it does")
    block, enhance = tuple(chosen(BLOCK)), tuple(chosen(ENHANCE))
    s1, s2 = st.columns(2)
    for key in ("edit_xi_block", "edit_xi_enhance"):
        restore(key)
    xi_b = s1.slider("ξ for blocked tasks (-1 ≈ removed; lower = blocked harder)", *XI_RANGE, step=0.5, format="%.1f", key="edit_xi_block",
                     disabled=not block, on_change=remember, args=("edit_xi_block",))
    xi_e = s2.slider("ξ for enhanced tasks (+1 ≈ counted twice)", *XI_RANGE, step=0.5, format="%.1f", key="edit_xi_enhance",
                     disabled=not enhance, on_change=remember, args=("edit_xi_enhance",))
    before = evaluate(path)
    loss0, acc0, s0 = before
    if not (block or enhance):
        st.info(
            "Nothing is blocked or enhanced yet, so the model is as trained: test task "
            f"{test_id} gets {round(float(acc0[test_id]) * n_query)} of its {n_query} query images right ({shown(acc0[test_id], True, 1)}, "
            f"loss {shown(loss0[test_id])}); on all {n_test} test tasks accuracy is {shown(s0['accuracy'], True, 2)}, "
            f"loss {shown(s0['loss'])}. "
            "Choose training tasks above."
        )
        return
    with st.spinner("Evaluating the edited model on every test task…"):
        after = evaluate(path, block, enhance, xi_b, xi_e)
    fig = figures(test_id, before, after)
    went = outcome(shown_change(fig, "task_acc"), shown_change(fig, "set_acc"))
    box = {1: st.success, -1: st.warning, 0: st.info}[went]  # green only when accuracy rose and fell nowhere
    box(edit_sentence(block, enhance, xi_b, xi_e, test_id, fig, n_query, n_test))
    why = disagreement(test_id, fig, n_query, n_test)
    if why:
        st.caption(why)
    show_tiles(test_id, fig)

    predicted = predicted_loss_change(scores, EditSpec(block, xi_b, enhance, xi_e))  # first order: g_iᵀ δω
    actual = fig["task_loss"][1] - fig["task_loss"][0]
    st.markdown(
        f"Predicted by the influence scores alone, test task {test_id}'s loss changes by **{signed(predicted)}**; "
        f"re-evaluating the edited model, it changed by **{signed(actual)}**."
    )
    st.caption("The scores predict a straight-line (first-order) change: the two agree for small edits and part ways when "
               "|ξ| × the number of chosen tasks is large.")
    st.caption(f"Accuracy on all {n_test} test tasks with its 95 % interval (the range the mean would likely fall in on "
               "other test tasks): " + ", ".join(f"{when} {shown(s['accuracy'], True, CHANGE_DIGITS)} ± {shown(s['accuracy_ci95'], True, CHANGE_DIGITS)}"
                                               for when, s in (("before", s0), ("after", after[2]))) + ".")
    args = (block, enhance, xi_b, xi_e, test_id)
    st.download_button(
        "Download the edited checkpoint (.zip)", lambda: checkpoint_zip(*args), export_name(*args),
        "application/zip", key="edit_download", on_click="ignore", icon=":material/download:",
        help="The edited weights (safetensors) and meta.json recording the edit; open it on the Home page. Built when you click.",
    )


effect()

# ---- accuracy along ξ for the blocked set: a background job (jobs.submit_xi_sweep) -----------------------------
def start_sweep(path: str, block: tuple[int, ...]) -> None:
    """The "Accuracy versus ξ" callback: submit the sweep's job (or join the one running for this set and fit)."""
    remember_job(jobs.submit_xi_sweep(get_run(path), influence_config(path), block))


def show_sweep(sweep_metrics: dict, block: tuple[int, ...]) -> None:
    """The curve of the blocked set from its saved sweep (``edit.stored_xi_sweep``), read at this test task."""
    sweep = xi_sweep(lambda xi: metrics_evaluation(sweep_metrics[xi]), scores, block, test_id, xis=tuple(sweep_metrics))
    xis, accs, task_accs = list(sweep.xis), list(sweep.taskset_accuracy), list(sweep.task_accuracy)
    fig = go.Figure([go.Scatter(x=xis, y=accs, mode="lines+markers", name=f"all {n_test} test tasks"),
                     go.Scatter(x=xis, y=task_accs, mode="lines+markers", name=f"test task {test_id}")])
    for x in (-1, 0):
        fig.add_vline(x=x, line_dash="dot", line_color="#888")
    ticks = {-1.0: "-1<br>≈ removed", 0.0: "0<br>as trained"}  # on the axis: no line crosses them
    fig.update_layout(title=f"Accuracy as the {tasks_word(len(block))} are blocked (ξ < 0) or enhanced (ξ > 0)",
                      xaxis=dict(title="ξ for the blocked set", tickvals=xis, ticktext=[ticks.get(x, f"{x:+g}") for x in xis]),
                      yaxis_title="accuracy", yaxis_tickformat=".0%", height=360, margin=dict(l=10, r=10, t=50, b=10))
    show_figure(fig, "edit_curve_fig", f"accuracy_vs_xi-{Path(path).name}-test{test_id}")
    st.caption(xi_curve_words(test_id, xis, task_accs, list(sweep.task_loss), accs, list(sweep.predicted_loss_change), n_test))


st.divider()
block = tuple(chosen(BLOCK))
sweep_metrics = load_xi_sweep(run, influence_config(path), block) if block else None
if sweep_metrics is not None:  # this set's sweep is on disk: drawn at once, for any test task
    show_sweep(sweep_metrics, block)
else:
    job = jobs.job_status(jobs.xi_sweep_entry(run, influence_config(path), block)) if block else None
    if not running_job(job, XI_SWEEP_STAGES, "sweep", f"Re-evaluating the model with the {tasks_word(len(block))} blocked at "
                       f"{len(XI_SWEEP)} values of ξ in the background: you can change the settings above or use other "
                       "pages; the curve appears here when it ends."):
        last_job_note(job, "The last sweep")
        st.button("Accuracy versus ξ (blocked set)", key="edit_curve", disabled=not block, on_click=start_sweep, args=(path, block),
                  help=f"Re-evaluates the model with the blocked set at {len(XI_SWEEP)} values of ξ (the enhanced set left "
                  "out), in the background; the curve is kept for this set, whichever test task you pick")
