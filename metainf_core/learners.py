"""MAML and ProtoNet as pure functions of a parameter dict (TLXML A.1; METHODS §1).

One definition of each learner's maths serves training, evaluation and influence: every
function here composes with ``torch.func`` (grad, vjp, jvp, vmap), so the Jacobians of query
logits through the adaptation (TLXML Eq. 7, 10–11) come from the same code that trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metainf_core.config import Algorithm, TrainConfig

Params = dict[str, Tensor]
# (params, support_x, support_y, query_x) -> query logits  (ways*queries x ways)
LogitsFunction = Callable[[Params, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LearnerSpec:
    """What defines the adaptation A(S, ω): the algorithm and MAML's inner loop (TLXML A.1)."""

    algo: str
    ways: int
    inner_lr: float = 0.4
    inner_steps: int = 1
    first_order: bool = False

    @classmethod
    def from_train_config(cls, cfg: TrainConfig, ways: int) -> LearnerSpec:
        return cls(cfg.algo, ways, cfg.inner_lr, cfg.inner_steps, cfg.first_order)


def params_of(model: nn.Module) -> Params:
    """The model's trainable tensors as a name -> tensor dict (detached copies)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def create_maml_adapt_function(model: nn.Module, spec: LearnerSpec) -> Callable[[Params, Tensor, Tensor], Params]:
    """θ̂ = A(S, θ0): ``inner_steps`` gradient steps of size α on the support loss (TLXML A.1).

    Second order by default: the inner gradient stays differentiable w.r.t. θ0.
    """

    def support_loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    inner_grad = grad(support_loss)

    def adapt(params: Params, sx: Tensor, sy: Tensor) -> Params:
        theta = params
        for _ in range(spec.inner_steps):
            g = inner_grad(theta, sx, sy)
            if spec.first_order:
                g = {k: v.detach() for k, v in g.items()}
            theta = {k: theta[k] - spec.inner_lr * g[k] for k in theta}
        return theta

    return adapt


def prototype_logits(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int) -> Tensor:
    """logits_l(x) = −‖f(x) − c_l‖², c_l the mean support embedding of class l (TLXML A.1)."""
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(support_emb.dtype)  # n_s x ways (vmap-safe)
    centroids = (onehot.T @ support_emb) / onehot.sum(0).unsqueeze(1)
    return -((query_emb.unsqueeze(1) - centroids.unsqueeze(0)) ** 2).sum(-1)


def create_logits_function(model: nn.Module, spec: LearnerSpec) -> LogitsFunction:
    """Query logits after adaptation to the support set, for one task (unbatched tensors)."""
    if Algorithm(spec.algo) is Algorithm.MAML:
        adapt = create_maml_adapt_function(model, spec)

        def maml_logits(params: Params, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
            return functional_call(model, adapt(params, sx, sy), (qx,))

        return maml_logits

    def protonet_logits(params: Params, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        # Support and query pass the encoder separately: batch-norm statistics per set, as in training.
        s_emb = functional_call(model, params, (sx,)).flatten(1)
        q_emb = functional_call(model, params, (qx,)).flatten(1)
        return prototype_logits(s_emb, sy, q_emb, spec.ways)

    return protonet_logits


def create_task_loss_function(model: nn.Module, spec: LearnerSpec) -> Callable[..., Tensor]:
    """L_j(ω) = L(Q_j; A(S_j, ω)), the query cross-entropy of one task (TLXML Eq. 1)."""
    logits_fn = create_logits_function(model, spec)

    def task_loss(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        return F.cross_entropy(logits_fn(params, sx, sy, qx), qy)

    return task_loss


def create_batched_task_metrics_function(
    model: nn.Module, spec: LearnerSpec
) -> Callable[[Params, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Per-task query loss and accuracy for a batch of B tasks, vectorised with ``vmap``."""
    logits_fn = vmap(create_logits_function(model, spec), in_dims=(None, 0, 0, 0))

    def metrics(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        logits = logits_fn(params, sx, sy, qx)  # B x n_q x ways
        loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten(), reduction="none").view(qy.shape).mean(1)
        acc = (logits.argmax(-1) == qy).float().mean(1)
        return loss, acc

    return metrics
