#!/usr/bin/env bash
# CPU run of each method on the shared CIFAR-10 (issue: "each method's export beats the random init of the
# same architecture on kNN"). Tiny backbones at 32 px, at most 30 minutes of pretraining each on 2 cores, then
# `selfsup-eval knn` on 10,000 train / 2,000 test images, pretrained vs random init.
#   bash benchmarks/cifar10_methods.sh [METHODS...]      (default: all five, with the settings of the README table)
#   EPOCHS=2 bash benchmarks/cifar10_methods.sh simclr   (another budget; SAVE_EVERY=312 keeps checkpoints on the way)
# Needs ../shared/data/cifar10.tar.gz. Output: runs/cifar10_methods/{<method>/run,<method>/export,<method>/knn}
# and runs/cifar10_methods/results.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
METHODS=("${@:-dino dinov2 mocov3 moby simclr}"); METHODS=(${METHODS[@]})
OUT=runs/cifar10_methods
DATA="${CIFAR_DIR:-$OUT/data}"
mkdir -p "$OUT"
if [ ! -d "$DATA/cifar10/train" ]; then
  mkdir -p "$DATA" && tar -xzf ../shared/data/cifar10.tar.gz -C "$DATA"
fi
if [ ! -d "$OUT/shards" ]; then  # the first 1,000 images of each class
  python - "$DATA/cifar10/train" "$OUT/subset" <<'PY'
import os, sys
src, dst = sys.argv[1:]
for c in sorted(os.listdir(src)):
    os.makedirs(f"{dst}/{c}", exist_ok=True)
    for f in sorted(os.listdir(f"{src}/{c}"))[:1000]:
        if not os.path.exists(f"{dst}/{c}/{f}"):
            os.symlink(os.path.abspath(f"{src}/{c}/{f}"), f"{dst}/{c}/{f}")
PY
  selfsup shard "$OUT/subset" "$OUT/shards" --max-per-shard 1000
fi
# The small-data recipes (configs/*_small_data.yaml: 4-block ViT-Tiny, patch 4 at 32 px, no blur/solarisation,
# lr 1e-3 at batch 64, DINO 5e-4); MoCo v3 and MoBY take the same data settings as overrides. Epochs fit 30
# min of 2 cores (README table: wall times measured alone on the machine, except MoBY's; MoCo v3's and MoBY's epochs
# were set when training used 1 thread; DINO's 6 with 4 local crops on 2 AVX2 threads in fp32: 28 min 46 s).
COMMON=(data.shards="$OUT/shards" train.progress=false train.save_every="${SAVE_EVERY:-0}" data.num_workers=2)
SMALL=(views.global_crop_size=32 "views.global_crop_scale=[0.2,1.0]" "views.blur_probs=[0,0,0]" views.solarize_prob=0
       model.args.img_size=32 train.batch_size=64 train.mixed_precision=bf16 optim.lr=4e-3 optim.warmup_epochs=1
       train.log_every=50)
VIT=(model.name=vit_tiny_patch16_224 model.args.patch_size=4 model.args.depth=4)
# EXTRA: more overrides for every method's run (e.g. EXTRA="method.dino.center=sinkhorn_knopp"); TAG: a suffix for
# the output folder, so that a variant does not replace the table's run.
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
for m0 in "${METHODS[@]}"; do
  m="$m0${TAG:-}"
  case "$m0" in
    dino)   args=(configs/dino_vit_tiny_small_data.yaml train.epochs="${EPOCHS:-6}") ;;  # with 4 local crops
    dinov2) args=(configs/dinov2_vit_tiny_small_data.yaml train.epochs="${EPOCHS:-18}") ;;  # bf16, AVX-512: 28 min
    simclr) args=(configs/simclr_vit_tiny_small_data.yaml train.epochs="${EPOCHS:-10}") ;;
    mocov3) args=(configs/mocov3_tiny_cpu.yaml "${SMALL[@]}" "${VIT[@]}" method.mocov3.freeze_patch_embed=false
                  method.mocov3.momentum=0.9 train.epochs="${EPOCHS:-9}") ;;  # fast keys, short run
    moby)   args=(configs/moby_tiny_cpu.yaml "${SMALL[@]}" train.epochs="${EPOCHS:-25}") ;;  # small Swin
    *) echo "unknown method $m" >&2; exit 2 ;;
  esac
  echo "== $m: pretrain ${args[*]} ${COMMON[*]}"
  start=$(date +%s)
  mkdir -p "$OUT/$m"
  selfsup pretrain "${args[0]}" "${COMMON[@]}" "${args[@]:1}" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} run.dir="$OUT/$m/run" \
    run.overwrite=true
  echo $(( $(date +%s) - start )) > "$OUT/$m/pretrain_seconds"
  selfsup export "$OUT/$m/run" "$OUT/$m/export"
  selfsup-eval knn --weights "$OUT/$m/export" --train "$DATA/cifar10/train" --val "$DATA/cifar10/test" \
    --out "$OUT/$m/knn" --label-fractions 1.0 --seeds 1 --max-train 10000 --max-val 2000
done
python - "$OUT" "${METHODS[@]/%/${TAG:-}}" <<'PY'
import json, sys
from pathlib import Path
out, methods = Path(sys.argv[1]), sys.argv[2:]
rows = ["| method | backbone | pretrain steps | wall time | pretrain images/s | kNN top-1 (k=20) pretrained | kNN top-1 (k=20) random init |",
        "|---|---|---|---|---|---|---|"]
for m in methods:
    s = json.loads((out / m / "run" / "summary.json").read_text())
    knn = json.loads((out / m / "knn" / "knn.json").read_text())
    def top1(model):
        vals = [r["top1"] for r in knn["runs"] if r["model"] == model and r["k"] == 20]
        return f"{100 * sum(vals) / len(vals):.1f}" if vals else "-"
    secs = int((out / m / "pretrain_seconds").read_text())
    rows.append(f"| {m} | {s['model']} | {s['steps']} | {secs // 60} min {secs % 60} s | {s['images_per_s']:.1f} | "
                f"{top1('pretrained')} | {top1('random_init')} |")
(out / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
