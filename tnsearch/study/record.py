"""The typed record of a trial: what tnsearch stores in Optuna, read and written only here.

Optuna keeps a trial's state, values and parameters; everything else tnsearch measures lives in
the trial's user attributes. Those attributes are the real database schema of a study, so they
are named once, in `Record`: the trial runner writes a record with `write`, every reader
(report, export, Pareto front, selection, progress, liveness) reads records with `from_trial` /
`records`. A study stores the schema version it was written with (`SCHEMA_ATTR`).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tnsearch import objectives
from tnsearch.plan import Plan
from tnsearch.study import optuna_internals

__all__ = [
    "COUNTED",
    "SCHEMA_VERSION",
    "Outcome",
    "Record",
    "dense",
    "front",
    "records",
    "trained",
]

#: Version of the user-attribute schema below; stored with every study (study user attribute
#: `SCHEMA_ATTR`) so that a later tnsearch can read an older study. 2: the task's quality is
#: `quality` (1 stored it as `accuracy`, read as such). 3: the learning curve's validation
#: quality is `val_quality` (2 stored `val_acc`, read as such); `measures`.
SCHEMA_VERSION = 3
SCHEMA_ATTR = "tnsearch_schema"
QUALITY_ATTR = "quality_metric"  # the task's name of its quality: accuracy, fidelity, val_f1...
#: The names schema 1 stored the quality under.
_LEGACY = {
    "accuracy": "quality",
    "test_accuracy": "test_quality",
    "zero_shot_accuracy": "zero_shot_quality",
}
DENSE_PARAMS_ATTR = "dense_params"
PARENT_RUN_ATTR = "mlflow_parent_run_id"
LADDER_ATTR = "budget_ladder"  # the budgets whose plans the study enqueued (search.budgets)

#: Trial states that count towards `trials` (failed and surplus trials do not).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


class Outcome(enum.Enum):
    """How one run of a trial ended, as the worker saw it."""

    COMPLETE = "complete"
    INFEASIBLE = "infeasible"  # over a constraint: told at once, never trained
    DUPLICATE = "duplicate"  # an earlier trial trained the same plan: its values told again
    PRUNED = "pruned"
    FAILED = "failed"

    @property
    def trained(self) -> bool:
        """Whether a trial with this outcome trained a model."""
        return self in (Outcome.COMPLETE, Outcome.PRUNED)


@dataclass(frozen=True)
class Record:
    """A trial as tnsearch stores it. Fields left None were not (yet) measured.

    Optuna's own parts (`number`, `state`, `values`, `choices` = Optuna's `params`, `constraints`,
    times) are read from the trial; the rest are its user attributes, one per field below.
    """

    number: int = -1
    state: TrialState = TrialState.RUNNING
    values: tuple[float, ...] | None = None
    choices: Mapping[str, Any] = field(default_factory=dict)  # Optuna parameters
    constraints: Mapping[str, float] = field(default_factory=dict)  # name -> value, <= 0: met
    started: datetime.datetime | None = None
    completed: datetime.datetime | None = None
    # -- user attributes (the schema) --------------------------------------------------------
    plan: Plan | None = None  # stored as its JSON object (Plan.to_json)
    training_choices: Mapping[str, Any] | None = None  # e.g. {"lr": 0.01}; {}: none searched
    trained: bool | None = None  # None: undecided (running) or never told (failed)
    duplicate_of: int | None = None
    retry_of: int | None = None
    infeasible: str | None = None  # which constraint, by how much
    quality: float | None = None  # the task's metric on val (0.0 for untrained infeasible plans)
    test_quality: float | None = None
    zero_shot_quality: float | None = None  # warm start: right after the decomposition
    params: int | None = None
    size_bytes: int | None = None  # the weights as deployed, in the plan's precisions
    compression: float | None = None
    latency_ratio: float | None = None  # the latency objective: time / the dense model's, paired
    latency_ratio_p10: float | None = None
    latency_ratio_p90: float | None = None
    latency_ms: float | None = None  # ms per batch (`latency.batch_size`) on `latency_device`
    latency_p10_ms: float | None = None
    latency_p90_ms: float | None = None
    dense_latency_ms: float | None = None  # the dense reference, timed beside it
    latency_device: str | None = None  # e.g. "NVIDIA H200", or the CPU model and threads
    latency_noisy: bool | None = None  # the paired ratios spread wider than NOISY_SPREAD
    measures: Mapping[str, float] | None = None  # measured objectives by metric (`objectives`)
    history: Sequence[Mapping[str, float]] | None = None  # {"epoch", "train_loss", "val_quality"}
    seconds: float | None = None
    fail_reason: str | None = None
    surplus: bool | None = None  # FAIL only because the study reached its target meanwhile
    prune_reason: str | None = None
    mlflow_run_id: str | None = None
    worker: str | None = None  # host:pid
    machine: str | None = None  # liveness.machine_id() of the worker: hosts may share a name
    heartbeat: float | None = None  # Unix time of the worker's last stamp

    def __post_init__(self) -> None:
        if self.plan is not None and not isinstance(self.plan, Plan):  # its JSON object
            object.__setattr__(self, "plan", Plan.of(self.plan))

    # -- reading and writing -------------------------------------------------------------------
    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> Record:
        """The record of an Optuna trial (unknown user attributes are ignored)."""
        attrs = trial.user_attrs
        stored = {name: attrs[name] for name in _ATTRS if name in attrs}
        for old, new in _LEGACY.items():  # schema 1
            if old in attrs and new not in stored:
                stored[new] = attrs[old]
        if stored.get("history") is not None:
            stored["history"] = tuple(map(_point, stored["history"]))
        if stored.get("plan") is not None:
            stored["plan"] = _plan(stored["plan"])
        return cls(
            number=trial.number,
            state=trial.state,
            values=tuple(trial.values) if trial.values is not None else None,
            choices=dict(trial.params),
            constraints=dict(trial.constraints),
            started=trial.datetime_start,
            completed=trial.datetime_complete,
            **stored,
        )

    def to_user_attrs(self) -> dict[str, Any]:
        """The user attributes of this record (fields that are set)."""
        out = {}
        for name in _ATTRS:
            value = getattr(self, name)
            if value is None:
                continue
            out[name] = _stored(name, value)
        return out

    def replace(self, **changes: Any) -> Record:
        """A copy with `changes` (fields by name)."""
        return dataclasses.replace(self, **changes)

    # -- what readers ask ----------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        """Whether the trial trained a model (False for repeats and infeasible plans)."""
        return self.trained is not False

    @property
    def is_dense(self) -> bool:
        """Whether this is the dense reference: a plan that tensorizes and quantizes nothing."""
        return self.plan is not None and not self.plan.layers and not self.plan.precision

    @property
    def layers(self) -> Mapping[str, Mapping[str, Any]]:
        """The plan's tensorized layers (name -> spec); empty for dense or no plan yet."""
        return self.plan.layers if self.plan is not None else {}

    @property
    def counts(self) -> bool:
        """Whether it counts towards the study's `trials`: finished or pruned, and trained."""
        return self.state in COUNTED and self.is_trained

    @property
    def feasible(self) -> bool:
        return all(value <= 0.0 for value in self.constraints.values())

    @property
    def candidate(self) -> bool:
        """Finished, trained, feasible, with a plan, a quality and a parameter count: what
        results may offer a user (a trial whose journal record of one of them was damaged,
        `tnsearch.study.journal_file`, stays in the study but is offered to no one)."""
        return (
            self.state == TrialState.COMPLETE
            and self.is_trained
            and self.feasible
            and self.quality is not None
            and self.params is not None
            and self.plan is not None
        )

    @property
    def outcome(self) -> Outcome | None:
        """How the trial ended (None while it runs)."""
        if self.state == TrialState.PRUNED:
            return Outcome.PRUNED
        if self.state == TrialState.FAIL:
            return Outcome.FAILED
        if self.state != TrialState.COMPLETE:
            return None
        if self.duplicate_of is not None:
            return Outcome.DUPLICATE
        if self.infeasible is not None:
            return Outcome.INFEASIBLE
        return Outcome.COMPLETE

    def latency_text(self) -> str:
        """The latency for people: the ratio to dense first (the objective), then the
        milliseconds, and a warning when the measurement was noisy: `0.62x dense (0.431 ms)`."""
        if self.latency_ratio is None:
            return f"{self.latency_ms:.3f} ms" if self.latency_ms is not None else "latency -"
        noisy = ", noisy" if self.latency_noisy else ""
        return f"{self.latency_ratio:.2f}x dense ({self.latency_ms:.3f} ms{noisy})"

    @property
    def extras(self) -> dict[str, float]:
        """The figures of the objectives the views show one column each (by metric name):
        registered ones a record field holds, then the measured ones (`measures`); not the
        quality, parameters or latency, which have columns of their own."""
        out = {
            o.metric: getattr(self, o.field)
            for o in objectives.registered().values()
            if o.field and not o.own_columns and getattr(self, o.field) is not None
        }
        return {**out, **(self.measures or {})}

    def value(self, name: str) -> float:
        """The value of objective `name` (by key or metric name): a registered objective's
        field, a measured objective's entry in `measures` (also one no module registers here),
        or, for any other name, the quality."""
        found = objectives.get(name)
        measures = self.measures or {}
        if found is not None and found.field:
            value, what = getattr(self, found.field), found.field
        elif found is not None or name in measures:
            metric = found.metric if found is not None else name
            value, what = measures.get(metric), metric
        else:
            value, what = self.quality, "quality"
        if value is None:
            raise ValueError(f"trial {self.number} has no {what}")
        return float(value)

    def values_for(self, objectives: Iterable[str]) -> list[float]:
        """The values to tell Optuna, in the study's objective order."""
        return [self.value(name) for name in objectives]


