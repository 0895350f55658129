"""A trial's latency objective: its model in eval mode as a ratio to the dense reference timed
beside it on the same inputs, all as the study's `latency.Timing` says: in torch, compiled as
`Timing.compile` says (`latency.paired`), or as exported ONNX in onnxruntime (`onnx.paired`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch import tn
from tnsearch.measure import latency, precision
from tnsearch.plan import Plan

__all__ = ["freeze_paths", "trial_latency"]


def trial_latency(
    model: nn.Module,
    datamodule: Any,
    timing: latency.Timing,
    *,
    plan: Plan,
    reference: Callable[[], nn.Module],
    reference_onnx: Callable[[Any], Path],
    train_compile: str = "none",
) -> latency.PairedStats:
    """The latency of a trial's `model` (built from `plan`), as deployed (in int8 where the
    plan's precision says: `precision.deployed`, `precision.deployed_onnx`), on a batch of
    `datamodule`'s, paired with the dense float32 model.

    Args:
        reference: the dense model (built when needed: a dense plan is its own reference).
        reference_onnx: the dense model exported to ONNX for an example batch.
        train_compile: `trainer.compile`: a compiled training needs the layers' paths fixed too.
    """
    example = latency.example_batch(datamodule, timing.batch_size)
    if not plan.layers and not plan.precision and timing.runtime == "torch":
        return _dense(model, example, timing)
    if timing.runtime == "onnxruntime":
        return _onnx(model, example, timing, reference_onnx(example), plan.precision)
    return _torch(model, example, timing, reference(), datamodule, train_compile, plan.precision)


def _dense(model: nn.Module, example: Any, timing: latency.Timing) -> latency.PairedStats:
    """The dense plan is the reference itself: its ratio is 1 by definition, and timing it
    alone gives its milliseconds in half the time of the pairs (a worker's first trial)."""
    if timing.compile != "none":
        torch._dynamo.reset()
        model = latency.compiled(model, timing.compile)
    return latency.PairedStats.itself(latency.measure(model, example, timing))


def _torch(
    model: nn.Module,
    example: Any,
    timing: latency.Timing,
    reference: nn.Module,
    datamodule: Any,
    train_compile: str,
    quantized: Mapping[str, str],
) -> latency.PairedStats:
    """In torch, as deployed (`quantized`: the plan's precision), beside `reference`, both
    compiled as `timing.compile` says."""
    if timing.compile != "none" or train_compile != "none":
        # Every trial is a new model behind the same forward functions: start Dynamo afresh,
        # or its per-function recompile limit turns compilation off after 8 trials.
        torch._dynamo.reset()
        freeze_paths(model, datamodule, timing.batch_size, torch.device(timing.device))
    model = precision.deployed(model, quantized)
    if timing.compile != "none":
        model = latency.compiled(model, timing.compile)
        reference = latency.compiled(reference, timing.compile)
    return latency.paired(model, reference, example, timing)


def _onnx(
    model: nn.Module,
    example: Any,
    timing: latency.Timing,
    reference: Path,
    quantized: Mapping[str, str],
) -> latency.PairedStats:
    """The trial's exported ONNX (each layer on the path it takes for `example`; int8 where
    `quantized`, the plan's precision, says) timed in onnxruntime beside the dense float32
    model's, on the CPU: what a deployment runs."""
    import tempfile

    from tnsearch.measure import onnx

    with tempfile.TemporaryDirectory(prefix="tnsearch-latency-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.export(model.cpu(), example, path, check=False)
        path = precision.deployed_onnx(model, path, quantized)
        return onnx.paired(path, reference, example, timing)


def freeze_paths(model: nn.Module, datamodule: Any, measured: int, device: torch.device) -> None:
    """Choose every tensorized layer's path for the shapes it will see (a training batch with
    grad; the `measured` and evaluation batches without), then fix them, so that torch.compile
    traces one graph with no measuring in it."""
    model.to(device)
    was_training = model.training
    model.train()
    train_size = getattr(datamodule, "batch_size", measured)
    example = latency.to_device(latency.example_batch(datamodule, train_size), device)
    tn.freeze_paths(model, example, grad=True)
    model.eval()
    for size in {measured, getattr(datamodule, "eval_batch_size", measured)}:
        example = latency.to_device(latency.example_batch(datamodule, size), device)
        tn.freeze_paths(model, example, grad=False)
    model.train(was_training)
