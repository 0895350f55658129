"""torch.compile(fullgraph=True): every path traces without graph breaks, and never measures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tn.cases import TOPOLOGIES, rel
from tnsearch import tn


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_frozen_model_compiles_fullgraph():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )
    model[0] = tn.tensorize(model[0], topology="tucker", rank=4, order=1)
    model[3] = tn.tensorize(model[3], topology="mpo", rank=4, order=2)
    x = torch.randn(2, 3, 6, 6)
    tn.freeze_paths(model, x, grad=False)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    assert rel(out, ref) < 1e-5


def test_compiling_never_measures(monkeypatch):
    """Without a cached choice, a compiled layer takes the path with the fewest MACs."""
    import tnsearch.tn._base as base

    monkeypatch.setattr(base, "measure_paths", lambda *a, **k: pytest.fail("measured"))
    layer = tn.tensorize(nn.Linear(16, 12), topology="cp", rank=3, order=2)
    x = torch.randn(4, 16)
    with torch.no_grad():
        out = torch.compile(layer, fullgraph=True, backend="eager")(x)
        assert rel(out, layer.to_dense()(x)) < 1e-5
    assert layer.chosen_paths == {}


def _every_path_model(topology: str) -> nn.Module:
    """One layer forced to each path, Conv2d then Linear (on the last dimension)."""
    torch.manual_seed(0)
    cls, layers = tn.TOPOLOGIES[topology], []
    for path in cls.available_paths(True):
        conv = nn.Conv2d(4, 4, 3, padding=1)
        layers.append(tn.tensorize(conv, topology=topology, rank=2, order=2, path=path))
    for path in cls.available_paths(False):
        layers.append(tn.tensorize(nn.Linear(5, 5), topology=topology, rank=2, order=1, path=path))
    return nn.Sequential(*layers)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_path_traces_fullgraph_with_backward(topology):
    """Graph capture of every path, forward and backward (aot_eager: no code generation)."""
    model = _every_path_model(topology)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    ref = model(x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), x)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert rel(out, ref) < 1e-5 and rel(grad, ref_grad) < 1e-5


@pytest.mark.slow
def test_every_path_compiles_with_inductor():
    """The default backend on all topologies and paths at once (one compilation)."""
    model = nn.Sequential(*(_every_path_model(t) for t in TOPOLOGIES))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)
    assert rel(out, ref) < 1e-4
