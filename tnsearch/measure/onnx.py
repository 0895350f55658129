"""A model as ONNX, exported as it was timed, and onnxruntime sessions to time it.

`export` writes the graph each tensorized layer runs in PyTorch: the path it is forced to, else
the one ``path="auto"`` chose (or chooses now, measured on the example batch, which should be of
the latency batch size). A factorized path stays a sequence of small contractions (the Tucker-2
1x1 / kxk / 1x1 convolutions, an MPO's chain of cores), so the deployed model is the one whose
latency the search optimized, not one that rebuilds every dense weight. Contraction plans leave
the batch size open (``reshape(-1, ...)``), so the graph keeps a dynamic batch axis.

`session` and `runner` time such a file in onnxruntime the way `latency` times a model in torch
(same threads, one batch), for `latency.paired_calls`; `paired` does that against a reference.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from tnsearch import tn
from tnsearch.measure import latency

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["ONNX_TOLERANCE", "Exported", "export", "paired", "pin_paths", "runner", "session"]

#: The largest relative difference between the ONNX model and PyTorch that export accepts.
ONNX_TOLERANCE = 1e-4
#: Loggers that report each step of an ONNX export at INFO level (shown under Hydra's logging).
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnx_ir", "onnxscript")


@dataclass(frozen=True)
class Exported:
    """What `export` wrote."""

    paths: dict[str, str]  # tensorized layer name -> the path its graph follows
    error: float | None  # largest relative difference to PyTorch; None: not checked


def pin_paths(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
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


def export(
    model: nn.Module,
    example: torch.Tensor,
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
        model: takes one tensor ``(B, ...)``; it is not modified.
        example: one input batch ``(B, ...)``, B >= 2 (the latency batch: paths and contraction
            orders are chosen for it).
        path: the file to write.
        check: run the file in onnxruntime on a batch of another size and compare with PyTorch.

    Returns:
        The paths and the largest relative difference of onnxruntime's outputs to PyTorch's
        (None when not checked or when onnxruntime is not installed).

    Raises:
        ValueError: ``example: ...`` for a batch of one (torch.export would fix the axis).
        RuntimeError: when that difference exceeds ONNX_TOLERANCE.
    """
    if example.shape[0] < 2:
        raise ValueError(f"example: a batch of at least 2 is needed, got {example.shape[0]}")
    model = copy.deepcopy(model).to("cpu").eval()
    example = example.detach().to("cpu")
    paths = pin_paths(model, example)
    chatty = [logging.getLogger(name) for name in _CHATTY]
    levels = [logger.level for logger in chatty]
    for logger in chatty:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
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
    other = 3 if example.shape[0] != 3 else 5  # the batch axis is dynamic: check another size
    seeded = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    x = torch.randn(other, *example.shape[1:], generator=seeded, dtype=example.dtype)
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session(path).run(None, {input_name: x.numpy()})
    error = float(abs(got - expected).max() / max(abs(expected).max(), 1e-12))
    if error > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX model differs from PyTorch: relative error {error:.2e}")
    return Exported(paths, error)


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


def runner(session: onnxruntime.InferenceSession, example: torch.Tensor) -> Callable[[], object]:
    """A call with no arguments that runs `session` on `example` (one batch, converted once)."""
    feeds = {session.get_inputs()[0].name: example.detach().cpu().contiguous().numpy()}
    return lambda: session.run(None, feeds)


def paired(
    model: str | Path,
    reference: str | Path,
    example: torch.Tensor,
    *,
    pairs: int = 50,
    warmup: int = 10,
    spread: float = latency.NOISY_SPREAD,
    attempts: int = latency.ATTEMPTS,
    threads: int | None = None,
) -> latency.PairedStats:
    """The onnxruntime latency of the ONNX file `model` as a ratio to `reference`'s, both timed
    in turn on `example` (`latency.paired_calls`), each in its own `session` of `threads`
    intra-op threads (None: torch's)."""
    threads = threads or torch.get_num_threads()
    ratios, mine, theirs, made, noisy = latency.paired_calls(
        runner(session(model, threads=threads), example),
        runner(session(reference, threads=threads), example),
        pairs=pairs,
        warmup=warmup,
        spread=spread,
        attempts=attempts,
    )
    device = f"onnxruntime on {latency.cpu_name()} ({threads} threads)"
    return latency.PairedStats.of(ratios, mine, theirs, attempts=made, noisy=noisy, device=device)
