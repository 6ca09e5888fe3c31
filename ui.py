"""App-layer helpers shared by the pages: cached access to the core, model selection, thumbnails.

Streamlit caches wrap the core's own disk cache (STYLE §7): ``cache_resource`` for the run and
the fitted influence (shared objects), ``cache_data`` for images (copied arrays).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import streamlit as st

from metainf_core import api, jobs
from metainf_core.config import CompareConfig, InfluenceConfig
from metainf_core.exceptions import MetainfError
from metainf_core.figures import thumbnail_strip
from metainf_core.fits import fit_influence, fit_status, is_fitted
from metainf_core.reproduce import rows as paper_rows
from metainf_core.service import Run, check_folder_allowed, open_run, task_view
from metainf_core.words import score, task_summary

DEMO_DIR = api.DEMO_DIR  # one definition of where the bundled demos live
DEFAULT_DEMO = "protonet-fashion-mnist"  # fastest to explain and edit interactively
DEFAULT_INFLUENCE = InfluenceConfig(method="gn", n_orth=512, dtype="float32")
DEFAULT_EDIT = {"edit_xi_block": -1.0, "edit_xi_enhance": 1.0, "edit_k": 16}  # the Edit page's widget values (Reset restores them)
# The Compare page's settings: dense solves only (a matrix-free task-IF on a demo-sized model runs for hours
# inside the page; the CLI's `compare --solver lanczos` offers it). The demos ship their test tables for exactly these.
COMPARE_CONFIG = CompareConfig(dtype=DEFAULT_INFLUENCE.dtype, solver="dense")
ALGORITHM_NAMES = {"maml": "MAML", "protonet": "ProtoNet", "proximal-maml": "Proximal MAML"}


@st.cache_resource(show_spinner="Loading model and data…")
def get_run(path: str) -> Run:
    check_folder_allowed(path, also=(DEMO_DIR, paper_rows.ROOT))  # a shared server's root ($METAINF_RUNS_ROOT), if set
    return open_run(path)


# ---- one session-level choice of model and test task, mirrored in the URL --------------------
# Non-widget keys: Streamlit forgets a widget's state on pages that do not draw it, so the choice
# lives in these two keys and every widget that changes it does so in a callback.
MODEL_KEY, TEST_KEY = "model_path", "test_task"


def demo_dirs() -> list[Path]:
    return [DEMO_DIR / name for name in api.demos()]


PAPER_DIR = paper_rows.ROOT  # the committed runs of the paper's Table 9/11 rows (read only: training may be writing)
PAPER_LINK = "paper/"  # ?model=paper/<row>/seed<k> names one


def paper_runs() -> list[paper_rows.CommittedRun]:
    """The committed paper runs, read afresh (a run still training moves on every ~100 meta-batches)."""
    return paper_rows.committed_runs(PAPER_DIR)


def paper_run_of(path: str | Path) -> paper_rows.CommittedRun | None:
    """The committed paper run in folder ``path``, or None."""
    where = Path(path).resolve()
    if PAPER_DIR.resolve() not in where.parents:
        return None
    return next((r for r in paper_runs() if r.path.resolve() == where), None)


def model_url_value(path: str) -> str:
    """How a model appears in ``?model=``: a bundled demo by its name, a committed paper run as
    ``paper/<row>/seed<k>``, anything else by its path."""
    if is_demo(path):
        return Path(path).name
    paper, root = Path(path).resolve(), PAPER_DIR.resolve()
    return PAPER_LINK + paper.relative_to(root).as_posix() if root in paper.parents else str(path)


def model_from_url(value: str | None) -> str | None:
    """The model folder named by ``?model=`` (a demo name, ``paper/<row>/seed<k>`` or a folder path), or None."""
    if not value:
        return None
    demo = DEMO_DIR / value
    if "/" not in value and (demo / "meta.json").is_file():
        return str(demo)
    if value.startswith(PAPER_LINK):
        paper = PAPER_DIR / value[len(PAPER_LINK) :]
        inside = PAPER_DIR.resolve() in paper.resolve().parents
        return str(paper) if inside and (paper / "meta.json").is_file() else None
    return value if (Path(value) / "meta.json").is_file() else None


LINK_NOTICES = "_link_notices"  # what a shared link asked for that does not exist, told once (non-widget key)


def _tell_about_link(text: str) -> None:
    st.session_state.setdefault(LINK_NOTICES, []).append(text)


def show_link_notices() -> None:
    """Tell the visitor, once, which values of the link they followed do not exist and what is shown instead."""
    for text in st.session_state.pop(LINK_NOTICES, []):
        st.warning(text, icon=":material/link_off:")


def current_model_path() -> str:
    """The session's model: set on the home page; on a fresh visit taken from ``?model=``,
    else the default demo (an unknown ``?model=`` is told to the visitor)."""
    if not st.session_state.get(MODEL_KEY):
        asked = st.query_params.get("model")
        found = model_from_url(asked)
        if asked and found is None:
            _tell_about_link(f"The link asks for the model “{asked}”, which is neither a bundled demo, a paper run nor a run "
                             f"folder here; showing the bundled demo “{DEFAULT_DEMO}” instead.")  # fmt: skip
        st.session_state[MODEL_KEY] = found or str(DEMO_DIR / DEFAULT_DEMO)
    return st.session_state[MODEL_KEY]


def set_model(path: str) -> None:
    """Switch the session to another model; its test task starts again from the URL or 0."""
    if path != st.session_state.get(MODEL_KEY):
        st.session_state[MODEL_KEY] = path
        st.session_state.pop(TEST_KEY, None)
    st.query_params["model"] = model_url_value(path)


def current_test_task(n_test: int) -> int:
    """The session's test task (0..n_test−1): on a fresh visit taken from ``?test=``."""
    if TEST_KEY not in st.session_state:
        q = str(st.query_params.get("test", "0"))
        chosen = min(int(q), n_test - 1) if q.isdigit() else 0
        if q != str(chosen):
            _tell_about_link(f"The link asks for test task “{q}”, but this model's test tasks are 0–{n_test - 1}; "
                             f"showing test task {chosen} instead.")
        st.session_state[TEST_KEY] = chosen
    return min(max(int(st.session_state[TEST_KEY]), 0), n_test - 1)


