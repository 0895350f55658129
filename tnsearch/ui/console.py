"""Lines for the user on the console (one per trial among them), and the one-line error of a
command that stops."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Protocol, TextIO

from tnsearch import objectives
from tnsearch.ui.names import short_name


class StatusLine(Protocol):
    """A live line at the bottom of the console (e.g. the study's `ui.progress.Progress`)."""

    enabled: bool

    def print_above(self, text: str) -> None: ...


class Console:
    """Where a command's messages go: stdout, flushed (so progress shows under launchers too).

    Args:
        tag: prefix of every line (e.g. "[w1] " for local worker 1 of several).
        stream: default sys.stdout.

    While a live status line is shown (`status`), lines are printed above it.
    """

    def __init__(self, tag: str = "", *, stream: TextIO | None = None) -> None:
        self.tag = tag
        self.stream = stream
        self.status: StatusLine | None = None

    def say(self, text: str) -> None:
        """Print `text` (each of its lines with the tag)."""
        if self.tag:
            text = "\n".join(self.tag + line for line in text.split("\n"))
        if self.status is not None and self.status.enabled:
            self.status.print_above(text)
        else:
            print(text, file=self.stream or sys.stdout, flush=True)


class Figures(Protocol):
    """What a trial's console line reads of its record (`study.record.Record`)."""

    number: int
    quality: float | None
    params: int | None
    compression: float | None
    infeasible: str | None
    duplicate_of: int | None
    fail_reason: str | None
    prune_reason: str | None
    extras: Mapping[str, float]  # the other objectives' figures, by metric name

    def latency_text(self) -> str: ...


def trial_line(
    rec: Figures, summary: str, outcome: str, seconds: float, *, metric: str = "accuracy"
) -> str:
    """One console line per trial: number, plan summary, quality (under the task's name),
    params (compression), latency, the measured objectives, time; or why it was not trained.
    `outcome`: how the trial ended, by name (`study.record.Outcome`'s value: complete,
    infeasible, duplicate, ...)."""
    head = f"trial {rec.number:>3}  {summary[:48]:<48}"
    if outcome == "complete":
        return (
            f"{head}  {short_name(metric)} {rec.quality:.4f}  params {rec.params:>10,} "
            f"({rec.compression:.1f}x)  {rec.latency_text()}{extras_text(rec.extras)}  "
            f"{seconds:.1f} s"
        )
    if outcome == "infeasible":
        return f"{head}  infeasible: {rec.infeasible or ''}"
    if outcome == "duplicate":
        return f"{head}  same plan as trial {rec.duplicate_of}: not trained again"
    reason = rec.fail_reason or rec.prune_reason or ""
    return f"{head}  {outcome.upper()}: {reason}"


def extras_text(extras: Mapping[str, float]) -> str:
    """The other objectives' figures as the console shows them: `  flops 1.2M` ('' for
    none)."""
    return "".join(f"  {k} {objectives.text(k, v)}" for k, v in extras.items())


def warn(text: str) -> None:
    """One line on stderr for something the user should know that does not stop the command."""
    print(f"warning: {text}", file=sys.stderr, flush=True)


def error(text: str) -> None:
    """One line on stderr for a problem that stops the command."""
    print(f"error: {text}", file=sys.stderr, flush=True)
