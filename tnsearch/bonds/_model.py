"""Model-level entry points: analyze every tensorized layer, truncate them, follow a plan."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tnsearch import tn
from tnsearch.bonds._methods import method
from tnsearch.bonds._spectrum import LayerBonds, check_energy

__all__ = [
    "METRIC_PREFIX",
    "analyze",
    "analyze_layer",
    "epoch_metrics",
    "tensorized_layers",
    "truncate",
    "truncate_layer",
    "truncated_plan",
]

#: The first part of the name of every per-epoch bond metric (``bonds/<layer>/entropy_<k>``).
METRIC_PREFIX = "bonds"


def analyze_layer(layer: tn.TNLayer, *, name: str = "", energy: float = 0.99) -> LayerBonds:
    """The bonds of one tensorized layer; see :func:`analyze`.

    Raises:
        ValueError: ``topology: ...`` for a topology without a bond method.
    """
    found = method(layer)
    if found is None:
        raise ValueError(f"topology: no bond analysis for {layer.topology!r}")
    return found.analyze(layer, name=name, energy=check_energy(energy))


def analyze(model: nn.Module, *, energy: float = 0.99) -> dict[str, LayerBonds]:
    """The bonds of every tensorized layer of ``model`` (read only), by module name.

    MPO, tree and Tucker layers are brought to mixed-canonical form around each bond in turn, so
    a bond's singular values are those of the weight tensor matricized across it (for Tucker,
    HOSVD: the core's unfolding spectra with orthonormal factors). CP layers report their
    component norms. Values are normalized to a sum of squares of 1, entropies are in nats, and
    effective ranks keep ``energy`` of it. Layers of other topologies are left out.
    """
    energy = check_energy(energy)
    return {
        name: analyze_layer(layer, name=name, energy=energy)
        for name, layer in model.named_modules()
        if isinstance(layer, tn.TNLayer) and method(layer) is not None
    }


def tensorized_layers(model: nn.Module) -> dict[str, tn.TNLayer]:
    """``model``'s analyzable tensorized layers by module name; an embedding's inner layer is
    named as the embedding itself (``embeddings.word_embeddings``, not ``....layer``), and a
    compiled model (``torch.compile``) as the model it wraps."""
    model = getattr(model, "_orig_mod", model)
    inner = {
        f"{name}.layer" if name else "layer": name
        for name, m in model.named_modules()
        if isinstance(m, tn.TNEmbedding)
    }
    return {
        inner.get(name, name): layer
        for name, layer in model.named_modules()
        if isinstance(layer, tn.TNLayer) and method(layer) is not None
    }


def epoch_metrics(model: nn.Module, *, energy: float = 0.99) -> dict[str, float]:
    """The bond spectrum summary of ``model``'s tensorized layers as flat metrics, e.g. for
    MLflow: ``bonds/<layer>/entropy_<k>`` (nats) and ``bonds/<layer>/effective_rank_<k>`` (at
    ``energy``) for each bond ``k`` (its place in ``layer.rank``; CP: its one component index).

    Computed from the factors (canonical form by QR of the cores, then one small SVD per bond;
    CP: component norms): no dense weight is built.
    """
    energy = check_energy(energy)
    out: dict[str, float] = {}
    for name, layer in tensorized_layers(model).items():
        if not all(bool(torch.isfinite(p).all()) for p in layer.factors()):
            continue  # a diverged layer has no spectrum (training fails the trial for it)
        for bond in analyze_layer(layer, name=name, energy=energy).bonds:
            key = f"{METRIC_PREFIX}/{name}/"
            out[f"{key}entropy_{bond.position}"] = bond.entropy
            out[f"{key}effective_rank_{bond.position}"] = float(bond.effective_rank)
    return out


def truncate_layer(layer: tn.TNLayer, *, energy: float = 0.99) -> tn.TNLayer:
    """A new layer of the same class with every bond cut to its effective rank at ``energy``.

    MPO, tree and Tucker bonds are cut one at a time by SVD at the bond in mixed-canonical form,
    so each cut discards at most ``1 - energy`` of the weight's Frobenius energy; dimensions that
    other cuts made redundant are then dropped exactly. CP drops its weakest components (by norm).
    ``energy=1.0`` only drops numerically zero singular values / components: the output is the
    same. A topology without a bond method comes back as a copy.
    """
    energy = check_energy(energy)
    found = method(layer)
    return copy.deepcopy(layer) if found is None else found.truncate(layer, energy=energy)


def truncate(model: nn.Module, *, energy: float = 0.99) -> nn.Module:
    """A copy of ``model`` with every tensorized layer truncated (:func:`truncate_layer`).

    The new layers are real tensorized layers of the same topology with smaller ``rank``, so
    ``tn.n_params``, ``to_dense()`` and :func:`truncated_plan` work on the result; ``model`` is
    left as it is.
    """
    energy = check_energy(energy)
    if isinstance(model, tn.TNLayer):
        return truncate_layer(model, energy=energy)
    out = copy.deepcopy(model)
    for name, layer in list(out.named_modules()):
        if isinstance(layer, tn.TNLayer):
            out.set_submodule(name, truncate_layer(layer, energy=energy))
    return out


def truncated_plan(plan: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """``plan`` with each layer's ``rank`` (and ``params``) as in the truncated ``model``.

    ``tnsearch.plan.build`` of the result gives a model whose state dict is ``model``'s. A rank
    is one int when all bonds of the layer agree, else a list with one value per bond.

    Raises:
        ValueError: ``plan: ...`` when a layer of the plan is not a tensorized layer of ``model``
            with the same topology.
    """
    out = copy.deepcopy(plan.to_json() if hasattr(plan, "to_json") else dict(plan))
    for name, spec in out["layers"].items():
        layer = model.get_submodule(name) if _has(model, name) else None
        if not isinstance(layer, tn.TNLayer) or layer.topology != spec["topology"]:
            raise ValueError(f"plan: layer {name!r} is not a {spec['topology']} layer of the model")
        ranks = list(layer.rank)
        spec["rank"] = ranks[0] if len(set(ranks)) == 1 else ranks
    if "params" in out:
        out["params"] = tn.n_params(model)
    return out


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
