"""The contract every registered topology meets (a new topology is tested automatically)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from tests.tn.cases import CASES, TOPOLOGIES, build, rel
from tnsearch import tn

CONV_CASES = [c for c in CASES if c.name.startswith("conv")]
LINEAR_CASES = [c for c in CASES if c.name.startswith("linear")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_path_matches_to_dense_float64(topology, case):
    module, layer = build(case, topology)
    dense = layer.to_dense()
    assert type(dense) is type(module)
    x = case.input().requires_grad_(True)
    y_ref = dense(x)
    g = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    dx_ref, *dbias_ref = torch.autograd.grad(
        y_ref, [x, *([dense.bias] if module.bias is not None else [])], g
    )
    factor_grads = {}
    for path in layer.paths:
        layer.path = path
        y = layer(x)
        assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
        assert rel(y, y_ref) < 1e-5, path
        dx, *dfactors = torch.autograd.grad(y, [x, *layer.factors()], g, retain_graph=True)
        assert rel(dx, dx_ref) < 1e-5, path
        if layer.bias is not None:
            (dbias,) = torch.autograd.grad(y, layer.bias, g)
            assert rel(dbias, dbias_ref[0]) < 1e-10, path
        factor_grads[path] = dfactors
    for path, grads in factor_grads.items():  # every path gives the same factor gradients
        for a, b in zip(grads, factor_grads["reconstruct"], strict=True):
            assert rel(a, b) < 1e-5, path


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=lambda c: c.name)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_path_matches_to_dense_float32(topology, case):
    _, layer = build(case, topology, dtype=torch.float32)
    dense = layer.to_dense()
    x = case.input(torch.float32)
    with torch.no_grad():
        ref = dense(x)
        for path in layer.paths:
            layer.path = path
            assert rel(layer(x), ref) < 1e-4, path


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[5]], ids=lambda c: c.name)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_clipped_maximal_rank(topology, case):
    """Exact at the clipped maximal rank; else (CP) the error falls as the rank grows."""
    module, layer = build(case, topology, rank=10**6)
    assert all(r >= 1 for r in layer.rank)
    cls = tn.TOPOLOGIES[topology]
    if cls.exact_at_max_rank:
        assert rel(layer.to_dense().weight, module.weight) < 1e-5
        _, again = build(case, topology, rank=layer.rank)
        assert again.rank == layer.rank
        return
    errors = [
        rel(build(case, topology, rank=r)[1].to_dense().weight, module.weight) for r in (1, 3, 9)
    ]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_properties(topology):
    case = CASES[3]
    module, layer = build(case, topology)
    assert isinstance(layer, tn.TNLayer) and layer.topology == topology
    assert layer.in_modes == (3,) and layer.out_modes == (16,)
    assert isinstance(layer.rank, tuple)
    assert layer.n_params == sum(p.numel() for p in layer.parameters()) == tn.n_params(layer)
    assert layer.n_params < tn.n_params(module)
    assert layer.paths[:2] == ("reconstruct", "einsum") and layer.path == "auto"
    shape = case.input_shape
    macs = {}
    for path in layer.paths:
        layer.path = path
        macs[path] = layer.flops(shape)
        assert isinstance(macs[path], int) and macs[path] > 0
    dense_macs = 16 * 3 * 9 * 4 * 4 * shape[0]
    assert macs["reconstruct"] > dense_macs
    layer.path = "auto"  # before any call: the fewest multiply-adds
    assert layer.flops(shape) == min(macs.values())
    with pytest.raises(ValueError, match=r"^path: unknown 'nope'"):
        layer.path = "nope"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_auto_path_measures_once_per_key_and_caches(topology):
    case = CASES[0]
    _, layer = build(case, topology, dtype=torch.float32)
    x = case.input(torch.float32)
    y = layer(x)  # grad mode: the training key
    with torch.no_grad():
        layer(x)
        layer(x[:2])
    keys = list(layer.chosen_paths)
    assert [(k[0], k[3]) for k in keys] == [((5, 96), True), ((5, 96), False), ((2, 96), False)]
    assert all(k[1] == x.device and k[2] == torch.float32 for k in keys)
    assert set(layer.chosen_paths.values()) <= set(layer.paths)
    assert y.requires_grad and all(p.grad is None for p in layer.parameters())
    layer.path = "einsum"
    assert layer.flops(x.shape) == layer._macs("einsum", tuple(x.shape))
    line = tn.describe(nn.Sequential(layer))
    assert line.startswith(f"0: {topology} Linear") and "einsum" in line


@pytest.mark.parametrize("topology", TOPOLOGIES)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_random_init_variance_like_dense(topology, kind):
    """Output variance on N(0, 1) input is within 2x of the dense layer's default init."""
    ratios = []
    for seed in range(3):
        torch.manual_seed(seed)
        if kind == "linear":
            module, x, kw = nn.Linear(256, 96), torch.randn(256, 256), {"order": 2}
        else:
            module, x, kw = nn.Conv2d(16, 24, 3, padding=1), torch.randn(8, 16, 8, 8), {"order": 2}
        layer = tn.tensorize(module, topology=topology, rank=4, init="random", path="einsum", **kw)
        with torch.no_grad():
            ratios.append(layer(x).var().item() / module(x).var().item())
    assert 0.5 < statistics.mean(ratios) < 2.0, ratios


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_bf16_autocast_close_to_fp32(topology):
    case = CONV_CASES[1]
    _, layer = build(case, topology, dtype=torch.float32)
    x = case.input(torch.float32)
    ref = layer.to_dense()(x)
    for path in layer.paths:
        layer.path = path
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16, path
        assert rel(y.float(), ref) < 5e-2, path
    layer.path = "auto"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert list(layer.chosen_paths)[0][2] == torch.bfloat16


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_state_dict_round_trip(topology):
    case = LINEAR_CASES[0]
    _, layer = build(case, topology)
    fresh = tn.tensorize(case.module(), topology=topology, rank=3, init="random", **case.kwargs)
    fresh.load_state_dict(layer.state_dict())
    x = case.input()
    assert rel(fresh(x), layer(x)) < 1e-12
    assert math.isclose(tn.n_params(fresh), layer.n_params)
