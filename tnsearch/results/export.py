"""One trial of a study as a standalone package (the command is `python -m tnsearch.export`).

The package (`tnsearch.results.package`) is a folder that needs neither the study, nor its
storage, nor the machine that made it: the weights (safetensors), the plan, the preprocessing
the model was trained with, a Hugging Face model's config and tokenizer (``hf/``), the model as
ONNX taking raw inputs (`tnsearch.results.package_onnx`), a README with the onnxruntime lines and
latency, and the checksums of it all. ``load(path)`` (also ``tnsearch.load``) rebuilds the model.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from tnsearch.config import Config, ConfigError, ExportConfig
from tnsearch.measure.onnx import ONNX_TOLERANCE
from tnsearch.plan import Plan
from tnsearch.results import package_onnx
from tnsearch.results.package import (
    FILES,
    HF,
    HF_TARGET,
    PackageError,
    check_out,
    factory_of,
    portable_plan,
    staging,
)
from tnsearch.results.package_load import build_checked, load
from tnsearch.results.package_readme import onnx_section, package_readme
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console, warn
from tnsearch.ui.console import short_name

__all__ = ["FILES", "ONNX_TOLERANCE", "PackageError", "export", "load", "write_package"]


def _tokenizer(plan: Mapping[str, Any], data: Any) -> Any:
    """The tokenizer of a text model: the data's, else its Hugging Face folder's (if any)."""
    if data is not None and hasattr(data, "hf_tokenizer"):
        return data.hf_tokenizer
    if plan["model"].get("_target_") != HF_TARGET:
        return None
    folder = Path(str(plan["model"].get("path", "")))
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from tnsearch import hf

    return hf.tokenizer(folder, "model.path")


def _preprocessing(plan: Mapping[str, Any], data: Any, tokenizer: Any) -> dict[str, Any]:
    """What the model was trained on (`preprocessing.json`): the data's own record, else what
    the plan and the tokenizer tell."""
    from tnsearch.data import tokenizer_record

    if data is not None and hasattr(data, "preprocessing"):
        return dict(data.preprocessing())
    inputs = plan["inputs"]
    if {"in_channels", "image_size", "num_classes"} <= set(inputs):
        size = inputs["image_size"]
        return {"kind": "image", "shape": [inputs["in_channels"], size, size], "normalize": None}
    if tokenizer is not None:
        length = inputs.get("max_length") or min(int(tokenizer.model_max_length), 512)
        return tokenizer_record(tokenizer, length)
    return {"kind": "none"}


def _built(
    plan: Mapping[str, Any], work: Path, state: Mapping[str, torch.Tensor], trusted
) -> torch.nn.Module:
    """The trained model, rebuilt as `load` will rebuild it from the package being written (a
    Hugging Face model from the package's own config, not from the folder it came from)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    model = build_checked(plan, work, trusted, factory_of(work, plan), shapes)
    model.load_state_dict(state, strict=True)
    return model.eval()


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
    data: Any = None,
    timed: bool = True,
) -> Path:
    """Write the package of `trial` (trained `weights`) to the folder `out`; return it.

    Args:
        trial: the trial (its plan and measurements for the README).
        weights: its trained state_dict (a ``torch.save`` file, read with weights_only).
        data: the data module it was trained on (set up or not): its preprocessing
            (normalization, tokenizer) goes into the package, and a text model's ONNX is traced
            on its example batch. None: a Hugging Face model's folder gives the tokenizer; an
            image model's normalization is not recorded.
        readme: replaces the README a trial gets (the ONNX file's section is appended to it).
        source: the weights' metadata "trial" entry (e.g. "compress params-0.5" for a package
            that is no trial).
        batch_size: the latency batch (`latency.batch_size`): the ONNX graph's paths and the
            README's onnxruntime latency are for it.
        timed: time model.onnx beside the dense model's ONNX for the README (False: not, e.g.
            for a package that only goes into an MLflow model).

    Files are written to a temporary folder beside `out` first, so a failure leaves `out` as it
    was; existing package files in `out` are replaced. A temporary folder a killed earlier
    export left there is removed.
    """
    from safetensors.torch import save_file

    from tnsearch import hf
    from tnsearch import plan as plans

    plan = trial.plan.to_json()  # the package's files hold the plan's JSON object
    out = Path(out)
    check_out(out, "out")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    tokenizer = _tokenizer(plan, data)
    with staging(out) as work:
        stored = portable_plan(plan)
        if plan["model"].get("_target_") == HF_TARGET:
            (work / HF).mkdir()
            hf.config(plan["model"]["path"], "model.path").save_pretrained(str(work / HF))
        if tokenizer is not None:
            (work / HF).mkdir(exist_ok=True)
            tokenizer.save_pretrained(str(work / HF))
        record = _preprocessing(plan, data, tokenizer)
        model = _built(stored, work, state, trusted)
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        meta = {"format": "pt", "study": study_name, "trial": source or str(trial.number)}
        save_file(tensors, work / "model.safetensors", metadata=meta)
        batch = package_onnx.example(plan, record, batch_size, data=data, tokenizer=tokenizer)
        exported = speed = None
        no_onnx = "" if batch is not None else "no example input (a token model without data)"
        if batch is not None:
            if isinstance(batch, Mapping):
                from tnsearch.measure.onnx import output_name

                record["output"] = output_name(model, batch)
                record["pooling"] = "mean" if record["output"] == "last_hidden_state" else None
            try:
                exported = package_onnx.write(
                    model, record, batch, work / "model.onnx", plan.get("precision")
                )
            except Exception as exc:  # noqa: BLE001 - the package is still worth writing
                if not isinstance(batch, Mapping):
                    raise  # image models have always exported: a failure here is a bug
                text = " ".join(str(exc).split())[:200]
                no_onnx = f"the export failed ({type(exc).__name__}: {text})"
                warn(f"{out}: model.onnx not written: {no_onnx}")
                (work / "model.onnx").unlink(missing_ok=True)
        for name, path in (exported.paths if exported is not None else {}).items():
            if name in stored["layers"]:  # load runs the path the ONNX graph follows
                stored["layers"][name]["path"] = path
        plans.save(stored, work / "plan.json")
        if exported is not None and timed:
            speed = package_onnx.speed(
                stored,
                record,
                work / "model.onnx",
                batch,
                trusted=trusted,
                factory=factory_of(work, stored),
            )
        (work / "preprocessing.json").write_text(json.dumps(record, indent=2) + "\n")
        if readme is None:
            readme = package_readme(
                trial,
                plan,
                record,
                study_name=study_name,
                selection=selection,
                exported=exported,
                speed=speed,
                batch_size=batch_size,
                metric=metric,
                no_onnx=no_onnx,
            )
        else:
            readme += onnx_section(record, plan, exported, speed, batch_size, no_onnx=no_onnx)
        (work / "README.md").write_text(readme)
    return out


