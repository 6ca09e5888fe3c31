"""Many viewers at once (issue 25 item 5): a real dashboard server and real headless-Chromium
sessions (Playwright, Debian's chromium), timing what a viewer waits for.

Prints the seconds from opening a shared Explain link on the bundled ProtoNet demo until its
ranking shows ("most helpful" heading and the #1 task): one viewer alone; one viewer while
another session's influence fit runs as a background job; 1, 4 and 8 viewers opening at once
(p50, p95, max) — and each figure's ratio to the alone baseline measured in the same run — beside
the floor: 1, 4 and 8 visitors opening a bare Streamlit page that shows only the awaited text
(Streamlit's and the browsers' own cost on this machine, which no change to metainf lowers). Then the
ξ-edit latency (key press on the Edit page's ξ slider until its result is redrawn and the app idle)
with 4 viewers editing at once, and the click-to-settle time of each click issue 25 listed as slow
(one viewer: the click until the expected result shows and the app is idle; a background job's
time included). The issue's targets on a 2-core machine: during another's fit ≤ 1.5 × alone + 1 s;
4 viewers all ≤ 4 s; 8 viewers all ≤ 6 s; ξ edit p95 ≤ 1.5 s under 4 editors; every click ≤ 2 s or
a job with progress. Figures, never assertions (bench/, not tests/).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_serving.py [--rounds 3] [--skip-fit] [--only clicks]

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
MAML = "maml-fashion-mnist"
PROTONET = "protonet-fashion-mnist"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FLOOR_APP = """import streamlit as st
st.title("Explain a test task")
st.subheader("5 most helpful")
st.markdown("**#1 ·** training task 0")
"""  # what time_to_ranking waits for, and nothing else: Streamlit's own cost of opening a page
FLOOR_EDIT_APP = """import streamlit as st
st.title("Edit")
@st.fragment
def effect():
    xi = st.slider("ξ for blocked tasks", -8.0, 8.0, -1.0, 0.5)
    st.markdown(f"Predicted by the influence scores alone: {xi:+.1f}")
