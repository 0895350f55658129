"""`model=custom`: any importable factory; the data's facts go where its signature names them."""

from __future__ import annotations

import pytest
from torch import nn

from tests.helpers import FAST, compose_cfg
from tnsearch.config import ConfigError

HERE = "tests.test_custom_model"


def build(num_classes: int, image_size: int, width: int = 16) -> nn.Module:
    """A user's factory: it names two of the data's facts (not in_channels)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(image_size * image_size, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


class Takes(nn.Module):
    """A user's class taking whatever it is given."""

    def __init__(self, **facts) -> None:
        super().__init__()
        self.facts = facts
        self.fc = nn.Linear(facts["image_size"] ** 2 * facts["in_channels"], facts["num_classes"])


def broken(num_classes: int) -> nn.Module:
    raise ValueError("width must be even")


def not_a_module(num_classes: int):
    return "a string"


def test_facts_are_passed_where_the_signature_names_them():
    from tnsearch.plan import build_dense, make

    inputs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    model = build_dense(
        make({"_target_": f"{HERE}.build", "width": 24}, inputs, {}), trusted=[f"{HERE}.build"]
    )
    assert model[1].in_features == 64 and model[1].out_features == 24
    taken = build_dense(make({"_target_": f"{HERE}.Takes"}, inputs, {}), trusted=[f"{HERE}.Takes"])
    assert taken.facts == inputs  # **kwargs: every fact


@pytest.mark.parametrize(
    ("target", "key", "words"),
    [
        ("nope.missing", "model._target_", "cannot import 'nope.missing'"),
        (f"{HERE}.broken", "model", "width must be even"),
        (f"{HERE}.not_a_module", "model._target_", "returned str, not a Module"),
    ],
)
def test_a_bad_factory_is_one_line_naming_the_key(tmp_path, target, key, words):
    from tnsearch.__main__ import run as run_search

    cfg = compose_cfg(
        [f"root={tmp_path}", "model=custom", f"model._target_={target}", "data=digits"]
    )
    with pytest.raises(ConfigError) as info:
        run_search(cfg)
    assert str(info.value).startswith(f"{key}: ") and words in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_model_custom_needs_a_target(tmp_path):
    from tnsearch.__main__ import run as run_search

    with pytest.raises(ConfigError, match=r"^model._target_: is required"):
        run_search(compose_cfg([f"root={tmp_path}", "model=custom", "data=digits"]))


@pytest.mark.slow
def test_a_study_of_a_user_factory_exports_and_loads(tmp_path, monkeypatch):
    import sys

    import torch

    import tnsearch
    from tnsearch import export as export_cli
    from tnsearch.__main__ import run as run_search
    from tnsearch.plan import UntrustedModelError

    overrides = [
        f"root={tmp_path}",
        "name=mine",
        "model=custom",
        f"model._target_={HERE}.build",
        "+model.width=32",
        "data=digits",
        "trials=3",
        "epochs=1",
        "space.min_size=64",
        "space.orders=[1,2]",
        "tracking.enabled=false",
        *FAST,
    ]
    assert run_search(compose_cfg(overrides)) == 0
    out = tmp_path / "pkg"
    monkeypatch.setattr(
        sys, "argv", ["tnsearch.export", *overrides, "trial=best-accuracy", f"out={out}"]
    )
    export_cli.main()
    with pytest.raises(UntrustedModelError, match=f"{HERE}.build"):
        tnsearch.load(out)  # a plan naming user code is refused unless the caller trusts it
    model = tnsearch.load(out, trusted=[f"{HERE}.build"])
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def blobs_datamodule(seed: int = 0, batch_size: int = 32):
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class BlobData(pl.LightningDataModule):
        num_classes = 4
        vocab_size = 0  # a fact nobody asks for

        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            centers = torch.randn(4, 16, generator=g) * 3
            y = torch.randint(0, 4, (600,), generator=g)
            x = centers[y] + torch.randn(600, 16, generator=g)
            self.parts = {"train": (x[:400], y[:400]), "val": (x[400:500], y[400:500])}
            self.parts["test"] = (x[500:], y[500:])

        def _loader(self, split, shuffle=False):
            return DataLoader(
                TensorDataset(*self.parts[split]), batch_size=batch_size, shuffle=shuffle
            )

        def train_dataloader(self):
            return self._loader("train", shuffle=True)

        def val_dataloader(self):
            return self._loader("val")

        def test_dataloader(self):
            return self._loader("test")

    return BlobData()


def blob_net(num_classes: int, width: int = 64) -> nn.Module:
    return nn.Sequential(
        nn.Linear(16, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


@pytest.mark.slow
def test_a_user_factory_on_a_user_lightning_datamodule(tmp_path):
    import optuna

    from tnsearch.__main__ import run as run_search
    from tnsearch.study import record, storage

    overrides = [
        f"root={tmp_path}",
        "name=blobs",
        "model=custom",
        f"model._target_={HERE}.blob_net",
        "trials=3",
        "epochs=2",
        "space.min_size=1024",
        "space.orders=[2]",
        "tracking.enabled=false",
        *FAST,
    ]
    cfg = compose_cfg(overrides)
    from omegaconf import OmegaConf

    OmegaConf.set_struct(cfg, False)
    cfg.data = {"_target_": f"{HERE}.blobs_datamodule", "seed": 0}  # nothing of tnsearch's
    assert run_search(cfg) == 0
    study = optuna.load_study(
        study_name="blobs", storage=storage.journal(str(tmp_path / "blobs" / "optuna.journal"))
    )
    done = record.trained(study)
    assert len(done) == 3 and record.dense(done).quality > 0.9  # blobs are easy
    assert record.dense(done).plan.inputs == {"num_classes": 4, "vocab_size": 0}
