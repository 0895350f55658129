"""The factorized convolution sequence shared by Tucker-2 and CP layers.

``x (B, C, H, W)`` -> input stage (channel factors, a 1x1 convolution) ``(B, R_in, H, W)`` -> core
convolution (dense for Tucker-2, depthwise for CP) ``(B, R_out, Ho, Wo)`` -> output stage
(channel factors, a 1x1 convolution) ``(B, O, Ho, Wo)``. The stages contract the per-mode factors
with opt_einsum's order, so order > 1 (Kronecker / Khatri-Rao structured 1x1) works too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from tnsearch.tn._base import TNLayer
from tnsearch.tn._contract import Contraction, contracted_size, run_contraction

__all__ = ["ConvSequence", "run_sequence", "sequence_macs"]


class ConvSequence(NamedTuple):
    """Which factors form the stages of a factorized convolution.

    Attributes:
        in_names: factors contracted with the input's ``m_*`` indices (may be empty).
        mid_in: indices of the input stage's result, e.g. ``("a_m0", "m1")`` or ``("r",)``.
        out_names: factors producing the ``n_*`` indices from ``mid_out`` (may be empty).
        mid_out: indices the output stage contracts (the core convolution's channels).
        r_in, r_out: channels into and out of the core convolution.
    """

    in_names: tuple[str, ...]
    mid_in: tuple[str, ...]
    out_names: tuple[str, ...]
    mid_out: tuple[str, ...]
    r_in: int
    r_out: int


def _contractions(
    layer: TNLayer, seq: ConvSequence, b: int | torch.SymInt, hw: int, howo: int
) -> tuple[Contraction | None, Contraction | None]:
    net = layer.network
    b = contracted_size(b)  # the stage contractions run on any batch (see network_contraction)
    m, r_out = layer.in_features_padded, seq.r_out
    p_in = p_out = None
    if seq.in_names:
        p_in = layer._stage_contraction(
            "seq_in",
            (b, m, hw),
            ("b", *net.in_idx, "l"),
            seq.in_names,
            ("b", *seq.mid_in, "l"),
            (("b", b), ("l", hw)),
        )
    if seq.out_names:
        p_out = layer._stage_contraction(
            "seq_out",
            (b, r_out, howo),
            ("b", *seq.mid_out, "l"),
            seq.out_names,
            ("b", *net.out_idx, "l"),
            (("b", b), ("l", howo)),
        )
    return p_in, p_out


def run_sequence(
    layer: TNLayer,
    x: torch.Tensor,
    seq: ConvSequence,
    core: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Forward pass of the sequence; ``core`` maps ``(B, R_in, H, W)`` to ``(B, R_out, Ho, Wo)``."""
    g = layer.geometry
    b, c, h, w = x.shape
    m, n = layer.in_features_padded, layer.out_features_padded
    ho, wo = g.out_hw(h, w)
    p_in, p_out = _contractions(layer, seq, b, h * w, ho * wo)
    if m > c:
        x = F.pad(x, (0, 0, 0, 0, 0, m - c))
    y = x
    if p_in is not None:
        y = run_contraction(
            p_in, (x.reshape(b, m, h * w), *(getattr(layer, k) for k in seq.in_names))
        )
        y = y.reshape(b, -1, h, w)  # (B, R_in, H, W)
    z = core(y)  # (B, R_out, Ho, Wo)
    if p_out is not None:
        z = run_contraction(
            p_out, (z.reshape(b, -1, ho * wo), *(getattr(layer, k) for k in seq.out_names))
        )
    if n > g.out_features:
        z = z.reshape(b, n, ho * wo)[:, : g.out_features]
    return layer._bias_add(z.reshape(b, g.out_features, ho, wo), 1)


def sequence_macs(layer: TNLayer, seq: ConvSequence, shape: tuple[int, ...], core: int) -> int:
    """Multiply-adds of the sequence for an input ``shape``; ``core``: the core conv's per pixel."""
    b = shape[0] if len(shape) == 4 else 1
    ho, wo = layer.geometry.out_hw(shape[-2], shape[-1])
    p_in, p_out = _contractions(layer, seq, b, shape[-2] * shape[-1], ho * wo)
    stages = sum(p.macs for p in (p_in, p_out) if p is not None)
    return stages + b * ho * wo * core
