"""Networks of TLXML 5.1 and B.2–B.4, all with batch norm on batch statistics.

Batch norm uses ``track_running_stats=False``: statistics always come from the current batch
(the transductive setting of MAML/ProtoNet few-shot work), so a network is a pure function of
its parameters — what ``torch.func`` needs to differentiate through the adaptation.
"""

from __future__ import annotations

import ast
import importlib
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from metainf_core.config import Algorithm, Architecture
from metainf_core.exceptions import ConfigError


class MaxPool2x2(nn.Module):
    """2×2 max-pool, stride 2, floor mode (= ``nn.MaxPool2d(2)``), by the kernel that is faster
    for the pass at hand: torch's fused pooling when a gradient may be taken (its backward scatters
    to one index; the strided version's four slice and ``maximum`` backwards cost 3–6× more: 1.7×
    per ProtoNet training step, 2.7× per ProtoNet Gauss-Newton column pass, ``bench_training.py``),
    and the max of four strided views without one (under ``vmap`` over tasks torch's NCHW pooling
    kernel is 1.6–7× slower, the largest cost of evaluation). The forward values are the same
    bitwise; at exact ties the fused backward sends the gradient to one entry and the strided one
    shares it, but ties come from ReLU zeros, whose gradient is zero either way."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.max_pool2d(x, 2) if torch.is_grad_enabled() else strided_max_pool(x)


def strided_max_pool(x: Tensor) -> Tensor:
    """2×2 max-pool of the last two dimensions as the max of four strided views (floor mode)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]), torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def conv_block(in_channels: int, filters: int) -> nn.Sequential:
    """3x3 conv -> batch norm -> ReLU -> 2x2 max-pool (the standard few-shot block)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, filters, 3, padding=1),
        nn.BatchNorm2d(filters, track_running_stats=False),
        nn.ReLU(),
        MaxPool2x2(),
    )


class FFTFeatures(nn.Module):
    """|2-D FFT| of the image clipped to its central ``size x size`` block (TLXML B.2, Omniglot)."""

    def __init__(self, size: int = 6) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fftshift(torch.fft.fft2(x.mean(dim=1), norm="ortho"), dim=(-2, -1)).abs()
        h, w = spectrum.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return spectrum[..., top : top + self.size, left : left + self.size].flatten(1)


class FewShotNet(nn.Module):
    """A feature extractor, optionally followed by a linear classifier head (MAML)."""

    def __init__(self, features: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.features = features
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 2):
        layers += [nn.Linear(dims[i], dims[i + 1]), nn.BatchNorm1d(dims[i + 1], track_running_stats=False), nn.ReLU()]
    layers.append(nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


def build_model(
    arch: Architecture | str,
    algo: Algorithm | str,
    input_shape: tuple[int, ...],
    ways: int,
    filters: int = 32,
) -> FewShotNet:
    """Construct the network for ``arch``; MAML and proximal MAML get a ``ways``-output head, ProtoNet none.

    Examples: conv4/32 filters on 1x28x28 for ProtoNet has 28,320 parameters (TLXML B.3);
    mlp has 1,285 on 32-d features (TLXML 5.1.1) and 1,413 on images (36 FFT features); mlp-synthetic has 63 (TLXML B.3).
    """
    arch, algo = Architecture(arch), Algorithm(algo)
    if arch in (Architecture.CONV3, Architecture.CONV4):
        if len(input_shape) != 3:
            raise ConfigError(f"{arch.value} needs image inputs, got shape {input_shape}")
        depth = 3 if arch is Architecture.CONV3 else 4
        blocks = [conv_block(input_shape[0] if i == 0 else filters, filters) for i in range(depth)]
        features = nn.Sequential(*blocks)
        with torch.no_grad():
            dim = features(torch.zeros(2, *input_shape)).flatten(1).shape[1]
        head = nn.Linear(dim, ways) if algo.has_classifier_head else None
        return FewShotNet(features, head)
    if arch is Architecture.MLP:
        # Images: |FFT| 6x6 features (36-d, Omniglot in TLXML B.2); vectors (e.g. 32-d BoVW) as they are.
        if len(input_shape) not in (1, 3):
            raise ConfigError(f"mlp expects images or feature vectors, got shape {input_shape}")
        d_in = 36 if len(input_shape) == 3 else input_shape[0]
        mlp = _mlp([d_in, 32, ways] if algo.has_classifier_head else [d_in, 32, 32])
        return FewShotNet(nn.Sequential(FFTFeatures(6), mlp) if len(input_shape) == 3 else mlp, None)
    if len(input_shape) != 1:
        raise ConfigError(f"mlp-synthetic expects vector inputs, got shape {input_shape}")
    dims = [input_shape[0], 4, 4, ways] if algo.has_classifier_head else [input_shape[0], 4, 4, 4]
    return FewShotNet(_mlp(dims), None)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- networks defined elsewhere: learn2learn's vision models and trusted user modules ---------
# A run may name its network by a constructor expression instead of a metainf architecture, e.g.
# "l2l.vision.models.OmniglotCNN(output_size=3, hidden_size=16, layers=4)". The expression is
# parsed, never evaluated: a dotted name from an allowed module plus literal arguments.
MODULE_ALIASES = {"l2l": "learn2learn"}
LEARN2LEARN_MODELS = (
    "OmniglotFC", "OmniglotCNN", "MiniImagenetCNN", "CNN4", "CNN4Backbone", "ResNet12", "ResNet12Backbone",
    "WRN28", "WRN28Backbone",
)  # fmt: skip
TRUSTED_MODULES_ENV = "METAINF_TRUSTED_MODULES"


@dataclass(frozen=True)
class Constructor:
    """A parsed ``package.module.Class(arg, key=value)``: qualified name and literal arguments."""

    module: str
    name: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.name}"

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.qualified}({', '.join(parts)})"


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ConfigError("a model constructor is a dotted name, e.g. l2l.vision.models.CNN4(output_size=5)")


def parse_constructor(text: str) -> Constructor:
    """Parse ``text`` without running it; arguments must be Python literals (numbers, strings,
    lists, booleans, None). ``Class`` alone means ``Class()``."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ConfigError(f"model constructor {text!r} is not valid Python syntax") from None
    call = node if isinstance(node, ast.Call) else ast.Call(func=node, args=[], keywords=[])
    dotted = _dotted(call.func)
    head, _, rest = dotted.partition(".")
    dotted = f"{MODULE_ALIASES.get(head, head)}.{rest}" if rest else dotted
    module, _, name = dotted.rpartition(".")
    try:
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in call.keywords if k.arg is not None)
    except ValueError:
        raise ConfigError(f"model constructor {text!r}: arguments must be literals (numbers, strings, lists)") from None
    if len(kwargs) != len(call.keywords):
        raise ConfigError(f"model constructor {text!r}: **kwargs are not allowed")
    return Constructor(module, name, args, kwargs)


