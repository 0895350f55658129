"""One trial of a study as a standalone package (the command is `python -m tnsearch.export`).

The package is a folder that needs neither the study nor its storage:

- ``model.safetensors``: the trained weights (the state_dict of ``tnsearch.plan.build(plan)``);
- ``plan.json``: the plan the model is rebuilt from;
- ``model.onnx``: the tensorized model for ONNX runtimes, input ``(batch, C, H, W)`` float32,
  output ``(batch, classes)`` logits, with a dynamic batch axis;
- ``README.md``: what the trial is and how to use it.

``load(path)`` (also ``tnsearch.load``) rebuilds the ``nn.Module`` from the folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from tnsearch.config import ConfigError
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console
from tnsearch.ui.console import short_name

__all__ = ["FILES", "export", "load", "to_onnx", "write_package"]

FILES = ("model.safetensors", "plan.json", "model.onnx", "README.md")
#: The largest relative difference between the ONNX model and PyTorch that export accepts.
ONNX_TOLERANCE = 1e-4
#: Loggers that report each step of an ONNX export at INFO level (shown under Hydra's logging).
_CHATTY = ("torch.onnx", "torch.export", "torch._dynamo", "onnx_ir", "onnxscript")


def load(
    path: str | Path,
    *,
    trusted: Collection[str] = (),
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Rebuild an exported trial's model (eval mode) from its package folder.

    Args:
        path: the folder written by `python -m tnsearch.export` (or a file in it).
        trusted: model constructors (`_target_` paths) the plan may name besides tnsearch's
            own models; anything else is refused before it is called.
        factory: build the dense model with this callable instead (plan arguments + inputs).
    """
    from safetensors.torch import load_file

    from tnsearch import plan as plans

    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    for name in ("plan.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not an exported model (no {name})")
    plan = plans.load(folder / "plan.json")
    model = plans.build(plan, trusted=trusted, factory=factory)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    return model.eval()


def _model(
    plan: Mapping[str, Any], state: Mapping[str, Any], trusted: Collection[str] = ()
) -> nn.Module:
    from tnsearch import plan as plans

    model = plans.build(plan, trusted=trusted)
    model.load_state_dict(state)
    return model.eval()


def to_onnx(model: nn.Module, plan: Mapping[str, Any], path: str | Path) -> float | None:
    """Write `model` as ONNX with a dynamic batch axis; return its error against PyTorch.

    Every tensorized layer is exported on its "reconstruct" path: the graph holds the factors
    (the file is as small as the model) and rebuilds each dense weight from them. The other paths
    contract the input with the factors in a plan made for one batch size, which would fix the
    batch axis. Uses the torch.export-based exporter (needs onnxscript), without its optimizer,
    which would fold the factors back into dense weights.

    Returns:
        The largest relative difference of the logits of onnxruntime and PyTorch on a random batch
        of 3, or None when onnxruntime is not installed.

    Raises:
        RuntimeError: when that difference exceeds ONNX_TOLERANCE.
    """
    import copy
    import warnings

    import torch

    from tnsearch import tn

    model = copy.deepcopy(model).eval()
    for layer in model.modules():
        if isinstance(layer, tn.TNLayer):
            layer.path = "reconstruct"
    inputs = plan["inputs"]
    shape = (inputs["in_channels"], inputs["image_size"], inputs["image_size"])
    seeded = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    example = torch.randn(2, *shape, generator=seeded)
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
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                optimize=False,
                external_data=False,
                verbose=False,
            )
    finally:
        for logger, level in zip(chatty, levels, strict=True):
            logger.setLevel(level)
    _strip_metadata(path)
    try:
        import onnxruntime
    except ImportError:
        return None
    x = torch.randn(3, *shape, generator=seeded)
    with torch.no_grad():
        expected = model(x).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    error = float(abs(got - expected).max() / max(abs(expected).max(), 1e-12))
    if error > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX model differs from PyTorch: relative error {error:.2e}")
    return error


def _strip_metadata(path: str | Path) -> None:
    """Drop the exporter's per-node debugging metadata (the stack trace and FX node of every op:
    half the file, with this machine's paths in it)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def write_package(
    trial: Record,
    weights: str | Path,
    out: str | Path,
    *,
    study_name: str,
    selection: str = "",
    trusted: Collection[str] = (),
    metric: str = "accuracy",
    readme: str | None = None,
    source: str | None = None,
) -> Path:
    """Write the package of `trial` (trained `weights`) to the folder `out`; return it.

    `readme` replaces the README a trial gets; `source` the weights' metadata "trial" entry
    (e.g. "compress params-0.5" for a package that is no trial).

    Files are written to a temporary folder next to `out` first, so a failure leaves `out` as it
    was; existing package files in `out` are replaced.
    """
    import torch
    from safetensors.torch import save_file

    from tnsearch import plan as plans

    plan = dict(trial.plan)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = _model(plan, state, trusted)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        meta = {"format": "pt", "study": study_name, "trial": source or str(trial.number)}
        save_file(tensors, work / "model.safetensors", metadata=meta)
        plans.save(plan, work / "plan.json")
        onnx = _is_image(plan)  # ONNX export of token models: not yet
        error = to_onnx(model, plan, work / "model.onnx") if onnx else None
        if readme is None and onnx:
            readme = _readme(trial, plan, study_name, selection, error, metric)
        (work / "README.md").write_text(readme or _plain_readme(trial, plan, study_name, metric))
        mode = (work / "README.md").stat().st_mode & 0o777  # as the umask says
        out.mkdir(exist_ok=True)
        for name in FILES:
            if (work / name).exists():
                (work / name).chmod(mode)
                (work / name).replace(out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _is_image(plan: Mapping[str, Any]) -> bool:
    return {"in_channels", "image_size", "num_classes"} <= set(plan["inputs"])


def _plain_readme(trial: Record, plan: Mapping[str, Any], study_name: str, metric: str) -> str:
    """The README of a package without ONNX (a model whose inputs are not images)."""
    from tnsearch import plan as plans

    return f"""# {study_name}, trial {trial.number}

