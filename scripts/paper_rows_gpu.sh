#!/usr/bin/env bash
# One `device` call trains and fits the next unfinished TLXML Table 9/11 runs on a GPU (issue 23 item 8).
#
#   here, once:       bash scripts/paper_rows_gpu.sh --prepare
#                     (copies Omniglot from ../shared/data into .gpu/, which git ignores: ../shared does not travel)
#   device call:      command "bash scripts/paper_rows_gpu.sh", carry [".gpu"], timeout_s 600
#   back here:        tar -xzf <files_at>/paper-rows.tar.gz -C docs/results/paper && git add docs/results/paper
#
# It copies the committed run folders (docs/results/paper/<row>/seed<k>/) to a scratch folder,
# works down rows.SCHEDULE with `reproduce --rows schedule` on CUDA (finished runs skipped, a
# half-trained run resumed from its Adam state) until MINUTES (default 8, inside the 10-minute
# call limit) have passed, when SIGTERM makes training save the step it finished; then it packs
# every run folder into $OUT/paper-rows.tar.gz (one file: the call returns at most 8) and prints
# the rows' table. Nothing else depends on a GPU: the same command runs on the CPU (DEVICE=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .gpu/shared/omniglot
    cp ../shared/data/omniglot/{images_background.npz,images_evaluation.npz,alphabets.csv,LICENSE} .gpu/shared/omniglot/
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    du -sh .gpu
    exit 0
fi

: "${OUT:?set OUT to the folder whose files come back}"
MINUTES="${MINUTES:-8}"
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
SCRATCH="$(mktemp -d)"
export METAINF_SHARED_DATA="${METAINF_SHARED_DATA:-$PWD/.gpu/shared}"
export METAINF_DATA="$SCRATCH/data" METAINF_CACHE="$SCRATCH/cache" PYTHONUNBUFFERED=1
mkdir -p "$SCRATCH/paper"
[[ -d docs/results/paper ]] && cp -r docs/results/paper/. "$SCRATCH/paper/"

"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
started=$(date +%s)
status=0
timeout -s TERM "$(awk "BEGIN {print int($MINUTES * 60)}")" \
    "$PYTHON" -m metainf_core reproduce --scale paper --only e2-noise --rows schedule --rows-root "$SCRATCH/paper" \
    --device "$DEVICE" > "$OUT/paper-rows.json" 2> >(tee "$OUT/paper-rows.log" >&2) || status=$?
echo "reproduce --rows schedule: exit status $status after $(( $(date +%s) - started )) s (124 or 2: stopped at the time limit, state saved)"
tar -czf "$OUT/paper-rows.tar.gz" -C "$SCRATCH/paper" .
"$PYTHON" - "$SCRATCH/paper" <<'PY'
import sys
from metainf_core.reproduce.report import render_paper_rows
from metainf_core.reproduce.rows import collect
print(render_paper_rows(collect(sys.argv[1])))
PY
rm -rf "$SCRATCH"
