"""The objectives a study can optimize besides the task's quality: one registry, one seam.

An objective is one `Objective`: its config key (`objectives: [quality, params, latency]`), its
name in Optuna, MLflow, pareto.csv, the report and the console (`metric`), its direction, where a
trial's value comes from (a `Record` field the trial's own steps fill, or a `measure` function
called on the built model), how it is normalized for the hypervolume and where its reference
point lies, and how people read it (label, decimals, format). Everything that shows or weighs
objectives reads this registry, so adding one is one `register` call:

>>> import math
>>> _ = register(Objective(key="depth", metric="depth", label="modules",
...                        measure=lambda model, example: float(len(list(model.modules())))))
>>> get("depth").reference_text()
'modules 1.1x dense'
>>> unregister("depth")

A user's own objective is registered by a module the config names (`imports: [my.objectives]`),
imported before the configuration is checked, in every worker. The quality is not in the
registry: it goes by the task's name of it (accuracy, fidelity, val_f1...), and any objective
name the registry does not know is the quality.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "QUALITY",
    "QUALITY_REFERENCE",
    "Objective",
    "direction",
    "get",
    "import_modules",
    "key_of",
    "measured",
    "register",
    "registered",
    "text",
    "unregister",
]

QUALITY = "quality"  # how a config names the task's quality among the objectives
#: The quality's reference point in normalized space: 1 - quality = 1 (a quality of 0).
QUALITY_REFERENCE = 1.0


@dataclass(frozen=True, kw_only=True)
class Objective:
    """One objective besides the quality.

    Args:
        key: its name in `objectives:` (params, latency, ...).
        metric: its name in Optuna, MLflow, pareto.csv, the report and the console.
        direction: "minimize" or "maximize".
        field: the `Record` field the trial's own steps fill; "" for a measured objective, whose
            value the trial keeps in `Record.measures` under `metric`.
        measure: `(model, example batch) -> value` for a measured objective, called on the built
            model (in eval mode, on the latency device) right after its latency.
        relative: normalized as value / the dense model's value (False: the value is already a
            ratio to the dense model, as the latency is).
        reference: the hypervolume's reference point in normalized space (1.1: 10% worse than
            the dense model).
        label: how axes and prose name it ("parameters").
        decimals: decimals it is logged and shown with (None: 4 significant digits).
        log: whether its axes are logarithmic (sizes span decades).
        own_columns: the views show it in columns of their own (the parameters beside the
            compression, the latency beside its spread and milliseconds); the others go in
            one column each, after those, by metric name (`Record.extras`).
    """

    key: str
    metric: str
    direction: str = "minimize"
    field: str = ""
    measure: Callable[[Any, Any], float] | None = None
    relative: bool = True
    reference: float = 1.1
    label: str = ""
    decimals: int | None = None
    log: bool = False
    own_columns: bool = False

    def __post_init__(self) -> None:
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"objective {self.key!r}: direction must be minimize or maximize")
        if not self.field and self.measure is None:
            raise ValueError(f"objective {self.key!r}: give a record field or a measure")

    @property
    def name(self) -> str:
        """How people read it: its label, else its metric name."""
        return self.label or self.metric

    def reference_text(self) -> str:
        """Its reference point for people: `parameters 1.1x dense`."""
        return f"{self.name} {self.reference:g}x dense"

    def normalized(self, value: float, dense: float) -> float:
        """`value` as a loss in normalized space (1 = the dense model's)."""
        loss = value / dense if self.relative else value
        return loss if self.direction == "minimize" else 1.0 / loss

    def text(self, value: float | None) -> str:
        """`value` as the console and tables show it: `1.23M`, `0.62x`, `-`."""
        if value is None:
            return "-"
        if not self.relative:
            return f"{value:.{self.decimals if self.decimals is not None else 2}f}x"
        for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= size:
                return f"{value / size:.3g}{suffix}"
        return f"{value:.4g}"

    def rounded(self, value: float) -> float:
        """`value` as it is logged (MLflow shows what it is given)."""
        if self.decimals is not None:
            return round(float(value), self.decimals)
        return float(value) if float(value).is_integer() else float(f"{value:.4g}")


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    """Add `objective` (its key and metric must be new, and not the quality's key)."""
    if objective.key == QUALITY:
        raise ValueError(f"{QUALITY!r} is the task's quality, not a registered objective")
    for known in _REGISTRY.values():
        if {objective.key, objective.metric} & {known.key, known.metric}:
            raise ValueError(f"objective {objective.key!r} is registered already")
    _REGISTRY[objective.key] = objective
    return objective


def unregister(key: str) -> None:
    """Remove the objective `key` (tests; built-ins stay)."""
    if key in _BUILT_IN:
        raise ValueError(f"{key!r} is built in")
    _REGISTRY.pop(key, None)


def registered() -> dict[str, Objective]:
    """The objectives by key, built-ins first."""
    return dict(_REGISTRY)


def key_of(name: str) -> str | None:
    """The key of the objective `name` names (by key or metric name); None for the quality
    (any name the registry does not know)."""
    for key, found in _REGISTRY.items():
        if name in (key, found.metric):
            return key
    return None


def get(name: str) -> Objective | None:
    """The objective `name` names (by key or metric name); None for the quality."""
    key = key_of(name)
    return _REGISTRY[key] if key else None


def direction(name: str, quality_direction: str = "maximize") -> str:
    """How Optuna optimizes the objective `name`: a registered one's direction, else (the
    quality) `quality_direction`."""
    found = get(name)
    return found.direction if found is not None else quality_direction


def text(name: str, value: float | None) -> str:
    """The value of objective `name` as the console and tables show it (`Objective.text`; one
    no module registers here: 4 significant digits)."""
    found = get(name)
    if found is not None:
        return found.text(value)
    return "-" if value is None else f"{value:.4g}"


def measured(names: Sequence[str]) -> list[Objective]:
    """The objectives among `names` that a trial measures with their own function."""
    return [o for o in map(get, names) if o is not None and o.measure is not None]


def import_modules(modules: Sequence[str]) -> None:
    """Import the modules a config names under `imports` (they register their objectives);
    a module that cannot be imported raises ImportError."""
    for module in modules:
        importlib.import_module(module)


# -- built in ------------------------------------------------------------------------------------
register(  # not "params" in MLflow: its runs table already has "Parameters", the run's settings
    Objective(
        key="params",
        metric="param_count",
        field="params",
        label="parameters",
        log=True,
        own_columns=True,
    )
)
register(  # see measure.latency: time / the dense model's, timed beside it
    Objective(
        key="latency",
        metric="latency_ratio",
        field="latency_ratio",
        relative=False,
        reference=3.0,
        label="latency",
        decimals=3,
        own_columns=True,
    )
)


def _flops(model: Any, example: Any) -> float:
    """Floating-point operations of one forward pass per example (PyTorch's own counter:
    matrix products, convolutions and attention; a tensorized layer's contractions as they
    run)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**example) if isinstance(example, dict) else model(example)
    first = next(iter(example.values())) if isinstance(example, dict) else example
    return counter.get_total_flops() / int(first.shape[0])


register(Objective(key="flops", metric="flops", measure=_flops, label="FLOPs", log=True))
register(  # bytes of the weights as deployed (int8 codes and scales where the plan says)
    Objective(key="size", metric="size_bytes", field="size_bytes", label="bytes", log=True)
)
_BUILT_IN = frozenset(_REGISTRY)
