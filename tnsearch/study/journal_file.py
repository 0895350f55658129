"""Damaged records inside a journal file: set aside, and the log kept consistent around them.

Optuna's JournalFileBackend stops at the first line that is not a JSON record (a sector of the
disk gone bad, a stray edit): from then on no command reads the study. Skipping such a line is
not enough, because the journal is replayed by position. Trial ids are not written in
`create_trial` records, they are counted (the n-th such record makes trial n-1): a skipped one
would shift every later trial's id, so every later record would write into its neighbour. And
a skipped `set_trial_state_values` leaves its trial RUNNING.

So a damaged stretch of lines is replaced, under the journal's lock, by records that keep the
log consistent:

- a `create_trial` for each trial the stretch must have created (one that later intact records
  refer to by an id not yet created, or a damaged line that still starts with `{"op_code":4`).
  The trial it stands for gets its start time from the record before it and everything else
  (parameters, attributes, values, state) from the later records: nothing of it is lost.
- for a damaged record of a trial (a parameter, an attribute, its end) whose `trial_id` can
  still be read, that trial FAILs there: what the record said (its accuracy, its end, a
  parameter) is gone, so the trial is kept in the study, with its earlier attributes, but
  offered to no one, and it does not count: the study trains another in its place. (Left as it
  was it would be a finished trial without, say, its accuracy, which every reader of results
  would have to guess around, or a trial RUNNING forever.)
- else a record Optuna's replay ignores (`NOOP`): a study attribute, or a trial record whose
  trial cannot be told; readers of results offer only trials with a plan, a quality and a
  parameter count (`Record.candidate`).

The replacement takes the same bytes as the damaged stretch (padded with spaces, which JSON
allows), so every record after it keeps its offset: a worker that read past it before the
repair goes on reading where it was. The damaged bytes go to `<journal>.damaged-<unix time>`,
and one warning names the file and the lines. A study's own `create_study` record that cannot
be rebuilt (its name unreadable) cannot be repaired: that is a one-line error naming the file.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tnsearch.config import ConfigError
from tnsearch.files import atomic_path
from tnsearch.ui import console

if TYPE_CHECKING:
    from optuna.storages.journal._file import BaseJournalFileLock

__all__ = ["RepairingJournalFileBackend", "repair"]

#: The worker id of the records a repair writes (never one of Optuna's uuid-based ids).
REPAIR_WORKER = "tnsearch-repair"
#: A record Optuna's replay skips: a user attribute of a trial that does not exist.
NOOP = {"op_code": 8, "worker_id": REPAIR_WORKER, "trial_id": -1, "user_attr": {}}
#: Fields each operation's replay reads (optuna.storages.journal._storage).
_FIELDS: dict[int, tuple[str, ...]] = {
    0: ("study_name", "directions"),
    1: ("study_id",),
    2: ("study_id", "user_attr"),
    3: ("study_id", "system_attr"),
    4: ("study_id", "datetime_start"),
    5: ("trial_id", "param_name", "param_value_internal", "distribution"),
    6: ("trial_id", "state", "values"),
    7: ("trial_id", "step", "intermediate_value"),
    8: ("trial_id", "user_attr"),
    9: ("trial_id", "system_attr"),
    10: (),
}
_CREATE_STUDY, _CREATE_TRIAL = 0, 4
_OP = re.compile(rb'^\{"op_code":(\d+),')
_STUDY_ID = re.compile(rb'"study_id":(\d+)[,}]')
_TRIAL_ID = re.compile(rb'"trial_id":(\d+)[,}]')
_STUDY_NAME = re.compile(rb'"study_name":("(?:[^"\\]|\\.)*")')
_DIRECTIONS = re.compile(rb'"directions":(\[[\d,]*\])')


class DamagedRecordError(ValueError):
    """A journal line that parses as JSON but is not a record Optuna can replay."""


def check_record(log: Any) -> None:
    """Raise DamagedRecordError unless `log` is a record with the fields its replay reads."""
    if not isinstance(log, dict) or not isinstance(log.get("op_code"), int):
        raise DamagedRecordError("not a journal record")
    fields = _FIELDS.get(log["op_code"])
    if fields is None or "worker_id" not in log or any(f not in log for f in fields):
        raise DamagedRecordError(f"op_code {log['op_code']}: fields missing")


class RepairingJournalFileBackend(JournalFileBackend):
    """Optuna's JournalFileBackend that repairs the file (`repair`) when a record in it cannot
    be read, once per read, and then reads on from that record."""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        read, repaired = log_number_from, False
        while True:
            try:
                for log in super().read_logs(read):
                    check_record(log)
                    yield log
                    read += 1
                return
            except ValueError:  # json.JSONDecodeError, DamagedRecordError, a torn middle line
                if repaired or not repair(Path(self._file_path), self._lock):
                    raise
                repaired = True
                # offsets of records after the repaired stretch may differ from the cached ones
                self._log_number_offset = {
                    n: at for n, at in self._log_number_offset.items() if n <= read
                }


@dataclass
class _Stretch:
    """Consecutive damaged lines and the records that replace them."""

    first: int  # index of its first line
    lines: list[bytes] = field(default_factory=list)
    studies: list[dict[str, Any]] = field(default_factory=list)  # rebuilt create_study records
    trials: list[dict[str, Any]] = field(default_factory=list)  # stand-in create_trial records
    failed: list[dict[str, Any]] = field(default_factory=list)  # trials ended FAIL here

    def replacement(self) -> bytes:
        """The stand-in records, padded with spaces to the damaged bytes' length if they fit."""
        records = [*self.studies, *self.trials, *self.failed] or [NOOP]
        text = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        room = sum(len(line) for line in self.lines) - len(text)
        if room > 0:
            text = text[:-1] + b" " * room + b"\n"
        return text


