"""MPO (tensor-train matrix): a chain of cores ``(r_{k-1}, m_k, n_k, r_k)``.

For Conv2d the flattened kernel is one more core at the end of the chain, ``(r_d, kh*kw, 1, 1)``:
the chain is the TT-matrix of the ``(in*kh*kw) x out`` matrix with input modes ``(m_1..m_d, k)``
and output modes ``(n_1..n_d, 1)``. ``rank`` has one value per bond: ``order - 1`` for Linear,
``order`` for Conv2d (the last bond joins the channels to the kernel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tnsearch.tn._base import TNLayer
from tnsearch.tn._network import Network, TreeLayout, build_network
from tnsearch.tn._registry import register

__all__ = ["MPOLayer", "mpo_decompose", "mpo_ranks"]


def mpo_ranks(site_sizes: Sequence[int], rank: Sequence[int]) -> tuple[int, ...]:
    """Clip the bonds of a chain whose sites have ``site_sizes`` (``m_k * n_k``) entries.

    Bond k can be at most ``r_{k-1} * s_k`` and ``r_{k+1} * s_{k+1}`` (hence at most the product
    of the sizes on either side); TT-SVD at these ranks is exact.
    """
    r = [1, *rank, 1]
    for k in range(1, len(r) - 1):  # left to right, then right to left
        r[k] = min(r[k], r[k - 1] * site_sizes[k - 1])
    for k in range(len(r) - 2, 0, -1):
        r[k] = min(r[k], r[k + 1] * site_sizes[k])
    return tuple(r[1:-1])


#: Weight tensors with more entries than this are split by randomized SVDs.
RANDOMIZED_FROM = 4_000_000


def mpo_decompose(
    tensor: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], rank: Sequence[int]
) -> list[torch.Tensor]:
    """TT-SVD of a weight tensor ``(n_1..n_d, m_1..m_d[, k])`` into MPO cores.

    Uses tensorly's ``tensor_train_matrix`` on the numpy backend (local to this call).

    Returns:
        Cores ``(r_{k-1}, m_k, n_k, r_k)``; with a kernel mode, a last core ``(r_d, k, 1, 1)``.
    """
    d = len(in_modes)
    conv = tensor.dim() == 2 * d + 1
    t = tensor.detach().cpu().double().numpy()
    # (n.., m.., [k]) -> (m.., [k], n.., [1]): TT-matrix input modes first, then output modes
    t = t.transpose([*range(d, 2 * d), *([2 * d] if conv else []), *range(d)])
    if conv:
        t = t.reshape(*t.shape, 1)
    import tensorly as tl  # imported here: it adds about a second to every start-up
    from tensorly.decomposition import tensor_train_matrix

    # A large table (an embedding's) with small bonds: a randomized SVD of each unfolding
    # takes a second where the full one takes a minute. (Order 1 has no bond: one core.)
    small = max(rank, default=0) <= 256
    method = "randomized_svd" if t.size > RANDOMIZED_FROM and small else "truncated_svd"
    with tl.backend_context("numpy", local_threadsafe=True):
        cores = tensor_train_matrix(tl.tensor(t), [1, *rank, 1], svd=method, random_state=0).factors
    bonds, out = [1, *rank, 1], []
    for k, core in enumerate(cores):
        core = torch.from_numpy(np.ascontiguousarray(core))
        padded = torch.zeros(bonds[k], core.shape[1], core.shape[2], bonds[k + 1], dtype=core.dtype)
        padded[: core.shape[0], :, :, : core.shape[3]] = core  # if SVD found a lower rank
        out.append(padded)
    return out


@register("mpo")
class MPOLayer(TNLayer):
    """Tensor-train matrix (MPO) layer; see the module docstring for the core layout."""

    @classmethod
    def bond_count(cls, order: int, conv: bool) -> int:
        return order - 1 + int(conv)

    @classmethod
    def clip_rank(cls, in_modes, out_modes, kernel, rank):
        sites = [m * n for m, n in zip(in_modes, out_modes, strict=True)]
        if len(rank) == len(in_modes):  # Conv2d: the kernel is the last site
            sites.append(kernel)
        return mpo_ranks(sites, rank)

    def build_network(self) -> Network:
        d = len(self.in_modes)
        sizes = {f"r{k}": r for k, r in enumerate([1, *self.rank, 1])}
        factors = {}
        for k in range(d):
            sizes[f"m{k}"], sizes[f"n{k}"] = self.in_modes[k], self.out_modes[k]
            factors[f"core{k}"] = (f"r{k}", f"m{k}", f"n{k}", f"r{k + 1}")
        kernel = ()
        if self.geometry.conv:
            sizes["k"], sizes["u"] = self.geometry.kernel, 1
            factors[f"core{d}"] = (f"r{d}", "k", "u", f"r{d + 1}")
            kernel = ("k",)
        ins = tuple(f"m{k}" for k in range(d))
        outs = tuple(f"n{k}" for k in range(d))
        return build_network(factors, sizes, ins, outs, kernel)

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return mpo_decompose(weight, self.in_modes, self.out_modes, self.rank)

    def bond_layout(self) -> TreeLayout:
        # bond p joins core p and core p + 1; the chain's last core is the root
        bonds = tuple(f"r{p + 1}" for p in range(len(self.rank)))
        return TreeLayout(bonds, self.network.names[-1])
