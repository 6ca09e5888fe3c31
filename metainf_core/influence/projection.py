"""Curvature for large backbones: a random sketch Φ of R^q and parameter groups (issue 13 item 5).

The Gauss-Newton fit keeps rows of length q (buffer n × q, factor U q × r). For ResNet-12 sized
networks (q ≈ 8–12M) that is tens of GB, so every q-vector can be sent through a *reduction*
R = Φ·S before it meets the curvature:

* **Parameter groups** S (``param_groups``, kronfluence-style module selection): keep only the
  coordinates of the parameters whose dotted names start with one of the given prefixes. The
  other parameters are held fixed at ω̂ as *meta*-parameters (MAML's adaptation still updates
  all of them), so the influence is that of the sub-block: H_SS and g_S = (∇_ω L)_S, and an edit
  changes only the selected parameters. For ProtoNet (and the naive columns) the columns are
  differentiated w.r.t. the selected parameters only, so backprop stops at the first selected
  layer; MAML's structured columns need the full (I − αH_S) factors and are selected afterwards.
* **Random projection** Φ ∈ R^{d×q_S} (``projection_dim`` d > 0), as TRAK (Park et al. 2023,
  "TRAK: Attributing Model Behavior at Scale") and LoGra (Choe et al. 2024, "What is Your Data
  Worth to GPT?"): a CountSketch / sparse JL map. Coordinate i goes to ``nnz`` = s buckets
  b_t(i) ∈ [0, d) with signs σ_t(i) = ±1, Φ[b_t(i), i] += σ_t(i)/√s. Buckets and signs are a
  seeded splitmix64 hash of (seed, t, i), so Φ is never stored densely: int32 buckets and int8
  signs (5 bytes per parameter), regenerated from the seed, O(q) per vector (scatter-add for Φx,
  gather for Φᵀy; Φᵀ is the exact adjoint). E⟨Φx, Φy⟩ = ⟨x, y⟩ (Johnson–Lindenstrauss).

What is approximated. The columns V_j become ΦV_j, so the fit factors the sketched curvature
Φ H Φᵀ (d × d) and U is d × r with U Uᵀ = (Φ H Φᵀ)⁺. Scores use the *one-sided approximate
inverse* H⁺ ≈ Φᵀ (Φ H Φᵀ)⁺ Φ:

    helpfulness(i, j) = (1/M) (Φ g_i)ᵀ (Φ H Φᵀ)⁺ (Φ g_j),     I_meta(j) = −(1/M) Φᵀ (Φ H Φᵀ)⁺ Φ g_j,

exact when Φ is orthogonal on a space that contains the column space of H and the gradients
(e.g. an injective signed permutation, d ≥ q), a TRAK-style approximation otherwise: directions
of H that Φ merges are averaged, and I_meta lives in the row space of Φ (d dimensions of R^q).
With parameter groups Φ acts on R^{q_S} and I_meta is zero outside the selected parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import ParamLayout
from metainf_core.learners import Params

_BLOCK = 1 << 18  # coordinates per scatter/gather block: bounds the temporaries at 2^18 × rows
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64 arithmetic wraps mod 2^64): a platform-independent hash."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def sketch_hash(q: int, dim: int, seed: int, nnz: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Buckets (nnz × q, int32 in [0, dim)) and signs (nnz × q, int8 ±1) of hash (seed, t, i)."""
    buckets = np.empty((nnz, q), dtype=np.int32)
    signs = np.empty((nnz, q), dtype=np.int8)
    with np.errstate(over="ignore"):
        base = _splitmix64(np.uint64(seed) * np.uint64(0xD1B54A32D192ED03) + np.uint64(0x632BE59BD9B4E019))
        for t in range(nnz):
            salt = _splitmix64(base + np.uint64(t) * _GOLDEN)
            for i in range(0, q, 1 << 22):
                h = _splitmix64(np.arange(i, min(q, i + (1 << 22)), dtype=np.uint64) ^ salt)
                buckets[t, i : i + len(h)] = (h % np.uint64(dim)).astype(np.int32)
                signs[t, i : i + len(h)] = np.where((h >> np.uint64(63)) == 1, -1, 1).astype(np.int8)
    return buckets, signs