#: Record fields that are Optuna's own parts of a trial; every other field is a user attribute.
_OPTUNA = ("number", "state", "values", "choices", "constraints", "started", "completed")
_ATTRS = tuple(f.name for f in dataclasses.fields(Record) if f.name not in _OPTUNA)


# -- writing (the trial runner and liveness) ---------------------------------------------------
def write(trial: optuna.Trial, record: Record) -> None:
    """Store `record`'s set fields as `trial`'s user attributes."""
    for key, value in record.to_user_attrs().items():
        trial.set_user_attr(key, value)


def write_fields(trial: optuna.Trial, **fields: Any) -> None:
    """Store some record fields (by name) on a running trial."""
    for key, value in fields.items():
        if key not in _ATTRS:
            raise KeyError(f"{key!r} is not a field of a trial record")
        trial.set_user_attr(key, _stored(key, value))


def _point(point: Mapping[str, float]) -> Mapping[str, float]:
    """A learning curve's point as schema 3 names it (`val_acc` before: `val_quality`)."""
    if "val_acc" in point and "val_quality" not in point:
        point = {("val_quality" if k == "val_acc" else k): v for k, v in point.items()}
    return point


def _stored(name: str, value: Any) -> Any:
    """A field as its user attribute holds it (JSON): the plan as its JSON object."""
    if name == "history":
        return list(value)
    return value.to_json() if isinstance(value, Plan) else value


