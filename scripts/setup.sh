#!/usr/bin/env bash
# Create .venv and install aam-ds with its test extras. Idempotent: a second run installs nothing new.
# AAM_TORCH (default torch==2.13.0) picks the torch build: on a CUDA/ROCm machine set it to the
# wheel for your accelerator first (e.g. AAM_TORCH="torch --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q ${AAM_TORCH:-torch==2.13.0} 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import torch, deepspeed, aam_ds" 2>/dev/null || { echo "setup failed: aam_ds, torch or deepspeed does not import" >&2; exit 1; }
