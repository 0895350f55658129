"""Trials' models in a real MLflow store: logged, loaded back without the study, predicting,
registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import compose_cfg
from tnsearch.cli import resolve
from tnsearch.results import mlflow_models


def _setup(tiny_study, *extra):
    from hydra.utils import instantiate

    cfg = resolve(compose_cfg([*tiny_study.overrides, *extra]))
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    return cfg, dm


def _raw(dm, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images as scikit-learn gives them (floats 0-16, before the normalization the
    models apply themselves) and its labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = dm.indices[split]
    return digits.images[idx][:, None].astype(np.float32), digits.target[idx]


@pytest.mark.slow
def test_pareto_models_are_logged_registered_and_predict_as_recorded(tiny_study, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    cfg, dm = _setup(tiny_study, "tracking.log_models=pareto", "tracking.register=true")
    study = tiny_study.load()
    chosen = mlflow_models.chosen(study, "pareto")
    uris = mlflow_models.log_models(study, cfg, tiny_study.root / "mlp", dm)
    assert chosen and len(uris) == len(chosen)
    assert mlflow_models.log_models(study, cfg, tiny_study.root / "mlp", dm) == []  # once

    mlflow.set_tracking_uri(cfg.tracking.uri)
    client = MlflowClient(cfg.tracking.uri)
    x, y = _raw(dm, "val")
    x_test, y_test = _raw(dm, "test")
    for trial in chosen:
        uri = client.get_run(trial.mlflow_run_id).data.tags[mlflow_models.MODEL_TAG]
        assert uri in uris
        assert mlflow.get_logged_model(uri.rsplit("/", 1)[-1]).name == f"trial-{trial.number}"
        model = mlflow.pyfunc.load_model(uri)  # raw scikit-learn digits in
        logits = model.predict(x)
        assert float((logits.argmax(1) == y).mean()) == pytest.approx(trial.quality, abs=1e-6)
        tested = float((model.predict(x_test).argmax(1) == y_test).mean())
        assert abs(tested - trial.test_quality) <= 0.005
        module = mlflow.pytorch.load_model(uri)
        with torch.no_grad():
            again = module(torch.from_numpy(x[:5]))
        np.testing.assert_allclose(again.numpy(), logits[:5], rtol=1e-4, atol=1e-5)
        # its input example: real validation digits, as scikit-learn gives them, not zeros
        local = mlflow.artifacts.download_artifacts(
            uri, dst_path=str(tmp_path / f"m{trial.number}")
        )
        example = json.loads(Path(local, "input_example.json").read_text())
        np.testing.assert_array_equal(np.asarray(example, dtype=np.float32), x[:2])

    versions = client.search_model_versions("name='mlp'")
    assert sorted(int(v.tags["trial"]) for v in versions) == sorted(t.number for t in chosen)
    assert all({"accuracy", "param_count", "latency_ratio"} <= set(v.tags) for v in versions)
    for trial in chosen:
        run = client.get_run(trial.mlflow_run_id)
        assert run.data.tags["pareto"] == "true" and run.data.tags[mlflow_models.MODEL_TAG]
        files = {a.path for a in client.list_artifacts(trial.mlflow_run_id)}
        assert "plan.json" in files

    # Another process, with neither the study nor tnsearch: the URI and a batch are enough.
    batch = tmp_path / "x.npy"
    np.save(batch, x[:4])
    code = (
        "import json, sys, mlflow, numpy as np\n"
        f"mlflow.set_tracking_uri({cfg.tracking.uri!r})\n"
        f"out = mlflow.pyfunc.load_model({uris[0]!r}).predict(np.load({str(batch)!r}))\n"
        "print(json.dumps([list(out.shape), 'tnsearch' in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shape, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert shape == [4, 10] and imported is False


@pytest.mark.slow
def test_a_study_ends_with_its_front_in_mlflow(tmp_path):
    """`python -m tnsearch`: the parent run tells the study, the front's models are
    registered, every trained trial's run says whether it is on the front."""
    from mlflow import MlflowClient

    from tests.helpers import TINY
    from tnsearch.__main__ import run as run_search

    overrides = [f"root={tmp_path}", "trials=2", *TINY]
    cfg = compose_cfg([*overrides, "tracking.log_models=pareto", "tracking.register=true"])
    assert run_search(cfg) == 0
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("mlp").experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if r.data.tags.get("tnsearch_role") == "parent")
    assert {"best_accuracy", "hypervolume", "trials_trained", "dense_param_count"} <= set(
        parent.data.metrics
    )
    assert "space.topologies" in parent.data.params
    assert "| trial | accuracy | param_count |" in parent.data.tags["mlflow.note.content"]
    trained = [r for r in runs if "pareto" in r.data.tags]
    front = [r for r in trained if r.data.tags["pareto"] == "true"]
    assert front and all(mlflow_models.MODEL_TAG in r.data.tags for r in front)
    versions = client.search_model_versions("name='mlp'")
    assert sorted(v.tags["trial"] for v in versions) == sorted(r.data.tags["trial"] for r in front)
    # the runs view the printed URL opens: trial runs flat, the objectives as columns
    view = json.loads(
        client.get_experiment(experiment).tags[f"mlflow.sharedViewState.{mlflow_models.VIEW}"]
    )
    assert "metrics.`latency_ratio`" in view["selectedColumns"]
    assert view["orderByKey"] == "metrics.`accuracy`"
    assert all(
        r.data.metrics["compression"] == round(r.data.metrics["compression"], 2) for r in trained
    )
