"""Bond quantities of an option against spectra computed by hand (numpy SVDs of the unfoldings
written out per topology), for small Linear, Conv2d and Embedding layers of every topology."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tnsearch import bonds, tn
from tnsearch.bonds import _quantities

# (case, module, tensorize kwargs, input batch maker): in 12 = 3 x 4, out 6 = 2 x 3; a conv of
# kernel 3 x 3; a table of 30 = 5 x 6 rows of 8 = 2 x 4.
CASES = {
    "linear": (lambda: nn.Linear(12, 6), {"in_modes": (3, 4), "out_modes": (2, 3)}),
    "conv": (lambda: nn.Conv2d(4, 6, 3, padding=1), {"order": 1}),
    "embedding": (lambda: nn.Embedding(30, 8), {"in_modes": (5, 6), "out_modes": (2, 4)}),
}
# The matricizations each topology's bonds bound, written out by hand (modes on one side), each
# once: an order-2 tree's two edges under the root are one matricization ({m0 n0} | {m1 n1}),
# as are a conv tree's channel and kernel edges; CP's rank bounds every matricization: each
# mode, each output-input pair, the chain's prefixes and outputs | inputs (the matrix).
CUTS = {
    ("mpo", "linear"): [("n0", "m0")],
    ("mpo", "conv"): [("n0", "m0")],
    ("mpo", "embedding"): [("n0", "m0")],
    ("tucker", "linear"): [("n0",), ("n1",), ("m0",), ("m1",)],
    ("tucker", "conv"): [("n0",), ("m0",)],
    ("tucker", "embedding"): [("n0",), ("n1",), ("m0",), ("m1",)],
    ("tree", "linear"): [("m0",), ("n0",), ("n0", "m0"), ("m1",), ("n1",)],
    ("tree", "conv"): [("m0",), ("n0",), ("n0", "m0")],
    ("tree", "embedding"): [("m0",), ("n0",), ("n0", "m0"), ("m1",), ("n1",)],
    ("cp", "linear"): [("n0",), ("n1",), ("m0",), ("m1",), ("n0", "m0"), ("n0", "n1")],
    ("cp", "conv"): [("n0",), ("m0",), ("k",)],
    ("cp", "embedding"): [("n0",), ("n1",), ("m0",), ("m1",), ("n0", "m0"), ("n0", "n1")],
}
RANK = 2


def build(topology: str, case: str):
    make, kwargs = CASES[case]
    torch.manual_seed(0)
    dense = make().double()
    return dense, tn.tensorize(dense, topology=topology, rank=RANK, **kwargs)


def inputs(dense: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(dense, nn.Embedding):
        return torch.randint(0, 20, (64,), generator=g)  # tokens 20..29 never seen
    if isinstance(dense, nn.Conv2d):
        return torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    mix = torch.randn(12, 12, generator=g, dtype=torch.float64)  # correlated inputs
    return torch.randn(40, 12, generator=g, dtype=torch.float64) @ mix + 0.5


def by_hand_tensor(dense: nn.Module, layer: tn.TNLayer, x: torch.Tensor | None):
    """The (whitened, with `x`) weight as the layer's padded tensor, and its axes' mode names."""
    if isinstance(dense, nn.Embedding):
        w = dense.weight.detach().numpy().T  # (D, V)
        if x is not None:
            counts = np.bincount(x.numpy(), minlength=dense.num_embeddings)
            prior = 1.0 / (np.arange(len(counts)) + 100.0)  # tn._calibrate.PRIOR_OFFSET
            prior = counts.sum() * prior / prior.sum()  # Zipf over the ids, the counts' mass
            w = w * np.sqrt(counts + 0.25 + prior)[None, :]  # tn._calibrate.UNSEEN
    else:
        w = dense.weight.detach().numpy().reshape(dense.weight.shape[0], -1)  # (O, I*K)
        if x is not None:
            if isinstance(dense, nn.Conv2d):  # the patches the conv sees, (I*K) per row
                cols = nn.functional.unfold(x, 3, padding=1)
                rows = cols.transpose(1, 2).reshape(-1, cols.shape[1]).numpy()
            else:
                rows = x.numpy()
            c = np.cov(rows.T, bias=True)  # centered: the layer has a bias
            c += 1e-4 * np.mean(np.diag(c)) * np.eye(len(c))  # tn._calibrate.DAMPING
            values, vectors = np.linalg.eigh(c)
            w = w @ (vectors * np.sqrt(values)) @ vectors.T
    g = layer.geometry
    w = w.reshape(g.out_features, g.in_features, g.kernel)
    n, m = math.prod(layer.out_modes), math.prod(layer.in_modes)
    w = np.pad(w, ((0, n - g.out_features), (0, m - g.in_features), (0, 0)))
    d = len(layer.in_modes)
    names = [f"n{k}" for k in range(d)] + [f"m{k}" for k in range(d)] + ["k"] * g.conv
    return w.reshape(*layer.out_modes, *layer.in_modes, *([g.kernel] if g.conv else [])), names


def by_hand(w: np.ndarray, names: list[str], modes: tuple[str, ...], rank: int):
    """(energy beyond `rank`, entropy) of `w` matricized with `modes` as rows, by numpy's SVD."""
    rows = [names.index(m) for m in modes]
    rest = [a for a in range(w.ndim) if a not in rows]
    mat = w.transpose(rows + rest).reshape(math.prod(w.shape[a] for a in rows), -1)
    s2 = np.linalg.svd(mat, compute_uv=False) ** 2
    p = s2 / s2.sum()
    return s2[rank:].sum() / s2.sum(), float(-(p[p > 0] * np.log(p[p > 0])).sum())


