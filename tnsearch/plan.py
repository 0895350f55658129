"""Plans: what says how to build one trial's model.

In memory a plan is a `Plan` (typed, frozen); at the storage edges (Optuna's user attributes, a
package's plan.json, MLflow) it is the JSON object `Plan.to_json` gives and `Plan.from_json`
reads back::

    {"version": 1,
     "model": {"_target_": "tnsearch.models.ResNet", "depth": 20, "width": 16},
     "inputs": {"in_channels": 1, "image_size": 28, "num_classes": 10},
     "layers": {"layer1.0.conv1": {"topology": "tucker", "order": 2, "in_modes": [4, 4],
                                   "out_modes": [4, 4], "rank": 8}, ...},
     "params": 61402,
     "precision": {"layer1.0.conv1": "int8"}}

Layers not listed stay dense; layers not under `precision` (tensorized or dense) keep float32
weights (the key is left out when every layer does). `build(plan)` rebuilds the model from the
plan alone. Every function here takes a `Plan` or its JSON object (`Plan.of`).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from tnsearch import tn
from tnsearch.files import write_text
from tnsearch.models import as_linear, is_conv1d

VERSION = 1
#: The precision of a layer the plan does not quantize.
FLOAT32 = "fp32"
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


@dataclass(frozen=True)
class Plan:
    """One trial's model: its constructor (`model`, with `_target_`), the data's facts it is
    built for (`inputs`), the layers it tensorizes (name -> spec: topology, order, in_modes,
    out_modes, rank[, path]), the layers whose weights are quantized (name -> precision, e.g.
    "int8"; any layer the space may search, tensorized or dense) and, once built, its parameter
    count."""

    model: Mapping[str, Any] = field(default_factory=dict)
    inputs: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params: int | None = None
    version: int = VERSION
    precision: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, plan: Plan | Mapping[str, Any]) -> Plan:
        """`plan` as a Plan: itself, or read from its JSON object."""
        return plan if isinstance(plan, Plan) else cls.from_json(plan)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """The plan of a JSON object (`to_json`'s; a key it lacks is empty: a plan file is
        checked whole by `load`); a key of the wrong type is a ValueError naming it.

        >>> plan = Plan.from_json({"model": {"_target_": "m.MLP"}, "layers": {"fc1": {"rank": 4}}})
        >>> plan.inputs, plan.layers
        ({}, {'fc1': {'rank': 4}})
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"plan: must be a JSON object, got {type(data).__name__}")
        parts = {key: data.get(key, {}) for key in ("model", "inputs", "layers")}
        for key, value in parts.items():
            if not isinstance(value, Mapping):
                raise ValueError(f"plan: {key!r} must be a JSON object, got {type(value).__name__}")
        params = data.get("params")
        precision = data.get("precision", {})
        if not isinstance(precision, Mapping) or not all(
            isinstance(v, str) for v in precision.values()
        ):
            raise ValueError("plan: 'precision' must map layer names to precision names")
        return cls(
            precision={str(name): value for name, value in precision.items()},
            model=copy.deepcopy(dict(parts["model"])),
            inputs=dict(parts["inputs"]),
            layers={str(name): dict(spec) for name, spec in parts["layers"].items()},
            params=int(params) if params is not None else None,
            version=int(data.get("version", VERSION)),
        )

    def to_json(self) -> dict[str, Any]:
        """The plan as a JSON object (what storages and files hold)."""
        out = {
            "version": self.version,
            "model": copy.deepcopy(dict(self.model)),
            "inputs": dict(self.inputs),
            "layers": {name: dict(spec) for name, spec in self.layers.items()},
        }
        if self.params is not None:
            out["params"] = self.params
        if self.precision:
            out["precision"] = dict(self.precision)
        return out

    def but(self, **changes: Any) -> Plan:
        """A copy with some fields changed (e.g. `params=` once the model is built)."""
        return replace(self, **changes)


def make(
    model_cfg: Mapping[str, Any],
    inputs: Mapping[str, int],
    layers: Mapping[str, Any],
    precision: Mapping[str, str] | None = None,
) -> Plan:
    """A plan for `model_cfg` on data of shape `inputs`, tensorizing `layers`, with the
    weights of the layers under `precision` quantized (float32 ones left out)."""
    return Plan(
        model=model_config(model_cfg),
        inputs=dict(inputs),
        layers={name: dict(spec) for name, spec in layers.items()},
        precision={k: v for k, v in (precision or {}).items() if v != FLOAT32},
    )


