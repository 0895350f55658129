"""SIGINT and SIGTERM, handled by tnsearch in every phase of every command.

The one CLI wrapper (`tnsearch.cli.command`) holds `handled()` around each command, so a
report, an export, a profile or a compression ends on either signal with one line and 130 / 143;
the study command holds it around its work too, and tells what became of its running trials.

Lightning catches `KeyboardInterrupt` itself: it ignores SIGINT from then on and exits with
status 1, so a Ctrl-C during training never reached tnsearch's handling. Here both signals raise
`Interrupted`, which is not a KeyboardInterrupt: Lightning tears its trainer down and lets it
through, the trial runner records the running trial as failed ("interrupted (SIGTERM)") and ends
its MLflow run as KILLED, and the command exits with 128 + the signal number (130, 143).

A signal that arrives inside `deferred()` (while a trial's end is told to Optuna) is held until
the block ends, so a trial is never told twice; later signals while shutting down are held too.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SIGNALS", "Interrupted", "deferred", "handled"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The process got SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _State:
    def __init__(self) -> None:
        self.pending: int | None = None  # a signal held back
        self.raised = False  # Interrupted was raised once: hold every later signal
        self.depth = 0  # nesting of deferred()


_STATE = _State()


def _handler(signum: int, frame) -> None:
    if _STATE.depth > 0 or _STATE.raised:
        _STATE.pending = _STATE.pending or signum
        return
    _STATE.raised = True
    raise Interrupted(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _STATE.pending, _STATE.raised, _STATE.depth = None, False, 0
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends (then raise, unless shutting down)."""
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1
        if _STATE.depth == 0 and _STATE.pending is not None and not _STATE.raised:
            signum, _STATE.pending = _STATE.pending, None
            _STATE.raised = True
            raise Interrupted(signum)
