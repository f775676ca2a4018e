#!/usr/bin/env bash
# Set up (scripts/setup.sh), then pretrain on the embedded demo dataset with ZeRO-2 on every local
# GPU (or one CPU process). Extra arguments go to launch/pretrain.py, e.g. --set schedule.steps=50.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec deepspeed launch/pretrain.py --spec configs/demo.yaml --ds-config ds_configs/zero2.json "$@"
