"""What a person sees on the console: a line per trial, and the front at the end."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any


def say(text: str) -> None:
    """Print a line for the user (stdout, flushed, so progress shows under launchers too)."""
    from tnsearch import progress

    tag = os.environ.get("TNSEARCH_WORKER_TAG", "")
    progress.print_above("\n".join(tag + line for line in text.split("\n")) if tag else text)


def trial_line(
    number: int, summary: str, outcome: str, attrs: Mapping[str, Any], seconds: float
) -> str:
    """One line per trial: number, plan summary, accuracy, params (compression), latency, time."""
    head = f"trial {number:>3}  {summary[:48]:<48}"
    if outcome == "complete":
        return (
            f"{head}  acc {attrs['accuracy']:.4f}  params {attrs['params']:>10,} "
            f"({attrs['compression']:.1f}x)  {attrs['latency_ms']:.3f} ms  {seconds:.1f} s"
        )
    if outcome == "infeasible":
        return f"{head}  infeasible: {attrs.get('infeasible', '')}"
    if outcome == "duplicate":
        return f"{head}  same plan as trial {attrs['duplicate_of']}: not trained again"
    return f"{head}  {outcome.upper()}: {attrs.get('fail_reason', attrs.get('prune_reason', ''))}"


def error(text: str) -> None:
    """One line on stderr for a problem that stops the command."""
    print(f"error: {text}", file=sys.stderr, flush=True)
