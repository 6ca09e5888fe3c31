"""Pictures for the UI without any UI library: thumbnail strips as uint8 arrays."""

from __future__ import annotations

import numpy as np
import torch


def thumbnail_strip(images: torch.Tensor, scale: int = 3, pad: int = 2, per_row: int | None = None) -> np.ndarray:
    """Images ``n x C x H x W`` in [0, 1] → one ``rows·(H·scale+pad) x cols·(W·scale+pad) x 3``
    uint8 array, upscaled by nearest neighbour so 28×28 images stay crisp; grey becomes RGB."""
    if images.dim() != 4:
        raise ValueError(f"thumbnail_strip needs n x C x H x W images, got shape {tuple(images.shape)}")
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    n, _, h, w = x.shape
    cols = n if per_row is None else min(per_row, n)
    rows = -(-n // cols)
    canvas = torch.ones(3, rows * (h + pad) - pad, cols * (w + pad) - pad)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = x[i]
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
