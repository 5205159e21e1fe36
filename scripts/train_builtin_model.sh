#!/usr/bin/env bash
# Makes the shipped built-in model agora_core/data/builtin_generator.pt from nothing: the synthetic
# teacher (procedurally textured built-in heads) distilled into the `small` AGORA generator
# (docs/training.md, "The built-in model"), in three runs:
#   1. distillation from random weights (2,200 steps; posed Gaussians turned with their triangles),
#   2. a short fine-tune from run 1 (400 steps at a quarter of the learning rate, alternating between
#      16K and 65K Gaussians so one model looks right at both; posed Gaussians also stretched with
#      their triangles, which closes the gaps of a blink or a wide smile),
#   3. a sharpening fine-tune from run 2 (300 steps alternating between 45K and 65K Gaussians - the default
#      count and the next lighter one - image losses at 256 px so phone-size detail counts,
#      wider footprints (0.8 of a lattice cell) that close the gaps between cells, a third of the
#      expressions at full intensity, opacity free in expressions so a blink may hide the eye, and an
#      expression-change term: the model's change from neutral against the teacher's).
# CPU by default. Re-running the script after an interruption resumes where it stopped (each run
# saves a checkpoint every 100 steps).
# Usage: scripts/train_builtin_model.sh [--device cpu|cuda] [--out runs/builtin] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/builtin
DEVICE=cpu
THREADS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;  # the header comment
    *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
common=(--device "$DEVICE" --no-progress)
if [ -n "$THREADS" ]; then common+=(--threads "$THREADS"); fi

run() {  # run FOLDER ARGS...: a new run, or the one in FOLDER resumed (a finished run returns at once)
  local dir=$1; shift
  if [ -f "$dir/checkpoints/latest.pt" ]; then
    agora-train distill --out "$dir" --resume "${common[@]}"
  else
    agora-train distill --out "$dir" "$@" "${common[@]}"
  fi
}

time run "$OUT/base" --steps 2200 --posed-target rotation
agora-train export "$OUT/base" "$OUT/base.pt"
time run "$OUT/tune" --steps 400 --lr 0.0005 --seed 1 --posed-target affine --gaussian-counts 16000,65000 \
  --init-from "$OUT/base.pt"
agora-train export "$OUT/tune" "$OUT/tune.pt" --half
time run "$OUT/sharpen" --steps 300 --lr 0.0005 --seed 2 --posed-target affine --gaussian-counts 45000,65000 \
  --resolution 256 --footprint 0.8 --full-intensity 0.3 --opacity-on neutral --image-change 3.0 --init-from "$OUT/tune.pt"
agora-train export "$OUT/sharpen" agora_core/data/builtin_generator.pt --half
agora-export gallery docs/images/gallery.png --size 128
