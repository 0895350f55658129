"""int8 weights for a model, dense or tensorized: its bytes, a torch copy, and its ONNX file.

One scheme, read by all three (`int8_tensors`): which tensors become int8 and how many scales
each stores. It is the scheme onnxruntime's dynamic quantization deploys, so that the bytes
counted here are the bytes of the int8 ONNX file, exactly:

- an ``nn.Linear`` weight ``(out, in)``: symmetric int8, one scale per output feature
  (``per_channel``; else one per tensor), the MatMul's int8 weight in onnxruntime;
- an ``nn.Conv*d`` weight and an ``nn.Embedding`` table: one scale per tensor (onnxruntime's
  ConvInteger and Gather quantize per tensor);
- every factor (core) of a tensorized layer or embedding: one scale per tensor. A core has no
  output-channel axis of its own: the contraction order decides which of its axes become the
  MatMul's columns, so a per-tensor scale is the one scheme both runtimes store alike, whatever
  the order. Measured on random layers of every topology (rank 4-16, order 2-3), weight-only:
  0.4-4% relative output error (tests/measure/test_quantize.py states the bound).

Each scale is stored as float32 with an 8-bit zero point beside it (0 when symmetric), as the
ONNX file stores them; biases, norms and other tensors stay float32.

Where it is faster: onnxruntime runs each int8 weight of a MatMul / Conv as MatMulInteger /
ConvInteger, its activations quantized per batch (DynamicQuantizeLinear): the int8 speed-up on
the CPU. A core that is not the constant right operand of a MatMul (the left one, or broadcast
first) is stored as int8 and dequantized in the graph: fewer bytes, fp32 speed. In torch
(`quantize`), dense ``nn.Linear`` layers become torch.ao's dynamic int8 Linear (fbgemm / x86
kernels, CPU only; torchao is the successor, not installed here), with onnxruntime's weight
scales and 8-bit activations (`_Linear`: a dense model's two int8 copies agree to 1e-7);
convolutions, embeddings and cores are weight-only (int8 codes and scales, dequantized on each
forward): the quality of int8 weights, not its speed, and without the activations' rounding
that onnxruntime adds where it runs a core or a convolution as an integer product.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import tempfile
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from tnsearch import tn

__all__ = [
    "PRECISIONS",
    "Int8Tensor",
    "check_precision",
    "int8_tensors",
    "quantize",
    "quantize_onnx",
    "weight_bytes",
]

#: The precisions a model's weights can be deployed in.
PRECISIONS = ("fp32", "int8")
#: Where a model runs (`latency.Timing.runtime`).
RUNTIMES = ("torch", "onnxruntime")
#: Bytes of a float32 element, of an int8 one, and of what each stored scale costs.
FP32_BYTES, INT8_BYTES, SCALE_BYTES = 4, 1, 4 + 1  # a float32 scale and an 8-bit zero point
#: The largest int8 code of a symmetric scale (onnxruntime's and torch's: -127..127).
QMAX = 127


def check_precision(name: str, runtime: str = "onnxruntime", device: str | None = None) -> None:
    """Raise ``ValueError("precision: ...")`` when precision `name` cannot run on `runtime`.

    Args:
        name: one of PRECISIONS.
        runtime: "torch" or "onnxruntime" (which runs on the CPU here, `onnx.session`).
        device: where torch runs the model ("cpu", "cuda", "cuda:1"; None: the CPU).
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision: unknown {name!r} (known: {', '.join(PRECISIONS)})")
    if runtime not in RUNTIMES:
        raise ValueError(f"precision: unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    if name != "int8" or runtime != "torch":
        return
    kind = torch.device(device or "cpu").type
    if kind != "cpu":
        raise ValueError(
            f"precision: int8 has no {kind} kernels in torch (its dynamic int8 Linear runs on "
            "the CPU only): use latency.runtime=onnxruntime or precision fp32"
        )
    if set(torch.backends.quantized.supported_engines) <= {"none"}:
        raise ValueError("precision: int8: this torch build has no quantized CPU engine")


@dataclass(frozen=True)
class Int8Tensor:
    """One tensor the int8 model stores as int8 codes and scales."""

    name: str  # the parameter's name in the model, e.g. "fc1.weight", "fc2.core0"
    shape: tuple[int, ...]
    channels: int  # scales stored: output features (a per-channel Linear weight), else 1

    @property
    def nbytes(self) -> int:
        """Its bytes as stored: one per element, and a scale and zero point per channel."""
        return math.prod(self.shape) * INT8_BYTES + self.channels * SCALE_BYTES


def int8_tensors(
    model: nn.Module, *, layers: Collection[str] | None = None, per_channel: bool = True
) -> dict[str, Int8Tensor]:
    """The tensors of `model` that int8 stores as int8 (the scheme of the module docstring).

    Args:
        layers: names of the modules quantized (as in ``named_modules``): ``nn.Linear``,
            ``nn.Conv*d``, ``nn.Embedding``, tensorized layers and embeddings; None: all of them.
        per_channel: a Linear weight gets one scale per output feature (else one in all).

    Returns:
        Parameter name -> Int8Tensor, each tensor once (a shared one under its first name).

    Raises:
        ValueError: ``layers: ...`` naming a module that is not one of those kinds.
    """
    chosen: dict[str, Int8Tensor] = {}
    seen: set[int] = set()
    found: set[str] = set()
    inner = {id(m.layer) for m in model.modules() if isinstance(m, tn.TNEmbedding)}
    for name, module in model.named_modules():
        tensors = _quantizable(module, per_channel) if id(module) not in inner else []
        if not tensors or (layers is not None and name not in layers):
            continue
        found.add(name)
        for suffix, tensor, channels in tensors:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                full = f"{name}.{suffix}" if name else suffix
                chosen[full] = Int8Tensor(full, tuple(tensor.shape), channels)
    missing = sorted(set(layers or ()) - found)
    if missing:
        raise ValueError(
            f"layers: {', '.join(map(repr, missing))} is not a Linear, Conv, Embedding or "
            "tensorized layer of the model"
        )
    return chosen


def _quantizable(module: nn.Module, per_channel: bool) -> list[tuple[str, torch.Tensor, int]]:
    """(name in `module`, tensor, channels) of the tensors int8 stores for `module` itself."""
    if isinstance(module, tn.TNEmbedding):
        module, prefix = module.layer, "layer."
    else:
        prefix = ""
    if isinstance(module, tn.TNLayer):
        return [(prefix + n, getattr(module, n), 1) for n in module.network.names]
    if isinstance(module, nn.Linear):
        return [("weight", module.weight, module.out_features if per_channel else 1)]
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Embedding):
        return [("weight", module.weight, 1)]
    return []


