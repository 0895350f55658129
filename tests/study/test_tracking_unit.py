"""`tnsearch.study.tracking`: the parent run and nested trial runs, on a real MLflow store; and
`BackgroundTracker`, which makes the same calls on a thread of its own.

MLflow's first SQLite store takes seconds to create (its migrations): the module shares one
store, and each test uses its own experiment in it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tnsearch.study import liveness, record
from tnsearch.study.background_tracking import BackgroundTracker
from tnsearch.study.tracker import Tracker
from tnsearch.study.tracking import ROLE_TAG, MlflowTracker, NullTracker, from_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(uri, artifacts) of one SQLite MLflow store for the module, created once."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    artifacts = str(root / "artifacts")
    MlflowTracker(uri, artifacts, "warm-up")  # runs the migrations once
    return uri, artifacts


@pytest.fixture
def experiment() -> str:
    return f"study-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tracker(store, experiment) -> MlflowTracker:
    uri, artifacts = store
    return MlflowTracker(uri, artifacts, experiment)


def _study(name: str) -> optuna.Study:
    return optuna.create_study(study_name=name)


def _runs(tracker: MlflowTracker, filter_string: str = "") -> list:
    return tracker.client.search_runs([tracker.experiment_id], filter_string=filter_string)


def test_tracker_makes_the_experiment_once(store, tracker, experiment):
    uri, artifacts = store
    again = MlflowTracker(uri, artifacts, experiment)
    assert again.experiment_id == tracker.experiment_id
    found = tracker.client.get_experiment(tracker.experiment_id)
    assert found.name == experiment
    assert found.artifact_location.startswith("file://")
    assert found.artifact_location.endswith(f"/artifacts/{experiment}")


def test_attach_creates_one_parent_run_and_stores_its_id(store, tracker, experiment):
    study = _study(experiment)
    assert record.parent_run(study) is None
    assert tracker.attach(study) is None  # as every tracker's: the run is `parent_id`
    run_id = tracker.parent_id
    assert run_id is not None
    assert record.parent_run(study) == run_id
    run = tracker.client.get_run(run_id)
    assert run.info.experiment_id == tracker.experiment_id
    assert run.info.run_name == experiment
    assert run.data.tags[ROLE_TAG] == "parent"
    assert run.info.status == "RUNNING"

    # A second worker (a new tracker on the same study) finds the same run.
    tracker.finish_parent()
    assert tracker.client.get_run(run_id).info.status == "FINISHED"
    uri, artifacts = store
    other = MlflowTracker(uri, artifacts, experiment)
    other.attach(study)
    assert other.parent_id == run_id
    assert tracker.client.get_run(run_id).info.status == "RUNNING"
    assert [r.info.run_id for r in _runs(tracker, f"tags.{ROLE_TAG} = 'parent'")] == [run_id]


def test_start_trial_makes_a_nested_run_with_params_and_plan(tracker, experiment):
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    tracker.attach(_study(experiment))
    parent = tracker.parent_id
    plan = {"version": 1, "layers": {"fc1": {"topology": "cp", "rank": 4}}, "params": 123}
    params = {"epochs": 3, "seed": 10, "optimizer.lr": 0.01, "long": "x" * 7000}
    params.update({f"p{i}": i for i in range(150)})  # more than one log_batch of params
    run_id = tracker.start_trial(4, plan, params)

    run = tracker.client.get_run(run_id)
    assert run_id != parent
    assert run.info.run_name == "trial-4"
    assert run.info.status == "RUNNING"
    assert run.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert run.data.tags["trial"] == "4"
    assert run.data.tags["state"] == "RUNNING"
    assert run.data.params["epochs"] == "3"
    assert run.data.params["optimizer.lr"] == "0.01"
    assert run.data.params["p149"] == "149"
    assert len(run.data.params) == len(params)
    assert run.data.params["long"] == "x" * 6000
    assert [a.path for a in tracker.client.list_artifacts(run_id)] == ["plan.json"]
    local = tracker.client.download_artifacts(run_id, "plan.json")
    with open(local) as handle:
        assert json.load(handle) == plan
    nested = _runs(tracker, f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent}'")
    assert [r.info.run_id for r in nested] == [run_id]


@pytest.mark.parametrize(
    ("state", "status"),
    [("COMPLETE", "FINISHED"), ("FAIL", "FAILED"), ("PRUNED", "FINISHED"), ("KILLED", "KILLED")],
)
def test_end_trial_sets_status_state_tag_metrics_and_tags(tracker, experiment, state, status):
    tracker.attach(_study(experiment))
    run_id = tracker.start_trial(0, {"layers": {}}, {"epochs": 1})
    tracker.end_trial(
        run_id,
        state=state,
        metrics={"accuracy": 0.75, "params": 100},
        tags={"fail_reason": "y" * 6000},
    )
    run = tracker.client.get_run(run_id)
    assert run.info.status == status
    assert run.info.end_time is not None
    assert run.data.tags["state"] == state
    assert run.data.tags["fail_reason"] == "y" * 5000
    assert run.data.metrics == {"accuracy": 0.75, "params": 100.0}


def test_end_trial_of_an_unknown_state_is_killed(tracker, experiment):
    tracker.attach(_study(experiment))
    run_id = tracker.start_trial(0, {"layers": {}}, {})
    tracker.end_trial(run_id, state="SOMETHING")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["state"] == "SOMETHING"
    assert run.data.metrics == {}


def test_log_metrics_per_step(tracker, experiment):
    tracker.attach(_study(experiment))
    run_id = tracker.start_trial(0, {"layers": {}}, {})
    for step, acc in enumerate([0.5, 0.6, 0.7]):
        tracker.log_metrics(run_id, {"val_acc": acc, "skipped": None}, step=step)
    history = tracker.client.get_metric_history(run_id, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert "skipped" not in tracker.client.get_run(run_id).data.metrics


def test_log_parent_files_and_params(tracker, experiment, tmp_path):
    tracker.attach(_study(experiment))
    parent = tracker.parent_id
    table = tmp_path / "pareto.csv"
    table.write_text("a,b\n1,2\n")
    tracker.log_parent(files=[table], params={"trials": 10})
    assert [a.path for a in tracker.client.list_artifacts(parent)] == ["pareto.csv"]
    assert tracker.client.get_run(parent).data.params == {"trials": "10"}


def test_reap_ends_a_dead_trials_run_as_killed(tracker, experiment):
    study = _study(experiment)
    tracker.attach(study)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    trial = study.ask()
    run_id = tracker.start_trial(trial.number, {"layers": {}}, {})
    record.write_fields(
        trial,
        worker=f"{socket.gethostname()}:{proc.pid}",
        heartbeat=time.time(),
        mlflow_run_id=run_id,
    )
    try:
        os.kill(proc.pid, 0)
        pytest.skip("the dead pid was reused already")
    except ProcessLookupError:
        pass
    assert liveness.reap(study, tracker) == [trial.number]
    assert study.trials[0].state == TrialState.FAIL
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "process gone" in run.data.tags["fail_reason"]


def test_null_tracker_records_nothing():
    null = NullTracker()
    study = _study("null")
    assert null.enabled is False and null.parent_id is None
    assert null.attach(study) is None
    assert null.start_trial(0, {"layers": {}}, {"a": 1}) is None
    assert null.log_metrics(None, {"a": 1.0}, step=1) is None
    assert null.end_trial(None, state="COMPLETE", metrics={"a": 1.0}) is None
    assert null.log_parent(files=["x"], params={"a": 1}) is None
    assert null.finish_parent() is None
    assert record.parent_run(study) is None
    assert study.user_attrs == {}


def test_from_config(store, experiment):
    uri, artifacts = store
    assert isinstance(from_config({"enabled": False}, experiment), NullTracker)
    found = from_config({"enabled": True, "uri": uri, "artifacts": artifacts}, experiment)
    assert isinstance(found, MlflowTracker) and found.enabled
    assert found.client.get_experiment(found.experiment_id).name == experiment


@pytest.mark.parametrize("suffix", ["#1", "%201"])
def test_artifacts_land_in_the_folder_named_after_the_study(store, suffix):
    from pathlib import Path

    uri, artifacts = store
    stem = f"odd-{uuid.uuid4().hex[:8]}"
    name = stem + suffix  # config.name allows any name without "/"
    tracker = MlflowTracker(uri, artifacts, name)
    tracker.attach(_study(name))
    tracker.start_trial(0, {"layers": {}}, {})
    folders = [p.parent.parent.parent.name for p in Path(artifacts).glob("*/*/artifacts/plan.json")]
    assert [f for f in folders if f.startswith(stem)] == [name]


# -- BackgroundTracker: the same calls, made in order on its thread ----------------------------
def test_background_calls_land_in_order_by_close(store, experiment, tmp_path, monkeypatch):
    import threading

    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from tnsearch.study import background_tracking

    monkeypatch.setattr(background_tracking, "RUN_WAIT_S", 0.2)
    uri, artifacts = store
    gate = threading.Event()  # a store that takes its time to open: nothing is made meanwhile

    def slow_open() -> MlflowTracker:
        gate.wait(30)
        return MlflowTracker(uri, artifacts, experiment)

    tracker = BackgroundTracker(slow_open, uri=uri)
    study = _study(experiment)
    trials = [study.ask(), study.ask()]
    tracker.attach(study)
    runs = [
        tracker.start_trial(
            t.number,
            {"layers": {"fc1": {"rank": 2}}},
            {"epochs": 3},
            on_run_id=lambda run_id, t=t: record.write_fields(t, mlflow_run_id=run_id),
        )
        for t in trials
    ]  # the first one waited RUN_WAIT_S in vain, the second did not wait
    run = runs[0]
    for step, acc in enumerate([0.5, 0.6, 0.7]):
        tracker.log_metrics(run, {"val_acc": acc}, step=step)
    tracker.end_trial(run, state="PRUNED", metrics={"accuracy": 0.7}, tags={"prune_reason": "x"})
    table = tmp_path / "pareto.csv"
    table.write_text("a,b\n1,2\n")
    tracker.log_parent(files=[table], params={"trials": 1})
    tracker.finish_parent("FAILED")
    assert [r.id for r in runs] == [None, None]  # made later, and nobody waited for that
    assert all("mlflow_run_id" not in t.user_attrs for t in study.trials)

    gate.set()
    tracker.close()
    client = MlflowClient(uri)
    parent = client.get_run(record.parent_run(study))
    assert parent.info.status == "FAILED"  # finish_parent came after attach
    assert parent.data.params == {"trials": "1"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["pareto.csv"]
    made = client.get_run(run.id)
    assert made.data.tags[MLFLOW_PARENT_RUN_ID] == parent.info.run_id
    assert made.info.status == "FINISHED"  # end_trial came after start_trial
    assert made.data.tags["state"] == "PRUNED" and made.data.tags["prune_reason"] == "x"
    assert made.data.params == {"epochs": "3"}
    history = client.get_metric_history(run.id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert made.data.metrics["accuracy"] == 0.7
    assert client.get_run(runs[1].id).info.status == "RUNNING"
    # The run ids reached the (running) trials from the tracker's thread.
    assert [t.user_attrs["mlflow_run_id"] for t in study.trials] == [r.id for r in runs]
    assert tracker.experiment_id == client.get_experiment_by_name(experiment).experiment_id
    assert tracker.parent_id == parent.info.run_id


def test_background_start_trial_returns_with_the_run_stored_on_the_trial(store, experiment):
    # A trial may fail right after it starts, and Optuna keeps no attribute set after the tell.
    uri, artifacts = store
    tracker = from_config(
        {"enabled": True, "uri": uri, "artifacts": artifacts}, experiment, background=True
    )
    study = _study(experiment)
    trial = study.ask()
    tracker.attach(study)
    run = tracker.start_trial(
        trial.number,
        {"layers": {}},
        {},
        on_run_id=lambda run_id: record.write_fields(trial, mlflow_run_id=run_id),
    )
    # Writing the trial's record (which never held the id) at its end leaves it be.
    record.write(trial, record.Record(number=trial.number, quality=0.5))
    study.tell(trial, state=TrialState.FAIL)
    tracker.end_trial(run, state="FAIL")
    tracker.close()
    assert run.id is not None and study.trials[0].user_attrs["mlflow_run_id"] == run.id
    assert tracker._tracker.client.get_run(run.id).info.status == "FAILED"


def test_background_failures_are_said_once_and_stop_nothing(store, experiment, capsys):
    uri, artifacts = store
    tracker = from_config(
        {"enabled": True, "uri": uri, "artifacts": artifacts}, experiment, background=True
    )
    assert isinstance(tracker, BackgroundTracker)
    tracker.attach(_study(experiment))
    tracker.log_metrics("no-such-run", {"a": 1.0})
    tracker.log_metrics("no-such-run", {"a": 2.0})
    run = tracker.start_trial(0, {"layers": {}}, {})
    tracker.end_trial(run, state="COMPLETE", metrics={"accuracy": 0.5})
    tracker.close()
    assert capsys.readouterr().err.count("log_metrics failed") == 1
    assert tracker._tracker.client.get_run(run.id).data.metrics == {"accuracy": 0.5}
    # After close, a call is made at once.
    tracker.log_metrics(run, {"late": 1.0})
    assert tracker._tracker.client.get_run(run.id).data.metrics == {"accuracy": 0.5, "late": 1.0}


def test_background_tracker_of_an_unreachable_store(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = {"enabled": True, "uri": "http://127.0.0.1:9", "artifacts": str(tmp_path)}
    tracker = from_config(cfg, "lost", background=True)
    study = _study("lost")
    tracker.attach(study)
    run = tracker.start_trial(0, {"layers": {}}, {})
    tracker.log_metrics(run, {"a": 1.0})
    tracker.end_trial(run, state="COMPLETE")
    tracker.finish_parent()
    tracker.close()
    assert tracker.experiment_id is None and tracker.parent_id is None and run.id is None
    assert capsys.readouterr().err.count("cannot open the store") == 1
    assert record.parent_run(study) is None


@pytest.mark.parametrize("cls", [MlflowTracker, BackgroundTracker, NullTracker])
def test_every_tracker_is_a_tracker_with_its_signatures(cls):
    """The three trackers make the same calls: each method of the `Tracker` protocol exists on
    each, with the protocol's parameters (names, kinds, whether optional) and no others."""
    import inspect

    for name, member in vars(Tracker).items():
        if name.startswith("_") or not callable(member):
            continue
        want = inspect.signature(member)
        have = inspect.signature(getattr(cls, name))
        pairs = zip(have.parameters.values(), want.parameters.values(), strict=False)
        assert len(have.parameters) == len(want.parameters), (cls.__name__, name, have)
        for a, b in pairs:
            optional = (a.default is a.empty, b.default is b.empty)
            assert (a.name, a.kind) == (b.name, b.kind) and len(set(optional)) == 1, (cls, name, a)


def test_the_trackers_pass_the_runtime_check(tracker):
    """Each tracker has every member of the protocol, its attributes included."""
    background = BackgroundTracker(NullTracker, uri="none")
    try:
        for found in (tracker, background, NullTracker()):
            assert isinstance(found, Tracker), type(found).__name__
            assert found.parent_id is None and isinstance(found.enabled, bool)
    finally:
        background.close()
    assert not isinstance(object(), Tracker)
