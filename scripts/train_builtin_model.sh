#!/usr/bin/env bash
# Makes the shipped built-in model agora_core/data/builtin_generator.pt from nothing: the synthetic
# teacher (procedurally textured built-in heads) distilled into the `small` AGORA generator
# (docs/training.md, "The built-in model"). CPU by default; re-running it after an interruption
# resumes the run from its last checkpoint (saved every 100 steps).
# Usage: scripts/train_builtin_model.sh [--device cpu|cuda] [--out runs/builtin] [--steps 3000] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/builtin
DEVICE=cpu
STEPS=3000
THREADS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
args=(--out "$OUT" --device "$DEVICE" --no-progress)
if [ -n "$THREADS" ]; then args+=(--threads "$THREADS"); fi

if [ -f "$OUT/checkpoints/latest.pt" ]; then
  time agora-train distill "${args[@]}" --resume
else
  time agora-train distill "${args[@]}" --steps "$STEPS"
fi
agora-train export "$OUT" agora_core/data/builtin_generator.pt --half
agora-export gallery docs/images/gallery.png --size 128
