"""The names people see for a trial's figures, and how each is rounded for them: one place for
MLflow's runs, pareto.csv, the report and the console.

A figure goes by its record field's name (`compression`, `latency_ratio`, `latency_ms`...) but
for the quality, which goes by the task's name of it (accuracy, fidelity, val_f1...), and the
parameter count (`param_count`: MLflow's runs table already has "Parameters", a run's settings).
"""

from __future__ import annotations

from tnsearch import objectives

__all__ = ["DECIMALS", "headers", "rounded", "short_name", "shown", "test_name", "val_name"]

#: Decimals a figure is shown (and logged) with, by its shown name.
DECIMALS = {
    "compression": 2,
    "latency_ratio": 3,
    "latency_ratio_p10": 3,
    "latency_ratio_p90": 3,
    "hypervolume": 4,
}


def shown(field: str, metric: str) -> str:
    """The name people see for a trial record's `field`, the quality under `metric` (the task's
    name of it): `accuracy`, `test_accuracy`, `zero_shot_accuracy`, `param_count`; any other
    field under its own name."""
    return {
        "quality": metric,
        "test_quality": test_name(metric),
        "zero_shot_quality": f"zero_shot_{metric}",
        "params": "param_count",
    }.get(field, field)


def rounded(name: str, value: float) -> float:
    """`value` as people read figure `name` (MLflow shows what it is given): as DECIMALS says,
    milliseconds to 4 significant digits, counts as they are, the study's best and dense quality
    to 4 significant digits (4 decimals below 1), and a trial's own quality as measured.

    >>> rounded("compression", 8.390294561), rounded("latency_ms", 0.0123456)
    (8.39, 0.01235)
    """
    value = float(value)
    if name in DECIMALS:
        return round(value, DECIMALS[name])
    objective = objectives.get(name)
    if objective is not None and objective.metric == name and not objective.own_columns:
        return objective.rounded(value)  # size, a measured objective: as it says
    if name.endswith("_ms"):
        return float(f"{value:.4g}")
    if name.startswith(("best_", "dense_")) and not value.is_integer():
        return float(f"{value:.4g}") if abs(value) >= 1 else round(value, 4)
    return value


def short_name(metric: str) -> str:
    """How the console abbreviates a quality's name ("acc" for accuracy)."""
    return {"accuracy": "acc"}.get(metric, metric)


def val_name(metric: str) -> str:
    """The validation figure's name: `val_f1` as it is, else `val_<metric>` (val_accuracy)."""
    return metric if metric.startswith("val_") else f"val_{metric}"


def test_name(metric: str) -> str:
    """The test figure's name: `val_f1` -> `test_f1`, else `test_<metric>` (test_accuracy)."""
    return "test_" + metric.removeprefix("val_")


def headers(metric: str) -> tuple[str, str]:
    """Short column headers of the validation and test quality ("val acc", "test f1")."""
    short = short_name(metric.removeprefix("val_"))
    return f"val {short}", f"test {short}"