Trial {trial.number} of the tnsearch study `{study_name}`: `{plans.summary(plan)}`;
validation {metric} {_fmt(trial.quality, ".4f")}, {_fmt(trial.params, ",d")} parameters
({_fmt(trial.compression, ".2f")}x fewer than dense), {_fmt(trial.latency_ms, ".3f")} ms per batch.

## Files
- `model.safetensors`: the trained weights, the state_dict of `tnsearch.plan.build(plan)`.
- `plan.json`: the plan (how to rebuild the model, one entry per tensorized layer).
- No `model.onnx`: ONNX export is written for image models only so far.

## Use
```python
import tnsearch
model = tnsearch.load("path/to/this/folder")   # eval mode; trusted=[...] for your own factory
```
"""


def _readme(
    trial: Record,
    plan: Mapping[str, Any],
    study_name: str,
    selection: str,
    onnx_error: float | None,
    metric: str = "accuracy",
) -> str:
    from tnsearch import plan as plans

    inputs = plan["inputs"]
    shape = f"(batch, {inputs['in_channels']}, {inputs['image_size']}, {inputs['image_size']})"
    how = f" (selected by `trial={selection}`)" if selection else ""
    rows = [
        (f"validation {metric}", _fmt(trial.quality, ".4f")),
        (f"test {metric}", _fmt(trial.test_quality, ".4f")),
        ("parameters", _fmt(trial.params, ",d")),
        ("compression vs dense", _fmt(trial.compression, ".2f") + "x"),
        ("latency (ms / batch, p50)", _fmt(trial.latency_ms, ".3f")),
    ]
    layers = "\n".join(
        f"- `{name}`: {spec['topology']}, order {spec['order']}, in modes {spec['in_modes']}, "
        f"out modes {spec['out_modes']}, rank {spec['rank']}"
        for name, spec in plan["layers"].items()
    )
    checked = (
        f"onnxruntime matches PyTorch to a relative error of {onnx_error:.1e}."
        if onnx_error is not None
        else "onnxruntime was not installed: the ONNX file was not checked."
    )
    return f"""# {study_name}, trial {trial.number}

Trial {trial.number} of the tnsearch study `{study_name}`{how}: `{plans.summary(plan)}`.

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in rows)}

Tensorized layers (the others are dense):
{layers or "- none: this is the dense reference"}

## Files
- `model.safetensors`: the trained weights, the state_dict of `tnsearch.plan.build(plan)`.
- `plan.json`: the plan (model constructor, input shape, one entry per tensorized layer).
- `model.onnx`: input `input` {shape} float32, preprocessed as in training; output `logits`
  (batch, {inputs["num_classes"]}). Tensorized layers hold their factors and rebuild their dense
  weight in the graph. {checked}

## Use
```python
import tnsearch
model = tnsearch.load("path/to/this/folder")   # an nn.Module in eval mode

import onnxruntime
session = onnxruntime.InferenceSession("path/to/this/folder/model.onnx")
logits = session.run(None, {{"input": images}})[0]   # images: float32 {shape}
```
"""


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def export(cfg: Mapping[str, Any], console: Console | None = None) -> Path:
    """Select the trial the resolved config names and write its package; return the folder."""
    from tnsearch import plan as plans
    from tnsearch.results.selection import open_existing, select

    console = console or Console()
    study = open_existing(cfg["storage"], cfg["name"])
    trial = select(study, cfg["trial"])
    study_dir = Path(cfg["root"]) / cfg["name"]
    weights = study_dir / "trials" / str(trial.number) / "weights.pt"
    if not weights.is_file():
        raise ConfigError("trial", f"trial {trial.number} has no weights at {weights}")
    out = Path(cfg["out"]) if cfg.get("out") else study_dir / "export" / f"trial-{trial.number}"
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} is a file, not a folder")
    metric = record.quality_metric(study)
    spec = "" if str(cfg["trial"]).strip().isdigit() else str(cfg["trial"]).strip()
    if not spec and int(cfg["trial"]) != trial.number:
        console.say(f"trial {cfg['trial']} repeated the plan of trial {trial.number}")
    console.say(
        f"trial {trial.number}{f' ({spec})' if spec else ''}: {plans.summary(trial.plan)}, "
        f"{short_name(metric)} {trial.quality:.4f}, params {trial.params:,} "
        f"({trial.compression:.1f}x), "
        f"{trial.latency_ms:.3f} ms"
    )
    try:
        write_package(
            trial,
            weights,
            out,
            study_name=cfg["name"],
            selection=spec,
            trusted=plans.trusted_models(cfg),
            metric=metric,
        )
    except plans.UntrustedModelError as exc:
        raise ConfigError("trial", f"trial {trial.number}'s plan: {exc}") from None
    console.say(f"exported to {out}: {', '.join(FILES)}")
    return out
