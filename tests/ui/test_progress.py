"""The live status line: its text, and that it shows on a terminal only."""

from __future__ import annotations

import datetime
import io
import os
import pty
import select
import time

import pytest
from optuna.trial import TrialState

from tests.helpers import constructed_study, constructed_trial
from tnsearch.study.loop import snapshot
from tnsearch.ui import Console
from tnsearch.ui.progress import Progress, Snapshot, clock, render


def _study():
    now = datetime.datetime.now()
    trials = [
        constructed_trial(0.95, 50610, 0.10),
        constructed_trial(0.97, 5000, 0.30, {"fc1": ("mpo", 2, 8)}),
        constructed_trial(0.0, 500, 0.01, {"fc1": ("cp", 1, 2)}, trained=False),
    ]
    for trial, seconds in zip(trials, (10, 30, 2), strict=True):
        trial.datetime_start = now - datetime.timedelta(seconds=seconds)
        trial.datetime_complete = now
    pruned = constructed_trial(0.99, 900, 0.2, {"fc2": ("cp", 1, 2)})  # a partial accuracy
    pruned.state, pruned.values = TrialState.PRUNED, None
    return constructed_study([*trials, pruned])


def test_render_shows_trials_time_eta_best_and_front():
    line = render(Snapshot(done=4, target=12, elapsed=192, eta=400, best_quality=0.925, front=3))
    assert line == (
        "trials 4/12 [######------------] | 3m12s elapsed | ETA 6m40s | best acc 0.9250 | front 3"
    )
    empty = render(Snapshot(done=0, target=5, elapsed=3, eta=None, best_quality=None, front=0))
    assert "trials 0/5 [------------------]" in empty and "ETA -" in empty
    assert "best acc -" in empty
    narrow = render(Snapshot(4, 12, 192, 400, 0.925, 3), width=40)
    assert len(narrow) < 40 and narrow.endswith("~")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3725, "1h02m")]
)
def test_clock(seconds, text):
    assert clock(seconds) == text


def test_snapshot_counts_trained_trials_and_estimates_from_the_mean_trial_time():
    s = snapshot(_study(), target=5, elapsed=42.0)
    assert (s.done, s.target, s.elapsed, s.front) == (3, 5, 42.0, 2)  # pruned trials count
    assert s.best_quality == 0.97  # of finished trials
    mean = (10 + 30 + 2) / 3  # every finished trial took time, infeasible ones too
    assert s.eta == pytest.approx(mean * 2, rel=0.05)
    assert snapshot(_study(), target=7, elapsed=0, workers=4).eta == pytest.approx(mean, rel=0.05)
    assert snapshot(_study(), target=3, elapsed=0).eta == 0.0


def test_off_when_not_a_terminal():
    stream = io.StringIO()
    bar = Progress(5, stream=stream)
    assert not bar.enabled
    bar.update(snapshot(_study(), 5, 0.0))
    bar.print_above("trial 3 ...")
    bar.close()
    assert stream.getvalue() == "trial 3 ...\n"


def _read(fd: int) -> str:
    time.sleep(0.05)
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            return b"".join(chunks).decode()
        chunks.append(os.read(fd, 65536))


def test_on_a_terminal_the_line_is_redrawn_in_place_under_other_output(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # the width it draws to (xdist: 80)
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as stream:
        bar = Progress(5, stream=stream, refresh=0)
        assert bar.enabled
        bar.update(snapshot(_study(), 5, 0.0))
        shown = _read(master)
        assert shown.startswith("\r\x1b[Ktrials 3/5") and "best acc 0.9700 | front 2" in shown
        assert "\n" not in shown
        bar.print_above("trial   3  mpo x1  acc 0.9")
        above = _read(master)  # erase, the line, then the status line again
        assert above.startswith("\r\x1b[Ktrial   3  mpo x1  acc 0.9\r\n\r\x1b[Ktrials 3/5")
        console = Console("[w1] ", stream=stream)
        console.status = bar
        console.say("via the console")  # a console with a status line prints above it
        assert "[w1] via the console\r\n\r\x1b[Ktrials" in _read(master)
        bar.close()
        assert _read(master) == "\r\x1b[K"
        console.say("plain again")  # the line is closed: plain lines
        assert _read(master) == "[w1] plain again\r\n"
    os.close(master)


def test_the_clock_runs_between_updates():
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as stream:
        bar = Progress(5, stream=stream, refresh=0.05)
        bar.update(snapshot(_study(), 5, 0.0))
        time.sleep(0.4)
        bar.close()
        assert _read(master).count("trials 3/5") >= 3
    os.close(master)


def test_enabled_can_be_forced():
    stream = io.StringIO()
    with Progress(5, stream=stream, enabled=True, refresh=0) as bar:
        bar.update(snapshot(_study(), 5, 0.0))
    assert "trials 3/5" in stream.getvalue() and stream.getvalue().endswith("\r\x1b[K")
