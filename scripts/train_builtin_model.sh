#!/usr/bin/env bash
# Reproduces the built-in model agora_core/data/builtin_generator.pt on one CUDA GPU:
# synthetic data from the built-in head -> agora-train -> float16 export -> gallery.
# Usage: scripts/train_builtin_model.sh [WORK_DIR]   (env: NUM, STAGES, MINUTES, BATCH, DEVICE, GAUSSIANS)
# The shipped model: NUM=4000 STAGES=64x4000:19.712 GAUSSIANS=16000 scripts/train_builtin_model.sh
set -euo pipefail
WORK=${1:-work/builtin}
NUM=${NUM:-10000}
STAGES=${STAGES:-64x4000:120,128x16000:60+beta}
MINUTES=${MINUTES:-}
BATCH=${BATCH:-32}
DEVICE=${DEVICE:-cuda}
GAUSSIANS=${GAUSSIANS:-16000}
budget=()
if [ -n "$MINUTES" ]; then budget=(--max-minutes "$MINUTES"); fi

if [ ! -f "$WORK/synth/dataset.json" ]; then
  time agora-train synth "$WORK/synth" --num "$NUM" --seed 0 --resolution 128 --device "$DEVICE" --batch 256
fi
time agora-train run "$WORK/synth" --out "$WORK/run" --device "$DEVICE" --batch "$BATCH" --stages "$STAGES" \
  --sample-every 200 --checkpoint-every 500 "${budget[@]}"
agora-train export "$WORK/run" agora_core/data/builtin_generator.pt --half --gaussians "$GAUSSIANS"
agora-export gallery "$WORK/gallery.png"
