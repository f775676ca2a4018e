#!/usr/bin/env bash
# On a GPU machine (the device tool: carry .whl, see scripts/gpu_wheels.sh): install the carried
# wheels, run the CUDA tests and the GPU benchmarks, and leave logs in $OUT (or ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
python3 bench/bench_distances.py --skip-full 2>&1 | tee "$OUT/bench_distances.log"
python3 bench/bench_engine.py --ranks 1 --preset small --micro 16 --precision bf16 2>&1 | tee "$OUT/bench_engine.log"
