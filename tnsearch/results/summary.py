"""What the study's MLflow parent run says of it: its figures, its search space, its front.

MLflow's runs table shows a run's metrics and params, and its page the run's description
(the `mlflow.note.content` tag, markdown); the parent run of a study holds the study's own
figures there, so that the study reads in MLflow without opening its trials one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch import objectives
from tnsearch import plan as plans
from tnsearch.config import Config
from tnsearch.results import pareto
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.ui.names import rounded, shown

__all__ = ["description", "metrics", "params"]


def metrics(study: optuna.Study) -> dict[str, float]:
    """The study's figures: its best quality, hypervolume, trials by how they ended, the front's
    size, and the dense reference's quality, parameters and milliseconds."""
    metric = record.quality_metric(study)
    trials = record.records(study)
    done = [t for t in trials if t.candidate]
    out: dict[str, float] = {
        "trials_trained": sum(t.counts for t in trials),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "trials_failed": sum(t.state == TrialState.FAIL for t in trials),
        "pareto_trials": len(record.front(study)),
        "hypervolume": pareto.hypervolume(study),
    }
    if done:
        out[f"best_{metric}"] = max(t.quality for t in done)
    dense = record.dense(done)
    if dense is not None:
        for field in ("quality", "params", "latency_ms"):
            out[f"dense_{shown(field, metric)}"] = getattr(dense, field)
    return {k: rounded(k, v) for k, v in out.items() if v is not None}


def params(cfg: Config) -> dict[str, str]:
    """The resolved search space and budget, as MLflow params (not `trials` or `epochs`, which
    a continued study may change: MLflow keeps a param's first value)."""
    space = cfg.space.to_dict()
    out = {
        "objectives": cfg.objectives,
        "sampler": cfg.sampler["_target_"].rsplit(".", 1)[-1],
        "model": cfg.model.get("_target_", ""),
        "data": cfg.data["_target_"].rsplit(".", 1)[-1],
        "search.budgets": cfg.search.budgets,
        "latency.batch_size": cfg.latency.batch_size,
        "latency.threads": cfg.latency.threads,
        "pretrain.epochs": cfg.pretrain.epochs,
    }
    for key in ("layers", "exclude", "topologies", "orders", "ranks", "granularity"):
        out[f"space.{key}"] = space.get(key)
    for key, value in cfg.budget.to_dict().items():
        out[f"budget.{key}"] = value
    for key, value in cfg.constraints.to_dict().items():
        out[f"constraints.{key}"] = value
    return {k: str(v) for k, v in out.items()}


def description(study: optuna.Study, names: Sequence[str]) -> str:
    """The parent run's description: the study in a sentence and its front as a markdown
    table (MLflow renders it on the run's page)."""
    metric = record.quality_metric(study)
    front = record.front(study)
    extra = list(dict.fromkeys(k for t in front for k in t.extras))
    found = metrics(study)
    lines = [
        f"**tnsearch study `{study.study_name}`**: objectives {', '.join(names)}; "
        f"{int(found['trials_trained'])} trials trained, {int(found['trials_pruned'])} pruned, "
        f"{int(found['trials_failed'])} failed; hypervolume {found['hypervolume']:.4f} "
        f"(reference point: {pareto.reference_text(metric, names)}).",
        "",
        f"Pareto front ({len(front)} trials; latency as a ratio to the dense model timed beside "
        "each trial):",
        "",
        f"| trial | {metric} | param_count | compression | latency_ratio | ms | "
        + "".join(f"{name} | " for name in extra)
        + "plan |",
        "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---|",
    ]
    lines += [_row(t, extra) for t in front]
    return "\n".join(lines) + "\n"


def _row(t: Record, extra: Sequence[str]) -> str:
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    noisy = " (noisy)" if t.latency_noisy else ""
    return (
        f"| {t.number} | {num(t.quality, '.4f')} | {num(t.params, ',d')} | "
        f"{num(t.compression, '.2f')}x | {num(t.latency_ratio, '.3f')}x{noisy} | "
        f"{num(t.latency_ms, '.3f')} | "
        + "".join(f"{objectives.text(name, t.extras.get(name))} | " for name in extra)
        + f"{plans.summary(t.plan) if t.plan else ''} |"
    )
