"""Latency of a whole model as it would be deployed: eval mode, no autograd, fixed batch.

Warm up first (this is also when tensorized layers pick their fastest path), then time each run
alone, synchronized on CUDA, and report the spread as well as the median.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn


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


def _quantile(sorted_values: list[float], q: float) -> float:
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
    model: nn.Module,
    example: torch.Tensor,
    *,
    warmup: int = 10,
    repeats: int = 50,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> LatencyStats:
    """Time `model` on `example` (one batch) in eval mode.

    Args:
        model: the model; it is moved to `device` and put in eval mode, then restored.
        example: one input batch: a tensor (B, ...), or a dict of tensors (B, ...) passed as
            keyword arguments (e.g. a tokenized batch: input_ids, attention_mask); B is the
            measured batch size.
        warmup: untimed runs first.
        repeats: timed runs; the statistics are over these.
        device: where to measure (default: where the model's parameters are).
        dtype: "float32", or "bfloat16" for autocast in bfloat16.

    Returns:
        LatencyStats in milliseconds per batch.
    """
    if repeats < 1:
        raise ValueError(f"latency.repeats: must be >= 1, got {repeats}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    example = to_device(example, device)
    call = (lambda: model(**example)) if isinstance(example, Mapping) else (lambda: model(example))
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else contextlib.nullcontext()
    )
    times: list[float] = []
    try:
        with torch.inference_mode(), autocast:
            for _ in range(warmup):
                call()
            _sync(device)
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                _sync(device)
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    times.sort()
    return LatencyStats(
        p10=_quantile(times, 0.1),
        p50=_quantile(times, 0.5),
        p90=_quantile(times, 0.9),
        mean=statistics.fmean(times),
        batch_size=batch_size(example),
        repeats=repeats,
        device=str(device),
        dtype=dtype,
    )
