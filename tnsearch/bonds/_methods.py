"""How a layer's bonds are analyzed and cut: by the bond layout its topology declares.

Each layer class says where its bonds sit (:meth:`tnsearch.tn.TNLayer.bond_layout`);
:func:`method` picks the method for that kind of layout. MPO, tree and Tucker networks are trees
of factors (:class:`tnsearch.tn.TreeLayout`): :class:`TreeBonds` reads one as a
:class:`~tnsearch.bonds._network.TreeNetwork`, given where each entry of ``layer.rank`` sits (a
bond index, or an open mode for a full-rank tree leaf / Tucker mode, which then gets an identity
factor so that it is a bond too). CP's components share one index and are no tree
(:class:`tnsearch.tn.ComponentLayout`): :class:`ComponentBonds` ranks them by norm. A new
topology is analyzable once its class declares its layout.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from tnsearch.bonds._network import TreeNetwork
from tnsearch.bonds._spectrum import RTOL, Bond, LayerBonds, effective_rank, normalize
from tnsearch.tn import ComponentLayout, TNLayer, TreeLayout

__all__ = ["BondMethod", "BondTerms", "ComponentBonds", "Cut", "TreeBonds", "method"]

_L = TypeVar("_L", TreeLayout, ComponentLayout)


class Cut(NamedTuple):
    """A matricization of the weight tensor whose rank a layer's bond bounds.

    Attributes:
        modes: the weight's modes on one side (``m0``, ``n0``, ``k``...), in the weight's order.
        rank: the most the layer can hold across it (the bond's size).
        position: the entry of ``layer.rank`` it comes from.
    """

    modes: tuple[str, ...]
    rank: int
    position: int


class BondTerms(NamedTuple):
    """A layer's weight tensor as a sum over one bond's index: ``W = sum_k s_k u_k (x) v_k``.

    Attributes:
        side: the weight's modes of ``u`` (one side of the bond), in the weight's order.
        rest: the modes of ``v`` (the other side).
        weights: ``s`` ``(K,)``, descending: the singular values of the weight matricized
            across the bond (in that canonical basis each ``u_k``, ``v_k`` has norm 1); for CP
            the component norms.
        u: ``(K, *sizes of side)`` float64.
        v: ``(K, *sizes of rest)`` float64.
    """

    side: tuple[str, ...]
    rest: tuple[str, ...]
    weights: Tensor
    u: Tensor
    v: Tensor


class BondMethod(abc.ABC):
    """Analyzes and cuts the bonds of layers that declare one kind of bond layout."""

    kind: ClassVar[str] = ""

    @abc.abstractmethod
    def terms(self, layer: TNLayer, position: int) -> BondTerms:
        """``layer``'s weight (padding included) as a sum over bond ``position``'s index."""

    @abc.abstractmethod
    def cuts(self, layer: TNLayer) -> tuple[Cut, ...]:
        """The matricizations of the weight whose rank ``layer``'s bonds bound (read from its
        layout and sizes alone: its factors' values do not matter)."""

    @abc.abstractmethod
    def analyze(self, layer: TNLayer, *, name: str, energy: float) -> LayerBonds:
        """The spectra of ``layer``'s bonds (effective ranks at ``energy``)."""

    @abc.abstractmethod
    def truncate(self, layer: TNLayer, *, energy: float) -> TNLayer:
        """A new layer of the same class with every bond cut to its effective rank."""


def method(layer: TNLayer) -> BondMethod | None:
    """The method for ``layer``'s declared bond layout (None: it declares none)."""
    layout = layer.bond_layout()
    if isinstance(layout, TreeLayout):
        return _TREE
    if isinstance(layout, ComponentLayout):
        return _COMPONENTS
    return None


def _layout(layer: TNLayer, kind: type[_L]) -> _L:
    """``layer``'s bond layout, which must be a ``kind``."""
    layout = layer.bond_layout()
    if not isinstance(layout, kind):
        raise TypeError(f"layer: {type(layer).__name__} declares no {kind.__name__}")
    return layout


def _new_layer(layer: TNLayer, rank: list[int]) -> TNLayer:
    """An empty layer like ``layer`` with bond dimensions ``rank`` (exactly those)."""
    ref = layer.factors()[0]
    new = type(layer)(
        layer.geometry, layer.in_modes, layer.out_modes, rank, device=ref.device, dtype=ref.dtype
    )
    if new.rank != tuple(rank):
        raise RuntimeError(f"rank: the layer clipped {tuple(rank)} to {new.rank}")
    with torch.no_grad():
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
            new.bias.requires_grad_(layer.bias.requires_grad)
    grad = ref.requires_grad
    for p in new.factors():
        p.requires_grad_(grad)
    new.path = layer.path
    return new.train(layer.training)


def _padded(layer: TNLayer) -> bool:
    g = layer.geometry
    return layer.in_features_padded > g.in_features or layer.out_features_padded > g.out_features


def _params(tree: TreeNetwork, bond: str, k: int) -> int:
    """Entries of the network's factors with ``bond`` of size ``k`` (a square identity-made
    factor of a full-rank mode counts nothing: the layer keeps no factor there)."""
    total = 0
    for node, idx in tree.indices.items():
        shape = [k if i == bond else n for i, n in zip(idx, tree.tensors[node].shape, strict=True)]
        if not (node.startswith("+") and shape[0] == shape[1]):
            total += math.prod(shape)
    return total


def _weight_order(layer: TNLayer, modes) -> list[str]:
    """``modes`` in the weight tensor's axis order ``(n.., m.., [k])``."""
    net = layer.network
    return [m for m in net.out_idx + net.in_idx + net.kernel_idx if m in modes]


def _mode_order(layer: TNLayer) -> list[str]:
    # the weight's modes in the order a bond lists them: m0, n0, m1, n1, ..., then the kernel
    net = layer.network
    return [i for pair in zip(net.in_idx, net.out_idx, strict=True) for i in pair] + list(
        net.kernel_idx
    )


class TreeBonds(BondMethod):
    """Canonical-form bond spectra of a tree of factors (MPO chain, tree, Tucker star), for
    layers that declare a :class:`~tnsearch.tn.TreeLayout`."""

    kind = "singular values"

    def network(self, layer: TNLayer) -> tuple[TreeNetwork, str]:
        """``layer``'s factors as a float64 network whose bond ``#p`` is ``layer.rank[p]``."""
        net = layer.network
        tensors = [p.detach().to("cpu", torch.float64) for p in layer.factors()]
        tree = TreeNetwork(
            dict(zip(net.names, tensors, strict=True)),
            dict(zip(net.names, net.factors, strict=True)),
        )
        index, root = _layout(layer, TreeLayout)
        holders = tree.holders()
        for p, i in enumerate(index):
            if len(holders[i]) == 1:  # an open mode at full rank: an identity factor makes a bond
                size = tree.size(i)
                tree.rename(i, f"#{p}")
                tree.tensors[f"+{i}"] = torch.eye(size, dtype=torch.float64)
                tree.indices[f"+{i}"] = (i, f"#{p}")
            else:
                tree.rename(i, f"#{p}")
        tree.check_tree()
        return tree, root

    def cuts(self, layer: TNLayer) -> tuple[Cut, ...]:
        # one per bond: the modes on its side away from the root, at most its size across it
        tree, root = self.network(layer)
        order = _mode_order(layer)
        out = []
        for p in range(len(layer.rank)):
            modes = {m for n in tree.side(f"#{p}", root) for m in tree.indices[n] if m in order}
            out.append(Cut(tuple(_weight_order(layer, modes)), int(layer.rank[p]), p))
        return tuple(out)

    def terms(self, layer: TNLayer, position: int) -> BondTerms:
        # the SVD of the weight matricized across the bond: its canonical basis, strongest first
        cut = self.cuts(layer)[position]
        labels = _weight_order(layer, set(_mode_order(layer)))
        rest = tuple(m for m in labels if m not in cut.modes)
        w = layer.weight_tensor().detach().to("cpu", torch.float64)
        w = w.permute(*(labels.index(m) for m in cut.modes + rest))
        a, b = w.shape[: len(cut.modes)], w.shape[len(cut.modes) :]
        u, s, vh = torch.linalg.svd(w.reshape(math.prod(a), -1), full_matrices=False)
        k = min(cut.rank, len(s))
        return BondTerms(cut.modes, rest, s[:k], u[:, :k].T.reshape(k, *a), vh[:k].reshape(k, *b))

    def analyze(self, layer: TNLayer, *, name: str, energy: float) -> LayerBonds:
        tree, root = self.network(layer)
        index = _layout(layer, TreeLayout).bonds
        order = _mode_order(layer)
        bonds = []
        for p, i in enumerate(index):
            s = tree.spectrum(f"#{p}")
            modes = {m for n in tree.side(f"#{p}", root) for m in tree.indices[n] if m in order}
            bonds.append(
                Bond.from_values(
                    i, p, sorted(modes, key=order.index), layer.rank[p], s, energy=energy
                )
            )
        tree.orthonormalize(root)
        return LayerBonds(
            name,
            layer.topology,
            self.kind,
            tuple(layer.rank),
            float(tree.tensors[root].norm()),
            _padded(layer),
            tuple(bonds),
        )

    def truncate(self, layer: TNLayer, *, energy: float) -> TNLayer:
        found = self.analyze(layer, name="", energy=energy)
        if not found.bonds:
            return copy.deepcopy(layer)
        tree, _ = self.network(layer)
        floor = RTOL * found.norm
        bonds = [f"#{b.position}" for b in found.bonds]

        def chooser(bond: str, target: int | None = None) -> Callable[[Tensor], int]:
            def choose(s: Tensor) -> int:
                k = int((s > floor).sum())
                k = k if target is None else min(k, target)
                # a full-rank mode has no factor: cut it only where the new factor pays off
                if k < s.numel() and _params(tree, bond, k) >= _params(tree, bond, s.numel()):
                    return s.numel()
                return k

            return choose

        for b, bond in zip(found.bonds, bonds, strict=True):
            tree.cut(bond, chooser(bond, b.effective_rank))  # discards <= 1 - energy
        for _ in range(len(bonds) + 1):  # exact: drop dimensions that later cuts made redundant
            before = [tree.size(b) for b in bonds]
            for bond in bonds:
                tree.cut(bond, chooser(bond))
            if [tree.size(b) for b in bonds] == before:
                break
        new = _new_layer(layer, [tree.size(b) for b in bonds])
        self._fill(tree, new)
        return new

    def _fill(self, tree: TreeNetwork, new: TNLayer) -> None:
        """Copy the network's tensors into ``new``'s factors (matched by their indices)."""
        index = _layout(new, TreeLayout).bonds
        net = new.network
        open_idx = set(net.in_idx + net.out_idx + net.kernel_idx)
        for p, i in enumerate(index):
            if i in open_idx:  # full rank again: fold the identity-like factor into its neighbour
                tree.absorb(f"+{i}")
            else:
                tree.rename(f"#{p}", i)
        nodes = {frozenset(idx): node for node, idx in tree.indices.items()}
        with torch.no_grad():
            for param, idx in zip(new.factors(), net.factors, strict=True):
                node = nodes.pop(frozenset(idx))
                t = tree.tensors[node].permute([tree.indices[node].index(i) for i in idx])
                param.copy_(t.reshape(param.shape).to(param.dtype))
        if nodes:
            raise RuntimeError(f"network: factors {sorted(nodes.values())} have no place")


class ComponentBonds(BondMethod):
    """CP: the norms of the rank-one components (factors normalized, norms collected), for
    layers that declare a :class:`~tnsearch.tn.ComponentLayout`."""

    kind = "component norms"

    @staticmethod
    def weights(layer: TNLayer) -> Tensor:
        """The norm of each component ``(R,)``: the product of its factor slices' norms."""
        index = _layout(layer, ComponentLayout).component
        norms = []
        for f, idx in zip(layer.factors(), layer.network.factors, strict=True):
            f = f.detach().to("cpu", torch.float64).movedim(idx.index(index), 0)  # (R, ...)
            norms.append(f.reshape(f.shape[0], -1).norm(dim=1))
        return math.prod(norms[1:], start=norms[0])

    def cuts(self, layer: TNLayer) -> tuple[Cut, ...]:
        # a sum of R rank-one terms has rank <= R across every matricization; these are the
        # other topologies' cuts: each mode (Tucker's), each output-input pair (the tree's
        # leaves' parents), the chain's prefixes (the MPO's), and outputs | inputs (the matrix)
        net, r = layer.network, int(layer.rank[0])
        d = len(net.in_idx)
        pairs = [(n, m) for n, m in zip(net.out_idx, net.in_idx, strict=True)]
        sides = [(m,) for m in net.out_idx + net.in_idx + net.kernel_idx]
        sides += pairs if d > 1 else []
        sides += [sum(pairs[:j], ()) for j in range(2, d + bool(net.kernel_idx))]
        sides.append(net.out_idx)
        return tuple(Cut(tuple(_weight_order(layer, s)), r, 0) for s in dict.fromkeys(sides))

    def terms(self, layer: TNLayer, position: int) -> BondTerms:
        # the components, strongest first: u over the input modes (and kernel), v over outputs
        net = layer.network
        index = _layout(layer, ComponentLayout).component
        rows = {}
        for f, idx in zip(layer.factors(), net.factors, strict=True):
            (mode,) = [i for i in idx if i != index]
            rows[mode] = f.detach().to("cpu", torch.float64).movedim(idx.index(index), 0)
        side, rest = net.in_idx + net.kernel_idx, net.out_idx
        u, v = _outer([rows[m] for m in side]), _outer([rows[m] for m in rest])  # (R, ...)
        norms = u.flatten(1).norm(dim=1) * v.flatten(1).norm(dim=1)
        order = norms.argsort(descending=True)
        return BondTerms(side, rest, norms[order], _unit(u[order]), _unit(v[order]))

    def analyze(self, layer: TNLayer, *, name: str, energy: float) -> LayerBonds:
        w = self.weights(layer)
        index = _layout(layer, ComponentLayout).component
        bond = Bond.from_values(index, 0, (), layer.rank[0], w, energy=energy)
        norm, padded = float(w.norm()), _padded(layer)
        return LayerBonds(name, layer.topology, self.kind, layer.rank, norm, padded, (bond,))

    def truncate(self, layer: TNLayer, *, energy: float) -> TNLayer:
        w = self.weights(layer)
        k = effective_rank(normalize(w), energy)
        keep = w.argsort(descending=True)[:k].sort().values  # in their order: 1.0 is a no-op
        keep = keep.to(layer.factors()[0].device)
        index = _layout(layer, ComponentLayout).component
        dims = [idx.index(index) for idx in layer.network.factors]  # where R sits in each factor
        new = _new_layer(layer, [k])
        with torch.no_grad():
            for p, old, dim in zip(new.factors(), layer.factors(), dims, strict=True):
                p.copy_(old.index_select(dim, keep))
        return new


def _unit(t: Tensor) -> Tensor:
    """Each ``t[k]`` scaled to norm 1 (a zero one left zero)."""
    norms = t.flatten(1).norm(dim=1).clamp(min=1e-300)
    return t / norms.view(-1, *[1] * (t.dim() - 1))


def _outer(rows: list[Tensor]) -> Tensor:
    """The outer products ``(R, n_1, .., n_j)`` of factor rows ``(R, n_i)``, component-wise."""
    out = rows[0]
    for r in rows[1:]:
        out = out.unsqueeze(-1) * r.view(r.shape[0], *[1] * (out.dim() - 1), r.shape[1])
    return out


# the method of each kind of layout (see `method`)
_TREE = TreeBonds()
_COMPONENTS = ComponentBonds()
