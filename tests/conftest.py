"""Shared fixtures: seeded RNGs, tiny float64 models, and one small trained run per session; and how
``make test`` shares the suite out over the cores (pytest-xdist, ``-n <cores> --dist loadfile``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

if TYPE_CHECKING:
    from xdist.remote import Producer
    from xdist.scheduler import LoadFileScheduling

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAINF_SHARED_DATA", REPO.parent / "shared" / "data"))
# CLI subprocesses (python -m metainf_core) import the package from the repo wherever pytest runs.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
# Under xdist (``make test``: one worker per core) each worker computes with one intra-op thread, so
# N workers keep N cores busy without oversubscribing them; the CLI subprocesses, torchrun ranks and
# the Streamlit server a test starts inherit it. An explicit OMP_NUM_THREADS wins.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# Test files that start process groups or servers: torchrun and spawned gloo ranks, a Streamlit
# server driven by Chromium. Under xdist they form one unit of work, so one worker runs them one
# after another and they never compete with each other for the cores.
PROCESS_FILES = ("tests/test_distributed_fit.py", "tests/test_e2e_browser.py")


def work_unit(nodeid: str) -> str:
    """The unit of work of a test under ``make test`` (xdist): its file, so that module-scoped
    fixtures (trained runs, fits) are built once, by one worker; ``processes`` for PROCESS_FILES."""
    file = nodeid.split("::", 1)[0]
    return "processes" if file in PROCESS_FILES else file


def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadFileScheduling | None:
    """``--dist loadfile`` with PROCESS_FILES as one unit. (xdist 3.8's ``loadgroup`` cannot group:
    it renames ``item._nodeid``, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class WorkUnits(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnits(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: units holding a ``slow`` test first (``--no-loadscope-reorder`` keeps the
    workers' order), so the longest ones do not start last while the other core idles."""
    if XDIST_WORKER:
        slow = {work_unit(item.nodeid) for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: work_unit(item.nodeid) not in slow)  # stable: collection order otherwise


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs page scripts as ``__main__`` and leaves the last one in sys.modules;
    a later ``multiprocessing`` spawn child (tests/test_distributed_fit.py) then re-runs that page
    before its own work — seconds of Streamlit per child, or a crash. Put the real one back."""
    main = sys.modules.get("__main__")
    attrs = {k: getattr(main, k) for k in ("__file__", "__spec__") if hasattr(main, k)}
    yield
    if sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main
    for k, v in attrs.items():
        setattr(main, k, v)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 63-parameter MAML trained briefly on 48 synthetic tasks (TLXML B.3 network)."""
    from metainf_core.config import TaskConfig, TrainConfig
    from metainf_core.train import train

    out = tmp_path_factory.mktemp("synthetic_run")
    task_cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=48, test_tasks=16, noise_tasks=6)
    train_cfg = TrainConfig(
        algo="maml", arch="mlp-synthetic", steps=150, meta_batch=16, lr=0.01, inner_lr=0.4, checkpoint_every=50
    )
    return train(task_cfg, train_cfg, out, progress=False, device="cpu")


@pytest.fixture
def job_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh disk cache for background jobs (``metainf_core.jobs``), one job at a time as on a 2-core machine."""
    monkeypatch.setenv("METAINF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METAINF_JOB_SLOTS", "1")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread (OpenMP barriers crawl on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_fitted() -> Path:
    """The bundled ProtoNet demo with the app's default influence fit in the disk cache (fitted
    once here, through the core, so page tests do not spend their AppTest time limit on it)."""
    from filelock import FileLock  # torch's own dependency

    from metainf_core.cache import cache_root
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    demo = REPO / "assets" / "demo" / "protonet-fashion-mnist"
    # The cache is shared by the xdist workers (and by earlier sessions): the first worker here
    # copies the shipped fit into it, the others wait and then load it.
    cache_root().mkdir(parents=True, exist_ok=True)
    with FileLock(cache_root() / ".demo_fitted.lock"):
        fit_influence(open_run(demo), DEFAULT_INFLUENCE)
    return demo
