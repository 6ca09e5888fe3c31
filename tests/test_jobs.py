"""Issue 25: influence fits as background jobs (``metainf_core.jobs``), each its own process, its
state in ``job.json`` beside the cache entry it fills. Real fits at smoke scale: the synthetic
MAML fixture (48 tasks) and the bundled ProtoNet demo at settings it does not ship (512 tasks,
long enough to be caught half-way)."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import until  # tests/helpers.py
from streamlit.testing.v1 import AppTest

from metainf_core import jobs
from metainf_core.api import Explainer, ExplainerConfig
from metainf_core.cache import RESULT
from metainf_core.config import InfluenceConfig
from metainf_core.fits import fit_status
from metainf_core.service import open_run
from ui import influence_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"
SLOW_CFG = InfluenceConfig(method="gn", n_orth=16, dtype="float32")  # not the demo's shipped fit: the job fits


def test_same_key_requests_share_one_job_whose_fit_is_the_in_process_fit(
    synthetic_run, job_cache, tmp_path, monkeypatch
):
    """Two sessions asking at the same moment get one job; it ends *done* with its progress complete,
    and its cache entry holds the fit an in-process fit computes; asking again starts nothing."""
    run = open_run(synthetic_run)
    cfg = InfluenceConfig(method="gn", n_orth=64, dtype="float64")
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: jobs.submit_fit(run, cfg, save_every=16), range(2))
    assert a.id and a.id == b.id and a.state == "queued"
    assert [j.id for j in jobs.list_jobs(job_cache)] == [a.id]
    done = jobs.wait(a, timeout=600)
    assert (done.state, done.stage, done.done, done.total, done.error) == ("done", "gradients", 48, 48, "")
    again = jobs.submit_fit(run, cfg)
    assert again.state == "done" and not again.id and [j.id for j in jobs.list_jobs(job_cache)] == [a.id]

    ids = list(range(len(run.test_tasks)))
    from_job = Explainer(run, ExplainerConfig(**cfg.to_dict())).fit(progress=False).scores(ids)
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "elsewhere"))
    in_process = Explainer(run, ExplainerConfig(**cfg.to_dict())).fit(progress=False).scores(ids)
    # the same float64 fit in two processes (the job's on one thread): only BLAS blocking may differ
    np.testing.assert_allclose(from_job, in_process, rtol=1e-8, atol=1e-10 * np.abs(in_process).max())


@pytest.mark.slow
def test_killed_worker_fails_a_retry_resumes_others_queue_and_cancel_leaves_no_result(synthetic_run, job_cache):
    """On the ProtoNet demo (fitting 512 tasks, saved every 4): while A's fit job runs, session B's
    Explain page ranks the demo; SIGKILL leaves the job *failed* with its reason; a retry resumes
    from the saved tasks; another fit waits in the queue (one slot) until A's job is cancelled, which
    keeps the saved tasks and leaves no result file, and then runs to the end."""
    run = open_run(DEMO)
    entry = jobs.fit_entry(run, SLOW_CFG)
    first = jobs.submit_fit(run, SLOW_CFG, save_every=4)
    until(lambda: fit_status(run, SLOW_CFG)["tasks_done"] >= 4)

    b = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=600)  # session B, the shipped fit
    b.session_state["model_path"] = str(DEMO)
    b.run()
    assert not b.exception, b.exception
    assert "helped this test task most" in b.success[0].value
    assert jobs.job_status(entry).state == "running"  # B got its table while A's fit runs

    os.killpg(first.pid, signal.SIGKILL)
    failed = until(lambda: (j := jobs.job_status(entry)).state != "running" and j)
    assert (failed.state, failed.error) == ("failed", jobs.STOPPED)
    saved = fit_status(run, SLOW_CFG)["tasks_done"]
    assert saved >= 4 and saved % 4 == 0  # whole checkpoints only: each is one atomic file

    again = jobs.retry(failed)
    assert again.id != first.id
    resumed = until(lambda: (j := jobs.job_status(entry)).stage == "curvature" and j)
    assert resumed.resumed_from == saved and resumed.stage_done > saved  # its first report counts the saved tasks

    other = jobs.submit_fit(open_run(synthetic_run), influence_config(str(synthetic_run)))  # the page's settings
    for _ in range(3):  # a queued job stays queued while the one slot is busy
        waiting = jobs.job_status(other.directory)
        assert (waiting.state, waiting.position) == ("queued", 1)
        time.sleep(0.5)
    c = AppTest.from_file(str(REPO / "views" / "2_Explain.py"), default_timeout=600)  # its page says where it stands
    c.session_state["model_path"] = str(synthetic_run)
    c.run()
    assert not c.exception, c.exception
    assert [p.proto.text for p in c.get("progress")] == ["Waiting for a free core: next in the queue (1 job runs at a time on this machine)"]

    assert jobs.cancel(resumed).id == resumed.id
    cancelled = jobs.wait(resumed, timeout=120)
    assert (cancelled.state, cancelled.error) == ("cancelled", "cancelled")
    assert not (entry / RESULT).exists() and not list(entry.glob("*.tmp")) and not list(entry.glob(".*.tmp"))
    assert fit_status(run, SLOW_CFG)["tasks_done"] >= resumed.stage_done  # the saved tasks stay for the next retry
    assert jobs.wait(other, timeout=600).state == "done"  # the queued job got the slot


@pytest.mark.browser
def test_two_tabs_of_one_browser_stay_usable_while_a_fit_job_runs(synthetic_run, job_cache):
    """A real server and headless Chromium: tab 1 starts a fit job; tab 2 opens the Tasks page and
    gets it while the job is still running (held with SIGSTOP, so the state is certain, not a race);
    then tab 1 shows the ranking when the job ends, without a click."""
    import socket
    import subprocess
    import sys

    from playwright.sync_api import sync_playwright

    from ui import fit_job

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        until(listening, timeout=120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("METAINF_CHROMIUM", "/usr/bin/chromium"),
                                        args=["--no-sandbox", "--headless", "--disable-gpu"])  # fmt: skip
            tabs = browser.new_context()
            one = tabs.new_page()
            one.goto(f"http://127.0.0.1:{port}/Explain?model={synthetic_run}", timeout=120_000)
            one.get_by_role("button", name="Fit influence now").click(timeout=120_000)
            job = until(lambda: fit_job(str(synthetic_run)))
            os.killpg(job.pid, signal.SIGSTOP)
            try:
                two = tabs.new_page()
                two.goto(f"http://127.0.0.1:{port}/Tasks?model={synthetic_run}", timeout=120_000)
                two.get_by_role("heading", name="Test task 0").wait_for(timeout=120_000)
                assert fit_job(str(synthetic_run)).active  # tab 2 answered while the job runs
            finally:
                os.killpg(job.pid, signal.SIGCONT)
            one.get_by_text("helped this test task most").first.wait_for(timeout=300_000)  # picked up, no click
            assert jobs.job_status(job.directory).state == "done"
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_worker_is_alive_only_while_its_process_is(tmp_path, monkeypatch):
    """Liveness by pid and start time from /proc (a reused pid is another process), and by the pid
    alone where there is no /proc (macOS): a finished process is never taken for a running worker."""
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    me = jobs._process_start(os.getpid())
    assert me is not None and me != jobs.ALIVE and jobs._process_start(gone.pid) is None
    monkeypatch.setattr(jobs, "PROC", tmp_path)  # no /proc here
    assert jobs._process_start(os.getpid()) == jobs.ALIVE and jobs._process_start(gone.pid) is None
