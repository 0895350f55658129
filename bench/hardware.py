"""Dense vs tensorized ResNet-20 and LeNet-300-100 on the device at hand; one markdown table.

    python bench/hardware.py              # the full grid (CUDA: under 8 minutes; CPU: an hour+)
    python bench/hardware.py --quick      # LeNet-300-100 + ResNet-8, one rank level, auto paths
    python bench/hardware.py --profile    # + the top ops of a training step, dense vs Tucker-2

Variants per model: dense, and for each topology in ``tn.TOPOLOGIES`` and each rank level the
tensorized model, with its layers' own path choice (``auto``: measured by ``tn.freeze_paths``)
and with each path forced on every tensorized layer that has it. A rank level is a compression
target: each layer gets rank ``round(f * its output channels)``, with ``f`` the largest multiple
of 1/256 (up to 4) that makes the whole model at least 3x (7x) smaller. ResNet-20 (CIFAR: 3x32x32,
10 classes) tensorizes its 3x3 block convolutions ``layer*.*.conv*`` (Tucker-2 and CP of order 1,
MPO and tree of order 2); LeNet-300-100 (1x28x28) its ``fc1`` and ``fc2`` (order 2). Weights are
random (timing does not depend on them).

Each variant runs eager and compiled (``torch.compile(dynamic=False)``: ``reduce-overhead``, i.e.
CUDA graphs, on CUDA; ``default`` on the CPU; paths frozen first), in float32 and in bfloat16
autocast, for a training step (forward, cross-entropy, backward, SGD step with
``zero_grad(set_to_none=True)``; the optimizer stays eager) and for inference (eval mode,
``torch.inference_mode``). A time is the median of ``--steps`` steps, the variants of one model,
mode and dtype interleaved in an order that rotates every round, after warm-up; a compiled model's
first calls (compilation, CUDA-graph recording, slow first runs) are never timed. On CUDA,
cuDNN autotuning and TF32 matmuls are on (convolutions use TF32 by default; matmuls then match).
A sample only counts if no other process was runnable around it, within a waiting limit
(``bench/layers.py``'s Timer); ``*`` marks rows where over 20% of the samples were taken anyway.

Time budget (``--budget``; 450 s on CUDA). Compiling dominates: two graphs (training, inference)
per variant and dtype, tens of seconds each, so the full grid (about 120 ResNet-20 graphs) cannot
be compiled in 8 minutes. Compiled variants are chosen in tiers, as many whole tiers as the
estimate allows: (0) dense and Tucker-2 ``auto`` at the first level (the targets' pair), (1)
Tucker-2 ``auto`` at the other levels, (2) the other topologies' ``auto``, (3) forced paths;
the rest runs eager only, and the header says where the cut fell. Before each compiled group the
estimate of what is left is rescaled by the compile times measured so far, and the cut moves down
if it no longer fits (below tier 0 too, except for the first model: its dense and Tucker-2 pair
is always compiled); the notes under the table say so. Prints, writes nothing: copy it into
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import functools
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tnsearch import tn
from tnsearch.models import MLP, ResNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.layers import Timer, machine  # noqa: E402


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: how to build it, its input, what to tensorize, and cost guesses.

    ``compile_s``: seconds to compile the dense model's (training, inference) graph, per device
    type; ``step_ms``: its eager (training, inference) step at ``REF_BATCH``. CPU values were
    measured on the 2-core session machine (busy; ResNet-20 extrapolated from ResNet-8 by size);
    CUDA values are guesses, corrected at run time by the measured compile times.
    """

    title: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]  # (C, H, W)
    layers: str  # glob of the layers to tensorize
    orders: dict[str, int]  # topology -> order (default 2)
    compile_s: dict[str, tuple[float, float]]
    step_ms: dict[str, tuple[float, float]]


