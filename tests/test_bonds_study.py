"""Bonds in a real (tiny, warm) study: per-epoch bond metrics in MLflow, the report's bond
sections, and `python -m tnsearch.bonds` probing a trained trial, bad input included."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from tests.helpers import TINY, compose_cfg
from tnsearch import bonds
from tnsearch.__main__ import run as run_search
from tnsearch.cli import resolve
from tnsearch.config import ConfigError
from tnsearch.report import _bond_training, _bonds
from tnsearch.report._data import ReportData
from tnsearch.results import probe
from tnsearch.results.selection import open_existing
from tnsearch.study import record

pytestmark = pytest.mark.slow

EPOCHS = 2
STUDY = [*TINY, "pretrain.epochs=1", "trials=3", f"epochs={EPOCHS}", "pruning.enabled=false",
         "tracking.bonds=true"]  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("bonds")
    assert run_search(compose_cfg([f"root={root}", *STUDY])) == 0
    cfg = resolve(compose_cfg([f"root={root}", *STUDY]))
    found = open_existing(cfg.storage, cfg.name)
    trials = [r for r in record.trained(found) if r.layers]
    assert trials, "the study trained no tensorized trial"
    return root, cfg, found, trials


def test_each_epoch_logs_every_bond_to_the_trials_run(study):
    root, cfg, _, trials = study
    client = MlflowClient(cfg.tracking.uri)
    for trial in trials:
        metrics = client.get_run(trial.mlflow_run_id).data.metrics
        keys = sorted(k for k in metrics if k.startswith("bonds/"))
        model = probe.load_trial(cfg, trial)
        final = bonds.epoch_metrics(model)  # the trained weights: the last epoch's bonds
        assert keys == sorted(final) and keys
        for key in keys:
            history = client.get_metric_history(trial.mlflow_run_id, key)
            assert sorted(p.step for p in history) == list(range(EPOCHS + 1))  # 0: as decomposed
            last = max(history, key=lambda p: p.step)
            assert last.value == pytest.approx(final[key], rel=1e-4, abs=1e-6)
        assert metrics["bonds_seconds"] > 0.0
        layers = {k.split("/")[1] for k in keys}
        assert layers == set(trial.layers)
    dense = record.dense(record.trained(study[2]))
    assert not any(k.startswith("bonds/") for k in client.get_run(dense.mlflow_run_id).data.metrics)


def test_the_report_draws_the_bonds_over_training_and_the_truncation_curve(study):
    root, _, found, _ = study
    cfg = resolve(compose_cfg([f"root={root}", *STUDY], config="report"))
    data = ReportData.collect(found, cfg)
    html = _bond_training.render(data)
    assert "<img" in html and "Not available" not in html and "hold no bond metrics" not in html
    html = _bonds.render(data)
    assert "Truncation you can trust" in html and "1 (as trained)" in html
    assert all(f">{e:g}<" in html for e in _bonds.ENERGIES)


def test_the_probe_writes_a_table_and_a_figure_and_logs_them(study):
    root, _, _, trials = study
    trial = trials[0]
    name = next(iter(trial.layers))
    cfg = resolve(
        compose_cfg(
            [f"root={root}", *STUDY, f"trial={trial.number}", f"layer={name}", "bond=0"],
            config="probe",
        )
    )
    result = probe.probe_trial(cfg)
    layer = bonds.tensorized_layers(probe.load_trial(cfg, trial))[name]
    assert len(result.rows) == layer.rank[0] and result.kind == "classes"
    assert sum(r.share for r in result.rows) == pytest.approx(1.0)
    assert [r.share for r in result.rows] == sorted((r.share for r in result.rows), reverse=True)
    assert all(len(r.top) == 3 and r.mean > 0 for r in result.rows)
    assert all(p.is_file() and p.stat().st_size > 0 for p in result.files)
    assert result.table().count("\n") == len(result.rows) + 1
    client = MlflowClient(cfg.tracking.uri)
    logged = {a.path for a in client.list_artifacts(trial.mlflow_run_id, "probe")}
    assert logged == {f"probe/{p.name}" for p in result.files}


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("layer=nope", "layer: 'nope' is no layer of trial {n}; tensorized layers: "),
        ("layer=fc3", "layer: 'fc3' is not tensorized in trial {n}; tensorized layers: "),
        ("bond=99", "bond: layer '{layer}' of trial {n} has bonds 0-"),
        ("trial=0", "trial: trial 0 is dense; trained tensorized trials: "),
        ("trial=99", "trial: no trial 99 in study 'mlp' (trials 0-"),
        ("examples=0", "examples: must be a positive integer, got 0"),
    ],
)
def test_bad_probe_input_names_the_key_and_the_valid_choices(study, override, says):
    root, _, _, trials = study
    trial = trials[0]
    name = next(iter(trial.layers))
    args = [f"trial={trial.number}", f"layer={name}", "bond=0", override]
    cfg = resolve(compose_cfg([f"root={root}", *STUDY, *args], config="probe"))
    with pytest.raises(ConfigError) as info:
        probe.probe_trial(cfg)
    assert str(info.value).startswith(says.format(n=trial.number, layer=name))
    if override.startswith("trial"):
        numbers = ", ".join(str(t.number) for t in trials)
        assert str(info.value).endswith(f"trained tensorized trials: {numbers}")


def test_the_command_says_one_line_and_exits_2(study):
    root, _, _, trials = study
    args = ["-m", "tnsearch.bonds", f"root={root}", *STUDY, f"trial={trials[0].number}"]
    done = subprocess.run(
        [sys.executable, *args, "layer=nope", "bond=0"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: layer: 'nope' is no layer of trial")
    assert "tnsearch.bonds: study 'mlp'" in done.stdout
    assert not list((root / "mlp").glob("probe/*/nope-*"))  # nothing written
