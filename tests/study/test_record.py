"""`tnsearch.study.record`: the typed record of a trial and the study-level attributes."""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tests.helpers import constructed_study, constructed_trial
from tnsearch import objectives
from tnsearch.study import record
from tnsearch.study.record import SCHEMA_ATTR, SCHEMA_VERSION, Outcome, Record

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: One value for every user attribute of the schema (as JSON would store them).
_ALL_ATTRS = {
    "plan": {
        "version": 1,
        "model": {"_target_": "tnsearch.models.MLP"},
        "inputs": {"num_classes": 10},
        "layers": {"fc1": {"topology": "cp", "rank": 4}},
        "params": 1234,
    },
    "training_choices": {"lr": 0.01},
    "trained": True,
    "duplicate_of": 3,
    "retry_of": 2,
    "infeasible": "max_params exceeded by 10",
    "quality": 0.91,
    "test_quality": 0.9,
    "zero_shot_quality": 0.5,
    "params": 1234,
    "compression": 41.0,
    "latency_ms": 0.25,
    "latency_p10_ms": 0.2,
    "latency_p90_ms": 0.3,
    "measures": {"flops": 2048.0},
    "history": [
        {"epoch": 0, "train_loss": 1.5, "val_quality": 0.6},
        {"epoch": 1, "train_loss": 0.9, "val_quality": 0.8},
    ],
    "seconds": 12.5,
    "fail_reason": "boom",
    "prune_reason": "dominated",
    "mlflow_run_id": "abc123",
    "worker": "host:42",
    "heartbeat": 1700000000.0,
}


def _study(directions=("maximize", "minimize", "minimize")) -> optuna.Study:
    return optuna.create_study(directions=list(directions))


def _trial(state=TrialState.COMPLETE, values=(0.9, 100.0, 1.0), constraints=None, **attrs):
    """A frozen trial with `attrs` as user attributes (and constraints, if given)."""
    return optuna.trial.create_trial(
        state=state,
        values=list(values) if state == TrialState.COMPLETE else None,
        params={"fc1.tensorize": True},
        distributions={"fc1.tensorize": CategoricalDistribution([False, True])},
        user_attrs=attrs,
        constraints=constraints,
    )


def _rec(trial) -> Record:
    return Record.from_trial(trial)


# -- from_trial / to_user_attrs ------------------------------------------------------------------
def test_from_trial_and_to_user_attrs_round_trip_every_schema_field():
    trial = _trial(**_ALL_ATTRS, unknown_attr="ignored", another={"x": 1})
    rec = Record.from_trial(trial)
    assert rec.to_user_attrs() == _ALL_ATTRS
    # Optuna's own parts come from the trial, not from user attributes.
    assert rec.number == trial.number
    assert rec.state == TrialState.COMPLETE
    assert rec.values == (0.9, 100.0, 1.0)
    assert rec.choices == {"fc1.tensorize": True}
    assert isinstance(rec.history, tuple) and len(rec.history) == 2
    assert not hasattr(rec, "unknown_attr")


def test_to_user_attrs_leaves_out_unset_fields():
    rec = Record.from_trial(_trial(accuracy=0.5))
    assert rec.to_user_attrs() == {"quality": 0.5}  # a schema 1 'accuracy' is read as quality
    assert rec.history is None and rec.training_choices is None
    assert Record().to_user_attrs() == {}
    assert Record(trained=False).to_user_attrs() == {"trained": False}


def test_empty_history_and_training_choices_are_values_not_unset():
    # {}: the study searched no training choices; (): no epoch ran. Both are stored.
    rec = Record(trained=False, history=(), training_choices={})
    assert rec.to_user_attrs() == {"trained": False, "history": [], "training_choices": {}}
    back = Record.from_trial(_trial(**rec.to_user_attrs()))
    assert back.history == () and back.training_choices == {}
    assert back.to_user_attrs() == rec.to_user_attrs()


