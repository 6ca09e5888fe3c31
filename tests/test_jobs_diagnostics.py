"""Issue 25: the Landscape page's diagnostics over training snapshots as background jobs
(``jobs.submit_diagnostics``), through the same submit / progress / liveness / retry path as the
influence fits (tests/test_jobs.py). Real data at smoke scale: a Fashion-MNIST MAML run trained
with ``keep_history=True`` (8 snapshots)."""

from __future__ import annotations

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
from metainf_core.diagnostics import (
    DiagnosticsConfig,
    DiagnosticsRow,
    cached_diagnostics_over_history,
    load_cached_diagnostics,
)
from metainf_core.service import open_run

REPO = Path(__file__).resolve().parents[1]
PAGE = str(REPO / "views" / "6_Landscape.py")
N_TASKS = 3  # test tasks of the statistics: seconds for all 8 snapshots
KILL_TASKS = 12  # slower snapshots, so the worker is caught with some saved and some not
SNAPSHOTS = 8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def history_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,413-parameter MAML (mlp on |FFT| features), 3-way 5-shot, snapshots every 15 of 120 steps."""
    from metainf_core.config import TaskConfig, TrainConfig
    from metainf_core.train import train

    task_cfg = TaskConfig(dataset="fashion-mnist", ways=3, shots=5, queries=5, train_tasks=32, test_tasks=24)
    train_cfg = TrainConfig(algo="maml", arch="mlp", steps=120, meta_batch=8, lr=0.003, inner_lr=0.4,
                            checkpoint_every=15, keep_history=True)  # fmt: skip
    return train(task_cfg, train_cfg, tmp_path_factory.mktemp("jobs_history"), progress=False, device="cpu")


def _table(rows: list[DiagnosticsRow]) -> dict[str, np.ndarray]:
    return {f.name: np.array([getattr(r, f.name) for r in rows], dtype=float) for f in fields(DiagnosticsRow)}


def test_same_key_requests_share_one_job_whose_rows_are_the_in_process_rows(
    history_run, job_cache, tmp_path, monkeypatch
):
    """Two sessions asking at the same moment get one job; it ends *done* with every snapshot
    reported, and its cache entry holds what an in-process computation gives; asking again starts nothing."""
    run = open_run(history_run)
    cfg = DiagnosticsConfig(num_tasks=N_TASKS)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: jobs.submit_diagnostics(run, cfg), range(2))
    assert a.id and a.id == b.id and a.state == "queued" and a.request["kind"] == "diagnostics"
    assert [j.id for j in jobs.list_jobs(job_cache)] == [a.id]
    done = jobs.wait(a, timeout=600)
    assert (done.state, done.stage, done.error, done.resumed_from) == ("done", "snapshots", "", 0)
    assert done.done == done.total == SNAPSHOTS
    again = jobs.submit_diagnostics(run, cfg)
    assert again.state == "done" and not again.id and [j.id for j in jobs.list_jobs(job_cache)] == [a.id]

    from_job, total = load_cached_diagnostics(run, cfg)
    assert total == SNAPSHOTS and len(from_job) == SNAPSHOTS
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "elsewhere"))
    in_process = cached_diagnostics_over_history(run, cfg)
    job_t, here_t = _table(from_job), _table(in_process)
    assert job_t["step"].tolist() == here_t["step"].tolist() == [15 * (i + 1) for i in range(SNAPSHOTS)]
    for name, values in here_t.items():
        # the same float32 network, seeds and one intra-op thread in two processes (bitwise equal on this
        # machine): allowed only float32 rounding (~6e-8 a step) in BLAS kernels picked differently per
        # process, grown over 20 Lanczos/power steps; a wrong snapshot or setting moves values by > 1e-2
        np.testing.assert_allclose(job_t[name], values, rtol=1e-5, atol=1e-7 * np.abs(values).max(), err_msg=name)


def test_killed_worker_fails_with_its_reason_and_a_retry_resumes_from_the_saved_snapshots(history_run, job_cache):
    """SIGKILL while some snapshots are saved leaves the job *failed* with its reason (never
    *running*); the retry starts from the saved snapshots (reports them done at its first report),
    keeps their rows as saved and computes only the rest."""
    run = open_run(history_run)
    cfg = DiagnosticsConfig(num_tasks=KILL_TASKS)
    first = jobs.submit_diagnostics(run, cfg)
    until(lambda: len(load_cached_diagnostics(run, cfg)[0]) >= 1)
    os.killpg(first.pid, signal.SIGKILL)
    failed = until(lambda: (j := jobs.job_status(first.directory)).state not in jobs.ACTIVE and j)
    assert (failed.state, failed.error) == ("failed", jobs.STOPPED)
    saved_rows, total = load_cached_diagnostics(run, cfg)
    assert 1 <= len(saved_rows) < total == SNAPSHOTS  # caught half-way: the retry has work left

    again = jobs.retry(failed)
    assert again.id != first.id and again.request == first.request
    done = jobs.wait(again, timeout=600)
    assert (done.state, done.error, done.done) == ("done", "", SNAPSHOTS)
    assert done.resumed_from == done.stage_done == len(saved_rows)  # its first report counts the saved snapshots
    rows, _ = load_cached_diagnostics(run, cfg)
    assert len(rows) == SNAPSHOTS and rows[: len(saved_rows)] == saved_rows  # loaded, not recomputed: identical


def _page(path: Path) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=600)
    at.session_state["model_path"] = str(path)
    at.session_state["landscape_tasks"] = N_TASKS
    return at.run()


def test_landscape_page_runs_the_diagnostics_as_a_job_and_draws_them_when_it_ends(history_run, job_cache):
    """Click "Compute diagnostics": a job, whose progress the page shows with a cancel button for
    the session that started it, and without one in a second tab (the same job); when the job ends
    a rerun (the fragment's) draws the tiles, curves and table from its cache entry."""
    run = open_run(history_run)
    cfg = DiagnosticsConfig(num_tasks=N_TASKS)
    tabs = [_page(history_run), _page(history_run)]
    assert "8 training snapshots on 3 test tasks are not computed yet" in tabs[0].info[0].value and not tabs[0].metric
    tabs[0].button(key="landscape_compute").click().run()
    assert not tabs[0].exception, tabs[0].exception
    job = jobs.job_status(jobs.diagnostics_entry(run, cfg))
    assert job is not None and job.request["kind"] == "diagnostics" and job.id in tabs[0].session_state["_my_jobs"]
    os.killpg(job.pid, signal.SIGSTOP)  # held still (its own process group), so both tabs see it active
    try:
        for tab, mine in zip(tabs, (True, False), strict=True):
            tab.run()
            assert not tab.exception, tab.exception
            assert len(tab.get("progress")) == 1 and not tab.metric and "in the background" in tab.info[0].value
            assert any(b.key == "diagnostics_cancel" for b in tab.button) == mine
            assert not any(b.key == "landscape_compute" for b in tab.button)  # no second job to start meanwhile
        assert any("another tab or session" in c.value for c in tabs[1].caption)
    finally:
        os.killpg(job.pid, signal.SIGCONT)
    assert [j.id for j in jobs.list_jobs(job_cache)] == [job.id]
    assert jobs.wait(job, timeout=600).state == "done"
    tabs[0].run()  # what the progress fragment's st.rerun() does when it sees the job end
    assert not tabs[0].exception, tabs[0].exception
    rows, _ = load_cached_diagnostics(run, cfg)
    assert {m.label: m.value for m in tabs[0].metric}["Sharpness at step 120"] == f"{rows[-1].sharpness_lanczos:.4g}"
    assert len(tabs[0].get("plotly_chart")) == 2 and not tabs[0].get("progress")
    assert tabs[0].dataframe[1].value["training step"].tolist() == [r.step for r in rows]
