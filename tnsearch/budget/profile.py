"""The sensitivity profile: what tensorizing each layer (group) alone costs and saves.

For every group of the search space and every option open to it (topology x order x rank, the
modes balanced, at each precision of `space.precisions`, and the group left dense in int8 when
int8 is among them), the profile holds the group's parameters and the bytes of its weights as
deployed, its latency as a ratio to the dense layers, the data-aware decomposition's output
error on the calibration inputs (plus, in int8, the error the int8 weights add), and the whole
model's quality when only that group is changed (zero-shot, no training). Allocation
(`tnsearch.budget.allocate`) reads only this.

Measuring an option takes a data-aware fit and a zero-shot evaluation of the whole model, so the
profile is anytime: every option is first *predicted* from the spectra of the whitened weight
(`tnsearch.budget.predict`: milliseconds per option), and only the options an allocation could
pick are *measured* (`Profiler.measure`), each stored on its own as soon as it is measured (the
study's `OptionCache`). An entry says which it is (`measured`); a predicted entry's loss is its
predicted error times the scale that the measured options of its topology and group show.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import bonds as bond_spectra
from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.budget import calibration, predict
from tnsearch.files import write_text
from tnsearch.measure import latency, quantize
from tnsearch.space import Space
from tnsearch.tn import shapes

VERSION = 2
#: Paired latency measurements per option (each: the dense layers, then the tensorized ones,
#: in alternating order): the profile times many options, so it takes fewer pairs, fewer
#: warm-up calls and one attempt; the rest of its timing (threads, device, dtype, noise) is the
#: study's `latency.*` (`setup.timing`).
PAIRS = 9
#: What the profile changes of the study's timing (`latency.Timing.but`).
TIMING = {"repeats": PAIRS, "warmup": 2, "attempts": 1}
#: The topology name of an option that leaves the group's layers dense (in int8).
DENSE = "dense"

#: An option's key: (group, topology, order, rank, precision).
Key = tuple[str, str, int, int, str]


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
    measured: bool = True  # False: `quality` and `latency_ratio` are predicted, not measured
    predicted_error: float | None = None  # the spectra's prediction of `error`
    bonds: dict[str, float] = field(default_factory=dict)  # bond quantities (tnsearch.bonds)
    precision: str = plans.FLOAT32  # its weights' precision (int8: as `measure.quantize` does)
    bytes: int = 0  # the group's weights as deployed (0: a profile from before: 4 x params)

    @property
    def option(self) -> Key:
        """(group, topology, order, rank, precision): the option's key."""
        return self.group, self.topology, self.order, self.rank, self.precision

    @property
    def name(self) -> str:
        return option_name(self.option)

    @property
    def weight_bytes(self) -> int:
        return self.bytes or 4 * self.params

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
    bytes: int = 0  # its dense layers' weights in float32 (0: a profile from before)

    @property
    def weight_bytes(self) -> int:
        return self.bytes or 4 * self.params


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
    dense_bytes: int = 0  # the whole model's weights in float32 (0: a profile from before)

    @property
    def weight_bytes(self) -> int:
        return self.dense_bytes or 4 * self.dense_params

    def options(self, group: str) -> list[Entry]:
        return [e for e in self.entries if e.group == group]

    @property
    def measured(self) -> list[Entry]:
        return [e for e in self.entries if e.measured]

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
        groups = {k: Group(tuple(v["layers"]), v["params"], v["latency_ms"], v.get("bytes", 0))
                  for k, v in data.pop("groups").items()}  # fmt: skip
        entries = [Entry(**e) for e in data.pop("entries")]
        known = {f for f in cls.__dataclass_fields__}
        return cls(groups=groups, entries=entries, **{k: v for k, v in data.items() if k in known})

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


