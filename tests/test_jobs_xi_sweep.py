"""Issue 25 item 1: the Edit page's accuracy-versus-ξ sweep as a background job
(``jobs.submit_xi_sweep``), through the same submit / progress / cancel path as the fits and the
landscape diagnostics (tests/test_jobs.py, tests/test_jobs_diagnostics.py). Real data: the bundled
ProtoNet Fashion-MNIST demo with its shipped fit (128 test tasks).

Tolerance: the job evaluates the same float32 network on the same weights, fit and tasks in
another process (one intra-op thread, as here); only float32 rounding that depends on the process
(the kernels picked, buffer alignment in reductions) may differ: measured ≤ 1.0e-6 absolute on a loss
(4.2e-6 relative) on an AMD EPYC on 2026-12-07, so curves are compared at atol 1e-5 (+ rtol 1e-6). A
wrong ξ, set or fit moves a loss by > 1e-3 and an accuracy by ≥ 1/15 of a task's queries.
"""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from helpers import until  # tests/helpers.py
from streamlit.testing.v1 import AppTest

from metainf_core import jobs
from metainf_core.edit import XI_SWEEP, apply_delta, edit_directions, load_xi_sweep, metrics_evaluation, xi_sweep
from metainf_core.fits import fit_influence
from metainf_core.ranking import Target, all_scores, ranking_table
from metainf_core.service import open_run

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "views" / "3_Edit.py")
TEST_TASK = 0

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(demo: Path):  # noqa: ANN202 - (run, cfg, fit, scores, block)
    from ui import DEFAULT_INFLUENCE

    run = open_run(demo)
    inf = fit_influence(run, DEFAULT_INFLUENCE)  # shipped with the demo: restored into the job cache
    scores = all_scores(run, inf, Target((TEST_TASK,)), DEFAULT_INFLUENCE.dtype)
    order, _ = ranking_table(scores)
    return run, DEFAULT_INFLUENCE, inf, scores, tuple(int(j) for j in order[::-1][:8])  # the 8 most harmful


def test_same_key_submissions_share_one_job_whose_sweep_is_the_in_process_sweep(demo_fitted, job_cache):
    """Two sessions asking at once get one job (a JSON request: ids as ints); it ends *done* with
    every ξ reported, and the curve read from its entry is ``edit.xi_sweep`` evaluated here as the
    page did inside its run; asking again starts nothing."""
    run, cfg, inf, scores, block = _setup(demo_fitted)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: jobs.submit_xi_sweep(run, cfg, np.array(block)), range(2))
    assert a.id and a.id == b.id and a.state == "queued"
    assert a.request["kind"] == "xi_sweep" and a.request["block"] == sorted(block) and a.request["xis"] == list(XI_SWEEP)
    assert [j.id for j in jobs.list_jobs(job_cache)] == [a.id]
    done = jobs.wait(a, timeout=600)
    assert (done.state, done.stage, done.error, done.done, done.total) == ("done", "xis", "", len(XI_SWEEP), len(XI_SWEEP))
    again = jobs.submit_xi_sweep(run, cfg, list(reversed(block)))  # the same set in another order: the same entry
    assert again.state == "done" and not again.id and [j.id for j in jobs.list_jobs(job_cache)] == [a.id]

    stored = load_xi_sweep(run, cfg, block)
    assert stored is not None and list(stored) == list(XI_SWEEP)
    from_job = xi_sweep(lambda xi: metrics_evaluation(stored[xi]), scores, block, TEST_TASK)
    directions = edit_directions(inf.i_meta_sum, block, ())

    def evaluate(xi: float):  # the page's old in-run path: ω̂ as trained at ξ = 0, else ω̂ + ξ Σ_B I_meta
        r = run.evaluate(apply_delta(run.params, directions.delta(xi, 0.0))) if xi else run.as_trained
        return r.loss, r.accuracy, r.summary()

    here = xi_sweep(evaluate, scores, block, TEST_TASK)
    for f in fields(here):
        np.testing.assert_allclose(getattr(from_job, f.name), getattr(here, f.name), rtol=1e-6, atol=1e-5, err_msg=f.name)
    assert from_job.taskset_accuracy[XI_SWEEP.index(0.0)] == run.as_trained.summary()["accuracy"]  # ξ = 0: as trained, bit for bit


