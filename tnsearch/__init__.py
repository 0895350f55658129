"""tnsearch: find the best tensorized version of a neural network.

The layers live in `tnsearch.tn` (pure PyTorch); the search is `python -m tnsearch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations of `load`, without importing torch
    from pathlib import Path

    from torch import nn

__version__ = "0.1.0"
__all__ = ["hypervolume", "load"]


def hypervolume(study) -> float:
    """Hypervolume of a study's Pareto front in normalized objective space.

    Objectives are normalized as (1 - accuracy, params / dense params, latency / dense latency);
    the reference point is accuracy 0 and 1.1x the dense model's parameters and latency, so
    fronts of different runs compare. See `tnsearch.pareto.hypervolume_history` for its growth.
    """
    from tnsearch.pareto import hypervolume as _hypervolume

    return _hypervolume(study)


def load(path: str | Path) -> nn.Module:
    """Rebuild the model of an exported trial (`python -m tnsearch.export`), in eval mode.

    Args:
        path: the package folder (model.safetensors + plan.json); the study is not needed.

    Returns:
        The ``torch.nn.Module``, with the trial's trained weights.
    """
    from tnsearch.export import load as _load

    return _load(path)
