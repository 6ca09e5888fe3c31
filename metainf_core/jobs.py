"""Long work as background jobs: each job its own OS process, its state a JSON file beside the
cache entry it fills (issue 25). Five kinds of work so far, named by the request's ``kind`` and
dispatched in the worker (``WORKS``): ``"fit"``, a TLXML influence fit (``submit_fit``);
``"diagnostics"``, the landscape diagnostics over a run's training snapshots
(``submit_diagnostics``); ``"xi_sweep"``, the Edit page's accuracy-versus-ξ curve of a blocked set
(``submit_xi_sweep``); ``"removal"``, the Audit page's removed sets at one ξ (``submit_removal``);
``"compare_table"``, a method's scores for every test task (``submit_compare_table``) or for one
(``"compare_test_task"``, ``submit_compare_test_task``). Fits,
diagnostics and tables save partial state in their entry as they go and resume from it; a removal
saves each set as it ends and resumes with the others; a sweep (seconds) saves its result once, and a
cut one starts again. Submit, progress, cancel, liveness and retry are one code path for all.

Why no job queue (huey, celery): a job fills exactly one content-addressed cache entry
(``cache.CacheEntry``), and the work already checkpoints itself there and resumes from it
(``fits.fit_influence``, ``diagnostics.cached_diagnostics_over_history``). What a queue would add, the OS gives: ``flock`` for the concurrency
slots and the submit decision (released by the kernel when a process dies, so nothing leaks), a
process group to cancel, ``/proc`` to tell a live worker from a dead one. So a job is
``python -m metainf_core.jobs ENTRY_DIR JOB_ID`` started with ``Popen(start_new_session=True)``:
nothing else to install or launch (``make run`` starts everything), the server never dies with
a worker (nor a worker with the server), and the state survives page reloads, second tabs and
server restarts, because it lives on disk beside the result.

Files in the cache entry ``<cache>/<kind>/<key>/``:

- ``job.json``: the request (run folder, settings) and the state — queued / running / done /
  failed / cancelled, progress (stage, done, total), times, error text, the worker's pid and
  start time. Written atomically; by the submitter once, by the worker alone afterwards.
- ``job.lock``: flocked while a submitter shares the live job or starts one, so two sessions
  asking for the same cache key get one job.
- ``job.cancel``: the id of a job asked to stop (read when its worker died before saying so).
- ``job.log``: the worker's stderr.

Slots: ``<cache>/jobs/slot-<i>.lock`` for i < ``job_slots()`` (one per spare core); a running
worker holds one flocked; queued workers take them in creation order, the oldest first.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from metainf_core.cache import INFO, RESULT
from metainf_core.config import InfluenceConfig
from metainf_core.data.base import REPO_ROOT
from metainf_core.evaluation import usable_cores
from metainf_core.exceptions import ConfigError, MetainfError
from metainf_core.io import write_json_atomic

if TYPE_CHECKING:
    from metainf_core.diagnostics import DiagnosticsConfig
    from metainf_core.service import Run

JOB_FILE, LOCK_FILE, CANCEL_FILE, LOG_FILE = "job.json", "job.lock", "job.cancel", "job.log"
ACTIVE = ("queued", "running")
POLL_S = 0.25  # how often a queued worker looks for a free slot
PROGRESS_EVERY_S = 1.0  # at most one progress write a second (each is an fsynced rename)
HANDOFF_S = 60.0  # a worker whose job.json never names it gives up (its submitter died)
STOPPED = "the worker stopped without finishing (killed?)"


class JobCancelled(BaseException):
    """SIGTERM in a worker: stop where the work is (a BaseException, so no ``except Exception``
    on the way swallows it); the saved partial state stays, so a retry resumes."""


@dataclass(frozen=True)
class Job:
    """One job's state as read from ``job.json`` (a dead worker's job reads *failed*, or
    *cancelled* when that was asked); ``position`` is its place in the queue (1 = next)."""

    directory: Path
    id: str
    state: str
    request: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    stage: str = ""
    done: int = 0
    total: int = 0
    stage_started: float = 0.0
    stage_done: int = 0  # units done at the stage's first report (a resumed job starts above 0)
    resumed_from: int = 0  # units (fit: tasks; diagnostics: snapshots) a saved partial state held at the start
    error: str = ""
    pid: int = 0
    position: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left in this stage at the rate since its first report, or None before a rate exists."""
        now = time.time() if now is None else now
        moved = self.done - self.stage_done
        if self.state != "running" or moved <= 0 or now <= self.stage_started:
            return None
        return (self.total - self.done) * (now - self.stage_started) / moved

    @classmethod
    def from_dict(cls, directory: Path, d: dict[str, Any]) -> Job:
        names = set(cls.__dataclass_fields__) - {"directory", "request"}
        return cls(directory, request=d.get("request", {}), **{k: v for k, v in d.items() if k in names})


