"""Repeated plans: samplers do propose a plan again, and a study trains each plan once.

A trial whose plan (its tensorized layers, precisions and training choices) an earlier trial
trained tells that trial's values again (`trial._Trial.duplicate`); one whose plan another
worker is training waits for that trial to end first.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch.measure import latency
from tnsearch.study import liveness, record
from tnsearch.study.record import Record
from tnsearch.study.tracker import Tracker
from tnsearch.ui import Console

__all__ = ["copied", "find", "same_plan"]


def same_plan(one: Record, other: Record) -> bool:
    """Whether `one` and `other` are two trials of one plan: the same tensorized layers,
    precisions and training choices."""
    return (
        other.number != one.number
        and other.plan is not None
        and other.layers == one.layers
        and dict(other.plan.precision) == dict(one.plan.precision if one.plan else {})
        and dict(other.training_choices or {}) == dict(one.training_choices or {})
    )


def find(
    study: optuna.Study,
    proposed: Record,
    console: Console,
    tracker: Tracker | None,
    *,
    poll_s: float = 1.0,
) -> Record | None:
    """An earlier trained trial of `study` with exactly the plan of `proposed` (a trial's record
    with its plan and training choices), if any. A plan that another worker is training counts
    as taken: the proposed trial waits for that one (reaping dead workers' trials meanwhile,
    with `tracker`)."""
    while True:
        for other in record.records(study, (TrialState.COMPLETE,)):
            if other.is_trained and same_plan(proposed, other):
                return other
        running = [
            r for r in record.records(study, (TrialState.RUNNING,)) if same_plan(proposed, r)
        ]
        if not running:
            return None
        console.say(
            f"trial {proposed.number:>3}  the same plan is training as trial "
            f"{running[0].number}: waiting for it"
        )
        while any(
            r.state == TrialState.RUNNING
            for r in record.records(study, (TrialState.RUNNING,))
            if r.number == running[0].number
        ):
            time.sleep(poll_s)
            liveness.reap(study, tracker)


def copied(earlier: Record) -> dict[str, Any]:
    """The record fields a repeat of trial `earlier` takes from it: its plan, size, latency and
    quality, its measured objectives, and which trial it repeats (not trained)."""
    return {
        "plan": earlier.plan,
        "params": earlier.params,
        "compression": earlier.compression,
        **{name: getattr(earlier, name) for name in latency.FIELDS},
        "measures": earlier.measures,
        "trained": False,
        "duplicate_of": earlier.number,
        "quality": earlier.quality,
    }
