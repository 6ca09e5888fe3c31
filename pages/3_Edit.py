"""Edit: block or enhance training tasks with TLXML's one-step update (Eq. 13) and see the effect."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from metainf_core.edit import apply_delta
from metainf_core.explain import Target, all_scores, ranking_table, save_edited_checkpoint
from ui import DEFAULT_INFLUENCE, describe_task, require_influence, require_run, show_figure, task_strip

XI_RANGE = (-8.0, 8.0)
st.set_page_config(page_title="metainf · Edit", layout="wide")
st.title("One-step edit: block or enhance training tasks")
st.caption("ω' = ω̂ + ξ_B·Σ_{j∈B} I_meta(j) + ξ_E·Σ_{j∈E} I_meta(j)  (TLXML Eq. 13). ξ = −1 approximates removing the tasks; "
           "ξ < −1 blocks harder; ξ > 0 enhances. Large |ξ|·|B| leaves the linear regime, and accuracy drops.")
path, run = require_run()
inf = require_influence(path, run)
n_test, m = len(run.test_tasks), inf.num_tasks

for key, value in (("edit_xi_block", -1.0), ("edit_xi_enhance", 1.0), ("edit_k_block", 16), ("edit_k_enhance", 0)):
    st.session_state.setdefault(key, value)
st.session_state.setdefault("edit_test", int(st.session_state.get("explain_test", 0)))

c1, c2, c3 = st.columns(3)
test_id = int(c1.number_input(f"Test task (0–{n_test - 1})", 0, n_test - 1, key="edit_test"))
c1.caption(describe_task(path, "test", test_id))
k_block = int(c2.number_input("Block the k most harmful training tasks", 0, m, key="edit_k_block"))
k_enh = int(c3.number_input("Enhance the k most helpful training tasks", 0, m, key="edit_k_enhance"))

scores = all_scores(run, inf, Target((test_id,)), DEFAULT_INFLUENCE.dtype)
order, ranks = ranking_table(scores)
PICK_ROWS = 8


def pick_from_ranking() -> tuple[list[int], list[int]]:
    """Checkboxes beside the most harmful and most helpful tasks (thumbnails, rank, score)."""
    picked_b, picked_e = [], []
    with st.expander(f"Pick tasks from the ranking ({PICK_ROWS} most harmful, {PICK_ROWS} most helpful)"):
        sides = st.columns(2)
        for side, ids, title in ((sides[0], order[::-1][:PICK_ROWS], "Most harmful"), (sides[1], order[:PICK_ROWS], "Most helpful")):
            side.markdown(f"**{title}**")
            for j in (int(x) for x in ids):
                a, b, c = side.columns([4, 1, 1])
                img = task_strip(path, "train", j, scale=1, per_class=3)
                if img is not None:
                    a.image(img, output_format="PNG")
                a.caption(f"task {j} · rank {int(ranks[j]) + 1} · score {scores[j]:+.3g} · {describe_task(path, 'train', j)}")
                if b.checkbox("block", key=f"edit_pick_block_{j}"):
                    picked_b.append(j)
                if c.checkbox("enhance", key=f"edit_pick_enhance_{j}"):
                    picked_e.append(j)
    return picked_b, picked_e


picked_block, picked_enhance = pick_from_ranking()
block = np.union1d(order[::-1][:k_block], picked_block).astype(np.int64)
enhance = np.setdiff1d(np.union1d(order[:k_enh], picked_enhance), block).astype(np.int64)
st.write(f"Blocked set B: {len(block)} tasks · enhanced set E: {len(enhance)} tasks "
         f"({int(np.isin(block, run.train_tasks.ids_with('noise')).sum())} of B are noise tasks).")


@st.cache_data(show_spinner=False, max_entries=64)
def group_directions(path: str, block: tuple[int, ...], enhance: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Σ I_meta over B and over E (flat, length q); ξ only rescales them."""
    fn = inf.i_meta_sum
    zero = np.zeros(inf.factor.shape[0])
    a = fn(np.asarray(block)).cpu().numpy() if block else zero
    b = fn(np.asarray(enhance)).cpu().numpy() if enhance else zero
    return a, b


