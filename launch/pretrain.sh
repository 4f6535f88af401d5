#!/usr/bin/env bash
# Pretrain with accelerate: launch/pretrain.sh CONFIG ACCEL_CONFIG [key=value ...] [-- extra accelerate args]
#   launch/pretrain.sh configs/dino_vit_small.yaml launch/accelerate/8gpu_ddp.yaml data.shards=/data/in1k
# Extra accelerate flags can be given in ACCELERATE_ARGS, e.g. ACCELERATE_ARGS="--machine_rank 1".
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: launch/pretrain.sh CONFIG ACCEL_CONFIG [key=value ...]" >&2
  exit 2
fi
CONFIG="$1"; ACCEL="$2"; shift 2
for f in "$CONFIG" "$ACCEL"; do
  [ -f "$f" ] || { echo "launch/pretrain.sh: file not found: $f" >&2; exit 2; }
done
exec accelerate launch --config_file "$ACCEL" ${ACCELERATE_ARGS:-} -m selfsup pretrain "$CONFIG" "$@"
