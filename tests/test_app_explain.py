"""AppTest flow of the Explain page on the bundled ProtoNet demo: fit (or load the cached fit),
choose a test task, see thumbnails with superclass labels and a ranking that changes with it."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def _images(at: AppTest) -> list:
    return at.get("image")


def test_explain_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "pages" / "2_Explain.py"), default_timeout=900)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception, at.exception
    if any(b.key == "fit_button" for b in at.button):
        at.button(key="fit_button").click().run()  # first run on this machine: fit with a progress bar
    assert not at.exception, at.exception
    summary = at.success[0].value
    assert "helped this test task most" in summary and "hurt it most" in summary
    rows = [m.value for m in at.markdown if m.value.startswith("**#")]
    assert len(rows) == 10  # 5 most helpful + 5 most harmful
    assert all(any(s in r for s in ("(tops)", "(footwear)", "(other)")) for r in rows)
    assert len(_images(at)) >= 13  # test task + a grid per ranked training task + the side-by-side pair
    at.selectbox(key="explain_compare").select_index(9).run()  # the most harmful task beside the test task
    assert not at.exception
    assert any(m.value.startswith(f"**Training task {at.selectbox(key='explain_compare').value}**") for m in at.markdown)
    first = rows[:5]
    at.number_input(key="explain_test").set_value(7).run()
    assert not at.exception
    assert at.query_params["test"] in (["7"], "7")
    assert [m.value for m in at.markdown if m.value.startswith("**#")][:5] != first


def test_unfitted_model_offers_a_fit_with_progress(synthetic_run, tmp_path, monkeypatch):
    """A model without a cached fit: the page explains, stops, and fits on request (small run)."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO / "pages" / "2_Explain.py"), default_timeout=300)
    at.session_state["model_path"] = str(synthetic_run)
    at.run()
    assert not at.exception
    assert "not fitted yet" in at.info[0].value and not at.success
    at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    assert "helped this test task most" in at.success[0].value
    assert any((tmp_path / "cache" / "influence").iterdir())  # the fit went to the disk cache