def stats_of(dense: nn.Module, x: torch.Tensor) -> tn.InputStats:
    stats = tn.InputStats()
    stats.add(dense, x)
    return stats


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("topology", sorted(tn.TOPOLOGIES))
def test_quantities_are_the_spectra_of_the_dense_unfoldings(topology, case):
    dense, layer = build(topology, case)
    inner = layer.layer if isinstance(layer, tn.TNEmbedding) else layer
    assert [c.modes for c in _quantities._cuts(inner)] == CUTS[topology, case]
    assert set(inner.rank) == {RANK}
    x = inputs(dense)
    found = bonds.option_quantities({"a": layer}, {"a": dense}, {"a": stats_of(dense, x)})

    raw, names = by_hand_tensor(dense, inner, None)
    found_by_hand = [by_hand(raw, names, modes, RANK) for modes in CUTS[topology, case]]
    left, ent = [v[0] for v in found_by_hand], [v[1] for v in found_by_hand]
    assert found["discarded"] == pytest.approx(sum(left), rel=1e-8, abs=1e-12)
    assert found["discarded_max"] == pytest.approx(max(left), rel=1e-8, abs=1e-12)
    assert found["entropy_dense"] == pytest.approx(np.mean(ent), rel=1e-8)
    assert 0.0 < found["discarded_max"] <= found["discarded"] < len(left)

    white, _ = by_hand_tensor(dense, inner, x)
    left = [by_hand(white, names, modes, RANK)[0] for modes in CUTS[topology, case]]
    assert found["discarded_white"] == pytest.approx(sum(left), rel=1e-6, abs=1e-12)
    assert found["discarded_white_max"] == pytest.approx(max(left), rel=1e-6, abs=1e-12)

    own = bonds.analyze_layer(inner, energy=0.99).bonds  # the built layer's bonds
    assert found["entropy"] == pytest.approx(np.mean([b.entropy for b in own]))
    assert found["rank_used"] == pytest.approx(np.mean([b.effective_rank / b.size for b in own]))


def test_a_weight_of_the_kept_rank_leaves_nothing_out():
    # a Kronecker product has rank 1 across the MPO bond: rank 1 keeps it all, exactly
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, generator=g).double(), torch.randn(3, 4, generator=g).double()
    dense = nn.Linear(12, 6, bias=False).double()
    with torch.no_grad():
        dense.weight.copy_(torch.kron(a, b))
    layer = tn.tensorize(dense, topology="mpo", rank=1, in_modes=(3, 4), out_modes=(2, 3))
    found = bonds.option_quantities({"a": layer}, {"a": dense})
    assert found["discarded"] == pytest.approx(0.0, abs=1e-12)
    assert found["entropy_dense"] == pytest.approx(0.0, abs=1e-9)
    assert found["rank_needed"] == pytest.approx(1.0)
    assert found["entropy"] == pytest.approx(0.0, abs=1e-9)
    assert "discarded_white" not in found  # no inputs: no whitened quantities


def test_more_rank_leaves_out_less():
    torch.manual_seed(0)
    dense = nn.Linear(12, 6).double()
    values = []
    for rank in (1, 2, 4, 6):
        layer = tn.tensorize(dense, topology="mpo", rank=rank, in_modes=(3, 4), out_modes=(2, 3))
        values.append(bonds.option_quantities({"a": layer}, {"a": dense})["discarded"])
    assert values == sorted(values, reverse=True) and values[-1] == pytest.approx(0.0, abs=1e-12)
    assert values[0] > 0.1


