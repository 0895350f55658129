"""Calibration: the inputs each layer sees on real data, and the data-aware decomposition of a
plan from them (`decompose.calibration` examples of the training split).

`collect` runs the dense model once over the calibration batches with forward hooks and keeps
each candidate layer's input moments (`tn.InputStats`); `tensorize` decomposes a plan's layers
and refines each against those inputs (`tn.fit_to_inputs`); `reestimate_batchnorm` recomputes
the batch norms' running statistics, which no longer fit once the layers before them change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tnsearch import plan as plans
from tnsearch import tn
from tnsearch.models import as_linear, is_conv1d

__all__ = ["batches", "call", "collect", "reestimate_batchnorm", "tensorize"]


def inputs_of(batch: Any) -> Any:
    """The model's inputs in a batch: its first element (x, y), or the whole dict."""
    if isinstance(batch, tuple | list):
        return batch[0]
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k != "labels"}
    return batch


def call(model: nn.Module, inputs: Any) -> Any:
    """Run `model` on `inputs` (a tensor, or a dict of keyword arguments)."""
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def _size(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs
    return int(first.shape[0])


def _cut(batch: Any, keep: int) -> Any:
    if isinstance(batch, Mapping):
        return type(batch)({k: v[:keep] for k, v in batch.items()})
    if isinstance(batch, tuple | list):
        return type(batch)(_cut(b, keep) for b in batch)
    return batch[:keep]


def batches(loader: Iterable[Any], examples: int, *, inputs_only: bool = True) -> list[Any]:
    """The first batches of `loader` holding `examples` examples in all (the last one cut), as a
    list: only the model's inputs, or whole batches (with labels) when not `inputs_only`.

    Raises:
        ValueError: the loader yields nothing.
    """
    taken: list[Any] = []
    have = 0
    for batch in loader:
        n = _size(inputs_of(batch))
        if have + n > examples:
            batch, n = _cut(batch, examples - have), examples - have
        if n > 0:
            taken.append(inputs_of(batch) if inputs_only else batch)
            have += n
        if have >= examples:
            break
    if not taken:
        raise ValueError("the split yielded no batch")
    return taken


def _module_for(model: nn.Module, name: str) -> nn.Module:
    module = model.get_submodule(name)
    return as_linear(module) if is_conv1d(module) else module


@torch.no_grad()
def run_hooked(
    model: nn.Module,
    inputs: Sequence[Any],
    names: Iterable[str],
    record: Callable[[str, nn.Module, torch.Tensor, torch.Tensor | None], None],
) -> None:
    """Run `model` (eval mode) over `inputs`, calling `record(name, module, input, mask)` for
    the input each layer of `names` receives (`mask`: the batch's attention mask, if any)."""
    mask: list[torch.Tensor | None] = [None]

    def hook_of(name: str):
        def hook(module: nn.Module, args: tuple, _out: Any) -> None:  # None: output unchanged
            record(name, module, args[0], mask[0])

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(hook_of(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in inputs:
            mask[0] = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            call(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def collect(
    model: nn.Module, inputs: Sequence[Any], names: Iterable[str]
) -> dict[str, tn.InputStats]:
    """The input moments of the layers `names` of `model` over the calibration `inputs` (eval
    mode; token positions that a batch's `attention_mask` marks as padding do not count)."""
    stats = {name: tn.InputStats() for name in names}
    # (a Conv1D's rows are a Linear's: InputStats treats any non-conv module as one)
    run_hooked(model, inputs, stats, lambda n, m, x, mask: stats[n].add(m, x, mask))
    return stats


def tensorize(
    model: nn.Module,
    layers: Mapping[str, Mapping[str, Any]],
    stats: Mapping[str, tn.InputStats] | None,
    *,
    steps: int = 50,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Replace, in place, each of `layers` (a plan's layers) by its tensorized version,
    decomposed from the layer's weights and, with `stats`, fitted to its inputs. Return each
    layer's relative output error on the calibration inputs (the weight error without);
    `progress(name)` is called after each layer."""
    errors = {}
    for name, spec in layers.items():
        dense = _module_for(model, name)
        layer = plans.tensorize_module(dense, spec, init="decompose")
        if stats is not None and name in stats:
            errors[name] = tn.fit_to_inputs(layer, dense, stats[name], steps=steps)
        else:
            errors[name] = tn.output_error(layer, dense)
        model.set_submodule(name, layer)
        if progress is not None:
            progress(name)
    return errors


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, inputs: Sequence[Any]) -> int:
    """Recompute every batch norm's running mean and variance on `inputs` (a cumulative average
    over the batches, the rest of the model in eval mode). Return how many were updated."""
    norms = [m for m in _norms(model) if m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    saved = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts the same
        m.train()
    try:
        for batch in inputs:
            call(model, batch)
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
