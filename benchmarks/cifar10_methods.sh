#!/usr/bin/env bash
# CPU run of each method on the shared CIFAR-10 (issue: "each method's export beats the random init of the
# same architecture on kNN"). Tiny backbones at 32 px, 7-20 minutes of pretraining each on 2 cores, then
# `selfsup-eval knn` on 10,000 train / 2,000 test images, pretrained vs random init.
#   bash benchmarks/cifar10_methods.sh [METHODS...]      (default: all four, with the settings of the README table)
# Needs ../shared/data/cifar10.tar.gz. Output: runs/cifar10_methods/{<method>/run,<method>/export,<method>/knn}
# and runs/cifar10_methods/results.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
METHODS=("${@:-dino mocov3 moby simclr}"); METHODS=(${METHODS[@]})
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
COMMON=(data.shards="$OUT/shards" model.args.img_size=32 views.global_crop_size=32
        train.save_every=0 train.progress=false train.log_every=20 train.batch_size=64 train.mixed_precision=bf16
        optim.lr=1e-3 optim.warmup_epochs=0.5)
VIT=(model.name=vit_tiny_patch16_224 model.args.patch_size=4 model.args.depth=4)
for m in "${METHODS[@]}"; do
  case "$m" in
    # DINO at this size needs a sharp teacher (0.04 throughout), a normalised last layer, no blur on 32 px images
    # and more steps than the contrastive methods.
    dino)   args=(configs/dino_vit_tiny_cpu.yaml "${VIT[@]}" train.epochs=8 views.n_local=0 "views.blur_probs=[0,0,0]"
                  "views.global_crop_scale=[0.2,1.0]" method.dino.out_dim=2048 method.dino.warmup_teacher_temp=0.04
                  method.dino.teacher_temp=0.04 method.dino.norm_last_layer=true method.dino.momentum_teacher=0.996
                  optim.lr=2e-3) ;;
    mocov3) args=(configs/mocov3_tiny_cpu.yaml "${VIT[@]}" train.epochs=3) ;;
    simclr) args=(configs/simclr_tiny_cpu.yaml "${VIT[@]}" train.epochs=3) ;;
    moby)   args=(configs/moby_tiny_cpu.yaml train.epochs=20 "views.blur_probs=[0,0,0]" optim.lr=2e-3
                  optim.warmup_epochs=1 train.log_every=50) ;;
    *) echo "unknown method $m" >&2; exit 2 ;;
  esac
  echo "== $m: pretrain ${args[*]} ${COMMON[*]}"
  selfsup pretrain "${args[0]}" "${COMMON[@]}" "${args[@]:1}" run.dir="$OUT/$m/run" run.overwrite=true  # method settings win
  selfsup export "$OUT/$m/run" "$OUT/$m/export"
  selfsup-eval knn --weights "$OUT/$m/export" --train "$DATA/cifar10/train" --val "$DATA/cifar10/test" \
    --out "$OUT/$m/knn" --label-fractions 1.0 --seeds 1 --max-train 10000 --max-val 2000
done
python - "$OUT" "${METHODS[@]}" <<'PY'
import json, sys
from pathlib import Path
out, methods = Path(sys.argv[1]), sys.argv[2:]
rows = ["| method | backbone | pretrain steps | pretrain images/s | kNN top-1 (k=20) pretrained | kNN top-1 (k=20) random init |",
        "|---|---|---|---|---|---|"]
for m in methods:
    s = json.loads((out / m / "run" / "summary.json").read_text())
    knn = json.loads((out / m / "knn" / "knn.json").read_text())
    def top1(model):
        vals = [r["top1"] for r in knn["runs"] if r["model"] == model and r["k"] == 20]
        return f"{100 * sum(vals) / len(vals):.1f}" if vals else "-"
    rows.append(f"| {m} | {s['model']} | {s['steps']} | {s['images_per_s']:.1f} | {top1('pretrained')} | {top1('random_init')} |")
(out / "results.md").write_text("\n".join(rows) + "\n")
print("\n".join(rows))
PY
