"""Decompositions: peer check against tensorly, and the classic convolution factorizations."""

from __future__ import annotations

import tensorly as tl
import torch
from tensorly.decomposition import tensor_train_matrix
from torch import nn

from tests.tn.cases import rel
from tnsearch import tn


def test_mpo_error_no_worse_than_tensorly_tt_matrix():
    torch.manual_seed(0)
    module = nn.Linear(64, 48).double()
    in_modes, out_modes = (4, 4, 4), (4, 4, 3)
    for rank in (2, 5, 9):
        layer = tn.tensorize(
            module, topology="mpo", rank=rank, in_modes=in_modes, out_modes=out_modes
        )
        ours = rel(layer.to_dense().weight, module.weight)
        w = module.weight.detach().numpy().T.reshape(*in_modes, *out_modes)  # (m.., n..)
        with tl.backend_context("numpy", local_threadsafe=True):
            tt = tensor_train_matrix(tl.tensor(w), [1, *layer.rank, 1])
            theirs = tl.tt_matrix_to_tensor(tt.factors).reshape(64, 48).T
        peer = rel(module.weight.detach(), torch.from_numpy(theirs.copy()))
        assert ours <= peer * (1 + 1e-9) + 1e-12, (rank, ours, peer)


def _record_conv2d(monkeypatch) -> list:
    calls, real = [], torch.nn.functional.conv2d

    def conv2d(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
        calls.append((tuple(w.shape), groups))
        return real(x, w, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    return calls


def test_tucker2_is_kim_sequence(monkeypatch):
    """Order-1 Tucker on a Conv2d: 1x1 (C -> R_in), kxk (R_in -> R_out), 1x1 (R_out -> O)."""
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1).double()
    layer = tn.tensorize(conv, topology="tucker", rank=(8, 4), order=1, path="factorized")
    assert layer.rank == (8, 4)
    assert layer.core.shape == (8, 4, 9)
    assert layer.factor_m0.shape == (16, 4) and layer.factor_n0.shape == (32, 8)
    x = torch.randn(2, 16, 8, 8, dtype=torch.float64)
    ref = layer.to_dense()(x)
    calls = _record_conv2d(monkeypatch)
    assert rel(layer(x), ref) < 1e-10
    assert calls == [((8, 4, 3, 3), 1)]  # the kxk core; the 1x1 stages are matrix products


def test_cp_conv_is_lebedev_sequence(monkeypatch):
    """CP on a Conv2d: 1x1 (C -> R), depthwise kxk on R channels, 1x1 (R -> O)."""
    conv = nn.Conv2d(8, 12, (3, 5), padding=(1, 2)).double()
    for order in (1, 2):
        layer = tn.tensorize(conv, topology="cp", rank=6, order=order, path="factorized")
        assert layer.factor_k.shape == (6, 15)
        x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
        ref = layer.to_dense()(x)
        calls = _record_conv2d(monkeypatch)
        assert rel(layer(x), ref) < 1e-10
        assert calls == [((6, 1, 3, 5), 6)]
        monkeypatch.undo()


def test_decompose_leaves_tensorly_backend_alone():
    before = tl.get_backend()
    for topology in tn.TOPOLOGIES:
        tn.tensorize(nn.Conv2d(4, 8, 3), topology=topology, rank=2, order=2)
    assert tl.get_backend() == before


def test_tree_ranks_follow_the_documented_post_order():
    layer = tn.tensorize(nn.Linear(16, 16), topology="tree", rank=(2, 3, 5, 4, 4, 16), order=2)
    # edges: m0, n0, (m0 n0), m1, n1, (m1 n1); (m0 n0) <= 2*3; the root's two edges are equal
    assert layer.rank == (2, 3, 5, 4, 4, 5)
    assert layer.leaf_m0.shape == (4, 2) and layer.node2.shape == (2, 3, 5)
    assert layer.node5.shape == (4, 4, 5) and layer.root.shape == (5, 5)  # m1, n1 leaves absorbed
