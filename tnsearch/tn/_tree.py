"""Tree (hierarchical Tucker): a binary tree tensor network over the weight's modes.

Leaves are the modes ``m_j`` and ``n_j``; each input mode is paired with its output mode under a
node, the pairs are joined by a balanced binary tree, and for Conv2d the root joins that tree with
the kernel mode ``k``. Every edge except above the root has a rank; ``rank`` lists them in
post-order (children before parents, left before right): for order 2 Linear that is
``m0, n0, (m0 n0), m1, n1, (m1 n1)``; Conv2d adds ``(channels), k`` at the end. A leaf whose rank
equals its size keeps no factor. Leaves hold ``(size, rank)`` matrices, inner nodes
``(left, right, rank)`` transfer tensors and the root ``(left, right)``. The decomposition is the
leaves-to-root hierarchical SVD (Grasedyck 2010), exact at the clipped maximal ranks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from tnsearch.tn._base import TNLayer
from tnsearch.tn._network import Network, TreeLayout, build_network
from tnsearch.tn._registry import register

__all__ = ["TreeLayer", "Node", "tree_decompose", "tree_nodes", "tree_ranks"]


class Node(NamedTuple):
    """A tree node: a leaf names its ``mode`` (an index name), an inner node its two children."""

    mode: str | None
    children: tuple[int, ...]


def tree_nodes(order: int, conv: bool) -> list[Node]:
    """The tree's nodes in post-order (the root is last)."""
    nodes: list[Node] = []

    def add(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def build(js: list[int]) -> int:
        if len(js) == 1:
            j = js[0]
            m, n = add(Node(f"m{j}", ())), add(Node(f"n{j}", ()))
            return add(Node(None, (m, n)))
        half = (len(js) + 1) // 2
        left = build(js[:half])
        return add(Node(None, (left, build(js[half:]))))

    top = build(list(range(order)))
    if conv:
        add(Node(None, (top, add(Node("k", ())))))
    return nodes


def _leaves(nodes: list[Node], t: int) -> list[str]:
    node = nodes[t]
    return [node.mode] if node.mode else [m for c in node.children for m in _leaves(nodes, c)]


def tree_ranks(nodes: list[Node], dims: dict[str, int], rank: tuple[int, ...]) -> tuple[int, ...]:
    """Clip one rank per edge (post-order, root excluded) to the largest meaningful values.

    An edge is at most the size on either side of it, at most the product of its children's
    ranks, and at most its parent's rank times its sibling's (the root counts as rank 1).
    """
    total = math.prod(dims.values())
    r = list(rank) + [1]  # the root's "edge"
    parent = {c: p for p, node in enumerate(nodes) for c in node.children}
    changed = True
    while changed:
        changed = False
        for t, node in enumerate(nodes[:-1]):
            inside = math.prod(dims[m] for m in _leaves(nodes, t))
            limit = min(inside, total // inside)
            if node.children:
                limit = min(limit, math.prod(r[c] for c in node.children))
            (sib,) = [c for c in nodes[parent[t]].children if c != t]
            limit = min(limit, r[parent[t]] * r[sib])
            if r[t] > limit:
                r[t], changed = limit, True
    return tuple(r[:-1])


def _edge(nodes: list[Node], dims: dict[str, int], rank: tuple[int, ...], t: int) -> str:
    """Index name of node t's upper edge: its mode for an absorbed (full-rank) leaf."""
    node = nodes[t]
    return node.mode if node.mode and rank[t] == dims[node.mode] else f"e{t}"


def _basis(mat: np.ndarray, r: int) -> np.ndarray:
    """The leading ``r`` left singular vectors of ``mat`` (zero columns beyond its rank)."""
    if mat.shape[1] > 4 * mat.shape[0]:  # wide (a large table): from the small Gram matrix
        values, vectors = np.linalg.eigh(mat @ mat.T)
        keep = values[::-1] > values.max(initial=0.0) * 1e-24
        u = vectors[:, ::-1][:, keep][:, :r]
    else:
        u = np.linalg.svd(mat, full_matrices=False)[0][:, :r]
    return np.pad(u, ((0, 0), (0, r - u.shape[1])))


def tree_decompose(
    tensor: torch.Tensor, nodes: list[Node], labels: list[str], rank: tuple[int, ...]
) -> dict[int, torch.Tensor]:
    """Leaves-to-root hierarchical SVD of ``tensor`` whose axes are the modes ``labels``.

    Returns:
        Node id -> factor (absorbed leaves have none), in the layouts of the module docstring.
    """
    t = tensor.detach().cpu().double().numpy()
    dims = dict(zip(labels, t.shape, strict=True))
    labels = list(labels)
    out = {}
    for k, node in enumerate(nodes[:-1]):
        edge = _edge(nodes, dims, rank, k)
        if node.mode == edge:
            continue  # absorbed leaf: the mode axis stays as it is
        axes = (
            [labels.index(node.mode)]
            if node.mode
            else [labels.index(_edge(nodes, dims, rank, c)) for c in node.children]
        )
        t = np.moveaxis(t, axes, list(range(len(axes))))
        head = t.shape[: len(axes)]
        rest = [lab for a, lab in enumerate(labels) if a not in axes]
        mat = t.reshape(math.prod(head), -1)
        u = _basis(mat, rank[k])  # (prod(head), r)
        out[k] = torch.from_numpy(np.ascontiguousarray(u.reshape(*head, rank[k])))
        t = (u.T @ mat).reshape(rank[k], *t.shape[len(axes) :])
        labels = [edge, *rest]
    root = nodes[-1]
    order = [labels.index(_edge(nodes, dims, rank, c)) for c in root.children]
    out[len(nodes) - 1] = torch.from_numpy(np.ascontiguousarray(t.transpose(order)))
    return out


@register("tree")
class TreeLayer(TNLayer):
    """Binary tree tensor network (hierarchical Tucker); see the module docstring."""

    @classmethod
    def bond_count(cls, order: int, conv: bool) -> int:
        return 4 * order - 2 + 2 * int(conv)

    @classmethod
    def clip_rank(cls, in_modes, out_modes, kernel, rank):
        conv = len(rank) == 4 * len(in_modes)
        dims = _dims(in_modes, out_modes, kernel if conv else None)
        return tree_ranks(tree_nodes(len(in_modes), conv), dims, rank)

    def _tree(self) -> tuple[list[Node], dict[str, int]]:
        g = self.geometry
        dims = _dims(self.in_modes, self.out_modes, g.kernel if g.conv else None)
        return tree_nodes(len(self.in_modes), g.conv), dims

    def build_network(self) -> Network:
        nodes, dims = self._tree()
        sizes = dict(dims)
        factors = {}
        for t, node in enumerate(nodes):
            edge = _edge(nodes, dims, self.rank, t) if t < len(nodes) - 1 else None
            if edge is not None:
                sizes[edge] = self.rank[t]
            if node.mode and edge == node.mode:
                continue
            kids = tuple(_edge(nodes, dims, self.rank, c) for c in node.children)
            own = (node.mode,) if node.mode else kids
            name = f"leaf_{node.mode}" if node.mode else ("root" if edge is None else f"node{t}")
            factors[name] = own + ((edge,) if edge else ())
        d = len(self.in_modes)
        ins = tuple(f"m{k}" for k in range(d))
        outs = tuple(f"n{k}" for k in range(d))
        return build_network(factors, sizes, ins, outs, ("k",) if self.geometry.conv else ())

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        nodes, dims = self._tree()
        d = len(self.in_modes)
        labels = [f"n{k}" for k in range(d)] + [f"m{k}" for k in range(d)]
        labels += ["k"] if self.geometry.conv else []
        found = tree_decompose(weight, nodes, labels, self.rank)
        return [found[t] for t in sorted(found)]

    def bond_layout(self) -> TreeLayout:
        # rank is per edge in post-order: e<t>, or the leaf's mode when it keeps no factor
        nodes, dims = self._tree()
        edges = tuple(_edge(nodes, dims, self.rank, t) for t in range(len(nodes) - 1))
        return TreeLayout(edges, "root")


def _dims(in_modes, out_modes, kernel: int | None) -> dict[str, int]:
    dims = {f"m{k}": m for k, m in enumerate(in_modes)}
    dims.update({f"n{k}": n for k, n in enumerate(out_modes)})
    if kernel is not None:
        dims["k"] = kernel
    return dims