def weight_bytes(
    model: nn.Module,
    precision: str = "fp32",
    *,
    layers: Collection[str] | None = None,
    per_channel: bool = True,
) -> int:
    """The bytes of `model`'s weights as deployed in `precision` (its ONNX file's weights).

    Every floating-point parameter and persistent buffer (a BatchNorm's statistics) is float32,
    4 bytes an element; in int8, the tensors of `int8_tensors` (`layers`, `per_channel`) are 1
    byte an element plus 5 per scale (float32 scale, 8-bit zero point). Integer buffers (token
    positions) are not weights; a shared tensor counts once.

    >>> from torch import nn
    >>> weight_bytes(nn.Linear(10, 4)), weight_bytes(nn.Linear(10, 4), "int8")
    (176, 76)

    (Linear(10, 4): 44 float32 values; int8: 40 codes, 4 scales and zero points, a 16-byte bias.)
    """
    check_precision(precision)
    quantized = int8_tensors(model, layers=layers, per_channel=per_channel)
    if precision == "fp32":
        quantized = {}
    total = 0
    for name, tensor in _named_tensors(model):
        q = quantized.get(name)
        total += q.nbytes if q is not None else tensor.numel() * FP32_BYTES
    return total


def _named_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """The parameters and the floating-point persistent buffers, each tensor once."""
    persistent = set(model.state_dict(keep_vars=True))
    seen: set[int] = set()
    named = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in named:
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        if isinstance(tensor, nn.Parameter) or name in persistent:
            seen.add(id(tensor))
            yield name, tensor


