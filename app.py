"""metainf dashboard — entry point: the page list, named as a person reads it (Home first).

`streamlit run app.py`. Each page is its own script in views/; the session's model and test task
live in st.session_state (see ui.py) and in the URL, so they hold across pages and shared links.

Sessions run concurrently, each page run in its own thread, with no process-wide lock: loaded
objects (the Run, the fitted influence) are never written after loading, and networks are called
on a thread's own copy of their modules (``learners.call_network``). Long work (influence fits)
runs as background jobs in their own processes (``metainf_core.jobs``), one per spare core.

torch's intra-op thread count is process-wide; the server takes ``SERVER_THREADS`` (default: the
cores left after the job slots, at least 1 — one on a 2-core machine). A page's work is small (one
gradient, an M × r product, a batched evaluation), so concurrency comes from the sessions' threads
(torch releases the GIL in its kernels), not from splitting each product over cores, which would
oversubscribe the cores the sessions and jobs already share.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
import torch

from metainf_core.evaluation import usable_cores
from metainf_core.jobs import job_slots

SERVER_THREADS = int(os.environ.get("METAINF_SERVER_THREADS", max(1, usable_cores() - job_slots())))
if torch.get_num_threads() != SERVER_THREADS:  # app.py runs on every page run: set once
    torch.set_num_threads(SERVER_THREADS)

VIEWS = Path(__file__).parent / "views"  # not "pages/": that name switches Streamlit to its automatic navigation
st.set_page_config(page_title="metainf", page_icon="🧭", layout="wide")
navigation = st.navigation([
    st.Page(VIEWS / "0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page(VIEWS / "1_Tasks.py", title="Tasks", icon=":material/grid_view:", url_path="Tasks"),
    st.Page(VIEWS / "2_Explain.py", title="Explain", icon=":material/search:", url_path="Explain"),
    st.Page(VIEWS / "3_Edit.py", title="Edit", icon=":material/tune:", url_path="Edit"),
    st.Page(VIEWS / "7_Audit.py", title="Audit", icon=":material/policy:", url_path="Audit"),
    st.Page(VIEWS / "4_Validate.py", title="Validate", icon=":material/fact_check:", url_path="Validate"),
    st.Page(VIEWS / "5_Compare.py", title="Compare", icon=":material/compare_arrows:", url_path="Compare"),
    st.Page(VIEWS / "6_Landscape.py", title="Landscape", icon=":material/landscape:", url_path="Landscape"),
])  # fmt: skip
navigation.run()
