"""Latency of a whole model as it would be deployed: eval mode, no autograd, fixed batch.

Warm up first (this is also when tensorized layers pick their fastest path), then time, synchronized
on CUDA, and report the spread as well as the median.

A search compares latencies measured minutes and machines apart, so its objective is `paired`: a
ratio to a reference model (the dense one) timed side by side on the same inputs, A B B A A B ...,
so that drift, a busy moment or another process hits both alike and cancels out of the ratio.
Absolute milliseconds (`measure`) are kept beside it for people, never compared across runs.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from tnsearch.config import LatencyConfig


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per batch over the timed repeats."""

    p10: float
    p50: float
    p90: float
    mean: float
    batch_size: int
    repeats: int
    device: str
    dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def to_device(example, device: torch.device):
    """`example` (a tensor or a dict of tensors) on `device`."""
    if isinstance(example, Mapping):
        return {k: v.to(device) for k, v in example.items()}
    return example.to(device)


def batch_size(example) -> int:
    """The batch size of `example` (a tensor or a dict of tensors)."""
    first = next(iter(example.values())) if isinstance(example, Mapping) else example
    return int(first.shape[0])


def example_batch(datamodule, size: int):
    """`size` inputs of the data: its `example_input(size)` when it has one; else the inputs of
    the first validation batches (a batch's first element when it is a tuple or list), cut or
    repeated to `size` (any LightningDataModule)."""
    if hasattr(datamodule, "example_input"):
        return datamodule.example_input(size)
    datamodule.setup("validate")
    parts, have = [], 0
    for batch in datamodule.val_dataloader():
        inputs = batch[0] if isinstance(batch, tuple | list) else batch
        parts.append(inputs)
        have += batch_size(inputs)
        if have >= size:
            break
    if not parts:
        raise ValueError("data: the validation split is empty: no batch to measure latency on")
    if isinstance(parts[0], Mapping):
        joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        reps = -(-size // batch_size(joined))
        return {k: v.repeat(reps, *[1] * (v.dim() - 1))[:size] for k, v in joined.items()}
    joined = torch.cat(parts)
    reps = -(-size // joined.shape[0])
    return joined.repeat(reps, *[1] * (joined.dim() - 1))[:size]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    model: nn.Module, example: torch.Tensor, timing: Timing | None = None, **changes: Any
) -> LatencyStats:
    """Time `model` on `example` (one batch) in eval mode, alone, as `timing` says (default
    `Timing()`; `changes`: fields of it changed, e.g. `repeats=5`).

    Args:
        model: the model; it is moved to the timing's device (default: where the model's
            parameters are) and put in eval mode, then restored.
        example: one input batch: a tensor (B, ...), or a dict of tensors (B, ...) passed as
            keyword arguments (e.g. a tokenized batch: input_ids, attention_mask); B is the
            measured batch size.
        timing: warmup (untimed runs first), repeats (timed runs; the statistics are over
            these), device, dtype, threads (see `Timing`).

    Returns:
        LatencyStats in milliseconds per batch.
    """
    timing = (timing or Timing()).but(**changes)
    warmup, repeats, dtype = timing.warmup, timing.repeats, timing.dtype
    if repeats < 1:
        raise ValueError(f"latency.repeats: must be >= 1, got {repeats}")
    device = _device(timing, model)
    was_training = model.training
    model.to(device).eval()
    example = to_device(example, device)
    call = (lambda: model(**example)) if isinstance(example, Mapping) else (lambda: model(example))
    times: list[float] = []
    try:
        with applied(timing, device):
            for _ in range(warmup):
                call()
            _sync(device)
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                _sync(device)
                times.append((time.perf_counter() - start) * 1e3)
        name = device_name(device)
    finally:
        model.train(was_training)
    times.sort()
    return LatencyStats(
        p10=quantile(times, 0.1),
        p50=quantile(times, 0.5),
        p90=quantile(times, 0.9),
        mean=statistics.fmean(times),
        batch_size=batch_size(example),
        repeats=repeats,
        device=name,
        dtype=dtype,
    )


#: Paired ratios that spread wider than this (p90 / p10) are measured again, then called noisy.
NOISY_SPREAD = 1.3
#: Measurements of one pair at most (the first and two more) before its ratio is called noisy.
ATTEMPTS = 3
#: Each timed sample repeats the call until it lasts about this long (ms): long enough for the
#: clock, short enough that most samples fall between a busy neighbour's time slices (the same
#: study beside two busy processes: each plan's objective within 0.1-5.6% of a quiet run at 0.5
#: ms, 0-19% at 2 ms; bench/RESULTS.md).
SAMPLE_MS = 0.5


#: A compiled model runs slowly for its first few calls after compiling (measured: 3-4 calls on
#: CPU), whatever latency.warmup says: it is warmed up this many times at least.
COMPILED_WARMUP = 10


@dataclass(frozen=True)
class Timing:
    """How a model is timed: the one settings object of every latency measurement (a trial's
    objective, the profile, compress, the benchmarks), read from `latency.*` by `of`.

    Attributes:
        warmup: untimed calls of each model first (tensorized layers choose their paths then).
        repeats: timed calls (`measure`), or timed pairs (`paired`).
        device: where to time (None: where the model's parameters are).
        dtype: "float32", or "bfloat16" for autocast in bfloat16.
        threads: torch's (and onnxruntime's) CPU threads while timing (None: as they are).
        spread, attempts: a measurement whose paired ratios spread wider than `spread`
            (p90 / p10) is made again, up to `attempts` in all, then called noisy.
        batch_size: the examples per timed batch (`example_batch`).
        runtime: "torch", or "onnxruntime" (the exported ONNX on the CPU).
        compile: torch.compile mode of the timed models ("none": eager).
    """

    warmup: int = 10
    repeats: int = 50
    device: str | None = None
    dtype: str = "float32"
    threads: int | None = None
    spread: float = NOISY_SPREAD
    attempts: int = ATTEMPTS
    batch_size: int = 64
    runtime: str = "torch"
    compile: str = "none"

    @classmethod
    def of(
        cls, latency_cfg: LatencyConfig | Mapping[str, Any], *, device: str | None = None
    ) -> Timing:
        """The `latency.*` section as a Timing (`device`: where the trial runs, for
        `latency.device=null`); a compiled model is warmed up COMPILED_WARMUP times at least."""
        cfg = LatencyConfig.of(latency_cfg)
        compiled = "none" if cfg.compile == "auto" else cfg.compile
        return cls(
            warmup=max(cfg.warmup, COMPILED_WARMUP) if compiled != "none" else cfg.warmup,
            repeats=cfg.repeats,
            device=cfg.device or device,
            dtype=cfg.dtype,
            threads=cfg.threads,
            spread=float(cfg.noisy),
            attempts=cfg.attempts,
            batch_size=cfg.batch_size,
            runtime=cfg.runtime,
            compile=compiled,
        )

    def but(self, **changes: Any) -> Timing:
        """The same settings with `changes` (e.g. fewer pairs for the profile)."""
        return replace(self, **changes)


def compiled(model: nn.Module, mode: str) -> nn.Module:
    """torch.compile with tnsearch's mode names ("default", "reduce-overhead", "max-autotune"),
    those of `Timing.compile` and `trainer.compile`."""
    return torch.compile(model, mode=None if mode == "default" else mode)


@dataclass(frozen=True)
class Calls:
    """What `paired_calls` measured: one value per pair, each list sorted."""

    ratios: list[float]  # call ms / reference ms
    mine: list[float]  # the call, ms
    theirs: list[float]  # the reference, ms
    attempts: int  # measurements made (more than one: the first ones spread too widely)
    noisy: bool  # the kept measurement still spread wider than asked

    def stats(self, device: str) -> PairedStats:
        """Their statistics, on `device` (its name)."""
        return PairedStats.of(
            self.ratios, self.mine, self.theirs, attempts=self.attempts, noisy=self.noisy,
            device=device,
        )  # fmt: skip


@dataclass(frozen=True)
class PairedStats:
    """A model's latency as a ratio to a reference timed beside it (median of the pairs)."""

    ratio: float  # model time / reference time, median of the pairs
    ratio_p10: float
    ratio_p90: float
    latency_ms: float  # the model, median ms per batch
    latency_p10_ms: float
    latency_p90_ms: float
    reference_ms: float  # the reference, median ms per batch
    pairs: int
    attempts: int  # measurements made (more than one: the first ones spread too widely)
    noisy: bool  # the ratios still spread wider than NOISY_SPREAD after `attempts`
    device: str  # the device's name, e.g. "NVIDIA H200" or the CPU model

    @classmethod
    def of(
        cls,
        ratios: list[float],
        mine: list[float],
        theirs: list[float],
        *,
        attempts: int,
        noisy: bool,
        device: str,
    ) -> PairedStats:
        """The statistics of `paired_calls`'s sorted ratios and milliseconds (one per pair)."""
        return cls(
            ratio=quantile(ratios, 0.5),
            ratio_p10=quantile(ratios, 0.1),
            ratio_p90=quantile(ratios, 0.9),
            latency_ms=quantile(mine, 0.5),
            latency_p10_ms=quantile(mine, 0.1),
            latency_p90_ms=quantile(mine, 0.9),
            reference_ms=quantile(theirs, 0.5),
            pairs=len(ratios),
            attempts=attempts,
            noisy=noisy,
            device=device,
        )

    @classmethod
    def itself(cls, alone: LatencyStats) -> PairedStats:
        """The reference beside itself: a ratio of 1 by definition, its milliseconds `alone`."""
        return cls(
            ratio=1.0,
            ratio_p10=1.0,
            ratio_p90=1.0,
            latency_ms=alone.p50,
            latency_p10_ms=alone.p10,
            latency_p90_ms=alone.p90,
            reference_ms=alone.p50,
            pairs=0,
            attempts=1,
            noisy=False,
            device=alone.device,
        )

    @property
    def spread(self) -> float:
        """p90 / p10 of the paired ratios (1.0: every pair agreed)."""
        return self.ratio_p90 / max(self.ratio_p10, 1e-12)

    def fields(self) -> dict[str, Any]:
        """The latency fields of a trial's record (`study.record.Record`), by name: the one
        list of them (`FIELDS`)."""
        return {name: getattr(self, attr) for name, attr in _FIELD_ATTRS.items()}

    def as_dict(self) -> dict:
        return asdict(self)


#: A trial record's latency fields (`study.record.Record`) and the PairedStats attribute each is.
_FIELD_ATTRS = {
    "latency_ratio": "ratio",
    "latency_ratio_p10": "ratio_p10",
    "latency_ratio_p90": "ratio_p90",
    "latency_ms": "latency_ms",
    "latency_p10_ms": "latency_p10_ms",
    "latency_p90_ms": "latency_p90_ms",
    "dense_latency_ms": "reference_ms",
    "latency_device": "device",
    "latency_noisy": "noisy",
}
#: Their names.
FIELDS = tuple(_FIELD_ATTRS)
#: Those that are not figures: MLflow tags, not metrics.
TAG_FIELDS = ("latency_device", "latency_noisy")


def paired_calls(
    call: Callable[[], object],
    reference: Callable[[], object],
    *,
    pairs: int = 50,
    warmup: int = 10,
    sync: Callable[[], None] = lambda: None,
    spread: float = NOISY_SPREAD,
    attempts: int = ATTEMPTS,
    sample_ms: float = SAMPLE_MS,
) -> Calls:
    """Time `call` and `reference` in turn (the order alternating), `pairs` times.

    A measurement whose ratios spread wider than `spread` (p90 / p10) is repeated, up to
    `attempts` in all; the one that spread least is kept (`Calls`).
    """
    if pairs < 1:
        raise ValueError(f"latency.repeats: must be >= 1, got {pairs}")

    def timed(fn: Callable[[], object], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) * 1e3 / n

    for _ in range(warmup):
        call(), reference()
    sync()
    once = min(timed(call, 1), timed(reference, 1))
    n = max(1, min(1000, math.ceil(sample_ms / max(once, 1e-6))))
    best: tuple[list[float], list[float], list[float]] | None = None
    made = 0
    while made < attempts:
        made += 1
        ratios, mine, theirs = [], [], []
        for k in range(pairs):
            if k % 2:
                b = timed(reference, n)
                a = timed(call, n)
            else:
                a = timed(call, n)
                b = timed(reference, n)
            ratios.append(a / max(b, 1e-12))
            mine.append(a)
            theirs.append(b)
        ratios.sort(), mine.sort(), theirs.sort()
        if best is None or _spread(ratios) < _spread(best[0]):
            best = (ratios, mine, theirs)
        if _spread(best[0]) <= spread:
            break
    return Calls(*best, attempts=made, noisy=_spread(best[0]) > spread)


def _spread(sorted_ratios: list[float]) -> float:
    return quantile(sorted_ratios, 0.9) / max(quantile(sorted_ratios, 0.1), 1e-12)


def paired(
    model: nn.Module,
    reference: nn.Module,
    example,
    timing: Timing | None = None,
    **changes: Any,
) -> PairedStats:
    """`model`'s latency as a ratio to `reference`'s, both timed in turn on `example`, as
    `timing` says (default `Timing()`; `changes`: fields of it changed, e.g. `repeats=20`).

    Args:
        model, reference: moved to the timing's device and put in eval mode, then restored.
        example: one input batch (a tensor, or a dict of tensors passed as keyword arguments).
        timing: warmup (untimed runs of each first), repeats (timed pairs), device, dtype,
            spread and attempts (see `paired_calls`), and threads: torch's CPU threads while
            measuring (None: as they are). On a shared CPU, one
            thread is what makes ratios repeatable: with more, every operator waits for its
            slowest thread at the end of its parallel region, so a busy neighbour slows a model
            of many small operators (a tensor network) more than one of a few large ones (its
            dense reference). Measured on 2 cores beside two busy processes, LeNet-300-100 with
            MPO layers against dense: 2.3x when quiet, 2.8-5.6x when busy with two threads;
            1.72x and 1.74-1.77x with one (bench/RESULTS.md, issue 15).
    """
    timing = (timing or Timing()).but(**changes)
    device = _device(timing, model)
    example = to_device(example, device)
    modes = [(m, m.training) for m in (model, reference)]
    for m in (model, reference):
        m.to(device).eval()
    try:
        with applied(timing, device):
            calls = paired_calls(
                _caller(model, example),
                _caller(reference, example),
                pairs=timing.repeats,
                warmup=timing.warmup,
                sync=lambda: _sync(device),
                spread=timing.spread,
                attempts=timing.attempts,
            )
        name = device_name(device)
    finally:
        for m, training in modes:
            m.train(training)
    return calls.stats(name)


def _device(timing: Timing, model: nn.Module) -> torch.device:
    """Where `timing` times `model`: its device, or where the model's parameters are."""
    if timing.device is not None:
        return torch.device(timing.device)
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@contextlib.contextmanager
def applied(timing: Timing, device: torch.device):
    """No autograd, autocast as `timing.dtype` says, and torch's CPU threads as `timing.threads`
    says while the block runs (restored after)."""
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if timing.dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    had = torch.get_num_threads()
    if timing.threads is not None and device.type == "cpu":
        torch.set_num_threads(timing.threads)
    try:
        with torch.inference_mode(), autocast:
            yield
    finally:
        torch.set_num_threads(had)


def _caller(model: nn.Module, example) -> Callable[[], object]:
    if isinstance(example, Mapping):
        return lambda: model(**example)
    return lambda: model(example)


def device_name(device: str | torch.device) -> str:
    """What a latency was measured on, by name: the GPU's, or the CPU's model and the threads
    torch uses (latencies of different names are not compared with each other)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} threads)"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo; else what `platform` knows)."""
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    if not model:
        import platform

        model = platform.processor() or platform.machine() or "cpu"
    return " ".join(model.split())
