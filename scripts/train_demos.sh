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
# What each demo ships so a fresh clone answers at once: the app's default influence fit
# (Gauss-Newton, N_orth 512, float32; stored float16), the Landscape page's default diagnostics (16 test tasks)
# the Compare page's test tables of its default pair (ui.COMPARE_CONFIG's settings; TLXML's is the Audit
# page's table of the fit), and what scripts/ship_demo_defaults.py lists (the model as trained, the Audit
# page's default removals, the Edit page's default block for every test task).
for demo in protonet-fashion-mnist maml-fashion-mnist; do
  $PY -m metainf_core fit assets/demo/$demo --method gn --n-orth 512 --dtype float32 --ship --quiet > /dev/null
  $PY -m metainf_core diagnose assets/demo/$demo --tasks 16 --ship --quiet > /dev/null
  $PY -m metainf_core compare assets/demo/$demo --tables --methods tlxml-gn,grad-sim --dtype float32 --solver dense --ship --quiet > /dev/null
  $PY scripts/ship_demo_defaults.py assets/demo/$demo
done