def trusted_modules() -> tuple[str, ...]:
    """Modules whose classes may be constructed: learn2learn's vision models, metainf's own, and
    the comma-separated packages in ``$METAINF_TRUSTED_MODULES`` (a user's own networks; a run
    folder from someone else can then only name classes from packages this user trusts)."""
    extra = [m.strip() for m in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if m.strip()]
    return ("learn2learn.vision.models", "metainf_core.models", *extra)


def construct(text: str) -> nn.Module:
    """Build the network a constructor expression names (see ``parse_constructor``)."""
    c = parse_constructor(text)
    if c.module == "learn2learn.vision.models" and c.name not in LEARN2LEARN_MODELS:
        raise ConfigError(f"{c.name} is not one of learn2learn's vision models ({', '.join(LEARN2LEARN_MODELS)})")
    allowed = trusted_modules()
    if not any(c.module == m or c.module.startswith(m + ".") for m in allowed):
        raise ConfigError(
            f"{c.qualified}: module {c.module} is not trusted; models come from {', '.join(allowed)} "
            f"(add a package of your own with {TRUSTED_MODULES_ENV}=yourpackage)"
        )
    try:
        cls = getattr(importlib.import_module(c.module), c.name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot find {c.qualified} ({e})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"{c.qualified} is not an nn.Module class")
    try:
        return cls(*c.args, **dict(c.kwargs))
    except Exception as e:  # noqa: BLE001 - any constructor failure is the user's arguments
        raise ConfigError(f"{c} failed: {e.__class__.__name__}: {e}") from None


def to_batch_statistics(model: nn.Module) -> tuple[nn.Module, int]:
    """Make every batch norm normalise with the current batch's statistics, as MAML and ProtoNet
    training use it, so the network is a pure function of its parameters (what ``torch.func``
    needs). Running statistics are dropped; returns the model (in eval mode, so dropout and
    DropBlock are off) and the number of buffers dropped."""
    dropped = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            dropped += sum(getattr(m, b) is not None for b in ("running_mean", "running_var", "num_batches_tracked"))
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model.eval(), dropped


def build_network(model: str, arch: str, algo: str, input_shape: tuple[int, ...], ways: int, filters: int) -> nn.Module:
    """The run's network: ``build_model(arch, …)``, or the constructor expression ``model`` when a
    run names one (imported runs), in batch-statistics mode."""
    if not model:
        return build_model(arch, algo, input_shape, ways, filters)
    net = construct(model)
    check_no_tied_parameters(net)
    return to_batch_statistics(net)[0]


def check_no_tied_parameters(model: nn.Module) -> None:
    """A module may be registered under two names (it is then one module); one parameter shared
    by two different modules (weight tying) is refused: parameters are swapped by name only."""
    owner: dict[int, nn.Module] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        module = model.get_submodule(name.rpartition(".")[0])
        if owner.setdefault(id(p), module) is not module:
            raise ConfigError(f"{name} is shared with another module (weight tying), which metainf does not support")
