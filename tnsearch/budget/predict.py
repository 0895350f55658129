"""Predicting an option's output error from the spectra of the whitened weight, in milliseconds.

A profile option (a group's layers at one topology, order and rank) costs a data-aware fit and a
zero-shot evaluation of the whole model to measure. Its output error can be predicted without
either: the relative output error of a weight approximation ``W'`` on the calibration inputs is
``||(W - W') L||^2 / ||W L||^2`` with ``C = L L^T`` the inputs' covariance (the whitened weight
error, `tn.fit_to_inputs`). Every bond of a tree-shaped network (MPO chain, Tucker star,
hierarchical Tucker tree) cuts the weight tensor's modes into two sides; the squared singular
values of the whitened weight's unfolding across that cut, beyond the bond's rank, are energy no
network with that rank can keep there, and their sum over the bonds bounds the error of the
sequential SVDs (TT-SVD, HOSVD, hierarchical SVD) from above. So one eigendecomposition per cut
serves every rank, and the cuts are shared by every topology and order that makes them.

CP has no bonds of that kind (one component index), but every unfolding of a CP tensor of rank R
has rank at most R: the energies beyond R of the unfoldings an MPO chain cuts (the first k
input/output mode pairs against the rest) stand in for it, what an MPO of uniform rank R is
predicted to lose (CP usually loses more: the profile's measured options correct the scale per
topology).

For an embedding the input is a one-hot token, so whitening weighs each row of the table by the
square root of its token's frequency (`tn.InputStats` counts them, plus the smoothing of the fit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from tnsearch import tn
from tnsearch.tn import ComponentLayout, TreeLayout
from tnsearch.tn._calibrate import UNSEEN
from tnsearch.tn._network import Network

__all__ = ["Spectra", "predicted_errors", "whitened_weight"]

#: Ridge added to the covariance before its Cholesky factor (as `tn.fit_to_inputs` does).
DAMPING = 1e-4


def whitened_weight(module: nn.Module, stats: tn.InputStats | None) -> torch.Tensor:
    """The dense weight of `module` as the tensorized layer sees it, times the inputs' whitening.

    Returns the weight in `module`'s own layout (``(O, I[, kh, kw])`` for Linear and Conv2d,
    ``(V, D)`` for an embedding), float64 on the CPU, with ``W L`` applied along its inputs.
    """
    w = module.weight.detach().to("cpu", torch.float64)
    if isinstance(module, nn.Embedding):
        if stats is None or stats.first is None:
            return w
        counts = stats.first.double() + UNSEEN  # (V,)
        return w * counts.sqrt()[:, None]  # rows of the table weighed by their tokens
    if stats is None or stats.second is None:
        return w
    flat = w.reshape(w.shape[0], -1)  # (O, F)
    c = stats.covariance(centered=getattr(module, "bias", None) is not None)
    c = c + DAMPING * c.diagonal().mean().clamp(min=1e-12) * torch.eye(c.shape[0]).double()
    chol = torch.linalg.cholesky(c)  # C = L L^T
    return (flat @ chol).reshape(w.shape)


class Spectra:
    """The unfolding spectra of one layer's whitened weight, computed once per cut.

    Args:
        module: the dense layer (Linear, Conv2d, Embedding; a Hugging Face Conv1D as its Linear).
        stats: its calibration input moments (None: the raw weight).
    """

    def __init__(self, module: nn.Module, stats: tn.InputStats | None) -> None:
        self.module = module
        self.weight = whitened_weight(module, stats)
        self._tensors: dict[tuple, torch.Tensor] = {}  # (in_modes, out_modes) -> weight tensor
        self._spectra: dict[tuple, torch.Tensor] = {}  # (modes, cut) -> sorted sigma^2
        self.total = float((self.weight**2).sum().clamp(min=1e-300))

    def error(self, shell: nn.Module) -> float:
        """The predicted relative output error of the option `shell` (a tensorized layer of any
        initialization: only its structure and clipped ranks are read), >= 0."""
        layer = shell.layer if isinstance(shell, tn.TNEmbedding) else shell
        tensor, names = self._tensor(layer, embedding=isinstance(shell, tn.TNEmbedding))
        layout = layer.bond_layout()
        key = (layer.in_modes, layer.out_modes)
        if isinstance(layout, TreeLayout):
            cuts = [
                (_side(layer.network, b), r) for b, r in zip(layout.bonds, layer.rank, strict=True)
            ]
        elif isinstance(layout, ComponentLayout):
            cuts = [(side, layer.rank[0]) for side in _chain_cuts(layer.network)]
        else:
            raise ValueError(f"{type(layer).__name__}: declares no bond layout to predict from")
        distinct: dict[tuple[str, ...], int] = {}  # a cut and its complement are one cut; two
        for side, rank in cuts:  # bonds across one cut: the smaller rank holds
            rest = tuple(sorted(set(names) - set(side)))
            cut = min(tuple(sorted(side)), rest)
            distinct[cut] = min(rank, distinct.get(cut, rank))
        lost = sum(self._beyond(key, tensor, names, cut, r) for cut, r in distinct.items())
        return lost / self.total  # an upper bound of the sequential SVDs (may exceed 1)

    def _tensor(self, layer: tn.TNLayer, *, embedding: bool) -> tuple[torch.Tensor, tuple]:
        """The whitened weight as ``(n_1..n_d, m_1..m_d[, k])`` and those index names."""
        net = layer.network
        names = (*net.out_idx, *net.in_idx, *net.kernel_idx)
        key = (layer.in_modes, layer.out_modes)
        if key not in self._tensors:
            w = self.weight.t() if embedding else self.weight  # an embedding is Linear(V -> D)
            if not embedding and not isinstance(self.module, nn.Linear | nn.Conv2d):
                w = w.t()  # Conv1D stores (in, out)
            self._tensors[key] = layer._weight_tensor(w)
        return self._tensors[key], names

    def _beyond(self, key, tensor, names, side: tuple[str, ...], rank: int) -> float:
        """Energy of the unfolding across `side` beyond its `rank` leading singular values."""
        cut = tuple(sorted(side))
        if (key, cut) not in self._spectra:
            self._spectra[(key, cut)] = _spectrum(tensor, [names.index(i) for i in cut])
        s2 = self._spectra[(key, cut)]
        return float(s2[rank:].sum()) if rank < len(s2) else 0.0


def _spectrum(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Squared singular values (descending) of `tensor` unfolded with the `rows` modes as rows,
    from the Gram matrix of the smaller side."""
    cols = [j for j in range(tensor.dim()) if j not in rows]
    m = tensor.permute(*rows, *cols).reshape(math.prod(tensor.shape[j] for j in rows), -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).clamp(min=0).flip(0)


