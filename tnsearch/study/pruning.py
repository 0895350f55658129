"""Pareto-aware early stopping for multi-objective studies.

Optuna cannot prune multi-objective studies (Trial.report and should_prune raise there). But
two of tnsearch's three objectives, parameters and latency, are known before training starts.
So after each epoch a trial is stopped when an already finished trial dominates it: no more
parameters, no more latency, and a validation accuracy at the same epoch higher by more than
`margin`. Such a trial cannot reach the front unless it learns much faster later than a model
that is already at least as small and fast, which the margin allows for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import TrialState

from tnsearch.study.record import Record


@dataclass(frozen=True)
class ParetoPruner:
    """Decides, after each epoch, whether a finished trial dominates a running one.

    Args:
        objectives: the study's objectives (params / latency only count when present).
        margin: how much higher (absolute) the finished trial's accuracy must be.
        min_epochs: never prune before this many epochs (warm-up).
    """

    objectives: Sequence[str]
    margin: float = 0.01
    min_epochs: int = 1

    def dominator(
        self,
        finished: Sequence[Record],
        mine: Record,
        epoch: int,
        val_acc: float,
    ) -> str | None:
        """The reason to prune, or None. `epoch` counts from 0; `mine` holds params/latency."""
        if epoch + 1 < self.min_epochs:
            return None
        for other in finished:
            if other.state != TrialState.COMPLETE or not other.is_trained:
                continue
            if "params" in self.objectives and other.params > mine.params:
                continue
            if "latency" in self.objectives and other.latency_ms > mine.latency_ms:
                continue
            theirs = accuracy_at(other, epoch)
            if theirs is not None and theirs > val_acc + self.margin:
                return (
                    f"dominated by trial {other.number} after epoch {epoch + 1}: "
                    f"quality {val_acc:.4f} < {theirs:.4f} - {self.margin} with no fewer params "
                    f"({mine.params:,} >= {other.params:,}) and no lower latency "
                    f"({mine.latency_ms:.3f} >= {other.latency_ms:.3f} ms)"
                )
        return None


def accuracy_at(trial: Record, epoch: int) -> float | None:
    """A finished trial's validation accuracy after `epoch` (its final one if it ran fewer)."""
    for point in trial.history or ():
        if int(point["epoch"]) == epoch:
            return float(point["val_acc"])
    return trial.quality


def from_config(cfg: Mapping[str, Any], *, maximize: bool = True) -> ParetoPruner | None:
    """The pruner `pruning.*` asks for (enabled: null means on when epochs >= 3, and the
    quality is maximized: the pruner compares qualities as higher-is-better)."""
    node = cfg["pruning"]
    enabled = node["enabled"] if node["enabled"] is not None else cfg["epochs"] >= 3 and maximize
    if enabled and not maximize:
        from tnsearch.config import ConfigError

        raise ConfigError("pruning.enabled", "the pruner needs a quality to maximize")
    if not enabled:
        return None
    return ParetoPruner(
        objectives=tuple(cfg["objectives"]),
        margin=float(node["margin"]),
        min_epochs=int(node["min_epochs"]),
    )
