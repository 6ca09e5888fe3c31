"""Issue 23 item 5: does the medium-scale noise-task failure (e2-noise.medium: fashion-mnist 3-way,
conv4 ProtoNet × 16 filters, M = 1,024, z = +0.7) come from the dataset or the method?

Reruns exactly the medium configuration (``experiments.MEDIUM["e2-noise"]``) with one thing
changed: the dataset (Omniglot 5-way instead of Fashion-MNIST 3-way), per seed, and writes each
run's proper-test count and z to ``docs/results/medium-dataset/<dataset>-<algo>-s<seed>.json``
(resumable: a finished JSON is skipped; runs are kept in the reproduce work folder).

    OMP_NUM_THREADS=1 python scripts/medium_dataset_check.py omniglot:5 protonet 0
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from metainf_core.io import write_json_atomic
from metainf_core.reproduce.experiments import MEDIUM, Context, _configs, _validation, noise_count

OUT = Path(__file__).resolve().parent.parent / "docs" / "results" / "medium-dataset"


def main(spec: str, algo: str, seed: int) -> None:
    dataset, ways = spec.split(":")
    c = MEDIUM["e2-noise"]
    m = c["train_tasks"][0]
    path = OUT / f"{dataset}-{algo}-s{seed}.json"
    if path.is_file():
        print(f"{path} exists")
        return
    ctx = Context(work=Path(".cache/metainf/reproduce"), log=print)
    task_cfg, train_cfg = _configs(c, dataset=dataset, ways=int(ways), algo=algo, seed=seed, train_tasks=m, noise=noise_count(c, m))
    t0 = time.time()
    run = ctx.run(task_cfg, train_cfg)
    t1 = time.time()
    rep = _validation(run, c)
    result = {"dataset": dataset, "ways": int(ways), "algo": algo, "seed": seed, "train_tasks": m, "noise_tasks": noise_count(c, m),
              "medium_config": c, "accuracy": run.meta["test"]["accuracy"], "noise": rep["noise"],
              "train_seconds": t1 - t0, "fit_and_validate_seconds": time.time() - t1}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    print(json.dumps({k: result[k] for k in ("dataset", "algo", "seed", "accuracy")} | {"z": rep["noise"]["z"], "proper": rep["noise"]["proper"]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
