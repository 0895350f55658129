"""Warm start: trials start from a trained dense model's decomposition."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.helpers import FAST, compose_cfg, run_cli
from tnsearch import models
from tnsearch.__main__ import run as run_search
from tnsearch.config import ConfigError
from tnsearch.study.warmstart import load_checkpoint

#: (cold unless a test says otherwise after it: the mlp preset pretrains by default)
MLP = [
    "study=mlp",
    "pretrain.epochs=0",
    "data=mnist5k",
    "sampler=random",
    "space.orders=[2]",
    *FAST,
]


def trials_of(root, name):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(root / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage).trials


@pytest.mark.slow
def test_pretrained_dense_mlp_then_decomposed_trials(tmp_path):
    # 1. Pretrain a dense MLP for 2 epochs inside a study whose trials are all exact
    #    decompositions (Tucker at the clipped maximal rank): zero-shot = dense accuracy.
    run_search(
        compose_cfg(
            [
                f"root={tmp_path}",
                "name=exact",
                "trials=3",
                "epochs=1",
                *MLP,
                "pretrain.epochs=2",
                "space.topologies=[tucker]",
                "space.ranks=[100000]",
            ]
        )
    )
    trials = trials_of(tmp_path, "exact")
    dense = trials[0]
    assert dense.user_attrs["plan"]["layers"] == {} and dense.user_attrs["history"] == []
    dense_acc = dense.user_attrs["quality"]
    assert dense_acc > 0.8  # the trained model, evaluated, not retrained
    tensorized = [t for t in trials if t.user_attrs["plan"]["layers"]]
    assert tensorized
    for t in tensorized:
        assert t.user_attrs["zero_shot_quality"] == pytest.approx(dense_acc, abs=1e-9)

    # 2. The same trained weights as a checkpoint; low ranks: zero-shot well above chance.
    checkpoint = tmp_path / "exact" / "pretrained.pt"
    run_search(
        compose_cfg(
            [
                f"root={tmp_path}",
                "name=low",
                "trials=4",
                "epochs=1",
                f"model.checkpoint={checkpoint}",
                "space.ranks=[8,16]",
                *MLP,
            ]
        )
    )
    trials = trials_of(tmp_path, "low")
    assert trials[0].user_attrs["quality"] == pytest.approx(dense_acc)
    low = [t for t in trials if t.user_attrs["plan"]["layers"] and t.state == TrialState.COMPLETE]
    assert low
    for t in low:
        assert t.user_attrs["zero_shot_quality"] > 0.3  # chance is 0.1
        assert t.user_attrs["compression"] > 1.0


def mlp():
    return models.MLP(in_channels=1, image_size=28, num_classes=10)


def test_checkpoint_formats_and_mismatch(tmp_path):
    net = mlp()
    plain = tmp_path / "plain.pt"
    torch.save(net.state_dict(), plain)
    assert load_checkpoint(plain, mlp()).keys() == net.state_dict().keys()
    lightning = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3},
        lightning,
    )
    loaded = load_checkpoint(lightning, mlp())
    torch.testing.assert_close(loaded["fc1.weight"], net.state_dict()["fc1.weight"])

    other = tmp_path / "other.pt"
    torch.save(
        models.MLP(in_channels=1, image_size=28, num_classes=10, hidden=(200, 100)).state_dict(),
        other,
    )
    with pytest.raises(ConfigError, match=r"^model\.checkpoint: .* key 'fc1\.weight' has shape"):
        load_checkpoint(other, mlp())
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in net.state_dict().items() if k != "fc3.bias"}, missing)
    with pytest.raises(ConfigError, match=r"missing key 'fc3\.bias'"):
        load_checkpoint(missing, mlp())


@pytest.mark.slow
def test_mismatched_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "lenet.pt"
    torch.save(models.LeNet5(in_channels=1, image_size=28, num_classes=10).state_dict(), bad)
    done = run_cli([f"root={tmp_path}/studies", f"model.checkpoint={bad}", *MLP], cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.checkpoint: ")
    assert not (tmp_path / "studies").exists()


@pytest.mark.slow
def test_two_workers_share_one_pretraining(tmp_path):
    done = run_cli(
        [f"root={tmp_path}", "trials=3", "workers=2", *MLP, "pretrain.epochs=1", "epochs=1"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("pretraining the dense model") == 1
    assert "[w1] worker" in done.stdout
    saved = torch.load(tmp_path / "mlp" / "pretrained.pt", weights_only=True)
    assert saved["epochs"] == 1
    assert not list((tmp_path / "mlp").glob("*.tmp"))


def test_zero_shot_accuracy_is_handed_on_before_training_so_a_pruned_trial_keeps_it():
    import functools

    from tnsearch.data import DigitsDataModule
    from tnsearch.measure import training

    torch.manual_seed(0)
    module = training.Classifier(
        models.MLP(in_channels=1, image_size=8, num_classes=10, hidden=[16]),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05),
    )
    seen = []

    def prune(metrics):  # the pruner stops the trial after its first epoch
        raise optuna.TrialPruned("dominated")

    with pytest.raises(optuna.TrialPruned):
        training.fit(
            module,
            DigitsDataModule(batch_size=64),
            epochs=2,
            trainer_cfg={"accelerator": "cpu"},
            on_epoch=prune,
            on_zero_shot=seen.append,
        )
    assert len(seen) == 1 and 0.0 <= seen[0] <= 1.0
