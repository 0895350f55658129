"""What a trial's MLflow run holds besides its per-epoch metrics: its params (the flattened plan
and the training settings), and at its end its figures (named and rounded as `ui.names` says)
and its latency measurement's tags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna

from tnsearch import plan as plans
from tnsearch.config import Config
from tnsearch.measure import latency
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.study.tracker import Tracker
from tnsearch.ui.names import rounded, shown

__all__ = ["FIGURES", "end_run", "final_metrics", "latency_tags", "run_params", "start_run"]

#: The record fields a trial's run ends with as metrics.
FIGURES = (
    "quality",
    "test_quality",
    "zero_shot_quality",
    "params",
    "compression",
    *(name for name in latency.FIELDS if name not in latency.TAG_FIELDS),
)


def run_params(
    cfg: Config,
    plan: Mapping[str, Any],
    seed: int,
    optimizer: Mapping[str, Any],
    searched: Sequence[str] = (),
) -> dict[str, Any]:
    """MLflow params of a trial: the flattened plan (the `searched` layers it keeps dense as
    `topology=dense`) and the training hyperparameters."""
    params = plans.flatten(plan, dense=searched)
    params.update(
        epochs=cfg.epochs,
        seed=seed,
        batch_size=cfg.data.get("batch_size"),
        data=cfg.data["_target_"].rsplit(".", 1)[-1],
        compile=cfg.trainer.compile,
        latency_compile=cfg.latency.compile,
        latency_dtype=cfg.latency.dtype,
        warm_start=cfg.model.get("checkpoint")
        or (f"pretrain {cfg.pretrain.epochs} epochs" if cfg.pretrain.epochs else "none"),
    )
    for key, value in optimizer.items():
        if not key.startswith("_"):
            params[f"optimizer.{key}"] = value
    params["optimizer"] = optimizer["_target_"].rsplit(".", 1)[-1]
    return params


def start_run(
    tracker: Tracker, trial: optuna.Trial, plan: plans.Plan, params: Mapping[str, Any]
) -> Any:
    """Make `trial`'s run (its plan.json: the plan's JSON object); its handle. The run is made
    on the tracker's thread, which stores its id with the trial (liveness closes a dead worker's
    run by it); the trial's record never holds it, so the record written at the end leaves it
    be."""
    return tracker.start_trial(
        trial.number,
        plan.to_json(),
        params,
        on_run_id=lambda run_id: record.write_fields(trial, mlflow_run_id=run_id),
    )


def end_run(
    tracker: Tracker, run_id: Any, state: str, rec: Record, metric: str, tags: Mapping[str, str]
) -> None:
    """End the run `run_id` (None: the trial has none) as `state` (COMPLETE, PRUNED, FAIL,
    KILLED) with the trial's figures (a failed one's: none) and tags: its latency's, `tags`."""
    if run_id is None:
        return
    metrics = {} if state in ("FAIL", "KILLED") else final_metrics(rec, metric)
    tracker.end_trial(run_id, state=state, metrics=metrics, tags={**latency_tags(rec), **tags})


def final_metrics(rec: Record, metric: str) -> dict[str, float]:
    """A trial's final MLflow metrics, the quality under the task's name `metric` (e.g.
    `accuracy`, `test_accuracy`, `zero_shot_accuracy`), then the other objectives'
    (`Record.extras`)."""
    found = {shown(field, metric): getattr(rec, field) for field in FIGURES}
    found.update(rec.extras)  # the other objectives (size, measured ones), by metric name
    return {name: rounded(name, value) for name, value in found.items() if value is not None}


def latency_tags(rec: Record) -> dict[str, str]:
    """MLflow tags of a trial's latency measurement: the device's name, and whether it was
    noisy (ratios are compared within one device only)."""
    values = {name: getattr(rec, name) for name in latency.TAG_FIELDS}
    return {
        name: str(bool(value)).lower() if name == "latency_noisy" else str(value)
        for name, value in values.items()
        if value is not None
    }
