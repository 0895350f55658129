"""Start-up: the first console line comes before the heavy imports, and a new MLflow store is a
copy of an empty one made once (bench/startup.py measures the seconds; no test here is timed)."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tnsearch.study import mlflow_store
from tnsearch.study.tracking import MlflowTracker

MARKER = "<<torch is being imported>>"

#: `python -m MODULE ARGS`, with a finder that says on stdout when torch is first imported.
_WATCH_TORCH = textwrap.dedent(
    f"""
    import runpy, sys

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                sys.meta_path.remove(self)
                print({MARKER!r}, flush=True)
            return None

    sys.meta_path.insert(0, Watch())
    module = sys.argv.pop(1)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    """
)


def _lines_until_torch(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, module: str = "tnsearch"
) -> list[str]:
    """Stdout of `python -m MODULE ARGS` up to the marker (the process is killed there)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCH_TORCH, module, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(MARKER):
                break
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
    assert lines and lines[-1] == MARKER, f"torch was never imported: {lines} {stderr[-2000:]}"
    return lines


def test_the_study_says_what_it_loads_before_it_imports_torch(tmp_path):
    lines = _lines_until_torch([f"root={tmp_path}", "trials=1"], tmp_path)
    assert lines[0] == "tnsearch: study 'quick': loading PyTorch, Lightning, Optuna and MLflow ..."
    assert lines.index(MARKER) > 0
    assert not any(tmp_path.iterdir())  # nothing is written before the config is checked


@pytest.mark.parametrize(
    ("module", "loading"),
    [
        ("tnsearch.export", "PyTorch and Optuna"),
        ("tnsearch.profile", "PyTorch, Lightning, Optuna and MLflow"),
        ("tnsearch.compress", "PyTorch, Lightning, Optuna and MLflow"),
    ],
)
def test_the_other_slow_commands_say_it_too(tmp_path, module, loading):
    lines = _lines_until_torch([f"root={tmp_path}", "name=mine"], tmp_path, module=module)
    assert lines[0] == f"{module}: study 'mine': loading {loading} ..."
    assert lines.index(MARKER) > 0


def test_a_local_worker_leaves_the_first_line_to_its_command(tmp_path):
    # A `workers=N` command's copies of itself; only the command says what it loads.
    lines = _lines_until_torch([f"root={tmp_path}"], tmp_path, env={"TNSEARCH_SPAWNED": "1"})
    assert lines == [MARKER]


@pytest.mark.parametrize(
    ("options", "start"), [(["--cfg", "job"], "model:\n"), (["--help"], "tnsearch is powered")]
)
def test_hydras_own_output_is_unchanged(tmp_path, options, start):
    # Hydra prints these without calling the command: no first line of ours.
    done = subprocess.run(
        [sys.executable, "-m", "tnsearch", *options],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(start)
    assert "loading" not in done.stdout


# -- the empty store, made once and copied ---------------------------------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of the test's own (the user's is left alone)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tnsearch"


def _round_trip(uri: str, artifacts: Path, name: str) -> None:
    """A study's worth of calls on the store, read back from it."""
    import optuna
    from mlflow import MlflowClient

    tracker = MlflowTracker(uri, str(artifacts), name)
    tracker.attach(optuna.create_study(study_name=name))
    parent = tracker.parent_id
    run_id = tracker.start_trial(0, {"layers": {}}, {"epochs": 1})
    tracker.end_trial(run_id, state="COMPLETE", metrics={"accuracy": 0.5})
    tracker.finish_parent()
    client = MlflowClient(uri)
    assert client.get_run(run_id).data.metrics == {"accuracy": 0.5}
    assert client.get_run(parent).info.status == "FINISHED"
    # As in a store MLflow made itself: experiment 0, with its folder where the store is used.
    default = client.get_experiment("0")
    assert default.name == "Default"
    assert default.artifact_location == str(Path.cwd() / "mlruns" / "0")
    assert tracker.experiment_id == "1"


def test_a_new_sqlite_store_is_a_copy_of_the_cached_empty_one(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}"
    _round_trip(first, tmp_path / "artifacts", "one")
    (template,) = cache.glob("mlflow-*-empty.db")
    made = template.stat()

    # A second study elsewhere: a byte copy of the same template, which is not made again.
    second = tmp_path / "two" / "mlflow.db"
    second.parent.mkdir()
    assert mlflow_store.seed(f"sqlite:///{second}")
    assert filecmp.cmp(template, second, shallow=False)
    assert (template.stat().st_ino, template.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    _round_trip(f"sqlite:///{second}", tmp_path / "artifacts", "two")
    assert [p.name for p in cache.iterdir()] == [template.name]  # no temporary file is left

    # An existing store is never replaced.
    before = second.read_bytes()
    assert not mlflow_store.seed(f"sqlite:///{second}")
    assert second.read_bytes() == before


def test_without_a_usable_cache_mlflow_makes_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert not mlflow_store.seed(uri)
    _round_trip(uri, tmp_path / "artifacts", "study")


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///studies/mlflow.db", Path("studies/mlflow.db")),
        ("sqlite:////abs/mlflow.db", Path("/abs/mlflow.db")),
        ("sqlite:///:memory:", None),
        ("sqlite:///x.db?timeout=20", None),
        ("postgresql://host/db", None),
        ("http://127.0.0.1:5000", None),
    ],
)
def test_sqlite_path(uri, path):
    assert mlflow_store.sqlite_path(uri) == path
