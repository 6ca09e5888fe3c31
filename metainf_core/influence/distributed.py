"""Distributed Gauss-Newton fits with ``torch.distributed`` (issue 14): one fit, N processes.

    torchrun --nproc-per-node N -m metainf_core fit DIR --method gn

Each rank streams its shard of the training tasks — in a fresh fit task j goes to rank j mod N —
into its own ``GaussNewtonFit`` buffer (Algorithm 1), checkpointing it to
``partial-rank{r}-of-{N}.safetensors`` in the cache entry. At the end the ranks' orthogonal rows
(≤ N_orth each) are merged by a binomial tree of Algorithm 2 (rank r + s sends to rank r, which
keeps the N_orth leading orthogonal rows of the stack; log₂ N rounds): the Gauss-Newton matrix is
the sum of the ranks' V_r V_rᵀ, and Propositions 3–4 make every merge exact when N_orth ≥ rank V —
the factor is then the one a single process gives (up to an orthogonal rotation of equal eigenvalues and rounding).
When N_orth < rank V, both the single-process stream and the tree keep a leading N_orth-subspace
of partial sums, so they agree only approximately, like two stream orders do. Rank 0 inverts
(Algorithm 3) and broadcasts U; the projections P = Uᵀ g_j are sharded the same way and gathered;
rank 0 chooses the truncation and writes the cache entry, the other ranks read it after a barrier.

The cache key does not depend on the world size; the fit's record (info.json) states
``world_size``, ``tasks_per_rank`` (tasks each rank streamed into its buffer, resumed ones
included: they sum to M) and ``tasks_computed_per_rank`` (those computed by this launch).
A killed fit resumes with any world size, or in a single process: the saved buffers of earlier
launches (``usable_buffers``: newest first, kept when disjoint from those kept) are dealt to the
new ranks (a file of rank i to rank i mod N) and absorbed into their buffers (Algorithm 2, exact
like the merge), and the tasks no saved buffer holds are dealt round-robin. This needs every rank
to see the same cache directory (a shared filesystem) when the world size changes; with a
node-local directory and the same world size each rank finds its own file. Saved buffers are
removed once the entry is written.

Besides the fit: ``map_in_rounds`` shares out items of similar cost (a history's snapshots in
``diagnostics``, the edited models of the one-step experiment) one per rank per round, and
``min_over_ranks`` / ``all_ranks`` let the ranks agree on what the cache holds (node-local
directories can differ) before they decide to compute.

Collectives: every rank calls the same sequence (tasks-done all-reduce, rounds all-reduce, one
all-reduce per checkpoint round, count all-gathers, tree send/recv pairs, broadcast of U,
all-gather of P, final barrier), whatever its shard holds. Backend: NCCL when the run computes on
CUDA, gloo otherwise; the process group comes from ``env://`` (what torchrun sets) unless the
caller initialised one. Without those variables (or with world size 1) the process is rank 0 of 1
(``context``): the same stream and projections run with every collective a no-op, and the partial
file is ``partial.safetensors`` — a single-process fit is the world-size-1 fit
(``influence.fit.fit_gauss_newton``, the one Gauss-Newton fit path).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from metainf_core.cache import PARTIAL
from metainf_core.checkpoint import load_tensors, read_tensor_metadata, save_tensors
from metainf_core.exceptions import CheckpointError, ConfigError, MetainfError
from metainf_core.influence.exact import CurvatureFactor
from metainf_core.influence.gauss_newton import GaussNewtonFit, orthogonal_columns, pseudo_inverse_factor

PARTIAL_GLOB = "partial-rank*-of-*.safetensors"
FitProgress = Callable[[str, int, int], None]  # (stage, done, total): stage "curvature" (Algorithm 1) or "gradients" (P)
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---- process group -----------------------------------------------------------------------------
def active() -> bool:
    """True when this process is one of several ranks: a process group of world size > 1 exists,
    or torchrun's variables (RANK, WORLD_SIZE > 1, MASTER_ADDR, MASTER_PORT) say one should.
    ``METAINF_DISTRIBUTED=0`` opts out (e.g. a DDP script that calls the fit on rank 0 only:
    a distributed fit needs every rank to call it)."""
    if not dist.is_available() or os.environ.get("METAINF_DISTRIBUTED") == "0":
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    return all(v in os.environ for v in ENV_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def rank() -> int:
    """This process's rank in a distributed fit (0 when fits are not distributed)."""
    if not active():
        return 0
    return dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])


