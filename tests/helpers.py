"""Small builders shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import torch


def tiny_task(ways=3, shots=4, queries=3, dim=2, dtype=torch.float64):
    """A random Gaussian-cluster few-shot task: (support_x, support_y, query_x, query_y)."""
    centers = torch.randn(ways, dim, dtype=dtype) * 2
    sy = torch.arange(ways).repeat_interleave(shots)
    qy = torch.arange(ways).repeat_interleave(queries)
    sx = centers[sy] + 0.3 * torch.randn(len(sy), dim, dtype=dtype)
    qx = centers[qy] + 0.3 * torch.randn(len(qy), dim, dtype=dtype)
    return sx, sy, qx, qy


def zip_of(folder: Path, names=None) -> bytes:
    """A .zip of a run folder's files (the Home page's upload format)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(folder.iterdir()):
            if f.is_file() and (names is None or f.name in names):
                z.write(f, f"run/{f.name}")
    return buf.getvalue()


def upload_to_home(at, name: str, data: bytes):
    """Choose "Upload" on the Home page's sidebar and upload ``data`` (an AppTest)."""
    at.sidebar.radio(key="home_source").set_value("Upload").run()
    return at.sidebar.file_uploader(key="home_upload").upload(name, data, "application/zip").run()


# ---- small float64 meta-learners on the synthetic data (Gauss-Newton and projection tests) ----
def synthetic_tasksets(num_train: int, num_test: int = 4, seed: int = 2):
    """(dataset, train taskset, test taskset): 3-way 5-shot 5-query synthetic tasks."""
    from metainf_core.config import TaskConfig
    from metainf_core.data import load_dataset
    from metainf_core.tasks import make_taskset

    ds = load_dataset("synthetic")
    cfg = TaskConfig(dataset="synthetic", ways=3, shots=5, queries=5, train_tasks=num_train, test_tasks=num_test, seed=seed)
    return ds, make_taskset(ds, cfg, "train"), make_taskset(ds, cfg, "test")


