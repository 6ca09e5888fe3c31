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


def test_edit_tasks_picked_by_checkbox(demo_fitted):
    at = AppTest.from_file(str(REPO / "pages" / "3_Edit.py"), default_timeout=300)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    at.number_input(key="edit_k_block").set_value(0).run()
    at.number_input(key="edit_k_enhance").set_value(0).run()
    assert at.info and "at least one task" in at.info[0].value
    boxes = [c for c in at.checkbox if c.key.startswith("edit_pick_block_")]
    assert len(boxes) == 16 and len(at.get("image")) >= 16  # 8 most harmful + 8 most helpful, with thumbnails
    boxes[0].check().run()
    assert not at.exception
    assert any(m.value.startswith("Blocked set B: 1 tasks") for m in at.markdown)
    loss = lambda: next(m.value for m in at.metric if m.label == "Test taskset loss")  # noqa: E731
    at.slider(key="edit_xi_block").set_value(0.0).run()
    unedited = loss()
    at.slider(key="edit_xi_block").set_value(-8.0).run()
    assert loss() != unedited  # blocking the one picked task moves the test loss
    assert at.get("download_button")