def check_data(plan: Mapping[str, Any], data: Any) -> None:
    """Raise `ConfigError("data")` unless `data` gives the facts the trial's model was made for
    (an export with other `data=` keys than the study's)."""
    from tnsearch.study.setup import data_facts

    facts = data_facts(data)
    made = {k: v for k, v in Plan.of(plan).inputs.items() if k in facts}
    differ = {k: (v, facts[k]) for k, v in made.items() if facts[k] != v}
    if differ:
        said = ", ".join(f"{k} {a} (now {b})" for k, (a, b) in differ.items())
        raise ConfigError(
            "data", f"the study's models were made for other data: {said}; give the study's data"
        )


def _data(cfg: Config, plan: Mapping[str, Any]) -> Any:
    """The study's data module, set up (its preprocessing and examples go into the package)."""
    from hydra.utils import instantiate

    try:
        data = instantiate(cfg.data, _convert_="all")
        data.setup("fit")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra wraps the data module's own errors
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError.from_exception(cause, "data") from None
    check_data(plan, data)
    return data


def export(cfg: ExportConfig, console: Console | None = None) -> Path:
    """Select the trial the resolved config names and write its package; return the folder."""
    from tnsearch import plan as plans
    from tnsearch.results.selection import open_existing, select
    from tnsearch.study import tracking

    console = console or Console()
    if cfg.out:
        check_out(cfg.out, "out")  # before any work
    if cfg.tracking.enabled:
        tracking.check_server(cfg.tracking)  # an unreachable MLflow server: one line, now
    study = open_existing(cfg.storage, cfg.name)
    trial = select(study, cfg.trial)
    study_dir = cfg.study_dir
    weights = study_dir / "trials" / str(trial.number) / "weights.pt"
    if not weights.is_file():
        raise ConfigError("trial", f"trial {trial.number} has no weights at {weights}")
    out = Path(cfg.out) if cfg.out else study_dir / "export" / f"trial-{trial.number}"
    check_out(out, "out")
    metric = record.quality_metric(study)
    spec = "" if str(cfg.trial).strip().isdigit() else str(cfg.trial).strip()
    if not spec and int(cfg.trial) != trial.number:
        console.say(f"trial {cfg.trial} repeated the plan of trial {trial.number}")
    console.say(
        f"trial {trial.number}{f' ({spec})' if spec else ''}: {plans.summary(trial.plan)}, "
        f"{short_name(metric)} {trial.quality:.4f}, params {trial.params:,} "
        f"({trial.compression:.1f}x), "
        f"{trial.latency_ms:.3f} ms"
    )
    data = _data(cfg, trial.plan)
    try:
        write_package(
            trial,
            weights,
            out,
            study_name=cfg.name,
            selection=spec,
            trusted=plans.trusted_models(cfg.model),
            metric=metric,
            batch_size=cfg.latency.batch_size,
            data=data,
        )
    except plans.UntrustedModelError as exc:
        raise ConfigError("trial", f"trial {trial.number}'s plan: {exc}") from None
    console.say(f"exported to {out}: {', '.join(_listing(out))}")
    _log_to_run(cfg, trial, out, console)
    return out


def _log_to_run(cfg: Config, trial: Record, out: Path, console: Console) -> None:
    """Attach the package to the trial's MLflow run (under `export/`), when it has one."""
    tracking = cfg.tracking
    if not tracking.enabled or trial.mlflow_run_id is None:
        return
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking.uri).log_artifacts(trial.mlflow_run_id, str(out), "export")
    except Exception as exc:  # noqa: BLE001 - tracking is never the reason a command fails
        warn(
            f"MLflow ({tracking.uri}): the package was not logged to trial {trial.number}'s "
            f"run: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        )
        return
    console.say(f"logged to MLflow run {trial.mlflow_run_id} (artifacts: export/)")


def _listing(out: Path) -> list[str]:
    """The package's files as the export line lists them (`hf/` as one entry)."""
    names = [n for n in FILES if (out / n).is_file()]
    return [*names, f"{HF}/"] if (out / HF).is_dir() else names
