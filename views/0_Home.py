"""Home: choose a trained meta-learner and see its card."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from metainf_core.cache import cache_root
from metainf_core.checkpoint import import_checkpoint_zip, read_meta
from metainf_core.exceptions import MetainfError
from metainf_core.fits import fit_status
from metainf_core.words import corrupted_among, percent
from ui import (
    ALGORITHM_NAMES,
    DEFAULT_DEMO,
    DEMO_DIR,
    current_model_path,
    demo_dirs,
    get_run,
    influence_config,
    is_demo,
    model_url_value,
    paper_run_of,
    paper_runs,
    set_model,
    show_figure,
    show_link_notices,
)


def corrupted_words(tc: dict) -> str:
    return corrupted_among({"noise": tc.get("noise_tasks", 0), "label_flip": tc.get("label_flip_tasks", 0)})

st.set_page_config(page_title="metainf", page_icon="🧭", layout="wide")
UPLOAD_DIR = cache_root() / "uploads"  # verified uploads, named by content hash; never unpickled
SOURCES = ["Bundled demo", "Paper run", "Run folder", "Upload"]


@st.cache_data(show_spinner=False)
def load_card(path: str) -> dict:
    return read_meta(path)


def source_of(path: str) -> str:
    """Which picker the session's current model came from (so returning here shows it again)."""
    if is_demo(path):
        return "Bundled demo"
    if paper_run_of(path) is not None:
        return "Paper run"
    return "Upload" if UPLOAD_DIR.resolve() in Path(path).resolve().parents else "Run folder"


def model_name(path: str) -> str:
    """A model's short name: a demo's or run folder's name; a paper run's ``paper/<row>/seed<k>``."""
    return model_url_value(path) if paper_run_of(path) is not None else Path(path).name


def model_picker(current: str) -> tuple[str | None, str | None]:
    """(the model the sidebar now names, an error about the user's last choice). Starts from the
    session's model, so coming back to Home never switches it silently."""
    source = st.sidebar.radio("Model", SOURCES, index=SOURCES.index(source_of(current)), key="home_source")
    if source == "Bundled demo":
        names = [p.name for p in demo_dirs()]
        if not names:
            return None, "No bundled demo found in assets/demo."
        now = Path(current).name if source_of(current) == "Bundled demo" else DEFAULT_DEMO
        name = st.sidebar.selectbox("Demo", names, index=names.index(now) if now in names else 0, key="home_demo")
        return str(DEMO_DIR / name), None
    if source == "Paper run":
        return paper_picker(current)
    if source == "Upload":
        upload = st.sidebar.file_uploader(
            "Checkpoint (.zip of a folder with model.safetensors, meta.json and the taskset files)", type=["zip"], key="home_upload"
        )
        if upload is None:
            return None, None
        try:
            return str(import_checkpoint_zip(upload.getvalue(), UPLOAD_DIR)), None
        except MetainfError as e:
            return None, f"Cannot use this upload: {e}"
    folder = st.sidebar.text_input("Checkpoint folder", value=current if source_of(current) == "Run folder" else "",
                                   key="home_folder", placeholder="runs/my-run")
    if not folder:
        return None, None
    try:
        read_meta(folder)
    except MetainfError as e:
        return None, f"Cannot open this checkpoint: {e}"
    return folder, None


def paper_picker(current: str) -> tuple[str | None, str | None]:
    """The committed runs of the paper's rows (rows.committed_runs), each with its sentence."""
    runs = paper_runs()
    if not runs:
        return None, "No committed paper run found in docs/results/paper."
    st.sidebar.markdown("**The paper's own setting:** runs of TLXML's noise-task rows at the paper's settings, "
                        "trained here and committed with the repository")  # fmt: skip
    paths = [str(r.path) for r in runs]
    names = {str(r.path): f"{r.row}, seed {r.seed}" for r in runs}
    chosen = st.sidebar.radio("Paper run", paths, index=paths.index(current) if current in paths else 0, key="home_paper",
                              format_func=names.get, captions=[r.description for r in runs])  # fmt: skip
    return chosen, None


def influence_status(path: str) -> dict | None:
    """Whether the app's default influence fit is ready (cached or shipped / partial / none);
    None when the run's data cannot be opened here (the card still shows what meta.json says)."""
    try:
        cfg = influence_config(path)
        return {**fit_status(get_run(path), cfg), "sketch": cfg.projection_dim, "rows": cfg.rows_per_task}
    except MetainfError:
        return None


