"""Export of a real trial as a standalone package, and `tnsearch.load` / onnxruntime on it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import tnsearch
from tests.helpers import compose_cfg
from tnsearch import export as export_cli
from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.results.export import FILES
from tnsearch.results.selection import candidates, select

pytestmark = pytest.mark.slow


def run_export(args, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tnsearch.export", *args])
    export_cli.main()


def relative_error(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def trial_model(root, trial):
    """The trial's model as the study left it: plan + weights.pt from its folder."""
    model = plans.build(trial.plan)
    weights = root / "mlp" / "trials" / str(trial.number) / "weights.pt"
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def package(tiny_study, tmp_path_factory):
    """The export of the study's first tensorized trial, made with the command."""
    study = tiny_study.load()
    trial = next(t for t in candidates(study) if t.layers)
    out = tmp_path_factory.mktemp("export") / "pkg"
    mp = pytest.MonkeyPatch()
    try:
        run_export([*tiny_study.overrides, f"trial={trial.number}", f"out={out}"], mp)
    finally:
        mp.undo()
    return trial, out


def test_package_files(tiny_study, package):
    trial, out = package
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    stored = plans.load(out / "plan.json")  # the trial's, each layer's ONNX path added
    for spec in stored.layers.values():
        assert spec.pop("path") in tn.TOPOLOGIES[spec["topology"]].available_paths(False)
    assert stored == trial.plan
    readme = (out / "README.md").read_text()
    assert f"trial {trial.number}" in readme and "onnxruntime matches PyTorch" in readme
    # onnxruntime's latency of model.onnx beside the dense model's ONNX, on the latency batch
    batch = compose_cfg(tiny_study.overrides).latency.batch_size
    assert "x the dense model's ONNX (" in readme and f" ms per batch of {batch}, " in readme
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["trial"] == str(trial.number)


def test_load_rebuilds_the_trained_model(tiny_study, package):
    trial, out = package
    loaded = tnsearch.load(out)
    original = trial_model(tiny_study.root, trial)
    assert not loaded.training
    assert any(isinstance(m, tn.TNLayer) for m in loaded.modules())
    expected = original.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(loaded(x), original(x)) < 1e-6
        # The same on every computation path of every tensorized layer.
        names = [n for n, m in loaded.named_modules() if isinstance(m, tn.TNLayer)]
        for name in names:
            for path in loaded.get_submodule(name).paths:
                for model in (loaded, original):
                    model.get_submodule(name).path = path
                assert relative_error(loaded(x), original(x)) < 1e-6, (name, path)


def test_onnx_runs_in_onnxruntime_with_any_batch(package):
    import onnx
    import onnxruntime

    trial, out = package
    model = tnsearch.load(out, raw=True)  # model.onnx takes raw pixels, as this does
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    for batch in (1, 5, 33):  # exported with a batch of 2
        x = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            assert relative_error(got, model(x).numpy()) < 1e-4
    # The graph keeps the factors: its weights are the tensorized model's, not dense ones.
    stored = sum(int(np.prod(i.dims)) for i in onnx.load(out / "model.onnx").graph.initializer)
    assert stored <= trial.params + 64 < 50610  # (the normalization: 2 numbers per channel)


def test_selection_on_the_command_line(tiny_study, tmp_path, monkeypatch, capsys):
    study = tiny_study.load()
    expected = select(study, "smallest-within=0.01").number
    run_export(
        [*tiny_study.overrides, "trial=smallest-within=0.01", f"out={tmp_path}/pkg"], monkeypatch
    )
    out = capsys.readouterr().out
    assert f"\ntrial {expected} (smallest-within=0.01): " in "\n" + out
    assert f"exported to {tmp_path}/pkg" in out
    assert (tmp_path / "pkg" / "model.onnx").is_file()
    # ... and logged to the trial's MLflow run
    from mlflow import MlflowClient

    run_id = study.trials[expected].user_attrs["mlflow_run_id"]
    client = MlflowClient(f"sqlite:///{tiny_study.root}/mlflow.db")
    logged = {a.path for a in client.list_artifacts(run_id, "export")}
    assert {"export/model.onnx", "export/plan.json", "export/model.safetensors"} <= logged
    assert f"logged to MLflow run {run_id}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["name=nope"], "error: name: no study 'nope' in {root}/nope/optuna.journal"),
        (["trial=99"], "error: trial: no trial 99 in study 'mlp' (trials 0-{last})"),
        (["trial=fastest"], "error: trial: unknown 'fastest': use a trial number or one of "),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    tiny_study, tmp_path, monkeypatch, capsys, args, message
):
    with pytest.raises(SystemExit) as info:
        run_export([*tiny_study.overrides, f"out={tmp_path}/pkg", *args], monkeypatch)
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = len(tiny_study.load().trials) - 1
    assert err.startswith(message.format(root=tiny_study.root, last=last))
    assert err.count("\n") == 1
    assert not (tmp_path / "pkg").exists()
    assert not (tiny_study.root / "nope").exists()


def test_load_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported model \\(no plan.json\\)"):
        tnsearch.load(tmp_path)