effect()
"""  # what xi_moves presses and waits for, and nothing else: Streamlit's own cost of a slider move


def start_server(env: dict[str, str], app: str | Path = "app.py") -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port), "--server.headless", "true",
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


def in_browsers(n: int, prepare, measure) -> list:  # noqa: ANN001 - callables
    """n visitors, each its own browser on its own thread (Playwright's sync API is per thread):
    ``prepare(browser, i)`` alone, then all start ``measure(prepared, i)`` at once; its results in order."""
    from playwright.sync_api import sync_playwright

    results: list = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            prepared = prepare(browser, i)
            barrier.wait()
            results[i] = measure(prepared, i)
            browser.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def viewers_at_once(server: str, n: int, test0: int, link: str = LINK) -> list[float]:
    """n visitors opening a shared Explain link at once: each one's time until the ranking shows."""
    return in_browsers(n, lambda browser, i: browser,
                       lambda browser, i: time_to_ranking(browser, server + link.format(test=(test0 + i) % 128)))


def floor_server(env: dict[str, str], app: str) -> tuple[subprocess.Popen, str]:
    """A server of a bare Streamlit page (``app``'s source) that shows only what a measurement waits for."""
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-floor-"))
    (folder / "floor.py").write_text(app, encoding="utf-8")
    return start_server(env, folder / "floor.py")


def streamlit_floor(env: dict[str, str], counts: tuple[int, ...]) -> dict[int, list[float]]:
    """n visitors at once opening a bare Streamlit page that shows only what ``time_to_ranking`` waits
    for: the browsers' and Streamlit's own share of each viewers row, on this machine."""
    proc, server = floor_server(env, FLOOR_APP)
    try:
        viewers_at_once(server, 1, 0, "/")  # warm-up
        return {n: viewers_at_once(server, n, 0, "/") for n in counts}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def edit_floor(env: dict[str, str], n: int, moves: int) -> list[float]:
    """n editors at once moving a bare Streamlit slider whose fragment redraws one line: the floor of
    the ξ-edit rows (no evaluation at all)."""
    proc, server = floor_server(env, FLOOR_EDIT_APP)
    try:
        return [t for ts in in_browsers(n, lambda browser, i: opened(browser, server, "Predicted by")[1],
                                        lambda page, i: xi_moves(page, moves)) for t in ts]  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process ``pid`` (all its threads), or by the whole
    machine when None (every non-idle jiffy in /proc/stat): to tell the server's share of a
    measurement from the browsers', which share this machine's cores."""
    tick = os.sysconf("SC_CLK_TCK")
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime: fields 14 and 15 of stat(5)
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / tick  # all but idle and iowait


def cpu_share(server_pid: int, measure) -> tuple:  # noqa: ANN001 - a callable
    """``measure()``'s result with the CPU seconds the server and the whole machine used meanwhile."""
    s0, m0 = cpu_seconds(server_pid), cpu_seconds()
    result = measure()
    return result, cpu_seconds(server_pid) - s0, cpu_seconds() - m0


def cpu_words(server: float, machine: float, n: int) -> str:
    return f"   CPU: server {server:5.1f} s ({server / n:.2f} s a visitor), all processes {machine:5.1f} s"


def busy(page) -> bool:  # noqa: ANN001 - a Playwright Page
    """The app is running a script (its status widget shows) or redrawing (stale elements)."""
    return page.locator('[data-testid="stStatusWidget"]').count() > 0 or page.locator('[data-stale="true"]').count() > 0


def until_ready(page, ready, timeout: float = 600.0) -> float:  # noqa: ANN001 - Page, a callable
    """Seconds until ``ready()`` holds and the app is idle (polled every 50 ms); nan after ``timeout``."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if ready() and not busy(page):
                return time.perf_counter() - started
        except Exception:  # noqa: BLE001 - an element redrawn mid-read: read again
            pass
        page.wait_for_timeout(50)
    return float("nan")


def visible(page, text: str | re.Pattern):  # noqa: ANN001, ANN201
    return lambda: page.get_by_text(text).first.is_visible()


def opened(browser, path: str, ready_text: str | re.Pattern):  # noqa: ANN001, ANN201 - (context, page)
    """A new visitor on ``path``, waited for until ``ready_text`` shows and the app is idle."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(path, timeout=600_000)
    until_ready(page, visible(page, ready_text))
    return context, page


def goto_ready(page, url: str, ready_text: str | re.Pattern) -> float:  # noqa: ANN001
    """Seconds from navigating to ``url`` until ``ready_text`` shows and the app is idle."""
    started = time.perf_counter()
    page.goto(url, timeout=600_000)
    until_ready(page, visible(page, ready_text))
    return time.perf_counter() - started


def predicted_line(page) -> str:  # noqa: ANN001
    """The Edit page's first-order line, which changes with every ξ (linear in ξ)."""
    return page.get_by_text("Predicted by the influence scores alone").first.inner_text()


def block_most_harmful(page) -> float:  # noqa: ANN001
    page.get_by_role("button", name=re.compile(r"Block the \d+ most harmful")).click()
    return until_ready(page, visible(page, "Predicted by the influence scores alone"))


def xi_moves(page, moves: int) -> list[float]:  # noqa: ANN001
    """Seconds per ξ move (one ArrowLeft on the blocked set's slider) until the result is redrawn."""
    times = []
    for _ in range(moves):
        before = predicted_line(page)
        slider = page.get_by_role("slider").first
        slider.focus()
        started = time.perf_counter()
        page.keyboard.press("ArrowLeft")
        until_ready(page, lambda: predicted_line(page) != before, timeout=120)
        times.append(time.perf_counter() - started)
    return times


def editors_at_once(server: str, n: int, moves: int) -> list[float]:
    """n viewers on the ProtoNet demo's Edit page, each blocks its test task's most harmful tasks, then
    all move ξ at once (``moves`` key presses each): every move's latency."""

    def prepare(browser, i: int):  # noqa: ANN001, ANN202 - a Playwright Browser and Page
        _, page = opened(browser, f"{server}/Edit?model={PROTONET}&test={40 + i}", re.compile(r"Block the \d+ most harmful"))
        block_most_harmful(page)
        return page

    return [t for ts in in_browsers(n, prepare, lambda page, i: xi_moves(page, moves)) for t in ts]


def slow_clicks(server: str, repeats: int = 5) -> dict[str, list[float]]:
    """Click-to-settle of each click issue 25 listed as slow, one viewer, demos from an empty cache:
    the interactive ones ``repeats`` times (new test tasks; the Edit block in a new session each time,
    as each visitor's first click), the jobs once."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        _, page = opened(browser, f"{server}/Explain?model={MAML}&test=0", "#1 ·")
        sidebar = page.locator('[data-testid="stSidebarUserContent"]')
        clicks = out["Explain · Random test task (MAML)"] = []
        for _ in range(repeats):
            was = sidebar.inner_text()
            page.get_by_role("button", name="Random test task").first.click()
            clicks.append(until_ready(page, lambda: sidebar.inner_text() != was and page.get_by_text("#1 ·").first.is_visible(), 120))

        clicks = out["Edit · block the most harmful (MAML)"] = []
        for t in range(repeats):
            context, page = opened(browser, f"{server}/Edit?model={MAML}&test={t}", re.compile(r"Block the \d+ most harmful"))
            clicks.append(block_most_harmful(page))
            context.close()
        _, page = opened(browser, f"{server}/Edit?model={MAML}&test=0", re.compile(r"Block the \d+ most harmful"))
        block_most_harmful(page)
        out["Edit · one ξ move (MAML)"] = xi_moves(page, repeats)
        page.get_by_role("button", name="Accuracy versus ξ (blocked set)").click()
        out["Edit · accuracy versus ξ, a job (MAML)"] = [until_ready(page, visible(page, re.compile(r"Test task \d+'s loss")))]

        _, page = opened(browser, f"{server}/Audit?model={MAML}", "AUC")
        page.get_by_role("button", name="Remove the 64 most suspicious").click()
        out["Audit · remove the 64 most suspicious (MAML, shipped)"] = [until_ready(page, visible(page, re.compile(r"^Without the 64 most suspicious")))]
        page.get_by_role("spinbutton").first.fill("48")
        page.keyboard.press("Enter")
        until_ready(page, visible(page, "Remove the 48 most suspicious"))
        page.get_by_role("button", name="Remove the 48 most suspicious").click()
        out["Audit · remove 48, a job (MAML)"] = [until_ready(page, visible(page, re.compile(r"^Without the 48 most suspicious")))]

        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        out["Validate · open (MAML)"] = [goto_ready(page, f"{server}/Validate?model={MAML}", "2. Proper tests")]
        out["Compare · open (ProtoNet)"] = [goto_ready(page, f"{server}/Compare?model={PROTONET}&test=3", "Spearman")]
        browser.close()
    return out


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
    ap.add_argument("--only", choices=("viewers", "floor", "edits", "clicks"), help="one part only (the alone baseline always runs)")
    ap.add_argument("--moves", type=int, default=5, help="ξ moves per editor")
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
        if not a.skip_fit and a.only in (None, "viewers"):
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
        for n in (1, 4, 8) if a.only in (None, "viewers") else ():
            times, cpu_server, cpu_all = cpu_share(proc.pid, lambda n=n: viewers_at_once(server, n, 20 + 10 * n))
            target = {4: 4.0, 8: 6.0}.get(n)
            print(f"{n} viewer{'s' if n > 1 else ' '} at once:            {stats(times)}   max/alone {max(times) / base:4.2f}"
                  + (f" (target: all ≤ {target:.0f} s)" if target else "") + cpu_words(cpu_server, cpu_all, n))
        if a.only in (None, "viewers", "floor"):
            for n, times in streamlit_floor(env, (1, 4, 8)).items():
                print(f"floor, {n} at once (a bare Streamlit page): {stats(times)}   — what any Streamlit page costs here")
        if a.only in (None, "edits"):
            one = editors_at_once(server, 1, a.moves)
            four, cpu_server, cpu_all = cpu_share(proc.pid, lambda: editors_at_once(server, 4, a.moves))
            print(f"ξ edit, 1 editor:            {stats(one)}")
            print(f"ξ edit, 4 editors at once:   {stats(four)}   (target: p95 ≤ 1.5 s)" + cpu_words(cpu_server, cpu_all, 4)
                  + " (includes opening the page and blocking)")
            print(f"floor, 4 editors at once (a bare slider): {stats(edit_floor(env, 4, a.moves))}   — what any Streamlit slider costs here")
        if a.only in (None, "clicks"):
            for what, took in slow_clicks(server).items():
                print(f"click to settled · {what:<55} " + (stats(took) + f" (n = {len(took)})" if len(took) > 1 else f"{took[0]:6.2f} s"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