def test_round_trip_through_a_real_study_keeps_the_attrs():
    study = _study()
    trial = study.ask()
    stored = {k: v for k, v in _ALL_ATTRS.items() if k != "duplicate_of"}
    record.write(trial, Record(**stored))
    study.tell(trial, [0.9, 1234, 0.25])
    (found,) = record.records(study)
    assert found.to_user_attrs() == stored
    assert found.started is not None and found.completed is not None


# -- what readers ask ---------------------------------------------------------------------------
def test_is_trained_counts_an_absent_flag_as_trained():
    assert _rec(_trial()).is_trained
    assert _rec(_trial(trained=True)).is_trained
    assert not _rec(_trial(trained=False)).is_trained


@pytest.mark.parametrize(
    ("state", "trained", "counts"),
    [
        (TrialState.COMPLETE, None, True),
        (TrialState.COMPLETE, True, True),
        (TrialState.PRUNED, True, True),
        (TrialState.COMPLETE, False, False),
        (TrialState.PRUNED, False, False),
        (TrialState.FAIL, None, False),
        (TrialState.RUNNING, None, False),
        (TrialState.WAITING, None, False),
    ],
)
def test_counts(state, trained, counts):
    assert Record(state=state, trained=trained).counts is counts


def test_is_dense_and_dense():
    dense = Record(number=1, plan={"layers": {}})
    no_layers_key = Record(number=2, plan={"version": 1})
    tensorized = Record(number=3, plan={"layers": {"fc1": {"topology": "cp"}}})
    no_plan = Record(number=4)
    assert dense.is_dense and no_layers_key.is_dense
    assert not tensorized.is_dense
    assert not no_plan.is_dense
    assert tensorized.layers == {"fc1": {"topology": "cp"}}
    assert no_plan.layers == {} and dense.layers == {}
    assert record.dense([no_plan, tensorized, dense, no_layers_key]) is dense
    assert record.dense([no_plan, tensorized]) is None


#: What a finished trial's result needs besides its quality: its plan and parameter count.
_RESULT = {"plan": _ALL_ATTRS["plan"], "params": 1234}


def test_candidate():
    assert _rec(_trial(accuracy=0.9, **_RESULT)).candidate
    met = {"max_params": 0.0, "max_latency_ms": -5.0}
    broken = {"max_params": -1.0, "max_latency_ms": 0.5}
    assert _rec(_trial(accuracy=0.9, constraints=met, **_RESULT)).candidate
    # Over a constraint, untrained, without accuracy, or not finished: not offered.
    assert not _rec(_trial(accuracy=0.9, constraints=broken, **_RESULT)).candidate
    assert not _rec(_trial(accuracy=0.9, trained=False, **_RESULT)).candidate
    assert not _rec(_trial(**_RESULT)).candidate
    # Without its plan or its parameter count (a damaged journal record): not offered either.
    assert not _rec(_trial(accuracy=0.9, plan=_RESULT["plan"])).candidate
    assert not _rec(_trial(accuracy=0.9, params=1234)).candidate
    assert not Record(state=TrialState.PRUNED, quality=0.9).candidate
    assert not Record(state=TrialState.RUNNING, quality=0.9).candidate


def test_feasible_reads_constraints_from_the_trial():
    rec = _rec(_trial(constraints={"max_params": 0.0, "max_latency_ms": 2.0}))
    assert rec.constraints == {"max_params": 0.0, "max_latency_ms": 2.0}
    assert not rec.feasible
    assert _rec(_trial(constraints={"max_params": -1.0, "max_latency_ms": 0.0})).feasible
    assert _rec(_trial()).feasible  # no constraints at all


@pytest.mark.parametrize(
    ("rec", "outcome"),
    [
        (Record(state=TrialState.COMPLETE, trained=True), Outcome.COMPLETE),
        (Record(state=TrialState.COMPLETE, trained=False, duplicate_of=0), Outcome.DUPLICATE),
        (Record(state=TrialState.COMPLETE, trained=False, infeasible="x"), Outcome.INFEASIBLE),
        (Record(state=TrialState.PRUNED, trained=True), Outcome.PRUNED),
        (Record(state=TrialState.FAIL, fail_reason="boom"), Outcome.FAILED),
        (Record(state=TrialState.RUNNING), None),
        (Record(state=TrialState.WAITING), None),
    ],
)
def test_outcome(rec, outcome):
    assert rec.outcome is outcome


