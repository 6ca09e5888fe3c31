"""The same fit, rank, edit and training on each device and dtype: throughput and agreement (prints figures, no assertions).

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_devices.py [--devices cpu,cuda] [--dtypes float32,float64] [--runs DIR ...]

Issue 14's GPU path, measured where the hardware allows: for each run (default: the two bundled
demos) and each device × dtype, the Gauss-Newton fit from an empty cache (curvature tasks/s,
gradient tasks/s, seconds), the helpfulness of every training task for 32 test tasks (seconds, and
Spearman / relative error against the CPU float64 fit: what a dtype or device costs in
agreement), the one-step edit enhancing each target's 5 most helpful tasks (test loss change, its
difference from the CPU float64 one) and 20 training steps (s/step). Without a GPU it prints the
CPU rows only (``--devices`` defaults to cpu, plus cuda when present), so the script itself is
checked on every machine and is ready for the day a GPU machine is lent (``run`` tool, README
"Distributed fits").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere, as the other benches

from metainf_core.config import InfluenceConfig, TaskConfig, TrainConfig  # noqa: E402
from metainf_core.edit import EditSpec, edited_params  # noqa: E402
from metainf_core.fits import fit_influence  # noqa: E402
from metainf_core.ranking import Target, target_gradient  # noqa: E402
from metainf_core.service import open_run  # noqa: E402

TARGETS = 32
ENHANCE = 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run_dir: Path, device: str, dtype: str, cache: Path) -> dict:
    os.environ["METAINF_CACHE"] = str(cache / f"{device}-{dtype}")  # an empty cache per setting: every fit is fitted
    run = open_run(run_dir, device=device)
    cfg = InfluenceConfig(method="gn", dtype=dtype)
    stages: dict[str, list[float]] = {}  # stage -> [start, last report]; a stage starts where the previous one ended

    def progress(stage: str, done: int, total: int) -> None:
        start = max([t0, *(end for _, end in stages.values())])
        stages.setdefault(stage, [start, start])[1] = time.perf_counter()

    _sync(run.device)
    t0 = time.perf_counter()
    inf = fit_influence(run, cfg, progress=progress)
    _sync(run.device)
    fit_s = time.perf_counter() - t0
    m = len(run.train_tasks)
    rate = {f"{k}_tasks_per_s": m / max(b - a, 1e-9) for k, (a, b) in stages.items()}
    t0 = time.perf_counter()
    ids = list(range(min(TARGETS, len(run.test_tasks))))
    scores = np.stack([inf.helpfulness(target_gradient(run, Target((i,)), dtype)).double().cpu().numpy() for i in ids])
    _sync(run.device)
    score_s = (time.perf_counter() - t0) / len(ids)
    before = run.evaluate(task_ids=ids)
    changes = []
    for row, i in enumerate(ids):
        top = tuple(int(j) for j in np.argsort(-scores[row], kind="stable")[:ENHANCE])
        after = run.evaluate(edited_params(run, inf, EditSpec(enhance=top, xi_enhance=1.0)), task_ids=[i])
        changes.append(float(after.loss[0] - before.loss[row]))
    return {"fit_s": fit_s, **rate, "score_s_per_target": score_s, "scores": scores, "edit_dloss": np.asarray(changes),
            "truncation": inf.truncation, "params": inf.num_params, "tasks": m}  # fmt: skip


def train_speed(run_dir: Path, device: str, work: Path, steps: int = 20) -> float:
    """Seconds per meta-batch of the run's own training configuration on ``device``."""
    from metainf_core.train import train

    run = open_run(run_dir, device="cpu")
    task_cfg = TaskConfig.from_dict(run.meta["task_config"])
    train_cfg = TrainConfig.from_dict({**run.meta["train_config"], "steps": steps, "checkpoint_every": steps})
    t0 = time.perf_counter()
    train(task_cfg, train_cfg, work / f"train-{device}", progress=False, device=device)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--runs", nargs="*", default=[str(REPO / "assets" / "demo" / n) for n in ("protonet-fashion-mnist", "maml-fashion-mnist")])
    ap.add_argument("--train-steps", type=int, default=20)
    a = ap.parse_args()
    devices, dtypes = a.devices.split(","), a.dtypes.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA"))
    for run_dir in map(Path, a.runs):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rows = {(d, t): measure(run_dir, d, t, tmp) for d in devices for t in dtypes}
            ref = rows.get(("cpu", "float64")) or next(iter(rows.values()))
            first = next(iter(rows.values()))
            print(f"\n{run_dir.name}: q = {first['params']:,} parameters, M = {first['tasks']} training tasks, {TARGETS} test targets")
            print("| device | dtype | fit s | curvature tasks/s | gradient tasks/s | s/target | Spearman vs cpu f64 | max rel. score diff | k | edit Δloss (mean) | max |Δ edit| vs cpu f64 | train s/step |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for (d, t), r in rows.items():
                rho = np.mean([spearmanr(x, y).statistic for x, y in zip(r["scores"], ref["scores"], strict=True)])
                rel = float(np.abs(r["scores"] - ref["scores"]).max() / np.abs(ref["scores"]).max())
                dedit = float(np.abs(r["edit_dloss"] - ref["edit_dloss"]).max())
                steps = f"{train_speed(run_dir, d, tmp, a.train_steps):.3f}" if t == dtypes[0] else "—"
                print(f"| {d} | {t} | {r['fit_s']:.1f} | {r.get('curvature_tasks_per_s', float('nan')):.1f} | "
                      f"{r.get('gradients_tasks_per_s', float('nan')):.1f} | {r['score_s_per_target']:.4f} | {rho:.4f} | {rel:.1e} | "
                      f"{r['truncation']} | {r['edit_dloss'].mean():+.4f} | {dedit:.1e} | {steps} |")  # fmt: skip


if __name__ == "__main__":
    main()
