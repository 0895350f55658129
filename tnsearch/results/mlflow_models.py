"""Trials' models in MLflow: logged to their runs, loaded back without the study, registered.

Each chosen trial (`tracking.log_models`: `pareto`, the trained Pareto-optimal ones, by default;
`all` trained trials; `none`) logs its model to its own MLflow run as an MLflow model of the
PyTorch flavor, saved as a PT2 program (`torch.export`: a graph and its tensors, nothing that
runs code when loaded; MLflow refuses pickled models by default), with its input example and
signature, and with the files of `tnsearch.export`'s package beside it (`package/`: weights as
safetensors, plan.json, model.onnx, README.md). So both

    mlflow.pyfunc.load_model(uri).predict(batch)      # numpy in, numpy logits out
    mlflow.pytorch.load_model(uri)(torch_batch)

work in a process that has neither the study nor tnsearch. `tracking.register=true` registers
each as a version of the registered model named like the study, tagged with its objectives.

A trial is logged once: its run's tag `tnsearch.model_uri` says it was (continuing a study logs
only the trials that are new on the front).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console, warn

__all__ = ["CHOICES", "MODEL_TAG", "VIEW", "chosen", "log_models", "log_trial_model", "share_view"]

#: The values of `tracking.log_models`.
CHOICES = ("pareto", "all", "none")
#: The run tag that holds the URI of the trial's logged model.
MODEL_TAG = "tnsearch.model_uri"
#: The name of the runs view a study's experiment shares (MLflow's `viewStateShareKey`).
VIEW = "tnsearch"
#: The columns that view shows, after the quality.
VIEW_COLUMNS = (
    "metrics.`param_count`",
    "metrics.`compression`",
    "metrics.`latency_ratio`",
    "metrics.`latency_ms`",
    "tags.`pareto`",
    "params.`tensorized_layers`",
)
#: Rows of the input example stored with each model (> 1: the batch axis stays dynamic).
EXAMPLE_ROWS = 2


def chosen(study: optuna.Study, which: str) -> list[Record]:
    """The trials whose models `tracking.log_models=which` logs: trained and finished, on the
    front (`pareto`) or all of them (`all`); none for `none`."""
    if which == "none":
        return []
    if which == "pareto":
        return [t for t in record.front(study) if t.candidate]
    trials = record.records(study, (TrialState.COMPLETE,))
    return [t for t in trials if t.candidate]


def log_models(
    study: optuna.Study,
    cfg: Mapping[str, Any],
    study_dir: Path,
    example: Any,
    console: Console | None = None,
) -> list[str]:
    """Log the models `tracking.log_models` chooses (and register them when
    `tracking.register`); return the URIs of the models logged now.

    Tracking is never the reason a study stops: a model that cannot be logged is said once and
    the others go on.
    """
    tracking = cfg["tracking"]
    if not tracking["enabled"]:
        return []
    import logging
    import os

    import torch
    from mlflow import MlflowClient

    from tnsearch import plan as plans

    # MLflow's progress bars and "Created version" lines say nothing the summary line won't.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking["uri"])
    metric = record.quality_metric(study)
    try:
        share_view(client, study.study_name, metric)
    except Exception as exc:  # noqa: BLE001 - tracking never stops a study
        warn(f"MLflow: the runs view was not saved: {type(exc).__name__}: {exc}"[:300])
    front = {t.number for t in record.front(study)}
    which = tracking.get("log_models", "pareto")
    chosen_now = {t.number for t in chosen(study, which)}
    if chosen_now and not isinstance(example, torch.Tensor):
        warn(
            "MLflow: models of one tensor input only are logged as MLflow models so far; this "
            "study's (a dict of tensors) are not (python -m tnsearch.export writes them)"
        )
        chosen_now = set()
    logged = []
    for trial in chosen(study, "all"):
        if trial.mlflow_run_id is None:
            continue
        weights = study_dir / "trials" / str(trial.number) / "weights.pt"
        try:
            run = client.get_run(trial.mlflow_run_id)
            client.set_tag(run.info.run_id, "pareto", str(trial.number in front).lower())
            if trial.number not in chosen_now or MODEL_TAG in run.data.tags:
                continue
            if not weights.is_file():
                continue
            uri = log_trial_model(
                trial,
                weights,
                example,
                tracking_uri=tracking["uri"],
                study_name=study.study_name,
                metric=metric,
                trusted=plans.trusted_models(cfg),
                register=bool(tracking.get("register", False)),
            )
        except Exception as exc:  # noqa: BLE001 - tracking never stops a study
            warn(
                f"MLflow: trial {trial.number}'s model was not logged: {type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]}"
            )
            continue
        logged.append(uri)
    if logged and console is not None:
        where = (
            f"registered as {study.study_name!r} in MLflow's Model Registry"
            if tracking.get("register")
            else "logged to their MLflow runs"
        )
        console.say(f"models of {len(logged)} trial(s) {where}")
    return logged


def share_view(client, experiment: str, metric: str) -> None:
    """Save the experiment's runs view the study's URL opens (`&viewStateShareKey=tnsearch`):
    every trial's run, flat (MLflow folds nested runs under their parent), best quality first,
    with the objectives as columns: what MLflow otherwise shows only after picking columns."""
    import json

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    state = {
        "searchFilter": "tags.trial LIKE '%'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [f"metrics.`{metric}`", f"metrics.`test_{metric}`", *VIEW_COLUMNS],
    }
    client.set_experiment_tag(
        found.experiment_id, f"mlflow.sharedViewState.{VIEW}", json.dumps(state)
    )


def log_trial_model(
    trial: Record,
    weights: str | Path,
    example: Any,
    *,
    tracking_uri: str,
    study_name: str,
    metric: str,
    trusted: Sequence[str] = (),
    register: bool = False,
    package: str | Path | None = None,
) -> str:
    """Log `trial`'s model (trained `weights`) to its MLflow run; return the model's URI.

    Args:
        trial: a finished trial with an MLflow run (`mlflow_run_id`).
        example: an input batch (a tensor): its first rows are the model's input example.
        package: an export package of the trial already written (None: one is made here).
        register: also register it as a version of the model named `study_name`.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from tnsearch.measure import onnx
    from tnsearch.results.export import load, write_package

    if not isinstance(example, torch.Tensor):
        raise TypeError("only models of one tensor input are logged as MLflow models so far")
    with tempfile.TemporaryDirectory(prefix="tnsearch-model-") as tmp:
        if package is None:
            package = write_package(
                trial,
                weights,
                Path(tmp) / "package",
                study_name=study_name,
                trusted=trusted,
                metric=metric,
            )
        model = load(package, trusted=trusted)
        x = example[:EXAMPLE_ROWS].detach().cpu().float()
        if x.shape[0] < 2:
            x = x.repeat(2, *[1] * (x.dim() - 1))
        onnx.pin_paths(model, example[:64].cpu().float())  # the latency batch's paths, fixed
        with torch.no_grad():
            y = model(x)
        signature = infer_signature(x.numpy(), y.numpy())
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=trial.mlflow_run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pt2",
                signature=signature,
                input_example=x.numpy(),
                extra_files=[str(p) for p in sorted(Path(package).iterdir()) if p.is_file()],
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                params={"trial": trial.number},
                tags=_objective_tags(trial, metric),
            )
            mlflow.set_tag(MODEL_TAG, info.model_uri)
    if register:
        version = mlflow.register_model(
            info.model_uri, study_name, tags={"trial": str(trial.number)}
        )
        client = mlflow.MlflowClient(tracking_uri)
        for key, value in _objective_tags(trial, metric).items():
            client.set_model_version_tag(study_name, version.version, key, value)
    return info.model_uri


def _objective_tags(trial: Record, metric: str) -> dict[str, str]:
    """A model's objectives as tags (rounded as people read them)."""
    tags = {"trial": str(trial.number)}
    if trial.quality is not None:
        tags[metric] = f"{trial.quality:.4f}"
    if trial.params is not None:
        tags["param_count"] = str(trial.params)
    if trial.compression is not None:
        tags["compression"] = f"{trial.compression:.2f}"
    if trial.latency_ratio is not None:
        tags["latency_ratio"] = f"{trial.latency_ratio:.3f}"
    return tags
