"""`tnsearch.study.liveness`: telling a dead worker's trial from a live one, and reaping it."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from tnsearch.study import liveness, record
from tnsearch.study.record import Record

optuna.logging.set_verbosity(optuna.logging.WARNING)

HOST = socket.gethostname()
OTHER = HOST + "-elsewhere"


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has ended (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    try:
        os.kill(proc.pid, 0)
    except ProcessLookupError:
        return proc.pid
    pytest.skip(f"pid {proc.pid} was reused already")


def test_worker_id_is_host_and_pid():
    assert liveness.worker_id() == f"{HOST}:{os.getpid()}"


def test_dead_reason_process_gone_on_this_host(dead_pid):
    rec = Record(state=TrialState.RUNNING, worker=f"{HOST}:{dead_pid}", heartbeat=time.time())
    reason = liveness.dead_reason(rec)
    assert reason is not None
    assert "process gone" in reason and f"{HOST}:{dead_pid}" in reason and "died" in reason


def test_dead_reason_none_for_this_process():
    rec = Record(state=TrialState.RUNNING, worker=liveness.worker_id(), heartbeat=time.time())
    assert liveness.dead_reason(rec) is None


def test_dead_reason_same_pid_on_another_host_is_judged_by_heartbeat(dead_pid):
    # The pid is dead here, but the worker is elsewhere: its pid means nothing on this host.
    rec = Record(worker=f"{OTHER}:{dead_pid}", heartbeat=time.time())
    assert liveness.dead_reason(rec) is None


def test_dead_reason_no_heartbeat_on_another_host():
    now = 1_700_000_000.0
    rec = Record(worker=f"{OTHER}:123", heartbeat=now - 61)
    reason = liveness.dead_reason(rec, now=now, grace=60)
    assert reason == f"worker {OTHER}:123 died (no heartbeat for 61 s)"


def test_dead_reason_recent_heartbeat_on_another_host():
    now = 1_700_000_000.0
    rec = Record(worker=f"{OTHER}:123", heartbeat=now - 59)
    assert liveness.dead_reason(rec, now=now, grace=60) is None
    assert liveness.dead_reason(rec, now=now, grace=10) is not None
    assert liveness.dead_reason(Record(worker=f"{OTHER}:1", heartbeat=time.time())) is None


def test_dead_reason_falls_back_to_the_start_time_without_a_heartbeat():
    now = 1_700_000_000.0
    started = datetime.datetime.fromtimestamp(now - 300)
    old = Record(worker=None, started=started)
    reason = liveness.dead_reason(old, now=now, grace=60)
    assert reason == "worker unknown died (no heartbeat for 300 s)"
    fresh = Record(worker=None, started=datetime.datetime.fromtimestamp(now - 5))
    assert liveness.dead_reason(fresh, now=now, grace=60) is None
    # A heartbeat, when there is one, wins over the start time.
    beating = Record(worker=f"{OTHER}:1", started=started, heartbeat=now - 1)
    assert liveness.dead_reason(beating, now=now, grace=60) is None


def test_dead_reason_unparsable_worker_is_judged_by_heartbeat():
    now = 1_700_000_000.0
    rec = Record(worker=f"{HOST}:notapid", heartbeat=now)
    assert liveness.dead_reason(rec, now=now) is None


# -- reap on a real study --------------------------------------------------------------------------
def test_reap_fails_a_dead_workers_trial_and_keeps_a_live_one(dead_pid):
    study = optuna.create_study()
    dead = study.ask()
    record.write_fields(dead, worker=f"{HOST}:{dead_pid}", heartbeat=time.time())
    live = study.ask()
    record.write_fields(live, worker=liveness.worker_id(), heartbeat=time.time())
    done = study.ask()
    study.tell(done, 1.0)

    assert liveness.reap(study) == [dead.number]

    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[dead.number].state == TrialState.FAIL
    assert "died" in by_number[dead.number].user_attrs["fail_reason"]
    assert "process gone" in by_number[dead.number].user_attrs["fail_reason"]
    assert by_number[live.number].state == TrialState.RUNNING
    assert "fail_reason" not in by_number[live.number].user_attrs
    assert by_number[done.number].state == TrialState.COMPLETE

    assert liveness.reap(study) == []  # nothing left to reap


def test_reap_a_stale_heartbeat_from_another_host():
    study = optuna.create_study()
    stale = study.ask()
    record.write_fields(stale, worker=f"{OTHER}:1", heartbeat=time.time() - 120)
    fresh = study.ask()
    record.write_fields(fresh, worker=f"{OTHER}:2", heartbeat=time.time())
    assert liveness.reap(study, grace=60) == [stale.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {stale.number: TrialState.FAIL, fresh.number: TrialState.RUNNING}
    assert "no heartbeat" in study.trials[stale.number].user_attrs["fail_reason"]


def test_heartbeat_stamps_the_trial_while_the_block_runs():
    study = optuna.create_study()
    trial = study.ask()
    with liveness.heartbeat(trial, interval=0.05):
        (first,) = record.records(study)
        assert first.worker == liveness.worker_id()
        assert first.heartbeat is not None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            (now,) = record.records(study)
            if now.heartbeat > first.heartbeat:
                break
            time.sleep(0.02)
        assert now.heartbeat > first.heartbeat
    assert liveness.dead_reason(record.records(study)[0]) is None
