"""Process-group setup that works under the deepspeed launcher, torchrun and plain ``python``.

The deepspeed launcher and torchrun export RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; a plain ``python launch/pretrain.py`` run gets a one-process group on a free
loopback port. The backend is the accelerator's (NCCL / RCCL on GPUs), gloo on CPU.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

from aam_ds.errors import AamInputError

T = TypeVar("T")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_env() -> None:
    """Fill the launch variables for a one-process run started without a launcher."""
    partial = [name for name in LAUNCH_VARS if name in os.environ]
    if partial and "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
        missing = [name for name in LAUNCH_VARS if name not in os.environ]
        if missing:
            raise AamInputError(
                "environment",
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset",
                "start multi-process runs with `deepspeed` or `torchrun`, which set all launch variables",
            )
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def set_collective_timeout(timeout_s: int) -> None:
    """Make every process group created from now on (DeepSpeed's own included) time out.

    DeepSpeed creates its sub-groups without a timeout, so they inherit torch's module-level
    default (30 min); lowering that default before initialisation bounds every collective.
    """
    from torch.distributed import distributed_c10d

    timeout = timedelta(seconds=timeout_s)
    distributed_c10d.default_pg_timeout = timeout
    distributed_c10d.default_pg_nccl_timeout = timeout


def _accelerator_device_and_backend(local_rank: int) -> tuple[torch.device, str]:
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        return torch.device("cpu"), "gloo"
    accel.set_device(local_rank)
    return torch.device(accel.device_name(local_rank)), accel.communication_backend_name()


def init_distributed(timeout_s: int = 600) -> DistContext:
    """Join (or create) the process group; idempotent. Returns this process's place in it."""
    import deepspeed
    import deepspeed.ops

    global _TIMEOUT_S
    single_process_env()
    set_collective_timeout(timeout_s)
    _TIMEOUT_S = timeout_s
    # The CPU shared-memory allreduce op is JIT-compiled on first use (~40 s): gloo suffices.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    local_rank = int(os.environ["LOCAL_RANK"])
    device, backend = _accelerator_device_and_backend(local_rank)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False)
        if (store := _store(timeout_s)) is not None:
            store.set(NODE_KEY.format(dist.get_rank()), node_text())
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def node_text() -> str:
    """Where this process runs: the node rank its launcher gave it (deepspeed: CROSS_RANK, torchrun:
    GROUP_RANK, SLURM: SLURM_NODEID) and the host name, e.g. ``node 1, host gpu017``."""
    node = next((os.environ[name] for name in ("CROSS_RANK", "GROUP_RANK", "SLURM_NODEID") if name in os.environ), None)
    return ", ".join([*([f"node {node}"] if node is not None else []), f"host {socket.gethostname()}"])


@contextmanager
def report_rank_failure(rank: int | str) -> Iterator[None]:
    """Print any exception escaping the block to stderr prefixed with ``[rank N]``, then re-raise.

    A bad input (AamInputError) is one line; a collective that timed out, or whose peer went away
    (a killed or crashed rank), is one line naming the rank(s) that did not answer and their nodes
    (:func:`collective_timeout_text`, :func:`peer_lost_text`); Ctrl-C (KeyboardInterrupt) is one
    line from rank 0 only; anything else comes with its traceback.
    """
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        if isinstance(exc, KeyboardInterrupt):
            if str(rank) == "0":
                sys.stderr.write(f"[rank 0] interrupted: {str(exc) or 'Ctrl-C'}\n")
                sys.stderr.flush()
            raise
        if isinstance(exc, AamInputError):
            detail = f"error: {exc}"
        elif is_collective_timeout(exc):
            detail = f"error: {collective_timeout_text()}"
        elif is_peer_lost(exc):
            detail = f"error: {peer_lost_text()}"
        else:
            detail = "".join(traceback.format_exception(exc)).rstrip()
        sys.stderr.write("\n".join(f"[rank {rank}] {line}" for line in detail.splitlines()) + "\n")
        sys.stderr.flush()
        raise


_TIMEOUT_S: int | None = None  # parallel.collective_timeout_s of this process's group
PROGRESS_KEY, TIMED_OUT_KEY, NODE_KEY = "aam-ds/step/{}", "aam-ds/timed-out/{}", "aam-ds/node/{}"
PEER_WAIT_S = 5.0  # after a failed collective, how long a rank waits for the others to say whether they failed too


