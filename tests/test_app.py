"""Streamlit flows with AppTest on the bundled demo."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def test_home_shows_the_demo_card():
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Dataset"] == "fashion-mnist" and labels["Algorithm"] == "ProtoNet"
    assert labels["Test accuracy"].endswith("%") and float(labels["Test accuracy"][:-1]) > 50
    assert at.session_state["model_path"].endswith("protonet-fashion-mnist")


def test_home_reports_a_bad_folder(tmp_path):
    (tmp_path / "meta.json").write_text("{not json")
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    at.sidebar.radio(key="home_source").set_value("Run folder").run()
    at.sidebar.text_input(key="home_folder").input(str(tmp_path)).run()
    assert not at.exception
    assert at.error and "Cannot open" in at.error[0].value


def test_tasks_page_shows_thumbnails_with_superclasses():
    at = AppTest.from_file(str(REPO / "pages" / "1_Tasks.py"), default_timeout=120)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception
    at.number_input(key="tasks_id").set_value(5).run()
    assert not at.exception
    images = at.get("image")
    captions = [img.proto.imgs[0].caption for img in images]
    assert at.query_params["task"] in (["5"], "5")
    assert len(images) == 3 and all(img.proto.imgs[0].url.endswith(".png") for img in images)
    assert all(c.endswith(("(tops)", "(footwear)", "(other)")) for c in captions), captions
