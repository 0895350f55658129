"""Model-level helpers: parameter counts, a summary of tensorized layers, freezing paths.

A :class:`~tnsearch.tn.TNEmbedding` is listed by :func:`describe` as one ``Embedding`` line (its
inner ``TNLayer`` is not listed separately) and left alone by :func:`freeze_paths` (its path is
fixed, nothing is measured).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tnsearch.tn._base import TNLayer
from tnsearch.tn._embedding import TNEmbedding

__all__ = ["describe", "freeze_paths", "n_params"]


def n_params(model: nn.Module) -> int:
    """Trainable parameters of any module (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _key_text(key: tuple) -> str:
    shape, device, dtype, training = key
    dims = "x".join(map(str, shape))
    mode = "train" if training else "eval"
    return f"{dims} {device.type} {str(dtype).removeprefix('torch.')} {mode}"


def describe(model: nn.Module) -> str:
    """One line per tensorized layer: name, topology, modes, ranks, params, compression, path.

    For ``path="auto"`` layers the chosen path of every measured key is listed.
    """
    lines = []
    inner = _embedding_layers(model)
    for name, layer in model.named_modules():
        if isinstance(layer, TNEmbedding):
            lines.append(_embedding_line(name, layer))
            continue
        if not isinstance(layer, TNLayer) or id(layer) in inner:
            continue
        g = layer.geometry
        dense = g.out_features * g.fan_in + (g.out_features if g.bias else 0)
        kind = f"Conv2d{g.kernel_size}" if g.conv else "Linear"
        if layer.path != "auto":
            path = layer.path
        elif layer.chosen_paths:
            path = "auto: " + ", ".join(
                f"{_key_text(k)} -> {p}" for k, p in layer.chosen_paths.items()
            )
        else:
            path = "auto (not run yet)"
        lines.append(
            f"{name or '<model>'}: {layer.topology} {kind} in={g.in_features}{layer.in_modes} "
            f"out={g.out_features}{layer.out_modes} rank={layer.rank} params={layer.n_params} "
            f"({dense / max(layer.n_params, 1):.1f}x smaller) path={path}"
        )
    return "\n".join(lines) if lines else "no tensorized layers"


def _embedding_layers(model: nn.Module) -> set[int]:
    """ids of the TNLayers that are held by a TNEmbedding of ``model``."""
    return {id(m.layer) for m in model.modules() if isinstance(m, TNEmbedding)}


def _embedding_line(name: str, emb: TNEmbedding) -> str:
    dense = emb.num_embeddings * emb.embedding_dim
    pad = "" if emb.padding_idx is None else f" padding_idx={emb.padding_idx}"
    return (
        f"{name or '<model>'}: {emb.topology} Embedding in={emb.num_embeddings}{emb.in_modes} "
        f"out={emb.embedding_dim}{emb.out_modes} rank={emb.rank}{pad} params={emb.n_params} "
        f"({dense / max(emb.n_params, 1):.1f}x smaller) path={emb.path}"
    )


def freeze_paths(
    model: nn.Module, example_input: Any, *, grad: bool | None = None
) -> dict[str, dict[tuple, str]]:
    """Let every ``auto`` layer choose its path on ``example_input``, then stop measuring.

    The model runs once without grad (inference key) and once with grad (training key), or only
    as ``grad`` says; buffers (e.g. BatchNorm statistics) are restored afterwards. Frozen layers
    use the cached choice; an unseen key gets the path with the fewest MACs, without measuring.
    Call this before ``torch.compile``. Tensorized embeddings are skipped (their path is fixed).

    Args:
        model: any module containing tensorized layers.
        example_input: a tensor, a tuple of positional arguments for ``model``, or a dict of
            keyword arguments (a tokenized batch).
        grad: ``None`` for both keys, or only the training (True) / inference (False) one.

    Returns:
        Layer name -> its ``chosen_paths``.
    """
    inner = _embedding_layers(model)  # embeddings: a fixed path, nothing to measure
    layers = {
        n: m for n, m in model.named_modules() if isinstance(m, TNLayer) and id(m) not in inner
    }
    kwargs = dict(example_input) if isinstance(example_input, Mapping) else {}
    args = () if kwargs else example_input if isinstance(example_input, tuple) else (example_input,)
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    for layer in layers.values():
        layer.freeze(False)
    try:
        for g in (False, True) if grad is None else (grad,):
            with torch.set_grad_enabled(g):
                model(*args, **kwargs)
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in saved:
                    v.copy_(saved[k])
        for layer in layers.values():
            layer.freeze(True)
    return {n: m.chosen_paths for n, m in layers.items()}