def world_size() -> int:
    """How many ranks share the work (1 when fits are not distributed)."""
    if not active():
        return 1
    return dist.get_world_size() if dist.is_initialized() else int(os.environ["WORLD_SIZE"])


def is_primary() -> bool:
    """Rank 0, or a single process: the one that writes results and prints."""
    return rank() == 0


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    backend: str
    device: torch.device  # where tensors must be for the backend's collectives


def context(compute_device: torch.device | str = "cpu") -> Context:
    """The process group, initialised from ``env://`` on first use (NCCL when ``compute_device``
    is CUDA, gloo otherwise) and destroyed at exit; a group the caller made is used as it is.
    Outside a distributed launch: rank 0 of 1 on ``compute_device``, every collective a no-op, so a
    single process runs the same fit (``influence.fit.fit_gauss_newton``) as world size 1."""
    if not active():
        return Context(0, 1, "none", torch.device(compute_device))
    if not dist.is_initialized():
        backend = "nccl" if torch.device(compute_device).type == "cuda" and dist.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # long waits are normal (rank 0 trains a run or chooses the truncation while the others wait):
        # the collectives' timeout is $METAINF_DIST_TIMEOUT_HOURS (default 24 h, torch's is 30 min)
        hours = float(os.environ.get("METAINF_DIST_TIMEOUT_HOURS", "24"))
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(hours=hours))
        atexit.register(_destroy)
    backend = str(dist.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return Context(dist.get_rank(), dist.get_world_size(), backend, device)


def barrier() -> None:
    """Every rank waits here until all have arrived; nothing in a single process."""
    if active():
        context()
        dist.barrier()


def min_over_ranks(value: int) -> int:
    """The smallest of every rank's ``value`` (an all-reduce: also a point all ranks pass together);
    ``value`` itself in a single process. How ranks agree on what a cache they may not all see holds."""
    if not active():
        return int(value)
    ctx = context()
    return int(_all_reduce([int(value)], ctx, dist.ReduceOp.MIN)[0])


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` holds on every rank (``flag`` itself in a single process)."""
    return bool(min_over_ranks(int(bool(flag))))


def shard(num_tasks: int, r: int, world_size: int) -> np.ndarray:
    """Task ids j ≡ r (mod world_size): rank ``r``'s share of the projections P (and of a fresh fit's
    stream) — balanced to one task, fixed per world size."""
    return np.arange(r, num_tasks, world_size, dtype=np.int64)


def _all_reduce(values: Tensor | list[int] | np.ndarray, ctx: Context, op=None) -> Tensor:
    t = torch.as_tensor(np.asarray(values), dtype=torch.int64).to(ctx.device)
    if ctx.world_size > 1:
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.cpu()


def _all_gather_int(value: int, ctx: Context) -> list[int]:
    if ctx.world_size == 1:
        return [int(value)]
    parts = [torch.zeros(1, dtype=torch.int64, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(parts, torch.tensor([int(value)], dtype=torch.int64, device=ctx.device))
    return [int(p.item()) for p in parts]


# ---- partial states: one file per rank, absorbed by any later launch -------------------------
SINGLE_PARTIAL = PARTIAL  # a single process's checkpoint, as every cache entry's partial state


def partial_path(directory: Path, r: int, world_size: int) -> Path:
    """Rank ``r``'s checkpoint file; a single process (rank 0 of 1) writes ``SINGLE_PARTIAL``."""
    if world_size == 1:
        return Path(directory) / SINGLE_PARTIAL
    return Path(directory) / f"partial-rank{r}-of-{world_size}.safetensors"


def save_buffer(path: Path, fit: GaussNewtonFit, inputs: dict[str, Any], r: int = 0, world_size: int = 1) -> None:
    """Checkpoint ``fit``'s Algorithm 1 buffer (rows, done mask, state) in the one format
    ``saved_buffers`` reads, whoever wrote it: a single process (rank 0 of 1) or a rank of N."""
    state = fit.state_dict()
    tensors = {"rows": state.pop("rows"), "done": state.pop("done").to(torch.uint8)}
    meta = {"inputs": inputs, "state": state, "tasks_done": fit.tasks_done, "total": len(fit.done),
            "rank": r, "world_size": world_size}  # fmt: skip
    save_tensors(path, tensors, metadata=meta)


@dataclass(frozen=True)
class SavedBuffer:
    """One resumable Algorithm 1 buffer left in a cache entry by an interrupted fit: a single
    process's ``partial.safetensors`` (rank 0 of 1) or a rank's ``partial-rank{r}-of-{N}``."""

    path: Path
    rank: int
    world_size: int
    mtime_ns: int
    done: np.ndarray  # the tasks its rows hold
    state: dict[str, Any]  # GaussNewtonFit.state_dict without the tensors


def saved_buffers(directory: Path, num_tasks: int) -> list[SavedBuffer]:
    """Every readable saved buffer in ``directory`` for a taskset of ``num_tasks`` (headers and
    done masks only; the rows are not read)."""
    found = []
    for path in sorted([Path(directory) / SINGLE_PARTIAL, *Path(directory).glob(PARTIAL_GLOB)]):
        if not path.is_file():
            continue
        try:
            meta = read_tensor_metadata(path)
            done = load_tensors(path, ("done",))["done"].numpy().astype(bool)
            mtime = path.stat().st_mtime_ns
        except (CheckpointError, ValueError, OSError) as e:
            print(f"warning: {path.name} unreadable ({e}); its tasks will be recomputed", file=sys.stderr)
            continue
        if len(done) != num_tasks or int(meta.get("total", num_tasks)) != num_tasks:
            continue
        state = meta.get("state", {})
        found.append(SavedBuffer(path, int(meta.get("rank", 0)), int(meta.get("world_size", 1)), mtime, done, state))
    return found


def usable_buffers(buffers: list[SavedBuffer]) -> list[SavedBuffer]:
    """The saved buffers a resumed fit takes over: newest first, each kept only when its tasks are
    disjoint from those already kept (a later launch's buffer holds what it absorbed from earlier
    ones, so an older file that overlaps it is stale). Deterministic: every rank of a launch that
    sees the same directory picks the same set."""
    kept: list[SavedBuffer] = []
    taken = np.zeros(len(buffers[0].done) if buffers else 0, dtype=bool)
    for b in sorted(buffers, key=lambda b: (-b.mtime_ns, b.world_size, b.rank)):
        if not (taken & b.done).any():
            kept.append(b)
            taken |= b.done
    return kept


def resume_buffer(
    directory: Path, num_tasks: int, resume: Callable[[dict[str, Any]], GaussNewtonFit], r: int = 0, world_size: int = 1
) -> GaussNewtonFit | None:
    """Rank ``r``'s starting buffer: the usable saved buffers of any earlier launch — a single process
    or any number of ranks — whose rank ≡ r (mod ``world_size``), absorbed into one fit (Algorithm 2,
    exact when N_orth ≥ rank). None when there is nothing to resume. So a killed fit resumes with
    another world size, or in a single process, without recomputing what was saved."""
    fit = None
    for b in sorted(usable_buffers(saved_buffers(directory, num_tasks)), key=lambda b: b.path.name):
        if b.rank % world_size != r:
            continue
        try:
            part = resume({**b.state, **load_tensors(b.path)})
            if fit is None:
                fit = part
            else:
                fit.absorb(part)
        except (CheckpointError, ConfigError, MetainfError, ValueError, OSError, KeyError) as e:
            print(f"warning: {b.path.name} unusable ({e}); its tasks will be recomputed", file=sys.stderr)
    return fit


def partial_progress(directory: Path, num_tasks: int) -> dict[str, Any] | None:
    """Progress of a fit left half-way in cache entry ``directory``: the tasks held by the saved
    buffers a resumed fit would take over (single-process or per-rank files), or None."""
    usable = usable_buffers(saved_buffers(directory, num_tasks))
    if not usable:
        return None
    return {"tasks_done": int(sum(b.done.sum() for b in usable)), "total": num_tasks, "files": len(usable)}


def _remove_partials(directory: Path, r: int | None = None, world_size: int | None = None) -> None:
    """Drop this rank's partial file, or (``r`` None) every saved buffer in the entry."""
    if r is not None:
        paths = [partial_path(directory, r, world_size)]
    else:
        paths = [Path(directory) / SINGLE_PARTIAL, *Path(directory).glob(PARTIAL_GLOB)]
    for p in paths:
        p.unlink(missing_ok=True)


# ---- tree merge of the ranks' buffers (Algorithm 2) --------------------------------------------
def _send_rows(rows: Tensor, dst: int, ctx: Context) -> None:
    dist.send(torch.tensor([rows.shape[0]], dtype=torch.int64, device=ctx.device), dst)
    if rows.shape[0]:
        dist.send(rows.contiguous().to(ctx.device), dst)


def _recv_rows(src: int, like: Tensor, ctx: Context) -> Tensor:
    n = torch.zeros(1, dtype=torch.int64, device=ctx.device)
    dist.recv(n, src)
    out = torch.empty(int(n.item()), like.shape[1], dtype=like.dtype, device=ctx.device)
    if out.shape[0]:
        dist.recv(out, src)
    return out.to(like.device)


def tree_merge(rows: Tensor, n_orth: int, gram_block: int, ctx: Context) -> Tensor:
    """Merge every rank's orthogonal rows (Vᵣᵀ, n_r × d, n_r ≤ n_orth) into ≤ n_orth orthogonal rows
    of the stack by a binomial tree of Algorithm 2; the result is on rank 0 (other ranks get their
    input back). Exact (Prop. 3–4) when n_orth ≥ rank of the stack."""
    step = 1
    while step < ctx.world_size:
        if ctx.rank % (2 * step) == step:
            _send_rows(rows, ctx.rank - step, ctx)
            return rows
        if ctx.rank % (2 * step) == 0 and ctx.rank + step < ctx.world_size:
            other = _recv_rows(ctx.rank + step, rows, ctx)
            if other.shape[0] and rows.shape[0]:
                rows = orthogonal_columns(torch.cat([rows, other]), n_orth, gram_block)
            elif other.shape[0]:
                rows = other
        step *= 2
    return rows


def _broadcast_factor(factor: CurvatureFactor | None, like: Tensor, ctx: Context) -> CurvatureFactor:
    """Rank 0's U, eigenvalues and counts on every rank."""
    if ctx.world_size == 1:
        assert factor is not None
        return factor
    head = torch.zeros(4, dtype=torch.int64, device=ctx.device)
    if ctx.rank == 0:
        assert factor is not None
        head = torch.tensor([factor.factor.shape[0], factor.factor.shape[1], factor.num_zero, factor.num_negative],
                            dtype=torch.int64, device=ctx.device)  # fmt: skip
    dist.broadcast(head, 0)
    d, r, num_zero, num_negative = (int(x) for x in head.tolist())
    u = factor.factor.contiguous().to(ctx.device) if ctx.rank == 0 else torch.empty(d, r, dtype=like.dtype, device=ctx.device)
    eig = factor.eigenvalues.contiguous().to(ctx.device) if ctx.rank == 0 else torch.empty(r, dtype=like.dtype, device=ctx.device)
    dist.broadcast(u, 0)
    dist.broadcast(eig, 0)
    if ctx.rank == 0:
        return factor
    return CurvatureFactor(factor=u.to(like.device), eigenvalues=eig.to(like.device), num_negative=num_negative, num_zero=num_zero)


# ---- the fit -----------------------------------------------------------------------------------
@dataclass
class StreamResult:
    """What ``stream_curvature`` leaves: the factor (on every rank) and the fit's record."""

    factor: CurvatureFactor
    fit: GaussNewtonFit
    record: dict[str, Any]


def stream_curvature(
    new_fit: Callable[[], GaussNewtonFit],
    resume_fit: Callable[[dict[str, Any]], GaussNewtonFit],
    directory: Path | None,
    inputs: dict[str, Any],
    num_tasks: int,
    damping: float,
    *,
    compute_device: torch.device | str = "cpu",
    progress: FitProgress | None = None,
    save_every: int = 64,
) -> StreamResult:
    """Algorithm 1 over this rank's shard (checkpointed every ``save_every`` tasks to its partial
    file in ``directory``; None: no checkpoints), tree merge, Algorithm 3 on rank 0, U broadcast to
    every rank. A single process is rank 0 of 1: its stream, no merge, its Algorithm 3."""
    ctx = context(compute_device)
    path = None if directory is None else partial_path(directory, ctx.rank, ctx.world_size)
    resumed_fit = None if directory is None else resume_buffer(directory, num_tasks, resume_fit, ctx.rank, ctx.world_size)
    fit = resumed_fit or new_fit()
    # every task done at most once over all ranks' buffers (else V Vᵀ would count it twice)
    done_count = _all_reduce(fit.done.astype(np.int64), ctx)
    if len(done_count) and int(done_count.max()) > 1:
        raise MetainfError(f"{directory}: the ranks resumed overlapping saved buffers (a cache directory "
                           f"not shared by all ranks?); delete {PARTIAL_GLOB} there and refit")  # fmt: skip
    resumed = fit.tasks_done
    todo = np.flatnonzero(done_count.numpy() == 0)[ctx.rank :: ctx.world_size]  # what is left, dealt round-robin
    rounds = int(_all_reduce([-(-len(todo) // save_every)], ctx, dist.ReduceOp.MAX)[0])
    done_all = int(done_count.sum())
    primary_progress = progress if ctx.rank == 0 else None
    if primary_progress is not None and done_all and ctx.world_size > 1:  # the ranks' resumed tasks (one process: its first report counts them)
        primary_progress("curvature", done_all, num_tasks)
    for i in range(rounds):  # same number of rounds on every rank: one all-reduce each
        chunk = todo[i * save_every : (i + 1) * save_every]
        if len(chunk):
            base, start = done_all, fit.tasks_done
            callback = None
            if primary_progress is not None:  # between rounds rank 0 sees only itself: estimate ×N
                def callback(d: int, _t: int, base=base, start=start) -> None:
                    primary_progress("curvature", min(num_tasks, base + (d - start) * ctx.world_size), num_tasks)
            fit.add_tasks(chunk, callback)
            if path is not None:
                save_buffer(path, fit, inputs, ctx.rank, ctx.world_size)
        done_all = int(_all_reduce([fit.tasks_done], ctx)[0])
        if primary_progress is not None:
            primary_progress("curvature", done_all, num_tasks)
    tasks_per_rank = _all_gather_int(fit.tasks_done, ctx)
    computed_per_rank = _all_gather_int(fit.tasks_done - resumed, ctx)
    if sum(tasks_per_rank) != num_tasks:
        raise MetainfError(f"ranks streamed {sum(tasks_per_rank)} tasks, the taskset has {num_tasks}")
    local = fit.orthogonal_rows() if fit.tasks_done else fit._rows()
    started = time.perf_counter()
    merged = tree_merge(local, fit.config.n_orth, fit.config.gram_block, ctx)
    factor = pseudo_inverse_factor(merged, num_tasks, damping) if ctx.rank == 0 else None
    factor = _broadcast_factor(factor, local, ctx)
    if ctx.world_size == 1:  # a 1-process fit's record is empty, as before distributed fits existed
        return StreamResult(factor, fit, {})
    record = {
        "world_size": ctx.world_size,
        "tasks_per_rank": tasks_per_rank,
        "tasks_computed_per_rank": computed_per_rank,
        "backend": ctx.backend,
        "merge_seconds": round(time.perf_counter() - started, 3),
    }
    return StreamResult(factor, fit, record)


def sharded_projections(
    project: Callable[[np.ndarray], Tensor],
    num_tasks: int,
    num_columns: int,
    dtype: torch.dtype,
    *,
    compute_device: torch.device | str = "cpu",
    batch: int = 32,
    progress: FitProgress | None = None,
) -> Tensor:
    """P (M × r) with row j = ``project([j])``, each rank computing its shard in batches of
    ``batch`` ids, gathered on every rank (all-gather, padded to ⌈M/N⌉ rows); a single process
    computes every row, in order, never holding more than ``batch`` gradients."""
    ctx = context(compute_device)
    ids = shard(num_tasks, ctx.rank, ctx.world_size)
    width = -(-num_tasks // ctx.world_size)
    local = torch.zeros(width, num_columns, dtype=dtype, device=ctx.device)
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        local[start : start + len(chunk)] = project(chunk).to(device=ctx.device, dtype=dtype)
        if progress is not None and ctx.rank == 0:  # rank 0's share ×N: an estimate of the whole
            progress("gradients", min(num_tasks, (start + len(chunk)) * ctx.world_size), num_tasks)
    proj = local  # a single process: every row, in task order, on the compute device
    if ctx.world_size > 1:
        parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
        dist.all_gather(parts, local)
        proj = torch.empty(num_tasks, num_columns, dtype=dtype)
        for r, part in enumerate(parts):
            rows = shard(num_tasks, r, ctx.world_size)
            proj[torch.from_numpy(rows)] = part[: len(rows)].cpu()
    if progress is not None and ctx.rank == 0:
        progress("gradients", num_tasks, num_tasks)
    return proj


def map_in_rounds(
    num_items: int, compute: Callable[[int], Tensor], width: int, on_round: Callable[[list[Tensor]], None] | None = None
) -> list[Tensor]:
    """``[compute(i) for i in range(num_items)]`` (float64 vectors of ``width``) with the items dealt
    one per rank per round: round k has rank r compute item kN + r, then one all-gather gives every
    rank the round's results in item order, handed to ``on_round`` (e.g. rank 0 checkpoints the
    finished prefix, so a kill loses at most one round). For items of similar cost (a run's history
    snapshots). In a single process: a plain loop, ``on_round`` after each item."""
    if not active():
        out = []
        for i in range(num_items):
            out.append(compute(i).to(torch.float64).cpu())
            if on_round is not None:
                on_round(out[-1:])
        return out
    ctx = context()
    out = []
    for start in range(0, num_items, ctx.world_size):
        i = start + ctx.rank
        mine = compute(i).to(torch.float64) if i < num_items else torch.zeros(width, dtype=torch.float64)
        parts = [torch.empty(width, dtype=torch.float64, device=ctx.device) for _ in range(ctx.world_size)]
        dist.all_gather(parts, mine.reshape(width).to(ctx.device))
        got = [p.cpu() for p in parts[: min(ctx.world_size, num_items - start)]]
        out.extend(got)
        if on_round is not None:
            on_round(got)
    return out


# ---- writing and reading the entry -------------------------------------------------------------
def save_entry(entry, tensors: dict[str, Tensor], info: dict[str, Any]) -> None:
    """``entry.save`` in a single process. Distributed: rank 0 alone writes the entry, then every
    rank passes a barrier (the other ranks are in ``wait_for_entry``, or here after an exact fit),
    and per-rank partial files are dropped."""
    if not active():
        entry.save(tensors, info)
        _remove_partials(entry.directory)  # per-rank files a single process took over too
        return
    ctx = context()
    if ctx.rank == 0:
        entry.save(tensors, info)
        _remove_partials(entry.directory)  # every world size's (a shared cache directory)
    dist.barrier()
    _remove_partials(entry.directory, ctx.rank, ctx.world_size)  # a node-local directory too


def wait_for_entry(entry) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Ranks > 0: wait until rank 0 has written the entry (barrier), then read it."""
    ctx = context()
    dist.barrier()
    _remove_partials(entry.directory, ctx.rank, ctx.world_size)
    return entry.load()
