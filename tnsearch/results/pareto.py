"""The Pareto front of a study: the table (pareto.csv), the console view, the plot, and the
hypervolume. Read-only on the study."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch import objectives
from tnsearch import plan as plans
from tnsearch.files import atomic_path
from tnsearch.study import optuna_internals, record
from tnsearch.study.record import Record, front
from tnsearch.ui import Console
from tnsearch.ui.names import headers, shown, test_name

__all__ = [
    "COLUMNS",
    "REFERENCE",
    "reference_text",
    "finish",
    "front",
    "hypervolume",
    "hypervolume_history",
    "normalized",
    "plot",
    "row",
    "table",
    "write_csv",
]


def columns(metric: str = "accuracy") -> tuple[str, ...]:
    """The columns of pareto.csv; the quality under the task's name (accuracy, fidelity...)."""
    return tuple(shown(field, metric) for field in _FIELDS)


#: The latency columns of pareto.csv: the objective (a ratio to the dense model timed beside the
#: trial) and its spread, the milliseconds of both, the device and whether it was noisy.
LATENCY_COLUMNS = (
    "latency_ratio",
    "latency_ratio_p10",
    "latency_ratio_p90",
    "latency_ms",
    "dense_latency_ms",
    "latency_noisy",
    "latency_device",
)


#: The record fields pareto.csv holds, a column each (named as `ui.names.shown` names them).
_FIELDS = ("number", "quality", "test_quality", "params", "compression", *LATENCY_COLUMNS, "plan")


#: The columns of a classification study.
COLUMNS = columns()


def row(trial: Record, metric: str = "accuracy") -> dict[str, Any]:
    """One line of pareto.csv for a finished trial: the columns, the other objectives'
    figures (`Record.extras`: size, measured ones, by metric name) before the plan."""
    return {
        **{shown(field, metric): getattr(trial, field) for field in _FIELDS[:-1]},
        **trial.extras,
        "plan": plans.summary(trial.plan) if trial.plan else "",
    }


def extra_columns(rows: Sequence[dict[str, Any]], metric: str = "accuracy") -> list[str]:
    """The other objectives' columns of `rows` (see `row`), in the order they come."""
    known = set(columns(metric))
    return list(dict.fromkeys(k for r in rows for k in r if k not in known))


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, metric: str = "accuracy") -> Path:
    """Write `rows` (see `row`) to `path` atomically."""
    names = [*columns(metric)[:-1], *extra_columns(rows, metric), "plan"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k)) for k in names})
    return Path(path)


def finish(
    study: optuna.Study, study_dir: Path, objectives: Sequence[str], tracker, console: Console
) -> list[dict[str, Any]]:
    """Write pareto.csv and the plot, show the front, and attach both to the parent run."""
    metric = record.quality_metric(study)
    rows = [row(r, metric) for r in front(study)]
    csv_path = write_csv(rows, study_dir / "pareto.csv", metric)
    files = [csv_path]
    if rows:
        files.append(plot(study, study_dir / "pareto.png"))
    console.say("\nPareto front (" + ", ".join(objectives) + "):")
    console.say(table(rows, metric))
    if rows:
        console.say(
            f"hypervolume {hypervolume(study):.4f} (reference point: "
            f"{reference_text(metric, objectives)})"
        )
    tracker.log_parent(files=files)
    return rows


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def table(rows: Sequence[dict[str, Any]], metric: str = "accuracy") -> str:
    """The front as an aligned text table for the console."""
    val, test = headers(metric)
    width = max(7, len(val)), max(8, len(test))
    extra = extra_columns(rows, metric)
    header = (
        f"{'trial':>5}  {val:>{width[0]}}  {test:>{width[1]}}  {'param_count':>11}  {'x':>6}  "
        f"{'latency':>12}  {'ms':>8}  " + "".join(f"{name:>8}  " for name in extra) + "plan"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['number']:>5}  {_num(r[metric], '.4f'):>{width[0]}}"
            f"  {_num(r[test_name(metric)], '.4f'):>{width[1]}}"
            f"  {_num(r['param_count'], ',d'):>11}  {_num(r['compression'], '.1f'):>6}"
            f"  {_ratio(r):>12}  {_num(r['latency_ms'], '.3f'):>8}  "
            + "".join(f"{objectives.text(n, r.get(n)):>{max(8, len(n))}}  " for n in extra)
            + r["plan"]
        )
    return "\n".join(lines)


