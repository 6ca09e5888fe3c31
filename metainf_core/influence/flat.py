"""Flat parameter vectors: the influence maths works on ω ∈ R^q, the learners on a name -> tensor dict.

``ParamLayout`` records the names and shapes once; ``unflatten`` is built from ``split``/``view``
so it composes with ``torch.func`` (grad, jvp, vjp, vmap) and the functions below stay pure.
Second derivatives run on ``learners.with_composite_batch_norm``'s copy of the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metainf_core.config import Algorithm
from metainf_core.learners import LearnerSpec, Params, call_network, create_logits_function, with_composite_batch_norm


# (w, support_x, support_y, query_x) -> query logits (n_q x c)
FlatLogitsFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# (w, support_x, support_y, query_x, query_y) -> scalar query loss L_j(ω)
FlatLossFunction = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a parameter dict, in a fixed order, for flattening to R^q."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_params(cls, params: Params) -> ParamLayout:
        return cls(tuple(params), tuple(tuple(v.shape) for v in params.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def numel(self) -> int:
        """q, the number of meta-parameters."""
        return sum(self.sizes)

    def flatten(self, params: Params) -> Tensor:
        """The dict as one vector of length q (order of ``names``)."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, w: Tensor) -> Params:
        """Views of ``w`` (length q) shaped like the original parameters."""
        parts = torch.split(w, self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}


def _network_for(model: nn.Module, second_order: bool) -> nn.Module:
    """The network to differentiate: composite batch norm when second derivatives are taken.

    First derivatives of the fused kernel are right and about twice as fast on the CPU
    (bench/bench_influence.py), so first-order paths (ProtoNet columns and gradients, MAML's
    query vjps at θ̂) keep it.
    """
    return with_composite_batch_norm(model) if second_order else model


def needs_second_order(spec: LearnerSpec) -> bool:
    """Whether ∂L_j/∂ω differentiates through a gradient (second-order MAML's inner step)."""
    return Algorithm(spec.algo) is Algorithm.MAML and not spec.first_order


def create_flat_logits_function(
    model: nn.Module, spec: LearnerSpec, layout: ParamLayout, *, second_order: bool = True
) -> FlatLogitsFunction:
    """y(ω) = query logits after adaptation, as a function of the flat ω (one task, unbatched).

    ``second_order=False`` is for callers that differentiate the logits once only.
    """
    logits_fn = create_logits_function(_network_for(model, second_order), spec)

    def flat_logits(w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        return logits_fn(layout.unflatten(w), sx, sy, qx)

    return flat_logits


def create_flat_loss_function(
    model: nn.Module, spec: LearnerSpec, layout: ParamLayout, *, second_order: bool = True
) -> FlatLossFunction:
    """L_j(ω) = mean query cross-entropy after adaptation (TLXML Eq. 1), flat ω."""
    logits_fn = create_flat_logits_function(model, spec, layout, second_order=second_order)

    def flat_loss(w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return F.cross_entropy(logits_fn(w, sx, sy, qx), qy)

    return flat_loss


def create_flat_forward_function(
    model: nn.Module, layout: ParamLayout, *, second_order: bool = True
) -> Callable[[Tensor, Tensor], Tensor]:
    """f(θ, x): the bare network (no adaptation), flat θ; MAML's model at adapted weights."""
    model = _network_for(model, second_order)

    def forward(w: Tensor, x: Tensor) -> Tensor:
        return call_network(model, layout.unflatten(w), x)

    return forward


def create_flat_support_loss_function(
    model: nn.Module, layout: ParamLayout, *, second_order: bool = True
) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """L_S(θ) = mean support cross-entropy: MAML's inner objective."""
    forward = create_flat_forward_function(model, layout, second_order=second_order)

    def support_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(forward(w, x), y)

    return support_loss
