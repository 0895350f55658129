"""A model as ONNX, exported as it was timed, and onnxruntime sessions to time it.

`export` writes the graph each tensorized layer runs in PyTorch: the path it is forced to, else
the one ``path="auto"`` chose (or chooses now, measured on the example batch, which should be of
the latency batch size). A model takes one tensor (an image batch: input ``input``, a dynamic
batch axis) or a tokenized batch (a dict such as ``input_ids``, ``attention_mask``,
``token_type_ids``: inputs named so, dynamic batch and sequence axes, the output the one named,
e.g. ``last_hidden_state``); a tensorized embedding is exported as its lookup, gathers of
factor slices, never the dense table. A factorized path stays a sequence of small contractions
(the Tucker-2 1x1 / kxk / 1x1 convolutions, an MPO's chain of cores), so the deployed model is the
one whose latency the search optimized, not one that rebuilds every dense weight. Contraction
plans leave the batch size open (``reshape(-1, ...)``), so the graph keeps a dynamic batch axis.

`session` and `runner` time such a file in onnxruntime the way `latency` times a model in torch
(same threads, one batch), for `latency.paired_calls`; `paired` does that against a reference.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tnsearch import tn
from tnsearch.measure import latency

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "ONNX_TOLERANCE",
    "Exported",
    "Inputs",
    "export",
    "paired",
    "pin_paths",
    "runner",
    "session",
]

#: The largest relative difference between the ONNX model and PyTorch that export accepts.
ONNX_TOLERANCE = 1e-4
#: Loggers that report each step of an ONNX export at INFO level (shown under Hydra's logging).
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnx_ir", "onnxscript")


#: What a model takes: one tensor (B, ...), or a tokenized batch {name: (B, L) tensor}.
Inputs = torch.Tensor | Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Exported:
    """What `export` wrote."""

    paths: dict[str, str]  # tensorized layer name -> the path its graph follows
    error: float | None  # largest relative difference to PyTorch; None: not checked


def pin_paths(model: nn.Module, example: Inputs) -> dict[str, str]:
    """Force every tensorized layer of `model` (in place) onto the path it takes on `example`.

    That is its forced path, else what ``auto`` chose for its input there; a layer that has not
    chosen for that input yet measures its paths now (`tn.freeze_paths`, without grad).

    Returns:
        Layer name -> path, for the layers the forward pass reached.
    """
    taken: dict[str, str] = {}

    def record(name: str):
        def hook(layer: tn.TNLayer, args: tuple, output: torch.Tensor) -> None:
            taken.setdefault(name, layer.path_for(args[0]))

        return hook

    layers = {n: m for n, m in model.named_modules() if isinstance(m, tn.TNLayer)}
    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    try:
        tn.freeze_paths(model, example, grad=False)
    finally:
        for hook in hooks:
            hook.remove()
    for name, path in taken.items():
        layers[name].path = path
    return taken


class _Positional(nn.Module):
    """`model` called with named inputs given in order (the ONNX graph's inputs), returning one
    tensor: its output `output` (a dict / ModelOutput key), its first (a tuple), or itself."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], output: str | None) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output
        try:
            takes = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            takes = {}
        # A Hugging Face decoder would also return its key/value cache.
        self.extra = {"use_cache": False} if "use_cache" in takes else {}

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, tensors, strict=True)), **self.extra)
        return pick_output(out, self.output)


def pick_output(out, output: str | None) -> torch.Tensor:
    """The tensor a model's output means: `output` of a dict / ModelOutput, else its first
    entry (a tuple, a dict), else the tensor itself."""
    if isinstance(out, Mapping):
        if output is not None and output in out:
            return out[output]
        return next(iter(out.values()))
    if isinstance(out, tuple | list):
        return out[0]
    return out


def output_name(model: nn.Module, example: Inputs) -> str:
    """The name of the output a tokenized batch's model is exported with: ``logits`` when it
    gives logits, else ``last_hidden_state`` when it gives that, else its first output's key."""
    with torch.no_grad():
        out = model(**example) if isinstance(example, Mapping) else model(example)
    if isinstance(out, Mapping):
        for name in ("logits", "last_hidden_state"):
            if name in out:
                return name
        return str(next(iter(out)))
    return "logits"


