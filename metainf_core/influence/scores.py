"""Influence scores from a factor U (H⁺ ≈ U diag(s) Uᵀ) and the stored r-vectors P = Uᵀ g_j.

TLXML Eq. 12: I_meta(j) = −(1/M) H⁺ g_j = −(1/M) U P_j  (s = +1 on kept positive eigenvalues).
Eq. 9: I_perf(i, j) = g_iᵀ I_meta(j). Product convention (METHODS §2):

    helpfulness(i, j) = −I_perf(i, j) = (1/M) (Uᵀ g_i)·P_j,

positive = up-weighting training task j *lowers* test loss i (sign checked by finite differences
in tests/test_influence_exact.py). Scoring a new target costs one gradient g_i, a q × k mat-vec
and an M × k mat-vec. Groups (TLXML A.3): a group's score is the sum over its member tasks.
Truncation (TLXML A.6, B.3): keep the first k columns (largest eigenvalues), k chosen by the
mean self-rank over (a sample of) training tasks, ties -> smallest k.

Size and direction. With the fitted metric A = (1/M) U_k diag(s_k) U_kᵀ, helpfulness(i, j) = g_iᵀ A g_j
mixes how hard training task j pulls at all with whether it pulls the test task's way. Split it as

    helpfulness(i, j) = ‖g_i‖_A · ‖g_j‖_A · alignment(i, j),   ‖g‖_A = sqrt(gᵀ|A|g),

|A| = (1/M) U_k diag(|s_k|) U_kᵀ (U's columns are orthogonal, so this is A's matrix absolute value;
equal to A when the kept spectrum is positive). alignment is a cosine in the fitted metric, the
normalisation of RelatIF (Barshan et al. 2020: influence over the training point's self-influence
norm), here on both sides; it lies in [−1, 1] always (Cauchy–Schwarz with weights |s_k|), and a
training task's alignment with itself is 1 when every kept s_k > 0.

Large backbones (``projection.py``): a fit with a ``space`` R = Φ S (parameter groups and/or a
CountSketch) stores U (d × r) and P_j = Uᵀ R g_j; every q-vector passed in (test gradients) is
reduced by R first and every q-vector returned (I_meta) is mapped back by Rᵀ, so callers keep
passing and receiving length-q vectors. H⁺ is then the one-sided approximation Rᵀ (R H Rᵀ)⁺ R.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError, TaskNotFoundError
from metainf_core.tasks import TaskSet


@dataclass(frozen=True)
class Ranking:
    """Training-task ids sorted by decreasing helpfulness, with their scores."""

    ids: np.ndarray
    scores: np.ndarray


def truncation_candidates(rank: int, num_positive: int | None = None, small: bool | None = None) -> list[int]:
    """64, 128, … below ``rank`` plus ``rank`` (TLXML A.6); from 4 for small models (B.3), plus
    ``num_positive`` ("all positive") when the factor also carries negative eigenvalues."""
    start = 4 if (small if small is not None else rank <= 256) else 64
    cands = {k for k in (2**i for i in range(2, 40)) if start <= k < rank}
    cands.add(rank)
    if num_positive is not None and 0 < num_positive <= rank:
        cands.add(num_positive)
    return sorted(cands)


@dataclass(frozen=True, eq=False)
class ScoreParts:
    """helpfulness = test_norm · sizes · alignment (elementwise, exact; module docstring).

    ``helpfulness``, ``alignment``: (M,) for one target, (B × M) for B; ``sizes``: (M,) ‖g_j‖_A;
    ``test_norm``: () or (B,) ‖g_i‖_A. alignment is 0 where a norm is 0 (the score is 0 there too).
    """

    helpfulness: Tensor
    alignment: Tensor
    sizes: Tensor
    test_norm: Tensor


@dataclass(frozen=True, eq=False)
class TaskInfluence:
    """Fitted TLXML scores for M training tasks: U (q × r), signs (r), P = Uᵀ g_j (M × r).

    ``truncation`` k selects the first k columns; ``self_ranks`` is the (k, mean self-rank) table
    used to choose it (empty if not computed). ``space``: the reduction R of R^q the factor lives
    in (``projection.InfluenceSpace``; None = all q parameters, U is q × r).
    """

    factor: Tensor
    projections: Tensor
    signs: Tensor
    eigenvalues: Tensor
    truncation: int
    mode: str = "exact"
    num_negative: int = 0
    num_positive: int = -1
    self_ranks: tuple[tuple[int, float], ...] = ()
    space: Any = None  # projection.InfluenceSpace | None

    def __post_init__(self) -> None:
        if not (1 <= self.truncation <= self.num_columns):
            raise ConfigError(f"truncation must be in 1..{self.num_columns}, got {self.truncation}")

    @property
    def num_columns(self) -> int:
        """r, the columns of U available for truncation."""
        return int(self.factor.shape[1])

    @property
    def num_tasks(self) -> int:
        return int(self.projections.shape[0])

    def with_truncation(self, k: int) -> TaskInfluence:
        return replace(self, truncation=int(k))

    def to(self, device: torch.device | str) -> TaskInfluence:
        """A copy whose tensors live on ``device`` (a fit loaded from the cache is on the CPU;
        scores are computed where the run's gradients are)."""
        move = {name: getattr(self, name).to(device) for name in ("factor", "projections", "signs", "eigenvalues")}
        return replace(self, **move)

    @property
    def num_params(self) -> int:
        """q, the length of the gradients taken and of the I_meta vectors returned."""
        return int(self.space.num_params) if self.space is not None else int(self.factor.shape[0])

    def _check_grad(self, g: Tensor) -> Tensor:
        if g.shape[-1] != self.num_params:
            raise ConfigError(f"gradient has {g.shape[-1]} entries, the model has q = {self.num_params}")
        return g.to(self.factor) if self.space is None else self.space.reduce(g.to(self.factor))

    def _check_task(self, j: int) -> int:
        if not 0 <= int(j) < self.num_tasks:
            raise TaskNotFoundError(f"training task {j} is not in 0..{self.num_tasks - 1}")
        return int(j)

    def _coords(self, test_grad: Tensor) -> Tensor:
        """U_kᵀ g (k, or B × k)."""
        return self._check_grad(test_grad) @ self.factor[:, : self.truncation]

    def _scores(self, projected: Tensor) -> Tensor:
        """(1/M) (s ⊙ U_kᵀ g_i)·P_j for all j, from ``projected`` = s ⊙ U_kᵀ g_i."""
        return projected @ self.projections[:, : self.truncation].T / self.num_tasks

    def project(self, test_grad: Tensor) -> Tensor:
        """s ⊙ U_kᵀ g (k): a target's coordinates; ``test_grad`` may be q or B × q."""
        return self._coords(test_grad) * self.signs[: self.truncation]

    def _metric_norm(self, coords: Tensor) -> Tensor:
        """‖g‖_A = sqrt((1/M) Σ_k |s_k| c_k²) from the coordinates c = U_kᵀ g (..., k)."""
        k = self.truncation
        return ((coords[..., :k] ** 2 * self.signs[:k].abs()).sum(-1) / self.num_tasks).sqrt()

    def task_norms(self) -> Tensor:
        """(M,) size of each training task in the fitted metric, ‖g_j‖_A = sqrt(g_jᵀ|A|g_j) with
        A = (1/M) U_k diag(s) U_kᵀ (module docstring), from the stored P_j = U_kᵀ g_j: O(M k)."""
        return self._metric_norm(self.projections)

    def score_parts(self, test_grad: Tensor) -> ScoreParts:
        """Helpfulness of every training task split into the target's size ‖g_i‖_A, each task's
        size ‖g_j‖_A and their alignment (cosine in the fitted metric, RelatIF-style), from one
        projection of ``test_grad`` (q or B × q): no second gradient, O(q k + M k)."""
        coords = self._coords(test_grad)
        scores = self._scores(coords * self.signs[: self.truncation])
        sizes, test_norm = self.task_norms(), self._metric_norm(coords)
        denom = test_norm.unsqueeze(-1) * sizes
        safe = denom.clamp_min(torch.finfo(denom.dtype).tiny)
        alignment = torch.where(denom > 0, scores / safe, torch.zeros_like(scores))
        return ScoreParts(scores, alignment, sizes, test_norm)

    def alignment(self, test_grad: Tensor) -> Tensor:
        """(M,) or (B × M) alignment(i, j) = helpfulness / (‖g_i‖_A ‖g_j‖_A) ∈ [−1, 1]; see ``score_parts``."""
        return self.score_parts(test_grad).alignment

    def i_meta(self, j: int) -> Tensor:
        """I_meta(j) = −(1/M) U_k diag(s) P_j,k ∈ R^q (TLXML Eq. 12)."""
        return self.i_meta_sum([j])

    def i_meta_sum(self, ids: Sequence[int] | np.ndarray) -> Tensor:
        """Σ_{j∈ids} I_meta(j) (a group's influence, TLXML A.3) with one q × k mat-vec."""
        k = self.truncation
        rows = torch.as_tensor([self._check_task(j) for j in np.asarray(ids, dtype=np.int64).reshape(-1)], dtype=torch.long)
        p = self.projections[rows, :k].sum(0) * self.signs[:k]
        out = -(self.factor[:, :k] @ p) / self.num_tasks
        return out if self.space is None else self.space.expand(out)

    def score_direction(self, test_grad: Tensor) -> Tensor:
        """v = (1/M) Rᵀ U_k diag(s_k) U_kᵀ R g_i (q), so helpfulness(i, j) = vᵀ g_j (R = I without a space)."""
        k = self.truncation
        v = self.factor[:, :k] @ (self.signs[:k] * self._coords(test_grad)) / self.num_tasks
        return (v if self.space is None else self.space.expand(v)).to(test_grad)

    def helpfulness(self, test_grad: Tensor) -> Tensor:
        """(M,) or (B × M): helpfulness(i, j) = −I_perf(i, j) = (1/M) g_iᵀ H⁺ g_j for all j."""
        return self._scores(self.project(test_grad))

    def train_score_matrix(self) -> Tensor:
        """M × M: row j scores every training task for training task j as the target (the
        self-rank probes of TLXML 5.1.1), at truncation k and without the common factor 1/M."""
        k = self.truncation
        pk = self.projections[:, :k]
        return (pk * self.signs[:k]) @ pk.T

    def rank(self, test_grad: Tensor, top: int | None = None) -> Ranking:
        """Training tasks by decreasing helpfulness for the target with gradient ``test_grad`` (q)."""
        scores = self.helpfulness(test_grad)
        order = torch.argsort(scores, descending=True, stable=True)[:top]
        return Ranking(order.cpu().numpy(), scores[order].cpu().numpy())

    def group_helpfulness(self, test_grad: Tensor, groups: Mapping[int, Hashable] | Sequence[Hashable]) -> dict[Hashable, float]:
        """Σ_{j∈G} helpfulness(i, j) per group label (TLXML A.3, Eq. 17); ``groups``: task -> label."""
        scores = self.helpfulness(test_grad).cpu().numpy()
        items = groups.items() if isinstance(groups, Mapping) else enumerate(groups)
        return sum_by_group(scores, {self._check_task(j): label for j, label in items})

    def self_rank_table(
        self, candidates: Sequence[int] | None = None, sample: int | None = 256, seed: int = 0
    ) -> list[tuple[int, float]]:
        """(k, mean self-rank) for each candidate truncation: test task := training task j, rank of j
        among all M scores (0 = top; ties with j count in j's favour), averaged over ≤ ``sample`` tasks."""
        cands = list(candidates) if candidates is not None else truncation_candidates(self.num_columns, self.num_positive)
        ids = np.arange(self.num_tasks)
        if sample is not None and sample < self.num_tasks:
            ids = np.sort(np.random.default_rng(seed).choice(self.num_tasks, sample, replace=False))
        idx = torch.as_tensor(ids, device=self.projections.device)
        table = []
        for k in cands:
            if not 1 <= k <= self.num_columns:
                raise ConfigError(f"candidate truncation {k} outside 1..{self.num_columns}")
            pk = self.projections[:, :k] * self.signs[:k]
            s = pk[idx] @ self.projections[:, :k].T  # |sample| × M, same scale for all j
            own = s.gather(1, idx.unsqueeze(1))
            table.append((int(k), float((s > own).sum(1).double().mean())))
        return table

    def select_truncation(self, candidates: Sequence[int] | None = None, sample: int | None = 256, seed: int = 0) -> TaskInfluence:
        """Copy with k = argmin mean self-rank (ties -> smallest k) and the table recorded."""
        table = self.self_rank_table(candidates, sample, seed)
        best = min(table, key=lambda kv: (kv[1], kv[0]))[0]
        return replace(self, truncation=best, self_ranks=tuple(table))


def sum_by_group(scores: np.ndarray, groups: Mapping[int, Hashable]) -> dict[Hashable, float]:
    """Σ of ``scores[j]`` per group label (TLXML A.3), largest first; ``groups``: task -> label."""
    out: dict[Hashable, float] = {}
    for j, label in groups.items():
        out[label] = out.get(label, 0.0) + float(scores[j])
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def superclass_groups(taskset: TaskSet, dataset: FewShotDataset) -> dict[int, str]:
    """Task -> label of its superclass set ("a+b+c", sorted), for group scores (TLXML A.3)."""
    return {j: "+".join(sorted(s)) for j, s in enumerate(taskset.superclass_sets(dataset))}
