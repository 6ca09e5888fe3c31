"""MAML, ProtoNet and proximal MAML as pure functions of a parameter dict (TLXML A.1; METHODS §1).

One definition of each learner's maths serves training, evaluation and influence: MAML's and
ProtoNet's functions compose with ``torch.func`` (grad, vjp, jvp, vmap), so the Jacobians of
query logits through the adaptation (TLXML Eq. 7, 10–11) come from the same code that trains.

Proximal MAML's adaptation is an iterative solve whose derivative comes from the implicit
function theorem (METHODS §6), wrapped in a ``torch.autograd.Function``: plain autograd
(``loss.backward()``) and ``torch.func.grad`` see the implicit meta-gradient; ``vmap`` does not
compose with its data-dependent stopping, so its batched metrics loop over tasks.

``with_composite_batch_norm`` gives the copy of a network that second derivatives run on (the fused
batch-norm double backward of the installed torch is wrong); influence code uses it too.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vjp, vmap

from metainf_core.config import Algorithm, TrainConfig

Params = dict[str, Tensor]
# (params, support_x, support_y, query_x) -> query logits  (ways*queries x ways)
LogitsFunction = Callable[[Params, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LearnerSpec:
    """What defines the adaptation A(S, ω): the algorithm, MAML's inner loop (TLXML A.1) and
    proximal MAML's inner and implicit solves (``prox_*``, ``cg_*``; see ``TrainConfig``)."""

    algo: str
    ways: int
    inner_lr: float = 0.4
    inner_steps: int = 1
    first_order: bool = False
    # one source for the defaults: TrainConfig's
    prox_lambda: float = TrainConfig.prox_lambda
    prox_lr: float = TrainConfig.prox_lr
    prox_steps: int = TrainConfig.prox_steps
    prox_tol: float = TrainConfig.prox_tol
    cg_steps: int = TrainConfig.cg_steps
    cg_tol: float = TrainConfig.cg_tol
    protonet_embedding: str = TrainConfig.protonet_embedding

    @classmethod
    def from_train_config(cls, cfg: TrainConfig, ways: int) -> LearnerSpec:
        return cls(
            cfg.algo, ways, cfg.inner_lr, cfg.inner_steps, cfg.first_order,
            cfg.prox_lambda, cfg.prox_lr, cfg.prox_steps, cfg.prox_tol, cfg.cg_steps, cfg.cg_tol,
            cfg.protonet_embedding,
        )  # fmt: skip

    def key(self) -> dict[str, Any]:
        """The fields as cache keys use them; fields added after the first cache format enter
        only when they differ from their defaults, so existing cached and shipped results keep their keys."""
        d = dict(self.__dict__)
        if d["protonet_embedding"] == "separate":
            del d["protonet_embedding"]
        return d


_THREAD = threading.local()  # each thread's structural copies of the networks it calls


def _thread_copy(model: nn.Module) -> nn.Module:
    """This thread's copy of ``model``'s modules, sharing its tensors (never written): what
    ``functional_call`` swaps parameters into, so the shared network itself is never touched."""
    copies = getattr(_THREAD, "copies", None)
    if copies is None:
        copies = _THREAD.copies = weakref.WeakKeyDictionary()
    net = copies.get(model)
    if net is None:
        tensors = (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))
        shared = {id(t): t for _, t in tensors}
        net = copies[model] = copy.deepcopy(model, shared)
    return net