def option_name(key: tuple) -> str:
    """How people read an option's key: "fc1 mpo o2 r8", "fc1 mpo o2 r8 int8", "fc1 dense int8"."""
    group, topology, order, rank, precision = key
    words = [group, topology] if topology == DENSE else [group, topology, f"o{order}", f"r{rank}"]
    return " ".join(words + ([precision] if precision != plans.FLOAT32 else []))


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
    dense: Sequence[nn.Module],
    other: Sequence[nn.Module],
    inputs: Sequence[torch.Tensor],
    timing: latency.Timing,
) -> tuple[float, float]:
    """(median of the paired time ratios other / dense, dense seconds): the two are timed in
    turn on the same inputs, the order alternating, so that a busy moment hits both
    (`latency.paired_calls`), as `timing` says (the Profiler's)."""
    device = inputs[0].device if inputs else torch.device("cpu")
    with latency.applied(timing, device):
        calls = latency.paired_calls(
            lambda: _run(other, inputs), lambda: _run(dense, inputs), pairs=timing.repeats,
            warmup=timing.warmup, attempts=timing.attempts, spread=timing.spread,
        )  # fmt: skip
    return statistics.median(calls.ratios), statistics.median(calls.theirs) / 1e3


def layer_inputs(model: nn.Module, example: Any, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The input each layer of `names` receives on the batch `example` (eval mode)."""
    seen: dict[str, torch.Tensor] = {}
    calibration.run_hooked(
        model, [example], names, lambda n, _m, x, _mask: seen.setdefault(n, x.detach())
    )
    return seen


@dataclass(frozen=True)
class Option:
    """One option of one group before it is measured: its plan, and what costs nothing to know."""

    group: str
    topology: str
    order: int
    rank: int
    layers: dict[str, dict[str, Any]]  # the plan's layers of this option
    params: int  # exact: the shells' sizes
    predicted_error: float  # mean over its layers of the spectra's predicted output error
    macs_ratio: float  # the group's multiply-adds tensorized / dense: latency's stand-in
    precision: str = plans.FLOAT32
    bytes: int = 0  # exact: the group's weights as deployed

    @property
    def key(self) -> Key:
        return self.group, self.topology, self.order, self.rank, self.precision

    @property
    def name(self) -> str:
        return option_name(self.key)

    def entry(self, *, error: float, latency_ratio: float, quality: float, measured: bool,
              bonds: dict[str, float] | None = None) -> Entry:  # fmt: skip
        """This option's profile entry with these figures (measured, or predicted)."""
        return Entry(
            group=self.group,
            topology=self.topology,
            order=self.order,
            rank=self.rank,
            layers=copy.deepcopy(self.layers),
            params=self.params,
            error=float(error),
            latency_ratio=float(latency_ratio),
            quality=float(quality),
            measured=measured,
            predicted_error=self.predicted_error,
            bonds=dict(bonds or {}),
            precision=self.precision,
            bytes=self.bytes,
        )


class Profiler:
    """Predicts and measures the options of `space` on the trained `model` (left as it was).

    Args:
        model: the dense model with its trained weights.
        space: the search space (its groups and their options).
        stats: each layer's calibration input moments (`calibration.collect`).
        evaluate: the model's quality on the held-out examples (higher is better when the
            metric is maximized); called with the model as it is (layers swapped in place).
        example: one input batch for the latency measurements (`latency.batch_size`).
        steps: L-BFGS steps of each layer's data-aware fit.
        timing: how its latencies are timed (default: `latency.Timing` with TIMING; a study's
            is `setup.timing.but(**TIMING)`).
    """

    def __init__(
        self,
        model: nn.Module,
        space: Space,
        stats: Mapping[str, tn.InputStats],
        evaluate: Callable[[nn.Module], float],
        example: Any,
        *,
        steps: int,
        timing: latency.Timing | None = None,
    ) -> None:
        self.model, self.space, self.stats = model.eval(), space, stats
        self.evaluate, self.example, self.steps = evaluate, example, steps
        self.timing = timing or latency.Timing().but(**TIMING)
        names = [layer.name for layer in space.layers]
        self.inputs = layer_inputs(model, example, names)
        self.originals = {
            g: {layer.name: model.get_submodule(layer.name) for layer in members}
            for g, members in space.groups.items()
        }
        self.dense_modules = {
            g: {n: calibration._module_for(model, n) for n in originals}
            for g, originals in self.originals.items()
        }
        self._bond_spectra: dict[str, bond_spectra.SpectrumCache] = {}
        self._last: tuple | None = None  # the last option's decomposition (`_fitted`)

    def dense(self) -> dict[str, Any]:
        """The dense reference: quality, whole-model latency (ms per batch) and each group."""
        quality = self.evaluate(self.model)
        whole = latency.measure(self.model, self.example, self.timing)
        groups = {}
        for g, originals in self.originals.items():
            mods = list(self.dense_modules[g].values())
            ms = self._ratio(mods, mods, g)[1] * 1e3
            params = sum(_dense_params(m) for m in originals.values())
            size = sum(quantize.weight_bytes(m) for m in originals.values())
            groups[g] = Group(tuple(originals), params, ms, size)
        return {"quality": float(quality), "latency_ms": whole.p50, "groups": groups,
                "batch_size": latency.batch_size(self.example),
                "params": tn.n_params(self.model),
                "bytes": quantize.weight_bytes(self.model)}  # fmt: skip

    def menu(self, group: str) -> list[Option]:
        """Every option of `group` that saves parameters, predicted (once per distinct clipped
        rank: a rank above the largest meaningful one is the same option)."""
        originals, modules = self.originals[group], self.dense_modules[group]
        spectra = {n: predict.Spectra(m, self.stats.get(n)) for n, m in modules.items()}
        group_params = sum(_dense_params(m) for m in originals.values())
        dense_macs = sum(_macs(m, self.inputs[n]) for n, m in modules.items())
        int8 = INT8 in self.space.precisions and all(_quantizable(m) for m in modules.values())
        if int8:  # the error int8 adds: the dense weights' (per tensor, once per core)
            noise = statistics.fmean(_int8_error(m, per_channel=False) for m in modules.values())
        seen, found = set(), []
        if int8:  # the group left dense, its weights in int8 (per output feature where Linear)
            found.append(
                Option(
                    group,
                    DENSE,
                    0,
                    0,
                    {},
                    group_params,
                    statistics.fmean(_int8_error(m) for m in modules.values()),
                    1.0,
                    precision=INT8,
                    bytes=sum(quantize.weight_bytes(m, INT8) for m in originals.values()),
                )  # fmt: skip
            )
        for topology, order, rank, layers in options(self.space, group):
            shells = {  # random factors: only the sizes and the structure are read
                n: plans.tensorize_module(m, layers[n], init="random") for n, m in modules.items()
            }
            params = sum(tn.n_params(m) for m in shells.values())
            clipped = (topology, order, tuple(_rank(m) for m in shells.values()))
            if params >= group_params or clipped in seen:
                continue
            seen.add(clipped)
            errors = predict.predicted_errors(shells, spectra)
            same = (order, params, round(statistics.fmean(errors.values()), 9))
            if same in seen:  # another topology that is the same network (Tucker and tree at
                continue  # order 1: a rank-r matrix with an r x r core): measured once
            seen.add(same)
            macs = sum(_macs(m, self.inputs[n]) for n, m in shells.items())
            error = float(statistics.fmean(errors.values()))
            fp32 = Option(
                group, topology, order, rank, copy.deepcopy(layers), params, error,
                macs / max(dense_macs, 1),
                bytes=sum(quantize.weight_bytes(m) for m in shells.values()),
            )  # fmt: skip
            found.append(fp32)
            if int8:
                cores = statistics.fmean(len(_cores(m)) for m in shells.values())
                found.append(
                    replace(
                        fp32,
                        layers=copy.deepcopy(layers),
                        precision=INT8,
                        predicted_error=error + cores * noise,
                        bytes=sum(quantize.weight_bytes(m, INT8) for m in shells.values()),
                    )
                )
        return found

    def measure(self, option: Option) -> Entry:
        """Decompose the option's layers data-aware (none for a dense option), put them in int8
        when its precision says so, score the model with only them changed and time them beside
        the dense layers. An option's int8 and float32 versions share one decomposition (the
        last one is kept)."""
        originals = self.originals[option.group]
        dense_mods = self.dense_modules[option.group]
        quantities: dict[str, float] = {}
        if option.topology == DENSE:
            changed = {n: originals[n] for n in originals}
            error = 0.0
        else:
            changed, error, quantities = self._fitted(option)
        try:
            if option.precision == INT8:
                exact, changed = changed, {n: _int8(m) for n, m in changed.items()}
                error += statistics.fmean(
                    _added_error(changed[n], exact[n], dense_mods[n], self.inputs[n])
                    for n in originals
                )
            for n, m in changed.items():
                self.model.set_submodule(n, m)
            quality = self.evaluate(self.model)
            modules = [calibration._module_for(self.model, n) for n in originals]
            ratio, _ = self._ratio(list(dense_mods.values()), modules, option.group)
        finally:
            _restore(self.model, originals)
        return option.entry(
            error=error, latency_ratio=ratio, quality=quality, measured=True, bonds=quantities
        )

    def _fitted(self, option: Option) -> tuple[dict[str, nn.Module], float, dict[str, float]]:
        """(tensorized layers, mean output error, bond quantities) of the option's plan."""
        key = (option.group, option.topology, option.order, option.rank)
        if self._last is not None and self._last[0] == key:
            return dict(self._last[1]), self._last[2], dict(self._last[3])
        originals = self.originals[option.group]
        errors = calibration.tensorize(
            _Swap(self.model, originals), option.layers, self.stats, steps=self.steps
        )
        try:
            tensorized = {n: self.model.get_submodule(n) for n in originals}
            for m in tensorized.values():
                if isinstance(m, tn.TNLayer):
                    m.freeze()  # the path of fewest MACs: no measuring of paths per option
            quantities = bond_spectra.option_quantities(  # the group's options share unfoldings
                tensorized,
                self.dense_modules[option.group],
                self.stats,
                cache=self._bond_spectra.setdefault(option.group, bond_spectra.SpectrumCache()),
            )
        finally:
            _restore(self.model, originals)
        self._last = (key, tensorized, float(statistics.fmean(errors.values())), quantities)
        return dict(tensorized), self._last[2], dict(quantities)

    def _ratio(self, dense: list[nn.Module], other: list[nn.Module], group: str):
        xs = [self.inputs[n] for n in self.originals[group]]
        return paired_ratio(dense, other, xs, self.timing)


INT8 = "int8"


def _quantizable(module: nn.Module) -> bool:
    """Whether `measure.quantize` puts `module` in int8 (a Linear, Conv, Embedding or
    tensorized layer): its own test, not a copy of it."""
    return bool(quantize._quantizable(module, per_channel=True))


def _int8(module: nn.Module) -> nn.Module:
    """An int8 copy of one layer, as `measure.quantize` deploys it in a model."""
    holder = nn.ModuleDict({"layer": module})
    return quantize.quantize(holder, INT8, layers=["layer"])["layer"]


def _int8_error(module: nn.Module, *, per_channel: bool = True) -> float:
    """The relative squared error of `module`'s weight in int8 (symmetric; per output feature
    where a Linear's and `per_channel`, else per tensor)."""
    w = module.weight.detach().float()
    codes, scale = quantize.symmetric(w, per_row=per_channel and isinstance(module, nn.Linear))
    w = w.double()
    q = codes.double() * scale.double()
    return float(((q - w) ** 2).sum() / (w**2).sum().clamp_min(1e-30))


@torch.inference_mode()
def _added_error(
    quantized: nn.Module, exact: nn.Module, dense: nn.Module, x: torch.Tensor
) -> float:
    """The relative squared output error int8 adds to `exact` (its float32 self) on the batch
    `x`, as a share of the dense layer's output: it adds to the decomposition's error."""
    ref = calibration.call(dense, x).double()
    diff = calibration.call(quantized, x).double() - calibration.call(exact, x).double()
    return float((diff**2).sum() / (ref**2).sum().clamp_min(1e-30))


def _cores(module: nn.Module) -> list[str]:
    inner = module.layer if isinstance(module, tn.TNEmbedding) else module
    return list(inner.network.names)


def _rank(module: nn.Module) -> tuple[int, ...]:
    return tuple((module.layer if isinstance(module, tn.TNEmbedding) else module).rank)


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one call of `module` on `x` (dense Linear / Conv2d / Embedding, or a
    tensorized layer's cheapest path)."""
    if isinstance(module, tn.TNLayer | tn.TNEmbedding):
        return int(module.flops(tuple(x.shape)))
    if isinstance(module, nn.Embedding):
        return int(x.numel() * module.embedding_dim)
    if isinstance(module, nn.Conv2d):
        h, w = x.shape[-2:]
        kh, kw = module.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
        if isinstance(module.padding, str):
            ph, pw = (kh - 1) // 2, (kw - 1) // 2
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        batch = x.numel() // (x.shape[-3] * h * w)
        return int(batch * ho * wo * module.weight.numel())
    rows = x.numel() // x.shape[-1]
    return int(rows * module.weight.numel())


#: Below this predicted error (or measured loss) an option counts as losing nothing.
FLOOR = 1e-6


def _pooled(
    measured: Sequence[Entry], key, pairs, *, least: int = 2
) -> Callable[[Entry | Option], list]:
    """The measured entries' `pairs(entry)` points pooled by `key(entry)` levels (most specific
    first): an option reads the first level that holds at least `least` points (else none)."""
    pools: dict[tuple, list] = {}
    for e in measured:
        point = pairs(e)
        if point is not None:
            for level in key(e):
                pools.setdefault(level, []).append(point)

    def points(option) -> list:
        for level in key(option):
            if len(pools.get(level, ())) >= least:
                return pools[level]
        return []

    return points


#: The output error of a data-aware fit against the spectra's bound before any is measured:
#: error = bound^1.5 (LeNet-300-100's MPO layers on digits: 0.66 -> 0.52, 0.45 -> 0.31, 0.21 ->
#: 0.12), below the bound, so that options nobody measured look no worse than they may be.
PRIOR_POWER = 1.5


def _power(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of y = a x^b fitted in log space (least squares); (1, PRIOR_POWER) without two
    distinct points."""
    logs = [(math.log(x), math.log(y)) for x, y in points if x > FLOOR and y > FLOOR]
    if len(logs) < 2 or len({x for x, _ in logs}) < 2:
        return 1.0, PRIOR_POWER
    mx, my = statistics.fmean(x for x, _ in logs), statistics.fmean(y for _, y in logs)
    sxx = sum((x - mx) ** 2 for x, _ in logs)
    b = sum((x - mx) * (y - my) for x, y in logs) / sxx
    b = min(max(b, 0.5), 3.0)  # the bound is loose, not upside down
    return math.exp(my - b * mx), b


def _isotonic(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-decreasing fit of (x, y) points (pool-adjacent-violators), by x, from (0, 0)."""
    blocks: list[list[float]] = []  # [sum x, sum y, count]
    for x, y in sorted(points):
        blocks.append([x, y, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            last = blocks.pop()
            for i in range(3):
                blocks[-1][i] += last[i]
    return [(0.0, 0.0)] + [(sx / n, max(sy / n, 0.0)) for sx, sy, n in blocks]


def _interpolate(curve: Sequence[tuple[float, float]], x: float) -> float:
    """The `curve` (from (0, 0)) at `x`: quadratic up to its first point (a small error costs
    next to nothing), linear between points, and beyond the last along the line from the origin
    through it (a loss grows with the error)."""
    for k, ((x0, y0), (x1, y1)) in enumerate(zip(curve, curve[1:], strict=False)):
        if x <= x1:
            if k == 0:
                return y1 * (x / max(x1, 1e-12)) ** 2
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-12)
    x1, y1 = curve[-1]
    return y1 * x / max(x1, 1e-12) if x1 > 0 else 0.0


#: The loss of an option in a model nobody measured yet: quality x error^2 (a small error costs
#: next to nothing, as the sensitivity curves measured later show).
def _prior_loss(error: float, quality: float) -> float:
    return abs(quality) * min(error, 1.0) ** 2


def assemble(
    dense: Mapping[str, Any],
    menu: Sequence[Option],
    measured: Mapping[tuple, Entry],
    *,
    key: str,
    metric: str,
    maximize: bool,
    settings: Mapping[str, Any] | None = None,
    seconds: float = 0.0,
) -> Profile:
    """The profile of `menu`: the measured entries as they are, every other option predicted in
    two steps, each learnt from the measured entries. Its output error from the spectra's bound
    (``error = a * bound^b``, fitted per topology and order: the fit keeps more than sequential
    SVDs); its loss from that error along the group's sensitivity curve (the non-decreasing
    fit of loss against error over the group's measured options of any topology: how much the
    model feels an error at that group's output). Its latency: the MAC ratio times the measured
    latency / MAC ratio."""
    q0 = float(dense["quality"])
    by_key = {o.key: o for o in menu}
    done = [e for k, e in measured.items() if k in by_key]
    macs = {o.key: o.macs_ratio for o in menu}

    def loss_of(e: Entry) -> float:
        return e.loss(q0, maximize)

    bound = _pooled(  # the bound's looseness is the topology's (and the precision's)
        done,
        lambda e: ((e.topology, e.order, e.precision), (e.topology, e.precision), (e.topology,)),
        lambda e: None if e.predicted_error is None else (e.predicted_error, e.error),
    )
    curve = _pooled(done, lambda e: ((e.group,), ("*",)), lambda e: (e.error, loss_of(e)), least=1)
    latency = _pooled(
        done,
        lambda e: (
            (e.group, e.topology, e.precision),
            (e.topology, e.precision),
            (e.precision,),
            ("*",),
        ),
        lambda e: (macs[e.option], e.latency_ratio),
    )
    entries = []
    for option in menu:
        if option.key in measured:
            entries.append(measured[option.key])
            continue
        a, b = _power(bound(option))
        error = a * max(option.predicted_error, 0.0) ** b
        points = curve(option)
        loss = _interpolate(_isotonic(points), error) if points else _prior_loss(error, q0)
        loss = min(loss, abs(q0))
        times = latency(option)
        scale = math.exp(statistics.fmean(math.log(t / max(m, 1e-9)) for m, t in times)) if (
            times) else 1.0  # fmt: skip
        entries.append(
            option.entry(
                error=error,
                latency_ratio=scale * option.macs_ratio,
                quality=q0 - loss if maximize else q0 + loss,
                measured=False,
            )
        )
    return Profile(
        key=key,
        metric=metric,
        maximize=maximize,
        dense_quality=q0,
        dense_params=int(dense["params"]),
        dense_latency_ms=float(dense["latency_ms"]),
        dense_bytes=int(dense.get("bytes", 0)),
        batch_size=int(dense["batch_size"]),
        groups=dict(dense["groups"]),
        entries=entries,
        settings=dict(settings or {}),
        seconds=seconds,
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
