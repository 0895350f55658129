"""Find a finished study and pick one of its trials: by number, or by what a person wants.

Selection rules (the `trial=` key of `python -m tnsearch.export`):

- ``17``: trial 17 (or, when it repeated an earlier trial's plan, that trial);
- ``best-accuracy``: the highest validation accuracy;
- ``smallest-within=0.01``: the fewest parameters among trials within 0.01 (1 point) of the
  dense reference's validation accuracy;
- ``fastest-within=0.01``: the lowest latency among the same trials.

Only finished, trained trials are candidates (infeasible trials were never trained). Ties go to
the more accurate, then the smaller, then the faster, then the earlier trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tnsearch.config import ConfigError, check_name
from tnsearch.study import record
from tnsearch.study.record import Record
from tnsearch.study.storage import label as storage_label

__all__ = ["RULES", "candidates", "open_existing", "select", "storage_label"]

#: The selection rules besides a trial number, as a user writes them.
RULES = ("best-accuracy", "smallest-within=TOL", "fastest-within=TOL")
_WITHIN = {"smallest-within": "params", "fastest-within": "latency"}


def open_existing(storage_cfg: Mapping[str, Any], name: str) -> optuna.Study:
    """Load study `name` for reading; never create a storage file or a study.

    Raises:
        ConfigError: ``name: no study 'x' in <storage>`` when there is no such study, or
            ``name: ...`` for a name that is no folder name.
    """
    from hydra.utils import instantiate

    from tnsearch.study.storage import check_reachable

    check_name(name)  # before any path is made of it
    label = storage_label(storage_cfg)
    missing = ConfigError("name", f"no study {name!r} in {label}")
    path = storage_cfg.get("path")
    url = str(storage_cfg.get("url") or "")
    if path is not None and not Path(path).is_file():
        raise missing  # a journal storage would create the file
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise missing  # SQLAlchemy would create the database
    check_reachable(storage_cfg)
    storage = instantiate(dict(storage_cfg))
    if name not in optuna.get_all_study_names(storage):
        raise missing
    return optuna.load_study(study_name=name, storage=storage)


def candidates(study: optuna.Study) -> list[Record]:
    """Finished, trained, feasible trials with an accuracy, by number."""
    return record.trained(study)


def _key(trial: Record) -> tuple:
    return (-trial.quality, trial.params or 0, trial.latency_ms or 0.0, trial.number)


def select(study: optuna.Study, spec: int | str) -> Record:
    """The trial `spec` names (see the module docstring).

    Raises:
        ConfigError: ``trial: <reason>`` for an unknown rule, a missing or unfinished trial, or
            a study with no candidate.
    """
    if isinstance(spec, bool):
        raise ConfigError("trial", f"must be a trial number or one of {', '.join(RULES)}")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        return _by_number(study, int(spec))
    text = str(spec).strip()
    pool = candidates(study)
    if not pool:
        raise ConfigError("trial", f"study {study.study_name!r} has no finished, trained trial")
    if text == "best-accuracy":
        return min(pool, key=_key)
    rule, sep, value = text.partition("=")
    if rule not in _WITHIN:
        raise ConfigError(
            "trial", f"unknown {text!r}: use a trial number or one of {', '.join(RULES)}"
        )
    tolerance = _tolerance(text, value if sep else "")
    dense = record.dense(pool)
    if dense is None:
        raise ConfigError("trial", f"{rule} needs the dense reference trial; it has not finished")
    floor = dense.quality - tolerance
    close = [t for t in pool if t.quality >= floor - 1e-12]
    objective = _WITHIN[rule]
    return min(close, key=lambda t: (t.value(objective), *_key(t)))


def _tolerance(text: str, value: str) -> float:
    try:
        tolerance = float(value)
    except ValueError:
        raise ConfigError(
            "trial", f"{text!r}: give the accuracy tolerance, e.g. {text.split('=')[0]}=0.01"
        ) from None
    if not 0.0 <= tolerance < 1.0:
        raise ConfigError(
            "trial", f"{text!r}: the tolerance is a fraction of accuracy (0.01 = 1 point)"
        )
    return tolerance


def _by_number(study: optuna.Study, number: int) -> Record:
    trials = record.records(study)
    found = next((t for t in trials if t.number == number), None)
    if found is None:
        span = f"trials 0-{len(trials) - 1}" if trials else "no trials"
        raise ConfigError("trial", f"no trial {number} in study {study.study_name!r} ({span})")
    if found.state != TrialState.COMPLETE:
        raise ConfigError("trial", f"trial {number} is {found.state.name}, not finished")
    original = found.duplicate_of
    if original is not None and original != number:
        return _by_number(study, int(original))  # the same plan, trained once, by that trial
    if not found.is_trained:
        reason = found.infeasible or "infeasible"
        raise ConfigError("trial", f"trial {number} was not trained ({reason})")
    return found
