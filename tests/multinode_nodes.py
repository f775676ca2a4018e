"""Two "nodes" on one machine for the multi-node tests: a real OpenSSH server listening on the
loopback addresses that ``node001`` (127.0.0.1) and ``node002`` (127.0.0.2) resolve to, a throwaway
host key and user key pair, and an ``ssh`` on PATH that reads a client config naming that port and
key (what a cluster user keeps in ``~/.ssh/config``; OpenSSH reads the real home's files, not
``$HOME``'s, so the test points ssh at its own config instead of editing root's).

:func:`start_nodes` installs what it needs with ``scripts/setup_multinode.sh`` (root only) and
skips the test with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup_multinode.sh"
NODES = {"node001": "127.0.0.1", "node002": "127.0.0.2"}


@dataclass(frozen=True)
class Nodes:
    """A running sshd reachable as node001 / node002 and the PATH entry whose ``ssh`` reaches it."""

    sshd: subprocess.Popen
    bin_dir: Path

    def remote_processes(self) -> list[psutil.Process]:
        """Every process started through this sshd (its sessions and what they run)."""
        try:
            return psutil.Process(self.sshd.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_sessions(self) -> None:
        """SIGKILL whatever the ssh sessions started (ranks a failed run left behind); sshd stays."""
        for proc in self.remote_processes():
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass


def _ready() -> str | None:
    """Why this machine cannot host the nodes, or None once it can (installing when root)."""

    def missing() -> bool:
        return (
            not (shutil.which("sshd") or Path("/usr/sbin/sshd").is_file())
            or not shutil.which("pdsh")
            or not all(_resolves(name, address) for name, address in NODES.items())
        )

    if missing():
        if os.geteuid() != 0:
            return "needs openssh-server, pdsh and node001/node002 in /etc/hosts: run scripts/setup_multinode.sh as root"
        result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or missing():
            return f"scripts/setup_multinode.sh could not install what the test needs: {result.stderr[-500:]}"
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    return None


def _resolves(name: str, address: str) -> bool:
    try:
        return socket.gethostbyname(name) == address
    except OSError:
        return False


def free_port_on_both() -> int:
    """A port free on 127.0.0.1 and 127.0.0.2 a moment ago."""
    while True:
        with socket.socket() as first:
            first.bind((NODES["node001"], 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind((NODES["node002"], port))
                    return port
                except OSError:
                    continue


def _write_configs(folder: Path, port: int) -> tuple[Path, Path]:
    """Keys, the server's config and the client's config; returns (sshd_config, ssh_config)."""
    for key in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    shutil.copy(folder / "id_ed25519.pub", folder / "authorized_keys")
    server = folder / "sshd_config"
    server.write_text(
        f"Port {port}\n"
        + "".join(f"ListenAddress {address}\n" for address in NODES.values())
        + f"HostKey {folder / 'host_key'}\nAuthorizedKeysFile {folder / 'authorized_keys'}\nPidFile {folder / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nLogLevel ERROR\n"
    )
    client = folder / "ssh_config"
    client.write_text(
        "".join(f"Host {name}\n    HostName {address}\n" for name, address in NODES.items())
        + f"Host *\n    Port {port}\n    IdentityFile {folder / 'id_ed25519'}\n    IdentitiesOnly yes\n    BatchMode yes\n"
        f"    UserKnownHostsFile {folder / 'known_hosts'}\n    StrictHostKeyChecking accept-new\n    LogLevel ERROR\n"
    )
    return server, client


def start_nodes(folder: Path) -> Nodes:
    """Start sshd for node001 / node002 with configs and keys in ``folder``; skip with the reason if impossible."""
    if (reason := _ready()) is not None:
        pytest.skip(reason)
    port = free_port_on_both()
    server, client = _write_configs(folder, port)
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {client} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    sshd = subprocess.Popen(
        [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", str(server)],
        stdout=open(folder / "sshd.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    nodes = Nodes(sshd, bin_dir)
    deadline = time.monotonic() + 30
    while True:
        probe = subprocess.run([str(bin_dir / "ssh"), "node002", "true"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return nodes
        if sshd.poll() is not None or time.monotonic() > deadline:
            stop_nodes(nodes)
            pytest.fail(f"sshd did not accept the test key: {probe.stderr[-500:]} {(folder / 'sshd.log').read_text()[-1000:]}")
        time.sleep(0.2)


def stop_nodes(nodes: Nodes) -> None:
    nodes.kill_sessions()
    nodes.sshd.kill()
    nodes.sshd.wait(10)
