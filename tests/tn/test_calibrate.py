"""Data-aware decomposition: fitting a layer to its inputs beats fitting its weights."""

import pytest
import torch
from torch import nn

from tnsearch import tn


def correlated(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose energy sits in a few directions (as real activations do), with a mean."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(dim, dim, generator=g)
    scales = torch.logspace(1, -2, dim)
    return (torch.randn(n, dim, generator=g) * scales) @ basis + 0.5


@pytest.mark.parametrize("topology", sorted(tn.TOPOLOGIES))
def test_fitting_to_inputs_lowers_the_output_error_of_every_topology(topology):
    torch.manual_seed(0)
    dense = nn.Linear(64, 48)
    x = correlated(512, 64)
    stats = tn.InputStats()
    stats.add(dense, x)
    plain = tn.tensorize(dense, topology=topology, rank=4, order=2)
    fitted = tn.tensorize(dense, topology=topology, rank=4, order=2)
    error = tn.fit_to_inputs(fitted, dense, stats, steps=60)
    before, after = tn.output_error(plain, dense, stats), tn.output_error(fitted, dense, stats)
    assert after < 0.7 * before
    assert error == pytest.approx(after, rel=0.05, abs=1e-6)
    # the measured outputs agree with the moments' bookkeeping
    with torch.no_grad():
        direct = ((fitted(x) - dense(x)) ** 2).sum() / (dense(x) ** 2).sum()
    assert float(direct) == pytest.approx(after, rel=1e-3)


def test_a_conv_layer_is_fitted_on_its_patches():
    torch.manual_seed(0)
    dense = nn.Conv2d(8, 16, 3, padding=1, bias=False)
    x = correlated(4 * 36, 8).T.reshape(8, 4, 6, 6).transpose(0, 1).contiguous()
    stats = tn.InputStats()
    stats.add(dense, x)
    plain = tn.tensorize(dense, topology="tucker", rank=3, order=1)
    fitted = tn.tensorize(dense, topology="tucker", rank=3, order=1)
    tn.fit_to_inputs(fitted, dense, stats, steps=60)
    with torch.no_grad():
        err = lambda layer: float(((layer(x) - dense(x)) ** 2).sum() / (dense(x) ** 2).sum())  # noqa: E731
        assert err(fitted) < 0.8 * err(plain)
        assert tn.output_error(fitted, dense, stats) == pytest.approx(err(fitted), rel=1e-3)


def test_an_embedding_fits_the_frequent_tokens_best():
    torch.manual_seed(0)
    dense = nn.Embedding(64, 16)
    frequent = torch.arange(8)
    ids = torch.cat([frequent.repeat(50), torch.arange(8, 64)])
    stats = tn.InputStats()
    stats.add(dense, ids.reshape(1, -1))
    plain = tn.tensorize(dense, topology="mpo", rank=2, order=2)
    fitted = tn.tensorize(dense, topology="mpo", rank=2, order=2)
    tn.fit_to_inputs(fitted, dense, stats, steps=60)

    def row_error(e: nn.Module) -> float:
        with torch.no_grad():
            return float(((e(frequent) - dense(frequent)) ** 2).sum())

    assert row_error(fitted) < 0.6 * row_error(plain)
    assert tn.output_error(fitted, dense, stats) < tn.output_error(plain, dense, stats)


@pytest.mark.parametrize("topology", ["tucker", "tree", "cp"])
def test_an_order_1_embedding_starts_from_the_weighted_truncated_svd(topology):
    """With the vocabulary on one factor the fit's start is the weighted optimum (SVD-LLM's
    closed form), which L-BFGS from the plain decomposition does not reach in a few steps."""
    torch.manual_seed(0)
    dense = nn.Embedding(300, 24)
    counts = (torch.rand(300) < 0.03) * 10_000 + torch.randint(0, 3, (300,))  # a few frequent
    ids = torch.repeat_interleave(torch.arange(300), counts)
    stats = tn.InputStats()
    stats.add(dense, ids.reshape(1, -1))
    rank = 6
    w = tn._calibrate._row_weights(stats, 300).sqrt()[:, None]
    table = dense.weight.detach().double()
    u, s, vh = torch.linalg.svd(table * w, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank] / w  # the weighted rank-6 optimum
    optimum = float((((best - table) * w) ** 2).sum() / ((table * w) ** 2).sum())

    fitted = tn.tensorize(dense, topology=topology, rank=rank, order=1)
    error = tn.fit_to_inputs(fitted, dense, stats, steps=0)
    plain = tn.tensorize(dense, topology=topology, rank=rank, order=1)
    assert error == pytest.approx(optimum, rel=0.02)
    assert error < 0.9 * tn.output_error(plain, dense, stats)
    assert error == pytest.approx(tn.output_error(fitted, dense, stats), rel=1e-4)


def test_no_inputs_is_an_error():
    dense = nn.Linear(8, 8)
    layer = tn.tensorize(dense, topology="mpo", rank=2, order=2)
    with pytest.raises(ValueError, match="^stats: "):
        tn.fit_to_inputs(layer, dense, tn.InputStats())
