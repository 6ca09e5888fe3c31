"""AppTest flow of the Edit page: moving ξ changes the reported accuracy; reset restores it."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def _taskset_accuracy(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label.startswith("Test taskset accuracy"))


def test_edit_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "pages" / "3_Edit.py"), default_timeout=900)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    if any(b.key == "fit_button" for b in at.button):
        at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    at.number_input(key="edit_k_block").set_value(64).run()
    at.slider(key="edit_xi_block").set_value(0.0).run()
    unedited = _taskset_accuracy(at)
    assert not at.exception
    at.slider(key="edit_xi_block").set_value(-4.0).run()
    blocked = _taskset_accuracy(at)
    at.slider(key="edit_xi_block").set_value(8.0).run()
    enhanced_bad = _taskset_accuracy(at)
    assert len({unedited, blocked, enhanced_bad}) == 3, (unedited, blocked, enhanced_bad)
    at.button(key="edit_curve").click().run()
    assert not at.exception and at.get("plotly_chart")
