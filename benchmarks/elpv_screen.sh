#!/usr/bin/env bash
# One screen on the quickstart's ELPV data: pretrain CONFIG with OVERRIDES on every cell (no labels), export, and
# kNN k=20 of the export and of its random init on the defect labels (1,000 train / 400 val cells of the
# quickstart's split). The table in docs/benchmarks.md ("ELPV") was made with it.
#   bash benchmarks/elpv_screen.sh NAME CONFIG [OVERRIDES...]
#   bash benchmarks/elpv_screen.sh v2 configs/dinov2_vit_tiny_cpu.yaml run.seed=1
# MAX_TRAIN / MAX_VAL (default 1000 / 400) cap the labelled cells scored; the whole split is 1,968 / 656
# (MAX_TRAIN=2000 MAX_VAL=700). LINEAR=1 adds the linear probe (2 probe seeds) of both models.
# Output: runs/elpv_screen/NAME/{run,export,knn} and a line in runs/elpv_screen/results.txt.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
[ $# -ge 2 ] || { echo "usage: bash benchmarks/elpv_screen.sh NAME CONFIG [OVERRIDES...]" >&2; exit 2; }
NAME=$1; CFG=$2; shift 2
MAX_TRAIN=${MAX_TRAIN:-1000}; MAX_VAL=${MAX_VAL:-400}; LINEAR=${LINEAR:-0}
OUT=runs/elpv_screen
if [ ! -d "$OUT/shards" ]; then
  python -c "from selfsup.examples.elpv import prepare_elpv; print(prepare_elpv('$OUT/data'))"
  selfsup shard "$OUT/data/unlabelled" "$OUT/shards" --max-per-shard 256
fi
start=$(date +%s)
selfsup pretrain "$CFG" run.dir="$OUT/$NAME/run" data.shards="$OUT/shards" train.progress=false run.overwrite=true "$@"
secs=$(( $(date +%s) - start ))
selfsup export "$OUT/$NAME/run" "$OUT/$NAME/export"
selfsup-eval knn --weights "$OUT/$NAME/export" --train "$OUT/data/labelled/train" --val "$OUT/data/labelled/val" \
  --out "$OUT/$NAME/knn" --label-fractions 1.0 --seeds 1 --max-train "$MAX_TRAIN" --max-val "$MAX_VAL"
if [ "$LINEAR" = 1 ]; then
  selfsup-eval linear --weights "$OUT/$NAME/export" --train "$OUT/data/labelled/train" --val "$OUT/data/labelled/val" \
    --out "$OUT/$NAME/linear" --label-fractions 1.0 --seeds 2 --max-train "$MAX_TRAIN" --max-val "$MAX_VAL"
fi
python - "$OUT/$NAME" "$NAME" "$secs" "$MAX_TRAIN/$MAX_VAL" <<'PY' | tee -a "$OUT/results.txt"
import sys
from pathlib import Path
from evaluation.results import load_stage, summarise
folder, name, secs, caps = Path(sys.argv[1]), *sys.argv[2:5]
top1 = {r["model"]: 100 * r["top1"] for r in load_stage(folder / "knn", "knn")["runs"] if r["k"] == 20}
line = f"{name}: kNN k=20 pretrained {top1['pretrained']:.1f} random init {top1['random_init']:.1f}"
linear = load_stage(folder / "linear", "linear")  # None without LINEAR=1
for model in ("pretrained", "random_init") if linear else ():
    mean, std = summarise([100 * r["top1"] for r in linear["runs"] if r["model"] == model])
    line += f"; linear {model} {mean:.1f} +- {std:.1f}"
print(f"{line} (max train/val {caps}; pretraining {int(secs) // 60} min {int(secs) % 60} s)")
PY
