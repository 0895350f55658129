"""Tree tensor networks in float64: mixed-canonical form around a bond, its SVD, cutting it.

A network is a dict of nodes, each a tensor with one index name per dimension. An index held by
two nodes is a bond; an index held by one node is open (a mode of the weight, or a size-1
boundary). The bonds must form a tree (MPO chains, hierarchical Tucker trees, Tucker stars).

Bringing the network to mixed-canonical form around a bond (every node an isometry towards one
end of the bond, by QR from the leaves) makes the singular values of that end's matricization
across the bond those of the whole weight across the bond: the bond's spectrum. Cutting the bond
to its leading singular vectors there is then the best approximation of that rank at the bond,
and its error is the discarded singular values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TreeNetwork"]


@dataclass
class TreeNetwork:
    """Nodes of a tree tensor network: float64 tensors and their index names.

    Attributes:
        tensors: node name -> tensor.
        indices: node name -> one index name per dimension of its tensor.
        centre: the node every other node is an isometry towards, if known (None after a
            change from outside).
    """

    tensors: dict[str, Tensor]
    indices: dict[str, tuple[str, ...]]
    centre: str | None = None

    def holders(self) -> dict[str, list[str]]:
        """Index name -> the nodes that hold it (two for a bond, one for an open index)."""
        out: dict[str, list[str]] = {}
        for node, idx in self.indices.items():
            for i in idx:
                out.setdefault(i, []).append(node)
        return out

    def bonds(self) -> dict[str, tuple[str, str]]:
        """Bond name -> its two nodes."""
        return {i: (h[0], h[1]) for i, h in self.holders().items() if len(h) == 2}

    def size(self, index: str) -> int:
        """The dimension of ``index``."""
        for node, idx in self.indices.items():
            if index in idx:
                return int(self.tensors[node].shape[idx.index(index)])
        raise KeyError(index)

    def check_tree(self) -> None:
        """Raise ``ValueError`` unless the bonds connect all nodes without a cycle."""
        held = self.holders()
        if any(len(h) > 2 for h in held.values()):
            raise ValueError("network: an index is shared by more than two factors (not a tree)")
        nodes = list(self.indices)
        if len(self.bonds()) != len(nodes) - 1 or len(self._parents(nodes[0])) != len(nodes):
            raise ValueError("network: the factors do not form a tree")

    def _parents(self, root: str) -> dict[str, tuple[str, str] | None]:
        """Node -> (parent node, bond to it), in pre-order from ``root`` (root -> None)."""
        bonds = self.bonds()
        order: dict[str, tuple[str, str] | None] = {root: None}
        stack = [root]
        while stack:
            node = stack.pop()
            for i in self.indices[node]:
                if i in bonds:
                    other = bonds[i][1] if bonds[i][0] == node else bonds[i][0]
                    if other not in order:
                        order[other] = (node, i)
                        stack.append(other)
        return order

    def side(self, bond: str, root: str) -> list[str]:
        """The nodes on the far side of ``bond`` as seen from ``root``."""
        parents = self._parents(root)
        a, b = self.bonds()[bond]
        child = b if parents[b] == (a, bond) else a
        below = [child]
        for node, up in parents.items():  # pre-order: a parent comes before its children
            if up is not None and up[0] in below and node not in below:
                below.append(node)
        return below

    def orthonormalize(self, root: str) -> None:
        """Make every node except ``root`` an isometry towards ``root`` (QR from the leaves).

        The tensor the network represents is unchanged; a bond larger than what lies below it
        shrinks to that size (exactly). From a known centre only the path to ``root`` moves.
        """
        parents = self._parents(root)
        if self.centre in parents:
            path, node = [], self.centre
            while node != root:
                path.append(node)
                node = parents[node][0]
        else:
            path = list(reversed(list(parents)))[:-1]  # children before parents
        for node in path:
            self._push(node, *parents[node])
        self.centre = root

    def _push(self, node: str, parent: str, bond: str) -> None:
        # QR of `node` matricized against `bond`; R goes into `parent`
        pos = self.indices[node].index(bond)
        t = self.tensors[node].movedim(pos, -1)  # (..., r)
        q, r = torch.linalg.qr(t.reshape(-1, t.shape[-1]))  # (P, k), (k, r)
        self.tensors[node] = q.reshape(*t.shape[:-1], q.shape[1]).movedim(-1, pos)
        ppos = self.indices[parent].index(bond)
        merged = torch.tensordot(r, self.tensors[parent], dims=([1], [ppos]))  # (k, ...)
        self.tensors[parent] = merged.movedim(0, ppos)

    def _center(self, bond: str) -> tuple[str, str, Tensor, Tensor, Tensor, tuple[int, ...]]:
        # mixed-canonical form around `bond`: SVD of its centre end, matricized across it
        a, b = self.bonds()[bond]
        if self.tensors[b].numel() > self.tensors[a].numel():
            a, b = b, a  # the larger node is the centre: the other one shrinks the bond by QR
        self.orthonormalize(a)
        t = self.tensors[a].movedim(self.indices[a].index(bond), 0)  # (r, ...)
        u, s, vh = torch.linalg.svd(t.reshape(t.shape[0], -1), full_matrices=False)
        return a, b, u, s, vh, tuple(t.shape[1:])

    def spectrum(self, bond: str) -> Tensor:
        """The singular values ``(r,)`` of the weight matricized across ``bond``, descending."""
        return self._center(bond)[3]

    def cut(self, bond: str, choose: Callable[[Tensor], int]) -> Tensor:
        """Cut ``bond`` to ``choose(singular values)`` (at least 1); return the singular values.

        The centre keeps ``S V^T``, the other end takes ``U``: the network stays mixed-canonical
        and the squared error is the sum of the discarded squared singular values.
        """
        a, b, u, s, vh, rest = self._center(bond)
        k = max(1, min(int(choose(s)), s.numel()))
        pos = self.indices[a].index(bond)
        centre = (s[:k, None] * vh[:k]).reshape(k, *rest)  # (k, ...)
        self.tensors[a] = centre.movedim(0, pos)
        pos = self.indices[b].index(bond)
        other = torch.tensordot(self.tensors[b], u[:, :k], dims=([pos], [0]))  # (..., k)
        self.tensors[b] = other.movedim(-1, pos)
        return s

    def absorb(self, node: str) -> None:
        """Contract ``node`` into its only neighbour (``node`` must have exactly one bond)."""
        bonds = self.bonds()
        (bond,) = [i for i in self.indices[node] if i in bonds]
        (other,) = [n for n in bonds[bond] if n != node]
        t, idx = self.tensors.pop(node), self.indices.pop(node)
        self.centre = None
        pos, opos = idx.index(bond), self.indices[other].index(bond)
        merged = torch.tensordot(self.tensors[other], t, dims=([opos], [pos]))
        keep = [i for i in idx if i != bond]
        oidx = [i for i in self.indices[other] if i != bond]
        # put the node's open indices where the bond was
        perm = list(range(len(oidx) + len(keep)))
        new = oidx[:opos] + keep + oidx[opos:]
        order = [(oidx + keep).index(i) for i in new]
        self.tensors[other] = merged.permute(order) if order != perm else merged
        self.indices[other] = tuple(new)

    def rename(self, old: str, new: str) -> None:
        """Rename an index everywhere."""
        for node, idx in self.indices.items():
            self.indices[node] = tuple(new if i == old else i for i in idx)