def set_test_task(i: int) -> None:
    """Callback for every control that picks a test task (runs before the page reruns)."""
    st.session_state[TEST_KEY] = int(i)


def is_demo(path: str | Path) -> bool:
    """Whether ``path`` is one of the bundled demos in assets/demo."""
    return Path(path).resolve().parent == DEMO_DIR.resolve()


def model_label(run: Run) -> str:
    """A model as a person names it: "ProtoNet on fashion-mnist (bundled demo)", "ProtoNet on
    omniglot (paper run om-protonet-512, seed 0, partial)"."""
    meta = run.meta
    name = ALGORITHM_NAMES.get(meta["algorithm"], meta["algorithm"])
    paper = paper_run_of(run.checkpoint.path)
    origin = ("bundled demo" if is_demo(run.checkpoint.path) else run.checkpoint.path.name if paper is None
              else f"paper run {paper.row}, seed {paper.seed}{', partial' if paper.partial else ''}")  # fmt: skip
    edited = ", edited" if meta.get("edited_from") else ""
    return f"{name} on {meta['dataset']['name']} ({origin}{edited})"


def _about(seconds: float) -> str:
    """A duration as said aloud: "about 40 s", "about 25 min", "about 3.5 h"."""
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    return f"about {math.ceil(seconds / 60)} min" if seconds < 90 * 60 else f"about {seconds / 3600:.1f} h"


@st.cache_data(show_spinner="Timing this machine for a fit estimate (a few seconds)…")
def paper_fit_seconds(row: str, n_orths: tuple[int, ...]) -> dict[int, float]:
    return paper_rows.row_fit_seconds(paper_rows.get_row(row), n_orths)


