"""Pareto-aware early stopping for multi-objective studies.

Optuna cannot prune multi-objective studies (Trial.report and should_prune raise there). But
every objective but the quality (parameters, latency, any measured one) is known before training
starts.
So a running trial is stopped when an already finished trial dominates it: no more parameters,
no more latency, and a quality at the same rung higher by more than `margin`. Such a trial cannot
reach the front unless it learns much faster later than a model that is already at least as
small and fast, which the margin allows for.

The rungs are the epochs (the validation quality after each) and, in a warm study, the zero-shot
rung before the first epoch: the quality right after the decomposition of the trained weights,
compared with the finished trials' own zero-shot qualities. A plan pruned there is never trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import TrialState

from tnsearch import objectives
from tnsearch.config import Config, ConfigError
from tnsearch.study.record import Record

#: The rung before the first epoch (epochs count from 0): the zero-shot quality of a warm trial.
ZERO_SHOT = -1


@dataclass(frozen=True)
class ParetoPruner:
    """Decides, at each rung it judges, whether a finished trial dominates a running one.

    Args:
        objectives: the study's objectives (params / latency only count when present).
        margin: how much higher (absolute) the finished trial's quality must be.
        min_epochs: never prune after an epoch before this many epochs (warm-up).
        each_epoch: judge after each epoch.
        zero_shot: judge at `ZERO_SHOT`, before the first epoch (warm studies).
    """

    objectives: Sequence[str]
    margin: float = 0.01
    min_epochs: int = 1
    each_epoch: bool = True
    zero_shot: bool = False

    def no_worse(self, other: Record, mine: Record) -> bool:
        """Whether `other` is no worse than `mine` on every objective but the quality (all
        known before training); a noisy latency may be wrong either way: it proves nothing."""
        for name in self.objectives:
            found = objectives.get(name)
            if found is None:  # the quality
                continue
            if found.key == "latency" and (mine.latency_noisy or other.latency_noisy):
                return False
            try:
                theirs, ours = other.value(name), mine.value(name)
            except ValueError:  # not measured (an older record): no proof
                return False
            if theirs > ours if found.direction == "minimize" else theirs < ours:
                return False
        return True

    def judges(self, epoch: int) -> bool:
        """Whether this pruner judges a trial at rung `epoch` (`ZERO_SHOT`, or from 0)."""
        if epoch == ZERO_SHOT:
            return self.zero_shot
        return self.each_epoch and epoch + 1 >= self.min_epochs

    def dominator(
        self,
        finished: Sequence[Record],
        mine: Record,
        epoch: int,
        quality: float,
    ) -> str | None:
        """The reason to prune, or None. `epoch` counts from 0 (`ZERO_SHOT`: before the first,
        `quality` is then the zero-shot one); `mine` holds params/latency."""
        if not self.judges(epoch):
            return None
        for other in finished:
            if other.state != TrialState.COMPLETE or not other.is_trained:
                continue
            if not self.no_worse(other, mine):
                continue
            theirs = accuracy_at(other, epoch)
            if theirs is not None and theirs > quality + self.margin:
                where = (
                    f"at zero-shot by trial {other.number}:"
                    if epoch == ZERO_SHOT
                    else f"by trial {other.number} after epoch {epoch + 1}:"
                )
                return (
                    f"dominated {where} "
                    f"quality {quality:.4f} < {theirs:.4f} - {self.margin} with no fewer params "
                    f"({mine.params:,} >= {other.params:,}) and no lower latency "
                    f"({mine.latency_ratio:.2f}x >= {other.latency_ratio:.2f}x dense)"
                )
        return None


def accuracy_at(trial: Record, epoch: int) -> float | None:
    """A finished trial's validation quality after `epoch` (its final one if it ran fewer); at
    `ZERO_SHOT` its zero-shot quality, or None when it has none (the dense trial, a cold trial,
    older records): such a trial never dominates there."""
    if epoch == ZERO_SHOT:
        return trial.zero_shot_quality
    for point in trial.history or ():
        if int(point["epoch"]) == epoch:
            return float(point["val_quality"])
    return trial.quality


def from_config(cfg: Config, *, maximize: bool = True, warm: bool = False) -> ParetoPruner | None:
    """The pruner `pruning.*` asks for, or None when it judges no rung.

    `pruning.enabled` (the epoch rungs) null means on when epochs >= 3; `pruning.zero_shot` null
    means on when the study is `warm` (it has trained dense weights), unless `pruning.enabled`
    is false. Both need the quality maximized: the pruner compares qualities as higher-is-better.
    """
    node = cfg.pruning
    enabled = node.enabled
    each_epoch = enabled if enabled is not None else cfg.epochs >= 3 and maximize
    if each_epoch and not maximize:
        raise ConfigError("pruning.enabled", "the pruner needs a quality to maximize")
    zero_shot = node.zero_shot
    if zero_shot is None:
        zero_shot = warm and maximize and enabled is not False
    elif zero_shot and not maximize:
        raise ConfigError("pruning.zero_shot", "the pruner needs a quality to maximize")
    elif zero_shot and not warm:
        raise ConfigError(
            "pruning.zero_shot",
            "needs trained weights (model.checkpoint, pretrain.epochs or a pretrained model): "
            "a trial from scratch has no zero-shot quality",
        )
    if not (each_epoch or zero_shot):
        return None
    return ParetoPruner(
        objectives=tuple(cfg.objectives),
        margin=float(node.margin),
        min_epochs=int(node.min_epochs),
        each_epoch=bool(each_epoch),
        zero_shot=bool(zero_shot),
    )
