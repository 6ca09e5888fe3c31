"""Small builders shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import torch


def tiny_task(ways=3, shots=4, queries=3, dim=2, dtype=torch.float64):
    """A random Gaussian-cluster few-shot task: (support_x, support_y, query_x, query_y)."""
    centers = torch.randn(ways, dim, dtype=dtype) * 2
    sy = torch.arange(ways).repeat_interleave(shots)
    qy = torch.arange(ways).repeat_interleave(queries)
    sx = centers[sy] + 0.3 * torch.randn(len(sy), dim, dtype=dtype)
    qx = centers[qy] + 0.3 * torch.randn(len(qy), dim, dtype=dtype)
    return sx, sy, qx, qy
