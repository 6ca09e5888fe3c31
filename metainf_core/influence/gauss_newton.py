"""Gauss-Newton TLXML for real models: streamed orthogonal columns (TLXML 4.2, A.6, Algorithms 1–3).

H ≈ (1/M) V Vᵀ with V = [V_1 … V_M], V_j the task's columns (``columns.py``; scaled so that
(1/M) V Vᵀ is the Gauss-Newton matrix of L = (1/M) Σ_j L_j). V is never stored whole and no q × q
matrix is formed: columns are buffered and, when the buffer holds more than N_max = 2·N_orth,
replaced by their N_orth leading orthogonal columns (Algorithm 2: VᵀV = OΛOᵀ, keep V·O[:, top]).
Proposition 4: exact whenever N_orth ≥ rank V. Algorithm 3: U = V⁺ with columns √M·v/‖v‖²
(v sorted by norm, so truncation k = first k), H⁺ = U Uᵀ.

Damping λ_d here acts inside the column space only: column i becomes v̂_i/√(‖v_i‖²/M + λ_d)
(the exact (H + λ_d I)⁻¹ would add (1/λ_d)(I − P) on the flat directions, which the projected
influence of TLXML Eq. 12 drops anyway).

Buffer storage is row-major: the buffer holds Vᵀ (n × q) as a list of blocks.

Large backbones (``projection.py``): with ``param_groups`` and/or ``projection_dim`` every row is
reduced to R v = Φ S v (selected parameters, CountSketch to d) chunk by chunk as the columns are
computed, so the buffer is n × d and U is d × r with U Uᵀ = (R H Rᵀ)⁺ — the one-sided
approximate inverse H⁺ ≈ Rᵀ (R H Rᵀ)⁺ R of TRAK (Park et al. 2023) / LoGra (Choe et al. 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from metainf_core.config import Algorithm, InfluenceConfig
from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError, MetainfError
from metainf_core.influence.columns import create_columns_function, require_tlxml_support, task_key
from metainf_core.influence.exact import CurvatureFactor
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.gradients import iter_task_batches
from metainf_core.influence.projection import InfluenceSpace
from metainf_core.learners import LearnerSpec, Params
from metainf_core.tasks import TaskSet

ProgressCallback = Callable[[int, int], None]  # (tasks done, total)
STATE_FORMAT = 1


def auto_chunk(q: int) -> int | None:
    """Rows per vmapped column call on the CPU: all at once for small networks (the 63- and
    ~1.4k-parameter MLPs: 4× faster than a loop), 8 for conv nets (q ≈ 7k: 1.2–2× faster than a
    loop, while larger chunks become memory-bound). Measured 2026-11-27 on 2 cores."""
    return None if q <= 4096 else 8


@dataclass(frozen=True)
class GaussNewtonConfig:
    """Settings of the streamed Gauss-Newton fit (TLXML A.6: N_orth = 8,192, N_max = 2·N_orth)."""

    n_orth: int = 512
    n_max: int = 0  # 0 -> 2 * n_orth
    task_batch: int = 8
    structured: bool = True
    chunk: int = -1  # rows per vmapped call; 1 = plain loop, 0 = all at once, -1 = auto_chunk(q)
    hvp: str = "reverse"
    gram_block: int = 8192
    projection_dim: int = 0  # d of the CountSketch Φ (0: none; projection.py)
    projection_seed: int = 0
    param_groups: tuple[str, ...] = ()  # dotted parameter-name prefixes (empty: all parameters)
    rows_per_task: int = 0  # s > 0: s random combinations of each task's columns (columns.sample_cotangents)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_groups", tuple(self.param_groups))
        if self.projection_dim < 0 or self.projection_seed < 0 or self.rows_per_task < 0:
            raise ConfigError("projection_dim, projection_seed and rows_per_task must be non-negative")
        if self.n_orth < 1 or self.task_batch < 1 or self.gram_block < 1 or self.chunk < -1:
            raise ConfigError("n_orth, task_batch and gram_block must be positive, chunk -1 (auto) or non-negative")
        if self.n_max and self.n_max < self.n_orth:
            raise ConfigError(f"n_max ({self.n_max}) must be at least n_orth ({self.n_orth})")
        if self.hvp not in ("forward", "reverse"):
            raise ConfigError(f"hvp must be 'forward' or 'reverse', got {self.hvp!r}")

    @property
    def buffer_limit(self) -> int:
        return self.n_max or 2 * self.n_orth

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_influence_config(cls, cfg: InfluenceConfig) -> GaussNewtonConfig:
        """The streamed fit's settings of an ``InfluenceConfig`` (large-backbone options included):
        the one mapping from the user's settings to Algorithm 1's."""
        return cls(
            n_orth=cfg.n_orth, task_batch=cfg.task_batch, projection_dim=cfg.projection_dim,
            projection_seed=cfg.projection_seed, param_groups=cfg.param_groups, rows_per_task=cfg.rows_per_task,
        )  # fmt: skip


def gram(rows: Tensor, block: int = 8192) -> Tensor:
    """R Rᵀ in float64, accumulated over blocks of the q columns (R is n × q)."""
    g = torch.zeros(rows.shape[0], rows.shape[0], dtype=torch.float64, device=rows.device)
    for i in range(0, rows.shape[1], block):
        part = rows[:, i : i + block].to(torch.float64)
        g += part @ part.T
    return g


def orthogonal_columns(rows: Tensor, n_orth: int, block: int = 8192) -> Tensor:
    """Algorithm 2 on Vᵀ = ``rows`` (n × q): the ≤ n_orth leading orthogonal columns, as rows, by norm."""
    lam, o = torch.linalg.eigh(gram(rows, block))
    top = torch.argsort(lam, descending=True)[: min(n_orth, rows.shape[0])]
    return o[:, top].T.to(rows.dtype) @ rows


def pseudo_inverse_factor(rows: Tensor, num_tasks: int, damping: float = 0.0, rtol: float | None = None) -> CurvatureFactor:
    """Algorithm 3: U (q × r) with U Uᵀ = ((1/M) V Vᵀ)⁺ from orthogonal ``rows`` (Vᵀ, n × q).

    Columns with ‖v‖² ≤ rtol·max‖v‖² count as zero (default rtol = n·eps of the dtype).
    """
    norms2 = (rows.to(torch.float64) ** 2).sum(1)
    order = torch.argsort(norms2, descending=True)
    norms2 = norms2[order]
    tol = (rtol if rtol is not None else max(rows.shape) * torch.finfo(rows.dtype).eps) * norms2[:1].clamp_min(1e-300)
    keep = norms2 > tol
    norms2 = norms2[keep]
    eig = norms2 / num_tasks
    unit = rows[order[keep]].to(torch.float64) / norms2.sqrt().unsqueeze(1)
    u = (unit / (eig + damping).sqrt().unsqueeze(1)).T.to(rows.dtype)
    return CurvatureFactor(factor=u, eigenvalues=(eig + damping).to(rows.dtype), num_zero=int((~keep).sum()))


class GaussNewtonFit:
    """Resumable Algorithm 1 over a training taskset: ``add_tasks`` streams, ``factor`` finishes.

    State (``state_dict``) is the row buffer, the mask of tasks already added and counters;
    ``from_state_dict`` resumes with the same model/params/taskset.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: LearnerSpec,
        params: Params,
        taskset: TaskSet,
        dataset: FewShotDataset,
        config: GaussNewtonConfig | None = None,
        space: InfluenceSpace | None = None,
    ) -> None:
        """``space`` overrides the reduction built from the config's ``param_groups`` /
        ``projection_dim`` (e.g. a hand-built sketch; such a fit is not resumable from its state)."""
        require_tlxml_support(spec)
        self.config = config or GaussNewtonConfig()
        self.layout = ParamLayout.from_params(params)
        self.w = self.layout.flatten(params).detach()
        self.taskset, self.dataset = taskset, dataset
        cfg = self.config
        self.space = space or InfluenceSpace.build(self.layout, cfg.param_groups, cfg.projection_dim, cfg.projection_seed)
        layout, self._w_cols, transform = self.layout, self.w, None
        if self.space is not None:
            structured_maml = cfg.structured and Algorithm(spec.algo) is Algorithm.MAML
            if structured_maml or self.space.selects_all:  # rows in R^q, then select and sketch per chunk
                transform = self.space.reduce
            else:  # differentiate w.r.t. the selected parameters only, then sketch per chunk
                layout = self.space.partial_layout(params)
                self._w_cols = layout.flatten(params).detach()
                transform = self.space.reduce_selected if self.space.sketch is not None else None
        chunk = auto_chunk(layout.numel) if cfg.chunk == -1 else (cfg.chunk or None)
        self._columns = create_columns_function(
            model, spec, layout, structured=cfg.structured, chunk=chunk, hvp=cfg.hvp, transform=transform,
            rows_per_task=cfg.rows_per_task,
        )  # fmt: skip
        self._blocks: list[Tensor] = []
        self.done = np.zeros(len(taskset), dtype=bool)
        self.num_reductions = 0

    @property
    def row_dim(self) -> int:
        """Length of a buffered row: q, or the reduced dimension of ``space``."""
        return self.space.dim if self.space is not None else self.w.numel()

    @property
    def tasks_done(self) -> int:
        return int(self.done.sum())

    @property
    def num_buffered(self) -> int:
        return sum(b.shape[0] for b in self._blocks)

    def _rows(self) -> Tensor:
        if not self._blocks:
            return self.w.new_zeros(0, self.row_dim)
        if len(self._blocks) > 1:
            self._blocks = [torch.cat(self._blocks)]
        return self._blocks[0]

    def _reduce(self) -> None:
        self._blocks = [orthogonal_columns(self._rows(), self.config.n_orth, self.config.gram_block)]
        self.num_reductions += 1

    def add_tasks(self, ids: Sequence[int] | np.ndarray, callback: ProgressCallback | None = None) -> None:
        """Stream the columns of tasks ``ids`` (ids already added are skipped) into the buffer."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        for j in ids:
            self.taskset.check_id(int(j))
        todo = np.array([j for j in dict.fromkeys(ids.tolist()) if not self.done[j]], dtype=np.int64)
        total = self.tasks_done + len(todo)
        for chunk, b in iter_task_batches(self.taskset, self.dataset, todo, self.config.task_batch, self.w.dtype, self.w.device):
            for k, j in enumerate(chunk):
                key = task_key(self.config.projection_seed, int(j))
                self._blocks.append(self._columns(self._w_cols, b.support_x[k], b.support_y[k], b.query_x[k], key).detach())
                self.done[j] = True
                if self.num_buffered > self.config.buffer_limit:
                    self._reduce()
            if callback is not None:
                callback(self.tasks_done, total)

    def absorb(self, other: GaussNewtonFit) -> None:
        """Add the buffer of ``other``, a fit of the same settings over disjoint tasks: its rows are
        stacked onto this buffer (V Vᵀ adds up) and reduced by Algorithm 2 when over N_max —
        exact when N_orth ≥ rank (Prop. 3–4). How a resumed fit takes over other processes' work.
        The rows go in as slices that fill the buffer up to N_max, as streamed tasks do, so that no
        reduction sees more than N_max rows: two full buffers at once (2·N_max rows) would need about
        twice the memory (at N_orth = 8,192 and q = 28,320, > 24 GB: killed by the kernel, 2026-12-07)."""
        if other.config != self.config or other.row_dim != self.row_dim or len(other.done) != len(self.done):
            raise ConfigError("cannot absorb a Gauss-Newton fit of other settings, dimensions or taskset")
        if (self.done & other.done).any():
            raise MetainfError(f"the two fits share {int((self.done & other.done).sum())} tasks: each task may count once")
        rows, start = other._rows(), 0
        while start < rows.shape[0]:
            room = self.config.buffer_limit - self.num_buffered
            if room <= 0:
                self._reduce()
                continue
            self._blocks.append(rows[start : start + room].to(dtype=self.w.dtype, device=self.w.device))
            start += room
        self.done |= other.done
        self.num_reductions += other.num_reductions
        if self.num_buffered > self.config.buffer_limit:
            self._reduce()

    def orthogonal_rows(self) -> Tensor:
        """Final Algorithm 1 line 21 (without mutating the buffer): ≤ N_orth orthogonal rows."""
        return orthogonal_columns(self._rows(), self.config.n_orth, self.config.gram_block)

    def factor(self, damping: float = 0.0, rtol: float | None = None) -> CurvatureFactor:
        """U with U Uᵀ = H_GN⁺ over the tasks added so far (Algorithm 3)."""
        if self.tasks_done == 0:
            raise MetainfError("no tasks added yet: call add_tasks first")
        return pseudo_inverse_factor(self.orthogonal_rows(), self.tasks_done, damping, rtol)

    # ---- resumable state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors (buffer rows, done mask) plus JSON-able ints and the config."""
        return {
            "rows": self._rows().clone(),
            "done": torch.from_numpy(self.done.copy()),
            "num_reductions": self.num_reductions,
            "num_params": self.w.numel(),
            "num_tasks": len(self.taskset),
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        model: nn.Module,
        spec: LearnerSpec,
        params: Params,
        taskset: TaskSet,
        dataset: FewShotDataset,
    ) -> GaussNewtonFit:
        """Resume a fit saved by ``state_dict`` (raises ConfigError on a shape/config mismatch)."""
        if int(state.get("format", -1)) != STATE_FORMAT:
            raise ConfigError(f"unknown Gauss-Newton state format {state.get('format')!r}")
        fit = cls(model, spec, params, taskset, dataset, GaussNewtonConfig(**state["config"]))
        rows, done = state["rows"], state["done"]
        if int(state["num_params"]) != fit.w.numel() or rows.shape[-1] != fit.row_dim:
            raise ConfigError(f"saved state has q = {state['num_params']}, the model has q = {fit.w.numel()}")
        if int(state["num_tasks"]) != len(taskset) or done.numel() != len(taskset):
            raise ConfigError(f"saved state covers {state['num_tasks']} tasks, the taskset has {len(taskset)}")
        fit._blocks = [rows.to(dtype=fit.w.dtype, device=fit.w.device)] if rows.shape[0] else []
        fit.done = done.cpu().numpy().astype(bool).copy()
        fit.num_reductions = int(state["num_reductions"])
        return fit
