#!/usr/bin/env bash
# Distil a CIFAR-10 export of benchmarks/cifar10_methods.sh (a ViT teacher) into a student without attention
# layers, on the CPU, for at most MINUTES (20) of training, then kNN (k=20, 10,000 train / 2,000 test images, the
# same `selfsup-eval knn` call as cifar10_methods.sh) of the teacher and the student, with their random inits.
#   bash benchmarks/cifar10_distill.sh [METHOD]     teacher: runs/cifar10_methods/METHOD/export (default simclr)
# Needs the teacher export, the extracted data and the shards that cifar10_methods.sh writes. Output:
# runs/cifar10_distill/{calibrate,run,export,knn,teacher_knn} and runs/cifar10_distill/results.md.
# Environment (defaults in brackets):
#   STUDENT    resnet18 (a CIFAR-size ResNet-18: timm's output_stride=16 keeps a 2x2 map at 32 px instead of 1x1),
#              resnet18_half (half width, output_stride=8: 4x4), mobilenetv3_small_100 or poolformer_s12   [resnet18]
#   MINUTES    wall-clock cap of the distillation run; its epochs are sized from a short speed calibration  [20]
#   EPOCHS     fixed number of epochs instead of the calibration (the MINUTES cap still applies)
#   MAX_TRAIN / MAX_VAL   kNN bank / test images                                                  [10000 / 2000]
#   TEACHER, CIFAR_DIR, SHARDS, OUT   other teacher export / data (CIFAR_DIR/cifar10/{train,test}) / shards / output
#   (a smoke run: TEACHER=tiny_export CIFAR_DIR=... SHARDS=... OUT=/tmp/x EPOCHS=0.05 MAX_TRAIN=40 MAX_VAL=20)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../launch/_venv.sh"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
METHOD="${1:-simclr}"
SRC=runs/cifar10_methods
OUT="${OUT:-runs/cifar10_distill}"
TEACHER="${TEACHER:-$SRC/$METHOD/export}"
DATA="${CIFAR_DIR:-$SRC/data}"
SHARDS="${SHARDS:-$SRC/shards}"
STUDENT="${STUDENT:-resnet18}"
MINUTES="${MINUTES:-20}"
MAX_TRAIN="${MAX_TRAIN:-10000}"
MAX_VAL="${MAX_VAL:-2000}"
if [ ! -f "$TEACHER/config.json" ]; then
  echo "cifar10_distill.sh: no teacher export at $TEACHER (run: bash benchmarks/cifar10_methods.sh $METHOD)" >&2; exit 2
fi
if [ ! -d "$DATA/cifar10/train" ] || [ ! -d "$SHARDS" ]; then
  echo "cifar10_distill.sh: no $DATA/cifar10/train or $SHARDS (benchmarks/cifar10_methods.sh prepares both)" >&2; exit 2
fi
case "$STUDENT" in
  resnet18)              STUDENT_ARGS=(model.name=resnet18 model.args.output_stride=16) ;;
  resnet18_half)         STUDENT_ARGS=(model.name=resnet18 model.args.output_stride=8 "model.args.channels=[32,64,128,256]") ;;
  mobilenetv3_small_100) STUDENT_ARGS=(model.name=mobilenetv3_small_100) ;;
  poolformer_s12)        STUDENT_ARGS=(model.name=poolformer_s12) ;;
  *) echo "cifar10_distill.sh: unknown STUDENT=$STUDENT (resnet18, resnet18_half, mobilenetv3_small_100, poolformer_s12)" >&2
     exit 2 ;;
esac
# One 32 px view per image for both (no blur on 32 px images, as cifar10_methods.sh); queue of 2,048 teacher
# embeddings (LightlyTrain's size for 10k images); AdamW peak lr 1e-3 at batch 64 (lr x 64/256).
COMMON=(configs/distill_cpu.yaml method.distill.teacher="$TEACHER" data.shards="$SHARDS" "${STUDENT_ARGS[@]}"
        views.global_crop_size=32 "views.global_crop_scale=[0.2,1.0]" "views.blur_probs=[0,0,0]"
        method.distill.queue_size=2048 train.batch_size=64 train.mixed_precision=bf16 train.progress=false
        optim.lr=4e-3 optim.warmup_epochs=0.5)
mkdir -p "$OUT"

