"""AppTest flow of the Explain page on the bundled ProtoNet demo: fit (or load the cached fit),
choose a test task, see thumbnails with superclass labels and a ranking that changes with it."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def _images(at: AppTest) -> list:
    return at.get("image")


def _rows(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**#")]


def test_explain_flow(demo_fitted):
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=900)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception, at.exception
    assert not any(b.key == "fit_button" for b in at.button)  # the demo's fit ships with it: no waiting
    summary = at.success[0].value
    assert "helped this test task most" in summary and "hurt this test task most" in summary
    rows = _rows(at)
    assert len(rows) == 10  # 5 most helpful + 5 most harmful
    assert all(any(s in r for s in ("(tops)", "(footwear)", "(other)")) for r in rows)
    assert all("size" in r and "alignment" in r for r in rows)
    # each card's size claim recomputed: how many training tasks are smaller than this one
    import re

    from metainf_core.fits import fit_influence
    from metainf_core.ranking import Target, score_parts
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    run = open_run(DEMO)
    sizes = score_parts(run, fit_influence(run, DEFAULT_INFLUENCE), Target((0,)), DEFAULT_INFLUENCE.dtype)["size"]
    for r in rows:
        j, said = re.search(r"training task (\d+).*size: (.+?) · alignment", r, re.S).groups()
        smaller = int((sizes < sizes[int(j)]).sum())
        assert said == ("the largest of all 512 training tasks" if smaller == 511 else f"bigger than {smaller} of the 512 training tasks"), r
    assert len(_images(at)) >= 12  # test task + a grid per ranked training task
    first = rows[:5]
    at.number_input(key="_test_task_input").set_value(7).run()
    assert not at.exception
    assert at.query_params["test"] in (["7"], "7") and at.session_state["test_task"] == 7
    assert _rows(at)[:5] != first


def test_random_and_gallery_pick_a_test_task_without_crashing(demo_fitted):
    """The two main ways of choosing a test task (they used to raise StreamlitAPIException)."""
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    at.button(key="explain_pick_5").click().run()
    assert not at.exception, at.exception
    assert at.session_state["test_task"] == 5 and at.number_input(key="_test_task_input").value == 5
    assert at.subheader[0].value == "Test task 5"
    seen = set()
    for _ in range(4):
        at.button(key="random_test_task").click().run()
        assert not at.exception, at.exception
        i = at.session_state["test_task"]
        assert at.number_input(key="_test_task_input").value == i and at.query_params["test"] in ([str(i)], str(i))
        seen.add(i)
    assert len(seen) > 1  # 4 draws from 128 tasks: all equal has probability 128**-3


def test_order_by_alignment_and_summary_words(demo_fitted):
    """Ordering by alignment changes the order and the ranks stay consistent with the shown values;
    the summary never names the same class on both sides."""
    import re

    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    by_score = _rows(at)
    at.radio(key="explain_order").set_value("Alignment only").run()
    assert not at.exception
    by_align = _rows(at)
    aligns = [float(re.search(r"alignment ([+-][0-9.]+)", r).group(1)) for r in by_align]
    assert aligns[:5] == sorted(aligns[:5], reverse=True) and min(aligns[:5]) >= max(aligns[5:])
    assert by_align != by_score
    summary = at.success[0].value
    helped, hurt = summary.split(". The ", 1) if ". The " in summary else (summary, "")
    named = lambda text: set(re.findall(r"contain ([A-Za-z /-]+ \([a-z]+\))", text))  # noqa: E731
    assert not (named(helped) & named(hurt)), summary


def test_drill_down_shows_image_shares(demo_fitted):
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    drill = [b for b in at.button if b.key.startswith("harmful_drill_")][0]
    j = int(drill.key.rsplit("_", 1)[1])
    drill.click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="explain_drill").value == j
    assert any(m.value.startswith(f"**Training task {j}**") for m in at.markdown)
    assert any(c.value.startswith("Query images:") for c in at.caption)


def _progress_texts(at: AppTest) -> list[str]:
    return [p.proto.text for p in at.get("progress")]


def test_unfitted_model_offers_a_fit_with_progress(synthetic_run, tmp_path, monkeypatch):
    """A model without a cached fit: the page explains and stops; a click starts a background fit job
    whose progress the page shows (with a cancel button for the session that started it), and the
    page shows the ranking once the job is done (small run)."""
    from metainf_core import jobs
    from ui import fit_job

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300)
    at.session_state["model_path"] = str(synthetic_run)
    at.run()
    assert not at.exception
    assert "not fitted yet" in at.info[0].value and not at.success
    at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    job = fit_job(str(synthetic_run))
    assert job is not None and job.id in at.session_state["_my_jobs"]
    if job.active:  # still running when the page drew (start-up alone takes seconds): progress, cancel
        assert _progress_texts(at) and any(b.key == "fit_cancel" for b in at.button) and not at.success
    assert jobs.wait(job, timeout=600).state == "done"
    at.run()  # what the fragment's st.rerun() does when it sees the job end
    assert not at.exception, at.exception
    assert "helped this test task most" in at.success[0].value
    assert (Path(job.directory) / "result.safetensors").is_file()  # the fit went to the disk cache


def test_killed_fit_job_is_told_and_a_retry_finishes_it_and_a_second_tab_sees_the_job(synthetic_run, tmp_path, monkeypatch):
    """Issue 25: a worker killed with SIGKILL leaves a *failed* job that the page names (never
    "running" forever); a second tab (another session) sees the same job's progress without a cancel
    button, and "Resume the fit" / "Fit influence now" starts a new job that ends with the ranking."""
    import os
    import signal

    from metainf_core import jobs
    from ui import fit_job

    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    tabs = [AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=300) for _ in range(2)]
    for tab in tabs:
        tab.session_state["model_path"] = str(synthetic_run)
        tab.run()
    tabs[0].button(key="fit_button").click().run()
    job = fit_job(str(synthetic_run))
    entry = job.directory
    os.killpg(job.pid, signal.SIGSTOP)  # held still (its own process group), so both tabs see it active
    try:
        tabs[1].run()
        assert not tabs[1].exception, tabs[1].exception
        assert _progress_texts(tabs[1]) and not any(b.key == "fit_cancel" for b in tabs[1].button)
        assert any("another tab or session" in c.value for c in tabs[1].caption)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # a stopped process dies of SIGKILL at once (no SIGCONT: it may be reaped already)
    while jobs._process_start(job.pid) is not None:  # reaped by the submitting thread
        time.sleep(0.05)
    assert jobs.job_status(entry).state == "failed"
    for tab in tabs:
        tab.run()
        assert not tab.exception, tab.exception
        assert any(jobs.STOPPED in e.value for e in tab.error), [e.value for e in tab.error]
    tabs[1].button(key="fit_button").click().run()  # the other tab retries
    assert jobs.wait(jobs.job_status(entry), timeout=600).state == "done"
    for tab in tabs:
        tab.run()
        assert "helped this test task most" in tab.success[0].value


def blocks(node) -> list:  # noqa: ANN001 - an AppTest node
    return [node] + [b for c in getattr(node, "children", {}).values() for b in blocks(c)]


def test_gallery_reaches_every_test_task_and_drilldown_opens_where_asked(demo_fitted):
    at = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=900)
    at.session_state["model_path"] = str(DEMO)
    at.run()
    assert not at.exception, at.exception
    page = at.number_input(key="explain_gallery_page")
    assert page.max == 11  # 128 test tasks, 12 a page
    page.set_value(11).run()
    assert not at.exception, at.exception
    picks = sorted(int(b.key.rsplit("_", 1)[1]) for b in at.button if b.key and b.key.startswith("explain_pick_"))
    assert picks == list(range(120, 128))  # the last page holds the last test tasks
    assert any(c.value.endswith(("(tops)", "(footwear)", "(other)")) for c in at.caption)  # class names shown, not only in tooltips
    at.button(key="explain_pick_127").click().run()
    assert at.session_state["test_task"] == 127
    drill = next(b for b in at.button if b.key and b.key.startswith("harmful_drill_"))
    j = int(drill.key.rsplit("_", 1)[1])
    drill.click().run()
    assert not at.exception, at.exception
    dialogs = [b for b in blocks(at._tree) if getattr(b, "type", "") == "dialog"]  # Streamlit puts dialogs in an "event" block
    assert dialogs, "the drill-down opens in a dialog over the row, not ~1,000 px below it"
    assert any(m.value.startswith(f"**Training task {j}**") for m in dialogs[0].markdown)


def test_drilldown_images_carry_the_numbers_their_captions_use():
    """The captions say "image 7": the grid writes 1..n on the tiles, row by row, and nothing else changes."""
    import numpy as np
    import torch

    from metainf_core.figures import heat_grid

    images, values = torch.zeros(6, 1, 28, 28), np.linspace(-1, 1, 6)
    plain, numbered = heat_grid(images, values, per_row=3), heat_grid(images, values, per_row=3, numbered=True)
    changed = np.argwhere((plain != numbered).any(-1))
    tile = 28 * 2 + 2 * 3 + 2  # scale 2, border 3, gap 2
    corners = {(int(y) // tile, int(x) // tile) for y, x in changed}
    assert corners == {(r, c) for r in range(2) for c in range(3)}  # one number on every tile
    assert all(y % tile < 3 + 16 and x % tile < 3 + 20 for y, x in changed)  # in its top-left corner only
