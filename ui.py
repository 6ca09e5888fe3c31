"""App-layer helpers shared by the pages: cached access to the core, model selection, thumbnails.

Streamlit caches wrap the core's own disk cache (STYLE §7): ``cache_resource`` for the run and
the fitted influence (shared objects), ``cache_data`` for images (copied arrays).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from metainf_core.config import InfluenceConfig
from metainf_core.exceptions import MetainfError
from metainf_core.explain import fit_influence, is_fitted
from metainf_core.figures import thumbnail_strip
from metainf_core.service import Run, open_run, task_view

DEMO_DIR = Path(__file__).parent / "assets" / "demo"
DEFAULT_DEMO = "protonet-fashion-mnist"  # fastest to explain and edit interactively
DEFAULT_INFLUENCE = InfluenceConfig(method="gn", n_orth=512, dtype="float32")


@st.cache_resource(show_spinner="Loading model and data…")
def get_run(path: str) -> Run:
    return open_run(path)


def require_run() -> tuple[str, Run]:
    """The model chosen on the home page (default: the bundled demo), or a message and stop."""
    path = st.session_state.get("model_path") or str(DEMO_DIR / DEFAULT_DEMO)
    try:
        return path, get_run(path)
    except MetainfError as e:
        st.error(f"Cannot open this checkpoint: {e}")
        st.stop()


@st.cache_resource(show_spinner=False)
def _fitted(path: str, cfg: InfluenceConfig):
    return fit_influence(get_run(path), cfg)


def require_influence(path: str, run: Run, cfg: InfluenceConfig = DEFAULT_INFLUENCE):
    """The fitted TLXML for the run; if it is not cached yet, offer to fit it with a progress bar
    (a fit left half-way resumes from its last saved state)."""
    if not is_fitted(run, cfg):
        st.info(
            f"Influence is not fitted yet for this model ({len(run.train_tasks)} training tasks). "
            "Fitting streams Gauss-Newton columns task by task and is saved as it goes: you can leave and come back."
        )
        if not st.button("Fit influence now", type="primary", key="fit_button"):
            st.stop()
        bar = st.progress(0.0, text="Starting…")

        def progress(stage: str, done: int, total: int) -> None:
            label = "Curvature (Gauss-Newton columns)" if stage == "curvature" else "Per-task gradients"
            bar.progress(done / total, text=f"{label}: {done}/{total} tasks")

        fit_influence(run, cfg, progress=progress)
        bar.empty()
    return _fitted(path, cfg)


PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def figure_html(fig) -> str:  # noqa: ANN001 - a plotly Figure
    """The figure as one self-contained HTML file (plotly.js embedded, opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show_figure(fig, key: str, file_stem: str, container=None) -> None:  # noqa: ANN001
    """A Plotly chart with its exports: PNG from the chart's camera button (2× scale), and a
    self-contained HTML file from the button below it (built only when clicked)."""
    where = container if container is not None else st
    where.plotly_chart(fig, use_container_width=True, key=key, config=PLOT_CONFIG)
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
    view = task_view(get_run(path), split, task_id)
    labels = ", ".join(f"{n} ({s})" for n, s in zip(view.class_names, view.superclasses, strict=True))
    return labels + (f" · {view.corruption}" if view.corruption != "none" else "")