def test_a_group_is_the_size_weighted_mean_of_its_layers():
    torch.manual_seed(0)
    small, large = nn.Linear(12, 6).double(), nn.Linear(24, 12).double()
    layers = {
        "s": tn.tensorize(small, topology="mpo", rank=2, order=2),
        "l": tn.tensorize(large, topology="mpo", rank=2, order=2),
    }
    dense = {"s": small, "l": large}
    one = {n: bonds.option_quantities({n: layers[n]}, {n: dense[n]}) for n in layers}
    both = bonds.option_quantities(layers, dense)
    expect = (72 * one["s"]["discarded"] + 288 * one["l"]["discarded"]) / 360
    assert both["discarded"] == pytest.approx(expect)


def test_shells_give_the_dense_quantities_without_the_built_ones():
    # a shell (random factors) has the option's modes and ranks: that is all the dense part reads
    torch.manual_seed(0)
    dense = nn.Linear(12, 6).double()
    kw = {"topology": "tree", "rank": 2, "in_modes": (3, 4), "out_modes": (2, 3)}
    built = bonds.option_quantities({"a": tn.tensorize(dense, **kw)}, {"a": dense})
    shell = tn.tensorize(dense, init="random", **kw)
    cheap = bonds.option_quantities({"a": shell}, {"a": dense}, built=False)
    assert set(cheap) == set(built) - {"entropy", "effective_rank", "rank_used"}
    assert all(cheap[k] == pytest.approx(built[k]) for k in cheap)


def test_the_cache_computes_each_unfolding_once():
    torch.manual_seed(0)
    dense = nn.Linear(12, 6).double()
    cache = bonds.SpectrumCache()
    for topology in ("mpo", "tree", "tucker"):
        for rank in (1, 2, 3):
            layer = tn.tensorize(
                dense, topology=topology, rank=rank, in_modes=(3, 4), out_modes=(2, 3)
            )
            fresh = bonds.option_quantities({"a": layer}, {"a": dense})
            assert bonds.option_quantities({"a": layer}, {"a": dense}, cache=cache) == fresh
    (unfoldings,) = cache.unfoldings.values()  # one weight tensor: these modes, unwhitened
    assert len(unfoldings.found) == 5  # {n0 m0}, {m0}, {n0}, {m1}, {n1}: each side once


def test_a_large_unfolding_gets_its_leading_values(monkeypatch):
    g = torch.Generator().manual_seed(0)
    decay = 0.8 ** torch.arange(40, dtype=torch.float64)
    u = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(60, 40, generator=g, dtype=torch.float64))[0]
    w = (u * decay) @ v.T  # (40, 60), singular values 0.8^i
    full = bonds.unfolding_spectrum(w, [0])
    assert len(full.values) == 40
    monkeypatch.setattr(_quantities, "FULL_SIDE", 16)
    monkeypatch.setattr(_quantities, "PARTIAL", 8)
    part = bonds.unfolding_spectrum(w, [0], rank=4)
    assert len(part.values) == 24 < part.size == 40  # 2 x rank + 16
    assert part.values[:8] == pytest.approx(full.values[:8], rel=1e-8)
    for rank in (1, 4, 8):
        assert part.left_out(rank) == pytest.approx(full.left_out(rank), rel=1e-8)
    assert part.entropy() == pytest.approx(full.entropy(), rel=1e-3)
    assert part.effective_rank() == full.effective_rank()
    with pytest.raises(ValueError, match="rank"):
        part.left_out(39)


def test_a_diverged_layer_is_left_out_of_the_epoch_metrics():
    """Training that diverges (NaN factors) is failed by the loss check, not by a bond SVD."""
    import torch
    from torch import nn

    from tnsearch import bonds, tn

    model = nn.Sequential(
        tn.tensorize(nn.Linear(16, 16), topology="mpo", rank=2, order=2),
        tn.tensorize(nn.Linear(16, 16), topology="tucker", rank=2, order=2),
    )
    assert any(k.startswith("bonds/0/") for k in bonds.epoch_metrics(model))
    with torch.no_grad():
        model[0].factors()[0].fill_(float("nan"))
    found = bonds.epoch_metrics(model)
    assert found and not any(k.startswith("bonds/0/") for k in found)