def _store(timeout_s: float) -> Any:
    """The process group's rendezvous store (hosted by rank 0), or None in a one-process run."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    store = dist.distributed_c10d._get_default_store()
    store.set_timeout(timedelta(seconds=timeout_s))
    return store


def mark_progress(step: int) -> None:
    """Record in the rendezvous store that this rank began optimizer step ``step`` (named when a
    collective times out)."""
    store = _store(_TIMEOUT_S or 600)
    if store is not None:
        store.set(PROGRESS_KEY.format(dist.get_rank()), str(step))


TIMEOUT_WORDING = ("timed out", "application timeout")  # gloo / NCCL; gloo's later calls: "Application timeout caused pair closure"
PEER_LOST_WORDING = ("connection closed by peer", "connection reset by peer")  # gloo, when the process at the other end died


def _raised_for(exc: BaseException, wording: tuple[str, ...]) -> bool:
    """Whether ``exc``, or an exception it was raised while handling, is a RuntimeError of this
    group's collectives whose text holds one of ``wording`` (lower case)."""
    seen: BaseException | None = exc
    while seen is not None and _TIMEOUT_S is not None:
        if isinstance(seen, RuntimeError) and any(words in str(seen).lower() for words in wording):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def is_collective_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a collective of this group that timed out (gloo / NCCL wording)."""
    return _raised_for(exc, TIMEOUT_WORDING)


def is_peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) is a collective of this group whose peer closed the connection
    (gloo wording: the rank at the other end was killed or crashed)."""
    return _raised_for(exc, PEER_LOST_WORDING)


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because of another rank (timed out or lost its peer), not this one."""
    return is_collective_timeout(exc) or is_peer_lost(exc)


def collective_timeout_text() -> str:
    """After a timeout: which ranks did not answer (:func:`silent_ranks_text`)."""
    return silent_ranks_text(
        f"a collective operation timed out after parallel.collective_timeout_s={_TIMEOUT_S} s",
        "they waited in different collectives",
        "or raise parallel.collective_timeout_s if it is only slow",
    )


def peer_lost_text() -> str:
    """After a peer closed its connection: which ranks are gone (:func:`silent_ranks_text`)."""
    return silent_ranks_text(
        "a collective operation lost its connection to another rank",
        "a connection between nodes broke",
        "check the network between the nodes",
    )


def silent_ranks_text(head: str, all_answered: str, other_fix: str) -> str:
    """One line after a failed collective (``head``): each rank that met the failure says so in the
    store, waits ``PEER_WAIT_S`` for the others, and names those that did not (the silent ones:
    stopped, killed or stuck elsewhere) with the last step they began and their node;
    ``all_answered``: the likely cause when every rank answered; ``other_fix``: the last remedy."""
    fix = f". Fix: look at the named rank's log and machine (a crash, out of memory, a slow file system, a stopped process), {other_fix}"
    try:
        store = _store(PEER_WAIT_S)
        store.set(TIMED_OUT_KEY.format(dist.get_rank()), "1")
        time.sleep(PEER_WAIT_S)
        silent = [rank for rank in range(dist.get_world_size()) if not store.check([TIMED_OUT_KEY.format(rank)])]
        found = {
            (rank, key): store.get(key.format(rank)).decode()
            for rank in silent
            for key in (PROGRESS_KEY, NODE_KEY)
            if store.check([key.format(rank)])
        }
    except Exception:  # the store lives in rank 0: it is the silent one
        return f"{head}: rank 0 (which holds the rendezvous store) did not answer{fix}"
    if not silent:
        return f"{head} on every rank: {all_answered}{fix}"
    named = ", ".join(
        f"rank {rank} (last step begun: {found.get((rank, PROGRESS_KEY), 'none')}"
        + (f"; on {found[rank, NODE_KEY]})" if (rank, NODE_KEY) in found else ")")
        for rank in silent
    )
    return f"{head}: {named} did not answer{fix}"


def process_rank() -> int:
    """This process's rank in the default process group (0 when there is none)."""
    return dist.get_rank() if dist.is_initialized() else 0


def launcher_rank() -> int:
    """The rank the launcher (deepspeed, torchrun, the launch scripts under srun) gave this process in
    ``RANK`` (0 without one): the rank before the process group exists, e.g. while parsing arguments."""
    return int(os.environ.get("RANK", "0"))


def process_world_size() -> int:
    """Ranks in the default process group (1 when there is none)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def main_first(ctx: DistContext, work: Callable[[bool], T]) -> T:
    """``work(True)`` on rank 0, then, after a barrier, ``work(False)`` on the other ranks; every
    rank returns its own result. For "rank 0 prepares (fills a cache, writes the files), the others
    then read": the flag says whether this rank is the one that prepares."""
    result = work(True) if ctx.is_main else None
    barrier()
    return result if ctx.is_main else work(False)


def barrier() -> None:
    """Wait for every rank (a no-op without a process group of several ranks)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank; every rank must call it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank; every rank must call it."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def check_on_main(ctx: DistContext, check: Callable[[], None]) -> None:
    """Run ``check`` on rank 0 only (e.g. one that talks to a service); an AamInputError it raises is
    raised on every rank, so no rank waits for a rank that failed. Every rank must call it."""
    problem = None
    if ctx.is_main:
        try:
            check()
        except AamInputError as exc:
            problem = (exc.source, exc.problem, exc.fix)
    problem = broadcast_from_main(problem)
    if problem is not None:
        raise AamInputError(*problem)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (every rank gets the same dict back)."""
    if not values or not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    names = sorted(values)
    buf = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    dist.all_reduce(buf)
    buf /= dist.get_world_size()
    return dict(zip(names, buf.tolist()))


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (``value`` itself in a single process)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    buf = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return float(buf.item())


def exit_process(code: int = 0) -> None:
    """Leave without running C++ static destructors.

    ~5% of successful multi-rank gloo runs otherwise abort at interpreter exit
    ("terminate called without an active exception"): synchronise, flush, then ``os._exit``.
    """
    if code == 0:
        barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
