"""Networks of TLXML 5.1 and B.2–B.4, all with batch norm on batch statistics.

Batch norm uses ``track_running_stats=False``: statistics always come from the current batch
(the transductive setting of MAML/ProtoNet few-shot work), so a network is a pure function of
its parameters — what ``torch.func`` needs to differentiate through the adaptation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metainf_core.config import Algorithm, Architecture
from metainf_core.exceptions import ConfigError


class MaxPool2x2(nn.Module):
    """2×2 max-pool, stride 2, floor mode (= ``nn.MaxPool2d(2)``, bitwise) as the max of four
    strided views: under ``vmap`` over tasks torch's NCHW pooling kernel is ~7× slower and was
    the largest cost of evaluation. At exact ties the gradient is shared rather than sent to one
    entry; ties come from ReLU zeros, whose gradient is zero either way."""

    def forward(self, x: Tensor) -> Tensor:
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
