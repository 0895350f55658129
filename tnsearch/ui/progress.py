"""A live status line for a person watching a study in a terminal.

    trials 4/12 [######------------] | 3m12s elapsed | ETA 6m40s | best acc 0.9250 | front 3

The line is redrawn in place (carriage return, erase to end of line) after each trial and once a
second in between, so the clock runs during a long trial. It is off when the output is not a
terminal (a log file, a launcher, CI). Other output must go through `print_above` (a `Console`
whose `status` is this display does so), which clears the line, prints, and redraws it. What
the line shows is a `Snapshot`, read from the study by its caller.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import TextIO

from tnsearch.ui.names import short_name

__all__ = ["Progress", "Snapshot", "Steps", "clock", "render", "steps_line"]

_ERASE = "\r\x1b[K"  # back to column 0, erase to the end of the line


@dataclass(frozen=True)
class Snapshot:
    """What the status line shows."""

    done: int  # counted trials: finished (or pruned) and trained
    target: int
    elapsed: float  # seconds since the display started
    eta: float | None  # seconds to the target, None before a trial finished
    best_quality: float | None  # the best quality (accuracy, fidelity...) of finished trials
    front: int  # Pareto-optimal trials
    metric: str = "accuracy"  # the quality's name


def clock(seconds: float) -> str:
    """A short duration: 45s, 3m12s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def render(s: Snapshot, width: int = 100) -> str:
    """The status line for `s`, at most `width - 1` characters (a full line would wrap)."""
    filled = round(18 * min(s.done, s.target) / s.target) if s.target else 18
    parts = [
        f"trials {s.done}/{s.target} [{'#' * filled}{'-' * (18 - filled)}]",
        f"{clock(s.elapsed)} elapsed",
        f"ETA {clock(s.eta)}" if s.eta is not None else "ETA -",
        f"best {short_name(s.metric)} "
        + (f"{s.best_quality:.4f}" if s.best_quality is not None else "-"),
        f"front {s.front}",
    ]
    line = " | ".join(parts)
    return line if len(line) < width else line[: max(0, width - 2)] + "~"


class Progress:
    """The live status line of one worker.

    Args:
        target: the trials the study should hold.
        enabled: None: on iff `stream` is a terminal.
        stream: where to draw (default sys.stdout).
        workers: processes working on the study, for the ETA.
        refresh: seconds between redraws while nothing happens (0: only on `update`).
    """

    def __init__(
        self,
        target: int,
        *,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        workers: int = 1,
        refresh: float = 1.0,
    ) -> None:
        self.stream = stream or sys.stdout
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.target, self.workers = target, workers
        self.started = time.monotonic()
        self._snapshot: Snapshot | None = None
        self._taken = self.started  # when _snapshot was read
        self._shown = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled and refresh > 0:
            self._thread = threading.Thread(target=self._tick, args=(refresh,), daemon=True)
            self._thread.start()

    @property
    def elapsed(self) -> float:
        """Seconds since the display started."""
        return time.monotonic() - self.started

    def update(self, fresh: Snapshot) -> None:
        """Show `fresh` (its `elapsed` counts from this display's start) and redraw the line."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            self._snapshot, self._taken = fresh, now
            self._draw()

    def line(self) -> str:
        """The current status line ('' before the first update)."""
        if self._snapshot is None:
            return ""
        ran = time.monotonic() - self._taken
        eta = None if self._snapshot.eta is None else max(0.0, self._snapshot.eta - ran)
        current = replace(self._snapshot, elapsed=self._snapshot.elapsed + ran, eta=eta)
        return render(current, shutil.get_terminal_size((100, 24)).columns)

    def print_above(self, text: str) -> None:
        """Print `text` (and a newline) above the status line."""
        with self._lock:
            if self._shown:
                self.stream.write(_ERASE)
            self.stream.write(text + "\n")
            if self._shown:
                self._draw()
            self.stream.flush()

    def clear(self) -> None:
        """Erase the status line (it comes back on the next update)."""
        with self._lock:
            if self._shown:
                self.stream.write(_ERASE)
                self.stream.flush()
                self._shown = False

    def close(self) -> None:
        """Stop redrawing and erase the line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.clear()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self) -> None:
        text = self.line()
        if text:
            self.stream.write(_ERASE + text)
            self.stream.flush()
            self._shown = True

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._lock:
                if self._shown:
                    self._draw()


def steps_line(what: str, done: int, total: int, elapsed: float, note: str = "") -> str:
    """`profile 12/40 [#####---------] 31s elapsed | ETA 1m12s | note`: the ETA is the mean time
    per step so far times the steps left."""
    filled = round(14 * min(done, total) / total) if total else 14
    eta = (
        f"ETA {clock(elapsed / done * (total - done))}"
        if 0 < done < total
        else ("done" if done >= total else "ETA -")
    )
    parts = [f"{what} {done}/{total} [{'#' * filled}{'-' * (14 - filled)}]",
             f"{clock(elapsed)} elapsed", eta]  # fmt: skip
    return " | ".join(parts + ([note] if note else []))


class Steps:
    """Progress of one long step of known size (the profile's options, pretraining's epochs,
    the models logged): done/total, elapsed and ETA, in the study's status line style.

    On a terminal the line is redrawn in place (a clock that runs between steps too) and kept
    when the step ends; otherwise (a log, a launcher, CI) it is printed as a plain line at most
    every `every` seconds, and always for the first and the last step.

    Args:
        what: the step's name, first on the line ("profile", "pretrain").
        total: how many steps there are.
        say: where plain lines go (a `Console.say`; default print).
        stream: the terminal to draw on (default sys.stdout); `enabled` as `Progress`.
    """

    def __init__(
        self,
        what: str,
        total: int,
        *,
        say=None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        every: float = 5.0,
    ) -> None:
        self.what, self.total, self.done, self.note = what, max(int(total), 0), 0, ""
        self.say = say or (lambda text: print(text, flush=True))
        self.stream = stream or sys.stdout
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.live, self.every = enabled, every
        self.started = time.monotonic()
        self._printed = -float("inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.live:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def line(self) -> str:
        return steps_line(self.what, self.done, self.total, self.elapsed, self.note)

    def advance(self, n: int = 1, note: str = "") -> None:
        """`n` more steps are done (`note`: what the last one was, shown at the line's end)."""
        with self._lock:
            self.done, self.note = self.done + n, note
            if self.live:
                self._draw()
            elif self.done >= self.total or time.monotonic() - self._printed >= self.every:
                self._printed = time.monotonic()
                self.say(self.line())

    def close(self) -> None:
        """End the display (a terminal keeps the last line)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self.live:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
                self.live = False

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        text = self.line()
        text = text if len(text) < width else text[: max(0, width - 2)] + "~"
        self.stream.write(_ERASE + text)
        self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.live:
                    self._draw()
