#!/usr/bin/env bash
# Re-creates the bundled demo checkpoints in assets/demo/ (the exact commands quoted in README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
COMMON=(--dataset fashion-mnist --arch conv4 --filters 16 --ways 3 --shots 5 --queries 5
        --train-tasks 512 --test-tasks 128 --noise-tasks 64 --checkpoint-every 50 --keep-history --device cpu)
$PY -m metainf_core train "${COMMON[@]}" --algo protonet --steps 600 --meta-batch 16 --lr 0.002 \
    --out assets/demo/protonet-fashion-mnist "$@"
$PY -m metainf_core train "${COMMON[@]}" --algo maml --inner-lr 0.4 --inner-steps 1 --steps 600 --meta-batch 8 --lr 0.002 \
    --out assets/demo/maml-fashion-mnist "$@"
