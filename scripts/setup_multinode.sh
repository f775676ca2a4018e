#!/usr/bin/env bash
# What the multi-node tests (tests/test_multinode.py) need on a Debian machine, as root:
# OpenSSH (client and server) and pdsh, DeepSpeed's default way to reach the other nodes, SLURM
# (slurmctld, slurmd, its commands, munge; the tests write their own configuration), and two
# node names on loopback addresses (node001 -> 127.0.0.1, node002 -> 127.0.0.2) so that the
# README's multi-node command runs unchanged on one machine. Idempotent; scripts/test.sh runs it.
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup_multinode: needs root and apt-get; the multi-node tests will skip" >&2
    exit 1
fi
PACKAGES="openssh-server openssh-client pdsh slurmctld slurmd slurm-client munge"
if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/sbin/slurmd ] || [ ! -x /usr/sbin/slurmctld ] || ! command -v pdsh >/dev/null || ! command -v sbatch >/dev/null || [ ! -x /usr/sbin/munged ]; then
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $PACKAGES >/dev/null 2>&1; }
fi
for entry in "127.0.0.1 node001" "127.0.0.2 node002"; do
    name=${entry#* }
    getent hosts "$name" >/dev/null || echo "$entry" >> /etc/hosts
done
mkdir -p /run/sshd  # sshd's privilege-separation folder
