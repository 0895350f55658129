"""CP (canonical polyadic): a sum of ``rank`` outer products, one factor per weight mode.

The weight tensor ``(n_1..n_d, m_1..m_d[, k])`` is ``sum_r prod_j A_j[i_j, r]``; factors are
stored rank-major, ``(rank, size)``. ``rank`` is a single bond. For Conv2d the kernel factor is a
depthwise ``kh x kw`` filter per rank component, which gives Lebedev et al. (2015)'s sequence
(the ``factorized`` path): 1x1 conv ``C -> R`` (the Khatri-Rao product of the input factors),
depthwise ``kh x kw`` conv on ``R`` channels, 1x1 conv ``R -> O``. The decomposition is CP-ALS
(tensorly's ``parafac``, SVD init, fixed seed).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tnsearch.tn._base import TNLayer
from tnsearch.tn._factorized import ConvSequence, run_sequence, sequence_macs
from tnsearch.tn._network import ComponentLayout, Network, build_network
from tnsearch.tn._registry import register

__all__ = ["CPLayer", "cp_decompose", "cp_rank"]


def cp_rank(dims: Sequence[int], rank: int) -> int:
    """Clip a CP rank to ``prod(dims) / max(dims)``, the rank that any tensor of this shape has
    at most (so an exact decomposition exists there)."""
    return min(rank, math.prod(dims) // max(dims))


#: Multiply-adds that CP-ALS may spend (sweeps x tensor size x rank).
ALS_WORK = 3e8


def cp_decompose(
    tensor: torch.Tensor, rank: int, n_iter_max: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    """CP-ALS of ``tensor`` (tensorly's ``parafac`` on numpy, SVD init).

    Returns:
        One ``(rank, size)`` factor per mode; the weights are spread evenly over the factors.
    """
    t = tensor.detach().cpu().double().numpy()
    import tensorly as tl  # imported here: it adds about a second to every start-up
    from tensorly.decomposition import parafac

    # An ALS sweep costs about size * rank: a large table (an embedding) gets fewer sweeps
    # (at least 5) instead of minutes; a data-aware fit refines the result anyway.
    n_iter_max = max(5, min(n_iter_max, int(ALS_WORK / max(t.size * rank, 1))))

    with tl.backend_context("numpy", local_threadsafe=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_eigenvecs larger than ..." (rank > size)
        weights, factors = parafac(
            tl.tensor(t),
            rank,
            n_iter_max=n_iter_max,
            init="svd",
            tol=1e-10,
            random_state=seed,
            l2_reg=1e-12,
        )
    weights = np.asarray(weights)
    scale = np.abs(weights) ** (1.0 / len(factors))
    out = []
    for j, f in enumerate(factors):
        f = np.asarray(f) * scale  # (size, rank)
        if j == 0:
            f = f * np.sign(weights + (weights == 0))
        out.append(torch.from_numpy(np.ascontiguousarray(f.T)))
    return out


@register("cp")
class CPLayer(TNLayer):
    """CP layer (Lebedev's 1x1 / depthwise / 1x1 for Conv2d); see the module docstring."""

    conv_paths = ("factorized",)
    exact_at_max_rank = False  # ALS does not reach the exact CP at the maximal rank in general

    @classmethod
    def bond_count(cls, order: int, conv: bool) -> int:
        return 1

    @classmethod
    def clip_rank(cls, in_modes, out_modes, kernel, rank):
        dims = (*out_modes, *in_modes, *([kernel] if kernel > 1 else []))
        return (cp_rank(dims, rank[0]),)

    def build_network(self) -> Network:
        d = len(self.in_modes)
        outs = tuple(f"n{k}" for k in range(d))
        ins = tuple(f"m{k}" for k in range(d))
        sizes = {"r": self.rank[0], "k": self.geometry.kernel}
        sizes.update(zip(outs, self.out_modes, strict=True))
        sizes.update(zip(ins, self.in_modes, strict=True))
        kernel = ("k",) if self.geometry.conv else ()
        factors = {f"factor_{i}": ("r", i) for i in (*outs, *ins, *kernel)}
        return build_network(factors, sizes, ins, outs, kernel)

    def decompose(self, weight: torch.Tensor) -> list[torch.Tensor]:
        return cp_decompose(weight, self.rank[0])

    def bond_layout(self) -> ComponentLayout:
        return ComponentLayout("r")  # every factor is (r, size)

    # --- factorized path: 1x1 -> depthwise -> 1x1 ------------------------------------------------

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        d, r = len(self.in_modes), self.rank[0]
        ins = tuple(f"factor_m{k}" for k in range(d))
        outs = tuple(f"factor_n{k}" for k in range(d))
        self._seq = ConvSequence(ins, ("r",), outs, ("r",), r, r)

    def _path_factorized(self, x: torch.Tensor) -> torch.Tensor:
        g, r = self.geometry, self.rank[0]
        w = self.factor_k.reshape(r, 1, *g.kernel_size)  # (R, 1, kh, kw) depthwise filters

        def core(y: torch.Tensor) -> torch.Tensor:
            return F.conv2d(y, w, None, g.stride, g.padding, g.dilation, groups=r)

        return run_sequence(self, x, self._seq, core)

    def _macs_factorized(self, b: int, l: int, shape: tuple[int, ...]) -> int:
        return sequence_macs(self, self._seq, shape, self.rank[0] * self.geometry.kernel)
