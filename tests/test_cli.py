"""End to end: `python -m tnsearch` on embedded data, and every bad input stopping cleanly."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.helpers import QUICK, TINY, compose_cfg, run_cli
from tnsearch.__main__ import run as run_search
from tnsearch.config import ConfigError

pytestmark = pytest.mark.slow


def load_study(root, name="quick"):
    storage = JournalStorage(JournalFileBackend(str(root / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def trained(study):
    """Complete, trained trials; a sampler's repeat of a plan is told again but not trained."""
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    for t in complete:
        if not t.user_attrs.get("trained", True):
            earlier = study.trials[t.user_attrs["duplicate_of"]]
            assert earlier.user_attrs["plan"] == t.user_attrs["plan"]
            assert earlier.values == t.values
    return [t for t in complete if t.user_attrs.get("trained", True)]


def test_quick_study_then_continue(tmp_path):
    args = [f"root={tmp_path}", "trials=3", "epochs=1", *QUICK]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load_study(tmp_path)
    complete = trained(study)
    assert len(complete) == 3
    assert all(len(t.values) == 3 for t in complete)
    first = min(complete, key=lambda t: t.number)
    assert first.number == 0 and first.user_attrs["plan"]["layers"] == {}
    assert all(t.user_attrs["test_quality"] is not None for t in complete)
    for t in complete:  # latency: the spread, not only the median
        attrs = t.user_attrs
        assert 0 < attrs["latency_p10_ms"] <= attrs["latency_ms"] <= attrs["latency_p90_ms"]
    # Console: a line per trial and the front.
    assert done.stdout.count("trial ") >= 3 and "Pareto front" in done.stdout

    # Files: pareto.csv and the trial folders.
    study_dir = tmp_path / "quick"
    rows = list(csv.DictReader((study_dir / "pareto.csv").open()))
    assert rows and set(rows[0]) >= {
        "number",
        "accuracy",
        "test_accuracy",
        "param_count",
        "compression",
        "latency_ratio",
        "latency_ms",
        "dense_latency_ms",
        "latency_device",
        "plan",
    }
    assert "params" not in rows[0]  # one name per figure, the same as Optuna's and MLflow's
    assert list(study.metric_names) == ["accuracy", "param_count", "latency_ratio"]
    for t in complete:
        folder = study_dir / "trials" / str(t.number)
        assert json.loads((folder / "plan.json").read_text()) == t.user_attrs["plan"]
        assert (folder / "weights.pt").stat().st_size > 0

    # MLflow: one parent, three nested runs with the metrics, the front on the parent.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("quick")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("tnsearch_role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 3
    for run in nested:
        assert run.info.status == "FINISHED"
        assert set(run.data.metrics) >= {
            "latency_p10_ms",
            "latency_p90_ms",
            "accuracy",
            "param_count",
            "compression",
            "latency_ratio",
            "latency_ms",
            "dense_latency_ms",
            "train_loss",
        }
        assert not {"params", "val_accuracy"} & set(run.data.metrics)
        assert run.data.tags["latency_device"]
        assert run.data.tags["state"] == "COMPLETE"
        assert "tensorized_layers" in run.data.params
        history = client.get_metric_history(run.info.run_id, "accuracy")  # by epoch, then final
        assert history[-1].value == pytest.approx(run.data.metrics["accuracy"])
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "plan.json" in artifacts
    parent_files = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert {"pareto.csv", "pareto.png"} <= set(parent_files)

    # A rerun with a larger target continues: 5 trials, not 8 and not 2. (In this process: the
    # command line was checked above, and a second start-up would add 10 s to the suite.)
    assert run_search(compose_cfg([f"root={tmp_path}", "trials=5", "epochs=1", *QUICK])) == 0
    study = load_study(tmp_path)
    assert len(trained(study)) == 5
    runs = client.search_runs([exp.experiment_id])
    assert len([r for r in runs if r.data.tags.get("tnsearch_role") == "parent"]) == 1
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId")]) == 5


BAD = [
    (["space.topologies=[mpo,banana]"], "space.topologies"),
    (["space.ranks=[0,4]"], "space.ranks"),
    (["space.orders=[9]"], "space.orders"),
    (["space.layers=[layer9.*]"], "space.layers"),
    (["model.depth=21"], "model.depth"),
    (["data=mnist", "data.root=/nonexistent/mnist"], "data.root"),
    (["data=cifar10", "data.root=/nonexistent/cifar"], "data.root"),
    (["storage=postgres", "storage.url=postgresql://nobody@127.0.0.1:9/none"], "storage.url"),
    (["storage=postgres"], "storage.url"),
    (["objectives=[accuracy,speed]"], "objectives"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[k for _, k in BAD])
def test_bad_input_names_the_key_and_writes_nothing(overrides, key, tmp_path):
    root = tmp_path / "studies"
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg([f"root={root}", *overrides]))
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)
    assert not root.exists()