class UntrustedModelError(ValueError):
    """A plan names a model constructor that nobody said to trust: it is not called."""


def check_model(model: Mapping[str, Any], trusted: Collection[str] = ()) -> str:
    """The constructor a plan's `model` node names, if it may be called; else raise.

    A plan comes from a file or a storage that anyone may have written, and Hydra would call
    whatever its `_target_` names (`torch.load` on a pickle, `builtins.open`...). Allowed:
    tnsearch's own models (`tnsearch.models.MODELS`) and the targets in `trusted` (those the
    user's own configuration names); the arguments are plain values, never further targets.

    Raises:
        UntrustedModelError: ``model._target_: 'x' is not ...``, before anything is called.
    """
    from tnsearch.models import MODELS

    target = model.get("_target_")
    if not isinstance(target, str) or target not in (*MODELS, *trusted):
        raise UntrustedModelError(
            f"model._target_: {target!r} is not one of tnsearch's models "
            f"({', '.join(MODELS)}) nor a constructor the caller trusts; nothing was called"
        )
    for key, value in model.items():
        if key.startswith("_") and key != "_target_" or _holds_target(value):
            raise UntrustedModelError(
                f"model.{key}: a plan's model arguments are plain values, not {key!r} or "
                "objects to build; nothing was called"
            )
    return target


