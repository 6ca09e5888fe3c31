"""metainf dashboard — entry point: the page list, named as a person reads it (Home first).

`streamlit run app.py`. Each page is its own script in views/; the session's model and test task
live in st.session_state (see ui.py) and in the URL, so they hold across pages and shared links.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import COMPUTE_LOCK

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
with COMPUTE_LOCK:  # see ui.COMPUTE_LOCK: one page computes at a time in this process
    navigation.run()
