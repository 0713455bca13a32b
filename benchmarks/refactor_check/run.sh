#!/usr/bin/env bash
# Usage: benchmarks/refactor_check/run.sh OLD_COMMIT NEW_TREE   (e.g. a61a028 .)
# Same params, same data: run the tiny pipeline's stages with the code of commit $1 (the pre-refactor a61a028)
# and of the working tree $2, then compare every metric, weight and sample bit for bit.
set -euo pipefail
SCRIPT_DIR=$(dirname "$(readlink -f "$0")"); OLD_COMMIT=$1; NEW_TREE=$(readlink -f "$2"); OUT=${OUT:-/tmp/refactor_check}
PY=${PY:-$(git -C "$NEW_TREE" rev-parse --show-toplevel)/.venv/bin/python}
rm -rf $OUT/old_code $OUT/old $OUT/new; mkdir -p $OUT/old_code
git -C "$NEW_TREE" archive $OLD_COMMIT components pipelines params.yaml | tar -x -C $OUT/old_code
for v in old new; do
  code=$([ $v = old ] && echo $OUT/old_code || echo $NEW_TREE)
  mkdir -p $OUT/$v/reports
  $PY - "$code/params.yaml" "$OUT/$v/params.yaml" <<'PYEOF'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
p["base"]["device"] = "cpu"
p["ingest"]["max_per_class"] = 60
p["validate"].update(min_rows_train=100, min_rows_val=10)
p["train_autoencoder"].update(max_images=1280, batch_size=32, warmup_images=200)
p["train_diffusion"].update(max_images=2560, batch_size=64, warmup_images=500, log_every=5)
p["train_diffusion"]["unet"].update(preset="res-clsAtn-chnAtn", channels=[16, 32], num_heads=2)
p["sample"].update(num_per_class=4, steps=10)
p["evaluate"].update(classifier_epochs=6, classifier_batch_size=32, kid_subsets=10,
                     quality_grid={"samplers": ["ddim", "dpmpp_2m"], "steps": [3], "num_per_class": 2})
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PYEOF
  cd $OUT/$v
  for stage in ingest validate train_autoencoder train_diffusion "sample --out samples --grid reports/samples_grid.png" reference_stats evaluate; do
    echo "== $v: latentflow $stage"
    PYTHONPATH=$code $PY -m pipelines.cli $stage > log_${stage%% *}.txt 2>&1 || { tail -20 log_${stage%% *}.txt; exit 1; }
  done
done
cd $OUT
echo "== compare"
$PY "$SCRIPT_DIR/compare.py" old new