def test_outcome_trained():
    assert {o for o in Outcome if o.trained} == {Outcome.COMPLETE, Outcome.PRUNED}


@pytest.mark.parametrize("objective", sorted(objectives.registered()))
def test_value_reads_the_objectives_field_or_its_measure(objective):
    found = objectives.registered()[objective]
    where = found.field or found.metric
    rec = (
        Record(number=7, **{found.field: 3})
        if found.field
        else Record(number=7, measures={found.metric: 3})
    )
    assert rec.value(objective) == 3.0 == rec.value(found.metric)
    assert isinstance(rec.value(objective), float)
    with pytest.raises(ValueError, match=f"trial 7 has no {where}"):
        Record(number=7, quality=0.5).value(objective)


def test_a_measure_no_module_registers_is_read_by_its_name():
    rec = Record(number=3, quality=0.5, measures={"peak_mib": 12.5})
    assert rec.value("peak_mib") == 12.5
    assert rec.value("accuracy") == 0.5  # any other name: the quality


def test_objectives_directions():
    assert objectives.direction("accuracy") == "maximize"  # any other name: the quality
    assert objectives.direction("fidelity", "minimize") == "minimize"
    assert objectives.direction("params") == "minimize"
    assert objectives.direction("latency_ratio") == "minimize"


def test_values_for_keeps_the_study_order():
    rec = Record(quality=0.8, params=500, latency_ratio=1.5)
    assert rec.values_for(["latency", "accuracy", "params"]) == [1.5, 0.8, 500.0]
    assert rec.values_for(["accuracy"]) == [0.8]
    assert rec.values_for([]) == []
    with pytest.raises(ValueError):
        Record(quality=0.8).values_for(["accuracy", "latency"])


def test_replace_returns_a_changed_copy():
    rec = Record(number=1, quality=0.5)
    changed = rec.replace(quality=0.7)
    assert changed.quality == 0.7 and changed.number == 1
    assert rec.quality == 0.5


# -- writing -------------------------------------------------------------------------------------
def test_write_fields_stores_known_fields_and_refuses_a_typo():
    study = _study()
    trial = study.ask()
    record.write_fields(trial, worker="h:1", heartbeat=5.0)
    with pytest.raises(KeyError, match="heartbeet"):
        record.write_fields(trial, heartbeet=6.0)
    (rec,) = record.records(study)
    assert rec.worker == "h:1" and rec.heartbeat == 5.0
    assert "heartbeet" not in study.trials[0].user_attrs


def test_write_finished_sets_attrs_of_a_trial_by_number_and_refuses_a_typo():
    study = _study()
    trial = study.ask()
    rec = Record(number=trial.number)
    record.write_finished(study, rec, fail_reason="reaped")
    assert study.trials[0].user_attrs["fail_reason"] == "reaped"
    with pytest.raises(KeyError):
        record.write_finished(study, rec, fail_reson="reaped")


def test_retry_attrs():
    assert record.retry_attrs(4) == {"retry_of": 4}


# -- reading -------------------------------------------------------------------------------------
def test_records_trained_and_counted():
    study = _study()
    over = {"max_params": 1.0}
    study.add_trials(
        [
            _trial(accuracy=0.9, trained=True, **_RESULT),  # 0: candidate
            _trial(accuracy=0.9, trained=False, duplicate_of=0),  # 1: repeat
            _trial(state=TrialState.PRUNED, accuracy=0.5, trained=True),  # 2: counted
            _trial(state=TrialState.FAIL),  # 3
            _trial(accuracy=0.0, trained=False, constraints=over, infeasible="x"),  # 4
            _trial(accuracy=0.8, **_RESULT),  # 5: candidate (trained absent)
        ]
    )
    assert [r.number for r in record.records(study)] == [0, 1, 2, 3, 4, 5]
    assert [r.number for r in record.records(study, (TrialState.PRUNED,))] == [2]
    assert [r.number for r in record.trained(study)] == [0, 5]
    assert record.counted(study) == 3


