"""SIGTERM and SIGINT stop training at the next step boundary, after a checkpoint, instead of killing it.

A scheduler's SIGTERM (preemption, `scancel`) or a first Ctrl-C sets a flag that the trainer reads after
each step; it then saves a checkpoint and returns. A second Ctrl-C means "now": it raises
KeyboardInterrupt at once (the checkpoint being written, if any, stays a `-tmp` directory, never a
partial one under a final name). Handlers can only be installed from the main thread; elsewhere (a
test runner's worker thread) stopping by signal is simply not available.

A run stopped this way exits with `STOPPED_EXIT_CODE` (75, BSD's EX_TEMPFAIL: "try again later"), the
same for SIGINT and SIGTERM and for one process or N under `--nproc-per-node`, so that a script or
scheduler tells "stopped, checkpoint saved, `olmo resume` continues" from "finished" (0), from a user
error (2-5) and from a kill without a checkpoint (130 for the second Ctrl-C, 128+N for signal N).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["STOPPED_EXIT_CODE", "StopRequest", "stop_on_signals"]

STOPPED_EXIT_CODE = 75
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by a signal (or by code: `request()`); read by the trainer at step boundaries."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, why: str = "request") -> None:
        if self.signal_name is None:
            self.signal_name = why

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without waiting for the save
        self.request(signal.Signals(signum).name)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Routes SIGINT and SIGTERM to `stop` for the duration of the block, then restores the handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, stop._handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
