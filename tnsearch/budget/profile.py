"""The sensitivity profile: what tensorizing each layer (group) alone costs and saves.

For every group of the search space and every option open to it (topology x order x rank, the
modes balanced), the profile holds the group's parameters, its latency as a ratio to the dense
layers (measured side by side, interleaved), the data-aware decomposition's output error on the
calibration inputs, and the whole model's quality when only that group is tensorized (zero-shot,
no training). Allocation (`tnsearch.budget.allocate`) reads only this.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import bonds as bond_spectra
from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.budget import calibration
from tnsearch.files import write_text
from tnsearch.space import Space
from tnsearch.tn import shapes

VERSION = 1
#: Paired latency measurements per option (each: the dense layers, then the tensorized ones,
#: in alternating order).
PAIRS = 9


@dataclass(frozen=True)
class Entry:
    """One option of one group, measured."""

    group: str
    topology: str
    order: int
    rank: int
    layers: dict[str, dict[str, Any]]  # the plan's layers of this option
    params: int  # the group's parameters tensorized this way
    error: float  # mean relative output error of its layers on the calibration inputs
    latency_ratio: float  # the group's layers: tensorized time / dense time (median of pairs)
    quality: float  # the model's quality with only this group tensorized
    # its bond quantities (`bonds.option_quantities`; empty in profiles measured before them)
    bonds: dict[str, float] = field(default_factory=dict)

    def loss(self, dense_quality: float, maximize: bool) -> float:
        """The quality this option loses (never negative), with the output error breaking
        ties between options that lose nothing measurable."""
        drop = dense_quality - self.quality if maximize else self.quality - dense_quality
        return max(drop, 0.0) + 1e-3 * self.error


@dataclass(frozen=True)
class Group:
    """A group's dense reference."""

    layers: tuple[str, ...]
    params: int  # weights and biases of its layers, dense
    latency_ms: float  # its dense layers alone, per batch


@dataclass
class Profile:
    """The whole profile of one model (trained weights) and one space."""

    key: str
    metric: str
    maximize: bool
    dense_quality: float
    dense_params: int  # the whole model
    dense_latency_ms: float  # the whole model, per batch of `batch_size`
    batch_size: int
    groups: dict[str, Group]
    entries: list[Entry]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def options(self, group: str) -> list[Entry]:
        return [e for e in self.entries if e.group == group]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = VERSION
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        if data.get("version") != VERSION:
            raise ValueError(f"profile: unsupported version {data.get('version')!r}")
        data = dict(data)
        data.pop("version")
        groups = {k: Group(tuple(v["layers"]), v["params"], v["latency_ms"]) for k, v in
                  data.pop("groups").items()}  # fmt: skip
        entries = [Entry(**e) for e in data.pop("entries")]
        return cls(groups=groups, entries=entries, **data)

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_json(json.loads(Path(path).read_text()))


def layer_spec(layer, topology: str, order: int, rank: int) -> dict[str, Any]:
    """A plan's layer entry with near-even modes (what `space.factorizations=balanced` makes)."""
    return {
        "topology": topology,
        "order": order,
        "in_modes": list(shapes.near_even(layer.in_dim, order)),
        "out_modes": list(shapes.near_even(layer.out_dim, order)),
        "rank": rank,
    }


def options(space: Space, group: str) -> Iterator[tuple[str, int, int, dict[str, dict]]]:
    """(topology, order, rank, layers) of every option the space opens to `group`."""
    for topology in space.topologies:
        for order in space.orders[group]:
            for rank in space.ranks:
                layers = {
                    layer.name: layer_spec(layer, topology, order, rank)
                    for layer in space.groups[group]
                }
                yield topology, order, rank, layers


def fingerprint(model: nn.Module, settings: Mapping[str, Any]) -> str:
    """A key of the model's weights and the profile's settings (its cache file's name)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _dense_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _run(layers: Sequence[nn.Module], inputs: Sequence[torch.Tensor]) -> None:
    for layer, x in zip(layers, inputs, strict=True):
        calibration.call(layer, x)


@torch.inference_mode()
def paired_ratio(
    dense: Sequence[nn.Module], other: Sequence[nn.Module], inputs: Sequence[torch.Tensor]
) -> tuple[float, float]:
    """(median of the paired time ratios other / dense, dense seconds): the two are timed in
    turn on the same inputs, the order alternating, so that a busy moment hits both
    (`latency.paired_calls`, measured once: the profile times many options)."""
    from tnsearch.measure import latency

    ratios, _, base, _, _ = latency.paired_calls(
        lambda: _run(other, inputs), lambda: _run(dense, inputs), pairs=PAIRS, warmup=2,
        attempts=1,
    )  # fmt: skip
    return statistics.median(ratios), statistics.median(base) / 1e3


def layer_inputs(model: nn.Module, example: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The input each layer of `names` receives on the batch `example` (eval mode)."""
    seen: dict[str, torch.Tensor] = {}
    calibration.run_hooked(
        model, [example], names, lambda n, _m, x, _mask: seen.setdefault(n, x.detach())
    )
    return seen


