"""AppTest flow of the Validate page on the bundled demo: self-rank with the chosen k marked, and
proper tests whose verdict words follow from the counts shown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


def expected_verdict(z: float) -> str:
    if z >= 2:
        return "significant: the expected tasks score higher"
    if z <= -2:
        return "significant the wrong way: the expected tasks score lower"
    return "not significant: no better than chance"


def test_validate_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "views" / "4_Validate.py"), default_timeout=900)
    at.session_state["model_path"] = str(REPO / "assets" / "demo" / "protonet-fashion-mnist")
    at.run()
    if any(b.key == "fit_button" for b in at.button):
        at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    label, value = next((k, v) for k, v in metrics.items() if k.startswith("Mean self-rank at k = "))
    k = int(label.rsplit("= ", 1)[1])
    assert 0 <= float(value) < 255.5 / 2  # well better than random ranking of 512 tasks
    assert any("self-rank" in m.value and "puts" in m.value for m in at.markdown)  # the plain explanation

    # the chosen k is marked and labelled on the self-rank curve
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    marks = [t for t in spec["data"] if t.get("text") == [f"chosen k = {k}"]]
    assert marks and marks[0]["x"] == [k]

    # each verdict follows from the count shown: z = (passed − T/2) / √(T/4)
    table = at.table[0].value
    assert list(table.columns) == ["Expected to score higher", "Passed", "z", "Verdict"]
    for _, row in table.iterrows():
        passed, total = map(int, re.fullmatch(r"(\d+) of (\d+) test tasks", row["Passed"]).groups())
        z = (passed - total / 2) / math.sqrt(total / 4)
        assert row["z"] == f"{z:+.2f}σ".replace("-", "−")
        assert row["Verdict"] == expected_verdict(z)
    noise = table[table["Expected to score higher"].str.contains("pure-noise")].iloc[0]
    assert noise["Passed"].endswith("of 128 test tasks") and noise["Verdict"].startswith("significant: ")  # demo: 84/128, +3.5σ
