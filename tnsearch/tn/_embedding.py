"""Tensorized ``nn.Embedding`` (Khrulkov et al. 2019, "Tensorized Embedding Layers").

The table ``(V, D)`` of an ``nn.Embedding(V, D)`` is the transposed weight ``(D, V)`` of a
``Linear(V -> D)`` fed one-hot vectors, so a :class:`TNEmbedding` holds an ordinary
:class:`~tnsearch.tn.TNLayer` of any registered topology built for that matrix
(``in_features=V``, ``out_features=D``, no bias): its factors, decomposition, rank clipping, mode
padding and bond layout are the topology's own. ``in_modes`` split the vocabulary ``V`` (padded
up to their product), ``out_modes`` the embedding dimension ``D``.

The lookup never builds the table (the ``gather`` path, the default): index ``i`` is split into
its in-mode digits ``(i_1..i_d)`` (row-major, ``i_1`` most significant, as the weight's reshape
``(n_1..n_d, m_1..m_d)`` orders them); every factor that carries an in-mode index ``m_k`` is
gathered along that axis with ``index_select`` (a factor holding several, e.g. a Tucker core whose
modes keep no factor, is gathered on their combined index), which turns ``m_k`` into a batch index
``b`` shared by all gathered factors; the network is then contracted to ``(B, n_1..n_d)`` by the
same planner as the layers' forward passes (``b`` is a batch index of the matmuls). Per topology
that is: MPO, the cores ``(r, m_k, n_k, r')`` become ``(r, B, n_k, r')`` (a batched chain of
matrix products, Khrulkov's TT-embedding); Tucker, the input-mode factor matrices ``(m_k, a)``
become ``(B, a)`` rows (or the core is gathered where a mode keeps no factor); CP, the input
factors ``(R, m_k)`` become ``(R, B)`` columns; tree, the input leaves ``(m_k, e)`` become
``(B, e)`` rows (or the node ``(m_k, n_k, e)`` of a leaf that keeps no factor becomes
``(B, n_k, e)``). The ``reconstruct`` path builds the dense table and calls ``F.embedding`` (for
checking, or small vocabularies).

>>> import torch
>>> from torch import nn
>>> from tnsearch import tn
>>> _ = torch.manual_seed(0)
>>> emb = tn.tensorize(nn.Embedding(10000, 256), topology="mpo", rank=16, order=3)
>>> emb.in_modes, emb.out_modes, emb.rank, tn.n_params(emb)  # the dense table has 2560000
((20, 20, 25), (4, 8, 8), (16, 16), 45440)
>>> emb.paths, emb.path
(('reconstruct', 'gather'), 'gather')
>>> emb(torch.tensor([[1, 2, 3], [4, 5, 9999]])).shape   # (batch, sequence) -> (..., D)
torch.Size([2, 3, 256])
>>> emb.to_dense()                                        # the equivalent nn.Embedding
Embedding(10000, 256)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tnsearch.tn._base import TNLayer
from tnsearch.tn._contract import Contraction, compile_contraction, contracted_size, run_contraction
from tnsearch.tn._geometry import Geometry
from tnsearch.tn._network import Network
from tnsearch.tn._registry import topology_class

__all__ = ["TNEmbedding", "embedding_geometry"]

PATHS = ("reconstruct", "gather")
_BATCH = "b"  # the lookup's batch index (no network index is called so)


def embedding_geometry(module: nn.Embedding) -> Geometry:
    """The geometry of the ``Linear(V -> D)`` (no bias) whose weight is ``module``'s table.

    Raises:
        ValueError: ``embedding: ...`` for ``max_norm``, ``sparse=True`` or
            ``scale_grad_by_freq=True``, which the tensorized lookup does not support.
    """
    if module.max_norm is not None:
        raise ValueError(
            f"embedding: max_norm is not supported (got max_norm={module.max_norm}; it "
            "renormalizes rows of the table in place, which a tensor network does not store)"
        )
    if module.sparse:
        raise ValueError(
            "embedding: sparse=True is not supported (the factors get dense gradients)"
        )
    if module.scale_grad_by_freq:
        raise ValueError("embedding: scale_grad_by_freq=True is not supported")
    return Geometry(module.num_embeddings, module.embedding_dim, bias=False)


class _Gather(NamedTuple):
    """How one factor enters the lookup: gathered on its in-mode axes, or as it is."""

    axes: tuple[int, ...]  # the factor's in-mode axes (empty: used as it is)
    modes: tuple[int, ...]  # k of each such axis (its m_k), in axis order
    sizes: tuple[int, ...]  # the sizes of those axes
    indices: tuple[str, ...]  # the operand's index names after gathering ("b" for the axes)


class TNEmbedding(nn.Module):
    """A tensorized ``nn.Embedding(V, D)``: a :class:`TNLayer` for the ``(V, D)`` table.

    ``layer(idx)`` maps a LongTensor ``(...)`` to ``(..., D)`` without building the table (the
    ``gather`` path, see the module docstring). Usually made by
    :func:`tnsearch.tn.tensorize`; ``TNEmbedding(layer, padding_idx)`` wraps a ready
    ``TNLayer`` of Linear geometry ``(V -> D)`` without bias (its weight ``(D, V)`` is the
    transposed table).

    Attributes:
        layer: the wrapped :class:`TNLayer` (its factors are this module's parameters).
        padding_idx: as in ``nn.Embedding`` (normalized to ``0 <= padding_idx < V``) or None.
            The row is what the network represents (as decomposed: not forced to zero), and, as
            in ``nn.Embedding``, lookups of it give no gradient.
    """

    def __init__(self, layer: TNLayer, padding_idx: int | None = None) -> None:
        super().__init__()
        g = layer.geometry
        if g.conv or g.bias:
            raise ValueError("layer: an embedding needs a Linear geometry without bias")
        if padding_idx is not None:
            if not -g.in_features <= padding_idx < g.in_features:
                raise ValueError(
                    f"padding_idx: must be within num_embeddings {g.in_features}, got {padding_idx}"
                )
            padding_idx %= g.in_features
        self.layer = layer
        self.padding_idx = padding_idx
        self._path = "gather"
        self._contractions: dict[int, Contraction] = {}
        self._net, self._gathers = layer.network, _gathers(layer.network)

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def from_module(
        cls,
        module: nn.Embedding,
        *,
        topology: str | type[TNLayer],
        rank: int | Sequence[int],
        in_modes: Sequence[int],
        out_modes: Sequence[int],
        init: str = "decompose",
    ) -> TNEmbedding:
        """Tensorize ``module``; ``init="decompose"`` fits its table, ``"random"`` draws factors
        so that the table's entries have variance 1, like ``nn.Embedding``'s N(0, 1) init.

        ``in_modes`` split ``num_embeddings``, ``out_modes`` ``embedding_dim`` (products may be
        larger: padding).
        """
        if init not in ("decompose", "random"):
            raise ValueError(f"init: must be 'decompose' or 'random', got {init!r}")
        geometry = embedding_geometry(module)
        kind = topology_class(topology) if isinstance(topology, str) else topology
        w = module.weight  # (V, D)
        layer = kind(geometry, in_modes, out_modes, rank, device=w.device, dtype=w.dtype)
        emb = cls(layer, module.padding_idx)
        if init == "decompose":
            with torch.no_grad():
                factors = layer.decompose(layer._weight_tensor(w.t()))  # (D, V) as (n.., m..)
                for p, f in zip(layer.factors(), factors, strict=True):
                    p.copy_(f.reshape(p.shape))
        else:
            emb.reset_parameters()
        return emb

    def reset_parameters(self) -> None:
        """Random factors: each table entry is a sum of ``n_terms`` products of the factors'
        N(0, std) entries, of variance 1 (``nn.Embedding``'s init). The padding row is not
        zeroed (it is whatever the factors give)."""
        factors = self.layer.factors()
        std = (1.0 / self.layer.network.n_terms()) ** (1.0 / (2 * len(factors)))
        with torch.no_grad():
            for p in factors:
                p.normal_(0.0, std)

    # --- properties -------------------------------------------------------------------------------

    @property
    def num_embeddings(self) -> int:
        """V, the vocabulary size (rows of the table)."""
        return self.layer.geometry.in_features

    @property
    def embedding_dim(self) -> int:
        """D, the size of one embedding vector."""
        return self.layer.geometry.out_features

    @property
    def topology(self) -> str:
        return self.layer.topology

    @property
    def in_modes(self) -> tuple[int, ...]:
        """The modes of the vocabulary (product >= V)."""
        return self.layer.in_modes

    @property
    def out_modes(self) -> tuple[int, ...]:
        """The modes of the embedding dimension (product >= D)."""
        return self.layer.out_modes

    @property
    def rank(self) -> tuple[int, ...]:
        """The layer's bond dimensions (clipped), as in :attr:`TNLayer.rank`."""
        return self.layer.rank

    def factors(self) -> tuple[nn.Parameter, ...]:
        """The factor parameters, in ``layer.network`` order."""
        return self.layer.factors()

    @property
    def n_params(self) -> int:
        """Trainable parameters: the factors (an embedding has no bias)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def paths(self) -> tuple[str, ...]:
        """``("reconstruct", "gather")``: equivalent lookups (``gather`` never builds the table)."""
        return PATHS

    @property
    def path(self) -> str:
        """The path in use: ``"gather"`` unless forced (``"auto"`` sets ``"gather"``: nothing is
        measured, since the other path allocates the whole table)."""
        return self._path

    @path.setter
    def path(self, name: str) -> None:
        if name == "auto":
            name = "gather"
        if name not in PATHS:
            raise ValueError(f"path: unknown {name!r} (available: auto, {', '.join(PATHS)})")
        self._path = name

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return (
            f"{self.topology}, num_embeddings={self.num_embeddings} {self.in_modes}, "
            f"embedding_dim={self.embedding_dim} {self.out_modes}, rank={self.rank}{pad}, "
            f"path={self._path}"
        )

    # --- lookup -----------------------------------------------------------------------------------

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Look up ``idx`` (integer tensor ``(...)``, values in ``[0, V)``) -> ``(..., D)``."""
        if idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"idx: expected an int64 or int32 tensor, got {idx.dtype}")
        return getattr(self, "_path_" + self._path)(idx)

    def dense_weight(self) -> torch.Tensor:
        """The table ``(V, D)`` the factors represent (built in full)."""
        return self.layer.dense_weight().t()

    def _path_reconstruct(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.dense_weight(), self.padding_idx)

    def _path_gather(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1).long()  # (B,)
        v, d = self.num_embeddings, self.embedding_dim
        if flat.numel() == 0:
            return self.layer.factors()[0].new_zeros(*idx.shape, d)
        checked = flat.device.type == "cpu" and not torch.compiler.is_compiling()
        if checked and (bool((flat < 0).any()) or bool((flat >= v).any())):
            raise IndexError("index out of range in self")  # as F.embedding says
        digits, rest = [], flat
        for m in reversed(self.in_modes):  # row-major: the last mode varies fastest
            digits.append(rest % m)
            rest = rest // m
        digits.reverse()  # digits[k]: (B,) values in [0, m_k)
        contraction = self._gather_contraction(flat.shape[0])
        ops = []
        for factor, gather in zip(self.layer.factors(), self._gathers, strict=True):
            if not gather.axes:
                ops.append(factor)
            elif len(gather.axes) == 1:
                ops.append(factor.index_select(gather.axes[0], digits[gather.modes[0]]))
            else:  # several in-modes on one factor: gather their combined index, axis 0
                f = factor.movedim(gather.axes, tuple(range(len(gather.axes))))
                f = f.reshape(math.prod(gather.sizes), *f.shape[len(gather.axes) :])
                joint = digits[gather.modes[0]]
                for k, size in zip(gather.modes[1:], gather.sizes[1:], strict=True):
                    joint = joint * size + digits[k]
                ops.append(f.index_select(0, joint))
        y = run_contraction(contraction, ops)  # (B, N)
        if y.shape[1] > d:
            y = y[:, :d]
        if self.padding_idx is not None:  # as nn.Embedding: no gradient through the padding row
            pad = (flat == self.padding_idx).unsqueeze(1)
            y = torch.where(pad, y.detach(), y)
        return y.reshape(*idx.shape, d)

    def _gather_contraction(self, batch: int | torch.SymInt) -> Contraction:
        """The lookup's contraction, its order chosen for ``batch`` lookups; it runs on any
        number (the batch index is dynamic: a symbolic ``batch`` of ``torch.export`` is read
        as its example's size, without fixing the axis)."""
        net = self.layer.network
        if net is not self._net:  # the layer was replaced (e.g. truncated): new shapes
            self._contractions.clear()
            self._net, self._gathers = net, _gathers(net)
        batch = contracted_size(batch)
        contraction = self._contractions.get(batch)
        if contraction is None:
            sizes = tuple(sorted({**dict(net.sizes), _BATCH: batch}.items()))
            ops = tuple(g.indices for g in self._gathers)
            out = (_BATCH, *net.out_idx)
            contraction = compile_contraction(
                ops, sizes, out, ((_BATCH,), net.out_idx), dynamic=(_BATCH,)
            )
            if not torch.compiler.is_compiling():
                self._contractions[batch] = contraction
        return contraction

    # --- cost and conversion ------------------------------------------------------------------

    def flops(self, index_shape: Sequence[int]) -> int:
        """Multiply-accumulates of one lookup of ``index_shape`` on the path in use (gathers and
        index arithmetic not counted; ``reconstruct`` counts building the table)."""
        if self._path == "reconstruct":
            return self.layer._weight_contraction.macs
        return self._gather_contraction(math.prod(int(s) for s in index_shape)).macs

    @torch.no_grad()
    def to_dense(self) -> nn.Embedding:
        """The equivalent ``nn.Embedding`` (same V, D, ``padding_idx``, dtype and device; its
        table is the one the network represents, padding row included)."""
        ref = self.layer.factors()[0]
        dense = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=self.padding_idx,
            device=ref.device,
            dtype=ref.dtype,
        )
        with torch.autocast(ref.device.type, enabled=False):
            dense.weight.copy_(self.dense_weight())
        return dense


def _gathers(net: Network) -> tuple[_Gather, ...]:
    """For each factor of ``net``: which axes the lookup gathers, and the operand it gives."""
    if _BATCH in dict(net.sizes):
        raise ValueError(f"layer: its network uses the index name {_BATCH!r}")
    mode = {name: k for k, name in enumerate(net.in_idx)}
    out = []
    for k in range(len(net.names)):
        idx, shape = net.factors[k], net.shape(k)
        axes = tuple(a for a, i in enumerate(idx) if i in mode)
        if len(axes) <= 1:
            indices = tuple(_BATCH if i in mode else i for i in idx)
        else:
            indices = (_BATCH, *(i for i in idx if i not in mode))
        out.append(
            _Gather(
                axes,
                tuple(mode[idx[a]] for a in axes),
                tuple(shape[a] for a in axes),
                indices,
            )
        )
    return tuple(out)