# --- torch ----------------------------------------------------------------------------------------


class _Int8(nn.Module):
    """A parametrization that stores a tensor as int8 codes and float32 scales (symmetric, one
    scale per tensor, or per entry of the first axis when `per_row`) and reads it back as their
    product, a float tensor of the original shape."""

    def __init__(self, per_row: bool) -> None:
        super().__init__()
        self.per_row = per_row

    def forward(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return codes.to(scale.dtype) * scale

    def right_inverse(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return symmetric(tensor.detach().float(), per_row=self.per_row)


def symmetric(t: torch.Tensor, *, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`t`'s symmetric int8 codes and its scales (one, or one per entry of the first axis when
    `per_row`, shaped to broadcast): ``codes * scale`` is `t` as int8 stores it."""
    if per_row:
        peak = t.abs().reshape(t.shape[0], -1).amax(1).reshape(-1, *[1] * (t.dim() - 1))
    else:
        peak = t.abs().max()
    scale = (peak / QMAX).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(t / scale).clamp(-QMAX, QMAX).to(torch.int8), scale


def quantize(
    model: nn.Module,
    precision: str = "int8",
    *,
    layers: Collection[str] | None = None,
    per_channel: bool = True,
) -> nn.Module:
    """A copy of `model` (on the CPU) whose `int8_tensors` are int8, run by torch.

    Dense ``nn.Linear`` layers become torch.ao's dynamic int8 Linear (weights symmetric int8 per
    output feature, or per tensor; activations quantized per batch): int8 kernels, and faster on
    the CPU. Convolution weights, embedding tables and the cores of tensorized layers, which are
    contracted by matmuls of the layer's own (not ``nn.Linear``), are weight-only int8: stored as
    int8 codes and a float32 scale (a ``torch.nn.utils.parametrize`` parametrization), read back
    as float on each forward: the quality of int8 weights at fp32 speed (onnxruntime is where
    they are fast: `quantize_onnx`).

    Args:
        precision: "int8", or "fp32" (a plain copy).
        layers, per_channel: as `int8_tensors` says.
    """
    check_precision(precision, "torch", "cpu")
    out = copy.deepcopy(model).to("cpu")
    if precision == "fp32":
        return out
    chosen = int8_tensors(out, layers=layers, per_channel=per_channel)
    for name in chosen:
        owner, _, attr = name.rpartition(".")
        module = out.get_submodule(owner)
        if isinstance(module, nn.Linear) and attr == "weight":
            parent, _, child = owner.rpartition(".")
            setattr(out.get_submodule(parent), child, _Linear.of(module, per_channel))
        else:
            _weight_only(module, attr)
    return out


class _Linear(torch.ao.nn.quantized.dynamic.Linear):
    """torch.ao's dynamic int8 Linear, quantized as onnxruntime quantizes a MatMul's weight and
    input, so that the quality measured in torch is the quality deployed.

    - its weight is `symmetric` (a scale of ``absmax / 127``; torch.ao's observers take
      ``absmax / 127.5``, a code in 250 apart);
    - its input is quantized over the full 8 bits: torch.ao's own forward asks for
      ``reduce_range=True``, 7-bit activations (a guard against int16 saturation on CPUs
      without VNNI). Measured on all-MiniLM-L6-v2 in int8, that 7-bit torch copy was twice as
      far from float32 as the int8 ONNX file (relative error 0.35 against 0.18).
    """

    @classmethod
    def of(cls, linear: nn.Linear, per_channel: bool) -> _Linear:
        weight = linear.weight.detach().float()
        _, scale = symmetric(weight, per_row=per_channel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "quantized tensors are deprecated"
            if per_channel:
                zeros = torch.zeros(weight.shape[0], dtype=torch.long)
                codes = torch.quantize_per_channel(
                    weight, scale.flatten().double(), zeros, 0, torch.qint8
                )
            else:
                codes = torch.quantize_per_tensor(weight, float(scale), 0, torch.qint8)
        out = cls(linear.in_features, linear.out_features, bias_=linear.bias is not None)
        bias = linear.bias.detach().float() if linear.bias is not None else None
        out.set_weight_bias(codes, bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)


def _weight_only(module: nn.Module, attr: str) -> None:
    """Store `module.attr` (a parameter) as int8 codes and a scale (`_Int8`, per tensor)."""
    value = getattr(module, attr).detach()
    del module._parameters[attr]
    module.register_buffer(attr, value)  # parametrize keeps a buffer's originals as buffers
    parametrize.register_parametrization(module, attr, _Int8(per_row=False), unsafe=True)


# --- onnxruntime ----------------------------------------------------------------------------------

#: Ops that only lay a constant out anew (no arithmetic): folded into initializers, so that each
#: weight reaches the MatMul, Conv or Gather that reads it as an initializer (what onnxruntime's
#: quantizer needs). Concat is folded for integer tensors only (shapes), never to join weights.
_LAYOUT = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Concat")
#: The input of each op that onnxruntime's dynamic quantization reads as an int8 weight.
_WEIGHT_INPUT = {"MatMul": 1, "Conv": 1, "Gather": 0}


def quantize_onnx(
    src: str | Path, dst: str | Path, tensors: Mapping[str, Int8Tensor], *, per_channel: bool = True
) -> Path:
    """Write `src` (an ONNX file of `onnx.export`) to `dst` with `tensors` in int8.

    `tensors` is `int8_tensors(model, ...)` of the exported model (the initializers keep its
    parameter names). Three steps:

    1. each weight's layout ops (the Transpose before a Linear's MatMul, the Reshape of a core
       to the matrix the contraction multiplies; a Gemm becomes MatMul + Add) are folded into
       the initializer, so that the weight feeds its MatMul / Conv / Gather directly;
    2. onnxruntime's ``quantize_dynamic`` (QInt8 weights, symmetric) turns each of those nodes
       into MatMulInteger / ConvInteger / a quantized Gather, its activations quantized per
       batch (DynamicQuantizeLinear); a tensor of one channel gets one scale;
    3. a weight that no such node reads as its weight (a core on the left of a MatMul, or
       broadcast first) is stored as int8 and a DequantizeLinear node: fewer bytes, fp32 math.

    Then the file's int8 codes, scales and zero points are `weight_bytes(model, "int8")`'s.

    Raises:
        RuntimeError: a tensor of `tensors` that the file holds is still float32 after all.
    """
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    _split_gemms(graph)
    floats = _fold_layout(graph)  # initializer name -> its float array
    chosen = _by_initializer(tensors, floats)
    nodes = [
        n.name
        for n in graph.node
        if n.op_type in _WEIGHT_INPUT
        and len(n.input) > _WEIGHT_INPUT[n.op_type]
        and n.input[_WEIGHT_INPUT[n.op_type]] in chosen
    ]
    if nodes:
        model = _quantize_dynamic(model, nodes, per_channel)
        graph = model.graph
    _per_tensor(graph, chosen, floats)
    _dequantized(graph, chosen, floats)
    left = [i.name for i in graph.initializer if i.name in chosen]
    if left:
        raise RuntimeError(f"quantize_onnx: still float32: {', '.join(left)}")
    onnx.save(model, str(dst))
    return Path(dst)


def _by_initializer(
    tensors: Mapping[str, Int8Tensor], floats: Mapping[str, np.ndarray]
) -> dict[str, Int8Tensor]:
    """The initializers of `tensors`: named as the parameter, or so under a wrapper's
    ``model.`` (a tokenized batch's export), with as many entries."""
    chosen = {}
    for name, t in tensors.items():
        for candidate in (name, f"model.{name}"):
            if candidate in floats and floats[candidate].size == math.prod(t.shape):
                chosen[candidate] = t
    return chosen


def _split_gemms(graph) -> None:
    """Each ``Gemm(A, B, C)`` (alpha = beta = 1, A not transposed) as ``MatMul(A, B') + C``,
    B' being B, or a Transpose of it (folded next): onnxruntime's dynamic int8 has no Gemm."""
    from onnx import helper

    out = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or attrs.get("transA", 0) or not plain:
            out.append(node)
            continue
        a, b = node.input[0], node.input[1]
        if attrs.get("transB", 0):
            out.append(helper.make_node("Transpose", [b], [f"{b}/T"], f"{node.name}/T"))
            b = f"{b}/T"
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}/mm" if has_bias else node.output[0]
        out.append(helper.make_node("MatMul", [a, b], [product], f"{node.name}/mm"))
        if has_bias:
            out.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                        f"{node.name}/add"))  # fmt: skip
    del graph.node[:]
    graph.node.extend(out)


