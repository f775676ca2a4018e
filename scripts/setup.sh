#!/usr/bin/env bash
# Create .venv and install aam-ds with its test extras. Idempotent: a second run installs nothing new.
# AAM_TORCH (default torch==2.13.0) picks the torch build: on a CUDA/ROCm machine set it to the
# wheel for your accelerator first (e.g. AAM_TORCH="torch --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
step() { echo "setup [$1/4] $2 ($(( SECONDS - START )) s)"; }
START=$SECONDS
step 1 "virtual environment .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
step 2 "torch (${AAM_TORCH:-torch==2.13.0}; about a minute when not installed yet)"
.venv/bin/python -m pip install -q ${AAM_TORCH:-torch==2.13.0} 2>&1 | grep -v "is ignored: it is neither" || true
step 3 "aam-ds and its dependencies (DeepSpeed, ...)"
.venv/bin/python -m pip install -q -e ".[dev,docs]" 2>&1 | grep -v "is ignored: it is neither" || true
step 4 "checking that torch, deepspeed and aam_ds import"
.venv/bin/python -c "import aam_ds.engine, torch, deepspeed" >/dev/null 2>&1 || { echo "setup failed: aam_ds, torch or deepspeed does not import" >&2; exit 1; }
echo "setup done in $(( SECONDS - START )) s"