def _page(demo: Path, block: tuple[int, ...], test_task: int = TEST_TASK) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=600)
    for key, value in {"model_path": str(demo), "test_task": test_task, "edit_for": str(demo), "edit_block": list(block)}.items():
        at.session_state[key] = value
    at = at.run()
    assert not at.exception, at.exception
    return at


def test_edit_page_runs_the_sweep_as_a_job_and_draws_it_when_it_ends(demo_fitted, job_cache):
    """Click "Accuracy versus ξ": a job, whose progress ("ξ values: done/total") the page shows with
    a cancel button for the session that started it and without one in a second tab (the same job);
    when the job ends a rerun (the fragment's) draws the curve from its cache entry, and a new page
    with the same set draws it at once, for another test task too."""
    run, cfg, _, scores, block = _setup(demo_fitted)
    tabs = [_page(demo_fitted, block), _page(demo_fitted, block)]
    assert not tabs[0].get("plotly_chart") and not tabs[0].button(key="edit_curve").disabled
    tabs[0].button(key="edit_curve").click().run()
    assert not tabs[0].exception, tabs[0].exception
    job = jobs.job_status(jobs.xi_sweep_entry(run, cfg, block))
    assert job is not None and job.request["kind"] == "xi_sweep" and job.id in tabs[0].session_state["_my_jobs"]
    until(lambda: (j := jobs.job_status(job.directory)).pid and j)
    os.killpg(jobs.job_status(job.directory).pid, signal.SIGSTOP)  # held still (its own process group): both tabs see it active
    try:
        for tab, mine in zip(tabs, (True, False), strict=True):
            tab.run()
            assert not tab.exception, tab.exception
            assert len(tab.get("progress")) == 1 and not tab.get("plotly_chart")
            assert any("in the background" in i.value for i in tab.info)
            assert any(b.key == "sweep_cancel" for b in tab.button) == mine
            assert not any(b.key == "edit_curve" for b in tab.button)  # no second job to start meanwhile
        assert any("another tab or session" in c.value for c in tabs[1].caption)
    finally:
        os.killpg(jobs.job_status(job.directory).pid, signal.SIGCONT)
    assert jobs.wait(job, timeout=600).state == "done"
    tabs[0].run()  # what the progress fragment's st.rerun() does when it sees the job end
    assert not tabs[0].exception, tabs[0].exception
    assert not tabs[0].get("progress") and not any(b.key == "edit_curve" for b in tabs[0].button)
    chart = json.loads(tabs[0].get("plotly_chart")[-1].proto.spec)
    stored = load_xi_sweep(run, cfg, block)
    sweep = xi_sweep(lambda xi: metrics_evaluation(stored[xi]), scores, block, TEST_TASK)
    assert "-1<br>≈ removed" in chart["layout"]["xaxis"]["ticktext"]
    assert any(c.value.startswith(f"Test task {TEST_TASK}'s loss") for c in tabs[0].caption)
    traces = chart["data"]
    assert traces[0]["y"] == list(sweep.taskset_accuracy) and traces[1]["y"] == list(sweep.task_accuracy)

    for test_task in (TEST_TASK, 3):  # cached: drawn at once, no button, no job, for any test task
        later = _page(demo_fitted, block, test_task)
        assert later.get("plotly_chart") and not any(b.key == "edit_curve" for b in later.button)
        assert any(c.value.startswith(f"Test task {test_task}'s loss") for c in later.caption)
    assert [j.id for j in jobs.list_jobs(job_cache)] == [job.id]