@st.cache_data(show_spinner=False)
def baseline(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    r = run.evaluate()
    return r.loss, r.accuracy, r.summary()


def edited(xi_b: float, xi_e: float):
    import torch

    a, b = group_directions(path, tuple(int(x) for x in block), tuple(int(x) for x in enhance))
    return apply_delta(run.params, torch.from_numpy(xi_b * a + xi_e * b))


def checkpoint_zip(xi_b: float, xi_e: float) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        out = save_edited_checkpoint(run, edited(xi_b, xi_e), Path(tmp) / "edited", {
            "block": [int(x) for x in block], "xi_block": xi_b, "enhance": [int(x) for x in enhance], "xi_enhance": xi_e,
            "test": run.evaluate(edited(xi_b, xi_e)).summary()})  # fmt: skip
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(out.iterdir()):
                z.write(f, f"edited/{f.name}")
        return buf.getvalue()


@st.fragment
def sliders_and_results() -> None:
    s1, s2, s3 = st.columns([2, 2, 1])
    xi_b = s1.slider("ξ for blocked tasks", *XI_RANGE, step=0.5, key="edit_xi_block", disabled=not len(block))
    xi_e = s2.slider("ξ for enhanced tasks", *XI_RANGE, step=0.5, key="edit_xi_enhance", disabled=not len(enhance))
    if s3.button("Reset", key="edit_reset"):
        for key in ("edit_xi_block", "edit_xi_enhance"):
            del st.session_state[key]
        st.rerun()
    if not (len(block) or len(enhance)):
        st.info("Choose at least one task to block or enhance.")
        return
    loss0, acc0, summ0 = baseline(path)
    after = run.evaluate(edited(xi_b, xi_e))
    summ1 = after.summary()
    r1, r2, r3, r4 = st.columns(4)
    r1.metric(f"Test task {test_id} accuracy", f"{after.accuracy[test_id]:.1%}", f"{after.accuracy[test_id] - acc0[test_id]:+.1%}")
    r2.metric(f"Test task {test_id} loss", f"{after.loss[test_id]:.3f}", f"{after.loss[test_id] - loss0[test_id]:+.3f}", delta_color="inverse")
    r3.metric(f"Test taskset accuracy ({n_test} tasks)", f"{summ1['accuracy']:.2%}", f"{summ1['accuracy'] - summ0['accuracy']:+.2%}")
    r4.metric("Test taskset loss", f"{summ1['loss']:.3f}", f"{summ1['loss'] - summ0['loss']:+.3f}", delta_color="inverse")
    st.markdown(
        f"Accuracy on the test taskset: **before** {summ0['accuracy']:.3f} ± {summ0['accuracy_ci95']:.3f} → "
        f"**after** {summ1['accuracy']:.3f} ± {summ1['accuracy_ci95']:.3f} (95% intervals)"
    )
    st.download_button(
        "Download the edited checkpoint (.zip)", lambda xb=xi_b, xe=xi_e: checkpoint_zip(xb, xe), "edited-checkpoint.zip",
        "application/zip", key="edit_download", on_click="ignore", icon=":material/download:",
        help="safetensors + meta.json with the edit recorded; built when you click",
    )


sliders_and_results()

st.divider()
if st.button("Accuracy versus ξ (blocked set)", key="edit_curve", disabled=not len(block)):
    xis = [-8, -4, -2, -1, 0, 1, 2, 4, 8]
    accs, task_accs = [], []
    bar = st.progress(0.0)
    for n, xi in enumerate(xis):
        res = run.evaluate(edited(float(xi), 0.0))
        accs.append(res.summary()["accuracy"])
        task_accs.append(float(res.accuracy[test_id]))
        bar.progress((n + 1) / len(xis))
    bar.empty()
    fig = go.Figure([go.Scatter(x=xis, y=accs, mode="lines+markers", name="test taskset"),
                     go.Scatter(x=xis, y=task_accs, mode="lines+markers", name=f"test task {test_id}")])
    fig.update_layout(xaxis_title="ξ (blocked set)", yaxis_title="accuracy", height=320, margin=dict(l=10, r=10, t=30, b=10))
    show_figure(fig, "edit_curve_fig", "accuracy_vs_xi")
