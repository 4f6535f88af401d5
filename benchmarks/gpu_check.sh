#!/usr/bin/env bash
# GPU check ("the first GPU must not be wasted"): one command, budgeted for 8 minutes on one H200, writes
# OUT/gpu_check.json (a list of rows) and OUT/gpu_check.md (the same rows, torch/CUDA versions, device name).
#   bash benchmarks/gpu_check.sh [--out DIR]              needs a CUDA device; DIR defaults to runs/gpu_check
#   bash benchmarks/gpu_check.sh --rehearse --out DIR     every part on the CPU with tiny sizes, in about a minute
# Parts, in this order, each within what is left of GPU_CHECK_BUDGET_S (default 470 s); a part that would not fit,
# fails or is stopped at the budget leaves its rows "skipped" with the reason (logs: OUT/logs/PART.log):
#   steps          DINO ViT-S/16 (2x224 + 10x96), DINO Swin-T, SimCLR ViT-S/16 (2x224): bf16, batch 64, eager
#   fsdp           the DINO ViT-S/16 step under FSDP2 (accelerate launch --config_file launch/accelerate/fsdp.yaml)
#   data           benchmarks/data_pipeline.py on every core but one, side by side (flowers5, 2x224 + 10x96)
#   steps_compile  the three steps with train.compile=true (torch.compile), at most COMPILE_S (150) seconds
#   learn          DINOv2 on CIFAR-10 (configs/dinov2_vit_tiny_small_data.yaml) for at most CIFAR_PRETRAIN_S (180)
#                  seconds, then selfsup export and selfsup-eval knn: kNN top-1 against random init
# Environment: SHARED_DATA (../shared/data), CIFAR_EPOCHS (30), CIFAR_PRETRAIN_S, COMPILE_S, GPU_CHECK_BUDGET_S.
# Exit: 0 when every part wrote its rows, 1 when some were skipped, 2 on bad input or no CUDA device.
set -uo pipefail
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
REHEARSE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearse) REHEARSE=1 ;;
    --out) { [ $# -ge 2 ] && [ -n "$2" ]; } || die "--out needs a folder"; OUT=$2; shift ;;
    --out=?*) OUT=${1#--out=} ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | cut -c3-; exit 0 ;;
    *) die "unknown argument '$1' (usage: bash benchmarks/gpu_check.sh [--rehearse] [--out DIR])" ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${OUT:-$ROOT/runs/gpu_check}")"
source "$ROOT/launch/_venv.sh"  # the project's .venv on PATH; cd's to the repository root
set +e
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [ "$REHEARSE" = 0 ]; then
  python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
    || die "no CUDA device (torch.cuda.is_available() is False); use --rehearse for the CPU rehearsal"
fi
mkdir -p "$OUT" 2>/dev/null || die "cannot create --out folder '$OUT'"

START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-470}
SHARED="${SHARED_DATA:-$ROOT/../shared/data}"
GC=(python benchmarks/gpu_check.py)
R=()
[ "$REHEARSE" = 1 ] && R=(--rehearse)
rm -rf "$OUT/tmp" "$OUT/logs" "$OUT/learn" "$OUT/rows.jsonl" "$OUT/skipped.tsv" "$OUT/gpu_check.json" \
  "$OUT/gpu_check.md"
mkdir -p "$OUT/tmp" "$OUT/logs" "$OUT/learn"

left() { local l=$(( BUDGET - (SECONDS - START) )); echo $(( l > 1 ? l : 1 )); }
# skip PART REASON [planned]: the part's rows say why they are missing; an unplanned skip makes the exit status 1
skip() {
  printf '%s\t%s\n' "$1" "$(echo "$2" | tr '\t' ' ')" >> "$OUT/skipped.tsv"
  [ "${3:-}" = planned ] || echo "$1" >> "$OUT/logs/failed.txt"
  echo "== $1: skipped: $2"
}
# run [SECONDS] CMD...: CMD within SECONDS (default: what is left of the budget)
run() { local t; t=$(left); [[ "$1" =~ ^[0-9]+$ ]] && { t=$(( $1 < t ? $1 : t )); shift; }; timeout -k 10 "$t" "$@"; }
# part NAME NEED CMD...: CMD (a command or a function of this script) when NEED seconds are left, logged
part() {
  local name=$1 need=$2 rc
  shift 2
  if [ "$(left)" -lt "$need" ]; then skip "$name" "needs ~${need}s, $(left)s of the ${BUDGET}s budget left"; return 1; fi
  local t0=$SECONDS
  echo "== $name (at $(( t0 - START ))s)"
  "$@" >> "$OUT/logs/$name.log" 2>&1
  rc=$?
  echo "== $name: done in $(( SECONDS - t0 ))s (exit $rc)"
  [ $rc = 0 ] && return 0
  if [ $rc = 124 ] || [ $rc = 137 ]; then skip "$name" "stopped at its time limit (exit $rc)"
  else skip "$name" "failed (exit $rc): $(grep -v '^\s*$' "$OUT/logs/$name.log" | tail -n 1 | cut -c1-300)"; fi
  return 1
}

