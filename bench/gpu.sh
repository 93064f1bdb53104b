#!/usr/bin/env bash
# The GPU figures, in one go (about 5 minutes on an H200): the trainer's MFU at the 1B preset and the
# CLIP step's images/s on real architectures with random weights. Writes logs and JSON to ${OUT:-/tmp/gpu}.
#   bash bench/gpu.sh            # in an environment with a CUDA torch and datagen's requirements
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/gpu.txt"
$PY bench/bench_train.py --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
for m in ViT-B-32 ViT-L-14; do
  $PY bench/bench_clip.py --model $m --device cuda --precision bf16 --n 4096 --batch-size 256 --side 256 \
    --threads 8 2>&1 | tee "$OUT/clip_$m.log"
done
