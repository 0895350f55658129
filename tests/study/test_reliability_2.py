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
        (5, 41, "params"),  # a parameter of trial 2: the trial fails there
        (6, 41, "state"),  # trial 2's end: the trial fails there
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
    if lost == "params":  # what came after the lost record is not taken either
        assert after[2][1:] == (TrialState.FAIL, {}, {}, None)
    if lost == "state":
        assert after[2][1:] == (TrialState.FAIL, before[2][2], before[2][3], None)
    sides = list(tmp_path.glob("optuna.journal.damaged-*"))
    assert len(sides) == 1 and b"\x01" * 20 in sides[0].read_bytes()
    repaired = path.read_bytes()  # the same bytes around it: every record keeps its offset
    assert repaired[:start] == damaged[:start] and repaired[end : len(damaged)] == damaged[end:]
    assert all(
        json.loads(stand_in)["worker_id"] == "tnsearch-repair"
        for stand_in in repaired[start:end].splitlines()
    )
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


def _line_with_attr(path, key: str, trial: int) -> int:
    """The 1-based line of the record that sets user attribute `key` of trial id `trial`."""
    for i, line in enumerate(path.read_bytes().splitlines()):
        log = json.loads(line)
        if log.get("trial_id") == trial and key in log.get("user_attr", {}):
            return i + 1
    raise AssertionError(f"no {key} of trial {trial}")


@pytest.mark.slow
def test_a_study_with_damaged_records_reports_exports_and_continues(tmp_path, monkeypatch):
    """The issue's reproduction: ~20 bytes overwritten inside the middle line of a real study's
    journal; here also inside the record of a trained trial's quality (its accuracy). The report
    and the export read every other trial, and the study continues to its new target."""
    import sys

    from tnsearch import export as export_cli
    from tnsearch.__main__ import run as run_search
    from tnsearch.cli import resolve
    from tnsearch.report.__main__ import run as run_report

    overrides = [f"root={tmp_path}", *TINY, "tracking.enabled=false"]
    assert run_search(compose_cfg([*overrides, "trials=3"])) == 0
    journal = tmp_path / "mlp" / "optuna.journal"
    read = optuna.load_study(study_name="mlp", storage=storage.journal(str(journal)))
    before = {t.number: (t.state, t.values, t.user_attrs.get("plan")) for t in read.trials}
    trained = [t for t in read.trials if t.user_attrs.get("trained") and t.number > 0]
    middle, accuracy = (
        journal.read_bytes().count(b"\n") // 2 + 1,
        _line_with_attr(journal, "quality", trained[-1]._trial_id),
    )
    for line in (middle, accuracy):
        _damage(journal, line)
    with pytest.raises(json.JSONDecodeError):
        optuna.load_study(
            study_name="mlp", storage=JournalStorage(JournalFileBackend(str(journal)))
        )

    path = run_report(resolve(compose_cfg(overrides, config="report")))
    assert path.is_file()
    out = tmp_path / "pkg"
    monkeypatch.setattr(sys, "argv", ["tnsearch.export", *overrides, f"out={out}"])
    export_cli.main()  # the best trial among those whose records are whole
    assert (out / "plan.json").is_file()
    assert run_search(compose_cfg([*overrides, "trials=4"])) == 0
    study = optuna.load_study(study_name="mlp", storage=storage.journal(str(journal)))
    kept = {t.number: (t.state, t.values, t.user_attrs.get("plan")) for t in study.trials}
    same = [n for n in before if kept[n] == before[n]]
    assert len(same) >= len(before) - 2  # at most the trials of the damaged records differ
    lost = study.trials[trained[-1].number]  # its quality's record was damaged: it failed there
    assert lost.state == TrialState.FAIL and "quality" not in lost.user_attrs
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sum(bool(t.user_attrs.get("trained")) for t in complete) >= 4


# -- a study remembers what it was made with ----------------------------------------------------