if [ -z "${EPOCHS:-}" ]; then  # images/s of this student + teacher on this machine now -> epochs that fit
  rm -rf "$OUT/calibrate"
  selfsup pretrain "${COMMON[@]}" train.epochs=100 train.max_steps=25 train.log_every=5 train.save_every=0 \
    run.dir="$OUT/calibrate" >/dev/null
  EPOCHS=$(python - "$OUT/calibrate/summary.json" "$MINUTES" "$SHARDS" <<'PY'
import json, sys
from selfsup.data.count import count_samples
from selfsup.data.shard_list import expand_shards
s = json.loads(open(sys.argv[1]).read())
ips = s["final"]["images_per_s"]  # the last 5 steps: warm, data workers running
budget_s = float(sys.argv[2]) * 60 * 0.85 - 30  # margin for start-up, checkpoints and a slower machine
print(f"{max(0.05, budget_s * ips / count_samples(expand_shards(sys.argv[3]))):.2f}")
PY
)
  echo "== calibration: $(python -c "import json;print(round(json.load(open('$OUT/calibrate/summary.json'))['final']['images_per_s'],1))") images/s -> $EPOCHS epochs in $MINUTES min"
fi

echo "== distil $TEACHER -> $STUDENT (${STUDENT_ARGS[*]}) for $EPOCHS epochs, at most $MINUTES min"
rm -rf "$OUT/run"
start=$(date +%s)
set +e  # the cap: a run stopped by timeout is exported from its newest checkpoint (one every 100 steps)
timeout --kill-after=60 "$((MINUTES * 60))" selfsup pretrain "${COMMON[@]}" train.epochs="$EPOCHS" \
  train.save_every=100 train.log_every=20 run.dir="$OUT/run"
rc=$?
set -e
wall=$(( $(date +%s) - start ))
if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then exit "$rc"; fi
[ "$rc" -eq 124 ] && echo "== stopped by the $MINUTES min cap after ${wall}s; exporting the newest checkpoint"
selfsup export "$OUT/run" "$OUT/export"

KNN=(--train "$DATA/cifar10/train" --val "$DATA/cifar10/test" --label-fractions 1.0 --seeds 1
     --max-train "$MAX_TRAIN" --max-val "$MAX_VAL")
selfsup-eval knn --weights "$OUT/export" --out "$OUT/knn" "${KNN[@]}"
selfsup-eval knn --weights "$TEACHER" --out "$OUT/teacher_knn" "${KNN[@]}"

python - "$OUT" "$TEACHER" "$METHOD" "$STUDENT" "$wall" "$rc" "$MINUTES" <<'PY'
import json, sys
from pathlib import Path

import timm

out, teacher, method, student, wall, rc, minutes = sys.argv[1:]
out = Path(out)


def top1(folder: Path, model: str) -> float:
    runs = json.loads((folder / "knn.json").read_text())["runs"]
    vals = [r["top1"] for r in runs if r["model"] == model and r["k"] == 20]
    return 100 * sum(vals) / len(vals)


def params(folder: str) -> float:
    m = timm.create_model(f"local-dir:{folder}", pretrained=False)
    return sum(p.numel() for p in m.parameters()) / 1e6


def arch(folder: str) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["architecture"]


s = json.loads((out / "run" / "summary.json").read_text()) if (out / "run" / "summary.json").is_file() else {}
t, t0 = top1(out / "teacher_knn", "pretrained"), top1(out / "teacher_knn", "random_init")
d, d0 = top1(out / "knn", "pretrained"), top1(out / "knn", "random_init")
fraction = (d - t0) / (t - t0) if t != t0 else float("nan")
rows = [
    "| model | architecture | params (M) | kNN top-1 (k=20) |",
    "|---|---|---|---|",
    f"| teacher ({method} export) | {arch(teacher)} | {params(teacher):.2f} | {t:.1f} |",
    f"| teacher, random init | {arch(teacher)} | {params(teacher):.2f} | {t0:.1f} |",
    f"| student ({student}), distilled | {arch(str(out / 'export'))} | {params(str(out / 'export')):.2f} | {d:.1f} |",
    f"| student, random init | {arch(str(out / 'export'))} | {params(str(out / 'export')):.2f} | {d0:.1f} |",
    "",
    f"Student score as a fraction of the way from the teacher's random init to the teacher: "
    f"({d:.1f} - {t0:.1f}) / ({t:.1f} - {t0:.1f}) = **{fraction:.2f}**.",
    f"Distillation: {s.get('steps', '?')} steps of {s.get('global_batch', '?')} images "
    f"({s.get('images_per_s', 0):.1f} images/s), {int(wall) / 60:.1f} min wall"
    + (f" (stopped by the {minutes} min cap)" if rc == "124" else "") + ".",
]
(out / "results.md").write_text("\n".join(rows) + "\n")
(out / "results.json").write_text(json.dumps({"teacher": t, "teacher_random_init": t0, "student": d,
                                              "student_random_init": d0, "fraction": fraction,
                                              "wall_s": int(wall), "stopped_by_cap": rc == "124",
                                              "summary": s}, indent=2))
print("\n".join(rows))
PY