# ---- the server side: submit, read, cancel, retry --------------------------------------------
def job_slots() -> int:
    """Jobs that run at once: ``$METAINF_JOB_SLOTS``, else one per spare core (the usable cores
    less one for the server), at least 1."""
    if os.environ.get("METAINF_JOB_SLOTS", "").isdigit():
        return max(1, int(os.environ["METAINF_JOB_SLOTS"]))
    return max(1, usable_cores() - 1)


PROC = Path("/proc")
ALIVE = "alive"  # the start time of a live process where there is no /proc (macOS): its pid alone


def _process_start(pid: int) -> str | None:
    """The start time of live process ``pid`` (``/proc``, clock ticks since boot), or None when it
    is gone or a zombie: a pid alone may be reused by another process. Without ``/proc``, ALIVE
    for a pid that exists."""
    if pid <= 0:
        return None
    if not (PROC / "self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # another user's process: it exists
        return ALIVE
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields_ = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
    return None if fields_[0] in ("Z", "X") else fields_[19]


def _read(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(directory) / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _settled(directory: Path, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with a dead worker's active state turned into *failed* (or *cancelled* when asked)."""
    start = _process_start(int(d.get("pid", 0)))
    if d.get("state") in ACTIVE and (start is None or start != d.get("pid_start")):
        marker = Path(directory) / CANCEL_FILE
        cancelled = marker.is_file() and marker.read_text(encoding="utf-8").strip() == d["id"]
        return {**d, "state": "cancelled" if cancelled else "failed", "error": "cancelled" if cancelled else STOPPED}
    return d


def list_jobs(root: str | Path | None = None) -> list[Job]:
    """Every job under the cache ``root`` (default ``cache.cache_root()``), oldest first, queued
    ones numbered by their place in the queue."""
    from metainf_core.cache import cache_root

    found = []
    for path in Path(root or cache_root()).glob(f"*/*/{JOB_FILE}"):
        d = _read(path.parent)
        if d is not None:
            found.append((path.parent, _settled(path.parent, d)))
    found.sort(key=lambda x: (x[1].get("created", 0.0), x[1].get("id", "")))
    jobs, place = [], 0
    for directory, d in found:
        place += d["state"] == "queued"
        jobs.append(Job.from_dict(directory, {**d, "position": place if d["state"] == "queued" else 0}))
    return jobs


def job_status(directory: str | Path) -> Job | None:
    """The job of the cache entry ``directory`` (its latest), or None when it never had one."""
    directory = Path(directory)
    d = _read(directory)
    if d is None:
        return None
    if _settled(directory, d)["state"] == "queued":
        return next(j for j in list_jobs(directory.parent.parent) if j.directory == directory)
    return Job.from_dict(directory, _settled(directory, d))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _submit(directory: Path, request: dict[str, Any]) -> Job:
    """The live job of ``directory`` if there is one (shared), else a new worker for ``request``."""
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory / LOCK_FILE):
        current = job_status(directory)
        if current is not None and current.active:
            return current
        job_id = uuid.uuid4().hex[:12]
        (directory / CANCEL_FILE).unlink(missing_ok=True)
        env = {**os.environ, "METAINF_CACHE": str(directory.parent.parent), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
        with open(directory / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "metainf_core.jobs", str(directory), job_id], cwd=REPO_ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends: no zombie left behind
        now = time.time()
        state = {"id": job_id, "state": "queued", "request": request, "created": now, "updated": now,
                 "pid": proc.pid, "pid_start": _process_start(proc.pid)}  # fmt: skip
        write_json_atomic(directory / JOB_FILE, state)
    return job_status(directory) or Job.from_dict(directory, state)


def fit_entry(run: Run, cfg: InfluenceConfig) -> Path:
    """The cache entry directory an influence fit of ``run`` with ``cfg`` fills (its job's home)."""
    from metainf_core.fits import cache_entry

    return cache_entry(run, cfg).directory


def submit_fit(run: Run, cfg: InfluenceConfig, *, save_every: int = 64) -> Job:
    """A background job that fits TLXML influence (Eq. 10–12) for ``run`` with ``cfg`` into its
    cache entry, checkpointing every ``save_every`` tasks; the job already running for this cache
    key if there is one; a *done* job without a process when the fit is cached or shipped."""
    from metainf_core.fits import is_fitted

    return _submit_unless_done(fit_entry(run, cfg), is_fitted(run, cfg), "fit", run, cfg.to_dict(), save_every=int(save_every))


def diagnostics_entry(run: Run, cfg: DiagnosticsConfig) -> Path:
    """The cache entry directory the landscape diagnostics of ``run``'s snapshots with ``cfg`` fill
    (its job's home); keyed by every snapshot file, so a retrained history gets its own job."""
    from metainf_core.diagnostics import diagnostics_cache_entry

    return diagnostics_cache_entry(run, cfg).directory


def submit_diagnostics(run: Run, cfg: DiagnosticsConfig) -> Job:
    """A background job that computes the landscape diagnostics of every training snapshot of
    ``run`` (METHODS §7) with ``cfg`` into its cache entry, saving each finished snapshot; the job
    already running for this cache key if there is one; a *done* job without a process when the
    rows are cached or shipped."""
    from metainf_core.diagnostics import diagnostics_cache_entry

    entry = diagnostics_cache_entry(run, cfg)
    return _submit_unless_done(entry.directory, entry.complete, "diagnostics", run, cfg.to_dict())


def xi_sweep_entry(run: Run, cfg: InfluenceConfig, block: Sequence[int], xis: Sequence[float] | None = None) -> Path:
    """The cache entry directory the Edit page's accuracy-versus-ξ sweep of the blocked set ``block``
    fills (its job's home; ``xis``: ``edit.XI_SWEEP`` when not given)."""
    from metainf_core.edit import XI_SWEEP
    from metainf_core.fits import xi_sweep_entry as entry

    return entry(run, cfg, block, XI_SWEEP if xis is None else xis).directory


def submit_xi_sweep(run: Run, cfg: InfluenceConfig, block: Sequence[int], xis: Sequence[float] | None = None) -> Job:
    """A background job that evaluates ω̂ + ξ Σ_{j∈block} I_meta (the fit ``cfg``, cached or shipped)
    on the test taskset at every ξ of ``xis`` (``edit.XI_SWEEP`` when not given) into its cache entry
    (``edit.stored_xi_sweep``); the job already running for this key if there is one; a *done* job
    without a process when the sweep is cached."""
    from metainf_core.edit import XI_SWEEP
    from metainf_core.fits import xi_sweep_entry as sweep_entry

    ids, xis = sorted({int(j) for j in block}), [float(x) for x in (XI_SWEEP if xis is None else xis)]  # JSON: plain numbers
    entry = sweep_entry(run, cfg, ids, xis)
    return _submit_unless_done(entry.directory, entry.complete, "xi_sweep", run, cfg.to_dict(), block=ids, xis=xis)


def removal_entry(run: Run, cfg: InfluenceConfig, sets: Sequence[Sequence[int]], xi: float) -> Path:
    """The cache entry directory the Audit page's removal of ``sets`` at ξ fills (its job's home)."""
    from metainf_core.fits import removal_entry as entry

    return entry(run, cfg, sets, xi).directory


def submit_removal(run: Run, cfg: InfluenceConfig, sets: Sequence[Sequence[int]], xi: float) -> Job:
    """A background job that evaluates ω̂ + ξ Σ_{j∈S} I_meta (the fit ``cfg``, cached or shipped) on the
    test taskset for each removed set S of ``sets`` (``detect.stored_removal_evaluations``); the job
    already running for these sets if there is one; a *done* job without a process when every set's
    metrics are on disk or shipped."""
    from metainf_core.detect import removal_evaluated

    blocks = [sorted({int(j) for j in ids}) for ids in sets]  # JSON: plain numbers
    return _submit_unless_done(removal_entry(run, cfg, blocks, xi), removal_evaluated(run, cfg, blocks, xi), "removal",
                               run, cfg.to_dict(), sets=blocks, xi=float(xi))  # fmt: skip


def compare_table_entry(run: Run, name: str, config: Any) -> Path:
    """The cache entry directory method ``name``'s test table with ``config`` (a ``CompareConfig``)
    fills (``compare.test_table_entry``; its job's home)."""
    from metainf_core.compare import test_table_entry

    return test_table_entry(run, name, config).directory


def submit_compare_table(run: Run, name: str, config: Any) -> Job:
    """A background job that scores every training task for each test task by method ``name`` with
    ``config`` (``compare.test_score_table``: the Compare page's table, saved every few test tasks and
    resumed from there); the job already running for it if there is one; a *done* job without a
    process when the table is on disk or shipped."""
    from metainf_core.compare import get_method, test_table_entry

    get_method(name)  # an unknown name fails here, not in the worker
    entry = test_table_entry(run, name, config)
    return _submit_unless_done(entry.directory, entry.complete, "compare_table", run, config.to_dict(), method=name)


def submit_compare_test_task(run: Run, name: str, config: Any, test_id: int) -> Job:
    """A background job that scores every training task for the single test task ``test_id`` by method
    ``name`` (``compare.test_task_scores``; for a method whose whole table would take hours); the job
    already running for it if there is one; a *done* job without a process when the scores are on disk."""
    from metainf_core.compare import get_method, scores_on_disk, test_task_entry

    get_method(name)
    return _submit_unless_done(test_task_entry(run, name, config, test_id).directory, scores_on_disk(run, name, config, test_id),
                               "compare_test_task", run, config.to_dict(), method=name, test_id=int(test_id))  # fmt: skip


def _submit_unless_done(directory: Path, done: bool, kind: str, run: Run, config: dict[str, Any], **extra: Any) -> Job:
    """A *done* job without a process when the entry already holds the result, else ``_submit``
    of the request of work ``kind`` (``WORKS``) on ``run`` with settings ``config`` (and ``extra``)."""
    if done:
        return Job(directory, "", "done")
    request = {"kind": kind, "run": str(run.checkpoint.path), "config": config, "device": str(run.device), **extra}
    return _submit(directory, request)


def retry(job: Job) -> Job:
    """Start ``job``'s request again (a failed or cancelled job): it resumes from its partial state."""
    if job.active:
        return job
    if not job.request:
        raise ConfigError(f"{job.directory}: the job records no request to retry")
    return _submit(job.directory, job.request)


def cancel(job: Job) -> Job:
    """Ask ``job``'s worker to stop (SIGTERM to its process group): it keeps its partial state
    and leaves no half-written result; a job already ended is returned as it is."""
    d = _read(job.directory)
    if d is None or d.get("id") != job.id or _settled(job.directory, d)["state"] not in ACTIVE:
        return job_status(job.directory) or job
    (job.directory / CANCEL_FILE).write_text(job.id, encoding="utf-8")
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(int(d["pid"]), signal.SIGTERM)  # the worker leads its own session and group
    return job_status(job.directory) or job


def wait(job: Job, timeout: float = 600.0) -> Job:
    """Block until ``job`` ends (scripts and tests; pages poll instead); TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (now := job_status(job.directory) or job).active:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.id} still {now.state} after {timeout:.0f} s")
        time.sleep(POLL_S)
    return now


# ---- the worker: python -m metainf_core.jobs ENTRY_DIR JOB_ID --------------------------------
class _Worker:
    """The one writer of ``job.json`` once started: state changes and throttled progress."""

    def __init__(self, directory: Path, state: dict[str, Any]) -> None:
        self.directory, self.state = directory, state

    def update(self, **changes: Any) -> None:
        self.state.update(changes, updated=time.time())
        write_json_atomic(self.directory / JOB_FILE, self.state)

    def progress(self, stage: str, done: int, total: int) -> None:
        """The work's progress (``fits.FitProgress``; the diagnostics report one stage, "snapshots"):
        a new stage at once, else at most once a second."""
        if stage != self.state.get("stage"):
            self.update(stage=stage, done=done, total=total, stage_started=time.time(), stage_done=done)
        elif done == total or time.time() - self.state["updated"] >= PROGRESS_EVERY_S:
            self.update(done=done, total=total)


def _handoff(directory: Path, job_id: str) -> dict[str, Any] | None:
    """Wait for the submitter to write ``job.json`` naming this job and process (it starts the
    worker first, to know its pid); None when that never comes."""
    deadline = time.monotonic() + HANDOFF_S
    while time.monotonic() < deadline:
        d = _read(directory)
        if d is not None and d.get("id") == job_id and d.get("pid") == os.getpid():
            return d
        time.sleep(0.05)
    return None


def _slot(directory: Path, job_id: str) -> IO[str]:
    """A flocked slot file (held until the worker exits, released by the kernel if it dies),
    taken when this job is the oldest queued one and a slot is free."""
    slots = directory.parent.parent / "jobs"
    slots.mkdir(parents=True, exist_ok=True)
    while True:
        head = next((j for j in list_jobs(directory.parent.parent) if j.state == "queued"), None)
        if head is None or head.id == job_id:
            for i in range(job_slots()):
                f = open(slots / f"slot-{i}.lock", "a+")  # noqa: SIM115 - kept open: the flock lives with it
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return f
                except BlockingIOError:
                    f.close()
        time.sleep(POLL_S)


def _open(request: dict[str, Any]) -> Run:
    """The request's run, opened in the worker on one intra-op thread (one job per spare core, job_slots)."""
    import torch

    from metainf_core.service import open_run

    torch.set_num_threads(1)
    return open_run(request["run"], device=request.get("device", "cpu"))


def _fit(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.fits import fit_influence, fit_status

    run = _open(request)
    cfg = InfluenceConfig.from_dict(request["config"])
    worker.update(resumed_from=int(fit_status(run, cfg)["tasks_done"]))
    fit_influence(run, cfg, progress=worker.progress, save_every=int(request.get("save_every", 64)))


def _diagnostics(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.diagnostics import DiagnosticsConfig, cached_diagnostics_over_history, load_cached_diagnostics

    run = _open(request)
    cfg = DiagnosticsConfig(**request["config"])
    worker.update(resumed_from=len(load_cached_diagnostics(run, cfg)[0]))
    cached_diagnostics_over_history(run, cfg, progress=lambda done, total: worker.progress("snapshots", done, total))


def _fitted(request: dict[str, Any]) -> tuple[Run, Any, InfluenceConfig]:
    """The request's run, its fit (``TaskInfluence``) and the fit's settings, in the order the edit
    functions take them: an edit's job never starts an hours-long fit on its own."""
    from metainf_core.fits import fit_influence

    run = _open(request)
    cfg = _require_fit(run, InfluenceConfig.from_dict(request["config"]))
    return run, fit_influence(run, cfg), cfg


def _require_fit(run: Run, cfg: InfluenceConfig) -> InfluenceConfig:
    """``cfg`` when its fit of ``run`` is cached or shipped; else ConfigError (no job fits on its own)."""
    from metainf_core.fits import is_fitted

    if not is_fitted(run, cfg):
        raise ConfigError("the influence fit for these settings is not computed yet: fit it first")
    return cfg


def _xi_sweep(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.edit import stored_xi_sweep

    block, xis = [int(j) for j in request["block"]], [float(x) for x in request["xis"]]
    stored_xi_sweep(*_fitted(request), block, xis, progress=lambda done, total: worker.progress("xis", done, total))


def _removal(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.detect import stored_removal_evaluations

    sets = [[int(j) for j in ids] for ids in request["sets"]]
    stored_removal_evaluations(*_fitted(request), sets, float(request["xi"]),
                               progress=lambda done, total: worker.progress("sets", done, total))  # fmt: skip


def _compare_request(request: dict[str, Any]) -> tuple[Run, str, Any]:
    """The request's run, method and ``CompareConfig``; TLXML (Gauss-Newton) only on a fitted run
    (a comparison never starts an hours-long fit on its own)."""
    from metainf_core.compare import TLXML_METHODS, CompareConfig, tlxml_config

    run, name, config = _open(request), request["method"], CompareConfig(**request["config"])
    if TLXML_METHODS.get(name) == "gn":
        _require_fit(run, tlxml_config("gn", config))
    return run, name, config


def _compare_table(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.compare import test_score_table

    test_score_table(*_compare_request(request), progress=lambda done, total: worker.progress("test_tasks", done, total))


def _compare_test_task(worker: _Worker, request: dict[str, Any]) -> None:
    from metainf_core.compare import test_task_scores

    worker.progress("test_tasks", 0, 1)
    test_task_scores(*_compare_request(request), int(request["test_id"]))
    worker.progress("test_tasks", 1, 1)


WORKS = {"fit": _fit, "diagnostics": _diagnostics, "xi_sweep": _xi_sweep, "removal": _removal,
         "compare_table": _compare_table, "compare_test_task": _compare_test_task}  # a request's kind -> the work that fills its entry


def _dispatch(worker: _Worker, request: dict[str, Any]) -> None:
    kind = request.get("kind", "fit")
    if kind not in WORKS:
        raise ConfigError(f"unknown job kind {kind!r} (known: {', '.join(WORKS)})")
    WORKS[kind](worker, request)


def _drop_half_written(directory: Path) -> None:
    """A result file without its info (the worker stopped between the two writes of
    ``CacheEntry.save``) is removed: the entry is either complete or holds no result."""
    if not (directory / INFO).is_file():
        (directory / RESULT).unlink(missing_ok=True)


def _cancelled(_signum: int, _frame: object) -> None:
    raise JobCancelled


def work(directory: str | Path, job_id: str) -> int:
    """Run job ``job_id`` of the cache entry ``directory``: wait for a slot (*queued*), do the work
    (*running*, with progress), end *done*, *failed* with the error, or *cancelled* on SIGTERM."""
    directory = Path(directory)
    signal.signal(signal.SIGTERM, _cancelled)
    try:
        state = _handoff(directory, job_id)
    except JobCancelled:
        return 3
    if state is None:
        return 1
    worker = _Worker(directory, state)
    try:
        with _slot(directory, job_id):
            worker.update(state="running", started=time.time())
            _dispatch(worker, state["request"])
    except JobCancelled:
        _drop_half_written(directory)
        done = (directory / INFO).is_file() and (directory / RESULT).is_file()  # the signal came after the last write
        worker.update(state="done" if done else "cancelled", error="" if done else "cancelled")
        return 3
    except Exception as e:  # noqa: BLE001 - whatever stops the work is the job's error text
        traceback.print_exc()  # to job.log
        worker.update(state="failed", error=str(e) if isinstance(e, MetainfError) else f"{type(e).__name__}: {e}")
        return 2
    worker.update(state="done", error="")
    return 0


if __name__ == "__main__":
    sys.exit(work(sys.argv[1], sys.argv[2]))
