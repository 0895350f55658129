"""What the analysis reports: a bond's normalized spectrum, entropy and effective rank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RTOL", "Bond", "LayerBonds", "check_energy", "effective_rank", "entropy", "normalize"]

#: Singular values below ``RTOL`` times the weight's Frobenius norm count as zero.
RTOL = 1e-10


def check_energy(energy: float) -> float:
    """``energy`` as a float in (0, 1]; ``ValueError("energy: ...")`` otherwise."""
    if isinstance(energy, bool) or not isinstance(energy, (int, float)):
        raise ValueError(f"energy: must be a number in (0, 1], got {energy!r}")
    if not 0.0 < float(energy) <= 1.0:
        raise ValueError(f"energy: must be in (0, 1], got {energy!r}")
    return float(energy)


def normalize(values: Tensor) -> tuple[float, ...]:
    """Absolute values ``(r,)``, descending, scaled to a sum of squares of 1 (all zero: zeros)."""
    s = values.detach().to(torch.float64).abs().sort(descending=True).values
    total = float(s.square().sum().sqrt())
    return tuple(float(v) for v in (s / total if total > 0 else s))


def entropy(values: Sequence[float]) -> float:
    """Von Neumann entropy in nats, ``-sum p ln p`` with ``p = s**2`` (normalized values)."""
    return float(-sum(v * v * math.log(v * v) for v in values if v > 0.0))


def effective_rank(values: Sequence[float], energy: float) -> int:
    """The fewest leading values whose squares sum to at least ``energy`` (normalized values).

    Values below :data:`RTOL` never count, so ``energy=1.0`` gives the numerical rank. At least 1.
    """
    energy = check_energy(energy)
    nonzero = sum(1 for v in values if v > RTOL)
    tail = [0.0] * (len(values) + 1)  # tail[r]: energy of the values from r on, summed exactly
    for r in range(len(values) - 1, -1, -1):
        tail[r] = tail[r + 1] + values[r] ** 2
    allowed = 1.0 - energy
    r = next((r for r, t in enumerate(tail) if t <= allowed), len(values))
    return max(1, min(r, nonzero))


@dataclass(frozen=True)
class Bond:
    """One bond (MPO, tree, Tucker mode) or the CP component index of a tensorized layer.

    Attributes:
        index: the bond's index name in the layer's network (``r1``, ``e4``, ``a_n0``, ``n0``...).
        position: its place in ``layer.rank``.
        modes: the weight's modes on one side of the bond (the side away from the network's
            root: the left of an MPO bond, the subtree of a tree edge, a Tucker mode).
        size: its dimension now (``layer.rank[position]``).
        singular_values: descending, normalized so their squares sum to 1 (the weight's
            Frobenius energy); for CP the component norms, normalized the same way.
        entropy: von Neumann entropy of the squared values, in nats (0 for one value).
        rank: numerical rank (values above :data:`RTOL`).
        energy: the energy of ``effective_rank``.
        effective_rank: the fewest leading values that keep ``energy`` of the squares.
    """

    index: str
    position: int
    modes: tuple[str, ...]
    size: int
    singular_values: tuple[float, ...]
    entropy: float
    rank: int
    energy: float
    effective_rank: int

    @classmethod
    def from_values(
        cls,
        index: str,
        position: int,
        modes: Sequence[str],
        size: int,
        values: Tensor,
        energy: float,
    ) -> Bond:
        """Normalize raw singular values ``(r,)`` and derive the rest."""
        s = normalize(values)
        return cls(
            index,
            position,
            tuple(modes),
            int(size),
            s,
            entropy(s),
            sum(1 for v in s if v > RTOL),
            energy,
            effective_rank(s, energy),
        )

    @property
    def label(self) -> str:
        """The modes on one side of the bond, e.g. ``"m0 n0"``."""
        return " ".join(self.modes) or self.index

    def rank_at(self, energy: float) -> int:
        """The effective rank at another ``energy``."""
        return effective_rank(self.singular_values, energy)

    def kept(self, rank: int) -> float:
        """The fraction of the energy that the leading ``rank`` values hold."""
        return float(sum(v * v for v in self.singular_values[:rank]))


@dataclass(frozen=True)
class LayerBonds:
    """The bonds of one tensorized layer.

    Attributes:
        name: the layer's module name.
        topology: its topology (``mpo``, ``tree``, ``tucker``, ``cp``).
        kind: ``"singular values"`` (canonical-form spectra) or ``"component norms"`` (CP).
        rank: the layer's bond dimensions (``layer.rank``).
        norm: the Frobenius norm of the weight tensor the factors hold (padding included); for
            CP the norm of the component weights.
        padded: whether the layer pads its dimensions (then the spectra include the padding).
        bonds: one per entry of ``rank``.
    """

    name: str
    topology: str
    kind: str
    rank: tuple[int, ...]
    norm: float
    padded: bool
    bonds: tuple[Bond, ...]
