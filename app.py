"""metainf dashboard — home: choose a trained meta-learner and see its card."""

from __future__ import annotations

import streamlit as st

from metainf_core.checkpoint import import_checkpoint_zip, read_meta
from metainf_core.cache import cache_root
from metainf_core.exceptions import MetainfError
from metainf_core.explain import fit_status
from ui import DEFAULT_DEMO, DEFAULT_INFLUENCE, DEMO_DIR, get_run, show_figure


st.set_page_config(page_title="metainf", page_icon="🧭", layout="wide")
ALGORITHM_NAMES = {"maml": "MAML", "protonet": "ProtoNet", "proximal-maml": "Proximal MAML"}
UPLOAD_DIR = cache_root() / "uploads"  # verified uploads, named by content hash; never unpickled


@st.cache_data(show_spinner=False)
def load_card(path: str) -> dict:
    return read_meta(path)


def model_picker() -> str | None:
    demos = sorted(p for p in DEMO_DIR.glob("*") if (p / "meta.json").exists())
    choice = st.sidebar.radio("Model", ["Bundled demo", "Run folder", "Upload"], key="home_source")
    if choice == "Upload":
        upload = st.sidebar.file_uploader(
            "Checkpoint (.zip of a folder with model.safetensors, meta.json and the taskset files)", type=["zip"], key="home_upload"
        )
        if upload is None:
            return None
        try:
            return str(import_checkpoint_zip(upload.getvalue(), UPLOAD_DIR))
        except MetainfError as e:
            st.error(f"Cannot use this upload: {e}")
            st.stop()
    if choice == "Bundled demo":
        if not demos:
            st.sidebar.error("No bundled demo found in assets/demo.")
            return None
        names = [p.name for p in demos]
        default = names.index(DEFAULT_DEMO) if DEFAULT_DEMO in names else 0
        name = st.sidebar.selectbox("Demo", names, index=default, key="home_demo")
        return str(DEMO_DIR / name)
    folder = st.sidebar.text_input("Checkpoint folder", key="home_folder", placeholder="runs/my-run")
    return folder or None


def influence_status(path: str) -> dict | None:
    """Whether the app's default influence fit is in the disk cache (complete / partial / none);
    None when the run's data cannot be opened here (the card still shows what meta.json says)."""
    try:
        return fit_status(get_run(path), DEFAULT_INFLUENCE)
    except MetainfError:
        return None


def show_card(path: str, meta: dict) -> None:
    tc, test = meta["task_config"], meta.get("test")
    cols = st.columns(4)
    cols[0].metric("Dataset", meta["dataset"]["name"])
    cols[1].metric("Algorithm", ALGORITHM_NAMES.get(meta["algorithm"], meta["algorithm"]))
    cols[2].metric("Network", f"{meta['architecture']} · {meta['num_parameters']:,} params")
    if test:
        cols[3].metric("Test accuracy", f"{test['accuracy']:.1%}", help=f"± {test['accuracy_ci95']:.1%} (95% interval over {test['num_tasks']} test tasks)")
    st.write(
        f"**Tasksets:** {tc['train_tasks']:,} training tasks ({tc['noise_tasks']} noise, {tc['label_flip_tasks']} label-flip) · "
        f"{tc['test_tasks']:,} test tasks · {tc['ways']}-way {tc['shots']}-shot, {tc['queries']} queries per class"
    )
    if test:
        st.write(f"**Test accuracy:** {test['accuracy']:.3f} ± {test['accuracy_ci95']:.3f} · **loss** {test['loss']:.3f} ± {test['loss_ci95']:.3f}")
    status = influence_status(path)
    if status is None:
        st.write("**Influence fit:** unknown: this run's data cannot be opened here.")
    elif status["state"] == "complete":
        st.write("**Influence fit:** cached (Gauss-Newton TLXML): Explain and Edit answer at once.")
    elif status["state"] == "partial":
        st.write(f"**Influence fit:** left half-way ({status['tasks_done']}/{status['total']} training tasks): "
                 "the Explain page resumes it.")
    else:
        st.write(f"**Influence fit:** not fitted yet: the Explain page fits it over {status['total']:,} training tasks "
                 "with a progress bar, saving as it goes.")
    if not meta.get("complete", False):
        st.warning(f"Training has not finished: this checkpoint is from step {meta.get('step')}.")
    curve = meta.get("curve", [])
    if curve:
        import plotly.graph_objects as go

        fig = go.Figure(go.Scatter(x=[c["step"] for c in curve], y=[c["accuracy"] for c in curve], name="train accuracy"))
        fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="Meta-training accuracy", xaxis_title="step")
        show_figure(fig, "home_curve", "training_curve")


def main() -> None:
    st.title("metainf")
    st.caption("Which training tasks made this meta-learner good or bad at a test task?")
    path = model_picker()
    if path is None:
        st.info("Choose a model in the sidebar.")
        st.stop()
    try:
        meta = load_card(path)
    except MetainfError as e:
        st.error(f"Cannot open this checkpoint: {e}")
        st.stop()
    st.session_state["model_path"] = path
    show_card(path, meta)


main()
