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
# page's table of the fit), the model as trained and the Audit page's default random removals.
for demo in protonet-fashion-mnist maml-fashion-mnist; do
  $PY -m metainf_core fit assets/demo/$demo --method gn --n-orth 512 --dtype float32 --ship --quiet > /dev/null
  $PY -m metainf_core diagnose assets/demo/$demo --tasks 16 --ship --quiet > /dev/null
  $PY -m metainf_core compare assets/demo/$demo --tables --methods tlxml-gn,grad-sim --dtype float32 --solver dense --ship --quiet > /dev/null
  # the model as trained (every page's "before") and the Audit page's default removals: for each score kind the
  # 64 most suspicious and the 5 random 64-sets (xi -1, seed 0), so its default click reads them
  $PY - assets/demo/$demo <<'PYEOF'
import sys
from metainf_core.detect import SCORE_KINDS, detection_scores, removal_sets, stored_blocked_evaluation
from metainf_core.fits import edit_metrics_entry, fit_influence, test_scores_entry
from metainf_core.ranking import fit_test_table
from metainf_core.service import open_run
from ui import DEFAULT_INFLUENCE
run = open_run(sys.argv[1])
run.as_trained
run.as_trained_entry().ship(run.checkpoint.path)
inf = fit_influence(run, DEFAULT_INFLUENCE)
table = fit_test_table(run, inf, DEFAULT_INFLUENCE.dtype, test_scores_entry(run, DEFAULT_INFLUENCE))
sets = {tuple(int(j) for j in ids) for kind in SCORE_KINDS
        for ids in removal_sets(detection_scores(run, inf, DEFAULT_INFLUENCE.dtype, kind, table), 64, 5, 0)}
for ids in sorted(sets):
    stored_blocked_evaluation(run, inf, DEFAULT_INFLUENCE, ids, -1.0)
    edit_metrics_entry(run, DEFAULT_INFLUENCE, ids, -1.0).ship(run.checkpoint.path)
PYEOF
done