class CountSketch:
    """Φ ∈ R^{d×q} with ``nnz`` signed entries ±1/√nnz per column (sparse JL; module docstring).

    ``buckets``/``signs`` may be given (nnz × q) to build a particular Φ, e.g. an injective
    signed permutation (then ΦᵀΦ = I). ``apply`` is Φx over the last axis, ``adjoint`` Φᵀy.
    """

    def __init__(
        self, num_params: int, dim: int, seed: int = 0, nnz: int = 1,
        buckets: np.ndarray | Tensor | None = None, signs: np.ndarray | Tensor | None = None,
    ) -> None:  # fmt: skip
        if dim < 1 or nnz < 1 or num_params < 1:
            raise ConfigError(f"sketch needs positive q, d and nnz, got q={num_params}, d={dim}, nnz={nnz}")
        if buckets is None or signs is None:
            buckets, signs = sketch_hash(num_params, dim, seed, nnz)
        self.buckets = torch.as_tensor(np.asarray(buckets, dtype=np.int32)).reshape(-1, num_params)
        self.signs = torch.as_tensor(np.asarray(signs, dtype=np.int8)).reshape(-1, num_params)
        if self.buckets.shape != self.signs.shape or int(self.buckets.min()) < 0 or int(self.buckets.max()) >= dim:
            raise ConfigError("sketch buckets must lie in [0, d) and match the signs' shape")
        self.num_params, self.dim, self.seed = int(num_params), int(dim), int(seed)
        self.nnz = int(self.buckets.shape[0])
        self.scale = 1.0 / self.nnz**0.5

    def apply(self, x: Tensor) -> Tensor:
        """Φx for x (..., q) → (..., d): scatter-add of the signed coordinates, block by block."""
        if x.shape[-1] != self.num_params:
            raise ConfigError(f"sketch input has {x.shape[-1]} entries, expected q = {self.num_params}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.num_params)
        out = flat.new_zeros(flat.shape[0], self.dim)
        for t in range(self.nnz):
            for i in range(0, self.num_params, _BLOCK):
                idx = self.buckets[t, i : i + _BLOCK].to(device=x.device, dtype=torch.long)
                sgn = self.signs[t, i : i + _BLOCK].to(device=x.device, dtype=x.dtype)
                out.index_add_(1, idx, flat[:, i : i + _BLOCK] * sgn)
        return (out * self.scale if self.nnz > 1 else out).reshape(*lead, self.dim)

    def adjoint(self, y: Tensor) -> Tensor:
        """Φᵀy for y (..., d) → (..., q): a signed gather (the exact adjoint of ``apply``)."""
        if y.shape[-1] != self.dim:
            raise ConfigError(f"sketch adjoint input has {y.shape[-1]} entries, expected d = {self.dim}")
        out = None
        for t in range(self.nnz):
            idx = self.buckets[t].to(device=y.device, dtype=torch.long)
            part = y.index_select(-1, idx) * self.signs[t].to(device=y.device, dtype=y.dtype)
            out = part if out is None else out + part
        return out * self.scale if self.nnz > 1 else out


@dataclass(frozen=True, eq=False)
class PartialLayout(ParamLayout):
    """A ParamLayout of the selected parameters only; ``unflatten`` fills in the others, fixed
    (detached) at ``fixed``'s values, in the original order ``order`` (the learners see every
    parameter; only the selected ones depend on the flat vector)."""

    fixed: Mapping[str, Tensor] = field(default_factory=dict)
    order: tuple[str, ...] = ()

    def unflatten(self, w: Tensor) -> Params:
        sel = super().unflatten(w)
        return {n: sel[n] if n in sel else self.fixed[n] for n in self.order}


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def select_names(names: Sequence[str], groups: Sequence[str]) -> tuple[str, ...]:
    """Names (in ``names``' order) under any of the dotted prefixes ``groups``; ConfigError naming
    the available top-level modules when a prefix matches nothing."""
    tops = sorted(dict.fromkeys(n.split(".")[0] for n in names))
    for g in groups:
        if not any(_matches(n, g) for n in names):
            raise ConfigError(
                f"param group {g!r} matches no parameter; top-level modules: {', '.join(tops)} "
                f"(a group is a dotted name prefix, e.g. {names[-1].rsplit('.', 1)[0]!r})"
            )
    return tuple(n for n in names if any(_matches(n, g) for g in groups))


@dataclass(frozen=True, eq=False)
class InfluenceSpace:
    """The reduction R = Φ S of R^q on which a fit's curvature lives (module docstring).

    ``ranges``: the selected flat coordinates [start, stop) of ω (merged, in order); ``sketch``:
    Φ on the selected coordinates, or None (then R = S). ``reduce`` = R x, ``expand`` = Rᵀ y.
    """

    num_params: int
    ranges: tuple[tuple[int, int], ...]
    groups: tuple[str, ...] = ()
    sketch: CountSketch | None = None

    @property
    def selected_numel(self) -> int:
        return sum(b - a for a, b in self.ranges)

    @property
    def dim(self) -> int:
        """Length of a reduced vector: d with a sketch, else the number of selected parameters."""
        return self.sketch.dim if self.sketch is not None else self.selected_numel

    @property
    def selects_all(self) -> bool:
        return self.ranges == ((0, self.num_params),)

    @classmethod
    def build(
        cls, layout: ParamLayout, groups: Sequence[str] = (), projection_dim: int = 0, seed: int = 0, nnz: int = 1
    ) -> InfluenceSpace | None:
        """The space for these settings, or None when there is nothing to reduce (all parameters,
        no projection: callers then keep the plain q-space code paths)."""
        groups = tuple(groups)
        if not groups and not projection_dim:
            return None
        names = select_names(layout.names, groups) if groups else layout.names
        ranges: list[list[int]] = []
        start = 0
        for n, size in zip(layout.names, layout.sizes, strict=True):
            if n in names and size:
                if ranges and ranges[-1][1] == start:
                    ranges[-1][1] = start + size
                else:
                    ranges.append([start, start + size])
            start += size
        space = cls(layout.numel, tuple((a, b) for a, b in ranges), groups)
        sketch = CountSketch(space.selected_numel, projection_dim, seed, nnz) if projection_dim else None
        return cls(space.num_params, space.ranges, groups, sketch)

    def with_sketch(self, sketch: CountSketch | None) -> InfluenceSpace:
        """The same selection with another Φ (e.g. a hand-built one in tests)."""
        if sketch is not None and sketch.num_params != self.selected_numel:
            raise ConfigError(f"sketch is for q = {sketch.num_params}, the selection has {self.selected_numel}")
        return InfluenceSpace(self.num_params, self.ranges, self.groups, sketch)

    def partial_layout(self, params: Params) -> PartialLayout:
        """Layout of the selected parameters, the others fixed at ``params`` (detached)."""
        layout = ParamLayout.from_params(params)
        names = select_names(layout.names, self.groups) if self.groups else layout.names
        return PartialLayout(
            names, tuple(tuple(params[n].shape) for n in names),
            fixed={n: v.detach() for n, v in params.items() if n not in names}, order=tuple(params),
        )  # fmt: skip

    def select(self, x: Tensor) -> Tensor:
        """S x: the selected coordinates of x (..., q) → (..., q_S)."""
        if x.shape[-1] != self.num_params:
            raise ConfigError(f"vector has {x.shape[-1]} entries, the model has q = {self.num_params}")
        if self.selects_all:
            return x
        return torch.cat([x[..., a:b] for a, b in self.ranges], -1)

    def reduce_selected(self, x: Tensor) -> Tensor:
        """Φ x for x already restricted to the selected coordinates (..., q_S) → (..., dim)."""
        return self.sketch.apply(x) if self.sketch is not None else x

    def reduce(self, x: Tensor) -> Tensor:
        """R x = Φ S x: (..., q) → (..., dim)."""
        return self.reduce_selected(self.select(x))

    def expand(self, y: Tensor) -> Tensor:
        """Rᵀ y = Sᵀ Φᵀ y: (..., dim) → (..., q), zero outside the selected parameters."""
        sel = self.sketch.adjoint(y) if self.sketch is not None else y
        if self.selects_all:
            return sel
        out = sel.new_zeros(*sel.shape[:-1], self.num_params)
        at = 0
        for a, b in self.ranges:
            out[..., a:b] = sel[..., at : at + b - a]
            at += b - a
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON description from which ``from_dict`` rebuilds the same space (Φ from its seed)."""
        d: dict[str, Any] = {"num_params": self.num_params, "ranges": [list(r) for r in self.ranges], "groups": list(self.groups)}
        if self.sketch is not None:
            d["sketch"] = {"dim": self.sketch.dim, "seed": self.sketch.seed, "nnz": self.sketch.nnz}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InfluenceSpace:
        space = cls(int(d["num_params"]), tuple((int(a), int(b)) for a, b in d["ranges"]), tuple(d.get("groups", ())))
        sk = d.get("sketch")
        if sk:
            space = space.with_sketch(CountSketch(space.selected_numel, int(sk["dim"]), int(sk["seed"]), int(sk["nnz"])))
        return space
