"""Bad input: one clear, one-line error that starts with the argument's name."""

from __future__ import annotations

import pytest
from torch import nn

from tests.tn.cases import TOPOLOGIES
from tnsearch import tn

BAD = [
    ({"rank": 0}, ValueError, r"^rank: must be >= 1, got 0$"),
    ({"rank": -3}, ValueError, r"^rank: must be >= 1"),
    ({"rank": True}, ValueError, r"^rank: must be an int"),
    ({"rank": "4"}, ValueError, r"^rank: must be an int"),
    ({"rank": (2, 3, 4, 5, 6)}, ValueError, r"^rank: expected 1 or \d+ values"),
    (
        {"order": 7},
        ValueError,
        r"^order: 96 cannot be split into 7 factors >= 2 \(96 has 6 prime factors",
    ),
    ({"order": 0}, ValueError, r"^order: must be an int >= 1"),
    ({"order": 3, "in_modes": (8, 12)}, ValueError, r"^order: 3 does not match"),
    (
        {"in_modes": (4, 4)},
        ValueError,
        r"^in_modes: product 16 of \(4, 4\) is smaller than in_features 96",
    ),
    ({"in_modes": (0, 96)}, ValueError, r"^in_modes: must be a non-empty sequence of ints >= 1"),
    ({"out_modes": (2, 5, 1)}, ValueError, r"^out_modes: has 3 modes but in_modes has 2"),
    (
        {"topology": "foo"},
        ValueError,
        r"^topology: unknown 'foo' \(known: cp, mpo, tree, tucker\)$",
    ),
    ({"init": "zeros"}, ValueError, r"^init: must be 'decompose' or 'random'"),
    (
        {"path": "fastest"},
        ValueError,
        r"^path: unknown 'fastest' \(available: auto, reconstruct, einsum",
    ),
]


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), BAD, ids=lambda v: str(v)[:40])
def test_bad_argument(kwargs, exc, pattern):
    base = {"topology": "mpo", "rank": 4, "in_modes": (8, 12), "out_modes": (2, 5)}
    if "order" in kwargs and "in_modes" not in kwargs:
        base.pop("in_modes"), base.pop("out_modes")
    if "out_modes" in kwargs:
        base["in_modes"] = (8, 12)
    with pytest.raises(exc, match=pattern) as info:
        tn.tensorize(nn.Linear(96, 10), **{**base, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_unsupported_modules(topology):
    with pytest.raises(
        ValueError, match=r"^module: Conv2d with groups=2 is not supported \(groups must be 1\)$"
    ):
        tn.tensorize(nn.Conv2d(4, 4, 3, groups=2), topology=topology, rank=2, order=1)
    with pytest.raises(ValueError, match=r"^module: Conv2d with padding_mode='reflect'"):
        tn.tensorize(
            nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
            topology=topology,
            rank=2,
            order=1,
        )
    with pytest.raises(
        TypeError, match=r"^module: expected nn.Linear, nn.Conv2d or nn.Embedding, got Conv1d$"
    ):
        tn.tensorize(nn.Conv1d(4, 4, 3), topology=topology, rank=2, order=1)
    with pytest.raises(TypeError, match=r"^module: expected .* got EmbeddingBag$"):
        tn.tensorize(nn.EmbeddingBag(10, 4), topology=topology, rank=2, order=1)
    with pytest.raises(ValueError, match=r"^module: LazyLinear is not initialized"):
        tn.tensorize(nn.LazyLinear(4), topology=topology, rank=2, order=1)


def test_prime_dimension_message():
    with pytest.raises(ValueError) as info:
        tn.tensorize(nn.Linear(1021, 16), topology="tucker", rank=4, order=2)
    assert str(info.value) == (
        "order: 1021 cannot be split into 2 factors >= 2 (1021 is prime); pass in_modes/out_modes "
        "explicitly (padding is allowed: product >= dimension)"
    )
