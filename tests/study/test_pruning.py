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
from tnsearch.study.pruning import ParetoPruner
from tnsearch.study.record import Record

OBJECTIVES = ("accuracy", "params", "latency")


def finished(number, params, latency, curve):
    trial = create_trial(
        values=[curve[-1], params, latency],
        user_attrs={
            "params": params,
            "latency_ms": latency,
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
    worse = Record(params=2000, latency_ms=2.0)
    done = [Record.from_trial(best)]
    assert pruner.dominator(done, worse, epoch=0, val_acc=0.50) is None  # warm-up
    reason = pruner.dominator(done, worse, epoch=1, val_acc=0.70)
    assert reason and "trial 0" in reason and "epoch 2" in reason


@pytest.mark.parametrize(
    ("attrs", "acc"),
    [
        (Record(params=999, latency_ms=2.0), 0.1),  # fewer parameters
        (Record(params=2000, latency_ms=0.5), 0.1),  # faster
        (Record(params=2000, latency_ms=2.0), None),  # always within the margin
    ],
)
def test_a_trial_better_on_any_objective_is_never_pruned(attrs, acc):
    curve = [0.80, 0.90, 0.95]
    best = finished(0, params=1000, latency=1.0, curve=curve)
    pruner = ParetoPruner(OBJECTIVES, margin=0.01, min_epochs=1)
    for epoch in range(3):
        mine = curve[epoch] - 0.005 if acc is None else acc
        assert pruner.dominator([Record.from_trial(best)], attrs, epoch=epoch, val_acc=mine) is None


def test_objectives_not_searched_do_not_protect_a_trial():
    best = finished(0, params=1000, latency=1.0, curve=[0.9])
    pruner = ParetoPruner(("accuracy", "params"), margin=0.0, min_epochs=1)
    # Faster, but latency is not an objective of this study.
    assert pruner.dominator([Record.from_trial(best)], Record(params=2000, latency_ms=0.1), 0, 0.5)


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
