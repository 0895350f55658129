"""What every report section reads: one snapshot of the study, taken once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch.config import ReportConfig, ReportOptions
from tnsearch.space import parse_param
from tnsearch.study import record
from tnsearch.study.record import Outcome, Record


@dataclass(frozen=True)
class ReportData:
    """A study as the report sees it (a snapshot: the study may go on meanwhile).

    Attributes:
        study: the study (read only).
        cfg: the report's configuration; ``cfg.report`` holds its options.
        trials: every trial, by number.
        done: finished, trained, feasible trials, by number.
        front: the Pareto-optimal trials, fewest parameters first.
        dense: the dense reference trial, or None before it finished.
    """

    study: optuna.Study
    cfg: ReportConfig
    trials: list[Record]
    done: list[Record]
    front: list[Record]
    dense: Record | None

    @classmethod
    def collect(cls, study: optuna.Study, cfg: ReportConfig | Mapping[str, Any]) -> ReportData:
        """Read the study once (`cfg` as plain data: `ReportConfig.of`)."""
        cfg = ReportConfig.of(cfg)
        trials = record.records(study)
        done = [r for r in trials if r.candidate]
        numbers = {t.number for t in done}
        front = [t for t in record.front(study) if t.number in numbers]
        return cls(study, cfg, trials, done, front, record.dense(done))

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def objectives(self) -> list[str]:
        return record.metric_names(self.study)

    @property
    def metric(self) -> str:
        """The task's name of the study's quality (accuracy, fidelity, ...)."""
        return record.quality_metric(self.study)

    @property
    def options(self) -> ReportOptions:
        """The ``report`` options."""
        return self.cfg.report

    @property
    def tensorized_front(self) -> list[Record]:
        """The Pareto-optimal trials that tensorize at least one layer."""
        return [t for t in self.front if t.layers]

    def states(self) -> Counter:
        """Trials per state; finished but untrained trials count as "DUPLICATE" (a repeated plan)
        or "INFEASIBLE" (over a constraint), and a surplus trial as "SURPLUS"."""
        counts: Counter = Counter()
        for t in self.trials:
            state = t.state.name
            if t.state == TrialState.COMPLETE and not t.is_trained:
                state = "DUPLICATE" if t.outcome == Outcome.DUPLICATE else "INFEASIBLE"
            elif t.state == TrialState.FAIL and t.surplus:
                state = "SURPLUS"  # asked after the target was reached: nothing failed
            counts[state] += 1
        return counts

    def groups(self) -> list[str]:
        """The decision units of the search space (a layer, or a group of layers), in order.

        They are the groups of the Optuna parameters ``<group>.tensorize`` the trials asked for.
        """
        seen: dict[str, None] = {}
        for t in self.trials:
            for key in t.choices:
                group, choice = parse_param(key)
                if choice == "tensorize":
                    seen.setdefault(group, None)
        return list(seen)

    def group_layers(self) -> dict[str, list[str]]:
        """Each group -> the layers (module names) of it that some trial tensorized."""
        groups = self.groups()
        out: dict[str, list[str]] = {g: [] for g in groups}
        for t in self.trials:
            for layer in t.layers:
                owners = [g for g in groups if layer == g or layer.startswith(g + ".")]
                if owners:
                    members = out[max(owners, key=len)]
                    if layer not in members:
                        members.append(layer)
        return out
