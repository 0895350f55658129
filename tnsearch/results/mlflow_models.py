"""Trials' models in MLflow: logged to their runs, loaded back without the study, registered.

Each chosen trial (`tracking.log_models`: `pareto`, the trained Pareto-optimal ones, by default;
`all` trained trials; `none`) logs its model to its own MLflow run, under the artifact name
``trial-<number>``, with the files of `tnsearch.export`'s package beside it, an input example of
real validation data and the signature it gives. Nothing in a model runs code when loaded:

- an image model is of the PyTorch flavor, saved as a PT2 program (`torch.export`: a graph and
  its tensors; MLflow refuses pickled models by default) of the model behind its recorded
  normalization: it takes raw pixels (float32 (batch, C, H, W), as the data set yields them);
  ``mlflow.pyfunc.load_model(uri).predict(pixels)`` and ``mlflow.pytorch.load_model(uri)`` work
  in a process that has neither the study nor tnsearch;
- a text model is a pyfunc whose loader is the installed module `tnsearch.results.mlflow_pyfunc`
  (so it needs tnsearch, but not torch, where it is loaded): strings in, the tokenizer of the
  package inside, embeddings (or logits) out, through the package's ONNX file in onnxruntime.

`tracking.register=true` registers each as a version of the registered model named like the
study, tagged with its objectives. A trial is logged once: its run's tag `tnsearch.model_uri`
says it was (continuing a study logs only the trials that are new on the front).
`log_package_model` logs any package (e.g. `python -m tnsearch.compress`'s) to a run.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch.config import Config
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui import Console, warn
from tnsearch.ui.names import rounded

__all__ = [
    "CHOICES",
    "MODEL_TAG",
    "VIEW",
    "chosen",
    "example_inputs",
    "log_models",
    "log_package_model",
    "log_trial_model",
    "objective_tags",
    "share_view",
]

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


def example_inputs(data: Any, n: int = EXAMPLE_ROWS) -> Any:
    """`n` real validation inputs of `data`, raw (as the data set yields them, before the
    preprocessing the package records): images as float32 pixel values (n, C, H, W), text as
    a list of strings; else the data's first validation inputs (`latency.example_batch`)."""
    import numpy as np

    if hasattr(data, "raw_inputs"):
        found = data.raw_inputs("val", n)
        return found if isinstance(found, list) else found.numpy().astype(np.float32)
    from tnsearch.measure import latency

    return latency.example_batch(data, n)


def log_models(
    study: optuna.Study,
    cfg: Config,
    study_dir: Path,
    data: Any,
    console: Console | None = None,
) -> list[str]:
    """Log the models `tracking.log_models` chooses (and register them when
    `tracking.register`); return the URIs of the models logged now.

    Args:
        data: the study's data module: the packages' preprocessing and the models' input
            examples come from it.

    Tracking is never the reason a study stops: a model that cannot be logged is said once and
    the others go on.
    """
    tracking = cfg.tracking
    if not tracking.enabled:
        return []
    import logging
    import os

    from mlflow import MlflowClient

    from tnsearch import plan as plans

    # MLflow's progress bars and "Created version" lines say nothing the summary line won't.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = MlflowClient(tracking.uri)
    metric = record.quality_metric(study)
    try:
        share_view(client, study.study_name, metric, record.metric_names(study))
    except Exception as exc:  # noqa: BLE001 - tracking never stops a study
        warn(f"MLflow: the runs view was not saved: {type(exc).__name__}: {exc}"[:300])
    front = {t.number for t in record.front(study)}
    which = tracking.log_models
    chosen_now = {t.number for t in chosen(study, which)}
    if chosen_now and not _loggable(data):
        warn(
            "MLflow: models are logged for image data and Hugging Face tokenized text; this "
            "study's data gives neither (python -m tnsearch.export writes their packages)"
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
                data,
                tracking_uri=tracking.uri,
                study_name=study.study_name,
                metric=metric,
                trusted=plans.trusted_models(cfg.model),
                register=bool(tracking.register),
                batch_size=int(cfg.latency.batch_size),
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
            if tracking.register
            else "logged to their MLflow runs"
        )
        console.say(f"models of {len(logged)} trial(s) {where}")
    return logged


def _loggable(data: Any) -> bool:
    """Whether a model of this data can be an MLflow model: image data, or text with a
    Hugging Face tokenizer."""
    import numpy as np
    import torch

    if hasattr(data, "hf_tokenizer"):
        return True
    return isinstance(example_inputs(data), torch.Tensor | np.ndarray)


