"""One-step block/enhance edits of the meta-parameters (TLXML Eq. 13, Tables 3–4, 15).

δω = ξ_B Σ_{j∈B} I_meta(j) + ξ_E Σ_{j∈E} I_meta(j),  ω' = ω̂ + δω.
ξ = −1 approximates removing the tasks (ω̂ − I_meta ≈ ω̂₋ⱼ, since ε = −1 cancels task j's
1/M share of the meta-objective); ξ < −1 blocks harder; ξ > 0 enhances.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from metainf_core.exceptions import ConfigError
from metainf_core.learners import Params

# ids -> Σ_{j∈ids} I_meta(j), a flat vector of length q
IMetaSum = Callable[[np.ndarray], Tensor]


def _ids(values: Sequence[int] | np.ndarray) -> tuple[int, ...]:
    out = tuple(int(v) for v in np.asarray(values, dtype=np.int64).reshape(-1))
    if any(v < 0 for v in out):
        raise ConfigError("task ids must be non-negative")
    return out


@dataclass(frozen=True)
class EditSpec:
    """Blocked set B with shift ξ_B and enhanced set E with shift ξ_E (Eq. 13)."""

    block: tuple[int, ...] = field(default=())
    xi_block: float = -1.0
    enhance: tuple[int, ...] = field(default=())
    xi_enhance: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", _ids(self.block))
        object.__setattr__(self, "enhance", _ids(self.enhance))
        for name in ("xi_block", "xi_enhance"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        both = set(self.block) & set(self.enhance)
        if both:
            raise ConfigError(f"tasks {sorted(both)[:5]} are both blocked and enhanced")


def edit_delta(i_meta_sum: IMetaSum, spec: EditSpec) -> Tensor:
    """δω of Eq. 13 from the group sums of I_meta (TLXML A.3: a group's influence is the sum)."""
    parts = []
    if spec.block:
        parts.append(spec.xi_block * i_meta_sum(np.asarray(spec.block)))
    if spec.enhance:
        parts.append(spec.xi_enhance * i_meta_sum(np.asarray(spec.enhance)))
    if not parts:
        raise ConfigError("an edit needs at least one blocked or enhanced task")
    return torch.stack(parts).sum(0)


def apply_delta(params: Params, delta: Tensor | np.ndarray) -> Params:
    """ω' = ω̂ + δω, with δω flat in the order of ``params`` (as ``influence.flat.ParamLayout``);
    a NumPy δω is taken too (pages hold arrays, not tensors)."""
    delta = torch.as_tensor(delta)
    sizes = [v.numel() for v in params.values()]
    if sum(sizes) != delta.numel():
        raise ConfigError(f"edit has {delta.numel()} entries, the model {sum(sizes)} parameters")
    parts = torch.split(delta.to(next(iter(params.values()))), sizes)  # the weights' dtype and device
    return {k: v.detach() + d.view_as(v) for (k, v), d in zip(params.items(), parts, strict=True)}
