"""Mode factorizations, awkward dimensions and padded layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.tn.cases import TOPOLOGIES, rel
from tnsearch import tn
from tnsearch.tn import shapes


def test_factorizations_lists_every_non_decreasing_split():
    assert shapes.factorizations(12, 2) == [(2, 6), (3, 4)]
    assert shapes.factorizations(12, 3) == [(2, 2, 3)]
    assert shapes.factorizations(7, 1) == [(7,)]
    assert shapes.factorizations(1, 1) == [(1,)]
    assert shapes.factorizations(16, 5) == []


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_factorizations_are_valid_and_complete(order):
    for n in range(1, 130):
        found = shapes.factorizations(n, order)
        assert len(set(found)) == len(found)
        for f in found:
            assert len(f) == order and math.prod(f) == n and list(f) == sorted(f)
            assert order == 1 or min(f) >= 2
        if order == 2:  # complete: every divisor pair
            assert len(found) == sum(1 for a in range(2, n) if n % a == 0 and a <= n // a)


def test_balanced_defaults():
    assert shapes.balanced(1024, 4) == (4, 4, 8, 8)
    assert shapes.balanced(4096, 4) == (8, 8, 8, 8)
    assert shapes.balanced(96, 2) == (8, 12)
    assert shapes.balanced(10, 2) == (2, 5)
    assert shapes.balanced(64, 3) == (4, 4, 4)


def test_awkward_dimensions_raise_or_pad():
    with pytest.raises(
        ValueError, match=r"^order: 1021 cannot be split into 2 factors >= 2 \(1021 is prime\)"
    ):
        shapes.balanced(1021, 2)
    with pytest.raises(ValueError, match=r"^order: 10 cannot be split into 3 factors"):
        shapes.balanced(10, 3)
    assert shapes.factorizations(1021, 2) == []
    assert shapes.balanced(1021, 2, pad=True) == (14, 73)  # 1021 -> 1022 = 2 * 7 * 73
    assert shapes.balanced(1021, 3, pad=True) == (2, 7, 73)
    assert shapes.balanced(1021, 5, pad=True) == (4, 4, 4, 4, 4)  # 1021 -> 1024
    assert shapes.balanced(10, 3, pad=True) == (2, 2, 3)  # 10 -> 12
    assert shapes.factorizations(10, 1, pad=True) == [(10,)]  # order 1: never padded
    assert shapes.factorizations(3, 3, pad=True) == []  # nothing in (3, 6) has 3 factors


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^order: must be an int >= 1"):
        shapes.factorizations(12, 0)
    with pytest.raises(ValueError, match=r"^n: must be an int >= 1"):
        shapes.factorizations(0, 2)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_padded_layer_is_exact_and_keeps_its_size(topology):
    """A prime dimension (1021 -> padded modes (14, 73)) computes the same function."""
    torch.manual_seed(0)
    module = nn.Linear(1021, 10).double()
    layer = tn.tensorize(
        module, topology=topology, rank=10**6 if topology != "cp" else 2,
        in_modes=shapes.balanced(1021, 2, pad=True), out_modes=(2, 5),
    )  # fmt: skip
    dense = layer.to_dense()
    assert dense.weight.shape == (10, 1021)
    x = torch.randn(3, 1021, dtype=torch.float64)
    for path in layer.paths:
        layer.path = path
        assert rel(layer(x), dense(x)) < 1e-10
    if topology != "cp":
        assert rel(dense.weight, module.weight) < 1e-5