def share_view(client, experiment: str, metric: str, names: Sequence[str] = ()) -> None:
    """Save the experiment's runs view the study's URL opens (`&viewStateShareKey=tnsearch`):
    every trial's run, flat (MLflow folds nested runs under their parent), best quality first,
    with the objectives as columns (`names`: the study's, by metric name; its measured ones
    after VIEW_COLUMNS): what MLflow otherwise shows only after picking columns."""
    import json

    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    shown = set(VIEW_COLUMNS)
    state = {
        "searchFilter": "tags.trial LIKE '%'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": [
            f"metrics.`{metric}`",
            f"metrics.`test_{metric}`",
            *VIEW_COLUMNS,
            *(f"metrics.`{n}`" for n in names if n != metric and f"metrics.`{n}`" not in shown),
        ],
    }
    client.set_experiment_tag(
        found.experiment_id, f"mlflow.sharedViewState.{VIEW}", json.dumps(state)
    )


def log_trial_model(
    trial: Record,
    weights: str | Path,
    data: Any,
    *,
    tracking_uri: str,
    study_name: str,
    metric: str,
    trusted: Sequence[str] = (),
    register: bool = False,
    package: str | Path | None = None,
    batch_size: int = 64,
) -> str:
    """Log `trial`'s model (trained `weights`) to its MLflow run; return the model's URI.

    Args:
        trial: a finished trial with an MLflow run (`mlflow_run_id`).
        data: the data module it was trained on (its preprocessing; real validation inputs
            for the input example).
        package: an export package of the trial already written (None: one is made here).
        register: also register it as a version of the model named `study_name`.
        batch_size: the latency batch: the tensorized layers' paths are those for it.
    """
    from tnsearch.results.export import write_package

    with tempfile.TemporaryDirectory(prefix="tnsearch-model-") as tmp:
        if package is None:
            package = write_package(
                trial,
                weights,
                Path(tmp) / "package",
                study_name=study_name,
                trusted=trusted,
                metric=metric,
                data=data,
                batch_size=batch_size,
                timed=False,  # the export times it; each logged model need not
            )
        return log_package_model(
            package,
            tracking_uri=tracking_uri,
            run_id=trial.mlflow_run_id,
            name=f"trial-{trial.number}",
            examples=example_inputs(data),
            study_name=study_name,
            tags=objective_tags(trial, metric),
            register=register,
            trusted=trusted,
            batch_size=batch_size,
        )


def log_package_model(
    package: str | Path,
    *,
    tracking_uri: str,
    run_id: str,
    name: str,
    examples: Any,
    study_name: str,
    tags: Mapping[str, str] = (),
    register: bool = False,
    trusted: Sequence[str] = (),
    batch_size: int = 64,
    description: str | None = None,
) -> str:
    """Log the model of an export package to the MLflow run `run_id`; return its URI.

    An image package logs a PT2 program of its model behind its normalization (raw pixels in;
    an int8 one a pyfunc of its int8 ONNX graph, the model that was timed), a text package a
    pyfunc of its ONNX file behind its tokenizer (strings in); see the module docstring. The
    package's files go with it.

    Args:
        name: the model's artifact name (distinct per run: ``trial-7``, ``compress-params-0.3``).
        examples: real inputs, raw (`example_inputs(data)`): the input example and the signature.
        tags: the model's tags (its objectives: `objective_tags`), also on its registered
            version.
        register: also register it as a version of the model named `study_name`.
        description: the registered version's description (None: the package README's title
            and table).

    A command calls it after logging its run, e.g. `python -m tnsearch.compress`::

        run_id = tracker.log_run(...)
        log_package_model(out, tracking_uri=cfg.tracking.uri, run_id=run_id,
                          name=f"compress-{out.name}", examples=example_inputs(ready.datamodule),
                          study_name=cfg.name, tags=objective_tags(trial, metric),
                          register=cfg.tracking.register)
    """
    import logging
    import os

    import mlflow

    from tnsearch.results.package import read_preprocessing

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    package = Path(package)
    found = read_preprocessing(package)
    mlflow.set_tracking_uri(tracking_uri)
    tags = dict(tags)
    with mlflow.start_run(run_id=run_id):
        if found.get("kind") == "text":
            info = _log_text(package, name, examples, tags)
        elif json.loads((package / "plan.json").read_text()).get("precision"):
            info = _log_onnx(package, name, examples, tags)  # int8: the ONNX graph that was timed
        else:
            info = _log_tensor(package, name, examples, tags, trusted, batch_size)
        mlflow.set_tag(MODEL_TAG, info.model_uri)
    if register:
        with contextlib.redirect_stderr(io.StringIO()):  # "Successfully registered model ..."
            version = mlflow.register_model(info.model_uri, study_name, tags=tags)
        client = mlflow.MlflowClient(tracking_uri)
        client.update_model_version(study_name, version.version, description or _summary(package))
    return info.model_uri


