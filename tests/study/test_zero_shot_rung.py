"""The zero-shot rung of the Pareto pruner, end to end: in a warm study, a plan that a finished
trial dominates right after the decomposition is pruned without training; a smaller plan is not."""

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
from tnsearch.space import param_name
from tnsearch.study import record

pytestmark = pytest.mark.slow


def plan_params(**layers: int) -> dict:
    """The Optuna parameters of a plan: each named layer a Tucker of order 1 at that rank."""
    out = {}
    for name in ("fc1", "fc2"):
        out[param_name(name, "tensorize")] = name in layers
        if name in layers:
            out[param_name(name, "topology")] = "tucker"
            out[param_name(name, "order")] = 1
            out[param_name(name, "rank")] = layers[name]
    return out


def test_a_plan_dominated_at_zero_shot_is_pruned_untrained_and_a_smaller_one_trains(tmp_path):
    journal = tmp_path / "mlp" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name="mlp", storage=storage, directions=["maximize", "minimize", "minimize"]
    )
    # A finished warm trial of 10,000 parameters, instant, that lost nothing at zero-shot.
    best = create_trial(
        values=[1.0, 10_000, 1e-6],
        params={"fc1.tensorize": False},
        distributions={"fc1.tensorize": CategoricalDistribution([False, True])},
        user_attrs={
            "params": 10_000,
            "latency_ms": 1e-6,
            "latency_ratio": 1e-6,
            "quality": 1.0,
            "zero_shot_quality": 1.0,
            "trained": True,
            "history": [{"epoch": 0, "val_acc": 1.0, "train_loss": 0.1}],
        },
    )
    study.add_trial(best)
    study.enqueue_trial(plan_params(fc1=2))  # ~31,000 params (fc2 stays dense): dominated
    study.enqueue_trial(plan_params(fc1=2, fc2=2))  # ~3,000 params: fewer, so never dominated

    # Warm (pretrain.epochs), one epoch per trial: the epoch rungs are off, the zero-shot rung
    # is on by default (pruning.zero_shot=null).
    overrides = [f"root={tmp_path}", "trials=2", *TINY, "pretrain.epochs=1", "sampler=random"]
    assert run_search(compose_cfg(overrides)) == 0

    study = optuna.load_study(study_name="mlp", storage=storage)
    by_number = {r.number: r for r in record.records(study)}
    pruned, kept = by_number[1], by_number[2]  # the enqueued plans, in their order
    assert record.counted(study) == 2  # the best and the kept one: the pruned plan does not count

    assert pruned.state == TrialState.PRUNED
    assert pruned.prune_reason.startswith("dominated at zero-shot by trial 0: quality ")
    assert pruned.trained is False and not pruned.counts
    assert 0.0 <= pruned.zero_shot_quality < 1.0 - 0.03  # kept, though never trained
    assert not pruned.history and pruned.quality is None
    assert not (tmp_path / "mlp" / "trials" / "1" / "weights.pt").exists()

    assert kept.state == TrialState.COMPLETE and kept.is_trained
    assert kept.params < 10_000 < pruned.params
    assert kept.zero_shot_quality is not None and len(kept.history) == 1
    assert (tmp_path / "mlp" / "trials" / "2" / "weights.pt").exists()

    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(pruned.mlflow_run_id)
    assert run.data.tags["state"] == "PRUNED"
    assert run.data.tags["prune_reason"].startswith("dominated at zero-shot by trial 0")
    assert run.data.metrics["zero_shot_accuracy"] == pytest.approx(pruned.zero_shot_quality)
    assert "train_loss" not in run.data.metrics
