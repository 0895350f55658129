"""An objective is one seam: a module registers it (`tnsearch.objectives`), a config names it,
and it reaches Optuna, pareto.csv, MLflow, the report and the console with nothing else changed.
The built-in `flops` goes the same way."""

from __future__ import annotations

import csv
import re
import sys

import pytest

from tests.helpers import TINY, compose_cfg
from tnsearch import objectives
from tnsearch.config import ConfigError

PLUGIN = "tests.study.activations_objective"


@pytest.fixture
def registered():
    yield
    objectives.unregister("activations")
    sys.modules.pop(PLUGIN, None)


@pytest.mark.slow
def test_a_registered_objective_reaches_every_view(tmp_path, capsys, monkeypatch, registered):
    import optuna
    from mlflow import MlflowClient

    from tnsearch.__main__ import run as run_search
    from tnsearch.report import __main__ as report_cli
    from tnsearch.study import record, storage

    overrides = [
        f"root={tmp_path}",
        "trials=3",
        *TINY,
        f"imports=[{PLUGIN}]",
        "objectives=[quality,params,latency,flops,activations]",
    ]
    assert run_search(compose_cfg(overrides)) == 0
    out = capsys.readouterr().out

    # Optuna: the objectives by metric name, each trial's values in that order.
    study = optuna.load_study(
        study_name="mlp", storage=storage.journal(str(tmp_path / "mlp" / "optuna.journal"))
    )
    names = ["accuracy", "param_count", "latency_ratio", "flops", "activations"]
    assert study.metric_names == names
    done = record.trained(study)
    assert len(done) == 3
    for r in done:
        assert set(r.measures) == {"flops", "activations"}
        assert list(r.values) == pytest.approx(r.values_for(names))
        assert r.values[3] == r.measures["flops"] > 0 and r.values[4] > 0
    dense = record.dense(done)
    smaller = [r for r in done if not r.is_dense and r.params < dense.params]
    assert smaller, "the study tensorized no layer"
    assert all(r.measures["flops"] != dense.measures["flops"] for r in smaller)

    # pareto.csv: a column each, the values as measured.
    with (tmp_path / "mlp" / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"flops", "activations"} <= set(rows[0])
    by_number = {r.number: r for r in done}
    for row in rows:
        trial = by_number[int(row["number"])]
        assert float(row["activations"]) == pytest.approx(trial.measures["activations"], 1e-5)

    # MLflow: each trial's run ends with them as metrics; the parent's front table has them.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for r in done:
        metrics = client.get_run(r.mlflow_run_id).data.metrics
        assert metrics["flops"] == pytest.approx(r.measures["flops"], rel=1e-3)
        assert "activations" in metrics
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert "| activations |" in parent.data.tags["mlflow.note.content"]

    # The console: each trial's line and the front's table.
    lines = [line for line in out.splitlines() if re.match(r"trial +\d+ .* acc ", line)]
    assert len(lines) == 3 and all(" flops " in ln and " activations " in ln for ln in lines)
    assert "reference point: accuracy 0" in out and "activations 1.1x dense" in out

    # The report (another process would read the measures by name, registered or not).
    monkeypatch.setattr(sys, "argv", ["tnsearch.report", *overrides[:1], *TINY])
    report_cli.main()
    html = (tmp_path / "mlp" / "report.html").read_text()
    assert "<th>activations</th>" in html and "<th>flops</th>" in html
    assert "FLOPs" in html  # the axis of its projection


def test_an_import_that_fails_is_one_line(tmp_path):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg([f"root={tmp_path}/r", *TINY, "imports=[no_such_module_here]"])
    with pytest.raises(ConfigError, match=r"^imports: cannot import: No module named"):
        run_search(cfg)
    assert not (tmp_path / "r").exists()


def test_an_unknown_objective_names_the_registered_ones(tmp_path):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg([f"root={tmp_path}/r", *TINY, "objectives=[quality,activations]"])
    with pytest.raises(ConfigError, match=r"^objectives: unknown 'activations' \(known: .*flops"):
        run_search(cfg)
    assert not (tmp_path / "r").exists()


def test_registering_twice_or_the_quality_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        objectives.register(objectives.Objective(key="x", metric="param_count", field="params"))
    with pytest.raises(ValueError, match="task's quality"):
        objectives.register(objectives.Objective(key="quality", metric="q", field="quality"))
    with pytest.raises(ValueError, match="record field or a measure"):
        objectives.Objective(key="y", metric="y")
