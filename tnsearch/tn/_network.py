"""A layer's tensor network as plain data, and the contractions built from it."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tnsearch.tn._contract import Contraction, compile_contraction

__all__ = [
    "BondLayout",
    "ComponentLayout",
    "Network",
    "TreeLayout",
    "build_network",
    "network_contraction",
    "stage_contraction",
]


class Network(NamedTuple):
    """The factors of a tensorized weight and how they connect (hashable, compile-constant).

    The weight tensor is ``(n_1..n_d, m_1..m_d[, k])``: output modes, input modes and, for Conv2d,
    the flattened ``kh*kw`` kernel mode. Every index of a factor that is not one of those is a bond
    (summed over).

    Attributes:
        names: parameter name of each factor.
        factors: index names of each factor, in its dimension order.
        sizes: ``(index, size)`` for every index.
        in_idx: input mode indices ``m_*``.
        out_idx: output mode indices ``n_*``.
        kernel_idx: ``("k",)`` for Conv2d, ``()`` for Linear.
    """

    names: tuple[str, ...]
    factors: tuple[tuple[str, ...], ...]
    sizes: tuple[tuple[str, int], ...]
    in_idx: tuple[str, ...]
    out_idx: tuple[str, ...]
    kernel_idx: tuple[str, ...]

    def shape(self, k: int) -> tuple[int, ...]:
        """Shape of factor ``k``."""
        size = dict(self.sizes)
        return tuple(size[i] for i in self.factors[k])

    def n_terms(self) -> int:
        """How many products of factor entries sum into one weight entry (product of bonds)."""
        size = dict(self.sizes)
        open_idx = set(self.in_idx + self.out_idx + self.kernel_idx)
        bonds = {i for f in self.factors for i in f if i not in open_idx}
        return math.prod(size[i] for i in bonds)


class TreeLayout(NamedTuple):
    """Where the bonds of a tree of factors (MPO chain, tree, Tucker star) sit.

    Entry ``p`` of ``layer.rank`` is the index ``bonds[p]``: a bond between two factors, or an
    open mode of the weight where a full-rank mode keeps no factor (it is still a bond of the
    weight). Bond analysis (``tnsearch.bonds``) brings the network to canonical form towards
    ``root``; the modes on the far side of a bond from it are the bond's modes.
    """

    bonds: tuple[str, ...]  # index name of each entry of rank, e.g. ("r1", "r2", "r3") for an MPO
    root: str  # parameter name of the factor the tree hangs from, e.g. "core3", "root", "core"


class ComponentLayout(NamedTuple):
    """The factors are a sum of rank-one components (CP): they all hold one component index."""

    component: str  # the component index, in every factor; its size is the only entry of rank


#: What a topology declares about its bonds (:meth:`~tnsearch.tn.TNLayer.bond_layout`).
BondLayout = TreeLayout | ComponentLayout


def build_network(
    factors: dict[str, tuple[str, ...]],
    sizes: dict[str, int],
    in_idx: tuple[str, ...],
    out_idx: tuple[str, ...],
    kernel_idx: tuple[str, ...],
) -> Network:
    """Make a :class:`Network` from ``{parameter name: index names}`` and ``{index: size}``."""
    used = {i for f in factors.values() for i in f}
    return Network(
        tuple(factors),
        tuple(tuple(f) for f in factors.values()),
        tuple(sorted((i, int(s)) for i, s in sizes.items() if i in used)),
        tuple(in_idx),
        tuple(out_idx),
        tuple(kernel_idx),
    )


@torch.compiler.assume_constant_result
def network_contraction(net: Network, kind: str, batch: int = 1, spatial: int = 1) -> Contraction:
    """The contraction of ``net`` for one job, as :func:`~tnsearch.tn._contract.run_contraction`
    wants.

    Args:
        net: the network.
        kind: ``"weight"``: factors -> ``(N, M[, K])``; ``"linear"``: input ``(B, M)`` and
            factors -> ``(B, N)``; ``"conv"``: unfolded input ``(B, M*K, L)`` and factors ->
            ``(B, N, L)``.
        batch: B, the batch the contraction order is chosen for; the contraction runs on any batch
            (its batch index ``b`` is dynamic: see
            :func:`~tnsearch.tn._contract.compile_contraction`).
        spatial: L, the number of output pixels (``"conv"`` only).
    """
    size = dict(net.sizes)
    ins, outs, ker = net.in_idx, net.out_idx, net.kernel_idx
    if kind == "weight":
        groups = (outs, ins, ker) if ker else (outs, ins)
        return compile_contraction(net.factors, net.sizes, outs + ins + ker, groups)
    size["b"], size["l"] = int(batch), int(spatial)
    if kind == "linear":
        x = ("b", *ins)
        out, groups = ("b", *outs), (("b",), outs)
        x_shape = (batch, math.prod(size[i] for i in ins))
    elif kind == "conv":
        x = ("b", *ins, *ker, "l")
        out, groups = ("b", *outs, "l"), (("b",), outs, ("l",))
        x_shape = (batch, math.prod(size[i] for i in ins + ker), spatial)
    else:
        raise ValueError(f"kind: unknown {kind!r}")
    sizes = tuple(sorted(size.items()))
    return compile_contraction((x, *net.factors), sizes, out, groups, (x_shape,), ("b",))


@torch.compiler.assume_constant_result
def stage_contraction(
    net: Network,
    t_shape: tuple[int, ...],
    t_idx: tuple[str, ...],
    factor_names: tuple[str, ...],
    out_idx: tuple[str, ...],
    dims: tuple[tuple[str, int], ...],
) -> Contraction:
    """The contraction of a tensor (indices ``t_idx``, shape ``t_shape``) with some of the
    factors.

    ``dims`` sizes the indices that are not in the network (batch ``b``, pixels ``l``); the batch
    is dynamic, as in :func:`network_contraction`. The result has one dimension per outer index and
    one per run of consecutive network indices of ``out_idx``, e.g. ``(b, a0, a1, l)`` ->
    ``(B, A0*A1, L)``.
    """
    sizes = tuple(sorted({**dict(net.sizes), **dict(dims)}.items()))
    ops = (t_idx, *(net.factors[net.names.index(n)] for n in factor_names))
    outer = {i for i, _ in dims}
    groups, run = [], []
    for i in out_idx:
        if i in outer:
            groups += [tuple(run)] if run else []
            groups.append((i,))
            run = []
        else:
            run.append(i)
    groups += [tuple(run)] if run else []
    return compile_contraction(ops, sizes, out_idx, tuple(groups), (tuple(t_shape),), ("b",))
