"""Large-backbone curvature (issue 13 item 5): sketched / parameter-group GN fits against the full
fit, and the cost of fitting big backbones. Prints figures, asserts nothing.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_projection.py [--dims 256,1024,4096] [--groups features.3]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_projection.py --resnet12 [--max-tasks 4] [--resnet-dim 4096] [--rows-per-task 4]
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_projection.py --cnn4-mini [--budget-s 600]

Part 1 (default): the bundled ProtoNet demo (conv4×16, q = 7,248, fashion-mnist, M = 512 training
tasks of which 64 are noise, 128 test tasks), GN N_orth = 512, float32. Each fit runs in its own
subprocess (so ru_maxrss is that fit's peak) through ``fits.fit_influence`` with its cache in
``.cache/bench_projection`` (a rerun reuses the fits and reports their recorded times). Per setting:
Spearman and top-10 overlap of the helpfulness of all 512 training tasks against the full fit
(mean ± sd over the 128 test tasks), mean self-rank at the chosen truncation, the noise proper
test (normal tasks should score above noise tasks), seconds per training task, peak RSS.

Part 2 (--resnet12): learn2learn's ResNet-12 backbone (wider: 64-160-320-640, avg-pool, 12.4M
parameters, randomly initialised — cost does not depend on the weights) as a ProtoNet on
Tiny-ImageNet 32×32 (``../shared/data/tiny_imagenet32``), 5-way 5-shot 5-query, eval mode (no
DropBlock/dropout), batch norm on batch statistics (running stats removed), the final
AvgPool2d(5) (sized for 84×84) replaced by a global average pool (32×32 inputs end in 2×2 maps); GN with a CountSketch
to ``--resnet-dim`` on the first ``--max-tasks`` of M = 256 training tasks (all by default), then P for them;
``--rows-per-task S`` streams S random combinations of each task's 100 columns (S backward passes).
Part 3 (--cnn4-mini): conv4 with 64 filters (q = 113,088) ProtoNet on mini-ImageNet 84×84 5-way
5-shot 5-query, full GN (no sketch), as many of M = 1,024 tasks as fit in ``--budget-s``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metainf_core.config import InfluenceConfig, TaskConfig  # noqa: E402
from metainf_core.data import load_dataset  # noqa: E402
from metainf_core.influence import GaussNewtonConfig, GaussNewtonFit, task_gradients  # noqa: E402
from metainf_core.learners import LearnerSpec, params_of  # noqa: E402
from metainf_core.tasks import make_taskset  # noqa: E402

DEMO = REPO / "assets" / "demo" / "protonet-fashion-mnist"
CACHE = REPO / ".cache" / "bench_projection"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- part 1 -------------------------------------------------------------------------------------
def _one_fit(cfg_dict: dict) -> None:
    """Subprocess: fit one setting on the demo (or find it cached) and print its cost as JSON."""
    from metainf_core.fits import cache_entry, fit_influence
    from metainf_core.service import open_run

    run = open_run(DEMO, device="cpu")
    cfg = InfluenceConfig.from_dict(cfg_dict)
    cached = cache_entry(run, cfg).complete
    t = time.perf_counter()
    fit_influence(run, cfg)
    seconds = time.perf_counter() - t
    _, info = cache_entry(run, cfg).load()
    print(json.dumps({"seconds": info.get("fit_seconds", seconds), "cached": cached, "rss_mb": peak_rss_mb(),
                      "num_tasks": len(run.train_tasks)}))  # fmt: skip


def part_demo(a: argparse.Namespace) -> None:
    from metainf_core.fits import cache_entry, fit_influence
    from metainf_core.service import open_run
    from metainf_core.validate import spearman, top_k_overlap, validation_report

    base = dict(dtype="float32", n_orth=512, self_rank_sample=255)  # 255: its own cache key (not the shipped fit), so it is timed too
    settings = [("full", {})] + [(f"sketch d={d}", {"projection_dim": d}) for d in a.dims]
    settings += [(f"groups {','.join(a.groups)}", {"param_groups": tuple(a.groups)})]
    settings += [(f"rows s={r}", {"rows_per_task": r}) for r in a.rows]
    settings += [(f"rows s={a.rows[0]}, sketch d={a.dims[1]}", {"rows_per_task": a.rows[0], "projection_dim": a.dims[1]})] if a.rows and len(a.dims) > 1 else []
    env = {**os.environ, "METAINF_CACHE": str(CACHE)}
    run = open_run(DEMO, device="cpu")
    q = sum(v.numel() for v in run.params.values())
    print(f"ProtoNet demo: q = {q:,}, M = {len(run.train_tasks)} ({len(run.train_tasks.ids_with('noise'))} noise), "
          f"{len(run.test_tasks)} test tasks, N_orth = 512, float32, torch threads = {torch.get_num_threads()}")  # fmt: skip
    os.environ["METAINF_CACHE"] = str(CACHE)
    g = task_gradients(run.model, run.spec, {k: v.float() for k, v in run.params.items()}, run.test_tasks, run.dataset)
    header = (f"\n{'setting':<24} {'Spearman vs full':>17} {'top-10 overlap':>15} {'k':>4} {'self-rank':>10} "
              f"{'noise test (proper/T, z)':>25} {'s/task':>7} {'peak RSS':>9}")  # fmt: skip
    rows, ref = [], None
    for name, extra in settings:
        cfg = InfluenceConfig(**base, **extra)
        if a.cached_only and not cache_entry(run, cfg).complete:
            print(f"{name}: not fitted yet (--cached-only)")
            continue
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg.to_dict())], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        cost = json.loads(out.stdout.strip().splitlines()[-1])
        inf = fit_influence(run, cfg)
        scores = inf.helpfulness(g).numpy()
        if ref is None:
            ref = scores
        rho = np.array([spearman(r, s) for r, s in zip(ref, scores, strict=True)])
        top = np.array([top_k_overlap(r, s, 10) for r, s in zip(ref, scores, strict=True)])
        rep = validation_report(run, inf, cfg, self_rank=True, noise=True, superclass=False, exact_agreement=False)
        rows.append((name, rho, top, rep, cost, inf))
    print(header)
    for name, rho, top, rep, cost, inf in rows:
        nz = rep.get("noise", {})
        noise = f"{nz['proper']}/{nz['total']} ({nz['z']:+.1f}σ)" if "proper" in nz else str(nz)[:25]
        sr = rep["self_rank_at_truncation"]["mean"]
        tag = " (recorded)" if cost["cached"] else ""
        print(f"{name:<24} {rho.mean():>8.3f} ± {rho.std():.3f} {top.mean():>8.3f} ± {top.std():.2f} {inf.truncation:>4} {sr:>10.1f} "
              f"{noise:>25} {cost['seconds'] / cost['num_tasks']:>7.3f}{tag} {cost['rss_mb']:>6.0f} MB")  # fmt: skip
    print("(Spearman/top-10: against the full fit, mean ± sd over the test tasks; self-rank: mean rank of a training task "
          f"for itself among {len(run.train_tasks)}, 0 = top, random {(len(run.train_tasks) - 1) / 2:.1f}; s/task: whole fit "
          "(curvature + gradients + truncation) / M; peak RSS of the fitting subprocess)")  # fmt: skip


# ---- parts 2 and 3: big backbones -----------------------------------------------------------------
def _resnet12() -> torch.nn.Module:
    from learn2learn.vision.models.resnet12 import ResNet12Backbone

    from metainf_core.models import to_batch_statistics

    net = ResNet12Backbone(avg_pool=True, wider=True, embedding_dropout=0.0, dropblock_dropout=0.0, channels=3)
    net.avgpool = torch.nn.AdaptiveAvgPool2d(1)  # its AvgPool2d(5) is for 84×84 inputs (5×5 maps); 32×32 gives 2×2
    return to_batch_statistics(net)[0]  # batch statistics, as MAML/ProtoNet training here; eval mode (no DropBlock)


def _stream(name: str, model, dataset: str, m: int, cfg: GaussNewtonConfig, max_tasks: int, budget_s: float, grad_batch: int) -> None:
    ds = load_dataset(dataset)
    ts = make_taskset(ds, TaskConfig(dataset=dataset, ways=5, shots=5, queries=5, train_tasks=m, test_tasks=8), "train")
    spec = LearnerSpec("protonet", 5)
    params = {k: v.detach() for k, v in params_of(model).items()}
    q = sum(v.numel() for v in params.values())
    print(f"{name}: q = {q:,}, {dataset} 5-way 5-shot 5-query, M = {m}, sketch d = {cfg.projection_dim or 'none'}, "
          f"groups = {','.join(cfg.param_groups) or 'all'}, rows per task = {cfg.rows_per_task or 'all (100)'}, N_orth = {cfg.n_orth}, "
          f"float32, torch threads = {torch.get_num_threads()}", flush=True)  # fmt: skip
    t = time.perf_counter()
    fit = GaussNewtonFit(model, spec, params, ts, ds, cfg)
    setup = time.perf_counter() - t
    times = []
    start = time.perf_counter()
    for j in range(min(max_tasks, m)):
        t = time.perf_counter()
        fit.add_tasks([j])
        times.append(time.perf_counter() - t)
        print(f"  task {j}: {times[-1]:.1f} s (buffer {fit.num_buffered} × {fit.row_dim}), peak RSS {peak_rss_mb():.0f} MB", flush=True)
        if time.perf_counter() - start + (np.mean(times)) > budget_s:
            break
    n = len(times)
    t = time.perf_counter()
    factor = fit.factor()
    t_factor = time.perf_counter() - t
    t = time.perf_counter()
    ids = np.arange(n)
    for i in range(0, n, grad_batch):
        g = task_gradients(model, spec, params, ts, ds, ids[i : i + grad_batch], grad_batch)
        _ = (g if fit.space is None else fit.space.reduce(g)) @ factor.factor
    t_grad = (time.perf_counter() - t) / n
    per_task = float(np.mean(times[1:] if n > 1 else times))
    print(f"  measured on {n} tasks: curvature {per_task:.2f} s/task (first task {times[0]:.2f} s incl. warm-up), "
          f"P = Uᵀ R g_j {t_grad:.2f} s/task, factor {t_factor:.2f} s, setup (sketch hash) {setup:.2f} s, "
          f"U {tuple(factor.factor.shape)}, peak RSS {peak_rss_mb():.0f} MB")  # fmt: skip
    if n == m:
        print(f"  MEASURED, all M = {m} tasks: {(sum(times) + t_grad * n) / 60:.1f} min (curvature + gradients)", flush=True)
    else:
        print(f"  EXTRAPOLATED to M = {m}: {(per_task + t_grad) * m / 60:.1f} min on this machine "
              f"((curvature + gradient) per task × {m}; not measured)", flush=True)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="256,1024,4096")
    p.add_argument("--groups", default="features.3", help="comma-separated parameter-name prefixes for the group row")
    p.add_argument("--resnet12", action="store_true")
    p.add_argument("--max-tasks", type=int, default=0, help="parts 2–3: stream at most this many tasks (0: M; --budget-s also stops)")
    p.add_argument("--resnet-dim", type=int, default=4096)
    p.add_argument("--resnet-groups", default="", help="e.g. layer4: influence w.r.t. the last block only (backprop stops there)")
    p.add_argument("--rows", default="4,8", help="part 1: rows-per-task settings (random combinations of a task's 30 columns)")
    p.add_argument("--rows-per-task", type=int, default=0, help="parts 2–3: S random combinations of each task's 100 columns (0: all)")
    p.add_argument("--cnn4-mini", action="store_true")
    p.add_argument("--budget-s", type=float, default=600)
    p.add_argument("--cached-only", action="store_true", help="part 1: only the settings already fitted (a partial table)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return _one_fit(json.loads(a.one))
    a.dims = [int(d) for d in a.dims.split(",") if d]
    a.groups = [g for g in a.groups.split(",") if g]
    a.rows = [int(r) for r in a.rows.split(",") if r]
    if a.resnet12:
        groups = tuple(g for g in a.resnet_groups.split(",") if g)
        cfg = GaussNewtonConfig(n_orth=512, projection_dim=a.resnet_dim, param_groups=groups, rows_per_task=a.rows_per_task)
        _stream("ResNet-12 ProtoNet", _resnet12(), "tiny-imagenet", 256, cfg, a.max_tasks or 256, a.budget_s, grad_batch=1)
    if a.cnn4_mini:
        from metainf_core.models import build_model

        model = build_model("conv4", "protonet", (3, 84, 84), 5, filters=64)
        cfg = GaussNewtonConfig(n_orth=512, rows_per_task=a.rows_per_task)
        _stream("CNN4-64 ProtoNet", model, "mini-imagenet", 1024, cfg, a.max_tasks or 1024, a.budget_s, grad_batch=4)
    if not (a.resnet12 or a.cnn4_mini):
        part_demo(a)


if __name__ == "__main__":
    main()