def paper_fit_notice(paper: paper_rows.CommittedRun, run: Run, cfg: InfluenceConfig) -> str:
    """Why a paper run's influence is not fitted on a click: the predicted time at this app's and at
    the paper's N_orth on this machine, what a fit left half-way saved, and the command that fits
    (or resumes) it; pages then answer at once."""
    paper_n = paper_rows.N_ORTH
    seconds = paper_fit_seconds(paper.row, (cfg.n_orth, paper_n))
    parts = [
        (f"**This paper run has no influence fit yet, and none is started from here.** Fitting TLXML over its "
        f"{paper_rows.get_row(paper.row).train_tasks:,} training tasks takes {_about(seconds[cfg.n_orth])} at this dashboard's "
        f"settings (Gauss-Newton, N_orth = {cfg.n_orth:,}) and {_about(seconds[paper_n])} at the paper's (N_orth = {paper_n:,}) "
        "on this machine, on one thread (predicted from a short timing probe). Fit it in a terminal (it saves as it goes and "
        "resumes after a stop); this page then answers at once:"),
        f"```\n{paper_rows.fit_command(paper.path, cfg)}\n```",
    ]  # fmt: skip
    saved = fit_status(run, cfg)
    if saved["state"] == "partial":
        parts.append(f"A fit was started and saved {saved['tasks_done']:,} of {saved['total']:,} training tasks so far "
                     "(it may still be running): the same command resumes it.")  # fmt: skip
    if paper.partial:
        parts.append(f"Training has not finished (meta-batch {paper.steps_done:,} of {paper.steps:,}): a fit explains these "
                     "weights, and newer ones committed later need a fit of their own.")  # fmt: skip
    return "\n\n".join(parts)


def require_run(uses_test_task: bool = False) -> tuple[str, Run]:
    """The session's model (opened and cached), named in the sidebar with the test task when the
    page uses one, both written to the URL (the test task on every page, so a shared link's test task
    holds on the pages after it) so the link reopens the same view; or a message and stop."""
    path = current_model_path()
    try:
        run = get_run(path)
    except MetainfError as e:
        st.sidebar.error(f"Model: cannot open {path}")
        st.error(f"Cannot open this checkpoint: {e}. Choose another model on the Home page.")
        st.stop()
    st.query_params["model"] = model_url_value(path)
    lines = [f"**Model:** {model_label(run)}"]
    test_id = current_test_task(len(run.test_tasks))  # also where the page has none: a link's ?test= holds for the next page
    st.query_params["test"] = str(test_id)
    if uses_test_task:
        lines.append(f"**Test task:** {test_id} of 0–{len(run.test_tasks) - 1}")
    st.sidebar.markdown("  \n".join(lines))
    show_link_notices()
    st.sidebar.caption("Change the model on the Home page; the test task on Explain, Edit or Compare.")
    return path, run


def test_task_picker(n_test: int, container=None, random_button: bool = True) -> int:  # noqa: ANN001
    """Number input (and a "Random task" button) bound to the session's test task through callbacks."""
    where = container if container is not None else st
    test_id = current_test_task(n_test)
    st.session_state["_test_task_input"] = test_id  # set before the widget exists: allowed
    where.number_input(f"Test task (0–{n_test - 1})", 0, n_test - 1, key="_test_task_input",
                       on_change=lambda: set_test_task(st.session_state["_test_task_input"]))
    if random_button:
        rng = np.random.default_rng()
        where.button("Random test task", key="random_test_task", on_click=lambda: set_test_task(int(rng.integers(n_test))),
                     help="Jump to a test task drawn at random")
    return test_id


@st.cache_resource(show_spinner=False)
def _fitted(path: str, cfg: InfluenceConfig):
    return fit_influence(get_run(path), cfg)


def time_left(seconds: float) -> str:
    """"about 3 min left" / "about 40 s left" for a progress bar."""
    return f"about {math.ceil(seconds / 60)} min left" if seconds >= 90 else f"about {max(5, round(seconds / 5) * 5)} s left"


