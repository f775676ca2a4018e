#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, rules in pyproject.toml) and run the whole test suite, slow tests included.
# The reference UniFrac oracle (Debian's python3-unifrac, unifrac-tools) and the multi-node tests' daemons
# (scripts/setup_multinode.sh: openssh-server, pdsh, SLURM) are installed when we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! /usr/bin/python3 -c "import unifrac" 2>/dev/null; then
    (apt-get install -y -q python3-unifrac unifrac-tools >/dev/null 2>&1 \
        || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q python3-unifrac unifrac-tools >/dev/null 2>&1)) \
        || echo "note: could not install python3-unifrac; oracle tests will be skipped"
fi
if [ "$(id -u)" = 0 ]; then  # sshd, pdsh, SLURM and node001/node002 for tests/test_multinode.py (they skip without)
    bash scripts/setup_multinode.sh || echo "note: could not set up the multi-node tests' daemons; they will skip"
fi
.venv/bin/ruff check aam_ds tests bench launch  # lint first: a failing lint fails CI in seconds
.venv/bin/ruff format --check aam_ds tests bench launch  # the formatter's layout (pyproject [tool.ruff.format])
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
# two worker processes (pytest-xdist), each test file on one worker (its module fixtures built once):
# most tests wait on subprocesses or run one thread, so two workers use both cores
exec .venv/bin/python -m pytest -n 2 --dist loadfile --durations=25 "$@"
