"""Size and direction of a task's score on the bundled demos: prints figures, no assertions.

    .venv/bin/python bench/bench_magnitude_direction.py [--threads 2] [--top 5]

helpfulness(i, j) = ‖g_i‖_A · ‖g_j‖_A · alignment(i, j) (``TaskInfluence.score_parts``): the
training task's size in the fitted metric and a RelatIF-style cosine (Barshan et al. 2020). For
both demos (assets/demo/{protonet,maml}-fashion-mnist: conv4, 512 training tasks of which 64 are
noise, 128 test tasks) with the app's fit (``ui.DEFAULT_INFLUENCE``, Gauss-Newton float32), over
the 128 test tasks, ordering the training tasks by helpfulness and by alignment:

- proper tests (``validate.proper_tests``): normal above noise tasks; tasks sharing ≥ s
  superclasses with the test task above the rest (noise tasks in neither group, as
  ``validate.validation_report``). On fashion-mnist every 3-way task spans ≥ 2 of the 3
  superclasses, so any two tasks share one: s = 1 has no test with both groups (0/0);
- the mean score of noise and of normal tasks (over tasks and tests);
- the fraction of noise tasks among the top-k most helpful / most harmful (noise: 12.5 %);
- Spearman ρ between the two orderings (``validate.spearman``, per test, mean ± sd);
- the mean size ‖g_j‖_A of noise vs normal tasks, and the noise share of the 64 largest.

Runs only when both fits are already in the cache (``fits.is_fitted``); a fit takes minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metainf_core.fits import fit_influence, is_fitted, params_as  # noqa: E402
from metainf_core.influence import task_gradients  # noqa: E402
from metainf_core.influence.scores import ScoreParts  # noqa: E402
from metainf_core.service import Run, open_run  # noqa: E402
from metainf_core.validate import proper_tests, spearman, superclass_overlap  # noqa: E402

DEMOS = {name: REPO / "assets" / "demo" / f"{name}-fashion-mnist" for name in ("protonet", "maml")}


def score_parts(run: Run, cfg) -> ScoreParts:
    """Helpfulness, alignment and sizes for every test task (T × M) from one gradient pass."""
    inf = fit_influence(run, cfg)
    g = task_gradients(run.model, run.spec, params_as(run, cfg.dtype), run.test_tasks, run.dataset)
    return inf.score_parts(g)


def noise_share(scores: np.ndarray, noise: np.ndarray, top: int) -> tuple[float, float]:
    """Mean fraction of noise tasks among each test's ``top`` highest and ``top`` lowest scores."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return float(noise[order[:, :top]].mean()), float(noise[order[:, -top:]].mean())


def _proper(values: np.ndarray, expected_higher: np.ndarray) -> str:
    res = proper_tests(values, expected_higher)
    return f"{res.proper}/{res.total}" + (f" ({res.z:+.1f}σ)" if res.total else "")


def ordering_figures(run: Run, values: np.ndarray, noise: np.ndarray, top: int) -> dict[str, str]:
    """One ordering's row: mean score by group, proper tests (noise; superclass ≥ s, noise tasks
    left out) and noise shares at the extremes."""
    normal = ~noise
    tests = run.test_tasks.superclass_sets(run.dataset)
    overlap = superclass_overlap(tests, run.train_tasks.superclass_sets(run.dataset))[:, normal]
    helpful, harmful = noise_share(values, noise, top)
    return {
        "mean noise / normal": f"{values[:, noise].mean():+.3g} / {values[:, normal].mean():+.3g}",
        "noise proper": _proper(values, normal),
        **{f"superclass≥{s} proper": _proper(values[:, normal], overlap >= s) for s in range(1, int(overlap.max()) + 1)},
        f"noise in top-{top} helpful": f"{100 * helpful:.1f} %",
        f"noise in top-{top} harmful": f"{100 * harmful:.1f} %",
    }


def print_table(rows: list[dict[str, str]]) -> None:
    cols = list(rows[0])
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(r[c].ljust(w) for c, w in zip(cols, widths, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ui import DEFAULT_INFLUENCE as cfg

    runs = {name: open_run(path) for name, path in DEMOS.items()}
    missing = [name for name, run in runs.items() if not is_fitted(run, cfg)]
    if missing:
        print(f"not fitted yet: {', '.join(missing)} (fit with `python -m metainf_core fit DIR`; minutes each)")
        return
    rows, extra = [], []
    for name, run in runs.items():
        started = time.time()
        parts = score_parts(run, cfg)
        help_, align = parts.helpfulness.double().cpu().numpy(), parts.alignment.double().cpu().numpy()
        sizes = parts.sizes.double().cpu().numpy()
        noise = np.zeros(len(run.train_tasks), dtype=bool)
        noise[run.train_tasks.ids_with("noise")] = True
        for label, values in (("helpfulness", help_), ("alignment", align)):
            rows.append({"demo": name, "ordered by": label, **ordering_figures(run, values, noise, a.top)})
        rho = np.array([spearman(h, al) for h, al in zip(help_, align, strict=True)])
        largest = np.argsort(-sizes, kind="stable")[: noise.sum()]
        extra.append({
            "demo": name, "T × M": f"{help_.shape[0]} × {help_.shape[1]}",
            "noise tasks": f"{noise.sum()} ({100 * noise.mean():.1f} %)",
            "Spearman(help, align)": f"{rho.mean():.3f} ± {rho.std():.3f} (min {rho.min():.3f})",
            "size noise": f"{sizes[noise].mean():.4g}", "size normal": f"{sizes[~noise].mean():.4g}",
            f"noise in {noise.sum()} largest": f"{100 * noise[largest].mean():.1f} %",
            "|alignment| max": f"{np.abs(align).max():.3f}", "seconds": f"{time.time() - started:.1f}",
        })  # fmt: skip
    print(f"fit: {cfg}\n")
    print_table(rows)
    print()
    print_table(extra)


if __name__ == "__main__":
    main()
