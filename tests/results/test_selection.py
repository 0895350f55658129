"""Selecting a trial: by number and by rule, on a constructed study (no training)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState, create_trial

from tests.helpers import constructed_study, constructed_trial
from tnsearch.config import ConfigError
from tnsearch.export import quote_trial
from tnsearch.results.selection import candidates, select

MPO = ("mpo", 2, 8)


@pytest.fixture(scope="module")
def study():
    return constructed_study(
        [
            constructed_trial(0.950, 50610, 0.10),  # 0: dense reference
            constructed_trial(0.945, 5000, 0.30, {"fc1": MPO}),  # 1: smallest within 1 point
            constructed_trial(0.943, 8000, 0.05, {"fc2": MPO}),  # 2: fastest within 1 point
            constructed_trial(0.960, 40000, 0.20, {"fc2": ("cp", 1, 4)}),  # 3: most accurate
            constructed_trial(0.900, 1000, 0.01, {"fc1": MPO, "fc2": MPO}),  # 4: 5 points off
            constructed_trial(0.0, 500, 0.005, {"fc1": MPO}, trained=False),  # 5: infeasible
            create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "NaN loss"}),  # 6
            constructed_trial(0.945, 5000, 0.40, {"fc1": ("tucker", 2, 8)}),  # 7: a tie with 1
            _duplicate_of_1(),  # 8: the sampler proposed trial 1's plan again
        ]
    )


def _duplicate_of_1():
    trial = constructed_trial(0.945, 5000, 0.30, {"fc1": MPO}, trained=False)
    trial.user_attrs.update(accuracy=0.945, duplicate_of=1)
    trial.values = [0.945, 5000, 0.30]
    return trial


@pytest.mark.parametrize(
    ("spec", "number"),
    [
        ("best-accuracy", 3),
        ("smallest-within=0.01", 1),  # 7 ties on params and accuracy but is slower
        ("fastest-within=0.01", 2),
        ("smallest-within=0.06", 4),  # a wider tolerance admits trial 4
        ("fastest-within=0.1", 4),
        ("smallest-within=0", 3),  # at least as accurate as the dense model
        (2, 2),
        ("7", 7),
        (8, 1),  # a repeated plan is the trial that trained it
    ],
)
def test_each_rule_picks_the_trial_it_should(study, spec, number):
    assert select(study, spec).number == number


def test_candidates_are_the_trained_finished_trials(study):
    assert [t.number for t in candidates(study)] == [0, 1, 2, 3, 4, 7]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (99, "trial: no trial 99 in study 'constructed' (trials 0-8)"),
        (6, "trial: trial 6 is FAIL, not finished"),
        (5, "trial: trial 5 was not trained"),
        ("fastest", "trial: unknown 'fastest': use a trial number or one of best-accuracy, "),
        ("smallest-within", "trial: 'smallest-within': give the accuracy tolerance, e.g. "),
        ("smallest-within=x", "trial: 'smallest-within=x': give the accuracy tolerance"),
        ("fastest-within=1", "trial: 'fastest-within=1': the tolerance is a fraction"),
        (True, "trial: must be a trial number or one of"),
    ],
)
def test_bad_selections_say_why_in_one_line(study, spec, message):
    with pytest.raises(ConfigError) as info:
        select(study, spec)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_rules_need_finished_trials_and_the_dense_reference():
    empty = constructed_study([], name="empty")
    with pytest.raises(ConfigError, match="trial: study 'empty' has no finished, trained trial"):
        select(empty, "best-accuracy")
    no_dense = constructed_study([constructed_trial(0.9, 900, 0.1, {"fc1": MPO})], name="nd")
    assert select(no_dense, "best-accuracy").number == 0
    with pytest.raises(ConfigError, match="needs the dense reference trial"):
        select(no_dense, "smallest-within=0.01")


def test_the_command_line_quotes_a_rule_with_a_tolerance():
    assert quote_trial(["root=x", "trial=smallest-within=0.01", "trial=best-accuracy"]) == [
        "root=x",
        "trial='smallest-within=0.01'",
        "trial=best-accuracy",
    ]
    assert quote_trial(['trial="fastest-within=0.01"']) == ['trial="fastest-within=0.01"']
