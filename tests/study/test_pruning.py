"""Pareto-aware early stopping: dominated trials stop, others never do."""

from __future__ import annotations

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from tests.helpers import TINY, compose_cfg
from tnsearch.__main__ import run as run_search
from tnsearch.cli import resolve
from tnsearch.config import ConfigError
from tnsearch.study import pruning
from tnsearch.study.pruning import ZERO_SHOT, ParetoPruner
from tnsearch.study.record import Record

OBJECTIVES = ("accuracy", "params", "latency")


def finished(number, params, latency, curve):
    trial = create_trial(
        values=[curve[-1], params, latency],
        user_attrs={
            "params": params,
            "latency_ratio": latency,
            "accuracy": curve[-1],
            "trained": True,
            "history": [{"epoch": i, "val_acc": a, "train_loss": 1.0} for i, a in enumerate(curve)],
        },
    )
    trial.number = number
    return trial


def test_dominated_trial_is_pruned_at_the_first_allowed_epoch():
    best = finished(0, params=1000, latency=1.0, curve=[0.80, 0.90, 0.95])
    pruner = ParetoPruner(OBJECTIVES, margin=0.01, min_epochs=2)
    worse = Record(params=2000, latency_ratio=2.0)
    done = [Record.from_trial(best)]
    assert pruner.dominator(done, worse, epoch=0, quality=0.50) is None  # warm-up
    reason = pruner.dominator(done, worse, epoch=1, quality=0.70)
    assert reason and "trial 0" in reason and "epoch 2" in reason


@pytest.mark.parametrize(
    ("attrs", "acc"),
    [
        (Record(params=999, latency_ratio=2.0), 0.1),  # fewer parameters
        (Record(params=2000, latency_ratio=0.5), 0.1),  # faster
        (Record(params=2000, latency_ratio=2.0), None),  # always within the margin
    ],
)
def test_a_trial_better_on_any_objective_is_never_pruned(attrs, acc):
    curve = [0.80, 0.90, 0.95]
    best = finished(0, params=1000, latency=1.0, curve=curve)
    pruner = ParetoPruner(OBJECTIVES, margin=0.01, min_epochs=1)
    for epoch in range(3):
        mine = curve[epoch] - 0.005 if acc is None else acc
        assert pruner.dominator([Record.from_trial(best)], attrs, epoch=epoch, quality=mine) is None


def test_objectives_not_searched_do_not_protect_a_trial():
    best = finished(0, params=1000, latency=1.0, curve=[0.9])
    pruner = ParetoPruner(("accuracy", "params"), margin=0.0, min_epochs=1)
    # Faster, but latency is not an objective of this study.
    assert pruner.dominator(
        [Record.from_trial(best)], Record(params=2000, latency_ratio=0.1), 0, 0.5
    )


# -- the zero-shot rung ------------------------------------------------------------------------
def warm_finished(number, params, latency, zero_shot, final=0.95):
    """A finished warm trial: its zero-shot quality, then one epoch of healing."""
    return Record(
        number=number,
        state=TrialState.COMPLETE,
        trained=True,
        params=params,
        latency_ratio=latency,
        quality=final,
        zero_shot_quality=zero_shot,
        history=({"epoch": 0, "val_quality": final, "train_loss": 1.0},),
    )


def test_a_plan_dominated_at_zero_shot_is_pruned_whatever_the_warm_up():
    done = [warm_finished(3, params=1000, latency=1.0, zero_shot=0.80)]
    pruner = ParetoPruner(OBJECTIVES, margin=0.03, min_epochs=5, zero_shot=True)
    mine = Record(params=2000, latency_ratio=2.0)
    reason = pruner.dominator(done, mine, ZERO_SHOT, 0.70)
    assert reason is not None
    assert reason.startswith("dominated at zero-shot by trial 3: quality 0.7000 < 0.8000")
    assert pruner.dominator(done, mine, ZERO_SHOT, 0.78) is None  # within the margin
    assert pruner.dominator(done, mine, 0, 0.10) is None  # the epoch rungs' warm-up still holds


@pytest.mark.parametrize(
    "mine", [Record(params=999, latency_ratio=2.0), Record(params=2000, latency_ratio=0.5)]
)
def test_a_plan_smaller_or_faster_is_never_pruned_at_zero_shot(mine):
    done = [warm_finished(0, params=1000, latency=1.0, zero_shot=0.99)]
    pruner = ParetoPruner(OBJECTIVES, margin=0.0, zero_shot=True)
    assert pruner.dominator(done, mine, ZERO_SHOT, 0.0) is None