def _holds_target(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(str(k).startswith("_") or _holds_target(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_target(v) for v in value)
    return False


def build_dense(
    plan: Plan | Mapping[str, Any],
    *,
    trusted: Collection[str] = (),
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """The plan's model with every layer dense (its default initialization).

    Args:
        plan: the plan.
        trusted: model constructors (`_target_` paths) that may be called besides tnsearch's
            own models (see `check_model`).
        factory: build the model with this callable instead of the plan's `_target_`
            (called with the plan's model arguments and inputs).
    """
    plan = Plan.of(plan)
    arguments = {k: v for k, v in plan.model.items() if k != "_target_"}
    if factory is None:
        target = check_model(plan.model, trusted)
        factory = constructor(target)
    facts = facts_for(factory, plan.inputs, given=arguments)
    model = factory(**arguments, **facts)
    if not isinstance(model, nn.Module):
        name = getattr(factory, "__qualname__", repr(factory))
        raise TypeError(f"model._target_: {name} returned {type(model).__name__}, not a Module")
    return model


def constructor(target: str) -> Callable[..., Any]:
    """The callable a `_target_` path names (imported, not called).

    Raises:
        ImportError: ``model._target_: cannot import 'x.y' (...)``.
    """
    from hydra.utils import get_object

    try:
        found = get_object(target)
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import errors in its own
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = " ".join(str(cause).split())[:200]
        raise ImportError(f"model._target_: cannot import {target!r} ({text})") from None
    if not callable(found):
        raise ImportError(f"model._target_: {target!r} is not callable")
    return found


def facts_for(
    factory: Callable[..., Any], facts: Mapping[str, Any], *, given: Mapping[str, Any] = ()
) -> dict[str, Any]:
    """The data's facts (`num_classes`, `in_channels`, ...) that `factory`'s signature names
    (all of them when it takes **kwargs), less the arguments the config gives itself."""
    import inspect

    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass nothing
        return {}
    if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
        names = set(facts)
    else:
        names = {
            n for n, p in parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }
    return {k: v for k, v in facts.items() if k in names and k not in dict(given)}


def tensorize(
    model: nn.Module, plan: Plan | Mapping[str, Any], *, init: str = "random"
) -> nn.Module:
    """Replace, in place, every layer the plan lists by its tensorized version; return `model`.

    Args:
        model: the dense model the plan was made for.
        plan: the plan.
        init: "random" to train from scratch, "decompose" to start from the dense weights.
    """
    for name, spec in Plan.of(plan).layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"plan.layers: {name!r} is not a layer of the model") from None
        model.set_submodule(name, tensorize_module(module, spec, init=init))
    return model


def tensorize_module(module: nn.Module, spec: Mapping[str, Any], *, init: str) -> nn.Module:
    """The tensorized version of one layer (a Hugging Face Conv1D as the Linear it computes)
    as a plan's layer `spec` says (its ``path``, when it gives one: an export package's plan
    names the path each layer's ONNX graph follows; else ``auto``)."""
    if is_conv1d(module):
        module = as_linear(module)
    return tn.tensorize(
        module,
        topology=spec["topology"],
        rank=spec["rank"],
        order=spec["order"],
        in_modes=spec["in_modes"],
        out_modes=spec["out_modes"],
        init=init,
        path=spec.get("path", "auto"),
    )


def build(
    plan: Plan | Mapping[str, Any],
    *,
    init: str = "random",
    trusted: Collection[str] = (),
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Rebuild the model of a plan, from the plan alone (`trusted`, `factory`: `build_dense`)."""
    return tensorize(build_dense(plan, trusted=trusted, factory=factory), plan, init=init)


def trusted_models(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The model constructors a configuration trusts: the one its `model` node names."""
    target = (model_cfg or {}).get("_target_")
    return (target,) if isinstance(target, str) else ()


def summary(plan: Plan | Mapping[str, Any], *, eligible: int | None = None) -> str:
    """One line: e.g. "tucker x6, mpo x2 (o1-2, r4-16)", "dense", and the quantized layers'
    count: "dense, int8 x3" (a mapping with only `layers` will do)."""
    layers = plan.layers if isinstance(plan, Plan) else plan["layers"]
    precision = plan.precision if isinstance(plan, Plan) else plan.get("precision", {})
    counted = Counter(precision.values()).most_common()
    quantized = "".join(f", {name} x{n}" for name, n in counted)
    if not layers:
        return "dense" + quantized
    counts = Counter(spec["topology"] for spec in layers.values())
    parts = ", ".join(f"{topology} x{n}" for topology, n in counts.most_common())
    # A rank is one bond dimension, or one per bond (e.g. after tnsearch.truncate).
    ranks = sorted({r for spec in layers.values() for r in _as_list(spec["rank"])})
    orders = sorted({spec["order"] for spec in layers.values()})
    rank = f"r{ranks[0]}" if len(ranks) == 1 else f"r{ranks[0]}-{ranks[-1]}"
    order = f"o{orders[0]}" if len(orders) == 1 else f"o{orders[0]}-{orders[-1]}"
    dense = f", {eligible - len(layers)} dense" if eligible is not None else ""
    return f"{parts} ({order}, {rank}){dense}{quantized}"


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def flatten(plan: Plan | Mapping[str, Any], dense: Sequence[str] = ()) -> dict[str, str]:
    """The plan as flat `layer.key -> value` strings (MLflow params); each layer of `dense`
    (searchable but kept dense) as `layer.topology = dense`, `layer.rank = 0`, so that MLflow's
    parallel coordinates show "dense" rather than nothing."""
    plan = Plan.of(plan)
    flat = {f"model.{k}": str(v) for k, v in plan.model.items()}
    for name in dense:
        if name not in plan.layers:
            flat[f"{name}.topology"] = "dense"
            flat[f"{name}.rank"] = "0"
    for name, spec in plan.layers.items():
        for key, value in spec.items():
            if isinstance(value, list | tuple):
                value = "x".join(str(v) for v in value)
            flat[f"{name}.{key}"] = str(value)
    for name, precision in plan.precision.items():
        flat[f"{name}.precision"] = precision
    flat["tensorized_layers"] = str(len(plan.layers))
    return flat


def save(plan: Plan | Mapping[str, Any], path: str | Path) -> None:
    """Write the plan as JSON (atomically)."""
    write_text(path, json.dumps(Plan.of(plan).to_json(), indent=2, sort_keys=True) + "\n")


#: The keys every plan has, and the JSON type of each.
_KEYS = {"model": dict, "inputs": dict, "layers": dict}


class PlanFileError(ValueError):
    """A plan file that is no plan: ``plan: <reason> in <path>``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"plan: {reason} in {path}")


def load(path: str | Path) -> Plan:
    """Read a plan written by `save`.

    Raises:
        PlanFileError: ``plan: <reason> in <path>``, one line: not JSON, not a JSON object, an
            unsupported version, a missing or mistyped ``model`` / ``inputs`` / ``layers``.
    """
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFileError(path, f"not JSON ({exc})") from None
    if not isinstance(plan, dict):
        raise PlanFileError(path, f"a JSON {_json_type(plan)}, not a plan (a JSON object)")
    if plan.get("version") != VERSION:
        raise PlanFileError(path, f"unsupported version {plan.get('version')!r}")
    for key, kind in _KEYS.items():
        if not isinstance(plan.get(key), kind):
            found = "missing" if key not in plan else f"a {_json_type(plan[key])}"
            raise PlanFileError(path, f"{key!r} must be a JSON object, got {found}")
    for name, spec in plan["layers"].items():
        if not isinstance(spec, dict):
            raise PlanFileError(path, f"layers.{name} must be a JSON object")
    return Plan.from_json(plan)


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
