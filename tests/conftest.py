"""Shared fixtures: seeded RNGs, tiny float64 models, and one small trained run per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("METAINF_SHARED_DATA", REPO.parent / "shared" / "data"))
# CLI subprocesses (python -m metainf_core) import the package from the repo wherever pytest runs.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


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
    train_cfg = TrainConfig(algo="maml", arch="mlp-synthetic", steps=150, meta_batch=16, lr=0.01, inner_lr=0.4, checkpoint_every=50)
    return train(task_cfg, train_cfg, out, progress=False, device="cpu")


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
    from metainf_core.fits import fit_influence
    from metainf_core.service import open_run
    from ui import DEFAULT_INFLUENCE

    demo = REPO / "assets" / "demo" / "protonet-fashion-mnist"
    fit_influence(open_run(demo), DEFAULT_INFLUENCE)
    return demo
