#!/usr/bin/env bash
# On a GPU machine (the device tool: carry .whl, see scripts/gpu_wheels.sh): install the carried
# wheels, run the CUDA tests and the GPU benchmarks (distances; engine samples/s, MFU and peak memory for
# the small / base / large presets in bf16 under ZeRO 0 / 2 / 3), and leave logs in $OUT (or ./gpu_out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest tests/test_gpu.py -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
python3 bench/bench_distances.py --skip-full 2>&1 | tee "$OUT/bench_distances.log"
# engine throughput (issue 19): samples/s, MFU (model FLOPs over the measured bf16 matmul peak) and peak
# memory per preset, bf16, ZeRO 0 / 2 / 3 on one GPU; then one profiled base step (operator table + Chrome trace)
for preset in small base large; do
  timeout 900 python3 bench/bench_engine.py --ranks 1 --stages 0 2 3 --preset "$preset" --micro 16 --precision bf16 \
    --steps 20 --max-asvs 256 --max-seq-len 150 2>&1 | tee "$OUT/bench_engine_$preset.log"
done
timeout 300 python3 bench/bench_engine.py --ranks 1 --stages 0 --preset base --micro 16 --precision bf16 --max-asvs 256 \
  --max-seq-len 150 --profile "$OUT/profile_base" 2>&1 | tail -40 > "$OUT/profile_base.log"