def _parse(line: bytes) -> dict[str, Any] | None:
    """The record on `line`, or None when it is damaged."""
    try:
        log = json.loads(line)
        check_record(log)
    except ValueError:
        return None
    return log


def repair(file: Path, lock: BaseJournalFileLock) -> bool:
    """Replace the damaged lines of journal `file` (see the module docstring); return whether
    any were found. Holds `lock` (the lock Optuna's writers take) while it reads and writes.

    Raises:
        ConfigError: a damaged `create_study` record that cannot be rebuilt.
    """
    while not lock.acquire():
        time.sleep(0.01)
    try:
        data = file.read_bytes()
        lines = data.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            lines.pop()  # a torn tail: Optuna skips it; `storage.set_aside_torn_tail` cuts it
        parsed = [_parse(line) for line in lines]
        if all(log is not None for log in parsed):
            return False
        stretches = _stand_ins(file, lines, parsed)
        side = file.with_name(f"{file.name}.damaged-{int(time.time())}")
        side.write_bytes(b"".join(b"".join(s.lines) for s in stretches))
        out, at = [], 0
        for s in stretches:
            out.append(b"".join(lines[at : s.first]))
            out.append(s.replacement())
            at = s.first + len(s.lines)
        out.append(data[sum(len(line) for line in lines[:at]) :])
        with atomic_path(file) as tmp:
            tmp.write_bytes(b"".join(out))
    finally:
        lock.release()
    numbers = ", ".join(_span(s) for s in stretches)
    failed = [str(r["trial_id"]) for s in stretches for r in s.failed]
    notes = [
        f"{n} {what}"
        for n, what in (
            (sum(len(s.studies) for s in stretches), "study record(s) rebuilt"),
            (sum(len(s.trials) for s in stretches), "trial(s) rebuilt from the later records"),
        )
        if n
    ]
    if failed:
        notes.append(f"trial id(s) {', '.join(failed)} failed there: a record of each is lost")
    plural = "s" if len(stretches) > 1 else ""
    console.warn(
        f"{file}: damaged record{plural} at line{plural} {numbers} "
        f"({'not journal records' if plural else 'not a journal record'}); set aside in "
        f"{side.name}, every other record is read" + (f" ({'; '.join(notes)})" if notes else "")
    )
    return True


def _span(stretch: _Stretch) -> str:
    first = stretch.first + 1
    last = first + len(stretch.lines) - 1
    return str(first) if last == first else f"{first}-{last}"


