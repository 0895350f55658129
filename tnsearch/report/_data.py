"""What every report section reads: one snapshot of the study, taken once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tnsearch import pareto
from tnsearch.select import candidates, dense_trial

#: Trial attribute of each objective.
ATTRS = {"accuracy": "accuracy", "params": "params", "latency": "latency_ms"}


@dataclass(frozen=True)
class ReportData:
    """A study as the report sees it (a snapshot: the study may go on meanwhile).

    Attributes:
        study: the study (read only).
        cfg: the resolved configuration; ``cfg["report"]`` holds the report's options.
        trials: every trial, by number.
        done: finished, trained, feasible trials, by number.
        front: the Pareto-optimal trials, fewest parameters first.
        dense: the dense reference trial, or None before it finished.
    """

    study: optuna.Study
    cfg: Mapping[str, Any]
    trials: list[FrozenTrial]
    done: list[FrozenTrial]
    front: list[FrozenTrial]
    dense: FrozenTrial | None

    @classmethod
    def collect(cls, study: optuna.Study, cfg: Mapping[str, Any]) -> ReportData:
        """Read the study once."""
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        done = candidates(study)
        numbers = {t.number for t in done}
        front = [t for t in pareto.front(study) if t.number in numbers]
        return cls(study, cfg, trials, done, front, dense_trial(done))

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def objectives(self) -> list[str]:
        return list(self.study.metric_names or ATTRS)

    @property
    def options(self) -> Mapping[str, Any]:
        """The ``report`` config node."""
        return self.cfg.get("report", {})

    @property
    def tensorized_front(self) -> list[FrozenTrial]:
        """The Pareto-optimal trials that tensorize at least one layer."""
        return [t for t in self.front if t.user_attrs.get("plan", {}).get("layers")]

    def states(self) -> Counter:
        """Trials per state; finished but untrained trials count as "DUPLICATE" (a repeated plan)
        or "INFEASIBLE" (over a constraint)."""
        counts: Counter = Counter()
        for t in self.trials:
            state = t.state.name
            if t.state == TrialState.COMPLETE and not t.user_attrs.get("trained", True):
                state = "DUPLICATE" if "duplicate_of" in t.user_attrs else "INFEASIBLE"
            counts[state] += 1
        return counts

    def groups(self) -> list[str]:
        """The decision units of the search space (a layer, or a group of layers), in order.

        They are the Optuna parameters ``<group>.tensorize`` that the trials asked for.
        """
        seen: dict[str, None] = {}
        for t in self.trials:
            for key in t.params:
                if key.endswith(".tensorize"):
                    seen.setdefault(key.removesuffix(".tensorize"), None)
        return list(seen)

    def group_layers(self) -> dict[str, list[str]]:
        """Each group -> the layers (module names) of it that some trial tensorized."""
        groups = self.groups()
        out: dict[str, list[str]] = {g: [] for g in groups}
        for t in self.trials:
            for layer in t.user_attrs.get("plan", {}).get("layers", {}):
                owners = [g for g in groups if layer == g or layer.startswith(g + ".")]
                if owners:
                    members = out[max(owners, key=len)]
                    if layer not in members:
                        members.append(layer)
        return out
