#!/usr/bin/env bash
# The checks that need a CUDA GPU (issue 12, "where a GPU is lent"), as one script that fits a short
# GPU lease (about 8 minutes on one H200, start-up not counted). Every part's logs and JSON are packed
# into OUT_DIR/results.tar.gz as it finishes (few files: a lease returns at most 8), so a part cut off by
# a time limit leaves the others' results intact:
#   env.txt              GPU, driver, torch and CUDA versions
#   latency_cuda.*       AGORA (deformation branch + LBS + lifting) vs AGORA-M (MLP + blend) per frame
#                        on the GPU at 16K / 65K / 235K Gaussians (benchmarks.reenactment_latency)
#   distill_speed.*      seconds per step of the built-in model's distillation runs 1 and 3 on CUDA
#   adversarial.*        the adversarial fine-tune (dual discrimination) from the built-in model on a
#                        synthetic set rendered on the GPU; the exported model in 15 MB parts
#   gsplat_*.log         gsplat's CUDA build, the gsplat-vs-torch rasterizer parity test, and both
#                        rasterizers' speed on a head-like scene (benchmarks.rasterizer_speed)
# Needs: PyTorch with CUDA, this repository on PYTHONPATH (or installed) and, for the gsplat part,
# `gsplat` importable with nvcc on the PATH (gsplat compiles its kernels on first use).
# Usage: scripts/gpu_checks.sh OUT_DIR
# Knobs (environment): DEVICE (cuda), ADV_MINUTES (3), ADV_BATCH (32), SYNTH_NUM (3000), SPEED_MINUTES (0.6),
#   LATENCY_PRESETS ("small paper-256 paper-512"), SKIP_GSPLAT (set to skip the gsplat part),
#   GSPLAT_WAIT_S (300: how long the script waits for gsplat's build before going on without it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/gpu_checks.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RES=$(mktemp -d)  # logs and JSON, packed into $OUT/results.tar.gz by pack()
DEVICE=${DEVICE:-cuda}
ADV_MINUTES=${ADV_MINUTES:-3}
SYNTH_NUM=${SYNTH_NUM:-3000}
SPEED_MINUTES=${SPEED_MINUTES:-0.6}
LATENCY_PRESETS=${LATENCY_PRESETS:-small paper-256 paper-512}
GSPLAT_WAIT_S=${GSPLAT_WAIT_S:-300}
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$RES/timeline.txt"; }
pack() { tar czf "$OUT/results.tar.gz.tmp" -C "$RES" . && mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"; }
AGORA_TRAIN=("$PY" -c 'import sys; from exporter.cli.entry import train_main; sys.argv[0] = "agora-train"; train_main()')

{ nvidia-smi -L || true; "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'; nproc; } > "$RES/env.txt" 2>&1
cat "$RES/env.txt"

# 1. gsplat's CUDA build, in the background (CPU-bound, about 2 minutes) while the latency part runs
if [ -z "${SKIP_GSPLAT:-}" ]; then
  stamp "gsplat build started (background)"
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-10} \
    "$PY" -c 'import gsplat; from gsplat.cuda._backend import _C; print("gsplat", gsplat.__version__, "built:", _C is not None)' \
    > "$RES/gsplat_build.log" 2>&1 &
  GSPLAT_PID=$!
fi

# 2. AGORA vs AGORA-M per frame on the GPU
stamp "latency"
read -r -a presets <<< "$LATENCY_PRESETS"
timeout 240 "$PY" -m benchmarks.reenactment_latency --device "$DEVICE" --no-onnx --presets "${presets[@]}" \
  --frames 50 --warmup 10 --out "$RES/latency_cuda.json" > "$RES/latency_cuda.log" 2>&1
stamp "latency rc=$?"; tail -8 "$RES/latency_cuda.log"; pack

# 3. the adversarial fine-tune: a synthetic set rendered on the GPU, then dual discrimination from the
#    built-in model; in parallel, the distillation's speed per step on the same GPU
# the synthetic set renders with gsplat where it imports: its build must be finished (one build directory)
GSPLAT_OK=0
if [ -n "${GSPLAT_PID:-}" ]; then
  while kill -0 "$GSPLAT_PID" 2>/dev/null && [ $(( $(date +%s) - T0 )) -lt "$GSPLAT_WAIT_S" ]; do sleep 5; done
  if kill -0 "$GSPLAT_PID" 2>/dev/null; then
    stamp "gsplat still building after ${GSPLAT_WAIT_S} s: stopped"; kill "$GSPLAT_PID"
  elif wait "$GSPLAT_PID"; then
    GSPLAT_OK=1
  fi
  stamp "gsplat build: $(tail -1 "$RES/gsplat_build.log")"
fi
stamp "synthetic set ($SYNTH_NUM samples)"
timeout 180 "${AGORA_TRAIN[@]}" synth "$WORK/synth" --num "$SYNTH_NUM" --resolution 128 --device "$DEVICE" --batch 64 \
  > "$RES/adversarial_synth.log" 2>&1
stamp "synth rc=$?"
(
  timeout 120 "${AGORA_TRAIN[@]}" distill --out "$WORK/speed1" --steps 2200 --posed-target rotation --device "$DEVICE" \
    --max-minutes "$SPEED_MINUTES" --no-progress > "$RES/distill_speed_run1.log" 2>&1
  timeout 120 "${AGORA_TRAIN[@]}" distill --out "$WORK/speed3" --steps 300 --lr 0.0005 --seed 2 --posed-target affine \
    --gaussian-counts 16000,65000 --resolution 256 --footprint 0.8 --full-intensity 0.3 --opacity-on neutral \
    --image-change 3.0 --init-from agora_core/data/builtin_generator.pt --device "$DEVICE" \
    --max-minutes "$SPEED_MINUTES" --no-progress > "$RES/distill_speed_run3.log" 2>&1
  "$PY" - "$WORK" "$RES/distill_speed.json" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
res = {}
for run in ("speed1", "speed3"):
    log = work / run / "log.jsonl"
    rows = [json.loads(l) for l in log.read_text().splitlines() if l.strip()] if log.exists() else []
    res[run] = {"steps": len(rows), "last": rows[-1] if rows else None}
out.write_text(json.dumps(res, indent=1))
print(json.dumps({k: v["steps"] for k, v in res.items()}))
EOF
) > "$RES/distill_speed.log" 2>&1 &
SPEED_PID=$!
stamp "adversarial fine-tune (${ADV_MINUTES} min)"
timeout $(( ${ADV_MINUTES%.*} * 60 + 150 )) "${AGORA_TRAIN[@]}" run "$WORK/synth" --out "$WORK/adv" \
  --init-from agora_core/data/builtin_generator.pt --stages 128x16000:1000 --batch "${ADV_BATCH:-32}" --device "$DEVICE" \
  --backend torch --max-minutes "$ADV_MINUTES" --sample-every 100 --checkpoint-every 0 --no-progress \
  > "$RES/adversarial_run.log" 2>&1
stamp "adversarial rc=$?"; tail -4 "$RES/adversarial_run.log"
if "${AGORA_TRAIN[@]}" export "$WORK/adv" "$WORK/adv_finetune.pt" --half >> "$RES/adversarial_run.log" 2>&1; then
  split -b 15000000 -d "$WORK/adv_finetune.pt" "$OUT/adv_finetune.pt.part"
  cp "$WORK/adv/log.jsonl" "$RES/adversarial_log.jsonl"
  last=$(ls "$WORK/adv/samples/" 2>/dev/null | sort | tail -1)
  [ -n "$last" ] && cp "$WORK/adv/samples/$last" "$RES/adversarial_samples.png"
fi
wait "$SPEED_PID"; stamp "distill speed: $(tail -1 "$RES/distill_speed.log")"; pack

# 4. gsplat: parity with the project rasterizer, then both rasterizers' speed
if [ -n "${GSPLAT_PID:-}" ]; then
  if [ "$GSPLAT_OK" != 1 ]; then
    stamp "gsplat not built: parity not run"; pack
  else
    timeout 120 "$PY" -m pytest --noconftest -p no:cacheprovider -q -rA tests/test_rasterizer.py -k gsplat \
      > "$RES/gsplat_parity.log" 2>&1
    stamp "parity rc=$?"; tail -5 "$RES/gsplat_parity.log"
    for backend in torch gsplat; do
      timeout 90 "$PY" -m benchmarks.rasterizer_speed --device "$DEVICE" --backend "$backend" --count 65536 \
        --size 256 --batch 8 --repeats 10 --warmup 3 --output "$RES/raster_speed_$backend.json" \
        > "$RES/gsplat_speed_$backend.log" 2>&1
      stamp "raster speed $backend rc=$?"; tail -3 "$RES/gsplat_speed_$backend.log"
    done
    pack
  fi
fi
stamp "done"
pack
rm -rf "$WORK" "$RES"