def _plan(data: Any) -> Plan | None:
    """The stored plan, or None when the storage holds no plan there (a damaged record: the
    trial stays, offered to no one, as `Record.candidate` says)."""
    try:
        return Plan.from_json(data)
    except (ValueError, TypeError, AttributeError):
        return None


def write_finished(study: optuna.Study, record: Record, **fields: Any) -> None:
    """Store record fields of a trial this process does not hold (e.g. a dead worker's)."""
    for key, value in fields.items():
        if key not in _ATTRS:
            raise KeyError(f"{key!r} is not a field of a trial record")
        optuna_internals.set_trial_user_attr(study, record.number, key, _stored(key, value))


def retry_attrs(number: int) -> dict[str, Any]:
    """The user attributes a retry of failed trial `number` starts with."""
    return Record(retry_of=number).to_user_attrs()


# -- reading ------------------------------------------------------------------------------------
def records(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[Record]:
    """The records of the study's trials (in `states`), by number."""
    found = study.get_trials(deepcopy=False, states=states)
    return sorted((Record.from_trial(t) for t in found), key=lambda r: r.number)


def trained(study: optuna.Study) -> list[Record]:
    """Finished, trained, feasible trials with a quality, by number."""
    return [r for r in records(study, (TrialState.COMPLETE,)) if r.candidate]


def counted(study: optuna.Study) -> int:
    """Trials that count towards the target."""
    return sum(1 for r in records(study, COUNTED) if r.counts)


def dense(found: Iterable[Record]) -> Record | None:
    """The dense reference among `found`, or None."""
    return next((r for r in found if r.is_dense), None)


def front(study: optuna.Study) -> list[Record]:
    """The trained Pareto-optimal trials, fewest parameters first."""
    best = [Record.from_trial(t) for t in study.best_trials]
    best = [r for r in best if r.candidate]
    return sorted(best, key=lambda r: (r.params or 0, r.number))


# -- study-level attributes --------------------------------------------------------------------
def mark_schema(study: optuna.Study) -> None:
    """Store the schema version with a new study; refuse a study written by a newer schema."""
    found = study.user_attrs.get(SCHEMA_ATTR)
    if found is None or int(found) < SCHEMA_VERSION:  # older records are read as they are
        study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION)
    elif int(found) > SCHEMA_VERSION:
        raise ValueError(
            f"study {study.study_name!r} was written by a newer tnsearch (record schema "
            f"{found}, this one reads {SCHEMA_VERSION})"
        )


