"""How a run stops early: SIGINT and SIGTERM finish the current update and checkpoint; other failures name themselves.

A terminal's Ctrl-C sends SIGINT; Ray, SLURM and Kubernetes send SIGTERM before they preempt a job.  Inside
``stop_on_signals`` either one only sets a flag, which the run loop reads between environment steps: the update
under way finishes, the loop writes a checkpoint and raises ``Interrupted``, and ``reweigh`` exits with
128 + the signal's number (130, 143), the code a shell reports for a process that signal ended.  A second signal
while the first is being handled stops at once (``KeyboardInterrupt``, no checkpoint).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals that stop a run at its next step with a checkpoint.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped by a signal after its current update, with a checkpoint written.

    Attributes:
        signum: the signal's number.
        step: the environment step of the checkpoint.
        exit_code: 128 + ``signum``.
    """

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"interrupted at env step {step}; checkpoint written; re-run the same command to resume")
        self.signum, self.step, self.exit_code = signum, step, 128 + signum


class RunFailedError(RuntimeError):
    """An exception other than a ``RuntimeError`` raised while a run trained (after its directory was written),
    re-raised with its type in the message; the original is its ``__cause__``."""


class StopFlag:
    """The signals received since ``stop_on_signals`` began, in order (empty: go on)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.received)


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT and SIGTERM append to the yielded ``StopFlag`` instead of ending the process; the
    previous handlers come back at its end.  Outside the main thread (where Python cannot set handlers) the flag
    never rises and the signals act as before."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.received:  # a second signal: stop now, without the checkpoint
            raise KeyboardInterrupt
        flag.received.append(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
