"""A shared server's limits (issue 25 item 4): with $METAINF_RUNS_ROOT set, typed run-folder paths
must lie under it (the bundled demos and paper runs stay open); unset, as on a laptop, any folder opens."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from metainf_core.exceptions import CheckpointError
from metainf_core.service import RUNS_ROOT_ENV, check_folder_allowed

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"


def test_root_limits_typed_folders(tmp_path, monkeypatch):
    root, outside = tmp_path / "runs", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "escape").symlink_to(outside)  # a link inside the root that points out of it
    monkeypatch.delenv(RUNS_ROOT_ENV, raising=False)
    check_folder_allowed(outside)  # a laptop: every folder
    monkeypatch.setenv(RUNS_ROOT_ENV, str(root))
    check_folder_allowed(root / "a")
    check_folder_allowed(DEMO, also=(DEMO.parent,))
    for refused in (outside, root / "escape", root / ".." / "elsewhere", DEMO):
        with pytest.raises(CheckpointError, match="only under"):
            check_folder_allowed(refused)


def test_page_refuses_a_folder_outside_the_root_and_opens_one_inside(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    inside, outside = root / "demo-copy", tmp_path / "demo-copy"
    for d in (inside, outside):
        shutil.copytree(DEMO, d, ignore=shutil.ignore_patterns("cache", "influence"))
    monkeypatch.setenv(RUNS_ROOT_ENV, str(root))
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    for folder, opens in ((outside, False), (inside, True), (DEMO, True)):
        at = AppTest.from_file(str(REPO / "views" / "1_Tasks.py"), default_timeout=300)
        at.session_state["model_path"] = str(folder)
        at.run()
        assert not at.exception, at.exception
        refused = [e.value for e in at.error if "opens run folders only under" in e.value]
        assert (not at.error and at.title) if opens else refused, (folder, [e.value for e in at.error])