def trained_synthetic(algo: str, data, inner_steps: int = 1, steps: int = 150):
    """A briefly meta-trained float64 63-parameter network (GN checks need no exact minimum)."""
    import numpy as np

    from metainf_core.learners import LearnerSpec, create_task_loss_function, params_of
    from metainf_core.models import build_model

    ds, train_ts, _ = data
    torch.manual_seed(0)
    model = build_model("mlp-synthetic", algo, (2,), 3).double()
    spec = LearnerSpec(algo, 3, inner_lr=0.4, inner_steps=inner_steps)
    params = {k: v.requires_grad_() for k, v in params_of(model).items()}
    loss = torch.func.vmap(create_task_loss_function(model, spec), in_dims=(None, 0, 0, 0, 0))
    b = train_ts.batch(np.arange(len(train_ts)), ds)
    opt = torch.optim.Adam(params.values(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        loss(params, b.support_x.double(), b.support_y, b.query_x.double(), b.query_y).mean().backward()
        opt.step()
    return model, spec, {k: v.detach() for k, v in params.items()}


def explicit_gauss_newton(model, spec, params, data) -> torch.Tensor:
    """(1/M) Σ_j (1/n_q) Σ_n J_nᵀ (diag σ − σσᵀ) J_n with J from jacrev through the adaptation (all q)."""
    import numpy as np
    from torch.func import jacrev

    from metainf_core.influence.flat import ParamLayout, create_flat_logits_function

    ds, train_ts, _ = data
    m = len(train_ts)
    layout = ParamLayout.from_params(params)
    w = layout.flatten(params)
    logits = create_flat_logits_function(model, spec, layout)
    b = train_ts.batch(np.arange(m), ds)
    h = torch.zeros(w.numel(), w.numel(), dtype=torch.float64)
    for j in range(m):
        args = (b.support_x[j].double(), b.support_y[j], b.query_x[j].double())
        jac = jacrev(lambda p, a=args: logits(p, *a))(w)  # n_q × c × q
        s = torch.softmax(logits(w, *args), -1)
        a = torch.diag_embed(s) - s.unsqueeze(-1) * s.unsqueeze(-2)
        h += torch.einsum("nkq,nkl,nlr->qr", jac, a, jac) / jac.shape[0]
    return h / m


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """``python -m metainf_core ARGS`` run in this process — exit status, stdout and stderr as the
    subprocess would give them, without its ~3 s of importing torch. Tests that need a process of
    their own (kills, thread counts, the ``python -m`` entry point itself) keep using subprocess."""
    from metainf_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess([str(a) for a in args], code, out.getvalue(), err.getvalue())


def fit_from_page(at, timeout: float = 900.0):
    """Click a page's "Fit influence now" when it shows, wait for the background fit job (metainf_core.jobs)
    to end, and rerun the page as its progress fragment does when the job ends: the page then shows
    the fitted result. A page without the button (already fitted) is returned as it is."""
    if not any(b.key == "fit_button" for b in at.button):
        return at
    from metainf_core import jobs
    from ui import fit_job

    at.button(key="fit_button").click().run()
    assert not at.exception, at.exception
    job = fit_job(at.session_state["model_path"])
    assert job is not None, "the fit button started no job"
    assert jobs.wait(job, timeout=timeout).state == "done", jobs.job_status(job.directory)
    return at.run()


def sweep_from_page(at, timeout: float = 600.0):
    """Click the Edit page's "Accuracy versus ξ" when it shows, wait for the background sweep job
    (``jobs.submit_xi_sweep``) to end, and rerun the page as its progress fragment does when the job
    ends: the page then draws the curve. A page without the button (the sweep cached) is returned as it is."""
    if not any(b.key == "edit_curve" for b in at.button):
        return at
    from metainf_core import jobs
    from ui import get_run, influence_config

    at.button(key="edit_curve").click().run()
    assert not at.exception, at.exception
    path = at.session_state["model_path"]
    job = jobs.job_status(jobs.xi_sweep_entry(get_run(path), influence_config(path), at.session_state["edit_block"]))
    assert job is not None, "the sweep button started no job"
    assert jobs.wait(job, timeout=timeout).state == "done", jobs.job_status(job.directory)
    return at.run()


def until(what, timeout: float = 600.0):  # noqa: ANN001, ANN201 - any callable, its truthy value
    """Poll ``what()`` until it returns something truthy, and return that (job states, never
    wall-clock assumptions); AssertionError after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, "timed out waiting for a job state"
        time.sleep(0.05)
    return value


def removal_from_page(at, timeout: float = 600.0):
    """Click the Audit page's "Remove the k most suspicious", wait for the background job that tests the
    removed sets (``jobs.submit_removal``) when one started, and rerun the page as its progress fragment
    does when the job ends: the page then shows the comparison. Sets already on disk start no job."""
    from metainf_core import jobs

    at.button(key="audit_remove").click().run()
    assert not at.exception, at.exception
    mine = at.session_state["_my_jobs"] if "_my_jobs" in at.session_state else set()
    started = [j for j in jobs.list_jobs() if j.id in mine and j.request.get("kind") == "removal"]
    for job in started:
        assert jobs.wait(job, timeout=timeout).state == "done", jobs.job_status(job.directory)
    return at.run() if started else at


def page_with(page: str, timeout: float = 600, **session_state):  # noqa: ANN201 - an AppTest
    """The page file ``page`` run once in AppTest with ``session_state`` set (e.g. ``model_path``), checked for exceptions."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page, default_timeout=timeout)
    for key, value in session_state.items():
        at.session_state[key] = value
    at = at.run()
    assert not at.exception, at.exception
    return at


@contextlib.contextmanager
def gloo_group(init_file: str, rank: int, world: int, timeout_s: float | None = None):
    """A gloo process group for one spawned test rank, destroyed however the rank's body ends. A rank
    that exits with its group alive (an assertion, a peer's death) leaves gloo's work objects to be
    freed during interpreter teardown, which can abort the process (SIGABRT, "terminate called
    without an active exception"; pytorch/pytorch#179291, #190489)."""
    import datetime

    import torch.distributed as dist

    kw = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, **kw)
    try:
        yield
    finally:
        dist.destroy_process_group()


def positive_definite_damping(run, least: float = 2.0, margin: float = 1.0) -> float:  # noqa: ANN001 - a Run
    """λ_d ≥ ``least`` with H + λ_d I's smallest eigenvalue ≥ ``margin`` (H: the run's meta-Hessian,
    ``compare.maml_task_if_fit``): where it holds, metainf's positive-part pseudo-inverse, CG and
    dattri's plain solve are the same operator. λ_d = 2 did on the 63-parameter synthetic MAML on an
    Intel Xeon; on an AMD EPYC its training (same seed, other rounding) ends where H's smallest
    eigenvalue is −3.8, so the damping is measured from the fit, not fixed."""
    from metainf_core.compare import CompareConfig, maml_task_if_fit

    smallest = float(maml_task_if_fit(run, CompareConfig(damping=least)).eigenvalues.min())
    return least + max(0.0, margin - smallest)
