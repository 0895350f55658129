"""Latency: positive, ordered statistics, measured on the batch size asked for."""

from __future__ import annotations

import time

import torch
from torch import nn

from tnsearch.measure import latency


class Recorder(nn.Module):
    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.batches: list[int] = []
        self.modes: list[bool] = []
        self.sleep_s = sleep_s

    def forward(self, x):
        self.batches.append(x.shape[0])
        self.modes.append(self.training)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.lin(x)


def test_measure_honours_batch_size_and_eval_mode():
    model = Recorder()
    stats = latency.measure(model, torch.zeros(16, 4), warmup=2, repeats=5)
    assert set(model.batches) == {16}
    assert len(model.batches) == 7
    assert not any(model.modes)
    assert model.training  # restored
    assert stats.batch_size == 16 and stats.repeats == 5
    assert 0 < stats.p10 <= stats.p50 <= stats.p90


def test_measure_sees_a_slower_model():
    fast = latency.measure(Recorder(), torch.zeros(2, 4), warmup=1, repeats=5)
    slow = latency.measure(Recorder(sleep_s=0.01), torch.zeros(2, 4), warmup=1, repeats=5)
    assert slow.p50 >= 10.0 > fast.p50


def test_bfloat16_autocast_runs():
    stats = latency.measure(
        nn.Linear(8, 8), torch.zeros(4, 8), warmup=1, repeats=3, dtype="bfloat16"
    )
    assert stats.dtype == "bfloat16" and stats.p50 > 0


def test_a_dict_batch_is_passed_as_keyword_arguments():
    import torch
    from torch import nn

    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask):
            return self.fc(input_ids.float() * attention_mask)

    batch = {"input_ids": torch.ones(5, 4, dtype=torch.long), "attention_mask": torch.ones(5, 4)}
    stats = latency.measure(Keyed(), batch, warmup=1, repeats=2)
    assert stats.batch_size == 5 and stats.p50 > 0


def test_the_classifier_takes_logits_from_any_output_kind():
    import pytest
    import torch

    from tnsearch.measure.training import logits

    x = torch.randn(2, 3)
    assert logits(x) is x
    assert logits({"logits": x, "hidden": 0}) is x
    assert logits((x, "rest")) is x
    with pytest.raises(TypeError, match="^model: its output"):
        logits({"embeddings": x})


def test_any_datamodule_gives_a_batch_to_measure_latency_on():
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Plain(pl.LightningDataModule):  # a user's module: no example_input
        def val_dataloader(self):
            data = TensorDataset(torch.arange(10.0).reshape(5, 2), torch.zeros(5))
            return DataLoader(data, batch_size=2)

    batch = latency.example_batch(Plain(), 7)  # more than the split holds: repeated
    assert batch.shape == (7, 2) and batch[0, 1] == 1.0 and batch[5, 0] == 0.0
