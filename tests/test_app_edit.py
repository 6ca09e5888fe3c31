"""AppTest flows of the Edit page on the bundled ProtoNet demo: nothing applied until asked; the
sets shown are the sets applied (quick picks, per-task choices, lists, Reset); the sentence names the
numbers of the tiles; the first-order prediction tracks the re-evaluated loss for small edits."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import fit_from_page, sweep_from_page
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"
PAGE = str(REPO / "views" / "3_Edit.py")
QUERY_IMAGES = 15  # the demo: 3 ways × 5 queries
SENTENCE = re.compile(
    r"(?:raised|lowered|left) test task (?P<task>\d+)'s accuracy (?:from (?P<acc0>[\d.]+ %) to|at) (?P<acc1>[\d.]+ %) "
    r"\((?:(?P<right0>\d+) → )?(?P<right1>\d+) of its (?P<n>\d+) query images right\) and (?:raised|lowered|left) its loss "
    r"(?:from (?P<loss0>[\d.]+) to|at) (?P<loss1>[\d.]+)\. On all (?P<tasks>\d+) test tasks: accuracy (?P<set_acc0>[\d.]+ %) → "
    r"(?P<set_acc1>[\d.]+ %), loss (?P<set_loss0>[\d.]+) → (?P<set_loss1>[\d.]+)\."
)


def open_page(test_task: int | None = None) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=900)
    at.session_state["model_path"] = str(DEMO)
    if test_task is not None:
        at.session_state["test_task"] = test_task
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    at = fit_from_page(at)
    assert not at.exception, at.exception
    return at


def tile(at: AppTest, prefix: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(prefix))


def sets(at: AppTest) -> tuple[list[int], list[int]]:
    return list(at.session_state["edit_block"]), list(at.session_state["edit_enhance"])


def choices(at: AppTest) -> dict[int, str]:
    return {int(r.key.rsplit("_", 1)[1]): r.value for r in at.radio if r.key.startswith("edit_choice_")}


def assert_nothing_applied(at: AppTest) -> None:
    assert sets(at) == ([], [])
    assert any(i.value.startswith("Nothing is blocked or enhanced yet") for i in at.info)
    assert not at.metric and not at.success
    assert len(choices(at)) == 16 and set(choices(at).values()) == {"keep"}  # 8 most harmful + 8 most helpful
    assert at.multiselect(key="edit_block_list").value == [] and at.multiselect(key="edit_enhance_list").value == []


def sentence(at: AppTest) -> str:
    """The edit's sentence, in whichever box its outcome chose (green only when accuracy rose and fell nowhere)."""
    return next(b.value for b in [*at.success, *at.warning, *at.info] if SENTENCE.search(b.value))


def delta(at: AppTest, prefix: str) -> str:
    return next(m.proto.delta for m in at.metric if m.label.startswith(prefix))


def assert_sentence_matches_tiles(at: AppTest, test_id: int) -> re.Match:
    s = SENTENCE.search(sentence(at))
    assert s, sentence(at)
    assert int(s["task"]) == test_id and int(s["n"]) == QUERY_IMAGES and int(s["tasks"]) == 128
    assert s["acc1"] == tile(at, f"Test task {test_id} accuracy") and s["loss1"] == tile(at, f"Test task {test_id} loss")
    assert s["set_acc1"] == tile(at, "Test taskset accuracy") and s["set_loss1"] == tile(at, "Test taskset loss")
    assert int(s["right1"]) == round(float(s["acc1"].rstrip(" %")) / 100 * QUERY_IMAGES)
    return s


def predicted_and_actual(at: AppTest) -> tuple[float, float]:
    line = next(m.value for m in at.markdown if m.value.startswith("Predicted by the influence scores"))
    pred, act = re.findall(r"\*\*([+-]?[\d.e+-]+)\*\*", line)
    return float(pred), float(act)


def test_quick_pick_then_xi_moves_the_tiles(demo_fitted):
    at = open_page()
    assert_nothing_applied(at)
    baseline = re.search(r"on all 128 test tasks accuracy is ([\d.]+ %), loss ([\d.]+)\.", at.info[0].value).groups()
    harmful = [j for j in choices(at)][:8]  # the first column lists the 8 most harmful, most harmful first
    ok(at.number_input(key="edit_k").set_value(8).run())
    ok(at.button(key="edit_pick_harmful").click().run())
    block, enhance = sets(at)
    assert block == sorted(harmful) and enhance == []
    assert at.multiselect(key="edit_block_list").value == block
    assert any(m.value.startswith("Blocked: **8 training tasks**") for m in at.markdown)
    assert all(choices(at)[j] == "block" for j in harmful)
    s = assert_sentence_matches_tiles(at, 0)
    assert sentence(at).startswith("Blocking 8 training tasks at ξ = -1 (about the same as removing them)")
    before = (s["set_acc0"], s["set_loss0"])
    assert before == baseline
    assert tile(at, "Test taskset accuracy") != before[0]
    removed = (tile(at, "Test taskset accuracy"), tile(at, "Test taskset loss"))
    ok(at.slider(key="edit_xi_block").set_value(-4.0).run())
    assert (tile(at, "Test taskset accuracy"), tile(at, "Test taskset loss")) != removed
    assert_sentence_matches_tiles(at, 0)
    ok(at.slider(key="edit_xi_block").set_value(2.0).run())  # the wrong way: accuracy and loss both fall on all test tasks
    assert_a_worse_edit_reads_worse(at)
    assert "(as if they counted 3× as much)" in sentence(at)
    ok(at.slider(key="edit_xi_block").set_value(0.0).run())  # ξ = 0: the model as trained
    assert (tile(at, "Test taskset accuracy"), tile(at, "Test taskset loss")) == before
    assert "(no change)" in sentence(at)
    assert at.get("download_button")
    ok(sweep_from_page(at))  # a background job (jobs.submit_xi_sweep); drawn once it ends
    chart = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert "-1<br>≈ removed" in chart["layout"]["xaxis"]["ticktext"]  # on the axis, where no line crosses it
    assert not chart["layout"].get("annotations")
    assert any(c.value.startswith("Test task 0's loss moved the way the influence scores predict for ξ from") for c in at.caption)


