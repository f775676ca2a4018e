#!/usr/bin/env bash
# Fill .whl/ with the cp312 wheels a bare GPU machine (Python 3.12, torch preinstalled, no
# network) lacks for aam-ds: deepspeed (built here as a pure-Python wheel; its ops JIT-build
# there), hjson, pydantic (+ core, annotated-types, typing-inspection) and biom-format.
# Run here once per session, then pass `.whl` in the device tool's carry and run scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
py() { .venv/bin/python -m pip "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
py download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    hjson==3.1.0 biom-format==2.1.18
[ -n "$(ls .whl/deepspeed-*.whl 2>/dev/null)" ] || py wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
ls -la .whl