def _fold_layout(graph) -> dict[str, np.ndarray]:
    """Fold the `_LAYOUT` ops on constants into initializers, in place; a weight's folded
    layout keeps the weight's name. Returns the float initializers, by name."""
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    origin = {name: name for name in consts}  # a folded value -> the initializer it lays out
    kept, constant_nodes = [], {}
    for node in graph.node:
        constant = _constant(node) if node.op_type == "Constant" else None
        if constant is not None:
            consts[node.output[0]] = constant
            constant_nodes[node.output[0]] = node
            kept.append(node)
            continue
        args = [consts.get(i) for i in node.input if i]
        value = None
        if node.op_type in _LAYOUT and args and all(a is not None for a in args):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            value = _layout(node.op_type, args, attrs)
        if value is None:
            kept.append(node)
            continue
        consts[node.output[0]] = value
        if node.input[0] in origin:
            origin[node.output[0]] = origin[node.input[0]]
    needed = {i for n in kept for i in n.input} | {o.name for o in graph.output}
    named: dict[str, str] = {}  # a folded value that is needed -> its initializer's name
    for value in needed & set(consts):
        if value in constant_nodes:
            continue
        source = origin.get(value, value)
        float_weight = consts[value].dtype.kind == "f" and source not in needed
        named[value] = source if float_weight and source not in named.values() else value
    kept = [n for n in kept if n.op_type != "Constant" or n.output[0] in needed]
    for node in kept:
        for k, name in enumerate(node.input):
            if name in named:
                node.input[k] = named[name]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(consts[v], n) for v, n in named.items())
    del graph.value_info[:]  # shapes of values now folded away: inferred again by the quantizer
    return {n: consts[v] for v, n in named.items() if consts[v].dtype.kind == "f"}


