"""EK-FAC for the adaptation (inner) Hessian: seed 001 §5.1 and A.3 (eq. 20), George et al. 2018.

The Hessian of a mean cross-entropy L(S; θ) over n points is approximated by its Gauss-Newton /
Fisher matrix F = (1/n) Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i (J_i = ∂z_i/∂θ, z_i the logits), written
with pseudo-gradients G_ic = J_iᵀ b_ic, b_ic = √p_ic (e_c − p_i), as F = (1/n) Σ_ic G_ic G_icᵀ (exact).
EK-FAC keeps F's blocks on the diagonal and, per ``nn.Linear`` layer (weight and bias folded,
ã = [a; 1]), takes the eigenbases of the Kronecker factors A = (1/n) Σ_i ã_i ã_iᵀ and
S = (1/n) Σ_ic δ_ic δ_icᵀ (δ_ic = ∂(Σ_k b_kcᵀ z_k)/∂s_i at the layer's output s). An ``nn.Conv2d``
layer (one group, numeric padding) is a linear map of each input patch, so it gets the same block by
KFC (Grosse & Martens 2016): ã_it = [patch t of input i; 1] over its T output positions, W folded to
out × (in·kh·kw), A = (1/n) Σ_i (1/T) Σ_t ã_it ã_itᵀ and S = (1/n) Σ_ic Σ_t δ_ict δ_ictᵀ (A ⊗ S is
then KFC's T·Ω ⊗ Γ). EK-FAC then replaces
K-FAC's eigenvalues s_k a_l by the *exact* second moments of the pseudo-gradients in that basis,

    Λ_kl = (1/n) Σ_ic ((Q_Sᵀ G_ic Q_A)_kl)²   (= diag of (Q_S ⊗ Q_A)ᵀ F_block (Q_S ⊗ Q_A)),

the Frobenius-closest matrix to F_block diagonal in that basis (so never farther than K-FAC). Every
other parameter (batch-norm scales and shifts) is its own diagonal block, Λ_k = F_kk. Then

    (F̂ + λI)⁻¹ v = Q_S [(Q_Sᵀ V Q_A) / (Λ + λ)] Q_Aᵀ  per layer (V = [v_W, v_b]),  v_k / (Λ_k + λ) elsewhere.

Seed 001 uses it for the inner iHVPs only: the total Hessian couples layers through the adaptation
(its Remark), which EK-FAC's block-diagonal form ignores. Batch norm couples the points of S; its
pseudo-gradients are exact here, the Kronecker factors are the usual per-point approximation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap

from metainf_core.exceptions import ConfigError
from metainf_core.influence.flat import ParamLayout
from metainf_core.influence.hvp import HVP
from metainf_core.influence.ihvp import IHVPMethod, IHVPResult
from metainf_core.learners import Params, with_composite_batch_norm


@dataclass(frozen=True, eq=False)
class KronBlock:
    """One ``nn.Linear`` or ``nn.Conv2d`` layer: flat offsets of its weight (out × fan-in, fan-in = in or
    in·kh·kw) and bias, eigenbases, corrected eigenvalues."""

    weight: slice
    bias: slice | None
    shape: tuple[int, int]
    q_s: Tensor  # out × out
    q_a: Tensor  # (in + 1) × (in + 1) with a bias, in × in without
    eigenvalues: Tensor  # out × (in + 1): Λ
    kfac_eigenvalues: Tensor  # out × (in + 1): s_k a_l, K-FAC's, kept for comparison

    def matrix(self, v: Tensor) -> Tensor:
        """The block of a flat vector as V = [v_W, v_b] (out × (in + 1))."""
        w = v[self.weight].view(self.shape)
        return torch.cat([w, v[self.bias].view(-1, 1)], 1) if self.bias is not None else w

    def scatter(self, out: Tensor, m: Tensor) -> None:
        out[self.weight] = m[:, : self.shape[1]].reshape(-1)
        if self.bias is not None:
            out[self.bias] = m[:, -1]


@dataclass(frozen=True, eq=False)
class EKFACFactor:
    """EK-FAC of one loss's Fisher (module docstring): Kronecker blocks for linear and convolution layers, a diagonal for the rest."""

    blocks: tuple[KronBlock, ...]
    diagonal_index: Tensor  # flat indices of the parameters outside those layers
    diagonal: Tensor  # their Λ_k = F_kk
    q: int
    num_points: int = field(default=0)

    def _apply(self, v: Tensor, fn) -> Tensor:
        out = torch.empty_like(v)
        for b in self.blocks:
            m = b.q_s.T @ b.matrix(v) @ b.q_a
            b.scatter(out, b.q_s @ fn(m, b.eigenvalues) @ b.q_a.T)
        out[self.diagonal_index] = fn(v[self.diagonal_index], self.diagonal)
        return out

    def hvp(self, v: Tensor) -> Tensor:
        """F̂ v, the EK-FAC matrix applied to a flat vector."""
        return self._apply(v, lambda m, lam: m * lam)

    def ihvp(self, v: Tensor, damping: float = 0.0) -> Tensor:
        """(F̂ + λI)⁻¹ v; eigenvalues Λ + λ ≤ 0 (λ = 0 and an unused direction) are dropped (pseudo-inverse)."""

        def inv(m: Tensor, lam: Tensor) -> Tensor:
            d = lam + damping
            return torch.where(d > 0, m / d.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(m))

        return self._apply(v, inv)

    def to_tensors(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The factor as named tensors and a JSON layout (``cache.CacheEntry``), losslessly (``from_tensors``)."""
        tensors = {"diagonal_index": self.diagonal_index, "diagonal": self.diagonal}
        layout = []
        for i, b in enumerate(self.blocks):
            for name in ("q_s", "q_a", "eigenvalues", "kfac_eigenvalues"):
                tensors[f"block{i}.{name}"] = getattr(b, name)
            layout.append({"weight": [b.weight.start, b.weight.stop], "shape": list(b.shape),
                           "bias": [b.bias.start, b.bias.stop] if b.bias is not None else None})  # fmt: skip
        return tensors, {"blocks": layout, "q": self.q, "num_points": self.num_points}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], layout: dict[str, Any]) -> EKFACFactor:
        """The factor ``to_tensors`` wrote."""
        blocks = tuple(
            KronBlock(slice(*b["weight"]), slice(*b["bias"]) if b["bias"] is not None else None, tuple(b["shape"]),
                      *(tensors[f"block{i}.{name}"] for name in ("q_s", "q_a", "eigenvalues", "kfac_eigenvalues")))  # fmt: skip
            for i, b in enumerate(layout["blocks"])
        )
        return cls(blocks, tensors["diagonal_index"], tensors["diagonal"], int(layout["q"]), int(layout["num_points"]))


Layer = nn.Linear | nn.Conv2d


def _kronecker_layer(m: nn.Module) -> bool:
    """Whether ``m`` gets a Kronecker block: a linear layer, or a convolution whose patches ``F.unfold`` gives."""
    if isinstance(m, nn.Linear):
        return True
    return (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))  # fmt: skip


def _kronecker_layers(net: nn.Module, layout: ParamLayout) -> dict[str, Layer]:
    names = set(layout.names)
    return {n: m for n, m in net.named_modules() if _kronecker_layer(m) and f"{n}.weight" in names}


def _block_shape(layer: Layer) -> tuple[int, int]:
    """The weight as a matrix: out × fan-in (a convolution's (out, in, kh, kw) row-major, as ``F.unfold``'s patches)."""
    return int(layer.weight.shape[0]), int(layer.weight[0].numel())


def _patches(layer: Layer, a: Tensor) -> tuple[Tensor, int]:
    """The layer's inputs as rows (n·T) × fan-in, and T (positions per point; 1 for a linear layer)."""
    if isinstance(layer, nn.Linear):
        return a, 1
    cols = F.unfold(a, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (n, fan-in, T)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), int(cols.shape[2])


@dataclass(frozen=True, eq=False)
class _SetStats:
    """One point set's pieces: per layer Σ ã ãᵀ (over positions, divided by T) and Σ δ δᵀ, and the (n·C) × q pseudo-gradients."""

    aa: dict[str, Tensor]
    dd: dict[str, Tensor]
    g: Tensor
    n: int


def _set_stats(net: nn.Module, layout: ParamLayout, layers: dict[str, Layer], params: Params, x: Tensor) -> _SetStats:
    n = int(x.shape[0])
    if n == 0:
        raise ConfigError("EK-FAC needs at least one point")
    w = layout.flatten(params).detach()

    def logits(flat: Tensor) -> Tensor:
        return functional_call(net, layout.unflatten(flat), (x,))

    z, pullback = vjp(logits, w)
    p = F.softmax(z.detach(), -1)
    c = p.shape[1]
    eye = torch.eye(c, dtype=p.dtype, device=p.device)
    b = p.sqrt().unsqueeze(-1) * (eye.unsqueeze(0) - p.unsqueeze(1))  # (n, c, C): b_ic = √p_ic (e_c − p_i)
    cot = torch.zeros(n, c, n, c, dtype=p.dtype, device=p.device)
    cot[torch.arange(n), :, torch.arange(n), :] = b
    g = vmap(lambda t: pullback(t)[0])(cot.reshape(n * c, n, c))  # (n·C) × q exact pseudo-gradients G_ic

    acts: dict[str, Tensor] = {}
    outs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
            acts[name], outs[name] = inp[0], out

        return hook

    hooks = [m.register_forward_hook(keep(k)) for k, m in layers.items()]
    try:  # a second forward with graph-tracked weights, for the layers' inputs a_i and outputs s_i
        z2 = functional_call(net, {k: v.detach().requires_grad_(True) for k, v in params.items()}, (x.detach(),))
    finally:
        for h in hooks:
            h.remove()
    names = list(layers)
    deltas: dict[str, list[Tensor]] = {name: [] for name in names}
    for k in range(c):  # δ_ic at every layer's output: the pseudo-gradient cotangents pulled back to s
        grads = torch.autograd.grad((z2 * b[:, k, :]).sum(), [outs[m] for m in names], retain_graph=k < c - 1)
        for name, d in zip(names, grads, strict=True):
            deltas[name].append(d)
    aa, dd = {}, {}
    for name in names:
        a, positions = _patches(layers[name], acts[name].detach())
        a = torch.cat([a, torch.ones_like(a[:, :1])], 1) if layers[name].bias is not None else a
        d = torch.cat(deltas[name], 0).detach()  # (C·n) × out (× positions for a convolution)
        d = d.movedim(1, -1).reshape(-1, d.shape[1])  # rows: (C·n·T) × out
        aa[name], dd[name] = a.T @ a / positions, d.T @ d
    return _SetStats(aa, dd, g.detach(), n)


def fit_ekfac(model: nn.Module, params: Params, x: Tensor, y: Tensor) -> EKFACFactor:
    """EK-FAC of the Fisher of the mean cross-entropy of ``model`` (with ``params``) on points (x, y);
    the labels only fix n (the Fisher takes the expectation over the model's own predictions)."""
    if int(y.shape[0]) != int(x.shape[0]):
        raise ConfigError(f"EK-FAC got {x.shape[0]} points and {y.shape[0]} labels")
    return fit_ekfac_sets(model, [(params, x)])


def fit_ekfac_sets(model: nn.Module, sets: Sequence[tuple[Params, Tensor]]) -> EKFACFactor:
    """EK-FAC of the mean of several point sets' Fishers, (1/K) Σ_k F_k(θ_k), each at its own weights
    (direct IF's H_D: the query sets at the tasks' adapted weights): A and S averaged over the sets
    (each set's own 1/n), the corrected eigenvalues from all sets' pseudo-gradients in a second pass."""
    if not sets:
        raise ConfigError("EK-FAC needs at least one point set")
    layout = ParamLayout.from_params(sets[0][0])
    net = with_composite_batch_norm(model)
    layers = _kronecker_layers(net, layout)
    offsets = dict(zip(layout.names, torch.cumsum(torch.tensor((0, *layout.sizes)), 0).tolist(), strict=False))
    sizes = dict(zip(layout.names, layout.sizes, strict=True))
    k_sets = len(sets)
    a_mean: dict[str, Tensor] = {}
    s_mean: dict[str, Tensor] = {}
    for params, x in sets:  # pass 1: the Kronecker factors
        st = _set_stats(net, layout, layers, params, x)
        for name in layers:
            a_mean[name] = a_mean.get(name, 0) + st.aa[name] / (st.n * k_sets)
            s_mean[name] = s_mean.get(name, 0) + st.dd[name] / (st.n * k_sets)
    bases = {name: (torch.linalg.eigh(s_mean[name]), torch.linalg.eigh(a_mean[name])) for name in layers}
    slices = {}
    used = torch.zeros(layout.numel, dtype=torch.bool)
    for name, lin in layers.items():
        wn = f"{name}.weight"
        bn = f"{name}.bias" if lin.bias is not None else None
        slices[name] = (slice(offsets[wn], offsets[wn] + sizes[wn]), slice(offsets[bn], offsets[bn] + sizes[bn]) if bn else None)
        for sl in slices[name]:
            if sl is not None:
                used[sl] = True
    idx = torch.nonzero(~used).flatten()
    lam: dict[str, Tensor] = {}
    diag = 0
    for params, x in sets:  # pass 2: second moments of the pseudo-gradients in the Kronecker eigenbases
        st = _set_stats(net, layout, layers, params, x)
        for name, lin in layers.items():
            (q_s, q_a), (wsl, bsl) = bases[name], slices[name]
            gw = st.g[:, wsl].reshape(-1, *_block_shape(lin))
            gm = torch.cat([gw, st.g[:, bsl].unsqueeze(-1)], 2) if bsl else gw
            proj = q_s.eigenvectors.T @ gm @ q_a.eigenvectors
            lam[name] = lam.get(name, 0) + (proj**2).sum(0) / (st.n * k_sets)
        diag = diag + (st.g[:, idx] ** 2).sum(0) / (st.n * k_sets)
    blocks = []
    for name, lin in layers.items():
        (q_s, q_a), (wsl, bsl) = bases[name], slices[name]
        kfac = q_s.eigenvalues.clamp_min(0).unsqueeze(1) * q_a.eigenvalues.clamp_min(0).unsqueeze(0)
        blocks.append(KronBlock(wsl, bsl, _block_shape(lin), q_s.eigenvectors, q_a.eigenvectors, lam[name], kfac))
    return EKFACFactor(tuple(blocks), idx, diag, layout.numel, sum(int(x.shape[0]) for _, x in sets))


def ekfac_report(factor: EKFACFactor, hvp: HVP, v: Tensor, damping: float, tol: float) -> IHVPResult:
    """x = (F̂ + λI)⁻¹ v with its residual against the *exact* operator, ‖(H + λI)x − v‖/‖v‖ (one HVP of x):
    how far EK-FAC's answer is from the iHVP it stands for."""
    t0 = time.perf_counter()
    x = factor.ihvp(v, damping)
    res = hvp(x) + damping * x - v
    vn = float(v.norm())
    rel = float(res.norm()) / vn if vn > 0 else 0.0
    return IHVPResult(x=x, method=IHVPMethod.GAUSS_NEWTON, iterations=0, residual_norm=float(res.norm()),
                      relative_residual=rel, seconds=time.perf_counter() - t0, converged=rel <= tol, damping=damping,
                      hvp_calls=1, note="EK-FAC of the Fisher (Kronecker-factored eigenbasis, corrected eigenvalues)")  # fmt: skip
