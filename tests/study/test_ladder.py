"""A warm study starts where one-shot compression ends: its first trials after the dense one
are the budget plans of the profile (`search.budgets`); `space.from_profile` narrows the space."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from tests.helpers import TINY, compose_cfg
from tnsearch.__main__ import run as run_search
from tnsearch.study import record

pytestmark = pytest.mark.slow

SMALL = ["pretrain.epochs=2", "space.ranks=[2,8]", "space.topologies=[mpo,tucker]",
         "profile.steps=5", "decompose.steps=10", "tracking.enabled=false"]  # fmt: skip


def study_of(root) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(root / "mlp" / "optuna.journal")))
    return optuna.load_study(study_name="mlp", storage=storage)


def test_the_budget_plans_come_right_after_the_dense_trial(tmp_path):
    overrides = [f"root={tmp_path}", "trials=3", *TINY, *SMALL, "search.budgets=[0.5,0.1]"]
    assert run_search(compose_cfg(overrides)) == 0
    study = study_of(tmp_path)
    assert record.ladder(study) == [0.5, 0.1]
    trials = record.records(study)
    dense = trials[0].params
    assert trials[0].plan.layers == {}
    assert trials[1].params <= 0.5 * dense and trials[1].plan.layers
    assert trials[2].params <= 0.1 * dense
    assert all(t.zero_shot_quality is not None for t in trials[1:3])
    # continued, the study does not enqueue the ladder again
    assert run_search(compose_cfg([*overrides[:1], "trials=4", *overrides[2:]])) == 0
    again = record.records(study_of(tmp_path))
    assert len([t for t in again if t.params == trials[2].params]) == 1


def test_from_profile_drops_the_hopeless_options(tmp_path):
    from tnsearch.study import loop, sensitivity, setup

    cfg = compose_cfg(
        [f"root={tmp_path}", *TINY, *SMALL, "space.from_profile=true", "space.hopeless=0.02"]
    )
    from tnsearch.cli import resolve

    ready = setup.prepare(resolve(cfg))
    loop.ensure_pretrained(ready)
    before = ready.space
    found, _ = sensitivity.profile(ready)
    sensitivity.narrow(ready)
    after = ready.space
    keep = sensitivity.hopeless(ready, found)
    assert sum(len(v) for v in keep.values()) < len(found.entries)  # some were hopeless
    for group in after.groups:
        assert set(after.group_ranks[group]) <= set(before.ranks)
        for topology, order, rank in keep[group]:
            assert order in after.orders[group]
            assert topology in after.group_topologies[group] and rank in after.group_ranks[group]
    for group, options in keep.items():
        assert (group in after.groups) == bool(options)