def test_only_finished_trained_trials_with_a_zero_shot_quality_dominate_at_zero_shot():
    pruner = ParetoPruner(OBJECTIVES, margin=0.0, zero_shot=True)
    mine = Record(params=2000, latency_ratio=2.0)
    dense = Record(number=0, state=TrialState.COMPLETE, params=1, latency_ratio=0.1, quality=1.0)
    repeat = warm_finished(1, 1, 0.1, zero_shot=1.0).replace(trained=False, duplicate_of=2)
    pruned = warm_finished(2, 1, 0.1, zero_shot=1.0).replace(state=TrialState.PRUNED)
    assert pruner.dominator([dense, repeat, pruned], mine, ZERO_SHOT, 0.1) is None
    # The dense trial's final quality still dominates after an epoch.
    assert "by trial 0 after epoch 1" in pruner.dominator([dense], mine, 0, 0.1)


def test_a_pruner_judges_only_its_rungs():
    done = [warm_finished(0, params=1000, latency=1.0, zero_shot=0.9)]
    mine = Record(params=2000, latency_ratio=2.0)
    epochs_only = ParetoPruner(OBJECTIVES, margin=0.0)
    assert epochs_only.dominator(done, mine, ZERO_SHOT, 0.1) is None
    assert epochs_only.dominator(done, mine, 0, 0.1) is not None
    zero_shot_only = ParetoPruner(OBJECTIVES, margin=0.0, each_epoch=False, zero_shot=True)
    assert zero_shot_only.dominator(done, mine, 0, 0.1) is None
    assert zero_shot_only.dominator(done, mine, ZERO_SHOT, 0.1) is not None


@pytest.mark.parametrize(
    ("overrides", "warm", "rungs"),
    [
        (["epochs=1"], False, None),  # cold, too short for the epoch rungs: no pruner
        (["epochs=1"], True, (False, True)),  # warm: the zero-shot rung alone
        (["epochs=3"], False, (True, False)),
        (["epochs=3"], True, (True, True)),
        (["epochs=3", "pruning.enabled=false"], True, None),  # off means off
        (["epochs=1", "pruning.zero_shot=false"], True, None),
        (["epochs=3", "pruning.enabled=false", "pruning.zero_shot=true"], True, (False, True)),
    ],
)
def test_from_config_judges_the_rungs_asked_for(overrides, warm, rungs):
    found = pruning.from_config(resolve(compose_cfg([*TINY, *overrides])), warm=warm)
    assert (found and (found.each_epoch, found.zero_shot)) == rungs


def test_from_config_refuses_a_zero_shot_rung_it_cannot_judge():
    cfg = resolve(compose_cfg([*TINY, "pruning.zero_shot=true"]))
    with pytest.raises(ConfigError, match=r"^pruning\.zero_shot: needs trained weights"):
        pruning.from_config(cfg, warm=False)
    with pytest.raises(ConfigError, match=r"^pruning\.zero_shot: the pruner needs a quality"):
        pruning.from_config(cfg, warm=True, maximize=False)
    assert (
        pruning.from_config(
            cfg.but(pruning=cfg.pruning.but(zero_shot=None)), warm=True, maximize=False
        )
        is None
    )


@pytest.mark.slow
def test_pruned_trials_show_in_optuna_and_mlflow(tmp_path):
    # A study that already holds an unbeatable trial: tiny, instant and perfect.
    journal = tmp_path / "mlp" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name="mlp", storage=storage, directions=["maximize", "minimize", "minimize"]
    )
    best = finished(0, params=1, latency=1e-6, curve=[1.0, 1.0, 1.0])
    best.params = {"fc1.tensorize": False}
    best.distributions = {"fc1.tensorize": CategoricalDistribution([False, True])}
    study.add_trial(best)
    run_search(
        compose_cfg([f"root={tmp_path}", "trials=3", *TINY, "epochs=3", "pruning.min_epochs=1"])
    )
    study = optuna.load_study(study_name="mlp", storage=storage)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(pruned) == 2
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for t in pruned:
        assert "dominated by trial 0 after epoch 1" in t.user_attrs["prune_reason"]
        assert len(t.user_attrs["history"]) == 1
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.tags["state"] == "PRUNED"
        assert "dominated" in run.data.tags["prune_reason"]


@pytest.mark.parametrize("noisy", ["mine", "theirs"])
def test_a_noisy_latency_proves_no_dominance(noisy):
    """A latency measured as noisy may be wrong either way: the pruner does not prune on it."""
    best = finished(0, params=1000, latency=1.0, curve=[0.80, 0.90, 0.95])
    pruner = ParetoPruner(OBJECTIVES, margin=0.01, min_epochs=1)
    done = [Record.from_trial(best)]
    mine = Record(params=2000, latency_ratio=2.0)
    assert pruner.dominator(done, mine, epoch=0, quality=0.5)  # quiet: dominated
    if noisy == "mine":
        mine = mine.replace(latency_noisy=True)
    else:
        done = [done[0].replace(latency_noisy=True)]
    assert pruner.dominator(done, mine, epoch=0, quality=0.5) is None