def export(
    model: nn.Module,
    example: Inputs,
    path: str | Path,
    *,
    check: bool = True,
    input_name: str = "input",
    output_name: str = "logits",
) -> Exported:
    """Write `model` (a copy, on the CPU in eval mode) as ONNX with a dynamic batch axis.

    Each tensorized layer's graph follows its path on `example` (see `pin_paths`), with the
    contraction order chosen for that batch size. Uses the torch.export-based exporter (needs
    onnxscript), without its optimizer, which would fold the factors back into dense weights.

    Args:
        model: takes one tensor ``(B, ...)``, or, for a dict `example`, its entries as keyword
            arguments (a Hugging Face model); it is not modified.
        example: one input batch ``(B, ...)``, B >= 2 (the latency batch: paths and contraction
            orders are chosen for it), or a tokenized batch ``{name: (B, L)}`` (L >= 2): the
            graph's inputs have its names, with dynamic batch and sequence axes.
        path: the file to write.
        check: run the file in onnxruntime on a batch of another size (a tokenized batch: on two
            other shapes, batch and sequence length) and compare with PyTorch.
        input_name: the graph's input, for a tensor `example`.
        output_name: the graph's output; for a dict / ModelOutput output, also the key taken.

    Returns:
        The paths and the largest relative difference of onnxruntime's outputs to PyTorch's
        (None when not checked or when onnxruntime is not installed).

    Raises:
        ValueError: ``example: ...`` for a batch of one (torch.export would fix the axis).
        RuntimeError: when that difference exceeds ONNX_TOLERANCE.
    """
    tokens = isinstance(example, Mapping)
    names = tuple(example) if tokens else (input_name,)
    inputs = tuple(example[n] for n in names) if tokens else (example,)
    if inputs[0].shape[0] < 2:
        raise ValueError(f"example: a batch of at least 2 is needed, got {inputs[0].shape[0]}")
    if tokens and inputs[0].shape[1] < 2:
        raise ValueError(f"example: a sequence of at least 2 is needed, got {inputs[0].shape[1]}")
    model = copy.deepcopy(model).to("cpu").eval()
    inputs = tuple(t.detach().to("cpu") for t in inputs)
    paths = pin_paths(model, dict(zip(names, inputs, strict=True)) if tokens else inputs[0])
    graph = _Positional(model, names, output_name) if tokens else model
    if tokens:  # the wrapper's *tensors: one nested entry
        axes = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
        shapes: tuple = (tuple(axes for _ in names),)
    else:
        shapes = ({0: torch.export.Dim("batch")},)
    chatty = [logging.getLogger(name) for name in _CHATTY]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                inputs,
                str(path),
                dynamo=True,
                input_names=list(names),
                output_names=[output_name],
                dynamic_shapes=shapes,
                optimize=False,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)
    _strip_metadata(path)
    if not check:
        return Exported(paths, None)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return Exported(paths, None)
    checked = session(path)
    error = 0.0
    for feeds in _other_shapes(names, inputs) if tokens else [_other_batch(inputs[0])]:
        with torch.no_grad():
            expected = graph(*feeds.values()).numpy()
        (got,) = checked.run(None, {n: t.numpy() for n, t in feeds.items()})
        error = max(error, float(abs(got - expected).max() / max(abs(expected).max(), 1e-12)))
    if error > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX model differs from PyTorch: relative error {error:.2e}")
    return Exported(paths, error)


def _other_batch(example: torch.Tensor) -> dict[str, torch.Tensor]:
    """A random batch of another size than `example`'s (the global RNG is left alone)."""
    other = 3 if example.shape[0] != 3 else 5  # the batch axis is dynamic: check another size
    seeded = torch.Generator().manual_seed(0)
    x = torch.randn(other, *example.shape[1:], generator=seeded, dtype=example.dtype)
    return {"input": x}


def _other_shapes(
    names: tuple[str, ...], inputs: tuple[torch.Tensor, ...]
) -> list[dict[str, torch.Tensor]]:
    """Two tokenized batches of other shapes than the example's (B, L): (B', L // 2 + 1) and
    (2, L), B' = 3 (5 when B is 3), made of the example's rows (so their tokens are real), the
    first row's attention ending early (padding)."""
    b, length = inputs[0].shape[:2]
    out = []
    for rows, cols in ((3 if b != 3 else 5, length // 2 + 1), (2, length)):
        pick = torch.arange(rows) % b
        feeds = {n: t[pick, :cols].clone() for n, t in zip(names, inputs, strict=True)}
        if "attention_mask" in feeds and cols > 2:
            feeds["attention_mask"][0, cols // 2 :] = 0
        out.append(feeds)
    return out


def _strip_metadata(path: str | Path) -> None:
    """Drop the exporter's per-node debugging metadata (the stack trace and FX node of every op:
    half the file, with this machine's paths in it)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def session(path: str | Path, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An onnxruntime session on the CPU with torch's number of intra-op threads (or `threads`),
    so that its latency compares with torch's on the same machine (`latency.device_name`)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    # Idle threads would spin-wait for the next run, taking the CPU from a session timed beside.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(session: onnxruntime.InferenceSession, example: Inputs) -> Callable[[], object]:
    """A call with no arguments that runs `session` on `example` (one batch, converted once;
    a tokenized batch feeds the entries the graph's inputs name)."""
    if isinstance(example, Mapping):
        feeds = {
            i.name: example[i.name].detach().cpu().contiguous().numpy()
            for i in session.get_inputs()
        }
    else:
        feeds = {session.get_inputs()[0].name: example.detach().cpu().contiguous().numpy()}
    return lambda: session.run(None, feeds)


def paired(
    model: str | Path,
    reference: str | Path,
    example: Inputs,
    timing: latency.Timing | None = None,
    **changes: Any,
) -> latency.PairedStats:
    """The onnxruntime latency of the ONNX file `model` as a ratio to `reference`'s, both timed
    in turn on `example` (`latency.paired_calls`) as `timing` says (its pairs, warmup, spread and
    attempts; `changes`: fields of it changed), each in its own `session` of `timing.threads`
    intra-op threads (None: torch's)."""
    timing = (timing or latency.Timing()).but(**changes)
    threads = timing.threads or torch.get_num_threads()
    calls = latency.paired_calls(
        runner(session(model, threads=threads), example),
        runner(session(reference, threads=threads), example),
        pairs=timing.repeats,
        warmup=timing.warmup,
        spread=timing.spread,
        attempts=timing.attempts,
    )
    return calls.stats(f"onnxruntime on {latency.cpu_name()} ({threads} threads)")
