"""End to end in a real browser: `streamlit run app.py`, headless Debian Chromium via Playwright.
Pick a test task, see thumbnails and a ranked list, move a ξ slider, see the accuracy change."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("METAINF_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server():
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.fail("Chromium not found at /usr/bin/chromium: run `make setup` (it installs Debian's chromium) or `apt-get install chromium`")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def test_explain_and_edit_in_chromium(demo_fitted, server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{server}/Explain?test=3")
        fit = page.get_by_role("button", name="Fit influence now")
        helpful = page.get_by_text("most helpful", exact=False).first
        deadline = time.time() + 120
        while time.time() < deadline and not (helpful.is_visible() or fit.is_visible()):
            page.wait_for_timeout(500)
        if fit.is_visible():
            fit.click()
        expect(helpful).to_be_visible(timeout=900_000)
        page.get_by_text("#1 ·").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)
        assert page.locator("img").count() >= 5
        assert page.get_by_text("#1 ·").count() == 1 and page.get_by_text("#512 ·").count() == 1
        page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)

        # figure exports: PNG from the chart's camera button, self-contained HTML from the button below
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.wait_for(timeout=60_000)
        chart.scroll_into_view_if_needed()
        chart.hover()
        with page.expect_download(timeout=60_000) as png:
            chart.locator('.modebar-btn[data-title="Download plot as a PNG"]').click()
        png_path = tmp_path / "figure.png"
        png.value.save_as(png_path)
        with page.expect_download(timeout=60_000) as html:
            page.get_by_role("button", name="Figure as HTML").first.click()
        html_path = tmp_path / "figure.html"
        html.value.save_as(html_path)

        page.goto(f"{server}/Edit")
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Test taskset accuracy").locator('[data-testid="stMetricValue"]')
        expect(metric).to_be_visible(timeout=120_000)
        before = metric.inner_text()
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(6):  # ξ_B from −1 to −4 in steps of 0.5
            page.keyboard.press("ArrowLeft")
        expect(metric).not_to_have_text(before, timeout=60_000)
        deadline = time.time() + 60
        while time.time() < deadline and page.locator('[data-stale="true"]').count():  # the fragment rerun is done
            page.wait_for_timeout(250)
        page.wait_for_timeout(500)
        after = metric.inner_text()
        page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)
        with page.expect_download(timeout=120_000) as ckpt:
            page.get_by_role("button", name="Download the edited checkpoint").click()
        zip_path = tmp_path / "edited.zip"
        ckpt.value.save_as(zip_path)
        browser.close()
    assert before != after and after.endswith("%")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5_000
    text = html_path.read_text()
    assert "Helpfulness of all 512 training tasks" in text and "plotly" in text and len(text) > 1_000_000  # plotly.js inside
    import json
    import zipfile

    with zipfile.ZipFile(zip_path) as z:
        meta = json.loads(z.read("edited/meta.json"))
        assert {"edited/model.safetensors", "edited/meta.json"} <= set(z.namelist())
    assert meta["edit"]["xi_block"] == -4.0 and len(meta["edit"]["block"]) == 16  # the slider value, the default k
    assert (tmp_path / "explain.png").stat().st_size > 10_000