def influence_config(path: str) -> InfluenceConfig:
    """The app's fit settings for this run: DEFAULT_INFLUENCE, sketched with sampled columns for
    large networks (``fits.influence_config_for``)."""
    from metainf_core.fits import influence_config_for

    return influence_config_for(get_run(path), DEFAULT_INFLUENCE)


def require_influence(path: str, run: Run, cfg: InfluenceConfig | None = None):
    """The fitted TLXML for the run (from the disk cache, or shipped with the run); if neither
    exists, offer to fit it as a background job (``metainf_core.jobs``) and show its progress, or
    the job another session already started for the same fit; the page stops until it is done."""
    cfg = influence_config(path) if cfg is None else cfg
    if not is_fitted(run, cfg):
        paper = paper_run_of(path)
        if paper is not None:  # hours on a CPU: told, with the command, never started on a click
            st.info(paper_fit_notice(paper, run, cfg))
            st.stop()
        job = fit_job(path, cfg)
        if job is not None and job.active:
            job_progress(str(job.directory), FIT_STAGES, "fit")
        else:
            _offer_fit(path, run, cfg, job)
        st.stop()
    return _fitted(path, cfg)


def fit_job(path: str, cfg: InfluenceConfig | None = None) -> jobs.Job | None:
    """The latest background job of this run's influence fit (the app's settings by default), or None."""
    return jobs.job_status(jobs.fit_entry(get_run(path), influence_config(path) if cfg is None else cfg))


MY_JOBS = "_my_jobs"  # ids of the jobs (any kind) this session started: it may cancel those (non-widget key)
# What a job's progress bar says in each stage of its work (``jobs._Worker.progress``), {done}/{total} filled in
FIT_STAGES = {"curvature": "Step 1 of 2, curvature: {done}/{total} tasks",
              "gradients": "Step 2 of 2, task gradients: {done}/{total} tasks"}  # fmt: skip
DIAGNOSTICS_STAGES = {"snapshots": "Training snapshots: {done}/{total} done"}
XI_SWEEP_STAGES = {"xis": "ξ values: {done}/{total}"}
REMOVAL_STAGES = {"sets": "Removed sets tested: {done}/{total}"}
TABLE_STAGES = {"test_tasks": "Test tasks scored: {done}/{total}"}


def running_job(job: jobs.Job | None, stages: dict[str, str], what: str, words: str) -> bool:
    """While ``job`` is active: ``words`` (what runs in the background) and its progress bar
    (``job_progress``), True; else nothing, False."""
    if job is None or not job.active:
        return False
    st.info(words)
    job_progress(str(job.directory), stages, what)
    return True


def last_job_note(job: jobs.Job | None, what: str, kept: str = "") -> None:
    """What the last job for this result left: its error when it failed, a note when it was cancelled
    (``what``: "The last fit"…; ``kept``: what stays saved)."""
    if job is not None and job.state == "failed":
        st.error(f"{what} stopped before it ended: {job.error}.", icon=":material/error:")
    elif job is not None and job.state == "cancelled":
        st.warning(f"{what} was cancelled{kept}.", icon=":material/cancel:")


def remember_job(job: jobs.Job) -> None:
    """Note that this session started (or joined from its own click) ``job``: its progress shows a cancel button."""
    st.session_state.setdefault(MY_JOBS, set()).add(job.id)


def _start_fit(path: str, cfg: InfluenceConfig) -> None:
    """The "Fit influence now" callback: submit the job (or join the one running for this fit)."""
    remember_job(jobs.submit_fit(get_run(path), cfg))


def _offer_fit(path: str, run: Run, cfg: InfluenceConfig, job: jobs.Job | None) -> None:
    """Why the page waits, what an earlier fit left (a failed or cancelled job, saved tasks), and the button."""
    st.info(
        f"Influence is not fitted yet for this model ({len(run.train_tasks)} training tasks). Fitting looks at every "
        "training task once, runs in the background and is saved as it goes: you can use other pages, leave and come back."
    )
    last_job_note(job, "The last fit")
    saved = fit_status(run, cfg)
    if saved["state"] == "partial":
        st.caption(f"{saved['tasks_done']} of {saved['total']} training tasks are saved from an earlier fit: it resumes from there.")
    label = "Fit influence now" if saved["state"] == "none" else "Resume the fit"
    st.button(label, type="primary", key="fit_button", on_click=_start_fit, args=(path, cfg))


