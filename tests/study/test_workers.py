"""Many workers on one study, real processes: local workers, PostgreSQL, a Hydra launcher,
a worker killed with SIGKILL, and trials that fail."""

from __future__ import annotations

import os
import signal
import time
import uuid

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.helpers import TINY, run_cli, start_cli

pytestmark = pytest.mark.slow


def journal_study(root, name):
    storage = JournalStorage(JournalFileBackend(str(root / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def check_study(study, tracking_uri, name, expected):
    """Exactly `expected` complete trials, unique numbers, one nested run each, none running."""
    trials = study.get_trials()
    complete = [
        t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("trained", True)
    ]
    assert len(complete) == expected
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tnsearch_role") == "parent"]
    assert len(parents) == 1
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = [r for r in nested if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["trial"]) for r in finished) == sorted(t.number for t in complete)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    return trials


def test_two_local_workers_share_one_study(tmp_path):
    done = run_cli([f"root={tmp_path}", "trials=6", "workers=2", *TINY], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study = journal_study(tmp_path, "mlp")
    trials = check_study(study, f"sqlite:///{tmp_path}/mlflow.db", "mlp", 6)
    # Both processes joined (which one runs how many trials depends on timing).
    assert "[w0] worker" in done.stdout and "[w1] worker" in done.stdout
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert 1 <= len(workers) <= 2
    assert (tmp_path / "mlp" / "pareto.csv").exists()


@pytest.fixture
def postgres_url():
    """A fresh database on the PostgreSQL server that .ci/run starts (TNSEARCH_TEST_POSTGRES)."""
    base = os.environ.get("TNSEARCH_TEST_POSTGRES")
    if not base:
        pytest.skip("TNSEARCH_TEST_POSTGRES is not set (.ci/run starts a PostgreSQL server)")
    import psycopg

    name = f"tn_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield base.rsplit("/", 1)[0] + f"/{name}"


def test_postgres_storage_two_workers(tmp_path, postgres_url):
    done = run_cli(
        [
            f"root={tmp_path}",
            "trials=6",
            "workers=2",
            "storage=postgres",
            f"storage.url={postgres_url}",
            *TINY,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="mlp", storage=postgres_url)
    check_study(study, f"sqlite:///{tmp_path}/mlflow.db", "mlp", 6)


def test_submitit_local_launcher_runs_two_jobs(tmp_path):
    done = run_cli(
        [
            "-m",
            "hydra/launcher=submitit_local",
            "worker=0,1",
            f"root={tmp_path}",
            "trials=4",
            f"hydra.sweep.dir={tmp_path}/multirun",
            *TINY,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    study = journal_study(tmp_path, "mlp")
    trials = check_study(study, f"sqlite:///{tmp_path}/mlflow.db", "mlp", 4)
    pids = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert 1 <= len(pids) <= 2
    logs = "".join(p.read_text() for p in (tmp_path / "multirun").rglob("*_log.out"))
    assert logs.count("joined study 'mlp'") == 2


def test_kill_9_mid_trial_then_rerun(tmp_path):
    # Trials of 500 epochs are still running when killed, however fast the machine; the rerun
    # that continues the study trains 2 epochs.
    args = [f"root={tmp_path}", "trials=2", *TINY, "epochs=500"]
    proc = start_cli(args, cwd=tmp_path)
    journal = tmp_path / "mlp" / "optuna.journal"
    deadline = time.monotonic() + 240
    killed_number = None
    while time.monotonic() < deadline and killed_number is None:
        time.sleep(0.5)
        if not journal.exists():
            continue
        try:
            study = journal_study(tmp_path, "mlp")
        except KeyError:  # the file is there, the study not yet
            continue
        running = [
            t
            for t in study.get_trials(states=(TrialState.RUNNING,))
            if "mlflow_run_id" in t.user_attrs
        ]
        if running:
            time.sleep(1.0)  # well inside the trial
            os.kill(proc.pid, signal.SIGKILL)
            killed_number = running[0].number
    proc.wait(timeout=30)
    assert killed_number is not None, "no trial started in time"
    assert journal_study(tmp_path, "mlp").trials[killed_number].state == TrialState.RUNNING

    again = run_cli([*args[:-1], "epochs=2"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = journal_study(tmp_path, "mlp")
    trials = check_study(study, f"sqlite:///{tmp_path}/mlflow.db", "mlp", 2)
    dead = trials[killed_number]
    assert dead.state == TrialState.FAIL
    assert "died" in dead.user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert "died" in run.data.tags["fail_reason"]


def test_sqlite_workers_with_diverging_trials_and_retries(tmp_path):
    # Two workers on SQLite; half the plans train with a learning rate of 1e6, so their loss
    # becomes NaN: each such plan fails, is retried once (retries=1), fails again, and the
    # study still reaches its target.
    done = run_cli(
        [
            f"root={tmp_path}",
            "trials=4",
            "workers=2",
            "storage=sqlite",
            "retries=1",
            "space.lr=[0.05,0.1,1e6]",
            "sampler=random",
            "seed=3",
            *TINY,
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "database is locked" not in done.stdout + done.stderr
    study = optuna.load_study(study_name="mlp", storage=f"sqlite:///{tmp_path}/mlp/optuna.db")
    check_study(study, f"sqlite:///{tmp_path}/mlflow.db", "mlp", 4)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed, "seed 3 should draw lr=1e6 at least once"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for t in failed:
        assert t.params["lr"] == 1e6
        assert "NonFiniteLossError" in t.user_attrs["fail_reason"]
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and "loss became" in run.data.tags["fail_reason"]
    retried = [t for t in study.trials if "retry_of" in t.user_attrs]
    assert retried
    for t in retried:
        original = study.trials[t.user_attrs["retry_of"]]
        assert original.params == t.params and original.state == TrialState.FAIL
        assert "retry_of" not in original.user_attrs
    assert "FAILED" in done.stdout
