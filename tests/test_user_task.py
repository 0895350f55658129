"""`task=lightning`: the user's own LightningModule wraps the model and logs the metric."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import FAST, compose_cfg
from tnsearch.config import ConfigError

HERE = "tests.test_user_task"


class F1Module(pl.LightningModule):
    """A user's module: cross-entropy, and the macro F1 logged as val_f1 / test_f1."""

    def __init__(self, model, optimizer, classes: int = 10):
        super().__init__()
        self.model, self.make_optimizer, self.classes = model, optimizer, classes
        self.seen = []

    def training_step(self, batch, index):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def _f1(self, batch):
        x, y = batch
        guess = self.model(x).argmax(-1)
        scores = []
        for c in range(self.classes):
            tp = ((guess == c) & (y == c)).sum()
            fp = ((guess == c) & (y != c)).sum()
            fn = ((guess != c) & (y == c)).sum()
            scores.append(2 * tp / torch.clamp(2 * tp + fp + fn, min=1))
        return torch.stack(scores).float().mean()

    def validation_step(self, batch, index):
        self.log("val_f1", self._f1(batch), on_epoch=True)

    def test_step(self, batch, index):
        self.log("test_f1", self._f1(batch), on_epoch=True)

    def configure_optimizers(self):
        return self.make_optimizer(self.model.parameters())


class Silent(F1Module):
    def validation_step(self, batch, index):
        return None


BASE = [
    "study=mlp",
    "pretrain.epochs=0",
    "data=digits",
    "epochs=1",
    "space.orders=[1,2]",
    "task=lightning",
    *FAST,
]


def test_a_module_that_never_logs_the_metric_is_one_line(tmp_path):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg(
        [f"root={tmp_path}/r", *BASE, f"task._target_={HERE}.Silent", "task.metric=val_f1"]
    )
    with pytest.raises(ConfigError, match=r"^task.metric: the module logged no 'val_f1'"):
        run_search(cfg)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_user_module_s_metric_is_the_study_s_quality(tmp_path):
    import optuna

    from tnsearch.__main__ import run as run_search
    from tnsearch.study import record, storage

    overrides = [
        f"root={tmp_path}",
        *BASE,
        f"task._target_={HERE}.F1Module",
        "task.metric=val_f1",
        "trials=3",
        "tracking.enabled=false",
    ]
    assert run_search(compose_cfg(overrides)) == 0
    journal = str(tmp_path / "mlp" / "optuna.journal")
    study = optuna.load_study(study_name="mlp", storage=storage.journal(journal))
    assert study.metric_names == ["val_f1", "param_count", "latency_ratio"]
    done = record.trained(study)
    assert len(done) == 3
    for r in done:
        assert 0.0 <= r.quality <= 1.0 and r.test_quality is not None
        assert all(point["train_loss"] == point["train_loss"] for point in r.history)  # not NaN
