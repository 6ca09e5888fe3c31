"""Many viewers at once (issue 25 item 5): a real dashboard server and real headless-Chromium
sessions (Playwright, Debian's chromium), timing what a viewer waits for.

Prints the seconds from opening a shared Explain link on the bundled ProtoNet demo until its
ranking shows ("most helpful" heading and the #1 task): one viewer alone; one viewer while
another session's influence fit runs as a background job; 1, 4 and 8 viewers opening at once
(p50, p95, max) — and each figure's ratio to the alone baseline measured in the same run.
The issue's targets on a 2-core machine: during another's fit ≤ 1.5 × alone + 1 s; 4 viewers all
≤ 4 s; 8 viewers all ≤ 6 s. Figures, never assertions (bench/, not tests/).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_serving.py [--rounds 3] [--skip-fit]

The fit job is a real one: the MAML demo at N_orth = 256 (a cache key of its own, in a throw-away
cache folder, so nothing shipped is touched), submitted through ``metainf_core.jobs`` as the
Explain page's "Fit influence now" does, and cancelled when the measurement ends.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, as the other benches
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
LINK = "/Explain?model=protonet-fashion-mnist&test={test}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start in 90 s")


def time_to_ranking(browser, url: str) -> float:  # noqa: ANN001 - a Playwright Browser
    """Seconds from navigation until the Explain ranking shows, in a fresh browser context (a new visitor)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    started = time.perf_counter()
    page.goto(url, timeout=600_000)
    expect(page.get_by_role("heading", name=re.compile("most helpful")).first).to_be_visible(timeout=600_000)
    expect(page.get_by_text("#1 ·").first).to_be_visible(timeout=600_000)
    took = time.perf_counter() - started
    context.close()
    return took


def viewers_at_once(server: str, n: int, test0: int) -> list[float]:
    """n visitors, each its own browser (own thread: Playwright's sync API is per thread), opening at once."""
    from playwright.sync_api import sync_playwright

    times: list[float] = [float("nan")] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            barrier.wait()
            times[i] = time_to_ranking(browser, server + LINK.format(test=(test0 + i) % 128))
            browser.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def start_fit_job(cache: Path):  # noqa: ANN201 - a jobs.Job
    """Another session's fit: the MAML demo at N_orth = 256, as the Explain page submits it."""
    from metainf_core import jobs
    from metainf_core.config import InfluenceConfig
    from metainf_core.service import open_run

    os.environ["METAINF_CACHE"] = str(cache)
    run = open_run(REPO / "assets" / "demo" / "maml-fashion-mnist")
    job = jobs.submit_fit(run, InfluenceConfig(method="gn", n_orth=256, dtype="float32"))
    deadline = time.time() + 120
    while (state := jobs.job_status(job.directory)) is not None and state.state == "queued" and time.time() < deadline:
        time.sleep(0.5)
    return job


def stats(times: list[float]) -> str:
    a = np.asarray(times)
    return f"p50 {np.percentile(a, 50):5.1f} s · p95 {np.percentile(a, 95):5.1f} s · max {a.max():5.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="repetitions of the one-viewer baseline")
    ap.add_argument("--skip-fit", action="store_true", help="leave out the during-a-fit measurement")
    a = ap.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="bench-serving-cache-"))
    env = {**os.environ, "METAINF_CACHE": str(cache)}
    # the demo's shipped fit lives in its folder (assets/demo/*/influence): the viewers read it, not this cache
    proc, server = start_server(env)
    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            time_to_ranking(browser, server + LINK.format(test=0))  # warm-up: the server loads the demo once
            alone = [time_to_ranking(browser, server + LINK.format(test=1 + r)) for r in range(a.rounds)]
            browser.close()
        base = float(np.median(alone))
        print(f"cores {os.cpu_count()} · torch threads as the server sets them (app.py)")
        print(f"one viewer alone:            {stats(alone)}   (baseline {base:.1f} s)")
        if not a.skip_fit:
            job = start_fit_job(cache)
            from metainf_core import jobs

            state = jobs.job_status(job.directory)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                during = [time_to_ranking(browser, server + LINK.format(test=10 + r)) for r in range(a.rounds)]
                browser.close()
            state = jobs.job_status(job.directory)
            print(f"one viewer during a fit job: {stats(during)}   ratio {np.median(during) / base:4.2f} × alone "
                  f"(target ≤ 1.5 × alone + 1 s = {1.5 * base + 1:.1f} s; the job was {state.state if state else '?'})")
            jobs.cancel(job)
        for n in (1, 4, 8):
            times = viewers_at_once(server, n, 20 + 10 * n)
            target = {4: 4.0, 8: 6.0}.get(n)
            print(f"{n} viewer{'s' if n > 1 else ' '} at once:            {stats(times)}   max/alone {max(times) / base:4.2f}"
                  + (f" (target: all ≤ {target:.0f} s)" if target else ""))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