def _stand_ins(
    file: Path, lines: list[bytes], parsed: list[dict[str, Any] | None]
) -> list[_Stretch]:
    """The damaged stretches with the records that keep the replay's counts: trials and
    studies later records refer to are created where the stretch before them was."""
    stretches: list[_Stretch] = []
    names: set[str] = set()
    studies = trials = 0
    last_study, last_time = 0, None
    for i, (line, log) in enumerate(zip(lines, parsed, strict=True)):
        if log is None:
            if not stretches or stretches[-1].first + len(stretches[-1].lines) != i:
                stretches.append(_Stretch(first=i))
            stretch = stretches[-1]
            stretch.lines.append(line)
            op = _OP.match(line)
            if op and int(op[1]) == _CREATE_TRIAL:
                found = _STUDY_ID.search(line)
                stretch.trials.append(_trial(int(found[1]) if found else last_study, last_time))
                trials += 1
            elif (op is None or int(op[1]) > _CREATE_TRIAL) and (trial := _trial_id(line)) < trials:
                stretch.failed.append(_failed(trial, last_time))  # a record of it: it ends here
            continue
        study = log.get("study_id")
        if isinstance(study, int) and study >= studies and stretches:
            studies += _rebuild_studies(file, stretches, study + 1 - studies)
        trial = log.get("trial_id")
        if isinstance(trial, int) and trial >= trials and stretches:
            # popped from the queue: it was created WAITING
            waiting = log["op_code"] == 6 and log.get("state") == TrialState.RUNNING.value
            for _ in range(trial + 1 - trials):
                stretches[-1].trials.append(_trial(last_study, last_time, waiting=waiting))
            trials = trial + 1
        if log["op_code"] == _CREATE_STUDY and log["study_name"] not in names:
            names.add(log["study_name"])
            studies += 1
        elif log["op_code"] == _CREATE_TRIAL and log["study_id"] < studies:
            trials += 1
            last_study = log["study_id"]
        last_time = log.get("datetime_start") or log.get("datetime_complete") or last_time
    return stretches


def _trial(study: int, start: str | None, *, waiting: bool = False) -> dict[str, Any]:
    """A stand-in `create_trial` record (RUNNING, or WAITING when a later record pops it)."""
    record: dict[str, Any] = {
        "op_code": _CREATE_TRIAL,
        "worker_id": REPAIR_WORKER,
        "study_id": study,
        "datetime_start": None if waiting else start,
    }
    if waiting:
        record["state"] = TrialState.WAITING.value
    return record


def _trial_id(line: bytes) -> int:
    """The trial id a damaged trial record still shows (a large number when it shows none)."""
    found = _TRIAL_ID.search(line)
    return int(found[1]) if found else 2**62


def _failed(trial: int, when: str | None) -> dict[str, Any]:
    """A stand-in `set_trial_state_values` that fails trial id `trial` (at time `when`)."""
    return {
        "op_code": 6,
        "worker_id": REPAIR_WORKER,
        "trial_id": trial,
        "state": TrialState.FAIL.value,
        "values": None,
        "datetime_complete": datetime.fromisoformat(when or "1970-01-01T00:00:00+00:00").isoformat(
            timespec="seconds"
        ),  # short: the stand-ins should fit the damaged bytes
    }


def _rebuild_studies(file: Path, stretches: list[_Stretch], count: int) -> int:
    """Rebuild `count` damaged `create_study` records from what is left of their lines."""
    found: list[dict[str, Any]] = []
    for stretch in reversed(stretches):
        for line in stretch.lines:
            op, name, directions = _OP.match(line), _STUDY_NAME.search(line), None
            if not op or int(op[1]) != _CREATE_STUDY or not name:
                continue
            directions = _DIRECTIONS.search(line)
            try:
                record = {
                    "op_code": _CREATE_STUDY,
                    "worker_id": REPAIR_WORKER,
                    "study_name": json.loads(name[1]),
                    "directions": json.loads(directions[1]) if directions else None,
                }
            except ValueError:
                continue
            if record["directions"] and record not in stretch.studies:
                stretch.studies.append(record)
                found.append(record)
                if len(found) == count:
                    return count
    raise ConfigError(
        str(file),
        "the record that creates a study is damaged beyond repair (its name or objectives "
        "cannot be read): restore the file from a backup, or start a new study (another name=)",
    )
