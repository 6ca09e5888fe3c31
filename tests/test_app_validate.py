"""AppTest flow of the Validate page on the bundled demo: self-rank and proper-test tables."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


def test_validate_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "pages" / "4_Validate.py"), default_timeout=900)
    at.session_state["model_path"] = str(REPO / "assets" / "demo" / "protonet-fashion-mnist")
    at.run()
    if any(b.key == "fit_button" for b in at.button):
        at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    mean_rank = float(next(v for k, v in metrics.items() if k.startswith("Mean self-rank")))
    assert 0 <= mean_rank < 255.5 / 2  # well better than random ranking of 512 tasks
    table = at.dataframe[0].value
    noise = table[table["subpopulation P"].str.startswith("normal")].iloc[0]
    assert noise["total"] == 128 and noise["proper"] > 64  # demo: 84/128, +3.5σ
