"""Issue 23 item 5: rerun the medium noise setting with only the dataset (or seed) changed
(``metainf_core.reproduce.dataset_check``), then re-render the report.

    OMP_NUM_THREADS=1 python scripts/medium_dataset_check.py omniglot:5 protonet 0
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, as the benches

from metainf_core.reproduce.dataset_check import run_check  # noqa: E402

if __name__ == "__main__":
    spec, algo, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dataset, ways = spec.split(":")
    r = run_check("docs/results", dataset, int(ways), algo, seed)
    print(f"{algo} {dataset} seed {seed}: accuracy {r['accuracy']:.3f}, proper {r['noise']['proper']} / {r['noise']['total']}, z {r['noise']['z']:+.2f}")
