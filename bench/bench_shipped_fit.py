"""What shipping a demo's fit costs and buys: time to the first ranking on a fresh clone (empty
cache), and how far the float16 shipped fit's scores are from the full-precision fit's.

    .venv/bin/python bench/bench_shipped_fit.py [--demos protonet-fashion-mnist,maml-fashion-mnist] [--tests 128]

The reference is the full float32 fit in the normal cache (fitted here if missing: minutes).
Prints, per demo: seconds from an empty cache to the first ranked test task, and over the test
tasks the Pearson / Spearman correlation and top-5 overlap of shipped vs reference scores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metainf_core.config import InfluenceConfig  # noqa: E402
from metainf_core.fits import fit_influence, is_fitted, shipped_fit_path  # noqa: E402
from metainf_core.ranking import Target, test_score_matrix  # noqa: E402
from metainf_core.service import open_run  # noqa: E402
from metainf_core.validate import score_agreement, top_k_overlap  # noqa: E402

DEFAULT = InfluenceConfig(method="gn", n_orth=512, dtype="float32")  # ui.DEFAULT_INFLUENCE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demos", default="protonet-fashion-mnist,maml-fashion-mnist")
    ap.add_argument("--tests", type=int, default=128)
    args = ap.parse_args()
    for name in args.demos.split(","):
        path = REPO / "assets" / "demo" / name
        run = open_run(path)
        if not shipped_fit_path(run, DEFAULT).is_file():
            print(f"{name}: no shipped fit in {path / 'influence'}")
            continue
        reference = fit_influence(run, DEFAULT)  # the normal cache (fits when missing)
        saved = os.environ.get("METAINF_CACHE")
        with tempfile.TemporaryDirectory() as empty:
            os.environ["METAINF_CACHE"] = empty
            started = time.perf_counter()
            fresh = open_run(path)
            assert is_fitted(fresh, DEFAULT)
            shipped = fit_influence(fresh, DEFAULT)
            from metainf_core.ranking import all_scores

            all_scores(fresh, shipped, Target((0,)), DEFAULT.dtype)
            first = time.perf_counter() - started
        if saved is None:
            os.environ.pop("METAINF_CACHE")
        else:
            os.environ["METAINF_CACHE"] = saved
        ids = np.arange(min(args.tests, len(run.test_tasks)))
        a = test_score_matrix(run, reference, DEFAULT.dtype, ids)
        b = test_score_matrix(run, shipped, DEFAULT.dtype, ids)
        agree = [score_agreement(x, y) for x, y in zip(a, b, strict=True)]
        pearson = np.array([d["pearson"] for d in agree])
        spearman = np.array([d["spearman"] for d in agree])
        top5 = np.array([top_k_overlap(x, y, 5) for x, y in zip(a, b, strict=True)])
        rel = np.abs(a - b).max(1) / np.abs(a).max(1)
        size = shipped_fit_path(run, DEFAULT).stat().st_size / 2**20
        print(f"{name}: shipped fit {size:.1f} MiB; empty cache → first ranking {first:.2f} s; over {len(ids)} test tasks: "
              f"Pearson min {pearson.min():.6f}, Spearman min {spearman.min():.6f} (mean {spearman.mean():.6f}), "
              f"top-5 overlap min {top5.min():.2f}, max |Δscore|/max|score| {rel.max():.1e}")


if __name__ == "__main__":
    main()