def schema(study: optuna.Study) -> int | None:
    """The record schema version the study was written with (None: before versions)."""
    found = study.user_attrs.get(SCHEMA_ATTR)
    return None if found is None else int(found)


def quality_metric(study: optuna.Study) -> str:
    """The task's name of the study's quality (schema 1 studies: accuracy)."""
    return str(study.user_attrs.get(QUALITY_ATTR, "accuracy"))


def metric_names(study: optuna.Study) -> list[str]:
    """The study's objectives by metric name, as Optuna holds them (studies made before Optuna
    kept names: the quality, param_count, latency_ratio)."""
    return list(study.metric_names or [quality_metric(study), "param_count", "latency_ratio"])


def set_quality_metric(study: optuna.Study, name: str) -> None:
    study.set_user_attr(QUALITY_ATTR, name)


def dense_params(study: optuna.Study) -> int | None:
    found = study.user_attrs.get(DENSE_PARAMS_ATTR)
    return None if found is None else int(found)


def set_dense_params(study: optuna.Study, params: int) -> None:
    study.set_user_attr(DENSE_PARAMS_ATTR, int(params))


def parent_run(study: optuna.Study) -> str | None:
    """The id of the study's MLflow parent run, if one was made."""
    return study.user_attrs.get(PARENT_RUN_ATTR)


def set_parent_run(study: optuna.Study, run_id: str) -> None:
    study.set_user_attr(PARENT_RUN_ATTR, run_id)


def ladder(study: optuna.Study) -> list[float] | None:
    """The budgets whose plans were enqueued after the dense trial (None: not yet)."""
    found = study.user_attrs.get(LADDER_ATTR)
    return None if found is None else [float(b) for b in found]


def set_ladder(study: optuna.Study, budgets: list[float]) -> None:
    study.set_user_attr(LADDER_ATTR, [float(b) for b in budgets])
