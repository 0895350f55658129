"""Tucker: a core tensor with one factor matrix per mode of the reshaped weight.

The weight tensor is ``(n_1..n_d, m_1..m_d[, k])`` and ``rank`` has one value per channel mode, in
that order (outputs first, like the ``(out, in)`` weight). A mode whose rank equals its size keeps
no factor (it would be an invertible matrix). For Conv2d the kernel mode ``k`` is never
factorized, so order 1 is exactly the Tucker-2 form of Kim et al. (2016): 1x1 conv
``C -> R_in``, ``kh x kw`` conv ``R_in -> R_out``, 1x1 conv ``R_out -> O`` (the ``factorized``
path). The decomposition is HOSVD followed by HOOI (tensorly's ``partial_tucker``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tnsearch.tn._base import TNLayer
from tnsearch.tn._factorized import ConvSequence, run_sequence, sequence_macs
from tnsearch.tn._network import Network, TreeLayout, build_network
from tnsearch.tn._registry import register

__all__ = ["TuckerLayer", "tucker_decompose", "tucker_ranks"]


def tucker_ranks(dims: Sequence[int], rank: Sequence[int], extra: int = 1) -> tuple[int, ...]:
    """Clip per-mode ranks: ``R_j <= dims_j`` and ``R_j <= extra * prod(R_i, i != j)``.

    ``extra`` is the size of modes that are never factorized (the kernel).
    """
    r = [min(a, b) for a, b in zip(rank, dims, strict=True)]
    changed = True
    while changed:
        changed = False
        for j in range(len(r)):
            limit = extra * math.prod(r[:j] + r[j + 1 :])
            if r[j] > limit:
                r[j], changed = limit, True
    return tuple(r)


#: Multiply-adds that HOOI may spend (sweeps x tensor size x largest rank).
HOOI_WORK = 3e9


def tucker_decompose(
    tensor: torch.Tensor, rank: Sequence[int], n_iter_max: int = 20
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Tucker decomposition of the leading ``len(rank)`` modes of ``tensor`` (HOSVD + HOOI).

    Modes with ``rank == size`` are left alone. Uses tensorly's ``partial_tucker`` on numpy.

    Returns:
        The core and, per leading mode, its ``(size, rank)`` factor or ``None``.
    """
    t = tensor.detach().cpu().double().numpy()
    modes = [j for j, r in enumerate(rank) if r < t.shape[j]]
    if not modes:
        return torch.from_numpy(t.copy()), [None] * len(rank)
    import tensorly as tl  # imported here: it adds about a second to every start-up
    from tensorly.decomposition import partial_tucker

    # A HOOI sweep costs about size * rank per mode: a large table gets fewer (at least 2).
    work = max(t.size * max(rank), 1)
    n_iter_max = max(2, min(n_iter_max, int(HOOI_WORK / work)))

    with tl.backend_context("numpy", local_threadsafe=True):
        (core, factors), _ = partial_tucker(
            tl.tensor(t), [rank[j] for j in modes], modes=modes, init="svd", n_iter_max=n_iter_max
        )
    out: list[torch.Tensor | None] = [None] * len(rank)
    for j, f in zip(modes, factors, strict=True):
        out[j] = torch.from_numpy(np.ascontiguousarray(f))
    return torch.from_numpy(np.ascontiguousarray(core)), out


@register("tucker")
class TuckerLayer(TNLayer):
    """Tucker layer (Tucker-2 for order-1 Conv2d); see the module docstring."""

    conv_paths = ("factorized",)

    @classmethod
    def bond_count(cls, order: int, conv: bool) -> int:
        return 2 * order

    @classmethod
    def clip_rank(cls, in_modes, out_modes, kernel, rank):
        return tucker_ranks((*out_modes, *in_modes), rank, kernel)

    def _modes(self) -> list[tuple[str, int, int]]:
        # (mode index, size, rank) in weight order: outputs, then inputs
        d = len(self.in_modes)
        names = [f"n{k}" for k in range(d)] + [f"m{k}" for k in range(d)]
        return list(zip(names, (*self.out_modes, *self.in_modes), self.rank, strict=True))

    def build_network(self) -> Network:
        d = len(self.in_modes)
        sizes, factors, core = {}, {}, []
        for name, size, r in self._modes():
            sizes[name] = size
            if r < size:
                sizes[f"a_{name}"] = r
                factors[f"factor_{name}"] = (name, f"a_{name}")
            core.append(f"a_{name}" if r < size else name)
        kernel = ("k",) if self.geometry.conv else ()
        sizes["k"] = self.geometry.kernel
        factors = {"core": (*core, *kernel), **factors}
        ins = tuple(f"m{k}" for k in range(d))
        outs = tuple(f"n{k}" for k in range(d))
        return build_network(factors, sizes, ins, outs, kernel)

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        core, factors = tucker_decompose(weight, self.rank)
        return [core, *(f for f in factors if f is not None)]

    def bond_layout(self) -> TreeLayout:
        # rank is per mode, outputs first; a mode without a factor is the core's own index
        sizes = dict(self.network.sizes)
        bonds = tuple(f"a_{m}" if f"a_{m}" in sizes else m for m, _, _ in self._modes())
        return TreeLayout(bonds, "core")

    # --- factorized path: 1x1 -> core conv -> 1x1 --------------------------------------------

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d, size = len(self.in_modes), dict(self.network.sizes)
        core, names = self.network.factors[0], set(self.network.names)
        self._seq = ConvSequence(
            tuple(f"factor_m{k}" for k in range(d) if f"factor_m{k}" in names),
            core[d : 2 * d],
            tuple(f"factor_n{k}" for k in range(d) if f"factor_n{k}" in names),
            core[:d],
            math.prod(size[i] for i in core[d : 2 * d]),
            math.prod(size[i] for i in core[:d]),
        )

    def _path_factorized(self, x: torch.Tensor) -> torch.Tensor:
        g, seq = self.geometry, self._seq
        w = self.core.reshape(seq.r_out, seq.r_in, *g.kernel_size)  # (R_out, R_in, kh, kw)

        def core(y: torch.Tensor) -> torch.Tensor:
            return F.conv2d(y, w, None, g.stride, g.padding, g.dilation)

        return run_sequence(self, x, seq, core)

    def _macs_factorized(self, b: int, l: int, shape: tuple[int, ...]) -> int:
        seq = self._seq
        return sequence_macs(self, seq, shape, seq.r_out * seq.r_in * self.geometry.kernel)
