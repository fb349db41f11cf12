"""SIGTERM and SIGINT: stop at a safe point, keep what was done, exit non-zero.

Schedulers end jobs with SIGTERM (SLURM preemption and ``scancel``, Kubernetes, systemd), users with
Ctrl-C (SIGINT). Under :func:`handle_signals` (the CLIs install it):

* outside training, the signal raises :class:`Interrupted` where the program is. Every file that
  srt appends to is written a full line at a time and flushed, so nothing finished is lost, and
  the next run resumes;
* inside :func:`deferred` (training), the signal is only recorded: the trainer stops at the next
  optimizer-step boundary, saves a checkpoint and raises :class:`Interrupted` itself
  (:class:`srt.pipeline.checkpoints.StopOnSignal`). A second Ctrl-C stops at once.

The CLI turns :class:`Interrupted` into one line and the exit status ``128 + signal number``
(143 for SIGTERM, 130 for SIGINT), so a scheduler never records an interrupted run as a success.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """Raised when SIGTERM/SIGINT stopped the run. A BaseException, so ``except Exception`` in
    library code cannot swallow it."""

    def __init__(self, signum: int, where: str = "", saved: str = ""):
        self.signum = int(signum)
        self.where = where
        self.saved = saved
        super().__init__(self.message())

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        text = f"interrupted by {signal.Signals(self.signum).name}"
        if self.where:
            text += f" during {self.where}"
        if self.saved:
            text += f"; {self.saved}"
        return text + "; run the same command again to resume"


class _State:
    def __init__(self):
        self.signum: int | None = None  # the signal received while deferring
        self.defer_depth = 0
        self.installed = False


_state = _State()


def _handler(signum, frame) -> None:
    if _state.defer_depth > 0:
        if signum == signal.SIGINT and _state.signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without waiting for the step
        _state.signum = signum
        return
    raise Interrupted(signum)


def requested() -> int | None:
    """The signal received while deferring (None if none)."""
    return _state.signum


def record(signum: int) -> None:
    """Record a signal as if it had arrived while deferring (Lightning's own handler saw it first)."""
    _state.signum = int(signum)


def clear() -> None:
    _state.signum = None


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the SIGTERM/SIGINT handlers for the duration (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, _handler)
    _state.installed = True
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.installed = False
        clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within this block a signal is recorded (see :func:`requested`), not raised."""
    _state.defer_depth += 1
    try:
        yield
    finally:
        _state.defer_depth -= 1
    # Only when the block ended normally: a signal that came too late for the trainer to act on.
    if _state.defer_depth == 0 and _state.signum is not None:
        signum = _state.signum
        clear()
        raise Interrupted(signum)
