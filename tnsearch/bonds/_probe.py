"""Probing a bond: what each index of one bond of a tensorized layer carries on real inputs.

In the canonical basis of bond ``K`` (the SVD of the weight matricized across it; for CP its
components, by norm) the weight is a sum over the bond's index, ``W = sum_k s_k u_k (x) v_k``,
and so is the layer's output: ``y = b + sum_k y_k`` with ``y_k = s_k (u_k (x) v_k) x``. ``y_k`` is
what flows through index ``k``. In the layer's own contraction it is carried by the intermediate
that holds bond ``K`` open, which per topology is:

- MPO: the input contracted with cores ``0..p`` (its modes ``m_0..m_p``), ``(batch, n_0..n_p,
  m_{p+1}.., r_{p+1})``: bond ``p`` carries, beside the outputs of the cores before it, what
  goes on to the cores after it;
- Tucker: the input contracted with the factor of mode ``m_j``, ``(batch, .., a_{m_j}, ..)``
  (for Tucker-2 the first 1x1 convolution's output channels); an output mode's bond
  ``a_{n_j}`` is the core's output before the last factor;
- CP: the input contracted with the Khatri-Rao product of the input factors, ``(batch, r)``
  (Lebedev's first 1x1 convolution): each component is one scalar per input position;
- tree: the input contracted with the subtree under an edge: the edge's index beside the
  subtree's outputs.

As these intermediates hold other open indices too, the activation of index ``k`` on one input
is the norm ``||y_k||``: how much of the layer's output goes through it (``sum_k y_k = W x``
exactly). For a convolution it is the root mean square of that norm over the output positions;
an embedding's input is one token. Indices are ordered by ``s_k`` (index 0: the bond's strongest
direction), not by the layer's stored gauge, which is arbitrary up to an invertible matrix on
the bond.

>>> import torch
>>> from torch import nn
>>> from tnsearch import bonds, tn
>>> _ = torch.manual_seed(0)
>>> layer = tn.tensorize(nn.Linear(12, 6), topology="tucker", rank=2, order=1)
>>> bonds.bond_activations(layer, torch.randn(5, 12), 1).shape  # bond 1: the input mode m0
torch.Size([5, 2])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tnsearch import tn
from tnsearch.bonds._methods import BondTerms, method

__all__ = ["bond_activations", "bond_terms", "probe"]

#: Entries of the per-index outputs computed at once (rows x indices x outputs).
CHUNK = 2**22


def _inner(layer: tn.TNLayer | tn.TNEmbedding) -> tn.TNLayer:
    return layer.layer if isinstance(layer, tn.TNEmbedding) else layer


def bond_terms(layer: tn.TNLayer | tn.TNEmbedding, position: int) -> BondTerms:
    """``layer``'s weight as a sum over the index of bond ``position`` (see the module docstring).

    Raises:
        ValueError: ``bond: ...`` for a bond that ``layer`` does not have, ``topology: ...``
            for a topology without a bond method.
    """
    inner = _inner(layer)
    found = method(inner)
    if found is None:
        raise ValueError(f"topology: no bond analysis for {inner.topology!r}")
    count = len(inner.rank)
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < count:
        valid = f"0-{count - 1}" if count else "none"
        raise ValueError(f"bond: the layer's bonds are {valid}, got {position!r}")
    return found.terms(inner, position)


def _split(layer: tn.TNLayer, terms: BondTerms):
    """The terms as ``U (K, |A_out|, |A_in|)``, ``V (K, |B_out|, |B_in|)`` and how the modes
    sit: A is the bond's side, B the rest; in: input modes (and the kernel), out: outputs."""
    net = layer.network
    ins = set(net.in_idx + net.kernel_idx)
    a_in = [m for m in terms.side if m in ins]
    a_out = [m for m in terms.side if m not in ins]
    b_in = [m for m in terms.rest if m in ins]
    b_out = [m for m in terms.rest if m not in ins]
    size = dict(net.sizes)

    def matrix(t: Tensor, modes: tuple[str, ...], out: list[str], inp: list[str]) -> Tensor:
        t = t.permute(0, *(1 + modes.index(m) for m in out + inp))
        return t.reshape(t.shape[0], math.prod(size[m] for m in out), -1)

    u = matrix(terms.u, terms.side, a_out, a_in)
    v = matrix(terms.v, terms.rest, b_out, b_in)
    return u, v, a_in, a_out, b_in, b_out, size


def _crop(layer: tn.TNLayer, y: Tensor, a_out: list[str], b_out: list[str], size) -> Tensor:
    """Per-index outputs ``(R, K, |A_out|, |B_out|)`` as ``(R, K, out_features)``."""
    net = layer.network
    r, k = y.shape[:2]
    y = y.reshape(r, k, *(size[m] for m in a_out + b_out))
    y = y.permute(0, 1, *(2 + (a_out + b_out).index(m) for m in net.out_idx))
    return y.reshape(r, k, -1)[:, :, : layer.geometry.out_features]


