"""AppTest flow of the Compare page on the bundled ProtoNet demo: two methods side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def test_compare_flow(demo_fitted):
    from metainf_core.compare import CompareConfig, compare_methods
    from metainf_core.ranking import Target
    from metainf_core.service import open_run

    at = AppTest.from_file(str(REPO / "views" / "5_Compare.py"), default_timeout=600)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="compare_a").value == "tlxml-gn" and at.selectbox(key="compare_b").value == "grad-sim"
    assert any("TLXML (exact)" in c.value for c in at.caption)  # q = 7,248 > 5,000: listed as not applicable
    assert any("TLXML (exact)** (`tlxml-exact`)" in m.value and "not applicable here" in m.value for m in at.markdown)  # and why
    assert at.selectbox(key="compare_a").format_func("grad-sim") == "Gradient similarity"
    assert not any(w in m.value for m in at.markdown if m.value.startswith("####") for w in ("tlxml-gn", "grad-sim"))
    ref = compare_methods(open_run(DEMO), Target((0,)), ["tlxml-gn", "grad-sim"], 5, CompareConfig(dtype="float32"))
    spearman = next(m.value for m in at.metric if m.label.startswith("Same order? (Spearman)"))
    assert spearman == f"{ref['pairs'][0]['spearman']:+.2f}"
    assert len(at.get("image")) == 20  # 5 most helpful and 5 most harmful thumbnail strips per method
    first = [c.value for c in at.caption if c.value.startswith("#1 ·")]
    assert len(first) == 2 and f"training task {ref['methods']['tlxml-gn']['most_helpful'][0]} " in first[0]
    at.number_input(key="_test_task_input").set_value(9).run()
    assert not at.exception
    again = next(m.value for m in at.metric if m.label.startswith("Same order? (Spearman)"))
    ref9 = compare_methods(open_run(DEMO), Target((9,)), ["tlxml-gn", "grad-sim"], 5, CompareConfig(dtype="float32"))
    assert again == f"{ref9['pairs'][0]['spearman']:+.2f}" and np.isfinite(ref9["pairs"][0]["spearman"])
    at.selectbox(key="compare_b").set_value("tlxml-gn").run()
    assert at.info and "two different methods" in at.info[0].value
