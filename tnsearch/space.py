"""The search space: which layers may be tensorized, and how a trial chooses for each.

The space exists once, as the `space.*` configuration; `Space.from_config` reads it against a
model (and rejects what cannot work there), and `Space.suggest` turns an Optuna trial into the
per-layer part of a plan, define-by-run: a layer that stays dense asks no further questions.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from tnsearch import tn
from tnsearch.config import ConfigError, SpaceConfig
from tnsearch.models import is_conv1d
from tnsearch.tn import shapes

GRANULARITIES = ("layer", "group")
FACTORIZATIONS = ("search", "balanced")
#: The weights' precisions a group may take (`space.precisions`): float32, or int8 weights
#: (per-channel scales; activations quantized at run time), see `tnsearch.measure.quantize`.
PRECISIONS = ("fp32", "int8")
FLOAT32 = PRECISIONS[0]


@dataclass(frozen=True)
class Layer:
    """A layer that may be tensorized: its module name and the dimensions that get split."""

    name: str
    in_dim: int  # in_features or in_channels
    out_dim: int  # out_features or out_channels
    size: int  # number of weights


def _plain_embedding(module: nn.Embedding) -> bool:
    """Embeddings tn can tensorize: no max_norm, not sparse, no gradient scaling by frequency."""
    return module.max_norm is None and not module.sparse and not module.scale_grad_by_freq


def candidate_layers(model: nn.Module) -> list[Layer]:
    """Every Linear, Hugging Face Conv1D, (groups=1) Conv2d and Embedding of `model`, in module
    order (an embedding's dimensions: the vocabulary in, the embedding width out)."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) and _plain_embedding(module):
            found.append(
                Layer(name, module.num_embeddings, module.embedding_dim, module.weight.numel())
            )
            continue
        if isinstance(module, nn.Linear):
            found.append(
                Layer(name, module.in_features, module.out_features, module.weight.numel())
            )
        elif is_conv1d(module):
            nx, nf = module.weight.shape
            found.append(Layer(name, int(nx), int(nf), module.weight.numel()))
        elif isinstance(module, nn.Conv2d) and module.groups == 1:
            found.append(
                Layer(name, module.in_channels, module.out_channels, module.weight.numel())
            )
    return found


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in globs)


def _orders_for(layer: Layer, orders: Sequence[int]) -> tuple[int, ...]:
    """The orders both dimensions of `layer` can be split into (padding allowed)."""
    return tuple(
        k
        for k in orders
        if shapes.factorizations(layer.in_dim, k, pad=True)
        and shapes.factorizations(layer.out_dim, k, pad=True)
    )


#: What a trial chooses per group, besides the modes: the Optuna parameter `<group>.<choice>`.
CHOICES = ("tensorize", "topology", "order", "rank", "precision")
_PARAM = re.compile(
    r"^(?P<group>.+)\.(?P<choice>tensorize|topology|order|rank|precision"
    r"|(?:in|out)_modes\.order\d+)$"
)


def param_name(group: str, choice: str) -> str:
    """The Optuna parameter of `group`'s `choice` (one of CHOICES)."""
    return f"{group}.{choice}"


def modes_param(layer: str, side: str, order: int) -> str:
    """The Optuna parameter of how `layer` splits its input (`side="in"`) or output dimension
    into `order` modes, e.g. `fc1.in_modes.order3`: one per order, because a sampler needs one
    set of choices per parameter name (the splits into 2 modes are not those into 3)."""
    return param_name(layer, f"{side}_modes.order{order}")


def parse_param(name: str) -> tuple[str | None, str]:
    """(group, choice) of an Optuna parameter this space wrote; (None, name) for the others,
    such as the training choice `lr`."""
    found = _PARAM.match(name)
    return (found["group"], found["choice"]) if found else (None, name)


def _modes_label(modes: Sequence[int]) -> str:
    return "x".join(str(m) for m in modes)


def mode_choices(dim: int, order: int) -> list[str]:
    """The labels of the splits a trial may choose for `dim`: every exact one (padded when
    there is none) and the near-even padded one (`shapes.near_even`), which the profile uses."""
    found = [_modes_label(f) for f in shapes.factorizations(dim, order, pad=True)]
    even = _modes_label(shapes.near_even(dim, order))
    return found if even in found else [*found, even]


def _parse_modes(label: str) -> list[int]:
    return [int(m) for m in label.split("x")]


