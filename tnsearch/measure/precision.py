"""A plan's precisions applied to its model: the model as deployed, the bytes of its weights,
and its int8 ONNX file (`tnsearch.measure.quantize` holds the scheme).

A plan says which layers are int8 (`Plan.precision`: layer -> "int8"; every other layer is
float32). A trial trains (or heals) the float32 model; what it is measured on is the model as
deployed: the int8 copy that `deployed` makes of the trained weights (post-training, symmetric
weights, activations quantized per batch at run time, so no calibration batches are needed), the
int8 ONNX file that `deployed_onnx` writes, and `size_bytes` counts exactly what either stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from tnsearch.measure import quantize

__all__ = ["deployed", "deployed_onnx", "int8_layers", "size_bytes"]


def int8_layers(precision: Mapping[str, str]) -> list[str]:
    """The layers `precision` (layer -> precision) puts in int8."""
    return [name for name, found in precision.items() if found == "int8"]


def size_bytes(model: nn.Module, precision: Mapping[str, str]) -> int:
    """The bytes of `model`'s weights as deployed with `precision` (float32 where it names no
    layer): `quantize.weight_bytes`."""
    layers = int8_layers(precision)
    if not layers:
        return quantize.weight_bytes(model)
    return quantize.weight_bytes(model, "int8", layers=layers)


def deployed(model: nn.Module, precision: Mapping[str, str]) -> nn.Module:
    """`model` as deployed in torch: itself when `precision` quantizes nothing, else an int8
    copy on the CPU (`quantize.quantize`)."""
    layers = int8_layers(precision)
    if not layers:
        return model
    return quantize.quantize(model, "int8", layers=layers)


def deployed_onnx(
    model: nn.Module, exported: Path, precision: Mapping[str, str], dst: Path | None = None
) -> Path:
    """The ONNX file of `model` as deployed: `exported` (its float32 export) itself when
    `precision` quantizes nothing, else its int8 copy at `dst` (beside it by default)."""
    layers = int8_layers(precision)
    if not layers:
        return exported
    dst = dst or exported.with_name(exported.stem + "-int8.onnx")
    tensors = quantize.int8_tensors(model, layers=layers)
    return quantize.quantize_onnx(exported, dst, tensors)
