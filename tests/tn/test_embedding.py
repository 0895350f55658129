"""Tensorized nn.Embedding: the contract every registered topology meets as an embedding."""

from __future__ import annotations

import statistics

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tests.tn.cases import EMBEDDING_CASES, TOPOLOGIES, build_embedding, rel
from tnsearch import tn

SMALL = EMBEDDING_CASES[0]
PADDED = EMBEDDING_CASES[1]


def _factor_grads(emb: tn.TNEmbedding, idx: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    y = emb(idx)
    return list(torch.autograd.grad(y, emb.factors(), g, allow_unused=True))


# rank 3, and the full rank where it is exact: modes that keep no factor (Tucker, tree) are
# then gathered on the core / inner nodes (CP has none, and its ALS is slow there)
RANKS = [(t, 3) for t in TOPOLOGIES] + [
    (t, 10**6) for t in TOPOLOGIES if tn.TOPOLOGIES[t].exact_at_max_rank
]


@pytest.mark.parametrize("case", EMBEDDING_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize(("topology", "rank"), RANKS, ids=lambda v: "full" if v == 10**6 else v)
def test_every_path_matches_to_dense_float64(topology, rank, case):
    _, emb = build_embedding(case, topology, rank=rank)
    dense = emb.to_dense()
    for shape in [(7,), (4, 6), (2, 3, 2), (1,)]:  # any index shape -> (..., D)
        idx = case.indices(shape)
        ref = dense(idx)
        assert ref.shape == (*shape, case.embedding_dim)
        g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=ref.dtype)
        grads = {}
        for path in emb.paths:
            emb.path = path
            y = emb(idx)
            assert y.shape == ref.shape and y.dtype == ref.dtype, path
            assert rel(y, ref) < 1e-10, (path, shape)
            grads[path] = _factor_grads(emb, idx, g)
        for a, b in zip(grads["gather"], grads["reconstruct"], strict=True):
            assert rel(a, b) < 1e-8, shape  # same gradient (padding rows give none on both)


@pytest.mark.parametrize("case", EMBEDDING_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_decomposition_at_full_rank_reproduces_the_embedding(topology, case):
    """Exact at the clipped maximal rank; else (CP) the error falls as the rank grows."""
    module = case.module()
    idx = case.indices()
    if tn.TOPOLOGIES[topology].exact_at_max_rank:
        _, emb = build_embedding(case, topology, rank=10**6)
        assert all(r >= 1 for r in emb.rank)
        assert rel(emb.to_dense().weight, module.weight) < 1e-10
        assert rel(emb(idx), module(idx)) < 1e-10
        _, again = build_embedding(case, topology, rank=emb.rank)
        assert again.rank == emb.rank
        return
    errors = [
        rel(build_embedding(case, topology, rank=r)[1].to_dense().weight, module.weight)
        for r in (1, 3, 9)
    ]
    assert errors[0] > errors[1] > errors[2]


def test_a_factor_with_several_in_modes_is_gathered_on_their_joint_index():
    """Tucker with full-rank input modes: the core holds m0 and m1 and is gathered on both."""
    module, emb = build_embedding(PADDED, "tucker", rank=(2, 3, 4, 8))  # ranks of n0 n1 m0 m1
    assert emb.layer.network.names == ("core", "factor_n1")
    assert emb.layer.network.factors[0] == ("n0", "a_n1", "m0", "m1")
    idx = PADDED.indices((5, 3))
    ref = emb.to_dense()(idx)
    for path in emb.paths:
        emb.path = path
        assert rel(emb(idx), ref) < 1e-12, path


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_gradients_flow_to_the_factors(topology):
    case = EMBEDDING_CASES[2]
    _, emb = build_embedding(case, topology, dtype=torch.float32)
    emb.train()
    idx = case.indices((3, 5))
    target = torch.randn(3, 5, case.embedding_dim, generator=torch.Generator().manual_seed(3))
    loss = (emb(idx) - target).square().mean()
    loss.backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_padding_idx_rows_give_no_gradient(topology):
    _, emb = build_embedding(PADDED, topology)
    pad = PADDED.padding_idx
    assert emb.padding_idx == pad and emb.to_dense().padding_idx == pad
    for path in emb.paths:
        emb.path = path
        y = emb(torch.tensor([pad, pad]))
        grads = torch.autograd.grad(y.sum(), emb.factors(), allow_unused=True)
        assert all(g is None or not g.any() for g in grads), path
        assert rel(y[0], emb.to_dense().weight[pad]) < 1e-12  # the row is as decomposed


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_properties(topology):
    case = PADDED
    module, emb = build_embedding(case, topology)
    assert isinstance(emb, tn.TNEmbedding) and isinstance(emb.layer, tn.TNLayer)
    assert emb.topology == topology
    assert (emb.num_embeddings, emb.embedding_dim) == (30, 7)
    assert emb.in_modes == (4, 8) and emb.out_modes == (2, 4)  # padded: 32 > 30, 8 > 7
    assert emb.layer.in_features_padded == 32 and emb.layer.out_features_padded == 8
    assert emb.n_params == sum(p.numel() for p in emb.factors()) == tn.n_params(emb)
    assert emb.n_params < 30 * 7 == tn.n_params(module)
    assert tn.n_params(nn.Sequential(emb, nn.Linear(7, 2))) == emb.n_params + 16
    assert emb.paths == ("reconstruct", "gather") and emb.path == "gather"
    for path in emb.paths:
        emb.path = path
        assert isinstance(emb.flops((4, 6)), int) and emb.flops((4, 6)) > 0
    emb.path = "auto"
    assert emb.path == "gather"
    with pytest.raises(ValueError, match=r"^path: unknown 'nope' \(available: auto, reconstruct"):
        emb.path = "nope"
    dense = emb.to_dense()
    assert type(dense) is nn.Embedding and dense.weight.dtype == torch.float64
    assert (dense.num_embeddings, dense.embedding_dim, dense.padding_idx) == (30, 7, 3)
    assert topology in repr(emb) and "padding_idx=3" in repr(emb)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_out_of_range_and_odd_indices(topology):
    _, emb = build_embedding(PADDED, topology)
    for path in emb.paths:
        emb.path = path
        for bad in (30, 31, -1):  # 30, 31 are padded rows of the network: still out of range
            with pytest.raises(IndexError, match="index out of range"):
                emb(torch.tensor([1, bad]))
        assert emb(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 5, 7)
        idx = PADDED.indices((2, 3))
        assert rel(emb(idx.int()), emb.to_dense()(idx)) < 1e-10  # int32 indices too
    with pytest.raises(TypeError, match=r"^idx: expected an int64 or int32 tensor"):
        emb(torch.zeros(3))


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_gather_never_builds_the_table(topology, monkeypatch):
    """V=100_000, D=64: the lookup (and its backward) allocates nothing near V*D elements."""
    v, d = 100_000, 64
    torch.manual_seed(0)
    emb = tn.tensorize(nn.Embedding(v, d), topology=topology, rank=8, order=3, init="random")
    assert emb.n_params < v * d // 100
    idx = torch.tensor([[0, 99_999, 12_345], [5, 6, 7]])

    def no_table(*args, **kwargs):
        raise AssertionError("the gather path built the table")

    with monkeypatch.context() as m:
        m.setattr(emb.layer, "dense_weight", no_table)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            y = emb(idx)
            y.square().sum().backward()
    biggest = max(abs(e.cpu_memory_usage) for e in prof.events())
    assert biggest < v * d * 4 // 100, biggest  # the table would be v * d * 4 bytes
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in emb.factors())
    with torch.no_grad():
        rows = emb.to_dense().weight[idx]
    assert rel(y.detach(), rows) < 1e-5
    emb.path = "reconstruct"  # the measurement would see the table: a positive control
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        emb(idx)
    assert max(abs(e.cpu_memory_usage) for e in prof.events()) >= v * d * 4


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_random_init_variance_like_dense(topology):
    """Table entries have variance ~1, as nn.Embedding's N(0, 1) init."""
    variances = []
    for seed in range(3):
        torch.manual_seed(seed)
        emb = tn.tensorize(nn.Embedding(256, 64), topology=topology, rank=4, init="random")
        variances.append(emb.to_dense().weight.var().item())
    assert 0.5 < statistics.mean(variances) < 2.0, variances


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_state_dict_round_trip(topology):
    _, emb = build_embedding(SMALL, topology)
    fresh = tn.tensorize(SMALL.module(), topology=topology, rank=3, init="random", **SMALL.kwargs)
    fresh.load_state_dict(emb.state_dict())
    idx = SMALL.indices()
    assert rel(fresh(idx), emb(idx)) < 1e-12


def test_replaced_inner_layer_is_used():
    """A new inner layer (e.g. truncated by tnsearch.bonds) with other ranks is picked up."""
    _, emb = build_embedding(SMALL, "mpo", rank=4)
    idx = SMALL.indices()
    emb(idx)
    _, other = build_embedding(SMALL, "mpo", rank=2)
    emb.layer = other.layer
    assert emb.rank == (2,)
    assert rel(emb(idx), other.to_dense()(idx)) < 1e-12


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    try:
        _, emb = build_embedding(PADDED, "mpo", dtype=torch.float32)
        idx = PADDED.indices()
        with torch.no_grad():
            out = torch.compile(emb, fullgraph=True)(idx)
        assert rel(out, emb.to_dense()(idx)) < 1e-5
    finally:
        torch._dynamo.reset()


BAD = [
    ({"max_norm": 1.0}, {}, r"^embedding: max_norm is not supported"),
    ({"sparse": True}, {}, r"^embedding: sparse=True is not supported"),
    ({"scale_grad_by_freq": True}, {}, r"^embedding: scale_grad_by_freq=True is not supported"),
    ({}, {"init": "zeros"}, r"^init: must be 'decompose' or 'random'"),
    ({}, {"path": "einsum"}, r"^path: unknown 'einsum' \(available: auto, reconstruct, gather\)$"),
    ({}, {"in_modes": (4, 4)}, r"^in_modes: product 16 of \(4, 4\) is smaller than num_emb"),
    ({}, {"out_modes": (2, 3)}, r"^out_modes: product 6 of \(2, 3\) is smaller than embedding_"),
    ({}, {"rank": 0}, r"^rank: must be >= 1, got 0$"),
    ({}, {"topology": "foo"}, r"^topology: unknown 'foo'"),
]


@pytest.mark.parametrize(("options", "kwargs", "pattern"), BAD, ids=lambda v: str(v)[:30])
def test_bad_argument(options, kwargs, pattern):
    module = nn.Embedding(30, 7, **options)
    args = {"topology": "mpo", "rank": 3, "in_modes": (4, 8), "out_modes": (2, 4), **kwargs}
    with pytest.raises(ValueError, match=pattern) as info:
        tn.tensorize(module, **args)
    assert "\n" not in str(info.value)


def test_describe_and_freeze_paths_handle_embeddings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(96, 16, padding_idx=0), nn.Flatten(), nn.Linear(48, 10))
    model[0] = tn.tensorize(model[0], topology="tucker", rank=3, order=2)
    model[2] = tn.tensorize(model[2], topology="mpo", rank=3, order=2)
    lines = tn.describe(model).splitlines()
    assert len(lines) == 2  # the embedding's inner layer is not listed on its own
    assert lines[0].startswith("0: tucker Embedding in=96(8, 12) out=16(4, 4) rank=(3, 3, 3, 3)")
    assert "padding_idx=0" in lines[0] and "x smaller" in lines[0] and "path=gather" in lines[0]
    assert lines[1].startswith("2: mpo Linear")
    idx = torch.randint(0, 96, (4, 3))
    chosen = tn.freeze_paths(model, idx)
    assert set(chosen) == {"2"}
    assert model(idx).shape == (4, 10)


def test_an_order_1_mpo_of_a_large_table_is_its_one_core(monkeypatch):
    """An order-1 MPO has no bond: its one core is the table. A table above RANDOMIZED_FROM
    (MiniLM's word embedding) failed there with `max() arg is an empty sequence`."""
    from tnsearch.tn import _mpo

    monkeypatch.setattr(_mpo, "RANDOMIZED_FROM", 0)  # this small table takes the large path
    torch.manual_seed(0)
    dense = nn.Embedding(40, 6)
    emb = tn.tensorize(dense, topology="mpo", rank=8, order=1)
    assert tuple(emb.layer.rank) == ()
    idx = torch.arange(40)
    assert rel(emb(idx), dense(idx)) < 1e-5
