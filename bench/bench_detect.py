"""Harmful-task detection on real data (seed 001 §6.3): prints figures, no assertions.

    .venv/bin/python bench/bench_detect.py [--k 32,64,128] [--draws 5] [--xi -1] [--scores mean,self]

The bundled ProtoNet demo (assets/demo/protonet-fashion-mnist: conv4, fashion-mnist 3-way 5-shot,
64 of its 512 training tasks noise images, 128 test tasks) with the app's Gauss-Newton fit
(``ui.DEFAULT_INFLUENCE``; through ``fits.fit_influence``, so from the disk cache once fitted —
the first fit takes minutes). For every score kind of ``metainf_core.detect``: the detection curve
at a few inspected fractions and its AUC vs random (0.5); then, for the kinds in ``--scores``, the
test accuracy after removing the k lowest-scored tasks by the one-step edit vs k random tasks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metainf_core import detect  # noqa: E402
from metainf_core.fits import fit_influence  # noqa: E402
from metainf_core.service import open_run  # noqa: E402

DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"
FRACTIONS = (0.05, 0.125, 0.25, 0.5, 0.75)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", default="32,64,128")
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--xi", default="-1", help="comma-separated ξ (use --xi=-1,-4)")
    ap.add_argument("--scores", default="mean,self", help="score kinds whose removal effect is measured")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ui import DEFAULT_INFLUENCE as cfg

    run = open_run(DEMO)
    started = time.time()
    inf = fit_influence(run, cfg, progress=lambda stage, d, t: print(f"  fit {stage} {d}/{t}", end="\r", file=sys.stderr))
    bad = detect.corrupted_ids(run)
    m = len(run.train_tasks)
    print(f"demo: M = {m} training tasks, {len(bad)} corrupted (noise); GN fit k = {inf.truncation} ({time.time() - started:.1f} s)")

    scores = {}
    for kind in detect.SCORE_KINDS:
        t = time.time()
        scores[kind] = detect.detection_scores(run, inf, cfg.dtype, kind)
        c = detect.detection_curve(scores[kind], bad, m)
        pts = "  ".join(f"{f:.3g}:{c.found_at(f):.3f}" for f in FRACTIONS)
        print(
            f"\n[{kind}] {detect.SCORE_ORDERS[kind]}  ({time.time() - t:.1f} s)\n"
            f"  found at inspected fraction (random = the fraction):  {pts}\n"
            f"  AUC {c.auc:.3f} vs random 0.500 (+{c.auc_sigma:.1f} sd), perfect {c.auc_max:.3f}; "
            f"inspect {c.inspected_to_find(0.5):.3f} / {c.inspected_to_find(0.9):.3f} of tasks to find 50% / 90%"
        )

    ks = [int(k) for k in a.k.split(",")]
    xis = [float(x) for x in a.xi.split(",")]
    for kind in a.scores.split(","):
        t = time.time()
        rep = detect.removal_effect(run, inf, scores[kind], ks, xis=xis, random_draws=a.draws, seed=0, corrupted=bad)
        b = rep["before"]
        print(f"\nremoval by one-step edit, order [{kind}] ({time.time() - t:.1f} s); before: {b['accuracy']:.4f} ± {b['accuracy_ci95']:.4f}")
        for row in rep["rows"]:
            for xi in rep["xis"]:
                e, r = row["edit"][f"{xi:g}"], row["random_edit"][f"{xi:g}"]
                print(
                    f"  k={row['k']:4d} ξ={xi:g}: lowest {e['accuracy']:.4f} ± {e['accuracy_ci95']:.4f} "
                    f"(paired gain {e['gain']:+.4f} ± {e['gain_ci95']:.4f}) "
                    f"({row['corrupted_in_lowest']} corrupted) | random {r['accuracy_mean']:.4f} ± {r['accuracy_sd']:.4f} sd "
                    f"over {a.draws} draws ({row['corrupted_in_random_mean']:.1f} corrupted)"
                )
    for xi in xis:
        from metainf_core.edit import EditSpec, edited_params

        s = run.evaluate(edited_params(run, inf, EditSpec(block=bad, xi_block=xi))).summary()
        print(f"\nreference: edit removing exactly the {len(bad)} corrupted tasks, ξ={xi:g}: {s['accuracy']:.4f} ± {s['accuracy_ci95']:.4f} (before {b['accuracy']:.4f})")


if __name__ == "__main__":
    main()
