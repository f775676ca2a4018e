#!/usr/bin/env bash
# Build the aam-ds CPU image with podman from a Debian 12 root filesystem made here (debootstrap from
# the Debian mirror apt uses; no container registry needed), then smoke-test it: `aam-ds --help`,
# the quick start under the deepspeed launcher (4 steps) as the image's non-root user, and the final
# stage's contents (no compiler, no pip cache). Prints the image size and what ran.
#
#   bash container/build.sh              # needs root (debootstrap), podman, runc, debootstrap:
#                                        #   apt-get install podman runc debootstrap
#   AAM_IMAGE=aam-ds:cpu AAM_TORCH_WHEEL=/path/torch-2.13.0+cpu-...whl bash container/build.sh
#   bash container/build.sh --freeze     # only rewrite container/constraints.txt from .venv
#
# A local torch wheel (AAM_TORCH_WHEEL, else /opt/wheels/torch-*+cpu-*.whl when present) is used
# instead of the PyTorch CPU index. The flags in ENGINE_FLAGS suit a sandbox without
# CAP_SYS_RESOURCE on a hybrid cgroup v1/v2 host (crun refuses both): runc as the runtime and
# rlimits at or below the host's hard limits.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${AAM_IMAGE:-localhost/aam-ds:cpu}
BASE=${AAM_BASE:-localhost/debian-bookworm-base:12}
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
MIRROR=${AAM_DEBIAN_MIRROR:-${MIRROR:-http://deb.debian.org/debian}}
ENGINE_FLAGS=(--runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
START=$SECONDS
say() { echo "container [$(( SECONDS - START )) s] $*"; }

if [ "${1:-}" = "--freeze" ]; then
    { sed -n '1,3p' container/constraints.txt; .venv/bin/pip freeze | grep -viE '^(-e|aam-ds|aam_ds|torch==)' | grep '=='; } \
        > container/constraints.txt.new && mv container/constraints.txt.new container/constraints.txt
    exit 0
fi

if ! podman image exists "$BASE"; then
    say "making the base image $BASE: debootstrap --variant=minbase bookworm from $MIRROR"
    ROOTFS=$(mktemp -d)
    debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" > "$ROOTFS.log"
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE"
    rm -rf "$ROOTFS" "$ROOTFS.log"
fi

TORCH_ARGS=()
WHEEL=${AAM_TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)}
mkdir -p container/wheels
rm -f container/wheels/*.whl
if [ -n "$WHEEL" ]; then
    cp "$WHEEL" container/wheels/
    VERSION=$(basename "$WHEEL" | cut -d- -f2)
    TORCH_ARGS=(--build-arg "TORCH=torch==$VERSION" --build-arg TORCH_INDEX=https://pypi.org/simple)
    say "torch from the local wheel $(basename "$WHEEL")"
fi

CA_ARGS=()
if [ -n "${PIP_CERT:-}" ]; then  # the host's pip trusts its own CA bundle (e.g. a TLS-inspecting proxy): so does the build's
    CA_ARGS=(--volume "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
say "building $IMAGE from $BASE"
podman build "${ENGINE_FLAGS[@]}" --network host --layers -f container/Containerfile -t "$IMAGE" \
    --build-arg BASE="$BASE" "${TORCH_ARGS[@]}" "${CA_ARGS[@]}" .
rm -f container/wheels/*.whl

run() { podman run --rm "${ENGINE_FLAGS[@]}" --network none "$@"; }
say "smoke test 1: aam-ds --help"
run "$IMAGE" --help | head -5
say "smoke test 2: the quick start (deepspeed launch/pretrain.py, 4 steps) as the image's user"
run --entrypoint bash "$IMAGE" -c '
    set -eo pipefail; echo "user $(id -un) ($(id -u))"; cd /opt/aam-ds/app
    deepspeed launch/pretrain.py --spec configs/demo.yaml --ds-config ds_configs/zero2.json --set schedule.steps=4 \
        --set schedule.warmup_steps=2 --set tracking.rich=false --set tracking.run_dir=$HOME/runs/quickstart > $HOME/quickstart.log 2>&1 \
        || { tail -20 $HOME/quickstart.log; exit 1; }
    grep -E "^(aam-ds run|step 4/4|consolidated)" $HOME/quickstart.log
    test -s $HOME/runs/quickstart/model.pt
    aam-ds export-onnx --model $HOME/runs/quickstart/model.pt --out $HOME/model.onnx | tail -1'
say "smoke test 3: the final stage has no build tools"
run --entrypoint bash "$IMAGE" -c '! command -v gcc && ! command -v cc && ! command -v make && echo "no gcc, cc, make"'
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "done: $IMAGE, $(( SIZE / 1000000 )) MB"