def build(
    model: nn.Module,
    space: Space,
    stats: Mapping[str, tn.InputStats],
    evaluate: Callable[[nn.Module], float],
    example: Any,
    *,
    metric: str,
    maximize: bool,
    steps: int,
    key: str,
    settings: Mapping[str, Any] | None = None,
    progress: Callable[[int, int, Entry], None] | None = None,
) -> Profile:
    """Measure every option of every group of `space` on the trained `model` (left as it was).

    Args:
        model: the dense model with its trained weights.
        space: the search space (its groups and their options).
        stats: each layer's calibration input moments (`calibration.collect`).
        evaluate: the model's quality on the held-out examples (higher is better when
            `maximize`).
        example: one input batch for the latency measurements (`latency.batch_size`).
        steps: L-BFGS steps of each layer's data-aware fit.
        progress: called after each option with (done, total, entry).
    """
    start = time.perf_counter()
    model.eval()
    dense_quality = evaluate(model)
    names = [layer.name for layer in space.layers]
    inputs = layer_inputs(model, example, names)
    from tnsearch.measure import latency

    whole = latency.measure(model, example, warmup=3, repeats=15)
    groups, entries = {}, []
    plan = {g: list(options(space, g)) for g in space.groups}
    total, done = sum(len(v) for v in plan.values()), 0
    for group, members in space.groups.items():
        originals = {layer.name: model.get_submodule(layer.name) for layer in members}
        dense_mods = [calibration._module_for(model, n) for n in originals]
        xs = [inputs[n] for n in originals]
        group_params = sum(_dense_params(m) for m in originals.values())
        seen_ranks = set()
        dense_ms = None
        spectra = bond_spectra.SpectrumCache()  # the group's options share their unfoldings
        for topology, order, rank, layers in plan[group]:
            done += 1
            shells = [  # random factors: only the sizes, to skip what cannot pay
                plans.tensorize_module(d, layers[n], init="random")
                for n, d in zip(originals, dense_mods, strict=True)
            ]
            params = sum(tn.n_params(m) for m in shells)
            clipped = (topology, order, tuple(m.rank for m in shells))
            if params >= group_params or clipped in seen_ranks:
                continue
            seen_ranks.add(clipped)
            errors = calibration.tensorize(_Swap(model, originals), layers, stats, steps=steps)
            tensorized = {n: model.get_submodule(n) for n in originals}
            for m in tensorized.values():
                if isinstance(m, tn.TNLayer):
                    m.freeze()  # the path of fewest MACs: no measuring of paths per option
            quality = evaluate(model)
            quantities = bond_spectra.option_quantities(
                tensorized, dict(zip(originals, dense_mods, strict=True)), stats, cache=spectra
            )
            ratio, base = paired_ratio(dense_mods, list(tensorized.values()), xs)
            dense_ms = base * 1e3 if dense_ms is None else dense_ms
            _restore(model, originals)
            entry = Entry(
                group=group,
                topology=topology,
                order=order,
                rank=rank,
                layers=copy.deepcopy(layers),
                params=params,
                error=float(statistics.fmean(errors.values())),
                latency_ratio=float(ratio),
                quality=float(quality),
                bonds=quantities,
            )
            entries.append(entry)
            if progress is not None:
                progress(done, total, entry)
        if dense_ms is None:
            dense_ms = paired_ratio(dense_mods, dense_mods, xs)[1] * 1e3
        groups[group] = Group(tuple(originals), group_params, dense_ms)
    return Profile(
        key=key,
        metric=metric,
        maximize=maximize,
        dense_quality=float(dense_quality),
        dense_params=tn.n_params(model),
        dense_latency_ms=whole.p50,
        batch_size=latency.batch_size(example),
        groups=groups,
        entries=entries,
        settings=dict(settings or {}),
        seconds=time.perf_counter() - start,
    )


class _Swap:
    """The model seen by `calibration.tensorize`: layers are read from the dense originals
    (so each option starts from the trained weights) and written into the model."""

    def __init__(self, model: nn.Module, originals: Mapping[str, nn.Module]) -> None:
        self.model, self.originals = model, originals

    def get_submodule(self, name: str) -> nn.Module:
        return self.originals[name]

    def set_submodule(self, name: str, module: nn.Module) -> None:
        self.model.set_submodule(name, module)


def _restore(model: nn.Module, originals: Mapping[str, nn.Module]) -> None:
    for name, module in originals.items():
        model.set_submodule(name, module)
