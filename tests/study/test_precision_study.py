"""`space.precisions`: int8 as a searched choice. A trial in int8 is measured as deployed: its
bytes counted exactly, its quality on the int8 copy of its trained weights, its latency in the
runtime that runs it; bad precisions are one line and write nothing."""

from __future__ import annotations

import csv

import optuna
import pytest
import torch

from tests.helpers import TINY, compose_cfg, val_accuracy
from tnsearch import plan as plans
from tnsearch.config import ConfigError
from tnsearch.data import DigitsDataModule
from tnsearch.measure import precision, quantize
from tnsearch.study import record, storage

#: Four trials: the dense reference, then plans with int8 and float32 groups mixed.
INT8 = [*TINY, "trials=5", "space.precisions=[fp32,int8]", "sampler.seed=3"]


@pytest.mark.slow
def test_an_int8_trial_is_measured_as_deployed(tmp_path, capsys):
    from tnsearch.__main__ import run as run_search

    overrides = [f"root={tmp_path}", *INT8, "objectives=[quality,params,latency,size]"]
    assert run_search(compose_cfg(overrides)) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(
        study_name="mlp", storage=storage.journal(str(tmp_path / "mlp" / "optuna.journal"))
    )
    assert study.metric_names == ["accuracy", "param_count", "latency_ratio", "size_bytes"]
    done = record.trained(study)
    dense = record.dense(done)
    quantized = [r for r in done if r.plan.precision]
    assert dense is not None and not dense.plan.precision and quantized
    for r in done:  # bytes: float32 4 per weight; int8 1 per weight and its scales
        model = plans.build(r.plan)
        assert r.size_bytes == precision.size_bytes(model, r.plan.precision)
        if not r.plan.precision:
            assert r.size_bytes == 4 * sum(p.numel() for p in model.parameters())
    for r in quantized:
        assert r.size_bytes < 4 * r.params
        # Its quality is the int8 model's: the trained weights, quantized, on the val split.
        model = plans.build(r.plan)
        weights = tmp_path / "mlp" / "trials" / str(r.number) / "weights.pt"
        model.load_state_dict(torch.load(weights, weights_only=True))
        dm = DigitsDataModule(batch_size=256, seed=0)  # the study's split (seed 0)
        dm.setup("fit")
        deployed = precision.deployed(model, r.plan.precision)
        assert r.quality == pytest.approx(val_accuracy(deployed, dm), abs=1e-6)
    with (tmp_path / "mlp" / "pareto.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert "size_bytes" in rows[0]
    assert "size_bytes " in out and "int8 x" in out  # the console's trial lines and plans


def test_int8_where_torch_has_no_kernels_is_one_line(tmp_path):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg([f"root={tmp_path}/r", *INT8, "latency.device=cuda"])
    with pytest.raises(ConfigError, match=r"^space.precisions: int8 has no cuda kernels"):
        run_search(cfg)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("bad", ["[fp32,int4]", "[]"])
def test_an_unknown_precision_is_one_line(tmp_path, bad):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg([f"root={tmp_path}/r", *TINY, f"space.precisions={bad}"])
    with pytest.raises(ConfigError, match=r"^space.precisions: "):
        run_search(cfg)
    assert not (tmp_path / "r").exists()


def test_size_counts_a_plan_s_int8_layers_only():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    fp32 = precision.size_bytes(model, {})
    assert fp32 == 4 * (64 * 32 + 32 + 32 * 10 + 10)
    one = precision.size_bytes(model, {"0": "int8"})
    assert one == fp32 - 4 * 64 * 32 + 64 * 32 + 32 * quantize.SCALE_BYTES
