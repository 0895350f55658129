"""Helpers of the worker loop and the trial runner, without training anything:
`loop._Stuck`, `loop._surplus`, `trial._constraints`, `ui.console.trial_line`, `workers.cpu_sets`,
`workers.tag`, and the Optuna parameter names of `tnsearch.space`."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from tnsearch import space
from tnsearch.config import ConstraintsConfig as C
from tnsearch.study import record, workers
from tnsearch.study.loop import StudyStopped, _Stuck, _surplus
from tnsearch.study.record import Outcome, Record
from tnsearch.study.trial import _constraints
from tnsearch.ui.console import trial_line

optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- loop._Stuck ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("target", "limit"), [(1, 5), (3, 5), (5, 5), (8, 8)])
def test_stuck_gives_up_after_max_5_target_failures_in_a_row(target, limit):
    stuck = _Stuck(target)
    for _ in range(limit - 1):
        stuck.check(Outcome.FAILED)
    with pytest.raises(StudyStopped, match=f"{limit} failed trials in a row"):
        stuck.check(Outcome.FAILED)


@pytest.mark.parametrize("reset", [Outcome.COMPLETE, Outcome.PRUNED, Outcome.INFEASIBLE])
def test_stuck_failure_streak_is_reset_by_any_other_outcome(reset):
    stuck = _Stuck(1)
    for _ in range(3):
        for _ in range(4):
            stuck.check(Outcome.FAILED)
        stuck.check(reset)
    assert stuck.failed == 0
    for _ in range(4):
        stuck.check(Outcome.FAILED)
    with pytest.raises(StudyStopped):
        stuck.check(Outcome.FAILED)


@pytest.mark.parametrize(("target", "limit"), [(1, 100), (10, 100), (11, 110), (25, 250)])
def test_stuck_gives_up_after_max_100_10x_target_untrained_in_a_row(target, limit):
    stuck = _Stuck(target)
    kinds = (Outcome.INFEASIBLE, Outcome.DUPLICATE, Outcome.PRUNED)
    for i in range(limit - 1):  # infeasible, repeated and pruned plans all count, mixed
        stuck.check(kinds[i % 3])
    assert stuck.untrained == limit - 1
    with pytest.raises(StudyStopped, match=f"{limit} infeasible, repeated or pruned plans in a"):
        stuck.check(Outcome.INFEASIBLE)


@pytest.mark.parametrize("reset", [Outcome.COMPLETE, Outcome.FAILED])
def test_stuck_untrained_streak_is_reset_by_a_trained_or_failed_trial(reset):
    stuck = _Stuck(1)
    for _ in range(99):
        stuck.check(Outcome.DUPLICATE)
    stuck.check(reset)
    assert stuck.untrained == 0
    for _ in range(99):
        stuck.check(Outcome.DUPLICATE)  # no raise: the streak started again


def test_stuck_never_gives_up_on_successes():
    stuck = _Stuck(1)
    for _ in range(500):
        stuck.check(Outcome.PRUNED)  # a pruned trial between counted ones never adds up
        stuck.check(Outcome.COMPLETE)
    assert stuck.failed == stuck.untrained == 0


# -- loop._surplus -------------------------------------------------------------------------------
_DIST = {"x": CategoricalDistribution([0, 1])}


def _done(state=TrialState.COMPLETE, **attrs):
    return optuna.trial.create_trial(
        state=state,
        values=[0.5] if state == TrialState.COMPLETE else None,
        params={"x": 0},
        distributions=_DIST,
        user_attrs=attrs,
    )


def test_surplus_when_earlier_trials_make_up_the_target():
    study = optuna.create_study()
    study.add_trials([_done(trained=True), _done(TrialState.PRUNED, trained=True)])
    running = study.ask()  # trial 2: a live trial on another worker (trained undecided)
    trial = study.ask()  # trial 3: this worker's new trial
    assert running.number < trial.number
    assert _surplus(study, trial, 3)
    assert _surplus(study, trial, 2)
    assert not _surplus(study, trial, 4)


def test_surplus_ignores_untrained_failed_and_later_trials():
    study = optuna.create_study()
    study.add_trials(
        [
            _done(trained=True),
            _done(trained=False, duplicate_of=0),  # a repeat: not trained
            _done(trained=False, infeasible="max_params exceeded by 1"),
            _done(TrialState.FAIL, fail_reason="boom"),
        ]
    )
    trial = study.ask()
    later = study.ask()  # started after `trial`: does not count against it
    record.write_fields(later, worker="h:1")
    assert _surplus(study, trial, 1)
    assert not _surplus(study, trial, 2)
    assert _surplus(study, later, 2)  # `trial` runs ahead of `later`


def test_no_surplus_on_an_empty_study():
    study = optuna.create_study()
    trial = study.ask()
    assert not _surplus(study, trial, 1)
    assert _surplus(study, trial, 0)


# -- trial._constraints (C: the `constraints` section) ------------------------------------------
def test_constraints_only_for_limits_that_are_set():
    rec = Record(params=1000, latency_ms=2.5)
    assert _constraints(C(), rec) == {}
    assert _constraints(C(max_params=None, max_latency_ms=None), rec) == {}
    assert _constraints(C(max_params=1500, max_latency_ms=None), rec) == {"max_params": -500.0}
    assert _constraints(C(max_latency_ms=2.0), rec) == {"max_latency_ms": 0.5}


def test_constraints_sign_le_zero_is_satisfied():
    rec = Record(params=1000, latency_ms=2.0)
    found = _constraints(C(max_params=1000, max_latency_ms=1.5), rec)
    assert found == {"max_params": 0.0, "max_latency_ms": 0.5}
    assert all(isinstance(v, float) for v in found.values())
    assert found["max_params"] <= 0  # at the limit: met
    assert found["max_latency_ms"] > 0  # over: broken
    assert _constraints(C(max_params=999), rec)["max_params"] > 0


def test_constraints_of_zero_are_a_limit_too():
    rec = Record(params=10, latency_ms=0.1)
    assert _constraints(C(max_params=0, max_latency_ms=0), rec) == {
        "max_params": 10.0,
        "max_latency_ms": 0.1,
    }


# -- ui.console.trial_line -----------------------------------------------------------------------
def test_trial_line_complete():
    rec = Record(number=7, quality=0.91234, params=12345, compression=4.06, latency_ms=0.1234)
    line = trial_line(rec, "fc1: cp r4", Outcome.COMPLETE.value, 12.34)
    assert line.startswith("trial   7  fc1: cp r4")
    assert "acc 0.9123" in line
    assert "params     12,345 (4.1x)" in line
    assert "0.123 ms" in line
    assert line.endswith("12.3 s")


def test_trial_line_shows_the_ratio_to_dense_and_says_when_it_was_noisy():
    rec = Record(
        number=3, quality=0.9, params=100, compression=2.0, latency_ms=0.431, latency_ratio=0.62
    )
    line = trial_line(rec, "fc1: cp r4", Outcome.COMPLETE.value, 1.0)
    assert "0.62x dense (0.431 ms)" in line and "noisy" not in line
    noisy = trial_line(rec.replace(latency_noisy=True), "fc1: cp r4", Outcome.COMPLETE.value, 1.0)
    assert "0.62x dense (0.431 ms, noisy)" in noisy


def test_the_latency_constraint_is_a_ratio_and_the_ms_one_absolute():
    rec = Record(params=10, latency_ratio=0.8, latency_ms=4.0)
    assert _constraints(C(max_latency=0.5), rec) == {"max_latency": pytest.approx(0.3)}
    assert _constraints(C(max_latency=1.0, max_latency_ms=5.0), rec) == {
        "max_latency": pytest.approx(-0.2),
        "max_latency_ms": -1.0,
    }


def test_trial_line_cuts_a_long_summary_to_48_characters():
    rec = Record(number=1000, quality=0.5, params=1, compression=1.0, latency_ms=1.0)
    line = trial_line(rec, "x" * 100, Outcome.COMPLETE.value, 1.0)
    assert line.startswith("trial 1000  " + "x" * 48 + "  acc")


def test_trial_line_pads_a_short_summary():
    short = trial_line(Record(number=1, infeasible="a"), "dense", Outcome.INFEASIBLE.value, 0)
    long = trial_line(Record(number=1, infeasible="a"), "d" * 48, Outcome.INFEASIBLE.value, 0)
    assert len(short) == len(long)


def test_trial_line_infeasible():
    rec = Record(number=2, infeasible="max_params exceeded by 10")
    line = trial_line(rec, "dense", Outcome.INFEASIBLE.value, 1.0)
    assert line.endswith("  infeasible: max_params exceeded by 10")
    assert "acc" not in line
    assert trial_line(Record(number=2), "dense", Outcome.INFEASIBLE.value, 1.0).endswith(
        "infeasible: "
    )


def test_trial_line_duplicate():
    line = trial_line(Record(number=5, duplicate_of=3), "dense", Outcome.DUPLICATE.value, 0.1)
    assert line.endswith("  same plan as trial 3: not trained again")


def test_trial_line_pruned_and_failed_give_the_reason():
    pruned = trial_line(Record(number=4, prune_reason="dominated"), "s", Outcome.PRUNED.value, 1.0)
    assert pruned.endswith("  PRUNED: dominated")
    failed = trial_line(
        Record(number=4, fail_reason="ValueError: x"), "s", Outcome.FAILED.value, 1.0
    )
    assert failed.endswith("  FAILED: ValueError: x")
    assert trial_line(Record(number=4), "s", Outcome.FAILED.value, 1.0).endswith("FAILED: ")


def test_trial_line_covers_every_outcome():
    rec = Record(
        number=1,
        quality=0.5,
        params=10,
        compression=2.0,
        latency_ms=1.0,
        infeasible="i",
        duplicate_of=0,
        fail_reason="f",
    )
    lines = {outcome: trial_line(rec, "s", outcome.value, 1.0) for outcome in Outcome}
    assert len(set(lines.values())) == len(Outcome)


# -- workers.cpu_sets / tag ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "cpus"),
    [(1, range(4)), (2, range(4)), (3, range(8)), (4, range(10)), (7, range(7)), (3, [5, 9, 2])],
)
def test_cpu_sets_are_disjoint_contiguous_near_equal_and_use_every_cpu(n, cpus):
    cpus = list(cpus)
    sets = workers.cpu_sets(n, cpus)
    assert len(sets) == n
    assert all(sets)
    flat = [c for s in sets for c in s]
    assert sorted(flat) == sorted(cpus)  # every CPU once: disjoint and complete
    assert flat == sorted(cpus)  # in order: each set a contiguous run of the sorted CPUs
    sizes = [len(s) for s in sets]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the larger sets first


def test_cpu_sets_examples():
    assert workers.cpu_sets(3, range(8)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert workers.cpu_sets(2, [3, 1, 2, 0]) == [[0, 1], [2, 3]]


def test_cpu_sets_with_more_workers_than_cpus_wrap_around():
    assert workers.cpu_sets(5, [4, 6]) == [[4], [6], [4], [6], [4]]
    assert workers.cpu_sets(3, [0]) == [[0], [0], [0]]


def test_cpu_sets_default_to_this_process_affinity():
    import os

    mine = sorted(os.sched_getaffinity(0))
    assert [c for s in workers.cpu_sets(1) for c in s] == mine


def test_tag_in_the_parent(monkeypatch):
    monkeypatch.delenv(workers.ENV_SPAWNED, raising=False)
    assert not workers.is_spawned()
    assert workers.tag(None, 1) == ""
    assert workers.tag(None, 3) == "[w0] "
    assert workers.tag(0, 2) == "[w0] "


def test_tag_in_a_spawned_worker(monkeypatch):
    monkeypatch.setenv(workers.ENV_SPAWNED, "1")
    assert workers.is_spawned()
    assert workers.tag(2, 1) == "[w2] "
    assert workers.tag(1, 4) == "[w1] "
    monkeypatch.setenv(workers.ENV_SPAWNED, "0")
    assert workers.tag(2, 1) == ""


def test_count():
    assert workers.count(3) == 3
    assert workers.count("2") == 2


# -- space: Optuna parameter names ---------------------------------------------------------------
@pytest.mark.parametrize("group", ["fc1", "layer1.0.conv1", "features.3", "a.b.c.d.e"])
@pytest.mark.parametrize("choice", space.CHOICES)
def test_param_name_round_trips(group, choice):
    name = space.param_name(group, choice)
    assert name == f"{group}.{choice}"
    assert space.parse_param(name) == (group, choice)


@pytest.mark.parametrize("layer", ["fc1", "layer1.0.conv1", "layer2.1.downsample.0"])
@pytest.mark.parametrize("side", ["in", "out"])
@pytest.mark.parametrize("order", [2, 3, 10])
def test_modes_param_round_trips(layer, side, order):
    name = space.modes_param(layer, side, order)
    assert name == f"{layer}.{side}_modes.order{order}"  # says what it is: fc1.in_modes.order3
    assert space.parse_param(name) == (layer, f"{side}_modes.order{order}")


def test_group_names_that_look_like_choices():
    # A group whose last part is itself a choice name still splits at the last choice.
    assert space.parse_param("net.rank.order") == ("net.rank", "order")
    name = space.modes_param("x.in_modes", "out", 2)
    assert space.parse_param(name) == ("x.in_modes", "out_modes.order2")


@pytest.mark.parametrize(
    "name", ["lr", "weight_decay", "fc1", "fc1.unknown", ".rank", "fc1.modes2", "fc1.rankx"]
)
def test_parse_param_of_other_parameters(name):
    assert space.parse_param(name) == (None, name)


def test_a_repeated_plan_is_never_offered_as_a_best_trial():
    """Optuna (and optuna-dashboard, which asks it) leaves the untrained repeat off the front."""
    import time as _time
    from types import SimpleNamespace

    from tests.helpers import constructed_study, constructed_trial
    from tnsearch.study.trial import UNTRAINED, _Trial
    from tnsearch.ui import Console

    study = constructed_study([constructed_trial(0.9, 50610, 1.0)])
    earlier = Record.from_trial(study.trials[0])
    runner = _Trial.__new__(_Trial)
    runner.setup = SimpleNamespace(console=Console(), metric="accuracy")
    runner.study, runner.trial, runner.tracker = study, study.ask(), None
    runner.run_id, runner.told, runner.start = None, False, _time.perf_counter()
    runner.rec, runner.plan = Record(number=runner.trial.number), earlier.plan
    assert runner.duplicate(earlier) == Outcome.DUPLICATE
    repeat = study.trials[1]
    assert repeat.values == study.trials[0].values and repeat.user_attrs["trained"] is False
    assert [t.number for t in study.best_trials] == [0]
    assert repeat.constraints == {UNTRAINED: 1.0}


# -- optuna_internals.reseed: a sampler it cannot seed is refused ---------------------------------
UNSEEDED = '''
import numpy as np
import optuna


class Sampler(optuna.samplers.BaseSampler):
    """Random, with its state in a numpy Generator: nothing tnsearch knows how to seed."""

    def __init__(self, seed=None):
        self.generator = np.random.default_rng(seed)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        fresh = optuna.samplers.RandomSampler(int(self.generator.integers(2**31)))
        return fresh.sample_independent(study, trial, name, distribution)
'''


def test_reseed_counts_the_random_states_it_seeded():
    from tnsearch.study.optuna_internals import reseed

    assert reseed(optuna.samplers.TPESampler(seed=1), 5) >= 1
    assert reseed(optuna.samplers.NSGAIISampler(seed=1), 5) >= 2  # its own and its random one
    namespace: dict = {}
    exec(UNSEEDED, namespace)  # noqa: S102 - the test's own source
    assert reseed(namespace["Sampler"](seed=1), 5) == 0


@pytest.mark.slow
def test_a_seeded_study_refuses_a_sampler_it_cannot_seed(tmp_path):
    from tests.helpers import TINY, run_cli

    (tmp_path / "unseeded.py").write_text(UNSEEDED)
    args = [f"root={tmp_path}", *TINY, "trials=1", "sampler=random"]
    done = run_cli([*args, "sampler._target_=unseeded.Sampler"], cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: sampler.seed: Sampler keeps no random state tnsearch can seed")
    ), done.stderr[-2000:]
    assert not (tmp_path / "mlp").exists()
    unseeded = run_cli([*args, "sampler._target_=unseeded.Sampler", "sampler.seed=null"],
                       cwd=tmp_path)  # fmt: skip
    assert unseeded.returncode == 0, unseeded.stderr[-2000:]