def queue_words(job: jobs.Job, what: str = "fit") -> str:
    """Where a queued job stands: how many wait ahead of it, or that it waits for a running job,
    or that ``what`` is starting (its process loads; a core is free)."""
    slots = jobs.job_slots()
    running = sum(j.state == "running" for j in jobs.list_jobs(Path(job.directory).parent.parent))
    at_a_time = f"{slots} job{'s' if slots > 1 else ''} run{'' if slots > 1 else 's'} at a time on this machine"
    if job.position > 1:
        ahead = job.position - 1
        return f"Waiting for a free core: {ahead} job{'s' if ahead > 1 else ''} ahead of this one in the queue ({at_a_time})"
    if running >= slots:
        return f"Waiting for a free core: next in the queue ({at_a_time})"
    return f"Starting the {what}…"


@st.fragment(run_every=jobs.PROGRESS_EVERY_S)
def job_progress(directory: str, stages: dict[str, str], what: str) -> None:
    """The progress bar of the job of cache entry ``directory`` (any kind): its stage in the words
    of ``stages`` with time left, or its place in the queue; redrawn every second on its own; when
    the job ends the whole page reruns and picks up the result (or says why not). The session that
    started it gets a cancel button (key ``<what>_cancel``)."""
    job = jobs.job_status(directory)
    if job is None or not job.active:
        st.rerun()
    if job.state == "queued":
        st.progress(0.0, text=queue_words(job, what))
    elif not job.stage:
        st.progress(0.0, text="Loading the model and its data…")
    else:
        eta = "" if job.eta_seconds() is None else f" · {time_left(job.eta_seconds())}"
        words = stages.get(job.stage, job.stage + ": {done}/{total}")
        st.progress(job.fraction, text=words.format(done=job.done, total=job.total) + eta)
    if job.id in st.session_state.get(MY_JOBS, set()):
        st.button(f"Cancel the {what}", key=f"{what}_cancel", on_click=jobs.cancel, args=(job,), icon=":material/cancel:",
                  help=f"Stops the {what}; what it saved so far stays, and starting again resumes from there")  # fmt: skip
    else:
        st.caption("Started from another tab or session: it runs once for everyone who asked for the same result.")


PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def figure_html(fig) -> str:  # noqa: ANN001 - a plotly Figure
    """The figure as one self-contained HTML file (plotly.js embedded, opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show_figure(fig, key: str, file_stem: str, container=None) -> None:  # noqa: ANN001
    """A Plotly chart with its exports: PNG from the chart's camera button (2× scale), and a
    self-contained HTML file from the button below it (built only when clicked)."""
    where = container if container is not None else st
    where.plotly_chart(fig, width="stretch", key=key, config=PLOT_CONFIG)
    where.download_button(
        "Figure as HTML", lambda: figure_html(fig), f"{file_stem}.html", "text/html", key=f"{key}_html",
        on_click="ignore", icon=":material/download:", help="PNG: use the camera icon on the chart",
    )


@st.cache_data(show_spinner=False, max_entries=512)
def task_strip(
    path: str, split: str, task_id: int, scale: int = 2, per_class: int | None = None, rows: bool = False
) -> np.ndarray | None:
    """Support images of one task as one crisp strip (class-major; ``rows``: one row per class),
    or None for non-image data."""
    run = get_run(path)
    if not run.dataset.is_image:
        return None
    view = task_view(run, split, task_id)
    imgs = view.support_images
    shots = len(imgs) // len(view.class_names)
    if per_class is not None:
        imgs = imgs.view(len(view.class_names), shots, *imgs.shape[1:])[:, :per_class].flatten(0, 1)
        shots = per_class
    return thumbnail_strip(imgs, scale=scale, per_row=shots if rows else None)


def describe_task(path: str, split: str, task_id: int) -> str:
    """A task's classes with superclasses; a corrupted task says first what it really holds."""
    view = task_view(get_run(path), split, task_id)
    return task_summary(view.class_names, view.superclasses, view.corruption)


