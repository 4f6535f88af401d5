#!/usr/bin/env bash
# Quickstart: on a fresh clone, set up .venv, then run the whole pipeline on the embedded example
# (ELPV solar-cell images from the elpv-dataset package) on the CPU:
#   images -> webdataset shards -> DINOv2 pretraining (tiny ViT) -> export for timm -> evaluation report.
# Output: runs/quickstart/ (export in runs/quickstart/export/, report in runs/quickstart/report/).
# Extra args are config overrides for the pretraining step, e.g. train.max_steps=50.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
OUT=runs/quickstart
mkdir -p "$OUT"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep instead of spinning beside data workers

echo "== 1/5 example data: ELPV solar cells -> $OUT/data"
python -c "from selfsup.examples.elpv import prepare_elpv; print(prepare_elpv('$OUT/data'))"

echo "== 2/5 shards: selfsup shard $OUT/data/unlabelled $OUT/shards"
rm -rf "$OUT/shards"
selfsup shard "$OUT/data/unlabelled" "$OUT/shards" --max-per-shard 256

echo "== 3/5 pretrain: selfsup pretrain configs/dinov2_vit_tiny_cpu.yaml (CPU, a few minutes)"
# run.overwrite=true: a second quickstart starts its own run over (a run still using the folder is refused)
selfsup pretrain configs/dinov2_vit_tiny_cpu.yaml run.dir="$OUT/run" data.shards="$OUT/shards" \
  train.progress=false run.overwrite=true "$@"

echo "== 4/5 export: selfsup export $OUT/run $OUT/export"
selfsup export "$OUT/run" "$OUT/export"

echo "== 5/5 report: pretrained vs random init on the ELPV defect labels (all 1,968 train / 656 val cells)"
if command -v selfsup-eval >/dev/null && python -c "import evaluation.cli" 2>/dev/null; then
  rm -rf "$OUT/report"  # a second quickstart replaces its own report (its label subsets belong to the first run's data)
  selfsup-eval report --weights "$OUT/export" --train "$OUT/data/labelled/train" --val "$OUT/data/labelled/val" \
    --out "$OUT/report" --label-fractions 0.1,1.0 --seeds 3
  echo "report: $OUT/report/report.md"
fi
echo "== done: export in $OUT/export  (timm.create_model(\"local-dir:$OUT/export\", pretrained=True))"
