"""Telling a dead worker's trial from a live one, on any storage and across hosts.

Optuna's heartbeat covers RDB storages only, and only inside `study.optimize`; tnsearch drives
Optuna with ask/tell and defaults to a journal file. So every running trial carries its own
heartbeat: the worker that runs it stamps the user attribute `heartbeat` (Unix time) every
`INTERVAL_S` seconds from a background thread. A trial still RUNNING is dead when

- its worker ran on this host and that process no longer exists (found at once), or
- its heartbeat is older than `GRACE_S` (a worker on another host, or a frozen one).

`reap` fails such trials with the reason and ends their MLflow runs as KILLED, so a rerun of the
same command goes on where the dead worker stopped.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
from optuna.trial import TrialState

from tnsearch.study import record
from tnsearch.study.record import Record

INTERVAL_S = 5.0
GRACE_S = 60.0


def worker_id() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def heartbeat(trial: optuna.Trial, interval: float = INTERVAL_S) -> Iterator[None]:
    """Stamp `trial` as alive every `interval` seconds while the block runs."""
    stop = threading.Event()
    record.write_fields(trial, worker=worker_id(), heartbeat=time.time())

    def beat() -> None:
        while not stop.wait(interval):
            try:
                record.write_fields(trial, heartbeat=time.time())
            except Exception:  # noqa: BLE001 - the trial ended meanwhile; stop beating
                return

    thread = threading.Thread(target=beat, name="tnsearch-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 1)


def dead_reason(trial: Record, *, now: float | None = None, grace: float = GRACE_S) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it may be alive."""
    now = time.time() if now is None else now
    worker, beat = trial.worker, trial.heartbeat
    if worker:
        host, _, pid = worker.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            return f"worker {worker} died (process gone)"
    started = trial.started.timestamp() if trial.started else now
    last = beat if beat is not None else started
    if now - last > grace:
        return f"worker {worker or 'unknown'} died (no heartbeat for {now - last:.0f} s)"
    return None


def reap(study: optuna.Study, tracker=None, *, grace: float = GRACE_S) -> list[int]:
    """Fail every RUNNING trial whose worker is dead; return their numbers."""
    reaped = []
    for trial in record.records(study, (TrialState.RUNNING,)):
        reason = dead_reason(trial, grace=grace)
        if reason is None:
            continue
        try:
            record.write_finished(study, trial, fail_reason=reason)
            study.tell(trial.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - another worker reaped it first
            continue
        if tracker is not None and trial.mlflow_run_id:
            tracker.end_trial(trial.mlflow_run_id, state="KILLED", tags={"fail_reason": reason})
        reaped.append(trial.number)
    return reaped
