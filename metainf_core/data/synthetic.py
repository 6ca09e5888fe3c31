"""Synthetic 2-D Gaussian clusters of TLXML B.1: each cluster is a class.

K cluster centres ~ N(0, center_std^2 I) in 2-D, ``members`` points per cluster
~ N(centre, member_std^2 I); noise tasks draw points ~ N(0, 1) (``noise_scale``, see
``FewShotDataset.noise_like``). Superclass = quadrant of the centre: Q1 (x>=0, y>=0),
Q2 (x<0, y>=0), Q3 (x<0, y<0), Q4 (x>=0, y<0).
Split: clusters alternate, even ids -> meta-train, odd ids -> meta-test, so both splits cover
every quadrant in about equal shares. Everything is a deterministic function of ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metainf_core.data.base import FewShotDataset
from metainf_core.exceptions import ConfigError

NAME = "synthetic"


def quadrant(points: np.ndarray) -> np.ndarray:
    """Quadrant label 1..4 of each 2-D point (axes belong to the non-negative side)."""
    right, up = points[:, 0] >= 0, points[:, 1] >= 0
    return np.where(up, np.where(right, 1, 2), np.where(right, 4, 3))


def load(
    root: Path | None = None,
    download: bool = False,
    clusters: int = 3000,
    members: int = 20,
    seed: int = 0,
    center_std: float = 1.0,
    member_std: float = 0.1,
    noise_scale: float = 1.0,
) -> FewShotDataset:
    """``clusters * members`` float32 points in 2-D, one class per cluster (TLXML B.1)."""
    del root, download  # generated, nothing to read
    for key, value in (("clusters", clusters), ("members", members)):
        if not isinstance(value, int) or value < 2:
            raise ConfigError(f"synthetic {key} must be an integer >= 2, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    if min(center_std, member_std, noise_scale) <= 0:
        raise ConfigError("synthetic center_std, member_std and noise_scale must be positive")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, center_std, size=(clusters, 2))
    points = centers[:, None, :] + rng.normal(0.0, member_std, size=(clusters, members, 2))
    width = len(str(clusters - 1))
    return FewShotDataset(
        name=NAME,
        samples=torch.from_numpy(points.reshape(-1, 2).astype(np.float32)),
        labels=np.repeat(np.arange(clusters, dtype=np.int64), members),
        class_names=tuple(f"cluster{c:0{width}d}" for c in range(clusters)),
        superclasses=tuple(f"Q{q}" for q in quadrant(centers)),
        train_classes=tuple(range(0, clusters, 2)),
        test_classes=tuple(range(1, clusters, 2)),
        source=f"generated:seed={seed},clusters={clusters},members={members}",
        noise_scale=float(noise_scale),
        extra={"centers": centers.astype(np.float32), "member_std": member_std, "center_std": center_std},
    )
