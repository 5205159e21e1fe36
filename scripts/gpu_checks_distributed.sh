#!/usr/bin/env bash
# Issue 16's checks that need a CUDA GPU, as one short script (about 3 minutes on one H200):
#   1. agora-train run on CUDA (tiny preset): 3 steps in one go vs 1 step + --resume for 2 (the
#      checkpoint now holds the RNG state of the GPU the process computes on), weights compared;
#   2. the same run under torchrun with one process on CUDA (no process group: the single-process path);
#   3. torchrun with 2 processes on a node with 1 GPU and --device cuda: must end with one error line.
# Usage: scripts/gpu_checks_distributed.sh OUT_DIR  (prints a summary; logs in OUT_DIR)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_checks_distributed.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of the script itself
WORK=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
TRAIN=(-m exporter.cli.train)
{ nvidia-smi -L || true; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.device_count(), "GPU(s)")'; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
"$PY" "${TRAIN[@]}" synth "$WORK/data" --num 32 --resolution 64 --device "$DEVICE" > "$OUT/synth.log" 2>&1 || { tail "$OUT/synth.log"; exit 1; }
COMMON=(--preset tiny --batch 8 --device "$DEVICE" --no-progress --stages "32x150:0.008,64x600:0.016+beta" --sample-every 0 --checkpoint-every 0 --seed 5)

echo "== 1. CUDA resume"
"$PY" "${TRAIN[@]}" run "$WORK/data" --out "$WORK/full" "${COMMON[@]}" > "$OUT/full.log" 2>&1; echo "full rc=$?"
"$PY" "${TRAIN[@]}" run "$WORK/data" --out "$WORK/part" "${COMMON[@]}" --max-steps 1 > "$OUT/part.log" 2>&1; echo "part rc=$?"
"$PY" "${TRAIN[@]}" run "$WORK/data" --out "$WORK/part" "${COMMON[@]}" --resume > "$OUT/resume.log" 2>&1; echo "resume rc=$?"
"$PY" - "$WORK/full" "$WORK/part" <<'PYEOF' 2>&1 | tee "$OUT/compare.txt"
import sys, torch
a, b = (torch.load(f"{d}/checkpoints/latest.pt", weights_only=True) for d in sys.argv[1:3])
print("steps", a["step"], b["step"], "cuda_rng entries", len(a["cuda_rng"]))
for net in ("G", "G_ema", "D"):
    diff = max(float((a[net][k].float() - b[net][k].float()).abs().max()) for k in a[net] if a[net][k].is_floating_point())
    print(net, "max |full - resumed|", diff)
PYEOF

echo "== 2. torchrun, 1 process on CUDA"
"$PY" -m torch.distributed.run --nproc-per-node 1 --master-port 29950 "${TRAIN[@]}" run "$WORK/data" --out "$WORK/tr1" "${COMMON[@]}" > "$OUT/torchrun1.log" 2>&1
echo "torchrun 1 rc=$?"; grep -E "new run|step 3|error" "$OUT/torchrun1.log"

echo "== 3. torchrun, 2 processes on this node's GPUs"
"$PY" -m torch.distributed.run --nproc-per-node 2 --master-port 29951 "${TRAIN[@]}" run "$WORK/data" --out "$WORK/tr2" "${COMMON[@]}" > "$OUT/torchrun2.log" 2>&1
echo "torchrun 2 rc=$?"; grep -E "^error:|new run|step 3" "$OUT/torchrun2.log"
