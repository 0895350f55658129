"""Faults and inputs of the second review (issue 23), each reproduced on real storages, files and
processes: a damaged journal record anywhere, a study continued with another model, space or
pretraining, a damaged pretrained.pt, workers beyond the machine, an unreachable tracking server."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.helpers import TINY, compose_cfg
from tnsearch.config import ConfigError
from tnsearch.study import storage


def _journal_study(path, backend=None):
    return optuna.create_study(
        study_name="s",
        storage=backend or storage.journal(str(path)),
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        load_if_exists=True,
    )


def _trials(study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.user_attrs, t.values) for t in study.trials]


def _plain(path) -> optuna.Study:
    """The study as Optuna alone reads it (no tnsearch repair)."""
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))))


def _damage(path, line: int, column: int = 41, count: int = 20) -> None:
    """Overwrite `count` bytes of 1-based `line`, from `column` (a bad sector, a stray edit)."""
    data = bytearray(path.read_bytes())
    start = sum(len(x) for x in bytes(data).splitlines(keepends=True)[: line - 1]) + column
    data[start : start + count] = b"\x01" * count
    path.write_bytes(bytes(data))


def _line_of(path, op_code: int, nth: int = 0) -> int:
    """The 1-based line of the `nth` record with `op_code` (after the first trial)."""
    found = [
        i + 1
        for i, line in enumerate(path.read_bytes().splitlines())
        if json.loads(line)["op_code"] == op_code
    ]
    return found[nth]


@pytest.mark.parametrize(
    ("op_code", "column", "lost"),
    [
        (4, 41, None),  # the record that creates trial 2: nothing is lost, its id is kept
        (4, 2, None),  # ... with its op_code overwritten too
        (5, 41, "params"),  # a parameter of trial 2
        (6, 41, "state"),  # trial 2's end: it stays RUNNING (the reaper fails it in a study)
    ],
)
def test_a_damaged_record_anywhere_leaves_every_other_trial_readable(
    tmp_path, capsys, op_code, column, lost
):
    """A damaged middle line of the journal made every command fail (JSONDecodeError, file and
    line unnamed). A skipped `create_trial` would shift every later trial's id; here the damaged
    line is replaced, in the same bytes, by records that keep the ids."""
    path = tmp_path / "optuna.journal"
    study = _journal_study(path)
    for i in range(5):
        trial = study.ask()
        trial.suggest_float("x", 0, 10)
        trial.set_user_attr("i", i)
        study.tell(trial, [i, -i])
    before = _trials(study)
    nth = 2  # trial 2's creation, its parameter, its end
    line = _line_of(path, op_code, nth)
    _damage(path, line, column)
    damaged = path.read_bytes()
    lines = damaged.splitlines(keepends=True)
    start, end = sum(map(len, lines[: line - 1])), sum(map(len, lines[:line]))
    with pytest.raises(json.JSONDecodeError):
        _plain(path)  # what every command did

    again = _journal_study(path)
    after = _trials(again)
    err = capsys.readouterr().err
    assert err.count("warning: ") == 1 and f"{path}: damaged record at line {line} " in err, err
    assert len(after) == 5
    for was, now in zip(before, after, strict=True):
        if was[0] != 2 or lost is None:
            assert now == was  # every other trial as it was, at its own number
    if lost == "params":
        assert after[2][2] == {} and after[2][3] == {"i": 2}
    if lost == "state":
        assert after[2][1] == TrialState.RUNNING and after[2][2] == before[2][2]
    sides = list(tmp_path.glob("optuna.journal.damaged-*"))
    assert len(sides) == 1 and b"\x01" * 20 in sides[0].read_bytes()
    repaired = path.read_bytes()  # the same bytes around it: every record keeps its offset
    assert repaired[:start] == damaged[:start] and repaired[end : len(damaged)] == damaged[end:]
    assert json.loads(repaired[start:end])["worker_id"] == "tnsearch-repair"
    assert _trials(_plain(path)) == after  # repaired for Optuna itself (optuna-dashboard) too
    trial = again.ask()  # the study goes on
    trial.suggest_float("x", 0, 10)
    again.tell(trial, [5, -5])
    assert len(_journal_study(path).trials) == 6
    assert "warning" not in capsys.readouterr().err  # repaired once


def test_a_damaged_record_read_by_a_running_worker_is_repaired_where_it_reads(tmp_path, capsys):
    """A worker that has read past the damage goes on; one that reads it repairs and goes on."""
    path = tmp_path / "optuna.journal"
    live = _journal_study(path)
    for i in range(3):
        trial = live.ask()
        trial.suggest_float("x", 0, 10)
        live.tell(trial, [i, -i])
    _damage(path, _line_of(path, 4, 1))  # trial 1's creation, already read by `live`
    late = _journal_study(path)  # a new process repairs
    assert "damaged record" in capsys.readouterr().err
    trial = live.ask()  # the live one appends and reads on, at its old offsets
    trial.suggest_float("x", 0, 10)
    live.tell(trial, [3, -3])
    assert _trials(late) == _trials(live) and len(live.trials) == 4


def test_a_damaged_study_record_that_cannot_be_rebuilt_is_one_line(tmp_path):
    path = tmp_path / "optuna.journal"
    _journal_study(path).ask()
    _damage(path, 1, column=0, count=60)  # op_code and study name gone
    with pytest.raises(ConfigError, match=rf"^{path}: the record that creates a study is damaged"):
        _journal_study(path)


@pytest.mark.slow
def test_a_study_with_a_damaged_middle_record_reports_and_continues(tmp_path):
    """The issue's reproduction: ~20 bytes overwritten inside the middle line of a real study's
    journal. The report reads every trial, and the study continues to its new target."""
    from tnsearch.__main__ import run as run_search
    from tnsearch.cli import resolve
    from tnsearch.report.__main__ import run as run_report

    overrides = [f"root={tmp_path}", *TINY, "tracking.enabled=false"]
    assert run_search(compose_cfg([*overrides, "trials=3"])) == 0
    journal = tmp_path / "mlp" / "optuna.journal"
    read = optuna.load_study(study_name="mlp", storage=storage.journal(str(journal)))
    before = {t.number: (t.state, t.values, t.user_attrs.get("plan")) for t in read.trials}
    lines = journal.read_bytes().splitlines()
    _damage(journal, len(lines) // 2 + 1)
    with pytest.raises(json.JSONDecodeError):
        optuna.load_study(
            study_name="mlp", storage=JournalStorage(JournalFileBackend(str(journal)))
        )

    path = run_report(resolve(compose_cfg(overrides, config="report")))
    assert path.is_file()
    assert run_search(compose_cfg([*overrides, "trials=4"])) == 0
    study = optuna.load_study(study_name="mlp", storage=storage.journal(str(journal)))
    kept = {t.number: (t.state, t.values, t.user_attrs.get("plan")) for t in study.trials}
    same = [n for n in before if kept[n] == before[n]]
    assert len(same) >= len(before) - 1  # at most the trial of the damaged record differs
    trained = [
        t for t in study.trials if t.state == TrialState.COMPLETE and t.user_attrs["trained"]
    ]
    assert len(trained) >= 4