def test_front_excludes_untrained_trials_and_sorts_by_params():
    trials = [
        constructed_trial(0.95, 40000, 1.0),
        constructed_trial(0.90, 20000, 1.0, {"fc1": ("cp", 2, 4)}),
        # Never trained: fewest params of all, so Pareto-optimal to Optuna, but no result.
        constructed_trial(0.99, 100, 0.1, {"fc1": ("cp", 2, 2)}, trained=False),
        constructed_trial(0.80, 30000, 2.0, {"fc2": ("cp", 2, 4)}),  # dominated
    ]
    study = constructed_study(trials)
    assert {t.number for t in study.best_trials} == {0, 1, 2}
    front = record.front(study)
    assert [r.number for r in front] == [1, 0]
    assert all(r.is_trained for r in front)


# -- study-level attributes ----------------------------------------------------------------------
def test_mark_schema_stores_the_version_on_a_new_study():
    study = _study()
    assert record.schema(study) is None
    record.mark_schema(study)
    assert study.user_attrs[SCHEMA_ATTR] == SCHEMA_VERSION
    assert record.schema(study) == SCHEMA_VERSION
    record.mark_schema(study)  # again: no change, no error
    assert record.schema(study) == SCHEMA_VERSION


def test_mark_schema_upgrades_an_older_study():
    study = _study()
    study.set_user_attr(SCHEMA_ATTR, 1)
    record.mark_schema(study)
    assert record.schema(study) == SCHEMA_VERSION


def test_schema_1_quality_is_read_from_its_accuracy_keys():
    stored = {"accuracy": 0.9, "test_accuracy": 0.8, "zero_shot_accuracy": 0.5, "trained": True}
    trial = optuna.trial.create_trial(values=[0.9], user_attrs=stored)
    rec = Record.from_trial(trial)
    assert (rec.quality, rec.test_quality, rec.zero_shot_quality) == (0.9, 0.8, 0.5)
    assert rec.to_user_attrs() == {
        "quality": 0.9,
        "test_quality": 0.8,
        "zero_shot_quality": 0.5,
        "trained": True,
    }


def test_schema_2_learning_curve_is_read_as_val_quality():
    curve = [{"epoch": 0, "train_loss": 1.0, "val_acc": 0.7}, {"epoch": 1, "val_quality": 0.8}]
    trial = optuna.trial.create_trial(values=[0.8], user_attrs={"history": curve})
    rec = Record.from_trial(trial)
    assert [p["val_quality"] for p in rec.history] == [0.7, 0.8]
    assert all("val_acc" not in p for p in rec.history)


def test_mark_schema_refuses_a_newer_study():
    study = _study()
    study.set_user_attr(SCHEMA_ATTR, SCHEMA_VERSION + 1)
    with pytest.raises(ValueError, match="newer tnsearch"):
        record.mark_schema(study)
    assert record.schema(study) == SCHEMA_VERSION + 1


def test_dense_params_and_parent_run():
    study = _study()
    assert record.dense_params(study) is None
    assert record.parent_run(study) is None
    record.set_dense_params(study, 50610.0)
    record.set_parent_run(study, "run-1")
    assert record.dense_params(study) == 50610
    assert isinstance(study.user_attrs["dense_params"], int)
    assert record.parent_run(study) == "run-1"
    record.set_parent_run(study, "run-2")
    assert record.parent_run(study) == "run-2"


def test_started_and_completed_come_from_the_trial():
    start = datetime.datetime(2024, 1, 1, 12, 0, 0)
    trial = _trial()
    trial.datetime_start = start
    trial.datetime_complete = start + datetime.timedelta(seconds=30)
    rec = Record.from_trial(trial)
    assert rec.started == start
    assert (rec.completed - rec.started).total_seconds() == 30
