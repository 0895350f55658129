"""Repeated plans (`tnsearch.study.duplicates`): one plan is trained once per study."""

from __future__ import annotations

import threading
import time

import optuna
from optuna.trial import TrialState

from tnsearch.plan import Plan
from tnsearch.study import duplicates, liveness, record
from tnsearch.study.record import Record
from tnsearch.ui import Console

PLAN = {"layers": {"fc1": {"topology": "mpo", "rank": 4}}}


def test_same_plan_is_the_same_layers_and_training_choices_of_another_trial():
    mine = Record(number=2, plan=PLAN, training_choices={"lr": 0.1})
    assert duplicates.same_plan(mine, mine.replace(number=1))
    assert not duplicates.same_plan(mine, mine)  # itself
    assert not duplicates.same_plan(mine, mine.replace(number=1, training_choices={"lr": 0.2}))
    assert not duplicates.same_plan(mine, mine.replace(number=1, plan={"layers": {}}))
    assert not duplicates.same_plan(mine, Record(number=1))  # no plan yet


def test_a_repeat_takes_the_earlier_trials_figures_untrained():
    earlier = Record(
        number=3, state=TrialState.COMPLETE, plan=PLAN, params=10, compression=5.0, quality=0.9,
        latency_ratio=0.5, latency_ms=1.0, latency_device="cpu", trained=True,
    )  # fmt: skip
    found = Record(number=4).replace(**duplicates.copied(earlier))
    assert (found.quality, found.params, found.latency_ratio) == (0.9, 10, 0.5)
    assert found.trained is False and found.duplicate_of == 3 and found.plan == Plan.of(PLAN)


def test_a_plan_running_on_another_worker_counts_as_taken():
    study = optuna.create_study()
    twin = study.ask()
    record.write_fields(
        twin, plan=PLAN, training_choices={}, worker=liveness.worker_id(), heartbeat=time.time()
    )
    mine = Record(number=study.ask().number, plan=PLAN, training_choices={})

    def finish():
        time.sleep(0.5)
        record.write(twin, Record(trained=True, quality=0.9, params=10, latency_ms=1.0))
        study.tell(twin, 0.9)

    threading.Thread(target=finish).start()
    started = time.monotonic()
    found = duplicates.find(study, mine, Console(), None, poll_s=0.05)
    assert found is not None and found.number == twin.number
    assert time.monotonic() - started >= 0.4  # it waited for the twin, not trained the plan
