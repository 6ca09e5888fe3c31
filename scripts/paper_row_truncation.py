"""Issue 23 item 5, one knob at a time: a finished paper row's noise proper tests at every truncation
k of its Gauss-Newton fit (the self-rank search's candidates), without refitting. Writes
``by_truncation.json`` beside the row's ``row.json`` and prints the table.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/paper_row_truncation.py om-protonet-512 0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metainf_core.fits import fit_influence  # noqa: E402
from metainf_core.io import write_json_atomic  # noqa: E402
from metainf_core.reproduce.rows import RESULT_FILE, get_row, influence_config, run_dir  # noqa: E402
from metainf_core.service import open_run  # noqa: E402
from metainf_core.validate import noise_tests_by_truncation  # noqa: E402


def main(row_key: str, seed: int) -> None:
    row = get_row(row_key)
    directory = run_dir(row, seed)
    result = json.loads((directory / RESULT_FILE).read_text(encoding="utf-8"))  # the row is evaluated: its fit is cached
    cfg = influence_config(row)
    run = open_run(directory)
    inf = fit_influence(run, cfg)
    ks = [int(r["k"]) for r in result["self_rank_table"]]
    rows = noise_tests_by_truncation(run, inf, cfg.dtype, ks)
    self_rank = {int(r["k"]): r["mean_self_rank"] for r in result["self_rank_table"]}
    out = {"row": row.key, "seed": seed, "chosen_k": result["truncation"], "paper_proper": list(row.proper), "paper_z": list(row.z),
           "by_truncation": [{**r, "mean_self_rank": self_rank[r["k"]]} for r in rows]}  # fmt: skip
    write_json_atomic(directory / "by_truncation.json", out)
    print(f"{row.key} seed {seed}: proper tests at each truncation k (chosen k = {result['truncation']:,}; "
          f"paper {row.proper[0]} ± {row.proper[1]}, {row.z[0]:+.1f}σ)")
    for r in out["by_truncation"]:
        print(f"  k = {r['k']:>5,}  mean self-rank {r['mean_self_rank']:6.2f}  proper {r['proper']:>3} / {r['total']}  z = {r['z']:+.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
