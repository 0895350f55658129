"""The report's section "Bonds over training": how the bonds of the front's trials changed while
they trained or healed.

Each trained trial's MLflow run holds, per epoch, the entropy and effective rank of every bond of
its tensorized layers (``bonds/<layer>/entropy_<k>``, step = epochs trained, 0: before training;
``tracking.bonds``). This section reads them back from the study's MLflow store (``tracking.uri``)
and draws each layer's mean bond entropy against the epoch, one panel per Pareto-optimal trial
(``report.bonds.max_trials``, the smallest first).
"""

from __future__ import annotations

import math
from pathlib import Path

from tnsearch.bonds import METRIC_PREFIX
from tnsearch.config import TrackingConfig
from tnsearch.report import _figures
from tnsearch.report._data import ReportData
from tnsearch.report._html import esc, note, png
from tnsearch.study.record import Record

#: layer -> [(step, mean entropy over its bonds)]
Curves = dict[str, list[tuple[int, float]]]


def _client(tracking: TrackingConfig):
    """An MLflow client on the study's store, or why there is none."""
    uri = str(tracking.uri or "")
    if not tracking.enabled:
        return "tracking is off (tracking.enabled=false)"
    if not uri:
        return "the configuration names no MLflow store (tracking.uri)"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"the MLflow store {uri} does not exist"
    from mlflow import MlflowClient

    return MlflowClient(uri)


def entropy_curves(client, run_id: str) -> Curves:
    """Each layer's mean bond entropy by step, from the run's ``bonds/<layer>/entropy_<k>``."""
    metrics = client.get_run(run_id).data.metrics
    per_step: dict[str, dict[int, list[float]]] = {}
    for key in metrics:
        head, _, rest = key.partition("/")
        layer, _, name = rest.rpartition("/")
        if head != METRIC_PREFIX or not name.startswith("entropy_"):
            continue
        for point in client.get_metric_history(run_id, key):
            per_step.setdefault(layer, {}).setdefault(int(point.step), []).append(point.value)
    return {
        layer: [(step, sum(v) / len(v)) for step, v in sorted(steps.items())]
        for layer, steps in per_step.items()
    }


def curves_png(found: list[tuple[Record, Curves]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cols = min(3, len(found))
    rows = math.ceil(len(found) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.0 * rows), constrained_layout=True, squeeze=False
    )
    for ax in axes.flat[len(found) :]:
        ax.axis("off")
    for ax, (trial, curves) in zip(axes.flat, found, strict=False):
        for layer, points in curves.items():
            ax.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.2, label=layer)
        ax.set_title(_figures.fit_title(f"trial {trial.number}", 4.2, 9), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epochs trained (0: before training)", fontsize=7)
        ax.set_ylabel("mean bond entropy (nats)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(curves) <= 10:
            ax.legend(fontsize=6)
    return _figures._png(fig)


def render(data: ReportData) -> str:
    options = data.options.bonds
    limit = int(options.get("max_trials", 5))
    trials = [t for t in data.tensorized_front if t.mlflow_run_id][:limit]
    if not data.tensorized_front:
        return note("No Pareto-optimal trial tensorizes a layer yet.")
    client = _client(data.cfg.tracking)
    if isinstance(client, str):
        return note(f"Not available: {esc(client)}.")
    found = []
    for trial in trials:
        curves = entropy_curves(client, trial.mlflow_run_id)
        if curves:
            found.append((trial, curves))
    if not found:
        return note(
            "The front's MLflow runs hold no bond metrics (trained before they were logged, or "
            "with <code>tracking.bonds=false</code>)."
        )
    return png(curves_png(found), "bond entropy against epoch") + note(
        "Each tensorized layer's bond entropy (the mean over its bonds, nats) as its trial "
        "trained or healed, read from the trial's MLflow run "
        f"(<code>{METRIC_PREFIX}/&lt;layer&gt;/entropy_&lt;k&gt;</code>, and "
        "<code>effective_rank_&lt;k&gt;</code> beside it; MLflow's charts show each bond). "
        f"Trials {esc(', '.join(str(t.number) for t, _ in found))}, the smallest Pareto-optimal "
        "ones first."
    )