def _summary(package: Path) -> str:
    """The package README up to its files: the title, the objectives, the tensorized layers."""
    readme = (package / "README.md").read_text() if (package / "README.md").is_file() else ""
    return readme.split("\n## ", 1)[0].strip()[:5000]


def _package_files(package: Path) -> list[str]:
    return [str(p) for p in sorted(package.iterdir()) if p.is_file()]


def _log_text(package: Path, name: str, examples: Any, tags: Mapping[str, str]):
    """A text package as a pyfunc of `tnsearch.results.mlflow_pyfunc`: strings in."""
    import tokenizers

    from tnsearch.results.mlflow_pyfunc import TextModel

    sentences = [str(s) for s in examples][:EXAMPLE_ROWS]
    requirements = [f"tokenizers=={tokenizers.__version__}"]
    return _log_pyfunc(package, name, TextModel, sentences, requirements, tags)


def _log_pyfunc(
    package: Path,
    name: str,
    model: type,
    example: Any,
    requirements: Sequence[str],
    tags: Mapping[str, str],
):
    """A package's ONNX graph as a pyfunc of `tnsearch.results.mlflow_pyfunc` (`model`: its
    class there), its signature from `example`; onnxruntime and numpy beside `requirements`."""
    import mlflow
    import onnxruntime
    from mlflow.models import infer_signature

    if not (package / "model.onnx").is_file():
        raise ValueError(f"{package}: no model.onnx (its export failed: see its README)")
    signature = infer_signature(example, model(package).predict(example))
    return mlflow.pyfunc.log_model(
        name=name,
        loader_module="tnsearch.results.mlflow_pyfunc",
        data_path=str(package),
        signature=signature,
        input_example=example,
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}", *requirements, "numpy"],
        tags=dict(tags),
    )


def _log_onnx(package: Path, name: str, examples: Any, tags: Mapping[str, str]):
    """An int8 image (one-tensor) package as a pyfunc of its int8 ONNX graph: raw inputs in."""
    import numpy as np

    from tnsearch.results.mlflow_pyfunc import TensorModel

    x = np.asarray(examples[:EXAMPLE_ROWS], dtype=np.float32)
    return _log_pyfunc(package, name, TensorModel, x, (), tags)


def _log_tensor(
    package: Path,
    name: str,
    examples: Any,
    tags: Mapping[str, str],
    trusted: Sequence[str],
    batch_size: int,
):
    """An image (one-tensor) package as a PT2 program of its model behind its normalization."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from tnsearch.measure import onnx
    from tnsearch.results import package_onnx
    from tnsearch.results.package import read_preprocessing
    from tnsearch.results.package_load import load

    if isinstance(examples, dict):
        raise TypeError("only models of one tensor input or of text are logged as MLflow models")
    found = read_preprocessing(package)
    model = load(package, trusted=trusted, raw=True)
    x = torch.as_tensor(np.asarray(examples, dtype=np.float32)[:EXAMPLE_ROWS])
    if x.shape[0] < 2:
        x = x.repeat(2, *[1] * (x.dim() - 1))
    plan = json.loads((package / "plan.json").read_text())
    batch = package_onnx.example(plan, found, batch_size) if found.get("kind") == "image" else None
    onnx.pin_paths(model, batch if batch is not None else x)  # the latency batch's paths
    with torch.no_grad():
        y = model(x)
    return mlflow.pytorch.log_model(
        model,
        name=name,
        serialization_format="pt2",
        signature=infer_signature(x.numpy(), y.numpy()),
        input_example=x.numpy(),
        extra_files=_package_files(package),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        tags=dict(tags),
    )


def objective_tags(trial: Record, metric: str) -> dict[str, str]:
    """A model's objectives as tags, rounded as people read them (`trial` the trial, or a
    `Record` a command made for its model)."""
    return _objective_tags(trial, metric)


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
    for name, value in trial.extras.items():  # the other objectives (size, measured ones)
        tags[name] = str(rounded(name, value))
    return tags