# CIFAR-10 (../shared/data/cifar10.tar.gz): the first 1,000 train images of each class (benchmarks/cifar10_methods.sh)
# and the test set; the rehearsal takes 30 + 20 a class.
DATA="$OUT/tmp/cifar"
cifar() {
  local globs=('cifar10/train/*/0???.jpg' 'cifar10/test/*')
  [ "$REHEARSE" = 1 ] && globs=('cifar10/train/*/00[0-2]?.jpg' 'cifar10/test/*/00[0-1]?.jpg')
  mkdir -p "$DATA" && tar -xzf "$SHARED/cifar10.tar.gz" -C "$DATA" --wildcards "${globs[@]}"
}

learn() {
  local extra=(data.num_workers=8 train.epochs="${CIFAR_EPOCHS:-30}" train.save_every=150) knn=(--max-train 10000
    --max-val 2000) cap=${CIFAR_PRETRAIN_S:-180} t0 rc secs
  if [ "$REHEARSE" = 1 ]; then
    extra=(data.num_workers=0 train.batch_size=16 train.max_steps=2 train.device=cpu train.log_every=1)
    knn=(--device cpu)
  fi
  cap=$(( cap < $(left) - 50 ? cap : $(left) - 50 ))  # export and kNN need their time too
  cap=$(( cap > 10 ? cap : 10 ))
  run selfsup shard "$DATA/cifar10/train" "$OUT/tmp/shards" --max-per-shard 500 || return
  t0=$SECONDS
  run "$cap" selfsup pretrain configs/dinov2_vit_tiny_small_data.yaml data.shards="$OUT/tmp/shards" \
    run.dir="$OUT/learn/run" run.overwrite=true train.progress=false "${extra[@]}"
  rc=$?
  secs=$(( SECONDS - t0 ))
  [ $rc = 124 ] && echo "pretraining stopped at its ${cap}s cap: exporting the newest checkpoint"
  { [ $rc = 0 ] || [ $rc = 124 ]; } || return $rc
  run selfsup export "$OUT/learn/run" "$OUT/learn/export" || return
  run selfsup-eval knn --weights "$OUT/learn/export" --train "$DATA/cifar10/train" --val "$DATA/cifar10/test" \
    --out "$OUT/learn/knn" --label-fractions 1.0 --seeds 1 "${knn[@]}" || return
  run "${GC[@]}" learn --out "$OUT" --run "$OUT/learn/run" --knn "$OUT/learn/knn" --seconds "$secs" "${R[@]}"
}

fsdp() {
  local port mp=()
  port=$(python -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  [ "$REHEARSE" = 1 ] && mp=(--mixed_precision no)  # fsdp.yaml's bf16 is for GPUs
  run accelerate launch --config_file launch/accelerate/fsdp.yaml --num_processes 1 --main_process_port "$port" \
    "${mp[@]}" benchmarks/gpu_check.py fsdp --out "$OUT" "${R[@]}"
}

data() {
  if [ "$REHEARSE" = 1 ]; then  # the CIFAR images as the tar data_pipeline.py takes (a folder of class folders)
    tar -czf "$OUT/tmp/pipeline.tar.gz" -C "$DATA/cifar10" train || return
    run "${GC[@]}" data --out "$OUT" --data "$OUT/tmp/pipeline.tar.gz" --procs 1 "${R[@]}"
  else
    run "${GC[@]}" data --out "$OUT" --data "$SHARED/flowers5.tar.gz" --procs $(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
  fi
}

part cifar 5 cifar
if [ "$REHEARSE" = 1 ]; then  # CPU: the parts side by side (no GPU timing to disturb); torch.compile not rehearsed
  part steps 30 run "${GC[@]}" steps --out "$OUT" "${R[@]}" &
  part fsdp 30 fsdp &
  part data 10 data &
  skip steps_compile "not rehearsed: torch.compile's CPU build took 50 s for the tiny DINO ViT alone (longer than this rehearsal)" planned
  part learn 30 learn
  wait
else
  part steps 60 run "${GC[@]}" steps --out "$OUT"
  part fsdp 45 fsdp
  part data 30 data
  part steps_compile 60 run "${COMPILE_S:-150}" "${GC[@]}" steps --compile --out "$OUT" \
    --rows dino_vit_s16 simclr_vit_s16 dino_swin_t
  part learn 100 learn
fi
ok=0
[ -s "$OUT/logs/failed.txt" ] && ok=1
"${GC[@]}" report --out "$OUT" --wall-s $(( SECONDS - START )) "${R[@]}" > "$OUT/logs/report.log" 2>&1 \
  || { tail -n 5 "$OUT/logs/report.log"; die "report failed (OUT/logs/report.log)"; }
cat "$OUT/gpu_check.md"
echo "wrote $OUT/gpu_check.json and $OUT/gpu_check.md in $(( SECONDS - START ))s"
exit $ok
