"""Issue 25 item 1: the Audit page's removals at a k or ξ not yet evaluated as a background job
(``jobs.submit_removal``), through the same submit / progress / cancel path as the fits, the
landscape diagnostics and the ξ sweep. Real data: the bundled ProtoNet Fashion-MNIST demo with its
shipped fit (128 test tasks), at a ξ whose removals are not shipped.

Tolerance: the job evaluates the same float32 network on the same weights, fit and tasks in
another process (one intra-op thread, as here); only float32 rounding that depends on the process
(the kernels picked, buffer alignment in reductions) may differ: measured ≤ 1.0e-6 absolute on a loss
(4.2e-6 relative, on a loss of 0.013) on an AMD EPYC on 2026-12-07, so losses are compared at atol
1e-5 (+ rtol 1e-6). A wrong set, ξ or fit moves a loss by > 1e-3 and an accuracy by ≥ 1/15 of a
task's queries.
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import page_with, until  # tests/helpers.py

from metainf_core import jobs
from metainf_core.detect import blocked_evaluation, detection_scores, removal_evaluated, removal_sets, stored_removal_evaluations
from metainf_core.fits import edit_metrics_entry, fit_influence, removal_entry
from metainf_core.service import open_run

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "views" / "7_Audit.py")
XI = -2.5  # not a shipped removal: the demos ship ξ = −1 only

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(demo: Path, k: int, draws: int):  # noqa: ANN202 - (run, cfg, fit, sets)
    from ui import DEFAULT_INFLUENCE

    run = open_run(demo)
    inf = fit_influence(run, DEFAULT_INFLUENCE)  # shipped with the demo: restored into the job cache
    scores = detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, "self")
    return run, DEFAULT_INFLUENCE, inf, removal_sets(scores, k, draws, seed=3)


def test_same_sets_share_one_job_whose_metrics_are_the_direct_edits(demo_fitted, job_cache):
    """Two sessions asking at once get one job; it ends *done* with every set reported, each set's
    metrics equal evaluating ω̂ + ξ Σ_S I_meta here, and asking again starts nothing."""
    run, cfg, inf, sets = _setup(demo_fitted, k=16, draws=2)
    assert not removal_evaluated(run, cfg, sets, XI)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: jobs.submit_removal(run, cfg, sets, XI), range(2))
    assert a.id and a.id == b.id and a.request["kind"] == "removal" and a.request["xi"] == XI
    assert a.request["sets"] == [sorted(int(j) for j in s) for s in sets]
    assert [j.id for j in jobs.list_jobs(job_cache)] == [a.id]
    done = jobs.wait(a, timeout=600)
    assert (done.state, done.stage, done.error, done.done, done.total) == ("done", "sets", "", 3, 3)
    assert removal_evaluated(run, cfg, sets, XI)
    again = jobs.submit_removal(run, cfg, [s[::-1] for s in sets], XI)  # the same sets in another order: done
    assert again.state == "done" and not again.id and [j.id for j in jobs.list_jobs(job_cache)] == [a.id]
    stored = stored_removal_evaluations(run, inf, cfg, sets, XI)  # read back: nothing evaluated
    for s, metrics in zip(sets, stored, strict=True):
        here = blocked_evaluation(run, inf, s, XI)
        np.testing.assert_array_equal(metrics.task_ids, here.task_ids)
        np.testing.assert_allclose(metrics.loss, here.loss, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(metrics.accuracy, here.accuracy, rtol=1e-6, atol=1e-5)
    assert stored[0].summary()["accuracy"] != stored[1].summary()["accuracy"] or not np.array_equal(stored[0].loss, stored[1].loss)


def test_a_cancelled_removal_keeps_the_sets_it_tested_and_a_retry_tests_only_the_others(demo_fitted, job_cache):
    """Cancel after the first set: the job ends *cancelled*, the joint entry holds nothing, the sets
    already tested stay on disk; the retry ends *done* without evaluating those again (their files are
    untouched) and the joint entry then reads every set."""
    run, cfg, inf, sets = _setup(demo_fitted, k=24, draws=7)  # 8 sets, ~0.5 s each on one thread
    job = jobs.submit_removal(run, cfg, sets, XI)
    until(lambda: (j := jobs.job_status(job.directory)).done >= 1 and j.pid and j)
    pid = jobs.job_status(job.directory).pid
    os.killpg(pid, signal.SIGSTOP)  # no further set while the cancel is delivered
    jobs.cancel(jobs.job_status(job.directory))
    os.killpg(pid, signal.SIGCONT)
    ended = jobs.wait(job, timeout=120)
    assert ended.state == "cancelled", ended
    assert not removal_entry(run, cfg, sets, XI).complete and not removal_evaluated(run, cfg, sets, XI)
    kept = {n: edit_metrics_entry(run, cfg, s, XI).directory for n, s in enumerate(sets) if edit_metrics_entry(run, cfg, s, XI).complete}
    assert 1 <= len(kept) < len(sets), kept
    stamps = {n: (d / "result.safetensors").stat().st_mtime_ns for n, d in kept.items()}
    retried = jobs.wait(jobs.retry(ended), timeout=600)
    assert retried.state == "done" and removal_evaluated(run, cfg, sets, XI)
    assert {n: (d / "result.safetensors").stat().st_mtime_ns for n, d in kept.items()} == stamps  # not evaluated again
    assert len(stored_removal_evaluations(run, inf, cfg, sets, XI)) == len(sets)


def test_audit_page_tests_new_sets_as_a_job_and_shows_the_result_when_it_ends(demo_fitted, job_cache):
    """Press "Remove" at a new ξ: a job whose progress ("Removed sets tested") the page shows, with a
    cancel button for its starter; the page's other parts stay (the gallery); when the job ends a
    rerun shows the comparison, whose numbers are the saved sets' metrics."""
    run, cfg, inf, sets = _setup(demo_fitted, k=64, draws=0)  # the page's k: the 64 corrupted tasks
    at = page_with(PAGE, model_path=str(demo_fitted))
    at.slider(key="audit_xi").set_value(XI).run()
    at.button(key="audit_remove").click().run()
    assert not at.exception, at.exception
    job = next(j for j in jobs.list_jobs(job_cache) if j.request.get("kind") == "removal")
    assert job.id in at.session_state["_my_jobs"] and job.request["xi"] == XI and job.request["sets"][0] == sorted(sets[0].tolist())
    until(lambda: (j := jobs.job_status(job.directory)).pid and j)
    os.killpg(jobs.job_status(job.directory).pid, signal.SIGSTOP)  # held still: the page sees it active
    try:
        at.run()
        assert not at.exception, at.exception
        assert len(at.get("progress")) == 1 and any("in the background" in i.value for i in at.info)
        assert any(b.key == "removal_cancel" for b in at.button) and not at.metric[3:]
        assert any(m.value.startswith("**#1** · training task") for m in at.markdown)  # the rest of the page is there
    finally:
        os.killpg(jobs.job_status(job.directory).pid, signal.SIGCONT)
    assert jobs.wait(job, timeout=600).state == "done"
    at.run()
    assert not at.exception, at.exception
    assert not at.get("progress")
    after = blocked_evaluation(run, inf, sets[0], XI).summary()["accuracy"]
    shown = next(m.value for m in at.metric if m.label.startswith("Without the 64 most suspicious"))
    assert shown == f"{100 * after:.2f} %"