_RESNET = functools.partial(ResNet, in_channels=3, image_size=32, num_classes=10)
CONV_ORDERS = {"tucker": 1, "cp": 1}  # Tucker-2 (Kim et al.) and CP (Lebedev et al.) forms
MODELS = {
    "resnet20": ModelSpec(
        "ResNet-20",
        functools.partial(_RESNET, depth=20),
        (3, 32, 32),
        "layer*.*.conv*",
        CONV_ORDERS,
        compile_s={"cpu": (110.0, 40.0), "cuda": (35.0, 15.0)},
        step_ms={"cpu": (250.0, 60.0), "cuda": (8.0, 2.5)},
    ),
    "resnet8": ModelSpec(
        "ResNet-8",
        functools.partial(_RESNET, depth=8),
        (3, 32, 32),
        "layer*.*.conv*",
        CONV_ORDERS,
        compile_s={"cpu": (45.0, 18.0), "cuda": (15.0, 7.0)},
        step_ms={"cpu": (90.0, 20.0), "cuda": (3.5, 1.2)},
    ),
    "lenet300": ModelSpec(
        "LeNet-300-100",
        functools.partial(MLP, in_channels=1, image_size=28, num_classes=10),
        (1, 28, 28),
        "fc[12]",
        {},
        compile_s={"cpu": (15.0, 5.0), "cuda": (8.0, 4.0)},
        step_ms={"cpu": (3.0, 1.0), "cuda": (1.0, 0.3)},
    ),
}
LEVELS = (3.0, 7.0)  # rank levels: at least this many times fewer parameters than dense
TARGET = "tucker"  # the Tucker-2 ResNet-20: the pair the targets are about
FRACTIONS = tuple(k / 256 for k in range(1, 1025))  # rank = round(f * output channels)
REF_BATCH = {"cpu": 64, "cuda": 256}
FIRST_COMPILE_S = {"cpu": 12.0, "cuda": 20.0}  # once per process: inductor start-up
TN_SLOWER = 1.5  # a tensorized model compiles (and runs eager) this much slower than dense
AUTOPATH_S = {"cpu": 0.3, "cuda": 0.03}  # measuring one layer's paths for one key
WARMUP = {"eager": 2, "compiled": 5}  # calls after the first (compiling) one, untimed
TIERS = (
    "dense and Tucker-2 auto at the first level only",
    "dense and Tucker-2 auto at every level",
    "the auto path of every variant (forced paths eager only)",
    "every variant",
)


@dataclass
class Config:
    """One benchmark run (``main`` fills it from the command line)."""

    models: tuple[str, ...] = ("resnet20", "lenet300")
    topologies: tuple[str, ...] = tuple(tn.TOPOLOGIES)
    levels: tuple[float, ...] = LEVELS
    all_paths: bool = True  # forced paths too, or auto only
    modes: tuple[str, ...] = ("eager", "compiled")
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    steps: int = 30
    batch: int = 256
    device: str = "cuda"
    budget: float = 450.0  # seconds for the whole run
    max_wait: float = 5.0  # seconds a group may wait for an idle machine
    profile: bool = False


@dataclass
class Variant:
    """Dense (``topology=None``) or one tensorized model of the grid."""

    model: str
    topology: str | None = None
    level: float | None = None
    path: str = "auto"
    tier: int = 0
    fraction: float = 0.0
    module: nn.Module | None = None
    params: int = 0
    compression: float = 1.0

    @property
    def name(self) -> str:
        return (
            "dense" if self.topology is None else f"{self.topology} >={self.level:g}x {self.path}"
        )


@dataclass
class Row:
    """One line of the table: a variant in one mode and dtype."""

    variant: Variant
    mode: str
    dtype: str
    train_ms: float
    infer_ms: float
    busy: bool = False
    compile_s: tuple[float, float] | None = None
    picks: str = ""
    train_ratio: float | None = None
    infer_ratio: float | None = None


