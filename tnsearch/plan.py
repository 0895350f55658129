"""Plans: the plain data that says how to build one trial's model.

A plan is a JSON-able dict::

    {"version": 1,
     "model": {"_target_": "tnsearch.models.ResNet", "depth": 20, "width": 16},
     "inputs": {"in_channels": 1, "image_size": 28, "num_classes": 10},
     "layers": {"layer1.0.conv1": {"topology": "tucker", "order": 2, "in_modes": [4, 4],
                                   "out_modes": [4, 4], "rank": 8}, ...},
     "params": 61402}

Layers not listed stay dense. `build(plan)` rebuilds the model from the plan alone.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tnsearch import tn
from tnsearch.files import write_text

VERSION = 1
#: Config keys of the `model/` group that are not constructor arguments.
NON_MODEL_KEYS = ("checkpoint",)


def model_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor part of a `model` config node, as a plain dict."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(model_cfg, DictConfig):
            model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra-core
        pass
    return {k: copy.deepcopy(v) for k, v in model_cfg.items() if k not in NON_MODEL_KEYS}


def make(
    model_cfg: Mapping[str, Any], inputs: Mapping[str, int], layers: Mapping[str, Any]
) -> dict[str, Any]:
    """A plan for `model_cfg` on data of shape `inputs`, tensorizing `layers`."""
    return {
        "version": VERSION,
        "model": model_config(model_cfg),
        "inputs": dict(inputs),
        "layers": {name: dict(spec) for name, spec in layers.items()},
    }


def build_dense(plan: Mapping[str, Any]) -> nn.Module:
    """The plan's model with every layer dense (its default initialization)."""
    from hydra.utils import instantiate

    return instantiate(dict(plan["model"]), **plan["inputs"], _convert_="all")


def tensorize(model: nn.Module, plan: Mapping[str, Any], *, init: str = "random") -> nn.Module:
    """Replace, in place, every layer the plan lists by its tensorized version; return `model`.

    Args:
        model: the dense model the plan was made for.
        plan: the plan.
        init: "random" to train from scratch, "decompose" to start from the dense weights.
    """
    for name, spec in plan["layers"].items():
        module = model.get_submodule(name)
        layer = tn.tensorize(
            module,
            topology=spec["topology"],
            rank=spec["rank"],
            order=spec["order"],
            in_modes=spec["in_modes"],
            out_modes=spec["out_modes"],
            init=init,
        )
        model.set_submodule(name, layer)
    return model


def build(plan: Mapping[str, Any], *, init: str = "random") -> nn.Module:
    """Rebuild the model of a plan, from the plan alone."""
    return tensorize(build_dense(plan), plan, init=init)


def summary(plan: Mapping[str, Any], *, eligible: int | None = None) -> str:
    """One line: e.g. "tucker x6, mpo x2 (order 1-2, rank 4-16)" or "dense"."""
    layers = plan["layers"]
    if not layers:
        return "dense"
    counts = Counter(spec["topology"] for spec in layers.values())
    parts = ", ".join(f"{topology} x{n}" for topology, n in counts.most_common())
    # A rank is one bond dimension, or one per bond (e.g. after tnsearch.truncate).
    ranks = sorted({r for spec in layers.values() for r in _as_list(spec["rank"])})
    orders = sorted({spec["order"] for spec in layers.values()})
    rank = f"r{ranks[0]}" if len(ranks) == 1 else f"r{ranks[0]}-{ranks[-1]}"
    order = f"o{orders[0]}" if len(orders) == 1 else f"o{orders[0]}-{orders[-1]}"
    dense = f", {eligible - len(layers)} dense" if eligible is not None else ""
    return f"{parts} ({order}, {rank}){dense}"


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def flatten(plan: Mapping[str, Any]) -> dict[str, str]:
    """The plan as flat `layer.key -> value` strings (MLflow params)."""
    flat = {f"model.{k}": str(v) for k, v in plan["model"].items()}
    for name, spec in plan["layers"].items():
        for key, value in spec.items():
            if isinstance(value, list | tuple):
                value = "x".join(str(v) for v in value)
            flat[f"{name}.{key}"] = str(value)
    flat["tensorized_layers"] = str(len(plan["layers"]))
    return flat


def save(plan: Mapping[str, Any], path: str | Path) -> None:
    """Write the plan as JSON (atomically)."""
    write_text(path, json.dumps(plan, indent=2, sort_keys=True) + "\n")


def load(path: str | Path) -> dict[str, Any]:
    """Read a plan written by `save`."""
    plan = json.loads(Path(path).read_text())
    if plan.get("version") != VERSION:
        raise ValueError(f"plan: unsupported version {plan.get('version')!r} in {path}")
    return plan