def _constant(node) -> np.ndarray | None:
    """The value of a Constant node (a tensor, or ints / floats), None for other kinds."""
    from onnx import helper, numpy_helper

    attribute = node.attribute[0]
    value = helper.get_attribute_value(attribute)
    if attribute.name == "value":
        return numpy_helper.to_array(value)
    kinds = {"value_int": np.int64, "value_ints": np.int64}
    kinds |= {"value_float": np.float32, "value_floats": np.float32}
    return np.array(value, kinds[attribute.name]) if attribute.name in kinds else None


def _layout(op: str, args: list[np.ndarray], attrs: dict) -> np.ndarray | None:
    """`op` on constant `args` (a layout op of `_LAYOUT`), or None where it is not folded."""
    x = args[0]
    if op == "Identity":
        return x
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op == "Reshape":
        shape = [int(s) for s in args[1]]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
        return np.reshape(x, shape)
    axes = [int(a) for a in (args[1] if len(args) > 1 else attrs.get("axes", []))]
    if op == "Squeeze":
        return np.squeeze(x, axis=tuple(axes) if axes else None)
    if op == "Unsqueeze":
        rank = x.ndim + len(axes)
        return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))
    if op == "Concat" and all(a.dtype.kind in "iu" for a in args):
        return np.concatenate(args, axis=attrs["axis"])
    return None


