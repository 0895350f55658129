"""``tensorize``: replace one Linear / Conv2d / Embedding by a tensorized layer of a registered
topology."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from torch import nn

from tnsearch.tn._base import TNLayer
from tnsearch.tn._embedding import PATHS as EMBEDDING_PATHS
from tnsearch.tn._embedding import TNEmbedding, embedding_geometry
from tnsearch.tn._geometry import Geometry
from tnsearch.tn._registry import topology_class
from tnsearch.tn.shapes import balanced

__all__ = ["resolve_modes", "tensorize"]


def _modes(name: str, modes: object, dim: int, what: str) -> tuple[int, ...]:
    ok = isinstance(modes, Sequence) and not isinstance(modes, str) and len(modes) > 0
    if ok:
        try:
            values = tuple(operator.index(m) for m in modes if not isinstance(m, bool))
            ok = len(values) == len(modes) and all(m >= 1 for m in values)
        except TypeError:
            ok = False
    if not ok:
        raise ValueError(f"{name}: must be a non-empty sequence of ints >= 1, got {modes!r}")
    if math.prod(values) < dim:
        raise ValueError(
            f"{name}: product {math.prod(values)} of {values} is smaller than {what} {dim} "
            "(it may be larger: the layer then pads)"
        )
    return values


def resolve_modes(
    geometry: Geometry,
    order: int | None,
    in_modes: Sequence[int] | None,
    out_modes: Sequence[int] | None,
    what: tuple[str, str] | None = None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The input and output modes: given ones checked, missing ones balanced (no padding).

    ``what`` names the two dimensions in messages (default: features, or channels for Conv2d).
    """
    if order is not None and (isinstance(order, bool) or not isinstance(order, int) or order < 1):
        raise ValueError(f"order: must be an int >= 1, got {order!r}")
    if what is None:
        conv = geometry.conv
        what = ("in_channels", "out_channels") if conv else ("in_features", "out_features")
    ins = None if in_modes is None else _modes("in_modes", in_modes, geometry.in_features, what[0])
    outs = (
        None
        if out_modes is None
        else _modes("out_modes", out_modes, geometry.out_features, what[1])
    )
    if ins is not None and outs is not None and len(ins) != len(outs):
        raise ValueError(f"out_modes: has {len(outs)} modes but in_modes has {len(ins)}")
    given = len(ins) if ins is not None else len(outs) if outs is not None else None
    if order is None:
        order = given or 2
    elif given is not None and order != given:
        name = "in_modes" if ins is not None else "out_modes"
        raise ValueError(f"order: {order} does not match the {given} modes of {name}")
    ins = ins or balanced(geometry.in_features, order)
    outs = outs or balanced(geometry.out_features, order)
    return ins, outs


def tensorize(
    module: nn.Module,
    *,
    topology: str,
    rank: int | Sequence[int],
    order: int | None = None,
    in_modes: Sequence[int] | None = None,
    out_modes: Sequence[int] | None = None,
    init: str = "decompose",
    path: str = "auto",
) -> TNLayer | TNEmbedding:
    """Tensorize an ``nn.Linear``, an ``nn.Conv2d`` (groups=1; any kernel, stride, padding...)
    or an ``nn.Embedding`` (a :class:`TNEmbedding`).

    An ``nn.Embedding(V, D)`` is treated as the ``Linear(V -> D)`` of one-hot inputs whose
    weight is its table: ``in_modes`` split ``V`` and ``out_modes`` ``D``; its paths are
    ``("reconstruct", "gather")`` and ``"auto"`` means ``"gather"`` (the lookup that never builds
    the table); ``max_norm``, ``sparse`` and ``scale_grad_by_freq`` are not supported.

    Args:
        module: the layer to replace; it is not modified.
        topology: a name in :data:`TOPOLOGIES` (``"mpo"``, ``"tucker"``, ``"cp"``, ``"tree"``).
        rank: one bond dimension for all bonds, or one per bond (see the topology's docs);
            values above the largest meaningful one are clipped (``layer.rank`` has the result).
        order: modes per side (in and out features / channels each split in ``order``);
            2 unless ``in_modes`` / ``out_modes`` give it.
        in_modes, out_modes: explicit mode sizes; their product may exceed the dimension
            (the layer zero-pads), never fall short. Default: :func:`shapes.balanced`.
        init: ``"decompose"`` fits the module's weight (TT-SVD, HOSVD/HOOI, CP-ALS, hierarchical
            SVD) and copies its bias; ``"random"`` initializes like the dense layer's default.
        path: ``"auto"`` (measure, cache the fastest) or one of ``layer.paths``.

    Raises:
        ValueError: one line starting with the bad argument's name, e.g. ``"rank: ..."``
            (``"embedding: ..."`` for an unsupported Embedding option).
        TypeError: ``"module: ..."`` if ``module`` is not a Linear, Conv2d or Embedding.
    """
    cls = topology_class(topology)
    if not isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
        raise TypeError(
            f"module: expected nn.Linear, nn.Conv2d or nn.Embedding, got {type(module).__name__}"
        )
    if isinstance(module, nn.Embedding):
        return _tensorize_embedding(module, cls, rank, order, in_modes, out_modes, init, path)
    geometry = Geometry.from_module(module)
    if init not in ("decompose", "random"):
        raise ValueError(f"init: must be 'decompose' or 'random', got {init!r}")
    paths = cls.available_paths(geometry.conv)
    if path != "auto" and path not in paths:
        raise ValueError(f"path: unknown {path!r} (available: auto, {', '.join(paths)})")
    ins, outs = resolve_modes(geometry, order, in_modes, out_modes)
    layer = cls.from_module(module, rank=rank, in_modes=ins, out_modes=outs, init=init)
    layer.path = path
    return layer


def _tensorize_embedding(module, cls, rank, order, in_modes, out_modes, init, path) -> TNEmbedding:
    """:func:`tensorize` for an ``nn.Embedding``: checks as for a layer, then a TNEmbedding."""
    geometry = embedding_geometry(module)
    if init not in ("decompose", "random"):
        raise ValueError(f"init: must be 'decompose' or 'random', got {init!r}")
    if path != "auto" and path not in EMBEDDING_PATHS:
        raise ValueError(f"path: unknown {path!r} (available: auto, {', '.join(EMBEDDING_PATHS)})")
    what = ("num_embeddings", "embedding_dim")
    ins, outs = resolve_modes(geometry, order, in_modes, out_modes, what)
    emb = TNEmbedding.from_module(
        module, topology=cls, rank=rank, in_modes=ins, out_modes=outs, init=init
    )
    emb.path = path
    return emb