def call_network(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` in place of its parameters (``torch.func.functional_call``).

    Thread-safe: ``functional_call`` swaps parameters into a module for the call's duration, so it
    runs on this thread's own copy of the modules (``_thread_copy``; the tensors are shared, so the
    numbers are those of ``model``), and sessions of one server rank concurrently.
    Only the names given are swapped (``tie_weights=False``): a module registered under two
    names (learn2learn's OmniglotCNN holds ``base`` again as ``features.1``) is reached through
    its first name, ``named_parameters()``'s. torch's tied-weights path left transform-wrapped
    tensors inside such a module after nested vmap/jvp calls (torch 2.14; tests/test_import.py).
    """
    return functional_call(_thread_copy(model), params, (x,), tie_weights=False)


def params_of(model: nn.Module) -> Params:
    """The model's trainable tensors as a name -> tensor dict (detached copies)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def create_maml_adapt_function(model: nn.Module, spec: LearnerSpec) -> Callable[[Params, Tensor, Tensor], Params]:
    """θ̂ = A(S, θ0): ``inner_steps`` gradient steps of size α on the support loss (TLXML A.1).

    Second order by default: the inner gradient stays differentiable w.r.t. θ0.
    """

    def support_loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(call_network(model, p, x), y)

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


class CompositeBatchNorm(nn.Module):
    """Batch norm on batch statistics written with elementary ops (same names, same forward).

    The fused ``native_batch_norm`` double backward in the installed torch gives *wrong, asymmetric*
    second derivatives (Hessian of Σ BN(x)³ off by ~10% vs finite differences; tests show it),
    which breaks every meta-Hessian through MAML's inner gradient. Influence code therefore runs
    on a copy of the network with this module in place of each BatchNorm{1,2,3}d.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = bn.eps
        self.weight = bn.weight
        self.bias = bn.bias

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            shape = [1, -1] + [1] * (x.dim() - 2)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def with_composite_batch_norm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with batch-statistics BatchNorm layers made of elementary ops."""
    copy_ = copy.deepcopy(model)
    for parent in list(copy_.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not child.track_running_stats:
                setattr(parent, name, CompositeBatchNorm(child))
    return copy_


class ProximalSolver:
    """Proximal MAML's two solves for one network (METHODS §1, §6), on flat vectors in R^q.

    Inner: θ̂ = argmin_θ F(θ), F(θ) = L(S; θ) + (λ/2)‖θ − ω‖², by gradient descent from θ = ω
    (step ``prox_lr``, halved whenever F would rise; at most ``prox_steps`` steps, stopping once
    ‖∇F(θ)‖ ≤ ``prox_tol``). No graph is kept across steps.
    Implicit: for an outer gradient g = ∇_θ L_out(θ̂), dL_out/dω = (dθ̂/dω)ᵀ g = λ (H_in + λI)⁻¹ g
    with H_in = ∇²_θ L(S; θ̂), by conjugate gradient on Hessian-vector products (reverse over
    reverse, the gradient graph built once per solve) of the composite-batch-norm copy of the
    network (the fused kernel's double backward is wrong in this torch; ``CompositeBatchNorm``).
    """

    def __init__(self, model: nn.Module, spec: LearnerSpec) -> None:
        self.spec = spec
        self.names = tuple(n for n, _ in model.named_parameters())
        self.shapes = tuple(tuple(p.shape) for _, p in model.named_parameters())
        composite = with_composite_batch_norm(model)
        self._grad_value = grad_and_value(self._support_loss_of(model))  # first derivatives: fused BN
        self._grad_composite = grad(self._support_loss_of(composite))  # differentiated again (HVPs)

    def _support_loss_of(self, net: nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        def support_loss(w: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(call_network(net, self.unflatten(w), x), y)

        return support_loss

    def flatten(self, params: Params) -> Tensor:
        """ω as one vector, in the network's parameter order."""
        return torch.cat([params[n].reshape(-1) for n in self.names])

    def unflatten(self, w: Tensor) -> Params:
        sizes = [int(torch.Size(s).numel()) for s in self.shapes]
        return {n: p.view(s) for n, p, s in zip(self.names, torch.split(w, sizes), self.shapes, strict=True)}

    def solve(self, w: Tensor, sx: Tensor, sy: Tensor) -> Tensor:
        """θ̂(ω) (detached), by safeguarded gradient descent on F."""
        lam, lr, spec = self.spec.prox_lambda, self.spec.prox_lr, self.spec
        w = w.detach()
        slack = 8 * torch.finfo(w.dtype).eps

        def objective(theta: Tensor) -> tuple[Tensor, float]:
            g, loss = self._grad_value(theta, sx, sy)
            d = theta - w
            return g + lam * d, float(loss) + 0.5 * lam * float((d * d).sum())

        theta = w.clone()
        g, f = objective(theta)
        for _ in range(spec.prox_steps):
            if float(g.norm()) <= spec.prox_tol:
                break
            cand = theta - lr * g
            g_c, f_c = objective(cand)
            if not f_c <= f + slack * (1.0 + abs(f)):  # a rise (or NaN): the step was too long
                lr *= 0.5
                continue
            theta, g, f = cand, g_c, f_c
        return theta

    def meta_gradient(self, theta: Tensor, sx: Tensor, sy: Tensor, g: Tensor) -> Tensor:
        """λ (H_in(θ̂) + λI)⁻¹ g by conjugate gradient from x = 0.

        Stops when ‖r‖ ≤ ``cg_tol``·‖g‖ or after ``cg_steps``; on non-positive curvature pᵀAp ≤ 0
        (θ̂ not a strict minimum of F) it stops early, using g/λ (H_in dropped) if that happens first.
        """
        lam, spec = self.spec.prox_lambda, self.spec
        _, pullback = vjp(lambda t: self._grad_composite(t, sx, sy), theta.detach())
        g = g.detach()
        x, r = torch.zeros_like(g), g.clone()
        p, rr = r.clone(), float((r * r).sum())
        stop = (spec.cg_tol * float(g.norm())) ** 2
        for k in range(spec.cg_steps):
            if rr <= stop:
                break
            ap = pullback(p)[0] + lam * p
            curvature = float((p * ap).sum())
            if not curvature > 0:
                x = g / lam if k == 0 else x
                break
            step = rr / curvature
            x, r = x + step * p, r - step * ap
            rr_new = float((r * r).sum())
            p, rr = r + (rr_new / rr) * p, rr_new
        return lam * x


class _ProximalAdapt(torch.autograd.Function):
    """θ̂ = ProximalSolver.solve(ω) forward; λ (H_in + λI)⁻¹ ḡ backward (implicit function theorem)."""

    @staticmethod
    def forward(w: Tensor, sx: Tensor, sy: Tensor, solver: ProximalSolver) -> Tensor:  # type: ignore[override]
        return solver.solve(w, sx, sy)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, sx, sy, solver = inputs
        ctx.solver = solver
        ctx.save_for_backward(output, sx, sy)

    @staticmethod
    def backward(ctx: Any, grad_theta: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        theta, sx, sy = ctx.saved_tensors
        return ctx.solver.meta_gradient(theta, sx, sy, grad_theta), None, None, None


def create_proximal_adapt_function(model: nn.Module, spec: LearnerSpec) -> Callable[[Params, Tensor, Tensor], Params]:
    """θ̂ = A(S, ω) = argmin_θ L(S; θ) + (λ/2)‖θ − ω‖² (METHODS §1), differentiable w.r.t. ω by the
    implicit function theorem: dθ̂/dω = λ(H_in + λI)⁻¹ (METHODS §6), never by unrolling."""
    solver = ProximalSolver(model, spec)

    def adapt(params: Params, sx: Tensor, sy: Tensor) -> Params:
        return solver.unflatten(_ProximalAdapt.apply(solver.flatten(params), sx, sy, solver))

    return adapt


def prototype_logits(support_emb: Tensor, support_y: Tensor, query_emb: Tensor, ways: int) -> Tensor:
    """logits_l(x) = −‖f(x) − c_l‖², c_l the mean support embedding of class l (TLXML A.1)."""
    onehot = (support_y.unsqueeze(-1) == torch.arange(ways, device=support_y.device)).to(support_emb.dtype)  # n_s x ways (vmap-safe)
    centroids = (onehot.T @ support_emb) / onehot.sum(0).unsqueeze(1)
    return -((query_emb.unsqueeze(1) - centroids.unsqueeze(0)) ** 2).sum(-1)


def protonet_embeddings(forward: Callable[[Tensor], Tensor], sx: Tensor, qx: Tensor, embedding: str) -> tuple[Tensor, Tensor]:
    """Flattened support and query embeddings. "separate": two network calls, batch-norm statistics
    per set (metainf's training); "joint": one call on support + query (learn2learn's ProtoNet example)."""
    if embedding == "joint":
        emb = forward(torch.cat([sx, qx])).flatten(1)
        return emb[: sx.shape[0]], emb[sx.shape[0] :]
    return forward(sx).flatten(1), forward(qx).flatten(1)


def create_logits_function(model: nn.Module, spec: LearnerSpec) -> LogitsFunction:
    """Query logits after adaptation to the support set, for one task (unbatched tensors)."""
    algo = Algorithm(spec.algo)
    if algo.has_classifier_head:
        adapt = (create_maml_adapt_function if algo is Algorithm.MAML else create_proximal_adapt_function)(model, spec)

        def maml_logits(params: Params, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
            return call_network(model, adapt(params, sx, sy), qx)

        return maml_logits

    def protonet_logits(params: Params, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        s_emb, q_emb = protonet_embeddings(lambda x: call_network(model, params, x), sx, qx, spec.protonet_embedding)
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
    """Per-task query loss and accuracy for a batch of B tasks, vectorised with ``vmap``.

    Proximal MAML loops over the tasks instead: its inner solve stops on a data-dependent test,
    which ``vmap`` cannot batch.
    """
    single = create_logits_function(model, spec)

    def looped(params: Params, sx: Tensor, sy: Tensor, qx: Tensor) -> Tensor:
        return torch.stack([single(params, sx[b], sy[b], qx[b]) for b in range(sx.shape[0])])

    loop = Algorithm(spec.algo) is Algorithm.PROXIMAL_MAML
    logits_fn: LogitsFunction = looped if loop else vmap(single, in_dims=(None, 0, 0, 0))

    def metrics(params: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        logits = logits_fn(params, sx, sy, qx)  # B x n_q x ways
        loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten(), reduction="none").view(qy.shape).mean(1)
        acc = (logits.argmax(-1) == qy).float().mean(1)
        return loss, acc

    return metrics