def task_alt(path: str, split: str, task_id: int) -> str:
    """Alt text of a task's thumbnails, for screen readers and when images do not load."""
    return f"{split} task {task_id}: support images of {describe_task(path, split, task_id)}"


# ---- drill-down: which images carry a training task's score ------------------------------------
@st.cache_data(show_spinner=False, max_entries=16)
def test_image_table(path: str, test_id: int):  # noqa: ANN201 - drilldown.TargetImageShares
    """The test task's n_q × M image shares: one per test task, whichever training task is opened."""
    from metainf_core.drilldown import target_image_shares

    return target_image_shares(get_run(path), _fitted(path, influence_config(path)), test_id, dtype="float32")


@st.cache_data(show_spinner="Splitting the score over the images…", max_entries=64)
def drilldown_arrays(path: str, test_id: int, train_id: int) -> dict:
    """The drill-down of one (test task, training task) pair as plain arrays and sentences."""
    from metainf_core.drilldown import drill_training_task, plain_summary

    run = get_run(path)
    inf = _fitted(path, influence_config(path))
    drill = drill_training_task(run, inf, test_id, train_id, dtype="float32")
    reverse = test_image_table(path, test_id).for_training_task(train_id)
    return {
        "score": drill.score, "query": drill.query.values, "support": drill.support.values, "test": reverse.values,
        "summary": plain_summary(drill.query), "reverse_summary": plain_summary(reverse), "corruption": drill.query.images.corruption,
    }  # fmt: skip


def drilldown_section(path: str, run: Run, inf, test_id: int, train_id: int) -> None:  # noqa: ANN001
    """Test task and training task side by side, each image framed by its share of the score."""
    from metainf_core.figures import heat_grid

    if not run.dataset.is_image:
        st.info("This dataset has no images (2-D points), so there is nothing to show inside the tasks.")
        return
    d = drilldown_arrays(path, test_id, train_id)
    train, test = task_view(run, "train", train_id), task_view(run, "test", test_id)
    shots = len(train.support_images) // len(train.class_names)
    per_row = len(train.query_images) // len(train.class_names)
    st.markdown(f"**Training task {train_id}** — {describe_task(path, 'train', train_id)} · score {score(d['score'])}")
    st.caption("Green frames helped the test task, red frames hurt it; the stronger the colour, the larger the part.")
    a, b, c = st.columns(3)
    a.markdown(f"**Training task {train_id}: query images**")
    b.markdown(f"**Training task {train_id}: support images**")
    c.markdown(f"**Test task {test_id}: query images**")
    a.image(heat_grid(train.query_images, d["query"], per_row=per_row, numbered=True), output_format="PNG",
            alt=f"query images of training task {train_id}, framed by their share of its score")
    a.caption(f"Query images: their shares add up to the task's score. {d['summary']}")
    b.image(heat_grid(train.support_images, d["support"], per_row=shots, numbered=True), output_format="PNG",
            alt=f"support images of training task {train_id}, framed by their effect on its score")
    b.caption("Support images (what the model adapted on): how the score would move if the image counted more. "
              + ("Within a class these effects cancel out: they show which images pull the class prototype which way."
                 if run.spec.algo == "protonet" else "They act through the adaptation step, so they need not add up to the score."))
    c.image(heat_grid(test.query_images, d["test"], per_row=len(test.query_images) // len(test.class_names), numbered=True),
            output_format="PNG",
            alt=f"query images of test task {test_id}, framed by how much training task {train_id} helps each")
    c.caption(f"Test task {test_id}'s query images: which of them this training task helps (green) or hurts (red). "
              + d["reverse_summary"])
