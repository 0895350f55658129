"""A study with compiled trials: torch.compile for training, evaluation and latency."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.helpers import FAST, compose_cfg
from tests.test_cli import load_study
from tnsearch.__main__ import run as run_search

pytestmark = pytest.mark.slow


def test_quick_study_with_compiled_trials(tmp_path):
    # The quick preset with its smallest model and data: compiling a ResNet's training step
    # takes minutes on 2 CPU cores; the path through tnsearch is the same.
    run_search(
        compose_cfg(
            [
                f"root={tmp_path}",
                "trials=2",
                "epochs=1",
                "trainer.compile=default",
                "model=mlp",
                "data=digits",
                "space.topologies=[tucker]",
                *FAST,
            ]
        )
    )
    study = load_study(tmp_path)
    done = [t for t in study.trials if t.user_attrs.get("trained")]
    assert len(done) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for t in done:
        attrs = t.user_attrs
        assert 0 < attrs["latency_p10_ms"] <= attrs["latency_ms"] <= attrs["latency_p90_ms"]
        run = client.get_run(attrs["mlflow_run_id"])
        assert run.data.params["compile"] == "default"
        assert run.data.params["latency_compile"] == "default"
        assert run.data.metrics["latency_ms"] == pytest.approx(attrs["latency_ms"], rel=1e-3)
