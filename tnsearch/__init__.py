"""tnsearch: find the best tensorized version of a neural network.

The layers live in `tnsearch.tn` (pure PyTorch); the search is `python -m tnsearch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations of `load`, without importing torch
    from pathlib import Path

    from torch import nn

__version__ = "0.1.0"
__all__ = ["hypervolume", "load", "truncate"]


def hypervolume(study) -> float:
    """Hypervolume of a study's Pareto front in normalized objective space.

    Objectives are normalized as (1 - accuracy, params / dense params, latency / dense latency);
    the reference point is accuracy 0 and 1.1x the dense model's parameters and latency, so
    fronts of different runs compare. `tnsearch.results.pareto.hypervolume_history` gives its
    growth.
    """
    from tnsearch.results.pareto import hypervolume as _hypervolume

    return _hypervolume(study)


def load(path: str | Path, *, trusted=(), factory=None, verify=True, raw=False) -> nn.Module:
    """Rebuild the model of an export package (`python -m tnsearch.export`), in eval mode.

    Args:
        path: the package folder; neither the study nor the machine that made it is needed.
        trusted: model constructors (`_target_` paths) its plan may name besides tnsearch's own
            models; anything else raises before it is called (a plan.json can name any code).
        factory: build the dense model with this callable instead of the plan's `_target_`.
        verify: check its files against its checksums.json first (False: load them as they are).
        raw: an image model taking raw pixels (its recorded normalization first, as the
            package's ONNX and MLflow models do); False: the model as trained.

    Returns:
        The ``torch.nn.Module`` with the trained weights; for a Hugging Face model its
        transformers class (with its ``config``), whose ``save_pretrained`` writes a package.

    Raises:
        tnsearch.results.package.PackageError: ``<folder>/<file>: <what is wrong>``, one line.
    """
    from tnsearch.results.package_load import load as _load

    return _load(path, trusted=trusted, factory=factory, verify=verify, raw=raw)


def truncate(model: nn.Module, *, energy: float = 0.99) -> nn.Module:
    """A smaller copy of ``model``: every tensorized layer's bonds cut to their effective rank.

    Each MPO / tree / Tucker bond is cut by SVD at the bond in canonical form to the fewest
    singular values that keep ``energy`` of the weight's Frobenius energy; CP drops its weakest
    components. ``energy=1.0`` is exact (the outputs do not change). See `tnsearch.bonds`.

    Args:
        model: any module with tensorized layers (or one tensorized layer); it is not modified.
        energy: the fraction of each bond's energy to keep, in (0, 1].
    """
    from tnsearch.bonds import truncate as _truncate

    return _truncate(model, energy=energy)
