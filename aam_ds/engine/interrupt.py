"""Ctrl-C during training: finish the step, save a checkpoint, stop with one line (exit code 130).

Inside :func:`stop_requests` the first SIGINT only sets a flag. The training loop reduces the flag
over ranks after every step (so all ranks stop after the same step), saves a checkpoint and raises
:class:`RunInterrupted`; the entry point prints it as one line and exits with 130. A second SIGINT
goes to the handler that was there before (normally an immediate KeyboardInterrupt).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run between two steps, after its checkpoint was saved."""


class StopRequest:
    """The SIGINT handler of a training loop: ``requested`` turns True on the first Ctrl-C."""

    def __init__(self, previous: Any):
        self.requested = False
        self._previous = previous

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C interrupts at once


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch Ctrl-C as a stop request for the duration of the block (main thread only; a SIGINT that
    is ignored, as in background jobs, stays ignored). The previous handler is restored afterwards."""
    previous = signal.getsignal(signal.SIGINT)
    request = StopRequest(previous)
    catch = threading.current_thread() is threading.main_thread() and previous not in (signal.SIG_IGN, None)
    if catch:
        signal.signal(signal.SIGINT, request)
    try:
        yield request
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous)
