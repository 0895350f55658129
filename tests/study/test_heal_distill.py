"""`heal.distill=true`: the trained dense model teaches each trial of a classification study."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tests.helpers import TINY, compose_cfg, run_cli
from tnsearch import plan as plans
from tnsearch.__main__ import run as run_search
from tnsearch.cli import resolve
from tnsearch.config import ConfigError
from tnsearch.measure.distill import DistilledClassifier
from tnsearch.study import record
from tnsearch.study.setup import prepare

WARM = [*TINY, "pretrain.epochs=1"]
HERE = "tests.test_user_task"

BAD = [
    (["heal.distill=true"], "heal.distill"),  # cold: nothing trained to teach
    ([*WARM, "heal.distill=true", "task=distill"], "heal.distill"),  # distills already
    (
        [
            *WARM,
            "heal.distill=true",
            "task=lightning",
            "task.metric=val_f1",
            f"task._target_={HERE}.F1Module",
        ],
        "heal.distill",
    ),
    ([*WARM, "heal.distill=true", "heal.temperature=0"], "heal.temperature"),
    ([*WARM, "heal.distill=true", "heal.temperature=-1.5"], "heal.temperature"),
    ([*WARM, "heal.alpha=1.5"], "heal.alpha"),
    ([*WARM, "heal.alpha=-0.1"], "heal.alpha"),
    ([*WARM, "heal.distill=yes"], "heal.distill"),
    (
        [*WARM, "heal.distill=true", "heal.features=true", "trainer.compile=default"],
        "heal.features",
    ),
    ([*WARM, "pruning.zero_shot=1"], "pruning.zero_shot"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD, ids=[" ".join(o[-2:]) for o, _ in BAD])
def test_bad_heal_input_names_the_key_and_writes_nothing(overrides, key, tmp_path):
    root = tmp_path / "studies"
    with pytest.raises(ConfigError) as info:
        run_search(compose_cfg([f"root={root}", *TINY, *overrides]))
    assert str(info.value).startswith(f"{key}: ")
    assert "\n" not in str(info.value)
    assert not root.exists()


@pytest.mark.slow
def test_cli_heal_distill_without_trained_weights_is_one_line_and_exit_2(tmp_path):
    done = run_cli([f"root={tmp_path}/studies", *TINY, "heal.distill=true"], cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: heal.distill: needs a trained dense model"), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_the_task_of_a_distilling_study_is_taught_by_the_trained_dense_model(tmp_path):
    cfg = resolve(
        compose_cfg(
            [f"root={tmp_path}", *WARM, "heal.distill=true", "heal.temperature=3", "heal.alpha=0.8"]
        )
    )
    setup = prepare(cfg)
    assert setup.pretrained is None  # pretrain.epochs: the loop trains it later
    dense = plans.build_dense(plans.make(cfg.model, setup.inputs, {}))
    setup.pretrained = {k: torch.full_like(v, 0.01) for k, v in dense.state_dict().items()}
    student = plans.build_dense(plans.make(cfg.model, setup.inputs, {}))
    task = setup.task(student, torch.optim.SGD)
    assert type(task) is DistilledClassifier and task.model is student
    assert (task.temperature, task.alpha, task.feature_layer) == (3.0, 0.8, None)
    assert all(torch.all(v == 0.01) for v in task.teacher.state_dict().values())
    assert not task.teacher.training
    assert setup.metric == "accuracy"
    off = prepare(resolve(compose_cfg([f"root={tmp_path}", *WARM])))
    off.pretrained = setup.pretrained
    assert type(off.task(student, torch.optim.SGD)).__name__ == "Classifier"


@pytest.mark.slow
def test_a_warm_study_heals_every_trial_by_distillation(tmp_path):
    overrides = [
        f"root={tmp_path}",
        *WARM,
        "trials=2",
        "heal.distill=true",
        "heal.features=true",
        "sampler=random",
    ]
    assert run_search(compose_cfg(overrides)) == 0
    journal = JournalFileBackend(str(tmp_path / "mlp" / "optuna.journal"))
    study = optuna.load_study(study_name="mlp", storage=JournalStorage(journal))
    done = [r for r in record.records(study) if r.state == TrialState.COMPLETE and r.is_trained]
    assert len(done) == 2 and done[0].is_dense
    healed = [r for r in done if r.layers]
    assert healed, [r.plan for r in record.records(study)]
    for r in healed:
        assert 0.0 <= r.zero_shot_quality <= 1.0 and 0.0 <= r.quality <= 1.0
        assert 0.0 <= r.test_quality <= 1.0  # the accuracy, on val and test as ever
        assert len(r.history) == 1 and r.history[0]["train_loss"] > 0.0
