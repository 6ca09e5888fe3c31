"""Browse the fixed test and training tasksets of the chosen model."""

from __future__ import annotations

import streamlit as st

from metainf_core.figures import thumbnail_strip
from metainf_core.service import task_view
from metainf_core.words import CORRUPTIONS, class_label, corruption_name
from ui import require_run

st.set_page_config(page_title="metainf · Tasks", layout="wide")
st.title("Browse the tasks")
st.caption("Each task is a small classification problem: a few labelled support images per class, then query images to answer.")
path, run = require_run()

split = st.radio("Taskset", ["test", "train"], horizontal=True, key="tasks_split")
n = len(run.test_tasks if split == "test" else run.train_tasks)
default = int(st.query_params.get("task", 0)) if str(st.query_params.get("task", "0")).isdigit() else 0
task_id = st.number_input(f"Task id (0–{n - 1})", 0, n - 1, min(default, n - 1), key="tasks_id")
st.query_params["task"] = str(task_id)
view = task_view(run, split, int(task_id))
corrupted = view.corruption != "none"
st.subheader(f"{split.capitalize()} task {view.task_id}" + (f" · a {corruption_name(view.corruption)}" if corrupted else ""))
if corrupted:
    st.caption(f"Planted on purpose when the taskset was made: {CORRUPTIONS[view.corruption][2]}.")
if not run.dataset.is_image:
    st.write("This dataset has no images (2-D points).")
    st.stop()
shots = run.train_tasks.config.shots
for k, (name, sup) in enumerate(zip(view.class_names, view.superclasses, strict=True)):
    caption = f"label {k}: {class_label(name, sup)}" + (" — pure noise, not real images of this class" if view.corruption == "noise" else "")
    st.image(thumbnail_strip(view.support_images[k * shots : (k + 1) * shots], scale=3), caption=caption, output_format="PNG",
             alt=f"{shots} support images labelled {name}")
