"""A package's ``model.onnx``: the model as it runs in PyTorch, taking what the user has.

An image model's graph takes raw pixels, input ``input`` float32 (batch, C, H, W), and
normalizes them inside as the data module did in training (`preprocessing.json`), output
``logits``. A token model's graph takes the tokenizer's outputs under the Hugging Face names
(``input_ids``, ``attention_mask``, ``token_type_ids``, int64 (batch, sequence), both axes
dynamic) and returns the output its task used (``last_hidden_state``, or ``logits``); its
tensorized embedding is the lookup's gathers of factor slices, never the dense table. Each file
is checked in onnxruntime against PyTorch on other shapes (`tnsearch.measure.onnx.export`), and
timed there beside the dense model's ONNX, exported alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.measure import onnx as onnx_export
from tnsearch.measure.latency import PairedStats
from tnsearch.measure.onnx import Exported, Inputs
from tnsearch.measure.precision import deployed, deployed_onnx, int8_layers
from tnsearch.results.package import raw_model

__all__ = ["INT8_TOLERANCE", "ONNX_PAIRS", "example", "speed", "write"]

#: Timed pairs of the README's onnxruntime latency (model.onnx beside the dense model's ONNX).
ONNX_PAIRS = 30


def example(
    plan: Mapping[str, Any],
    record: Mapping[str, Any],
    batch_size: int,
    *,
    data: Any = None,
    tokenizer: Any = None,
) -> Inputs | None:
    """The batch the graph is traced on and timed with (the latency batch): random pixels of
    the plan's image shape; for a token model the data's own example (`example_input`) or the
    tokenizer's encoding of the embedded sentences, padded to ``max_length``. None: no batch
    can be made (a token model without data or tokenizer)."""
    inputs = plan["inputs"]
    if record.get("kind") == "image":
        shape = (inputs["in_channels"], inputs["image_size"], inputs["image_size"])
        high = float((record.get("pixels") or {}).get("max", 1.0))
        seeded = torch.Generator().manual_seed(0)  # leaves the global RNG alone
        return torch.rand(batch_size, *shape, generator=seeded) * high
    if data is not None and hasattr(data, "example_input"):
        found = data.example_input(batch_size)
        return dict(found) if isinstance(found, Mapping) else found
    if tokenizer is None or record.get("kind") != "text":
        return None
    from tnsearch.data import embedded_sentences

    sentences = list(embedded_sentences()[:batch_size])
    encoded = tokenizer(
        sentences,
        padding="max_length",
        truncation=True,
        max_length=record["max_length"],
        return_tensors="pt",
    )
    return {k: encoded[k].long() for k in record["inputs"]}


def _graph(model: nn.Module, record: Mapping[str, Any]) -> nn.Module:
    return raw_model(model, record)  # an image model behind its normalization


#: An int8 model.onnx is accepted when its largest relative difference to the int8 torch model
#: is at most this, or when it is no further from the float32 model than the int8 torch model is
#: (relative Frobenius distance, this fraction of slack). Both runtimes quantize activations per
#: batch but round apart, and in a deep model those differences grow: in all-MiniLM-L6-v2 (int8
#: everywhere) the two int8 copies differ by 0.11 while each is 0.18-0.19 from float32. torch's
#: convolutions are weight-only where onnxruntime's ConvInteger quantizes activations too, so
#: there the first test is the one that holds. A wrong graph (a misplaced core) is ~1 on both.
INT8_TOLERANCE = 0.1


def write(
    model: nn.Module,
    record: Mapping[str, Any],
    batch: Inputs,
    path: str | Path,
    precision: Mapping[str, str] | None = None,
) -> Exported:
    """Write `model` as ``path`` (checked against PyTorch); see the module docstring. With
    `precision` (the plan's: layer -> int8) the file is the int8 model that was timed, checked
    against the int8 torch model (`measure.precision.deployed`) within INT8_TOLERANCE."""
    text = isinstance(batch, Mapping)
    graph = model if text else _graph(model, record)
    if text:
        exported = onnx_export.export(model, batch, path, output_name=record["output"])
    else:
        exported = onnx_export.export(graph, batch, path)
    prefix = "" if graph is model else "1."  # (Normalize, model)
    if precision and int8_layers(precision):
        named = {prefix + name: found for name, found in precision.items()}
        output = record["output"] if text else None
        exported = Exported(exported.paths, _int8(graph, Path(path), named, batch, output))
    paths = {name.removeprefix(prefix): p for name, p in exported.paths.items()}
    return Exported(paths, exported.error)


def _int8(
    graph: nn.Module,
    path: Path,
    precision: Mapping[str, str],
    batch: Inputs,
    output: str | None,
) -> float:
    """Quantize `path` in place as `precision` says; its largest relative difference to the
    int8 torch model on `batch` (`output`: a token model's output the graph gives; raises
    ValueError above INT8_TOLERANCE)."""
    import numpy as np

    from tnsearch.measure import onnx as runtime

    deployed_onnx(graph, path, precision, dst=path)
    inputs = dict(batch) if isinstance(batch, Mapping) else {"input": batch}

    def run(module: nn.Module) -> np.ndarray:
        with torch.no_grad():
            found = module(**batch) if isinstance(batch, Mapping) else module(batch)
        return (found[output] if isinstance(found, Mapping) else found).numpy()

    want = run(deployed(graph, precision).eval())
    session = runtime.session(path, threads=1)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    error = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if error <= INT8_TOLERANCE:
        return error
    fp32 = run(graph.eval())
    scale = max(float(np.linalg.norm(fp32)), 1e-12)
    deployed_drift = float(np.linalg.norm(got - fp32)) / scale
    measured_drift = float(np.linalg.norm(want - fp32)) / scale
    if deployed_drift > (1 + INT8_TOLERANCE) * measured_drift:
        raise ValueError(
            f"model.onnx: the int8 graph differs from the int8 torch model by {error:.3g} "
            f"(more than {INT8_TOLERANCE}) and is further from float32 than it "
            f"({deployed_drift:.3g} against {measured_drift:.3g})"
        )
    return error


def speed(
    plan: Mapping[str, Any],
    record: Mapping[str, Any],
    model_onnx: Path,
    batch: Inputs,
    *,
    trusted: Collection[str] = (),
    factory: Callable[..., nn.Module] | None = None,
) -> PairedStats | None:
    """onnxruntime's latency of `model_onnx` against the plan's dense model exported alike (its
    default weights: timing does not depend on them); None without onnxruntime."""
    from tnsearch import plan as plans

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    dense = model_onnx.with_name("dense.onnx")
    try:
        reference = plans.build_dense(plan, trusted=trusted, factory=factory).eval()
        if isinstance(batch, Mapping):
            onnx_export.export(reference, batch, dense, check=False, output_name=record["output"])
        else:
            onnx_export.export(_graph(reference, record), batch, dense, check=False)
        return onnx_export.paired(model_onnx, dense, batch, repeats=ONNX_PAIRS, warmup=5)
    finally:
        dense.unlink(missing_ok=True)
