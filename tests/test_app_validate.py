"""AppTest flow of the Validate page on the bundled demo: self-rank with the chosen k marked, and
proper tests whose verdict words follow from the counts shown."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from helpers import fit_from_page
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]


def expected_verdict(z: float) -> str:
    if z >= 2:
        return "significant: the expected tasks score higher"
    if z <= -2:
        return "significant the wrong way: the expected tasks score lower"
    return "not significant: no better than chance"


def flat(node) -> list:  # noqa: ANN001 - an AppTest node
    """Every element under ``node``, in page order."""
    children = getattr(node, "children", None)
    if not children:
        return [node]
    return [node] + [e for c in children.values() for e in flat(c)]


def slider_after(at: AppTest, prefix: str) -> bool:
    """Whether the test-count slider comes right after the subheader starting with ``prefix``."""
    order = flat(at.main)
    head = next(i for i, e in enumerate(order) if getattr(e, "type", "") == "subheader" and e.value.startswith(prefix))
    slider = next(i for i, e in enumerate(order) if getattr(e, "type", "") == "slider")
    return slider == head + 1


def test_validate_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "views" / "4_Validate.py"), default_timeout=900)
    at.session_state["model_path"] = str(REPO / "assets" / "demo" / "protonet-fashion-mnist")
    at.run()
    at = fit_from_page(at)
    assert not at.exception, at.exception
    # the demo's own setting has a committed LDS measurement (docs/results/lds): its numbers, said once
    from metainf_core.lds_results import method_lds, validate_sentence
    from metainf_core.service import open_run

    measured = method_lds(open_run(REPO / "assets" / "demo" / "protonet-fashion-mnist"), "tlxml-gn")
    assert measured is not None and measured.source == "protonet-demo-a0.5-k20-r2.json"
    assert [m.value for m in at.markdown if m.value.startswith("Checked against retraining")] == [validate_sentence(measured)]
    metrics = {m.label: m.value for m in at.metric}
    label, value = next((k, v) for k, v in metrics.items() if k.startswith("Mean self-rank at k = "))
    k = int(label.rsplit("= ", 1)[1])
    assert 0 <= float(value) < 255.5 / 2  # well better than random ranking of 512 tasks
    assert any("self-rank" in m.value and "puts" in m.value for m in at.markdown)  # the plain explanation
    intro = at.markdown[0].value
    sections = [h.value for h in at.subheader]
    assert intro.startswith("Three checks") and len(sections) == 3, (intro, sections)
    assert not any("TLXML" in h for h in sections)  # paper references live in the "For researchers" expander
    # the test-count slider sits in the section that uses it (after the self-rank section), and says so
    slider = at.slider(key="validate_tests")
    assert slider.label.startswith("How many test tasks this check and the next use")
    assert slider_after(at, "2. Proper tests")

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
        assert row["z"] == f"{z:+.2f}σ"
        assert row["Verdict"] == expected_verdict(z)
    noise = table[table["Expected to score higher"].str.contains("pure-noise")].iloc[0]
    assert noise["Passed"].endswith("of 128 test tasks") and noise["Verdict"].startswith("significant: ")  # demo: 84/128, +3.5σ
    reading = [c.value for c in at.caption if c.value.startswith("Each superclass row draws its line")]
    zs = [(int(re.search(r"sharing (\d+) or more", w)[1]), float(z.rstrip("σ")))
          for w, z in zip(table["Expected to score higher"], table["z"], strict=True) if "superclass" in w]
    flips = any(hi >= 2 > lo for (_, lo), (_, hi) in zip(zs, zs[1:]))
    assert bool(reading) == flips, (zs, reading)  # said exactly when a higher line passes above one that does not