def test_a_study_refuses_a_continuation_with_other_settings():
    from tnsearch.study import identity

    made = identity.made_with(
        {"model": {"_target_": "mypkg.build", "width": 64}, "space": {"ranks": [2, 4]}, "epochs": 1}
    )
    same = dict(made)
    identity.check(made, same, "study 'x'")  # the same keys: nothing to say
    identity.check(None, same, "study 'x'")  # an older study without the record: as before
    other = identity.made_with(
        {"model": {"_target_": "tnsearch.models.MLP", "hidden": [300]}, "space": {"ranks": [2, 4]}}
    )
    with pytest.raises(ConfigError) as info:
        identity.check(made, {**other, "epochs": 1}, "study 'x'")
    message = str(info.value)
    assert message.startswith(
        "model._target_: study 'x' was made with \"mypkg.build\", this command has "
        '"tnsearch.models.MLP" (also: model.width): start a new study with another name='
    ), message
    newer = {**made, "space.hopeless": 0.5}  # a key a newer tnsearch added, with its default
    assert identity.check(made, newer, "study 'x'") == ["space.hopeless"]
    running = {"data": {"_target_": "d.D", "eval_batch_size": 8}}
    assert identity.made_with(running) == {"data._target_": "d.D"}  # a loader's own key


@pytest.mark.slow
def test_a_study_continued_with_another_model_or_space_writes_nothing(tmp_path, capsys):
    """The issue's two reproductions: a custom model's study continued as study=mlp (the MLP's
    trial sat on the custom model's front as "1.6x"), and a changed space (6 FAIL trials,
    "CategoricalDistribution does not support dynamic value space"). Now both refuse, naming
    the keys; a changed `epochs` warns and continues."""
    from tnsearch.__main__ import run as run_search

    common = [f"root={tmp_path}", "name=chg", "data=digits", "tracking.enabled=false", *TINY[5:]]
    custom = ["model=custom", "model._target_=tests.test_custom_model.build", "+model.width=24"]
    assert run_search(compose_cfg([*common, *custom, "trials=2", "epochs=1"])) == 0
    journal = tmp_path / "chg" / "optuna.journal"
    written = journal.read_bytes()
    cases = [
        (["study=mlp", "data=digits", "pretrain.epochs=0", "name=chg"], "model._target_"),
        ([*custom, "space.topologies=[cp]", "space.ranks=[2]"], "space.topologies"),
    ]
    for overrides, key in cases:
        with pytest.raises(ConfigError) as info:
            run_search(compose_cfg([*common, *overrides, "trials=3", "epochs=1"]))
        assert str(info.value).startswith(f"{key}: study 'chg' was made with "), info.value
        assert "another name=" in str(info.value)
        assert journal.read_bytes() == written  # nothing written
    capsys.readouterr()
    assert run_search(compose_cfg([*common, *custom, "trials=2", "epochs=2"])) == 0
    assert "warning: epochs: study 'chg' was made with 1, this command has 2" in (
        capsys.readouterr().err
    )


def test_an_older_study_without_the_record_is_joined_and_recorded(tmp_path, capsys):
    from tnsearch.cli import resolve
    from tnsearch.study import identity, setup

    cfg = resolve(compose_cfg([f"root={tmp_path}", *TINY, "tracking.enabled=false"]))
    ready = setup.prepare(cfg)
    journal = str(tmp_path / "mlp" / "optuna.journal")
    optuna.create_study(  # made before studies kept what they were made with
        study_name="mlp", storage=storage.journal(journal), directions=ready.directions
    )
    study = setup.open_study(ready)
    made = identity.made_with(ready.cfg)
    assert study.user_attrs[identity.ATTR] == made
    older = {k: v for k, v in made.items() if k != "space.hopeless"}  # before the key existed
    study.set_user_attr(identity.ATTR, older)
    capsys.readouterr()
    study = setup.open_study(ready)  # joined, told once, recorded
    told = capsys.readouterr().err
    assert "warning: space.hopeless: study 'mlp' was made before this key" in told
    assert study.user_attrs[identity.ATTR] == made


# -- pretrained.pt: what it was trained with, and damaged ---------------------------------------


def _warm(tmp_path, epochs: int) -> list[str]:
    return [f"root={tmp_path}", *TINY, f"pretrain.epochs={epochs}", "tracking.enabled=false"]


