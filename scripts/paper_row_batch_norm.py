"""Would batch norm with running statistics explain a paper row's training accuracy? (issue 23)

TLXML Table 11 gives ProtoNet's *training* accuracy below 1 where noise tasks are many (0.986 ± 0.004
at M = 512 with 64 noise tasks, 0.928 ± 0.002 at 1,024 with 128): the paper's models did not fit
every noise task. Ours, whose batch norm normalises each set by its own statistics (transductive),
fit all of them (1.000). learn2learn's ProtoNet example, whose learning rate our rows take, evaluates
in ``model.eval()``: batch norm then uses running statistics gathered during training. This script
keeps the trained weights, gathers such running statistics by passing the training tasks' support and
query sets through the network in training mode, as training did, and evaluates every training and
test task with them, for two estimates of the statistics:

- ``cumulative``: the plain average over every set of every training task (momentum None);
- ``ema``: PyTorch's default momentum 0.1 over the sets of the training tasks in a seeded random order
  (what the last few meta-batches of training leave behind).

Writes ``batch_norm.json`` beside the run's ``row.json``; prints the table. CPU seconds, no training.

    python scripts/paper_row_batch_norm.py om-protonet-512 0
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metainf_core.io import write_json_atomic  # noqa: E402
from metainf_core.learners import prototype_logits  # noqa: E402
from metainf_core.reproduce.rows import get_row, run_dir  # noqa: E402
from metainf_core.service import open_run  # noqa: E402

OUT_FILE = "batch_norm.json"


def with_running_statistics(model: nn.Module, params: dict[str, torch.Tensor], momentum: float | None) -> nn.Module:
    """A copy of ``model`` carrying ``params`` whose batch norms track running statistics (fresh buffers)."""
    net = copy.deepcopy(model)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats, m.momentum = True, momentum
            m.register_buffer("running_mean", torch.zeros(m.num_features))
            m.register_buffer("running_var", torch.ones(m.num_features))
            m.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
    missing, unexpected = net.load_state_dict(params, strict=False)
    assert not unexpected and all("running" in k or "num_batches" in k for k in missing), (missing, unexpected)
    return net


@torch.no_grad()
def gather_statistics(net: nn.Module, run, order: np.ndarray) -> None:
    """Training-mode forward passes of each task's support set, then its query set (as training embeds them)."""
    net.train()
    for j in order:
        b = run.train_tasks.batch([int(j)], run.dataset)
        net(b.support_x[0])
        net(b.query_x[0])


@torch.no_grad()
def per_task(net: nn.Module, taskset, run, *, train_mode: bool) -> tuple[np.ndarray, np.ndarray]:
    """Query accuracy and loss of every task of ``taskset``: batch norm on each set's own statistics
    (``train_mode``, how the run was trained and is evaluated here; it also moves ``net``'s running
    statistics, so gather them on another copy) or on the running ones."""
    net.train(train_mode)
    acc, loss = [], []
    for j in range(len(taskset)):
        b = taskset.batch([j], run.dataset)
        logits = prototype_logits(net(b.support_x[0]).flatten(1), b.support_y[0], net(b.query_x[0]).flatten(1), run.spec.ways)
        acc.append(float((logits.argmax(1) == b.query_y[0]).float().mean()))
        loss.append(float(F.cross_entropy(logits, b.query_y[0])))
    return np.asarray(acc), np.asarray(loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row")
    ap.add_argument("seed", type=int)
    ap.add_argument("--order-seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(0)
    row = get_row(a.row)
    directory = run_dir(row, a.seed)
    run = open_run(directory, device="cpu")
    if run.spec.algo != "protonet":
        raise SystemExit("this check evaluates ProtoNet runs (MAML's inner step would need the running statistics too)")
    params = {k: v.detach().cpu() for k, v in run.params.items()}
    noise = np.zeros(len(run.train_tasks), dtype=bool)
    noise[run.train_tasks.ids_with("noise")] = True
    started = time.time()
    out: dict = {"row": row.key, "seed": a.seed, "paper_train_accuracy": list(row.train_accuracy),
                 "paper_test_accuracy": list(row.accuracy), "noise_tasks": int(noise.sum()), "train_tasks": len(noise)}  # fmt: skip
    transductive = with_running_statistics(run.model, params, None)
    tr_acc, tr_loss = per_task(transductive, run.train_tasks, run, train_mode=True)
    te_acc, _ = per_task(transductive, run.test_tasks, run, train_mode=True)
    out["own_statistics"] = {"train": float(tr_acc.mean()), "train_normal": float(tr_acc[~noise].mean()),
                             "train_noise": float(tr_acc[noise].mean()), "test": float(te_acc.mean()),
                             "train_loss_normal": float(tr_loss[~noise].mean()), "train_loss_noise": float(tr_loss[noise].mean())}  # fmt: skip
    order = np.random.default_rng(a.order_seed).permutation(len(noise))
    for name, momentum in (("cumulative", None), ("ema", 0.1)):
        net = with_running_statistics(run.model, params, momentum)
        gather_statistics(net, run, order)
        tr_acc, tr_loss = per_task(net, run.train_tasks, run, train_mode=False)
        te_acc, _ = per_task(net, run.test_tasks, run, train_mode=False)
        out[name] = {"train": float(tr_acc.mean()), "train_normal": float(tr_acc[~noise].mean()), "train_noise": float(tr_acc[noise].mean()),
                     "test": float(te_acc.mean()), "train_loss_normal": float(tr_loss[~noise].mean()),
                     "train_loss_noise": float(tr_loss[noise].mean())}  # fmt: skip
    # what the paper's training accuracy implies for its noise tasks, if its normal tasks were fit as ours are
    p = row.train_accuracy[0]
    out["paper_implied_noise_accuracy_if_normal_as_ours"] = (p * len(noise) - out["own_statistics"]["train_normal"] * (~noise).sum()) / noise.sum()
    out["seconds"] = round(time.time() - started, 1)
    write_json_atomic(directory / OUT_FILE, out)
    print(f"{row.key} seed {a.seed}: training accuracy (normal / noise tasks), test accuracy; paper: training {p:.3f}, test {row.accuracy[0]:.3f}")
    for name in ("own_statistics", "cumulative", "ema"):
        r = out[name]
        print(f"  {name:15s} train {r['train']:.3f} ({r['train_normal']:.3f} / {r['train_noise']:.3f}), test {r['test']:.3f}, "
              f"loss normal {r['train_loss_normal']:.3f} / noise {r['train_loss_noise']:.3f}")
    print(f"  the paper's {p:.3f} means noise-task accuracy ≈ {out['paper_implied_noise_accuracy_if_normal_as_ours']:.3f} (normal tasks fit as ours)")
    print(f"  wrote {directory / OUT_FILE} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
