"""Parameter importances per objective, with Optuna's importance evaluators.

The search space is define-by-run: a layer kept dense asks no topology, order or rank, so those
parameters are missing from most trials, and evaluators that work on the intersection search
space (fANOVA, mean decrease impurity) would see only the ``<layer>.tensorize`` switches. The
report therefore evaluates *features* that every trial has, derived from its parameters, in an
in-memory copy of the study:

- ``<layer>.topology``: the topology, or "dense" (this also carries the tensorize switch);
- ``<layer>.order`` and ``<layer>.rank``: as chosen, 0 when the layer stays dense;
- every other parameter that all trials have (e.g. ``lr``) as it is.

The factorization of each dimension (``<layer>.modesK.D``) is left out: it only exists for one
order. A feature with a single value in all trials cannot matter and is left out too.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.study import StudyDirection

from tnsearch.report._data import ReportData
from tnsearch.space import param_name, parse_param
from tnsearch.study.record import Record

DENSE = "dense"
_CHOICES = ("topology", "order", "rank")


def features(
    trials: list[Record],
    groups: list[str],
    distributions_of: Mapping[str, BaseDistribution] | None = None,
) -> tuple[dict[str, BaseDistribution], list[dict[str, Any]]]:
    """The derived features of `trials` (see the module docstring): distributions, values.

    `distributions_of` gives the Optuna distribution of the other parameters the trials share
    (those without one are left out).
    """
    distributions_of = distributions_of or {}
    rows: list[dict[str, Any]] = []
    for t in trials:
        row: dict[str, Any] = {}
        choices = t.choices
        for g in groups:
            on = bool(choices.get(param_name(g, "tensorize"), False))
            topology, order, rank = (param_name(g, k) for k in _CHOICES)
            row[topology] = choices[topology] if on else DENSE
            row[order] = int(choices[order]) if on else 0
            row[rank] = int(choices[rank]) if on else 0
        rows.append(row)
    shared = (
        [
            name
            for name in trials[0].choices
            if parse_param(name)[0] not in groups
            and name in distributions_of
            and all(name in t.choices for t in trials)
        ]
        if trials
        else []
    )
    for row, t in zip(rows, trials, strict=True):
        row.update({name: t.choices[name] for name in shared})
    distributions: dict[str, BaseDistribution] = {}
    for name in rows[0] if rows else ():
        values = {row[name] for row in rows}
        if len(values) < 2:
            continue
        if name in shared:
            distributions[name] = distributions_of[name]
        elif name.endswith(".topology"):
            distributions[name] = CategoricalDistribution(
                [DENSE, *sorted(v for v in values if v != DENSE)]
            )
        else:
            distributions[name] = IntDistribution(min(values), max(values))
    rows = [{k: v for k, v in row.items() if k in distributions} for row in rows]
    return distributions, rows


def derived_study(data: ReportData) -> optuna.Study:
    """An in-memory study with the derived features of the finished trials as its parameters."""
    first = {t.number: t for t in data.study.get_trials(deepcopy=False)}
    known = first[data.done[0].number].distributions if data.done else {}
    distributions, rows = features(data.done, data.groups(), known)
    study = optuna.create_study(directions=data.study.directions)
    study.add_trials(
        optuna.trial.create_trial(params=row, distributions=distributions, values=t.values)
        for row, t in zip(rows, data.done, strict=True)
    )
    return study


def evaluate(
    data: ReportData, evaluator: optuna.importance.BaseImportanceEvaluator, min_trials: int
) -> dict[str, dict[str, float]] | str:
    """Importances per objective ({objective: {feature: importance}}), or why there are none."""
    if len(data.done) < min_trials:
        return f"not enough trials: {len(data.done)} finished, {min_trials} needed"
    study = derived_study(data)
    params = list(study.trials[0].distributions) if study.trials else []
    if not params:
        return "not enough trials: every feature has the same value in all trials"
    out: dict[str, dict[str, float]] = {}
    for k, (name, direction) in enumerate(zip(data.objectives, study.directions, strict=True)):
        sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                found = optuna.importance.get_param_importances(
                    study,
                    evaluator=evaluator,
                    params=params,
                    target=lambda t, k=k, sign=sign: sign * t.values[k],  # lower is better
                )
            except (ValueError, RuntimeError) as exc:
                return f"could not be computed: {' '.join(str(exc).split())[:200]}"
        too_few = [w for w in caught if "too small" in str(w.message) or "equal" in str(w.message)]
        if too_few:
            return f"not enough trials: {' '.join(str(too_few[0].message).split())}"
        out[name] = dict(found)
    return out


def by_layer(found: dict[str, dict[str, float]], groups: list[str]) -> dict[str, dict[str, float]]:
    """Importances summed over the features of each layer (group); other parameters as they are."""
    out: dict[str, dict[str, float]] = {}
    for objective, values in found.items():
        sums: dict[str, float] = {}
        for feature, value in values.items():
            owner, _, choice = feature.rpartition(".")
            key = owner if owner in groups and choice in _CHOICES else feature
            sums[key] = sums.get(key, 0.0) + float(value)
        out[objective] = sums
    return out


def evaluators(options: Mapping[str, Any]) -> dict[str, optuna.importance.BaseImportanceEvaluator]:
    """The evaluators of the ``report.importance.evaluators`` config (name -> instance)."""
    from hydra.utils import instantiate

    return {name: instantiate(dict(node)) for name, node in options.get("evaluators", {}).items()}