@dataclass(frozen=True)
class Space:
    """The searchable layers of one model, grouped, with the choices open to each group."""

    groups: dict[str, tuple[Layer, ...]]
    topologies: tuple[str, ...]
    orders: dict[str, tuple[int, ...]]  # group -> orders all its layers can take
    ranks: tuple[int, ...]
    factorizations: str
    lr: tuple[float, ...] = ()  # learning rates to choose from; empty: the trainer's own
    precisions: tuple[str, ...] = ("fp32",)  # a group's weights: one of these (asked if > 1)
    # per group, when a profile narrowed the choices (`restrict`); else the space's own
    group_topologies: dict[str, tuple[str, ...]] = field(default_factory=dict)
    group_ranks: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, space: SpaceConfig | Mapping[str, Any], model: nn.Module) -> Space:
        """Read `space.*` against `model`; raise ConfigError naming the key on bad input
        (a mapping's types are checked as it becomes a SpaceConfig)."""
        space = SpaceConfig.of(space)
        layers = candidate_layers(model)
        names = [layer.name for layer in layers]
        known = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        for key in ("layers", "exclude"):
            for pattern in getattr(space, key):
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise ConfigError(
                        f"space.{key}",
                        f"{pattern!r} matches no Linear, Conv1D, Conv2d or Embedding layer "
                        f"(layers: {known})",
                    )
        topologies = tuple(space.topologies)
        if not topologies:
            raise ConfigError("space.topologies", "must name at least one topology")
        for topology in topologies:
            if topology not in tn.TOPOLOGIES:
                raise ConfigError(
                    "space.topologies",
                    f"unknown {topology!r} (known: {', '.join(sorted(tn.TOPOLOGIES))})",
                )
        ranks = tuple(space.ranks)
        if not ranks:
            raise ConfigError("space.ranks", "must list at least one bond dimension")
        for rank in ranks:
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ConfigError("space.ranks", f"must be >= 1, got {rank!r}")
        orders = tuple(space.orders)
        if not orders:
            raise ConfigError("space.orders", "must list at least one order")
        for order in orders:
            if isinstance(order, bool) or not isinstance(order, int) or order < 1:
                raise ConfigError("space.orders", f"must be >= 1, got {order!r}")
        if space.granularity not in GRANULARITIES:
            raise ConfigError(
                "space.granularity",
                f"must be one of {', '.join(GRANULARITIES)}, got {space.granularity!r}",
            )
        if space.factorizations not in FACTORIZATIONS:
            raise ConfigError(
                "space.factorizations",
                f"must be one of {', '.join(FACTORIZATIONS)}, got {space.factorizations!r}",
            )
        min_size = space.min_size
        eligible = [
            layer
            for layer in layers
            if _matches(layer.name, space.layers)
            and not _matches(layer.name, space.exclude)
            and layer.size >= min_size
        ]
        if not eligible:
            raise ConfigError(
                "space.layers",
                f"no layer is eligible (matching space.layers, not space.exclude, "
                f"with at least space.min_size={min_size} weights)",
            )
        groups: dict[str, list[Layer]] = {}
        for layer in eligible:
            key = layer.name
            if space.granularity == "group":
                key = ".".join(layer.name.split(".")[: int(space.group_depth)])
            groups.setdefault(key, []).append(layer)
        group_orders = {}
        for key, members in groups.items():
            allowed = set(orders)
            for layer in members:
                allowed &= set(_orders_for(layer, orders))
            group_orders[key] = tuple(k for k in orders if k in allowed)
        for order in orders:
            if not any(order in allowed for allowed in group_orders.values()):
                raise ConfigError(
                    "space.orders",
                    f"no eligible layer can be split into {order} modes of size >= 2",
                )
        precisions = tuple(space.precisions)
        if not precisions:
            raise ConfigError("space.precisions", "must name at least one precision")
        for precision in precisions:
            if precision not in PRECISIONS:
                raise ConfigError(
                    "space.precisions",
                    f"unknown {precision!r} (known: {', '.join(PRECISIONS)})",
                )
        if len(set(precisions)) != len(precisions):
            raise ConfigError("space.precisions", f"duplicates in {list(precisions)}")
        raw_lr = space.lr or ()
        if not isinstance(raw_lr, list | tuple):
            raise ConfigError("space.lr", f"must be a list of learning rates, got {raw_lr!r}")
        try:
            lr = tuple(float(v) for v in raw_lr)
        except (TypeError, ValueError):
            raise ConfigError("space.lr", f"learning rates must be numbers, got {raw_lr}") from None
        if any(not v > 0 for v in lr):
            raise ConfigError("space.lr", f"learning rates must be > 0, got {list(lr)}")
        return cls(
            lr=lr,
            precisions=precisions,
            groups={k: tuple(v) for k, v in groups.items() if group_orders[k]},
            topologies=topologies,
            orders={k: v for k, v in group_orders.items() if v},
            ranks=ranks,
            factorizations=space.factorizations,
        )

    @property
    def layers(self) -> list[Layer]:
        return [layer for members in self.groups.values() for layer in members]

    def dense_params(self) -> dict[str, Any]:
        """The Optuna parameters of the plan that tensorizes and quantizes nothing (the
        reference trial)."""
        params: dict[str, Any] = {param_name(g, "tensorize"): False for g in self.groups}
        if len(self.precisions) > 1:
            params.update({param_name(g, "precision"): FLOAT32 for g in self.groups})
        return params

    def suggest_precision(self, trial) -> dict[str, str]:
        """Ask `trial` for each group's precision (when the space offers more than one);
        return {layer: precision} of every searchable layer, tensorized or dense."""
        if len(self.precisions) == 1:
            return {layer.name: self.precisions[0] for layer in self.layers}
        chosen = {}
        for group, members in self.groups.items():
            found = trial.suggest_categorical(param_name(group, "precision"), list(self.precisions))
            chosen.update({layer.name: found for layer in members})
        return chosen

    def suggest(self, trial) -> dict[str, dict[str, Any]]:
        """Ask `trial` for a choice per group; return {layer: plan} of the tensorized layers."""
        chosen: dict[str, dict[str, Any]] = {}
        for group, members in self.groups.items():
            if not trial.suggest_categorical(param_name(group, "tensorize"), [False, True]):
                continue
            topologies = self.group_topologies.get(group, self.topologies)
            topology = trial.suggest_categorical(param_name(group, "topology"), list(topologies))
            order = trial.suggest_categorical(param_name(group, "order"), list(self.orders[group]))
            ranks = self.group_ranks.get(group, self.ranks)
            rank = trial.suggest_categorical(param_name(group, "rank"), list(ranks))
            for layer in members:
                chosen[layer.name] = {
                    "topology": topology,
                    "order": order,
                    "in_modes": self._modes(trial, layer.name, "in", layer.in_dim, order),
                    "out_modes": self._modes(trial, layer.name, "out", layer.out_dim, order),
                    "rank": rank,
                }
        return chosen

    def restrict(self, allowed: Mapping[str, set[tuple[str, int, int]]]) -> Space:
        """The space with only the (topology, order, rank) options `allowed` per group: a group
        keeps the topologies, orders and ranks some allowed option uses (each stays its own
        choice, as samplers need); a group with none stays dense (it leaves the space)."""
        groups, orders, topologies, ranks = {}, {}, {}, {}
        for group, members in self.groups.items():
            ok = allowed.get(group, set())
            if not ok:
                continue
            groups[group] = members
            topologies[group] = tuple(t for t in self.topologies if any(o[0] == t for o in ok))
            orders[group] = tuple(k for k in self.orders[group] if any(o[1] == k for o in ok))
            ranks[group] = tuple(r for r in self.ranks if any(o[2] == r for o in ok))
        return replace(
            self, groups=groups, orders=orders, group_topologies=topologies, group_ranks=ranks
        )

    def params_for(
        self, layers: Mapping[str, Mapping[str, Any]], precision: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The Optuna parameters under which `suggest` (and `suggest_precision`) propose the
        plan's `layers` (and `precision`: float32 where it names no layer), for
        `study.enqueue_trial`. Every layer of a group must share its group's choice, and ranks
        and orders must be among the space's."""
        params: dict[str, Any] = {}
        for group, members in self.groups.items():
            if len(self.precisions) > 1:
                found = {(precision or {}).get(layer.name, FLOAT32) for layer in members}
                if len(found) > 1:
                    raise ValueError(f"precision: the layers of group {group!r} differ")
                params[param_name(group, "precision")] = found.pop()
            specs = [layers.get(layer.name) for layer in members]
            if all(spec is None for spec in specs):
                params[param_name(group, "tensorize")] = False
                continue
            first = specs[0]
            if any(spec is None or spec["topology"] != first["topology"] for spec in specs):
                raise ValueError(f"layers: the layers of group {group!r} differ")
            params.update(
                {
                    param_name(group, "tensorize"): True,
                    param_name(group, "topology"): first["topology"],
                    param_name(group, "order"): first["order"],
                    param_name(group, "rank"): first["rank"],
                }
            )
            order = first["order"]
            if self.factorizations == "balanced" or order == 1:
                continue
            for layer, spec in zip(members, specs, strict=True):
                for side, dim, modes in (
                    ("in", layer.in_dim, spec["in_modes"]),
                    ("out", layer.out_dim, spec["out_modes"]),
                ):
                    if len(mode_choices(dim, order)) > 1:
                        params[modes_param(layer.name, side, order)] = _modes_label(modes)
        return params

    def suggest_training(self, trial) -> dict[str, float]:
        """Training hyperparameters the trial chooses too (overrides of trainer.optimizer)."""
        if not self.lr:
            return {}
        return {"lr": trial.suggest_categorical("lr", list(self.lr))}

    def _modes(self, trial, layer: str, side: str, dim: int, order: int) -> list[int]:
        if self.factorizations == "balanced" or order == 1:
            return list(shapes.near_even(dim, order))
        choices = mode_choices(dim, order)
        if len(choices) == 1:
            return _parse_modes(choices[0])
        return _parse_modes(trial.suggest_categorical(modes_param(layer, side, order), choices))