def _pretrained_with(tmp_path, epochs: int):
    """The study's pretrained.pt as the study writes it, with the dense model's initial weights
    (what training gives does not matter here)."""
    from tnsearch import plan as plans
    from tnsearch.cli import resolve
    from tnsearch.study import warmstart

    cfg = resolve(compose_cfg(_warm(tmp_path, epochs)))
    inputs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    dense = plans.build_dense(plans.make(cfg.model, inputs, {}))
    warmstart.pretrained(tmp_path / "mlp", epochs, dense.state_dict, cfg=cfg)
    return tmp_path / "mlp" / warmstart.PRETRAINED


def test_pretrained_weights_of_other_pretraining_are_refused(tmp_path):
    """A changed pretrain.epochs silently reused the old pretrained.pt."""
    from tnsearch.__main__ import run as run_search
    from tnsearch.cli import resolve
    from tnsearch.study import setup

    path = _pretrained_with(tmp_path, epochs=1)
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg(_warm(tmp_path, 2)))
    assert str(info.value).startswith(
        f"pretrain.epochs: {path} was made with 1, this command has 2: start a new study"
    ), info.value
    assert sorted(p.name for p in path.parent.iterdir()) == ["pretrained.pt", "pretrained.pt.lock"]
    setup.prepare(resolve(compose_cfg(_warm(tmp_path, 1))))  # its own keys: taken


def test_an_older_pretrained_file_is_checked_by_its_epochs(tmp_path):
    import torch

    from tnsearch.__main__ import run as run_search
    from tnsearch.cli import resolve
    from tnsearch.study import setup

    path = _pretrained_with(tmp_path, epochs=1)
    saved = torch.load(path, weights_only=True)
    del saved["made_with"]  # as studies saved it before
    torch.save(saved, path)
    setup.prepare(resolve(compose_cfg(_warm(tmp_path, 1))))
    with pytest.raises(ConfigError, match=r"^pretrain\.epochs: .* was made with 1, this command"):
        run_search(compose_cfg(_warm(tmp_path, 3)))


@pytest.mark.parametrize("size", [5000, 0])
def test_a_damaged_pretrained_file_is_named_with_what_to_do(tmp_path, size):
    """A truncated pretrained.pt was `OSError: [Errno 22] Invalid argument`, no file named."""
    from tnsearch.__main__ import run as run_search

    path = _pretrained_with(tmp_path, epochs=1)
    with open(path, "r+b") as handle:
        handle.truncate(size)
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg(_warm(tmp_path, 1)))
    message = str(info.value)
    assert message.startswith(f"{path}: the study's pretrained dense model is damaged ("), message
    assert "delete it to train it again" in message and "\n" not in message
    assert not (tmp_path / "mlp" / "optuna.journal").exists()


# -- what the machine can take, and what answers -----------------------------------------------


def test_workers_beyond_the_machine_are_refused(tmp_path):
    """workers=6 on 2 cores took 3.0 GB; 100 would have taken ~60 GB. Now: what fits."""
    import os

    from tnsearch.__main__ import run as run_search

    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg([f"root={tmp_path}", *TINY, f"workers={cores * 50}"]))
    message = str(info.value)
    assert message.startswith(f"workers: {cores * 50} do not fit this machine ({cores} CPU cores")
    assert message.endswith(f"at most {cores} here") or "at most" in message
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_tracking_server_stops_at_once(tmp_path):
    """`tracking.uri=http://127.0.0.1:9` cost ~6 minutes of urllib3 retries for 45 s of work."""
    import time

    from tnsearch.__main__ import run as run_search

    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^tracking\.uri: cannot reach http://127\.0\.0\.1:9 "):
        run_search(compose_cfg([f"root={tmp_path}", *TINY, "tracking.uri=http://127.0.0.1:9"]))
    assert time.monotonic() - started < 30  # seconds, not minutes (a bound, not a benchmark)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_epochs_0_on_a_cold_study_says_it_trains_nothing(tmp_path, capsys):
    from tnsearch.__main__ import run as run_search

    overrides = [f"root={tmp_path}", *TINY, "epochs=0", "trials=1", "tracking.enabled=false"]
    assert run_search(compose_cfg(overrides)) == 0
    err = capsys.readouterr().err
    assert err.count("warning: epochs=0 on a cold study") == 1, err
