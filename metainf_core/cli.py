"""``python -m metainf_core COMMAND``: JSON on stdout, a one-line reason on stderr on failure."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from metainf_core.config import TaskConfig, TrainConfig
from metainf_core.exceptions import MetainfError


def _train(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.checkpoint import read_meta
    from metainf_core.train import train

    task_cfg = TaskConfig(
        dataset=a.dataset, ways=a.ways, shots=a.shots, queries=a.queries, train_tasks=a.train_tasks,
        test_tasks=a.test_tasks, seed=a.task_seed, noise_tasks=a.noise_tasks, label_flip_tasks=a.label_flip_tasks,
    )  # fmt: skip
    train_cfg = TrainConfig(
        algo=a.algo, arch=a.arch, filters=a.filters, steps=a.steps, meta_batch=a.meta_batch, lr=a.lr,
        inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, seed=a.seed,
        checkpoint_every=a.checkpoint_every, keep_history=a.keep_history,
    )  # fmt: skip
    out = train(task_cfg, train_cfg, a.out, resume=a.resume, device=a.device, progress=not a.quiet)
    meta = read_meta(out)
    return {"out": str(out), "step": meta["step"], "test": meta["test"], "num_parameters": meta["num_parameters"]}


def _info(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(a.path)  # verifies hashes and shapes, loads tensors safely
    meta = dict(ckpt.meta)
    if not a.full:
        meta["curve"] = f"{len(meta.get('curve', []))} points (--full to print)"
    return meta


def _evaluate(a: argparse.Namespace) -> dict[str, Any]:
    from metainf_core.service import open_run

    run = open_run(a.path, device=a.device)
    result = {"test": run.evaluate(split="test").summary()}
    if a.train:
        result["train"] = run.evaluate(split="train").summary()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m metainf_core", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="meta-train MAML or ProtoNet on fixed tasksets")
    td, rd = TaskConfig(), TrainConfig()
    t.add_argument("--dataset", default=td.dataset)
    t.add_argument("--algo", choices=["maml", "protonet"], default=rd.algo)
    t.add_argument("--arch", choices=["conv3", "conv4", "mlp", "mlp-synthetic"], default=rd.arch)
    t.add_argument("--filters", type=int, default=rd.filters)
    for name in ("ways", "shots", "queries", "train_tasks", "test_tasks", "noise_tasks", "label_flip_tasks"):
        t.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(td, name))
    t.add_argument("--task-seed", type=int, default=td.seed, help="seed of the fixed tasksets")
    t.add_argument("--steps", type=int, default=rd.steps, help="meta-batches to train on")
    t.add_argument("--meta-batch", type=int, default=rd.meta_batch)
    t.add_argument("--lr", type=float, default=rd.lr, help="Adam learning rate (outer)")
    t.add_argument("--inner-lr", type=float, default=rd.inner_lr, help="MAML inner step size α")
    t.add_argument("--inner-steps", type=int, default=rd.inner_steps)
    t.add_argument("--first-order", action="store_true")
    t.add_argument("--seed", type=int, default=rd.seed, help="initialisation and meta-batch seed")
    t.add_argument("--checkpoint-every", type=int, default=rd.checkpoint_every)
    t.add_argument("--keep-history", action="store_true", help="also keep ω at every checkpoint (diagnostics)")
    t.add_argument("--out", required=True)
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_train)

    i = sub.add_parser("info", help="print a checkpoint's metadata (verified, never unpickled)")
    i.add_argument("path")
    i.add_argument("--full", action="store_true", help="include the training curve")
    i.set_defaults(func=_info)

    e = sub.add_parser("evaluate", help="test accuracy and loss over the test taskset")
    e.add_argument("path")
    e.add_argument("--train", action="store_true", help="also evaluate on the training taskset")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (MetainfError, FileNotFoundError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
