"""Model-level helpers: n_params, describe, freeze_paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tnsearch import tn


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)
    )
    model[0] = tn.tensorize(model[0], topology="cp", rank=4, order=1)
    model[3] = tn.tensorize(model[3], topology="tree", rank=4, order=2)
    return model


def test_n_params_counts_trainable_once():
    lin = nn.Linear(4, 3)
    shared = nn.Sequential(lin, lin)
    assert tn.n_params(shared) == 15
    lin.bias.requires_grad_(False)
    assert tn.n_params(shared) == 12


def test_describe_lists_tensorized_layers():
    model = _model()
    text = tn.describe(model)
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("0: cp Conv2d(3, 3) in=3(3,) out=8(8,) rank=(4,)")
    assert "path=auto (not run yet)" in lines[0]
    assert lines[1].startswith("3: tree Linear in=128(8, 16) out=10(2, 5)")
    assert "x smaller" in lines[1]
    model(torch.randn(2, 3, 6, 6))
    assert "2x3x6x6 cpu float32 train -> " in tn.describe(model)
    assert tn.describe(nn.Linear(2, 2)) == "no tensorized layers"


def test_freeze_paths_chooses_both_keys_and_restores_buffers(monkeypatch):
    model = _model()
    x = torch.randn(4, 3, 6, 6)
    before = {k: v.clone() for k, v in model.named_buffers()}
    chosen = tn.freeze_paths(model, x)
    assert set(chosen) == {"0", "3"}
    assert [k[3] for k in chosen["0"]] == [False, True]
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k
    import tnsearch.tn._base as base

    monkeypatch.setattr(base, "measure_paths", lambda *a, **k: pytest.fail("measured after freeze"))
    model(torch.randn(3, 3, 6, 6))  # a new key: fewest MACs, no measuring
    assert len(model[0].chosen_paths) == 3
