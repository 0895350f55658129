"""`latency.runtime=onnxruntime`: trials timed as exported ONNX beside the dense model's."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.helpers import TINY, compose_cfg
from tnsearch.__main__ import run as run_search
from tnsearch.config import Config, ConfigError, LatencyConfig
from tnsearch.study.setup import check_runtime


@pytest.mark.slow
@pytest.mark.serial  # a paired timing: the dense model beside itself reads 2.2x beside another test
def test_a_study_timed_in_onnxruntime(tmp_path):
    cfg = compose_cfg(
        [f"root={tmp_path}", "trials=2", *TINY, "latency.runtime=onnxruntime", "epochs=1"]
    )
    assert run_search(cfg) == 0
    journal = JournalFileBackend(str(tmp_path / "mlp" / "optuna.journal"))
    study = optuna.load_study(study_name="mlp", storage=JournalStorage(journal))
    timed = [t for t in study.trials if "latency_ratio" in t.user_attrs]
    assert timed
    for t in timed:
        attrs = t.user_attrs
        assert attrs["latency_device"].startswith("onnxruntime on ")
        assert attrs["latency_ratio"] > 0 and attrs["dense_latency_ms"] > 0
    dense = next(t for t in timed if not t.user_attrs["plan"]["layers"])
    assert 0.5 < dense.user_attrs["latency_ratio"] < 2.0  # the dense model beside itself


def test_onnxruntime_needs_a_model_of_one_tensor_input():
    class Tokens:
        def example_input(self, size):
            return {"input_ids": torch.zeros(size, 4, dtype=torch.long)}

    cfg = Config(latency=LatencyConfig(runtime="onnxruntime"))
    setup = SimpleNamespace(cfg=cfg, datamodule=Tokens())
    with pytest.raises(ConfigError, match=r"latency.runtime.*one tensor input"):
        check_runtime(setup)
    setup.cfg.latency.runtime = "torch"
    check_runtime(setup)  # nothing to check
