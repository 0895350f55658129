"""The values of a trial's measured objectives (`tnsearch.objectives` with a `measure`): each
function called on the built model, in eval mode and without gradients, on one example batch
on the model's device."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tnsearch.measure import latency
from tnsearch.objectives import Objective

__all__ = ["measured"]


def measured(model: nn.Module, example: Any, found: Sequence[Objective]) -> dict[str, float]:
    """{metric: value} of the objectives `found` on `model` for `example` (a tensor or a
    tokenized batch); a function that returns no finite number raises ValueError."""
    was_training = model.training
    device = next(model.parameters(), torch.empty(0)).device
    example = latency.to_device(example, device)
    model.eval()
    out = {}
    try:
        with torch.no_grad():
            for objective in found:
                value = float(objective.measure(model, example))
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError(f"objective {objective.key!r} measured {value}")
                out[objective.metric] = value
    finally:
        model.train(was_training)
    return out