def _ratio(r: dict[str, Any]) -> str:
    """The latency objective as the console shows it: `0.62x dense`, `*` when noisy."""
    if r.get("latency_ratio") is None:
        return "-"
    return f"{r['latency_ratio']:.2f}x dense" + ("*" if r.get("latency_noisy") else " ")


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plot(study: optuna.Study, path: str | Path) -> Path:
    """Scatter the quality against parameters, against latency and against each of the study's
    other objectives; the front and dense marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    done = [r for r in record.records(study, (TrialState.COMPLETE,)) if r.candidate]
    best = {t.number for t in front(study)}
    metric = record.quality_metric(study)
    others = [n for n in record.metric_names(study) if _kind(n, metric) is not None]
    keys = list(dict.fromkeys(["params", "latency", *(objectives.key_of(n) or n for n in others)]))
    fig, axes = plt.subplots(
        1, len(keys), figsize=(5.5 * len(keys), 4.2), constrained_layout=True, squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=True):
        found = objectives.get(key)  # None: measured under a name no module registers here
        label = _LATENCY_AXIS if key == "latency" else found.name if found else key
        for group, style in (
            ([t for t in done if t.number not in best], {"c": "0.7", "label": "trial"}),
            ([t for t in done if t.number in best], {"c": "tab:blue", "label": "Pareto-optimal"}),
        ):
            if group:
                ax.scatter(
                    [t.value(key) for t in group],
                    [t.quality for t in group],
                    s=28,
                    **style,
                )
        # The 2-D front of this projection: the best accuracy reached at each size or latency.
        front_trials = sorted(done, key=lambda t: t.value(key))
        if front_trials:
            ax.step(
                [t.value(key) for t in front_trials],
                _running_max([t.quality for t in front_trials]),
                where="post",
                c="tab:blue",
                lw=1,
                alpha=0.6,
            )
        dense = record.dense(done)
        if dense is not None:
            ax.scatter(
                [dense.value(key)],
                [dense.quality],
                marker="*",
                s=220,
                c="tab:red",
                label="dense reference",
                zorder=3,
            )
        if _kind(key, metric).log:  # sizes span decades; latencies rarely do
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_short))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation {record.quality_metric(study)}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right")
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    fig.suptitle(
        f"{study.study_name}: {len(done)} trained trials"
        + (f" (+{pruned} pruned)" if pruned else "")
        + f", {len(best)} on the front"
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


_LATENCY_AXIS = "latency (x the dense model, timed beside each trial)"


def _short(value: float, _position: object = None) -> str:
    """Axis labels such as 20k, 1.5M or 0.5."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _running_max(values: Sequence[float]) -> list[float]:
    out, best = [], float("-inf")
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


#: Reference point of the hypervolume, per objective, in normalized space: quality 0, 10% more
#: parameters than the dense model, and 3x its latency (each objective's own: `Objective.reference`
#: in `tnsearch.objectives`). Normalized space: 1 - quality (a quality such as accuracy or
#: fidelity, in [0, 1]), params / dense params, and the latency ratio to the dense model timed
#: beside each trial, so fronts of different runs and machines compare. The latency's 3x lets a
#: front of tensorized trials slower than dense count (on a CPU most are: LeNet-300-100's MPO
#: layers time 1.7-2.3x dense); at 1.1x only the dense trial's box did. The console, MLflow's
#: parent run, the report and bench/search.py all use this point.
REFERENCE = {
    objectives.QUALITY: objectives.QUALITY_REFERENCE,
    **{key: found.reference for key, found in objectives.registered().items()},
}
#: A measured objective no module registers here (a study made with a user's `imports`): as a
#: registered one is by default, a ratio to the dense model with its reference at 1.1x.
_UNKNOWN = objectives.Objective(key="?", metric="?", field="?")


def reference_text(metric: str, names: Sequence[str] | None = None) -> str:
    """The reference point as people read it: `accuracy 0 (1 - accuracy = 1), parameters 1.1x
    dense, latency 3x dense`, for the study's objectives (by metric name; None: the quality and
    every registered objective)."""
    quality = f"{metric} 0 (1 - {metric} = {objectives.QUALITY_REFERENCE:g})"
    if names is None:
        names = [metric, *objectives.registered()]
    parts = []
    for name in names:
        found = objectives.get(name)
        if found is not None:
            parts.append(found.reference_text())
        elif name == metric or name == objectives.QUALITY:
            parts.append(quality)
        else:
            parts.append(f"{name} {_UNKNOWN.reference:g}x dense")
    return ", ".join(parts)


def _kind(name: str, metric: str) -> objectives.Objective | None:
    """The objective `name` names; None for the quality (`metric`, the task's name of it)."""
    found = objectives.get(name)
    if found is None and name not in (metric, objectives.QUALITY):
        return _UNKNOWN
    return found


def _reference(name: str, metric: str) -> float:
    found = _kind(name, metric)
    return objectives.QUALITY_REFERENCE if found is None else found.reference


def normalized(trial: Record, dense: Record, names: Sequence[str], metric: str = "") -> list[float]:
    """A trial's objectives as losses in normalized space (see REFERENCE); `metric`: the
    quality's name (default: the first of `names` the registry does not know)."""
    metric = metric or next((n for n in names if objectives.get(n) is None), "")
    out = []
    for name in names:
        found = _kind(name, metric)
        if found is None:  # the quality
            out.append(1.0 - trial.value(name))
        else:  # a ratio to the dense model, measured beside it or divided by its value here
            out.append(found.normalized(trial.value(name), dense.value(name)))
    return out


def hypervolume_history(study: optuna.Study) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the front of all trials up to it), for finished trials.

    Normalized objective space; the reference point is REFERENCE (quality 0, 1.1x the dense
    model's parameters, 3x its latency), and the hypervolume is the fraction of the box between
    the ideal point and it that the front dominates, in [0, 1]. Infeasible trials count for
    nothing.
    """
    import numpy as np

    metric = record.quality_metric(study)
    names = record.metric_names(study)
    done = [r for r in record.records(study, (TrialState.COMPLETE,)) if r.candidate]
    dense = record.dense(done)
    if dense is None:
        return []
    reference = np.array([_reference(name, metric) for name in names])
    history, points = [], []
    for trial in done:
        point = normalized(trial, dense, names, metric)
        if all(p < r for p, r in zip(point, reference, strict=True)):
            points.append(point)
        volume = (
            optuna_internals.compute_hypervolume(np.array(points), reference) / reference.prod()
            if points
            else 0.0
        )  # the fraction of the box between the ideal point (0, 0, 0) and the reference
        history.append((trial.number, volume))
    return history


def hypervolume(study: optuna.Study) -> float:
    """Hypervolume of the study's front in normalized objective space (see REFERENCE)."""
    history = hypervolume_history(study)
    return history[-1][1] if history else 0.0