def show_card(path: str, meta: dict) -> None:
    tc, test = meta["task_config"], meta.get("test")
    top, bottom = st.columns(2), st.columns(2)  # two per row: long names are never cut off
    top[0].metric("Algorithm", ALGORITHM_NAMES.get(meta["algorithm"], meta["algorithm"]))
    top[1].metric("Dataset", meta["dataset"]["name"])
    network = meta["architecture"].split("(")[0].rsplit(".", 1)[-1]  # a constructor's class name
    bottom[0].metric("Network", f"{network}, {meta['num_parameters']:,} weights", help=meta["architecture"])
    if test:
        bottom[1].metric("Test accuracy", percent(test["accuracy"]),
                         help=f"± {percent(test['accuracy_ci95'])} (95 % interval over {test['num_tasks']} test tasks)")
    imported = meta.get("imported")
    if imported:
        weights = (f"weights `{imported['weights_file']}` (SHA-256 `{imported['weights_sha256'][:12]}…`)"
                   if imported.get("weights_file") else "weights taken from a Python object")
        st.info(f"**Imported model.** Trained with {imported['library']}, not by metainf: `{imported['constructor']}`, {weights}. "
                f"Its training tasks are the ones it was trained on (from its tasks file); test tasks were {imported['test_tasks']}. "
                "Batch norm uses each task's own statistics, as during meta-training.")
    if meta.get("edited_from"):
        edit = meta.get("edit", {})
        st.info(f"**Edited model.** Made from `{Path(meta['edited_from']).name}` by the one-step edit: "
                f"{len(edit.get('block', []))} training tasks blocked (ξ = {edit.get('xi_block', 0):+g}), "
                f"{len(edit.get('enhance', []))} enhanced (ξ = {edit.get('xi_enhance', 0):+g}).")
    st.write(
        f"**Tasksets:** {tc['train_tasks']:,} training tasks{corrupted_words(tc)} · "
        f"{tc['test_tasks']:,} test tasks · {tc['ways']}-way {tc['shots']}-shot, {tc['queries']} queries per class"
    )
    if test:
        st.write(f"**Test accuracy:** {percent(test['accuracy'])} ± {percent(test['accuracy_ci95'])} · "
                 f"**loss** {test['loss']:.3f} ± {test['loss_ci95']:.3f}")
    paper = paper_run_of(path)
    if paper is not None:
        st.info(f"**Paper run.** {paper.description}")
    status = influence_status(path)
    if status is None:
        st.write("**Influence fit:** unknown: this run's data cannot be opened here.")
    elif status["state"] == "complete":
        st.write("**Influence fit:** ready (Gauss-Newton TLXML): Explain and Edit answer at once.")
    elif status["state"] == "partial":
        st.write(f"**Influence fit:** left half-way ({status['tasks_done']}/{status['total']} training tasks): "
                 "the Explain page resumes it.")
    elif paper is not None:
        st.write(f"**Influence fit:** none ships with this paper run ({status['total']:,} training tasks): the Explain page "
                 "says how long a fit takes on this machine and the command that runs it; it does not start one.")
    else:
        st.write(f"**Influence fit:** not fitted yet: the Explain page fits it over {status['total']:,} training tasks "
                 "with a progress bar, saving as it goes.")
    if status is not None and status.get("sketch"):
        st.caption(f"This network is large ({meta['num_parameters']:,} weights), so its influence is computed in a random "
                   f"{status['sketch']:,}-dimensional projection of the weights, from {status['rows']} sampled directions "
                   "per training task: an approximation that keeps the fit in memory and minutes long.")
    if not meta.get("complete", False):
        st.warning(f"Training has not finished: this checkpoint is from step {meta.get('step')}.")
    curve = meta.get("curve", [])
    if curve:
        fig = go.Figure(go.Scatter(x=[c["step"] for c in curve], y=[c["accuracy"] for c in curve], name="train accuracy"))
        fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Meta-training accuracy", xaxis_title="step",
                          yaxis_title="accuracy on training tasks")
        show_figure(fig, "home_curve", f"training_curve-{Path(path).name}")


def main() -> None:
    st.title("metainf")
    st.caption("Which training tasks made this meta-learner good or bad at a test task?")
    current = current_model_path()
    show_link_notices()
    chosen, error = model_picker(current)
    if chosen is not None and chosen != current:
        set_model(chosen)
        current = chosen
    try:
        meta = load_card(current)
    except MetainfError as e:
        st.error(f"Cannot open this checkpoint: {e}")
        st.stop()
    set_model(current)  # mirror the choice in the URL
    if error:
        st.error(error)
        st.warning(f"Still using the previous model: **{model_name(current)}**. Every page uses it until another opens.")
    show_card(current, meta)
    st.markdown(
        "**Next:** open **Explain** to see which training tasks helped or hurt one test task, **Edit** to block or "
        "enhance training tasks and watch the test accuracy change, or **Tasks** to browse the tasks themselves."
    )
    st.sidebar.caption(f"In use: {model_name(current)}")


main()