def assert_a_worse_edit_reads_worse(at: AppTest) -> None:
    """Accuracy fell on all test tasks: no green box, the tile's delta negative in a sign st.metric reads,
    and the same-way caption counts the images that really flipped (not "one borderline image")."""
    s = SENTENCE.search(sentence(at))
    set_before, set_after = (float(s[k].rstrip(" %")) for k in ("set_acc0", "set_acc1"))
    assert set_after < set_before and not at.success
    assert any(SENTENCE.search(w.value) for w in at.warning) or any(SENTENCE.search(i.value) for i in at.info)
    assert delta(at, "Test taskset accuracy") == f"{set_after - set_before:+.2f} points" and delta(at, "Test taskset accuracy")[0] == "-"
    why = next(c.value for c in at.caption if c.value.startswith("Accuracy and loss moved the same way"))
    flipped = round((set_before - set_after) / 100 * 128 * QUERY_IMAGES)
    images = "1 query image fewer gets" if flipped == 1 else f"{flipped} query images fewer get"
    assert f"On all 128 test tasks, {images} the right top guess" in why, why
    assert "borderline" not in why


def test_chosen_lists_say_how_many_are_noise_and_name_every_task(demo_fitted):
    from metainf_core.service import open_run

    noise = set(open_run(DEMO).train_tasks.ids_with("noise").tolist())
    at = open_page()
    ok(at.button(key="edit_pick_harmful").click().run())  # k = 16
    block, _ = sets(at)
    line = next(m.value for m in at.markdown if m.value.startswith("Blocked: "))
    n_noise = len(noise.intersection(block))
    assert line == "Blocked: **16 training tasks**" + (f" ({n_noise} of them pure-noise, marked “noise”)" if n_noise else "")
    chips = at.multiselect(key="edit_block_list")
    assert list(chips.values) == [f"task {j} · noise" if j in noise else f"task {j}" for j in block]


def test_choices_lists_and_reset(demo_fitted):
    at = open_page()
    j = next(iter(choices(at)))  # the most harmful task
    ok(at.radio(key=f"edit_choice_{j}").set_value("block").run())
    assert sets(at) == ([j], [])
    ok(at.radio(key=f"edit_choice_{j}").set_value("enhance").run())
    assert sets(at) == ([], [j]) and choices(at)[j] == "enhance"
    assert sentence(at).startswith("Enhancing 1 training task at ξ = +1 (as if they counted twice)")
    ok(at.button(key="edit_pick_harmful").click().run())  # the default k = 16 takes j from the enhanced set
    block, enhance = sets(at)
    assert len(block) == 16 and j in block and enhance == [] and choices(at)[j] == "block"
    ok(at.multiselect(key="edit_block_list").unselect(j).run())  # removed from its list
    block, enhance = sets(at)
    assert len(block) == 15 and j not in block and choices(at)[j] == "keep"
    ok(at.multiselect(key="edit_enhance_list").select(block[0]).run())  # added to the other list: leaves this one
    assert sets(at) == (block[1:], [block[0]])
    ok(at.number_input(key="edit_k").set_value(3).run())
    ok(at.slider(key="edit_xi_block").set_value(-3.0).run())
    ok(at.slider(key="edit_xi_enhance").set_value(2.5).run())
    ok(at.button(key="edit_reset").click().run())
    assert_nothing_applied(at)
    assert at.slider(key="edit_xi_block").value == -1.0 and at.slider(key="edit_xi_enhance").value == 1.0
    assert at.number_input(key="edit_k").value == 16


def test_session_test_task_and_predicted_change(demo_fitted):
    for test_id in (3, 5):
        at = open_page(test_task=test_id)
        assert at.number_input(key="_test_task_input").value == test_id
        assert any(m.value.startswith(f"**Test task {test_id}**") for m in at.markdown)
        ok(at.number_input(key="edit_k").set_value(8).run())
        ok(at.button(key="edit_pick_harmful").click().run())
        ok(at.slider(key="edit_xi_block").set_value(-0.5).run())
        assert_sentence_matches_tiles(at, test_id)
        pred, act = predicted_and_actual(at)
        assert abs(pred - act) <= 0.2 * abs(act), (test_id, pred, act)  # small edit: first order holds
        ok(at.slider(key="edit_xi_block").set_value(-8.0).run())
        pred8, act8 = predicted_and_actual(at)
        assert abs(pred8 - act8) / abs(act8) > abs(pred - act) / abs(act), (test_id, pred8, act8)  # large edit: apart
