"""Probing a bond: the terms over a bond's index rebuild the weight, the activations are the
norms of what flows through each index (checked against dense per-index weights), and a layer of
known structure lights up the index that carries its input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tnsearch import bonds, tn

CASES = {
    "linear": (lambda: nn.Linear(12, 6), {"in_modes": (3, 4), "out_modes": (2, 3)}),
    "padded": (lambda: nn.Linear(11, 5), {"in_modes": (3, 4), "out_modes": (2, 3)}),
    "conv": (lambda: nn.Conv2d(4, 6, 3, padding=1, stride=2), {"order": 1}),
    "embedding": (lambda: nn.Embedding(29, 8), {"in_modes": (5, 6), "out_modes": (2, 4)}),
}


def build(topology: str, case: str):
    make, kwargs = CASES[case]
    torch.manual_seed(0)
    return tn.tensorize(make().double(), topology=topology, rank=3, **kwargs)


def weight_order(layer: tn.TNLayer) -> list[str]:
    net = layer.network
    return list(net.out_idx + net.in_idx + net.kernel_idx)


def term_weight(layer: tn.TNLayer, terms: bonds.BondTerms, k: int) -> torch.Tensor:
    """The dense weight of index k alone, ``s_k u_k (x) v_k``, in the weight tensor's order."""
    t = terms.weights[k] * (terms.u[k].reshape(-1, 1) @ terms.v[k].reshape(1, -1))
    t = t.reshape(*terms.u.shape[1:], *terms.v.shape[1:])
    modes = list(terms.side + terms.rest)
    return t.permute(*(modes.index(m) for m in weight_order(layer)))


def inputs(layer):
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, tn.TNEmbedding):
        return torch.randint(0, 29, (4, 3), generator=g)
    if layer.geometry.conv:
        return torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)
    return torch.randn(7, layer.geometry.in_features, generator=g, dtype=torch.float64)


def by_hand(layer, inner, w_k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||y_k|| from the dense weight of index k (cropped as the layer crops)."""
    g = inner.geometry
    w = w_k.reshape(inner.out_features_padded, inner.in_features_padded, g.kernel)
    w = w[: g.out_features, : g.in_features]
    if isinstance(layer, tn.TNEmbedding):
        return w[:, :, 0].T[x].norm(dim=-1)  # the table's rows of index k
    if g.conv:
        y = nn.functional.conv2d(x, w.reshape(g.out_features, g.in_features, 3, 3), None, 2, 1)
        return y.square().sum(1).mean((1, 2)).sqrt()  # RMS over positions of the norm
    return (x @ w[:, :, 0].T).norm(dim=-1)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("topology", sorted(tn.TOPOLOGIES))
def test_each_index_carries_its_part_of_the_output(topology, case):
    layer = build(topology, case)
    inner = layer.layer if isinstance(layer, tn.TNEmbedding) else layer
    x = inputs(layer)
    whole = inner.weight_tensor().detach().double()
    for position in range(len(inner.rank)):
        terms = bonds.bond_terms(layer, position)
        parts = [term_weight(inner, terms, k) for k in range(len(terms.weights))]
        assert torch.allclose(sum(parts), whole, atol=1e-9)  # the index sums to the weight
        assert torch.all(terms.weights[:-1] >= terms.weights[1:])  # strongest first
        found = bonds.bond_activations(layer, x, position, terms=terms)
        lead = x.shape if case == "embedding" else x.shape[: 1 if case == "conv" else -1]
        assert found.shape == (*lead, len(parts))
        expect = torch.stack([by_hand(layer, inner, w, x) for w in parts], dim=-1)
        assert torch.allclose(found, expect, atol=1e-9, rtol=1e-7)


def test_a_known_structure_lights_up_the_index_of_its_input():
    # W = 3 a1 b1^T + a2 b2^T: input b1 flows through the strongest index only, b2 the other
    g = torch.Generator().manual_seed(0)
    a = torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn(12, 2, generator=g, dtype=torch.float64))[0]
    dense = nn.Linear(12, 6, bias=False).double()
    with torch.no_grad():
        dense.weight.copy_(3 * a[:, :1] @ b[:, :1].T + a[:, 1:] @ b[:, 1:].T)
    for topology, position in (("tucker", 1), ("cp", 0), ("tree", 0)):
        layer = tn.tensorize(dense, topology=topology, rank=2, order=1)
        model = nn.Sequential(layer, nn.ReLU())
        examples = torch.cat([b[:, 0].expand(4, 12), -2 * b[:, 1].expand(3, 12)])

        terms, found = bonds.probe(model, "0", position, lambda m=model, x=examples: m(x))
        (activations,) = found  # one forward call of the layer
        assert terms.weights.tolist() == pytest.approx([3.0, 1.0], rel=1e-6)
        expect = torch.tensor([[3.0, 0.0]] * 4 + [[0.0, 2.0]] * 3, dtype=torch.float64)
        assert torch.allclose(activations, expect, atol=1e-6), topology


def test_bad_bonds_and_layers_are_named():
    layer = build("mpo", "linear")
    with pytest.raises(ValueError, match=r"bond: the layer's bonds are 0-0, got 1"):
        bonds.bond_terms(layer, 1)
    model = nn.Sequential(layer, nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"layer: '1' is not a tensorized layer"):
        bonds.probe(model, "1", 0, lambda: None)


def test_the_intermediates_stay_within_the_chunk_for_either_side(monkeypatch):
    """Each bond of a wide layer (an output-side Tucker bond took 22 GB on MiniLM's 384 -> 1536
    layers): every einsum's result fits CHUNK entries, and the activations are still right."""
    from tnsearch.bonds import _probe

    torch.manual_seed(0)
    layer = tn.tensorize(nn.Linear(6, 40).double(), topology="tucker", rank=3, order=1)
    x = torch.randn(50, 6, dtype=torch.float64)
    sizes: list[int] = []
    einsum = torch.einsum

    def spy(*args):
        out = einsum(*args)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(_probe, "CHUNK", 3 * 40)  # one row's per-index outputs
    monkeypatch.setattr(_probe.torch, "einsum", spy)
    for position in range(len(layer.rank)):
        terms = bonds.bond_terms(layer, position)
        found = bonds.bond_activations(layer, x, position, terms=terms)
        parts = [term_weight(layer, terms, k) for k in range(len(terms.weights))]
        expect = torch.stack([by_hand(layer, layer, w, x) for w in parts], dim=-1)
        assert torch.allclose(found, expect, atol=1e-9, rtol=1e-7)
    assert sizes and max(sizes) <= 3 * 40