@dataclass
class Report:
    """What a run found: table rows, notes (budget cuts, elapsed time), profile tables."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)


# --- the grid -------------------------------------------------------------------------------


def _targets(model: nn.Module, glob: str) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if fnmatch.fnmatchcase(n, glob) and isinstance(m, (nn.Linear, nn.Conv2d))
    }


def _rank(fraction: float, m: nn.Module) -> int:
    return max(1, round(fraction * m.weight.shape[0]))


@functools.cache
def _tn_params(shape: tuple[int, ...], bias: bool, topology: str, order: int, rank: int) -> int:
    out, inp, *kernel = shape
    dense = nn.Conv2d(inp, out, tuple(kernel), bias=bias) if kernel else nn.Linear(inp, out, bias)
    return tn.tensorize(dense, topology=topology, rank=rank, order=order, init="random").n_params


def rank_fraction(spec: ModelSpec, topology: str, level: float) -> float:
    """The largest ``f`` in FRACTIONS whose model is ``level`` times smaller (else the smallest)."""
    dense = spec.build()
    total, layers = tn.n_params(dense), _targets(dense, spec.layers).values()
    rest = total - sum(tn.n_params(m) for m in layers)
    order = spec.orders.get(topology, 2)

    def small_enough(k: int) -> bool:
        f = FRACTIONS[k]
        params = rest + sum(
            _tn_params(tuple(m.weight.shape), m.bias is not None, topology, order, _rank(f, m))
            for m in layers
        )
        return total / params >= level

    lo, hi = 0, len(FRACTIONS) - 1  # small_enough is true up to some k, then false
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if small_enough(mid) else (lo, mid - 1)
    return FRACTIONS[lo]


def tensorized(spec: ModelSpec, topology: str, fraction: float) -> nn.Module:
    """The model of ``spec`` with its target layers tensorized at rank ``fraction`` x outputs."""
    model, order = spec.build(), spec.orders.get(topology, 2)
    for name, m in _targets(model, spec.layers).items():
        rank = _rank(fraction, m)
        model.set_submodule(
            name, tn.tensorize(m, topology=topology, rank=rank, order=order, init="random")
        )
    return model


def variants(cfg: Config) -> list[Variant]:
    """The grid, without modules: dense, then topology x level x (auto, forced paths)."""
    target = TARGET if TARGET in cfg.topologies else cfg.topologies[0]
    out = []
    for model in cfg.models:
        out.append(Variant(model))
        layers = _targets(MODELS[model].build(), MODELS[model].layers).values()
        for topology in cfg.topologies:
            cls = tn.TOPOLOGIES[topology]
            paths = dict.fromkeys(
                p for m in layers for p in cls.available_paths(isinstance(m, nn.Conv2d))
            )
            for i, level in enumerate(cfg.levels):
                for path in ("auto", *paths) if cfg.all_paths else ("auto",):
                    tier = 3 if path != "auto" else 2 if topology != target else min(i, 1)
                    out.append(Variant(model, topology, level, path, tier))
    return out


def build(cfg: Config, vs: list[Variant], device: torch.device, x: torch.Tensor) -> None:
    """Give the variants of one model their modules; freeze the auto paths for every dtype."""
    spec = MODELS[vs[0].model]
    torch.manual_seed(0)
    dense = spec.build().to(device)
    total, autos = tn.n_params(dense), {}
    for v in vs:
        if v.topology is None:
            v.module = dense
        elif v.path == "auto":
            v.fraction = rank_fraction(spec, v.topology, v.level)
            torch.manual_seed(0)
            v.module = tensorized(spec, v.topology, v.fraction).to(device)
            for dtype in cfg.dtypes:
                with _autocast(device, dtype):
                    tn.freeze_paths(v.module, x)
            autos[v.topology, v.level] = v
        else:
            auto = autos[v.topology, v.level]
            v.fraction, v.module = auto.fraction, copy.deepcopy(auto.module)
            for m in v.module.modules():
                if isinstance(m, tn.TNLayer) and v.path in m.paths:
                    m.path = v.path
        v.params = tn.n_params(v.module)
        v.compression = total / v.params


# --- the time budget ------------------------------------------------------------------------


@functools.cache
def _n_layers(model: str) -> int:
    return len(_targets(MODELS[model].build(), MODELS[model].layers))


def estimate(cfg: Config, vs: list[Variant], groups, top: int, built=frozenset()) -> float:
    """Seconds to run ``groups`` ((model, dtype, mode) triples), compiling tiers <= ``top``.

    Building a model not in ``built`` includes measuring its auto variants' paths.
    """
    dev = torch.device(cfg.device).type
    seconds = 0.0
    for model, _, mode in groups:
        spec = MODELS[model]
        for v in (v for v in vs if v.model == model):
            slower = 1.0 if v.topology is None else TN_SLOWER
            if model not in built and v.topology and v.path == "auto":
                seconds += AUTOPATH_S[dev] * _n_layers(model) * 2 * len(cfg.dtypes)
            if mode == "compiled":
                if v.tier > top:
                    continue
                seconds += sum(spec.compile_s[dev]) * slower
            ms = sum(spec.step_ms[dev]) * cfg.batch / REF_BATCH[dev]
            ms *= slower if mode == "eager" else 0.7
            seconds += (1 + WARMUP[mode] + cfg.steps) * ms / 1e3
        seconds += cfg.max_wait / 2
        built = built | {model}
    return seconds


def cut(cfg: Config, vs, groups, left: float, built=frozenset(), scale=1.0, floor=0) -> int:
    """The highest tier (3 down to ``floor``) whose estimate fits in ``left`` seconds, compiling
    ``scale`` times slower than estimated; ``floor`` if none does (-1: compile nothing)."""
    base = estimate(cfg, vs, groups, -1, built)
    for top in range(3, floor, -1):
        if base + scale * (estimate(cfg, vs, groups, top, built) - base) <= left:
            return top
    return floor


def plan(cfg: Config) -> tuple[list[Variant], int, float]:
    """The grid, the compiled tier cut for the budget, and the estimated seconds."""
    vs = variants(cfg)
    groups = _groups(cfg)
    if "compiled" not in cfg.modes:
        return vs, -1, estimate(cfg, vs, groups, -1)
    first = FIRST_COMPILE_S[torch.device(cfg.device).type]
    top = cut(cfg, vs, groups, cfg.budget - first)
    return vs, top, first + estimate(cfg, vs, groups, top)


def _groups(cfg: Config) -> list[tuple[str, str, str]]:
    return [(m, d, mode) for m in cfg.models for d in cfg.dtypes for mode in cfg.modes]


# --- timing -------------------------------------------------------------------------------


def _autocast(device: torch.device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(net, opt, x, y, device, dtype, graphs: bool) -> None:
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with _autocast(device, dtype):
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(device)


def _infer_step(net, x, device, dtype, graphs: bool) -> None:
    if graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with torch.inference_mode(), _autocast(device, dtype):
        net(x)
    _sync(device)


def _seconds(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _picks(module: nn.Module, dtype: str, training: bool) -> str:
    want = getattr(torch, dtype)
    picked = Counter(
        p
        for m in module.modules()
        if isinstance(m, tn.TNLayer)
        for k, p in m.chosen_paths.items()
        if k[2] == want and k[3] == training
    )
    return ", ".join(f"{p} x{c}" for p, c in picked.most_common())


def _profile(run: Callable[[], None], device: torch.device, steps: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            run()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)


def run_group(cfg: Config, vs: list[Variant], mode: str, dtype: str, report: Report) -> None:
    """Time one model's variants in one mode and dtype, interleaved; append their rows."""
    device = torch.device(cfg.device)
    spec, compiled = MODELS[vs[0].model], mode == "compiled"
    graphs = compiled and device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.batch, *spec.input_shape, generator=gen).to(device)
    y = torch.randint(0, 10, (cfg.batch,), generator=gen).to(device)
    compile_mode = "reduce-overhead" if device.type == "cuda" else "default"
    train, infer = {}, {}
    for v in vs:
        net = torch.compile(v.module, mode=compile_mode, dynamic=False) if compiled else v.module
        opt = torch.optim.SGD(v.module.parameters(), lr=0.01, momentum=0.9)
        train[v.name] = functools.partial(_train_step, net, opt, x, y, device, dtype, graphs)
        infer[v.name] = functools.partial(_infer_step, net, x, device, dtype, graphs)
    timer = Timer(max_wait=cfg.max_wait)
    times, first, dirty = {}, {}, Counter()
    for phase, runs in (("train", train), ("infer", infer)):
        for v in vs:
            v.module.train(phase == "train")
        for name, step in runs.items():
            first[name, phase] = _seconds(step)  # compiles; never timed
            for _ in range(WARMUP[mode]):
                step()
        samples = {name: [] for name in runs}
        names = list(runs)
        for rep in range(cfg.steps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                before = timer.dirty
                samples[name].append(timer(runs[name]))
                dirty[name] += timer.dirty - before
        for name, t in samples.items():
            times[name, phase] = 1e3 * statistics.median(t)
    if cfg.profile and vs[0].model.startswith("resnet") and mode == _profiled_mode(cfg):
        for v in vs:
            if v.topology is None or (v.tier == 0 and v.path == "auto"):
                v.module.train()
                title = f"{spec.title} {v.name}, {mode}, {dtype}, training step"
                report.profiles.append(f"### {title}\n\n```\n{_profile(train[v.name], device)}```")
    dense = next((v.name for v in vs if v.topology is None), None)
    for v in vs:
        row = Row(v, mode, dtype, times[v.name, "train"], times[v.name, "infer"])
        row.busy = dirty[v.name] > 0.2 * 2 * cfg.steps
        if compiled:
            row.compile_s = (first[v.name, "train"], first[v.name, "infer"])
        if v.topology and v.path == "auto":
            row.picks = f"{_picks(v.module, dtype, True)} / {_picks(v.module, dtype, False)}"
        if dense is not None:
            row.train_ratio = row.train_ms / times[dense, "train"]
            row.infer_ratio = row.infer_ms / times[dense, "infer"]
        report.rows.append(row)


def _profiled_mode(cfg: Config) -> str:
    return "compiled" if "compiled" in cfg.modes else "eager"


def _dynamo_limit():
    # every variant adds two graphs to the cache of the same forward (ResNet.forward, MLP.forward)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch({name: 256})


def run(cfg: Config, log: Callable[[str], None] = lambda s: None) -> Report:
    """Run the grid of ``cfg``; return its rows, notes and profiles."""
    start = time.perf_counter()
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    vs, top, _ = plan(cfg)
    groups, report = _groups(cfg), Report()
    measured = estimated = 0.0
    floor = 0  # the first model's tier 0 is always compiled
    for model in cfg.models:
        spec, mvs = MODELS[model], [v for v in vs if v.model == model]
        log(f"[{time.perf_counter() - start:.0f} s] {model}: building {len(mvs)} variants")
        build(cfg, mvs, device, torch.randn(cfg.batch, *spec.input_shape).to(device))
        for dtype in cfg.dtypes:
            for mode in cfg.modes:
                chosen = mvs
                if mode == "compiled":  # re-plan with the compile speed seen so far
                    left = cfg.budget - (time.perf_counter() - start)
                    rest = groups[groups.index((model, dtype, mode)) :]
                    scale = measured / estimated if estimated else 1.0
                    new = min(top, cut(cfg, vs, rest, left, {model}, scale, floor))
                    if new < top:
                        report.notes.append(
                            f"From {spec.title} {dtype} on, compiled "
                            f"{TIERS[new] + ' only' if new >= 0 else 'nothing'} to stay in "
                            f"the budget: compiling took {scale:.1f}x the estimate."
                        )
                        top = new
                    chosen = [v for v in mvs if v.tier <= top]
                    if not chosen:
                        continue
                log(f"[{time.perf_counter() - start:.0f} s] {model} {mode} {dtype}: {len(chosen)}")
                n = len(report.rows)
                with _dynamo_limit():
                    run_group(cfg, chosen, mode, dtype, report)
                if mode == "compiled":
                    fresh = not estimated  # the first compile also starts inductor up
                    for row in report.rows[n:]:
                        slower = 1.0 if row.variant.topology is None else TN_SLOWER
                        measured += sum(row.compile_s)
                        estimated += sum(spec.compile_s[device.type]) * slower
                    if fresh:
                        measured = max(0.0, measured - FIRST_COMPILE_S[device.type])
                    torch._dynamo.reset()
        floor = -1
        for v in mvs:
            v.module = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report.notes.append(f"Elapsed: {time.perf_counter() - start:.0f} s.")
    return report


# --- output -------------------------------------------------------------------------------


def _ratio(q: float | None) -> str:
    return "" if q is None else f"{q:.2f}x"


def format_table(rows: list[Row]) -> str:
    """The markdown table: one line per (model, variant, mode, dtype)."""
    lines = [
        "| model | variant | ranks | params | compression | mode | dtype | train ms "
        "| train vs dense | infer ms | infer vs dense | compile s (train / infer) "
        "| auto paths (train / infer) |",
        "|" + "---|" * 13,
    ]

    def key(r: Row) -> tuple:
        v = r.variant
        place = (v.topology or "", v.level or 0, v.path != "auto", v.path)
        return (list(MODELS).index(v.model), r.mode != "eager", r.dtype, *place)

    for r in sorted(rows, key=key):
        v = r.variant
        ranks = "-" if v.topology is None else f"{v.fraction:.3g} C"
        compiled = "" if r.compile_s is None else f"{r.compile_s[0]:.1f} / {r.compile_s[1]:.1f}"
        lines.append(
            f"| {MODELS[v.model].title} | {v.name} | {ranks} | {v.params:,} "
            f"| {v.compression:.1f}x | {r.mode}{'*' if r.busy else ''} | {r.dtype} "
            f"| {r.train_ms:.3g} | {_ratio(r.train_ratio)} | {r.infer_ms:.3g} "
            f"| {_ratio(r.infer_ratio)} | {compiled} | {r.picks} |"
        )
    return "\n".join(lines)


#: (label, device type, max train ratio, max infer ratio or None) of the issue's targets
TARGETS = (("CPU", "cpu", 1.0, None), ("GPU", "cuda", 0.75, 1.0))


def _score(r: Row, train_max: float, infer_max: float | None) -> float:
    """At most 1 where the row meets the target; the larger, the further off."""
    return max(r.train_ratio / train_max, r.infer_ratio / infer_max if infer_max else 0.0)


def targets(rows: list[Row], device_type: str) -> list[str]:
    """One line per target and dtype: met or missed, with the numbers."""
    present = [m for m in ("resnet20", "resnet8") if any(r.variant.model == m for r in rows)]
    if not present:
        return ["- Targets: not evaluated (no ResNet in --models)."]
    model = present[0]
    stand_in = "" if model == "resnet20" else " (ResNet-8 standing in for ResNet-20)"
    lines = []
    for label, dev, train_max, infer_max in TARGETS:
        text = f"{label} target: compiled tensorized ResNet-20 >= 3x smaller trains <= {train_max}x"
        text += f" and infers <= {infer_max}x" if infer_max else ""
        text += " compiled dense"
        if dev != device_type:
            lines.append(f"- {text}: not evaluated on {device_type}.")
            continue
        compiled = [r for r in rows if r.variant.model == model and r.mode == "compiled"]
        for dtype in dict.fromkeys(r.dtype for r in compiled) or ["-"]:
            same = [r for r in compiled if r.dtype == dtype]
            dense = next((r for r in same if r.variant.topology is None), None)
            cands = [r for r in same if r.variant.topology and r.variant.compression >= 3]
            if dense is None or not cands:
                lines.append(f"- {text}, {dtype}: not measured (no compiled pair).")
                continue

            score = functools.partial(_score, train_max=train_max, infer_max=infer_max)
            best = min(cands, key=score)
            lines.append(
                f"- {text}, {dtype}{stand_in}: {'met' if score(best) <= 1 else 'MISSED'}: "
                f"{best.variant.name} ({best.variant.compression:.1f}x smaller) trains in "
                f"{best.train_ms:.3g} vs {dense.train_ms:.3g} ms ({best.train_ratio:.2f}x), "
                f"infers in {best.infer_ms:.3g} vs {dense.infer_ms:.3g} ms "
                f"({best.infer_ratio:.2f}x)."
            )
    return lines


def config(argv: list[str] | None = None) -> Config:
    """The run's Config from the command line (defaults depend on the device and --quick)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="LeNet-300-100 + ResNet-8, CI-sized (CPU < 2 min)")
    add("--models", help=f"comma-separated, of: {', '.join(MODELS)}")
    add("--topologies", help=f"comma-separated (default all: {', '.join(tn.TOPOLOGIES)})")
    add("--modes", help="comma-separated: eager, compiled (default both)")
    add("--dtypes", help="comma-separated: float32, bfloat16 (default both; --quick float32)")
    add("--steps", type=int, help="timed steps per variant (default 30 CUDA, 15 CPU, 5 quick)")
    add("--batch", type=int, help="batch size (default 256 CUDA, 64 CPU, 32 quick)")
    add("--device", help="cpu or cuda (default: cuda when available)")
    add("--budget", type=float, help="seconds for the run (default 450 CUDA, 110 quick)")
    add("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    add("--paths", choices=("all", "auto"), help="forced paths too, or auto only (quick: auto)")
    add("--profile", action="store_true", help="top ops of a training step, dense vs Tucker-2")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = Config(device=device, profile=args.profile)
    if torch.device(device).type != "cuda":
        cfg.steps, cfg.batch, cfg.budget, cfg.max_wait = 15, 64, 3600.0, 60.0
    if args.quick:
        cfg.models, cfg.levels, cfg.all_paths = ("resnet8", "lenet300"), LEVELS[:1], False
        cfg.dtypes, cfg.steps, cfg.batch, cfg.budget, cfg.max_wait = ("float32",), 5, 32, 110, 2
    for key in ("models", "topologies", "modes", "dtypes"):
        if getattr(args, key):
            setattr(cfg, key, tuple(getattr(args, key).split(",")))
    if args.paths:
        cfg.all_paths = args.paths == "all"
    for key in ("steps", "batch", "budget"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    return cfg


def main() -> None:
    cfg = config()
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    _, top, est = plan(cfg)
    print(f"Machine: {machine()}" + (f"; {torch.cuda.get_device_name(device)}" if cuda else ""))
    print(
        f"Device {device}, batch {cfg.batch}, median of {cfg.steps} interleaved steps after "
        f"1 + {WARMUP['eager']} (eager) / 1 + {WARMUP['compiled']} (compiled) untimed calls, "
        f"torch.compile mode {'reduce-overhead' if cuda else 'default'}, "
        f"{'TF32 on, ' if cuda else ''}rank levels "
        f"{', '.join(f'>= {lv:g}x' for lv in cfg.levels)} smaller (ranks = f * out channels).\n"
        f"Compiled: {TIERS[top] if top >= 0 else 'nothing'}; estimated {est:.0f} s "
        f"(budget {cfg.budget:.0f} s).\n",
        flush=True,
    )
    report = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(
        format_table(report.rows), "", *targets(report.rows, device.type), *report.notes, sep="\n"
    )
    for text in report.profiles:
        print("", text, sep="\n")


if __name__ == "__main__":
    main()
