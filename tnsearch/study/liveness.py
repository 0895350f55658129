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

import functools
import hashlib
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tnsearch.study import record
from tnsearch.study.record import Record

INTERVAL_S = 5.0
GRACE_S = 60.0


def worker_id() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.cache
def machine_id() -> str:
    """Which machine (and container) this process runs on, beyond its hostname: two machines
    with one hostname, or two containers of one host, must not judge each other's pids.

    A digest of /etc/machine-id, the kernel's boot id and this process's pid namespace."""
    parts = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(Path(path).read_text().strip())
        except OSError:
            parts.append("")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append(str(uuid.getnode()))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


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
    record.write_fields(trial, worker=worker_id(), machine=machine_id(), heartbeat=time.time())

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
        here = host == socket.gethostname() and trial.machine in (None, machine_id())
        if here and pid.isdigit() and not _alive(int(pid)):
            return f"worker {worker} died (process gone)"
    started = trial.started.timestamp() if trial.started else now
    last = beat if beat is not None else started
    if now - last > grace:
        return f"worker {worker or 'unknown'} died (no heartbeat for {now - last:.0f} s)"
    return None


def retry(study: optuna.Study, number: int, retries: int) -> None:
    """Queue failed trial `number`'s plan again, up to `retries` times in all (Optuna's retry
    callback); the retry starts clean: the plan's parameters, not the failure's attributes."""
    if retries < 1:
        return
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    failed = next(t for t in study.get_trials(deepcopy=True) if t.number == number)
    failed.user_attrs = record.retry_attrs(failed.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=retries)(study, failed)


def reap(
    study: optuna.Study,
    tracker=None,
    *,
    grace: float = GRACE_S,
    retries: int = 0,
    found: Sequence[record.Record] | None = None,
) -> list[int]:
    """Fail every RUNNING trial whose worker is dead (and queue it again under `retries`);
    return their numbers. `found`: the study's records as just read (None: read them)."""
    reaped = []
    if found is None:
        found = record.records(study, (TrialState.RUNNING,))
    for trial in (r for r in found if r.state == TrialState.RUNNING):
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
        retry(study, trial.number, retries)
        reaped.append(trial.number)
    return reaped