def _quantize_dynamic(model, nodes: list[str], per_channel: bool):
    """onnxruntime's quantize_dynamic of `nodes` (QInt8 weights), as a ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder, _quiet_root():
        out = Path(folder) / "int8.onnx"
        quantize_dynamic(
            model,
            out,
            op_types_to_quantize=list(_WEIGHT_INPUT),
            nodes_to_quantize=nodes,
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
        )
        return onnx.load(str(out))


@contextlib.contextmanager
def _quiet_root():
    """Hide onnxruntime's root-logger advice to pre-process (the layout folding does that)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _symmetric(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and float32 scales of `w`: symmetric, per tensor or along `axis`."""
    w = w.astype(np.float32)
    if axis is None:
        peak = np.abs(w).max(initial=0.0)
    else:
        peak = np.abs(w).max(axis=tuple(d for d in range(w.ndim) if d != axis), initial=0.0)
    scale = np.maximum(np.float32(peak) / QMAX, np.finfo(np.float32).tiny).astype(np.float32)
    shape = [-1 if d == axis else 1 for d in range(w.ndim)] if axis is not None else []
    codes = np.clip(np.round(w / scale.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return codes, scale


def _per_tensor(graph, chosen: Mapping[str, Int8Tensor], floats: Mapping[str, np.ndarray]):
    """Re-store with one scale the one-channel tensors onnxruntime quantized per column."""
    from onnx import numpy_helper

    index = {i.name: k for k, i in enumerate(graph.initializer)}
    for name, t in chosen.items():
        scale = index.get(f"{name}_scale")
        if t.channels != 1 or scale is None or math.prod(graph.initializer[scale].dims) == 1:
            continue
        codes, s = _symmetric(floats[name], None)
        zero = index[f"{name}_zero_point"]
        dtype = numpy_helper.to_array(graph.initializer[zero]).dtype
        for k, array, suffix in (
            (index[f"{name}_quantized"], codes, "_quantized"),
            (scale, s, "_scale"),
            (zero, np.zeros((), dtype), "_zero_point"),
        ):
            graph.initializer[k].CopyFrom(numpy_helper.from_array(array, name + suffix))


def _dequantized(graph, chosen: Mapping[str, Int8Tensor], floats: Mapping[str, np.ndarray]):
    """Each chosen tensor still float as int8 codes, a scale and a zero point, read by a
    DequantizeLinear node under its name (per column, the last axis, when it has channels)."""
    from onnx import helper, numpy_helper

    left = [i.name for i in graph.initializer if i.name in chosen]
    if not left:
        return
    nodes = []
    for name in left:
        w, channels = floats[name], chosen[name].channels
        axis = None if channels == 1 else _channel_axis(w.shape, channels, name)
        codes, scale = _symmetric(w, axis)
        zero = np.zeros(scale.shape, np.int8)
        graph.initializer.extend(
            numpy_helper.from_array(a, name + s)
            for a, s in ((codes, "_quantized"), (scale, "_scale"), (zero, "_zero_point"))
        )
        extra = {} if axis is None else {"axis": axis}
        inputs = [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"]
        nodes.append(helper.make_node("DequantizeLinear", inputs, [name], f"{name}/dq", **extra))
    keep = [i for i in graph.initializer if i.name not in set(left)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *rest])


def _channel_axis(shape: tuple[int, ...], channels: int, name: str) -> int:
    """The axis of `shape` that holds `channels` (the last such: a MatMul's columns)."""
    for axis in range(len(shape) - 1, -1, -1):
        if shape[axis] == channels:
            return axis
    raise RuntimeError(f"quantize_onnx: {name} {shape} has no axis of {channels} channels")