def test_cli_prints_one_line_and_exits_2(tmp_path):
    # the same check as above, through the real command line (one case: each costs a start-up)
    overrides, key = BAD[5]
    done = run_cli([f"root={tmp_path}/studies", *overrides], cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {key}: "), lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_next_commands_name_the_study_as_the_command_line_did():
    from tnsearch.__main__ import next_steps
    from tnsearch.config import Config, TrackingConfig

    cfg = Config(
        root="studies",
        name="mine",
        tracking=TrackingConfig(uri="sqlite:///studies/mlflow.db"),
        storage={"path": "studies/mine/optuna.journal"},
    )
    text = next_steps(cfg, ["model=custom", "space.orders=[1,2]", "trials=9", "workers=2"], "7")
    assert "#/experiments/7/runs?workflowType=machine_learning&viewStateShareKey=tnsearch" in text
    assert "python -m tnsearch.report model=custom 'space.orders=[1,2]'\n" in text
    assert "trials=9" not in text and "workers=2" not in text
    assert "optuna-dashboard studies/mine/optuna.journal" in text
    plain = next_steps(cfg, [], None)  # in-process, tracking off
    assert "mlflow ui" not in plain and "tnsearch.export root=studies name=mine" in plain
    spaced = cfg.but(  # paths with spaces were printed unquoted: a copied command split them
        root="my studies",
        tracking=TrackingConfig(uri="sqlite:///my studies/mlflow.db"),
        storage={"path": "my studies/mine/optuna.journal"},
    )
    text = next_steps(spaced, [], "7")
    assert "mlflow ui --backend-store-uri 'sqlite:///my studies/mlflow.db'\n" in text
    assert "python -m tnsearch.report 'root=my studies' name=mine\n" in text
    assert text.endswith("optuna-dashboard 'my studies/mine/optuna.journal'")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("study=nope", "study: no preset 'nope' (presets: lenet, minilm, mlp, quick, resnet;"),
        ("sampler=nope", "sampler: no preset 'nope' (presets: gp, nsga2, random, tpe;"),
        ("model=nope", "model: no preset 'nope' (presets: custom, hf, lenet5, mlp, resnet;"),
        ("trails=5", "trails: no such key (did you mean trials? a key of your own takes a +"),
        ("trainer.optimzer.lr=1", "trainer.optimzer: no such key (did you mean trainer.optimizer?"),
        ("+trials=5", "trials: is a known key: set it without the + (trials=...)"),
        ("space.ranks=[1,", "space.ranks: cannot parse 'space.ranks=[1,': "),
        ("name=" + "n" * 300, "name: is 300 bytes long; a folder name takes at most 255"),
    ],
    ids=["study", "sampler", "model", "typo", "nested-typo", "plus", "parse", "long-name"],
)
def test_a_wrong_key_or_preset_is_one_line_and_exit_2(
    tmp_path, monkeypatch, capsys, override, expected
):
    """Hydra's own messages were several lines (the search path, "Set the environment variable
    HYDRA_FULL_ERROR=1"), with exit 1; a 300-character name was an OSError in the storage."""
    import os
    import sys

    from tnsearch.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["tnsearch", f"root={tmp_path}/r", override])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert "HYDRA_FULL_ERROR" not in os.environ  # as the user had it
    assert list(tmp_path.iterdir()) == []


def _start(module: str, args: list[str], cwd):
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("module", "signum", "code"),
    [("tnsearch.profile", "SIGINT", 130), ("tnsearch.compress", "SIGTERM", 143)],
)
def test_every_command_ends_on_a_signal_with_one_line(tmp_path, module, signum, code):
    """SIGINT to `tnsearch.profile` / `tnsearch.compress` printed an 86-line KeyboardInterrupt
    traceback; SIGTERM ended them with no word. Sent here while they pretrain (in Lightning)."""
    import os
    import signal
    import time

    args = [f"root={tmp_path}", *TINY, "pretrain.epochs=500", "tracking.enabled=false"]
    if module == "tnsearch.compress":
        args.append("budget.params=0.5")
    proc = _start(module, args, tmp_path)
    for line in proc.stdout:  # the command's own line before Lightning's first epoch
        if "pretraining the dense model" in line:
            break
    time.sleep(1.0)  # well inside training
    os.kill(proc.pid, getattr(signal, signum))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr[-3000:]
    assert stderr.strip().splitlines() == [f"error: interrupted: {signum}"], stderr[-3000:]
    assert not (tmp_path / "mlp" / "pretrained.pt").exists()  # nothing half-written
