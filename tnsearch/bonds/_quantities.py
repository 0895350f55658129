"""Bond quantities of one profile option: what the spectra say about a group's layers, as built.

Each bond of a tensorized layer bounds the rank of one matricization of the weight tensor
``(n.., m.., [k])`` (:meth:`~tnsearch.bonds.BondMethod.cuts`: the modes on one side of an MPO or
tree bond, a Tucker mode; CP's rank bounds every matricization, of which it takes the other
topologies' cuts: each mode, each output-input pair, the chain's prefixes, outputs | inputs).
The spectrum of that matricization of the *dense* weight says, before anything is built, what
the bond's size leaves out; the spectra of the built layer's own bonds say how much of each bond
it uses. :func:`option_quantities` gives, for a group's layers:

==================  =============================================================================
``discarded``       the fraction of the dense unfolding's squared singular values beyond the
                    kept rank, summed over the layer's cuts (for MPO, tree and Tucker an upper
                    bound of the best network's relative squared weight error at these ranks:
                    TT-SVD, hierarchical SVD and HOSVD reach it)
``discarded_max``   the same, the largest over the cuts (a lower bound of that error, any
                    topology: the network's unfolding has at most the bond's rank)
``discarded_white`` ``discarded`` of the input-whitened weight ``W C^(1/2)`` (``C``: the
                    layer's input covariance, as the data-aware fit weighs it), whose norm is
                    the output energy on the calibration inputs
``discarded_white_max``  the same, the largest over the cuts
``entropy_dense``   the dense unfolding's entropy (nats), mean over the cuts
``rank_needed``     the dense unfolding's effective rank at 99% energy over the kept rank,
                    mean over the cuts (above 1: the bond cuts into the weight's energy)
``entropy``         the built layer's bond entropy (nats, ``bonds.analyze``), mean over bonds
``effective_rank``  the built layer's effective rank at 99% energy, mean over bonds
``rank_used``       that effective rank over the bond's size, mean over bonds
==================  =============================================================================

A group's value is the mean of its layers' weighted by their dense weights' sizes. The spectra of
unfoldings whose smaller side exceeds :data:`FULL_SIDE` (an embedding's order-2 unfolding) are
its leading values by subspace iteration on the Gram matrix (matrix products only), the rest
known through its total; a :class:`SpectrumCache` keeps each computed spectrum and whitening, so
the options of one group share them (the ranks of one order, the bonds two topologies share).

>>> import torch
>>> from torch import nn
>>> from tnsearch import bonds, tn
>>> _ = torch.manual_seed(0)
>>> dense = nn.Linear(64, 32)
>>> layer = tn.tensorize(dense, topology="mpo", rank=8, order=2)
>>> q = bonds.option_quantities({"fc": layer}, {"fc": dense})
>>> sorted(q)[:3], 0.0 < q["discarded"] < 1.0
(['discarded', 'discarded_max', 'effective_rank'], True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnsearch import tn
from tnsearch.bonds._methods import Cut, method
from tnsearch.bonds._model import analyze_layer
from tnsearch.bonds._spectrum import effective_rank

__all__ = [
    "FULL_SIDE",
    "QUANTITIES",
    "Spectrum",
    "SpectrumCache",
    "option_quantities",
    "unfolding_spectrum",
]

#: An unfolding whose smaller side is at most this gets its whole spectrum (eigenvalues of the
#: Gram matrix); a larger one its leading values (subspace iteration).
FULL_SIDE = 1024
#: The energy of the effective ranks.
ENERGY = 0.99
#: The fewest leading values a partial spectrum holds.
PARTIAL = 256
#: Subspace iterations of a partial spectrum (each one product with the Gram matrix).
ITERATIONS = 4

#: Each quantity and what it is (see the module docstring).
QUANTITIES = {
    "discarded": "dense energy beyond the kept ranks, summed over the bonds",
    "discarded_max": "dense energy beyond the kept rank, the largest bond",
    "discarded_white": "input-whitened energy beyond the kept ranks, summed over the bonds",
    "discarded_white_max": "input-whitened energy beyond the kept rank, the largest bond",
    "entropy_dense": "entropy of the dense weight across each bond (nats), mean",
    "rank_needed": "dense effective rank (99%) over the kept rank, mean over the bonds",
    "entropy": "entropy of the built layer's bonds (nats), mean",
    "effective_rank": "effective rank (99%) of the built layer's bonds, mean",
    "rank_used": "effective rank over size of the built layer's bonds, mean",
}


@dataclass(frozen=True)
class Spectrum:
    """Squared singular values of one matricization: all of them, or the leading ones and the
    total.

    Attributes:
        values: ``(K,)`` float64, descending.
        total: the sum of all of them (the squared Frobenius norm).
        size: how many there are (the matrix's smaller side); ``K < size``: a partial spectrum.
    """

    values: Tensor
    total: float
    size: int

    def left_out(self, rank: int) -> float:
        """The fraction of the total beyond the leading ``rank`` values."""
        if rank >= self.size or self.total <= 0.0:
            return 0.0
        if rank > len(self.values):
            raise ValueError(f"rank: {rank} is beyond the {len(self.values)} values known")
        return max(self.total - float(self.values[:rank].sum()), 0.0) / self.total

    def entropy(self) -> float:
        """``-sum p ln p`` of the normalized values (nats); the unknown rest of a partial
        spectrum counts as spread evenly over its values."""
        if self.total <= 0.0:
            return 0.0
        p = self.values / self.total
        p = p[p > 0]
        h = float(-(p * p.log()).sum())
        rest, hidden = 1.0 - float(p.sum()), self.size - len(self.values)
        if rest > 1e-12 and hidden > 0:
            h -= rest * math.log(rest / hidden)
        return h

    def effective_rank(self, energy: float = ENERGY) -> float:
        """The fewest leading values holding ``energy`` of the total (beyond the known values
        of a partial spectrum: the rest counts as spread evenly)."""
        if self.total <= 0.0:
            return 1.0
        if len(self.values) == self.size:
            return float(effective_rank([math.sqrt(v / self.total) for v in self.values], energy))
        known = self.values.cumsum(0) / self.total
        reached = torch.nonzero(known >= energy - 1e-12)
        if len(reached):
            return float(reached[0, 0]) + 1.0
        rest = (1.0 - float(known[-1])) / (self.size - len(self.values))
        return len(self.values) + math.ceil((energy - float(known[-1])) / max(rest, 1e-300))


def unfolding_spectrum(tensor: Tensor, axes: Sequence[int], *, rank: int = 0) -> Spectrum:
    """The spectrum of ``tensor`` matricized with ``axes`` as rows (float64).

    A matrix whose smaller side is at most :data:`FULL_SIDE` gets every value (the eigenvalues
    of its Gram matrix); a larger one its leading ``max(PARTIAL, 2 rank + 16)`` values.
    """
    t = tensor.detach().to("cpu", torch.float64)
    rest = [a for a in range(t.dim()) if a not in axes]
    a = t.permute(*axes, *rest).reshape(math.prod(t.shape[i] for i in axes), -1)
    if a.shape[0] > a.shape[1]:
        a = a.T
    n = a.shape[0]
    gram = a @ a.T  # (n, n), n the smaller side
    total = float(gram.diagonal().sum())
    if n <= FULL_SIDE:
        values = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0.0)
    else:
        values = _leading(gram, min(n, max(PARTIAL, 2 * rank + 16)))
    return Spectrum(values, total, n)


def _orthonormal(y: Tensor) -> Tensor:
    """An orthonormal basis ``(n, k')`` of the columns of ``y`` ``(n, k)``, from the small Gram
    matrix ``y^T y`` (no QR of the tall matrix: matrix products and a small eigh)."""
    values, vectors = torch.linalg.eigh(y.T @ y)
    keep = values > values.max().clamp(min=1e-300) * 1e-13
    return (y @ vectors[:, keep]) / values[keep].sqrt()


def _leading(gram: Tensor, k: int) -> Tensor:
    """The leading ``k`` eigenvalues of a PSD ``gram`` ``(n, n)``, descending (subspace
    iteration from a seeded random start, then Rayleigh-Ritz)."""
    g = torch.Generator().manual_seed(0)
    y = gram @ torch.randn(gram.shape[0], k, generator=g, dtype=gram.dtype)
    for _ in range(ITERATIONS):
        y = gram @ _orthonormal(y)
    q = _orthonormal(_orthonormal(y))
    values = torch.linalg.eigvalsh(q.T @ gram @ q).flip(0).clamp(min=0.0)
    # directions too weak to resolve (below ~1e-7 of the largest value) count as zeros
    return F.pad(values, (0, k - len(values)))


def _matrix(dense: nn.Module) -> Tensor:
    """The dense weight as the ``(out, in * kh * kw)`` matrix a layer tensorizes (an embedding's
    table ``(V, D)`` as ``(D, V)``; Hugging Face's Conv1D ``(in, out)`` transposed)."""
    w = dense.weight.detach().to("cpu", torch.float64)
    if isinstance(dense, nn.Linear | nn.Conv2d):
        return w.reshape(w.shape[0], -1)
    return w.t()


def _tensor(layer: tn.TNLayer, matrix: Tensor) -> Tensor:
    """``matrix`` ``(O, I * K)`` zero-padded and reshaped as ``layer``'s weight tensor."""
    g = layer.geometry
    w = matrix.reshape(g.out_features, g.in_features, g.kernel)
    n, m = layer.out_features_padded, layer.in_features_padded
    w = F.pad(w, (0, 0, 0, m - g.in_features, 0, n - g.out_features))
    return w.reshape(*layer.out_modes, *layer.in_modes, *((g.kernel,) if g.conv else ()))


@dataclass
class _Unfoldings:
    """One weight tensor and the spectra of its matricizations found so far."""

    tensor: Tensor
    found: dict[tuple[int, ...], Spectrum] = field(default_factory=dict)

    def spectrum(self, axes: Sequence[int], rank: int) -> Spectrum:
        # a matricization and its complement have one spectrum: keyed by the side without axis 0
        side = tuple(sorted(axes))
        if 0 in side:
            side = tuple(a for a in range(self.tensor.dim()) if a not in side)
        known = self.found.get(side)
        if known is None or (len(known.values) < known.size and len(known.values) < rank + 16):
            known = self.found[side] = unfolding_spectrum(self.tensor, side, rank=rank)
        return known


@dataclass
class SpectrumCache:
    """Spectra and whitenings already computed, shared by the options of one set of dense layers
    (one per group while profiling: the keys are layer names)."""

    unfoldings: dict[tuple, _Unfoldings] = field(default_factory=dict)
    whitening: dict[str, Tensor] = field(default_factory=dict)

    def of(
        self,
        name: str,
        layer: tn.TNLayer,
        dense: nn.Module,
        stats: tn.InputStats | None,
    ) -> _Unfoldings:
        """The unfoldings of ``dense``'s weight (whitened by ``stats`` when given) in
        ``layer``'s modes."""
        key = (name, layer.in_modes, layer.out_modes, stats is not None)
        found = self.unfoldings.get(key)
        if found is None:
            matrix = _matrix(dense)
            if stats is not None:
                s = self.whitening.get(name)
                if s is None:
                    has_bias = getattr(dense, "bias", None) is not None
                    s = self.whitening[name] = stats.whitening(centered=has_bias)
                matrix = matrix * s[None, :] if s.dim() == 1 else matrix @ s
            found = self.unfoldings[key] = _Unfoldings(_tensor(layer, matrix))
        return found


def _cuts(layer: tn.TNLayer) -> list[Cut]:
    """The layer's cuts, each matricization (and rank) once."""
    found = method(layer)
    if found is None:
        return []
    seen, out = set(), []
    net = layer.network
    labels = net.out_idx + net.in_idx + net.kernel_idx
    for cut in found.cuts(layer):
        side = frozenset(cut.modes)
        key = (min(side, frozenset(labels) - side, key=sorted), cut.rank)
        if key not in seen:
            seen.add(key)
            out.append(cut)
    return out


def _dense_part(unf: _Unfoldings, layer: tn.TNLayer, cuts: list[Cut]) -> list[Spectrum]:
    net = layer.network
    labels = net.out_idx + net.in_idx + net.kernel_idx
    return [unf.spectrum([labels.index(m) for m in c.modes], c.rank) for c in cuts]


def layer_quantities(
    name: str,
    layer: tn.TNLayer | tn.TNEmbedding,
    dense: nn.Module,
    stats: tn.InputStats | None = None,
    *,
    built: bool = True,
    cache: SpectrumCache | None = None,
) -> dict[str, float]:
    """The quantities of one tensorized layer (see the module docstring); empty for a layer
    whose topology declares no bonds, or has none (an order-1 MPO)."""
    inner = layer.layer if isinstance(layer, tn.TNEmbedding) else layer
    cuts = _cuts(inner)
    if not cuts:
        return {}
    cache = cache if cache is not None else SpectrumCache()
    out: dict[str, float] = {}
    raw = _dense_part(cache.of(name, inner, dense, None), inner, cuts)
    left = [s.left_out(c.rank) for s, c in zip(raw, cuts, strict=True)]
    out["discarded"], out["discarded_max"] = sum(left), max(left)
    out["entropy_dense"] = _mean(s.entropy() for s in raw)
    out["rank_needed"] = _mean(s.effective_rank() / c.rank for s, c in zip(raw, cuts, strict=True))
    if stats is not None and stats.count > 0:
        white = _dense_part(cache.of(name, inner, dense, stats), inner, cuts)
        left = [s.left_out(c.rank) for s, c in zip(white, cuts, strict=True)]
        out["discarded_white"], out["discarded_white_max"] = sum(left), max(left)
    if built:
        found = analyze_layer(inner, name=name, energy=ENERGY).bonds
        if found:
            out["entropy"] = _mean(b.entropy for b in found)
            out["effective_rank"] = _mean(b.effective_rank for b in found)
            out["rank_used"] = _mean(b.effective_rank / max(b.size, 1) for b in found)
    return out


def option_quantities(
    layers: Mapping[str, tn.TNLayer | tn.TNEmbedding],
    dense: Mapping[str, nn.Module],
    stats: Mapping[str, tn.InputStats] | None = None,
    *,
    built: bool = True,
    cache: SpectrumCache | None = None,
) -> dict[str, float]:
    """The bond quantities of one option: a group's ``layers`` as built, against the ``dense``
    modules they replace (same names), aggregated over the layers (see the module docstring).

    Args:
        layers: the tensorized layers (``TNLayer`` or ``TNEmbedding``), by name.
        dense: the dense modules they replace (``nn.Linear``, ``nn.Conv2d``, ``nn.Embedding``,
            Hugging Face's Conv1D), by the same names.
        stats: the layers' calibration input moments (``tn.InputStats``); without them (or
            for a layer they lack) there are no whitened quantities.
        built: also the quantities of the built layers' own bonds (``entropy``,
            ``effective_rank``, ``rank_used``); False when ``layers`` are shells (random
            factors: only their modes and ranks count), e.g. to predict before building.
        cache: spectra already computed for these dense modules (see :class:`SpectrumCache`).

    Returns:
        Quantity name -> value: the mean over the layers, weighted by their dense weights'
        sizes; a quantity only some layers have is averaged over those.
    """
    cache = cache if cache is not None else SpectrumCache()
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for name, layer in layers.items():
        s = None if stats is None else stats.get(name)
        found = layer_quantities(name, layer, dense[name], s, built=built, cache=cache)
        w = float(dense[name].weight.numel())
        for key, value in found.items():
            sums[key] = sums.get(key, 0.0) + w * value
            weights[key] = weights.get(key, 0.0) + w
    return {k: sums[k] / weights[k] for k in QUANTITIES if k in sums and weights[k] > 0}


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