def _side(net: Network, bond: str) -> tuple[str, ...]:
    """The open modes on one side of `bond`: the bond itself when it is an open mode (a mode
    that keeps no factor), else those reachable from one of its two factors without it."""
    open_idx = set(net.out_idx + net.in_idx + net.kernel_idx)
    if bond in open_idx:
        return (bond,)
    holders = [k for k, f in enumerate(net.factors) if bond in f]
    seen, todo = {holders[0]}, [holders[0]]
    while todo:
        k = todo.pop()
        for index in net.factors[k]:
            if index == bond or index in open_idx:
                continue
            for j, f in enumerate(net.factors):
                if j not in seen and index in f:
                    seen.add(j)
                    todo.append(j)
    return tuple(i for k in seen for i in net.factors[k] if i in open_idx)


def _chain_cuts(net: Network) -> list[tuple[str, ...]]:
    """The cuts of an MPO chain over the weight's modes: the first k (output, input) mode pairs
    against the rest; for one pair the outputs against the inputs; the kernel on its own."""
    pairs = list(zip(net.out_idx, net.in_idx, strict=True))
    if len(pairs) == 1:
        cuts = [(pairs[0][0],)]
    else:
        cuts = [tuple(i for p in pairs[:k] for i in p) for k in range(1, len(pairs))]
    return cuts + [tuple(net.kernel_idx)] * bool(net.kernel_idx)


def predicted_errors(
    shells: Mapping[str, nn.Module], spectra: Mapping[str, Spectra]
) -> dict[str, float]:
    """Each layer's predicted relative output error for an option's `shells` (layer name ->
    tensorized layer)."""
    return {name: spectra[name].error(shell) for name, shell in shells.items()}
