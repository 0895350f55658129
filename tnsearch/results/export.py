"""One trial of a study as a standalone package (the command is `python -m tnsearch.export`).

The package is a folder that needs neither the study nor its storage:

- ``model.safetensors``: the trained weights (the state_dict of ``tnsearch.plan.build(plan)``);
- ``plan.json``: the plan the model is rebuilt from;
- ``model.onnx``: the tensorized model for ONNX runtimes, input ``(batch, C, H, W)`` float32,
  output ``(batch, classes)`` logits, with a dynamic batch axis; each tensorized layer's graph is
  the path it runs in PyTorch (`tnsearch.measure.onnx`), not a rebuilt dense weight;
- ``README.md``: what the trial is and how to use it, and the onnxruntime latency of
  ``model.onnx`` against the dense model's ONNX export, timed side by side.

``load(path)`` (also ``tnsearch.load``) rebuilds the ``nn.Module`` from the folder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.config import ConfigError
from tnsearch.measure import onnx as onnx_export
from tnsearch.measure.latency import PairedStats
from tnsearch.measure.onnx import ONNX_TOLERANCE
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console, warn
from tnsearch.ui.console import short_name

__all__ = ["FILES", "ONNX_TOLERANCE", "export", "load", "to_onnx", "write_package"]

FILES = ("model.safetensors", "plan.json", "model.onnx", "README.md")
#: Timed pairs of the README's onnxruntime latency (model.onnx beside the dense model's ONNX).
ONNX_PAIRS = 30


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


def to_onnx(
    model: nn.Module, plan: Mapping[str, Any], path: str | Path, *, batch_size: int = 64
) -> float | None:
    """Write `model` as ONNX with a dynamic batch axis; return its error against PyTorch.

    Each tensorized layer's graph follows the path it takes on a batch of `batch_size` (the
    latency batch): see `tnsearch.measure.onnx.export`.

    Returns:
        The largest relative difference of the logits of onnxruntime and PyTorch on a random
        batch of another size, or None when onnxruntime is not installed.

    Raises:
        RuntimeError: when that difference exceeds ONNX_TOLERANCE.
    """
    return onnx_export.export(model, _example(plan, batch_size), path).error


def _example(plan: Mapping[str, Any], batch_size: int) -> torch.Tensor:
    """A random input batch of the plan's image shape (the global RNG is left alone)."""
    inputs = plan["inputs"]
    shape = (inputs["in_channels"], inputs["image_size"], inputs["image_size"])
    return torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))


def _onnx_speed(
    plan: Mapping[str, Any], model_onnx: Path, example: torch.Tensor, trusted: Collection[str]
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
        onnx_export.export(plans.build_dense(plan, trusted=trusted), example, dense, check=False)
        return onnx_export.paired(model_onnx, dense, example, pairs=ONNX_PAIRS, warmup=5)
    finally:
        dense.unlink(missing_ok=True)


def _speed_text(speed: PairedStats | None, batch_size: int) -> str:
    """E.g. "onnxruntime: 0.71x the dense model's ONNX (1.234 ms vs 1.738 ms per batch of 64,
    AMD EPYC (2 threads))"."""
    if speed is None:
        return "onnxruntime was not installed: the ONNX latency was not measured."
    noisy = "; noisy: the paired ratios spread widely" if speed.noisy else ""
    return (
        f"onnxruntime: {speed.ratio:.2f}x the dense model's ONNX ({speed.latency_ms:.3f} ms vs "
        f"{speed.reference_ms:.3f} ms per batch of {batch_size}, {speed.device}{noisy}), "
        f"timed side by side ({speed.pairs} pairs, the order alternating)."
    )


def _checked_text(onnx_error: float | None) -> str:
    if onnx_error is None:
        return "onnxruntime was not installed: the ONNX file was not checked."
    return f"onnxruntime matches PyTorch to a relative error of {onnx_error:.1e}."


def _onnx_section(onnx_error: float | None, speed: PairedStats | None, batch_size: int) -> str:
    """What a README given to `write_package` gets appended about `model.onnx`."""
    return f"""
## ONNX
`model.onnx`: input `input` (batch, C, H, W) float32, output `logits`; each tensorized layer's
graph is the path it runs in PyTorch on a batch of {batch_size}, its factors and their sequence of
small contractions. {_checked_text(onnx_error)}
{_speed_text(speed, batch_size)}
"""


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
    batch_size: int = 64,
) -> Path:
    """Write the package of `trial` (trained `weights`) to the folder `out`; return it.

    `readme` replaces the README a trial gets (the ONNX file's check and latency are appended to
    it); `source` the weights' metadata "trial" entry (e.g. "compress params-0.5" for a package
    that is no trial); `batch_size` is the latency batch (`latency.batch_size`): the ONNX graph's
    paths and the README's onnxruntime latency are for it.

    Files are written to a temporary folder next to `out` first, so a failure leaves `out` as it
    was; existing package files in `out` are replaced.
    """
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
        if _is_image(plan):  # ONNX export of token models: not yet
            example = _example(plan, batch_size)
            exported = onnx_export.export(model, example, work / "model.onnx")
            speed = _onnx_speed(plan, work / "model.onnx", example, trusted)
            if readme is None:
                readme = _readme(
                    trial, plan, study_name, selection, exported, speed, batch_size, metric
                )
            else:
                readme += _onnx_section(exported.error, speed, batch_size)
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
    exported: onnx_export.Exported,
    speed: PairedStats | None,
    batch_size: int,
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
        + (f", ONNX path {exported.paths[name]}" if name in exported.paths else "")
        for name, spec in plan["layers"].items()
    )
    return f"""# {study_name}, trial {trial.number}

Trial {trial.number} of the tnsearch study `{study_name}`{how}: `{plans.summary(plan)}`.

| | |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in rows)}

Tensorized layers (the others are dense):
{layers or "- none: this is the dense reference"}

{_speed_text(speed, batch_size)}

## Files
- `model.safetensors`: the trained weights, the state_dict of `tnsearch.plan.build(plan)`.
- `plan.json`: the plan (model constructor, input shape, one entry per tensorized layer).
- `model.onnx`: input `input` {shape} float32, preprocessed as in training; output `logits`
  (batch, {inputs["num_classes"]}). Each tensorized layer's graph is the path it runs in PyTorch
  on a batch of {batch_size} (listed above): the factors and their sequence of small contractions
  (a `reconstruct` layer rebuilds its dense weight from them). {_checked_text(exported.error)}

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
            batch_size=int((cfg.get("latency") or {}).get("batch_size") or 64),
        )
    except plans.UntrustedModelError as exc:
        raise ConfigError("trial", f"trial {trial.number}'s plan: {exc}") from None
    console.say(f"exported to {out}: {', '.join(FILES)}")
    _log_to_run(cfg, trial, out, console)
    return out


def _log_to_run(cfg: Mapping[str, Any], trial: Record, out: Path, console: Console) -> None:
    """Attach the package to the trial's MLflow run (under `export/`), when it has one."""
    tracking = cfg.get("tracking") or {}
    if not tracking.get("enabled") or trial.mlflow_run_id is None:
        return
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking["uri"]).log_artifacts(trial.mlflow_run_id, str(out), "export")
    except Exception as exc:  # noqa: BLE001 - tracking is never the reason a command fails
        warn(
            f"MLflow ({tracking['uri']}): the package was not logged to trial {trial.number}'s "
            f"run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        )
        return
    console.say(f"logged to MLflow run {trial.mlflow_run_id} (artifacts: export/)")