def _dense_rows(layer: tn.TNLayer, rows: Tensor, terms: BondTerms) -> Tensor:
    """Activations ``(R, K)`` of input rows ``(R, M[*kernel])``, padded, in the input modes."""
    u, v, a_in, a_out, b_in, b_out, size = _split(layer, terms)
    net = layer.network
    modes = list(net.in_idx + net.kernel_idx)
    x = rows.reshape(rows.shape[0], *(size[m] for m in modes))
    x = x.permute(0, *(1 + modes.index(m) for m in a_in + b_in)).reshape(rows.shape[0], -1)
    x = x.reshape(rows.shape[0], math.prod(size[m] for m in a_in), -1)  # (R, |A_in|, |B_in|)
    k, (p, a), (q, b) = len(terms.weights), u.shape[1:], v.shape[1:]
    # One side contracted with the input first: the smaller intermediate of the two, (R, K, P,
    # |B_in|) or (R, K, |A_in|, Q). (An output-side bond of a wide layer, e.g. MiniLM's
    # 384 -> 1536 Tucker, made the first one (R, 128, 1536, 384): 22 GB for 21 rows.)
    a_first = p * b <= a * q
    step = max(1, CHUNK // max(k * max(p * q, min(p * b, a * q)), 1))
    out = []
    for i in range(0, x.shape[0], step):
        rows_x = x[i : i + step]
        if a_first:
            y = torch.einsum("rkpb,kqb->rkpq", torch.einsum("kpa,rab->rkpb", u, rows_x), v)
        else:
            y = torch.einsum("kpa,rkaq->rkpq", u, torch.einsum("rab,kqb->rkaq", rows_x, v))
        y = y * terms.weights.view(1, -1, 1, 1)
        out.append(_crop(layer, y, a_out, b_out, size).norm(dim=-1))
    return torch.cat(out)


def _token_rows(emb: tn.TNEmbedding, ids: Tensor, terms: BondTerms) -> Tensor:
    """Activations ``(R, K)`` of token ids ``(R,)``: a one-hot input picks one column of each
    side's in-mode part, so nothing of size V is built."""
    layer = emb.layer
    u, v, a_in, a_out, b_in, b_out, size = _split(layer, terms)
    net = layer.network
    digits, rest = {}, ids.long()
    for m in reversed(net.in_idx):  # row-major: the last mode varies fastest
        digits[m] = rest % size[m]
        rest = rest // size[m]

    def joint(modes: list[str]) -> Tensor:
        index = torch.zeros_like(ids, dtype=torch.long)
        for m in modes:
            index = index * size[m] + digits[m]
        return index

    ia, ib = joint(a_in), joint(b_in)
    k, n = len(terms.weights), math.prod(size[m] for m in a_out + b_out)
    step = max(1, CHUNK // max(k * n, 1))
    out = []
    for i in range(0, len(ids), step):
        ug, vg = u[:, :, ia[i : i + step]], v[:, :, ib[i : i + step]]  # (K, P, R), (K, Q, R)
        y = torch.einsum("kpr,kqr->rkpq", ug, vg) * terms.weights.view(1, -1, 1, 1)
        out.append(_crop(layer, y, a_out, b_out, size).norm(dim=-1))
    return torch.cat(out)


@torch.no_grad()
def bond_activations(
    layer: tn.TNLayer | tn.TNEmbedding,
    x: Tensor,
    position: int,
    *,
    terms: BondTerms | None = None,
) -> Tensor:
    """The activation of each index of bond ``position`` on the input ``x`` that ``layer``
    receives (see the module docstring), float64.

    Args:
        layer: a tensorized Linear / Conv2d (``TNLayer``) or Embedding (``TNEmbedding``).
        x: its input: ``(..., in_features)`` for a Linear; ``(B, C, H, W)`` (or ``(C, H, W)``)
            for a Conv2d; token ids ``(...)`` for an embedding.
        position: the bond (its place in ``layer.rank``).
        terms: ``bond_terms(layer, position)``, when already computed.

    Returns:
        ``(..., K)`` for a Linear or an embedding (one row per input vector / token), ``(B, K)``
        for a Conv2d (the root mean square over output positions); ``K`` the bond's size.
    """
    terms = bond_terms(layer, position) if terms is None else terms
    if isinstance(layer, tn.TNEmbedding):
        flat = x.reshape(-1).cpu()
        unique, inverse = torch.unique(flat, return_inverse=True)
        found = _token_rows(layer, unique, terms)[inverse]
        return found.reshape(*x.shape, -1)
    g = layer.geometry
    m = layer.in_features_padded
    x = x.detach().to("cpu", torch.float64)
    if not g.conv:
        lead = x.shape[:-1]
        rows = F.pad(x.reshape(-1, g.in_features), (0, m - g.in_features))
        return _dense_rows(layer, rows, terms).reshape(*lead, -1)
    x = x.unsqueeze(0) if x.dim() == 3 else x
    b = x.shape[0]
    x = F.pad(x, (0, 0, 0, 0, 0, m - g.in_features))
    cols = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)  # (B, M*K, L)
    positions = cols.shape[2]
    rows = cols.transpose(1, 2).reshape(b * positions, -1)
    found = _dense_rows(layer, rows, terms).reshape(b, positions, -1)
    return found.square().mean(dim=1).sqrt()


def probe(
    model: nn.Module, name: str, position: int, run: Callable[[], object]
) -> tuple[BondTerms, list[Tensor]]:
    """Run ``run()`` (which feeds examples through ``model``) and return bond ``position``'s
    terms and, for each call of layer ``name``, its activations (:func:`bond_activations`).

    Raises:
        ValueError: ``layer: ...`` when ``name`` is no tensorized layer of ``model``;
            ``bond: ...`` when it has no such bond.
    """
    module = model.get_submodule(name)
    if not isinstance(module, tn.TNLayer | tn.TNEmbedding):
        raise ValueError(f"layer: {name!r} is not a tensorized layer")
    terms = bond_terms(module, position)
    found: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple) -> None:
        found.append(bond_activations(module, args[0], position, terms=terms))

    handle = module.register_forward_pre_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return terms, found
