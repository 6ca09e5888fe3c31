"""Per-task Gauss-Newton columns V_j (TLXML Eq. 10–11, 22; Algorithm 1 lines 10–14).

For one task with query logits y_n ∈ R^c (n = 1..n_q) the Gauss-Newton block of its loss
L_j = (1/n_q) Σ_n CE(y_n, t_n) is (1/n_q) Σ_n J_nᵀ A_n J_n with A_n = diag σ_n − σ_n σ_nᵀ and
J_n = ∂y_n/∂ω *through the adaptation*. We factor A_n = B_n B_nᵀ with

    B_n = diag(√σ_n) − σ_n √σ_nᵀ,   column k:  √σ_nk (e_k − σ_n) = √σ_nk ∂ log σ_nk / ∂y_n,

which needs no eigendecomposition (the paper's symmetric square root A_n^{1/2} gives the same
V Vᵀ: A^{1/2} = B R for an orthogonal R). The task's columns are v_(n,k) = J_nᵀ B_n e_k / √n_q,
n_q·c of them, returned as the rows of an (n_q·c) × q matrix.

MAML (structured): with θ_0 = ω, θ_{t+1} = θ_t − α ∇L_S(θ_t) and y = f(θ_K, x_q),

    J_nᵀ u = (I − αH_S(θ_0)) ⋯ (I − αH_S(θ_{K−1})) (∂f/∂θ_K)ᵀ u,

so all first-order vjps at θ̂ = θ_K are taken in one vmapped backward, then each factor is applied
to all columns at once by vmapped forward-over-reverse Hessian-vector products (jvp of grad).
ProtoNet: the columns are plain vjps of the logits function (the prototypes depend on ω).
The naive reference (vmap over vjp of the full logits function, double backward) is kept for tests
and benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import grad, jvp, vjp, vmap

from metainf_core.config import Algorithm
from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import (
    ParamLayout,
    create_flat_forward_function,
    create_flat_logits_function,
    create_flat_support_loss_function,
    needs_second_order,
)
from metainf_core.learners import LearnerSpec

# (w, support_x, support_y, query_x) -> (n_q·c) × q matrix whose rows are the task's GN columns
ColumnsFunction = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
# a linear map applied to blocks of rows right after they are computed (e.g. the sketch Φ·S of
# ``projection.InfluenceSpace``): then the columns function returns (n_q·c) × d rows
RowTransform = Callable[[Tensor], Tensor]


def require_tlxml_support(spec: LearnerSpec) -> None:
    """TLXML's fits differentiate through explicit adaptation steps; proximal MAML's is implicit."""
    if Algorithm(spec.algo) is Algorithm.PROXIMAL_MAML:
        raise ConfigError("TLXML influence is not supported for proximal-maml yet; use task-IF (METHODS §6)")


def fisher_factor(logits: Tensor, reduced: bool = True) -> Tensor:
    """F_n with F_n F_nᵀ = diag σ_n − σ_n σ_nᵀ: n_q × c × c (or c−1 columns when ``reduced``).

    F_n = B_n = diag(√σ_n) − σ_n √σ_nᵀ; since B_n √σ_n = 0, ``reduced`` keeps B_n Q_n with Q_n an
    orthonormal basis of √σ_n^⊥ (a Householder reflection), c−1 columns with the same product.
    """
    sigma = torch.softmax(logits, dim=-1)
    root = sigma.sqrt()
    eye_c = torch.eye(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    b = torch.diag_embed(root) - sigma.unsqueeze(-1) * root.unsqueeze(-2)
    if not reduced:
        return b
    v = root + eye_c[0]  # Householder vector mapping √σ to −e_0 (√σ_0 > 0, so no cancellation)
    house = eye_c - 2.0 * v.unsqueeze(-1) * v.unsqueeze(-2) / (v * v).sum(-1, keepdim=True).unsqueeze(-1)
    return b @ house[..., 1:]


def fisher_cotangents(logits: Tensor, reduced: bool = True) -> Tensor:
    """Cotangents F_n e_k placed at query n: (n_q·r) × n_q × c, r = c−1 (reduced) or c.

    Σ over rows ρ of Jᵀ ρ ρᵀ J = Σ_n J_nᵀ (diag σ_n − σ_n σ_nᵀ) J_n (checked in the tests).
    """
    n = logits.shape[0]
    f = fisher_factor(logits, reduced).transpose(-1, -2)  # n × r × c
    eye_n = torch.eye(n, dtype=logits.dtype, device=logits.device)
    return torch.einsum("nm,nkc->nkmc", eye_n, f).reshape(n * f.shape[1], n, logits.shape[1])


def sample_cotangents(cot: Tensor, rows: int, key: int) -> Tensor:
    """s = ``rows`` random combinations of a task's R cotangents, ĉ_i = Σ_r ω_ri c_r / √s with
    ω ~ N(0, 1) drawn from ``key`` (the task's own seed, so a resumed or distributed fit draws the
    same). The columns become V_j Ω/√s: E[V_j ΩΩᵀ V_jᵀ]/s = V_j V_jᵀ, an unbiased estimate of the
    task's Gauss-Newton block at s backward passes instead of R (= n_q·(c−1)): the Monte-Carlo
    Fisher idea of K-FAC / TRAK's one gradient per example, here with s per task. Nothing changes
    when s ≥ R."""
    if rows <= 0 or rows >= cot.shape[0]:
        return cot
    gen = torch.Generator(device="cpu").manual_seed(key)
    omega = torch.randn(cot.shape[0], rows, generator=gen, dtype=torch.float64).to(cot)
    return torch.einsum("rs,r...->s...", omega, cot) / rows**0.5


def task_key(seed: int, task_id: int) -> int:
    """The seed of task ``task_id``'s row sample: independent of the order tasks are streamed in."""
    return int(np.random.SeedSequence([seed, task_id]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _map_rows(
    fn: Callable[[Tensor], Tensor], rows: Tensor, chunk: int | None, transform: RowTransform | None = None
) -> Tensor:
    """Apply ``fn`` to each row: vmapped in chunks of ``chunk`` rows, or a plain loop when chunk == 1.

    On CPU a loop of small backward passes often beats one huge vmapped pass (memory-bound);
    on GPU vmap wins. ``chunk=None`` vmaps all rows at once. ``transform`` (a linear map of the
    last axis, e.g. a sketch, ``projection.py``) is applied to each chunk's output right away, so
    the full rows × q result is never held when it reduces q.
    """
    if transform is not None:
        step = rows.shape[0] if chunk is None else max(chunk, 1)
        return torch.cat([transform(_map_rows(fn, rows[i : i + step], chunk).detach()) for i in range(0, rows.shape[0], step)])
    if chunk == 1:
        return torch.stack([fn(r) for r in rows])
    if chunk is None or rows.shape[0] <= chunk:
        return vmap(fn)(rows)
    return torch.cat([vmap(fn)(rows[i : i + chunk]) for i in range(0, rows.shape[0], chunk)])


def create_naive_columns_function(
    model: nn.Module,
    spec: LearnerSpec,
    layout: ParamLayout,
    chunk: int | None = None,
    reduced: bool = True,
    transform: RowTransform | None = None,
    rows_per_task: int = 0,
) -> ColumnsFunction:
    """Reference: rows J_nᵀ F_n e_k / √n_q by vmap over vjp of the full logits function.

    For MAML the pullback runs through the inner gradient (a double backward per row).
    ``layout`` may be a ``projection.PartialLayout`` (w = the selected parameters only: backprop
    stops at the first selected layer); ``transform`` maps each chunk of rows (e.g. a sketch).
    """
    logits_fn = create_flat_logits_function(model, spec, layout, second_order=needs_second_order(spec))

    def columns(w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, key: int = 0) -> Tensor:
        y, pullback = vjp(lambda p: logits_fn(p, sx, sy, qx), w)
        cot = sample_cotangents(fisher_cotangents(y.detach(), reduced), rows_per_task, key)
        return _map_rows(lambda r: pullback(r)[0], cot, chunk, transform).detach() / y.shape[0] ** 0.5

    return columns


def _hvp_rows_forward(hess_grad: Callable[[Tensor], Tensor], theta: Tensor, rows: Tensor, chunk: int | None) -> Tensor:
    """H rows by forward-over-reverse (jvp of grad), vmapped over rows (pure torch.func)."""

    def hvp(u: Tensor) -> Tensor:
        return jvp(hess_grad, (theta,), (u,))[1]

    return _map_rows(hvp, rows, chunk)


def _hvp_rows_reverse(hess_grad: Callable[[Tensor], Tensor], theta: Tensor, rows: Tensor, chunk: int | None) -> Tensor:
    """H rows by reverse-over-reverse: the gradient graph is built once, then pulled back per row."""
    _, pullback = vjp(hess_grad, theta)
    return _map_rows(lambda u: pullback(u)[0], rows, chunk)


HVP_BACKENDS = {"forward": _hvp_rows_forward, "reverse": _hvp_rows_reverse}


def create_maml_columns_function(
    model: nn.Module,
    spec: LearnerSpec,
    layout: ParamLayout,
    chunk: int | None = None,
    reduced: bool = True,
    hvp: str = "reverse",
    transform: RowTransform | None = None,
    rows_per_task: int = 0,
) -> ColumnsFunction:
    """Structured MAML columns: first-order vjps at θ̂, then the (I − αH_S(θ_t)) factors (module doc).

    ``hvp`` = "forward" (vmapped jvp of grad) or "reverse" (vjp of grad, graph reused across rows).
    With ``transform`` (e.g. parameter selection + sketch) each chunk of rows runs through the
    whole chain in R^q and is transformed at once, so only chunk × q rows are ever held.
    """
    if hvp not in HVP_BACKENDS:
        raise ConfigError(f"hvp must be one of {sorted(HVP_BACKENDS)}, got {hvp!r}")
    hvp_rows = HVP_BACKENDS[hvp]
    forward = create_flat_forward_function(model, layout, second_order=False)
    inner_step_grad = grad(create_flat_support_loss_function(model, layout, second_order=False))
    inner_grad = grad(create_flat_support_loss_function(model, layout))  # differentiated again (HVPs)
    alpha, steps = spec.inner_lr, spec.inner_steps

    def columns(w: Tensor, sx: Tensor, sy: Tensor, qx: Tensor, key: int = 0) -> Tensor:
        thetas = [w.detach()]
        for _ in range(steps):
            thetas.append((thetas[-1] - alpha * inner_step_grad(thetas[-1], sx, sy)).detach())
        y, pullback = vjp(lambda p: forward(p, qx), thetas[-1])
        cot = sample_cotangents(fisher_cotangents(y.detach(), reduced), rows_per_task, key)
        if transform is not None:
            return _transformed_maml_rows(
                pullback, cot, thetas, lambda p: inner_grad(p, sx, sy), alpha, hvp, chunk, transform, spec.first_order,
            ) / y.shape[0] ** 0.5  # fmt: skip
        rows = _map_rows(lambda r: pullback(r)[0], cot, chunk).detach()
        if not spec.first_order:
            for theta in reversed(thetas[:-1]):
                rows = rows - alpha * hvp_rows(lambda p: inner_grad(p, sx, sy), theta, rows, chunk).detach()
        return rows / y.shape[0] ** 0.5

    return columns


def _transformed_maml_rows(pullback, cot: Tensor, thetas, hess_grad, alpha: float, hvp: str, chunk, transform, first_order: bool) -> Tensor:
    """Chunk by chunk: vjps at θ̂, the (I − αH_S(θ_t)) factors, then ``transform`` (per chunk)."""
    ops = []
    if not first_order:
        for theta in reversed(thetas[:-1]):
            if hvp == "reverse":  # the gradient graph at θ_t is built once and pulled back per chunk
                _, pb = vjp(hess_grad, theta)
                ops.append(lambda rows, pb=pb: _map_rows(lambda u: pb(u)[0], rows, chunk))
            else:
                ops.append(lambda rows, theta=theta: _hvp_rows_forward(hess_grad, theta, rows, chunk))
    step = cot.shape[0] if chunk is None else max(chunk, 1)
    out = []
    for i in range(0, cot.shape[0], step):
        rows = _map_rows(lambda r: pullback(r)[0], cot[i : i + step], chunk).detach()
        for op in ops:
            rows = rows - alpha * op(rows).detach()
        out.append(transform(rows))
    return torch.cat(out)


def create_columns_function(
    model: nn.Module,
    spec: LearnerSpec,
    layout: ParamLayout,
    *,
    structured: bool = True,
    chunk: int | None = None,
    reduced: bool = True,
    hvp: str = "reverse",
    transform: RowTransform | None = None,
    rows_per_task: int = 0,
) -> ColumnsFunction:
    """The GN columns of one task for ``spec``'s learner (structured MAML or ProtoNet vjps);
    ``transform`` maps every chunk of rows as soon as it is computed (``projection.py``);
    ``rows_per_task`` s > 0 replaces a task's n_q·(c−1) columns by s random combinations
    (``sample_cotangents``; the returned function then takes the task's ``key``)."""
    require_tlxml_support(spec)
    if structured and Algorithm(spec.algo) is Algorithm.MAML:
        return create_maml_columns_function(model, spec, layout, chunk, reduced, hvp, transform, rows_per_task)
    return create_naive_columns_function(model, spec, layout, chunk, reduced, transform, rows_per_task)
