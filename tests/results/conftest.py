"""Fixtures of the package tests (tests/results/packages.py builds them)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def bert(tmp_path_factory):
    """A tiny BERT's text package (`packages.bert_package`): `out`, `folder` (the Hugging Face
    folder it came from), `data`, `root`. Tests that change it work on a copy."""
    pytest.importorskip("transformers")
    from tests.results.packages import bert_package

    root = tmp_path_factory.mktemp("bert-package")
    out, folder, data = bert_package(root)
    return SimpleNamespace(out=out, folder=folder, data=data, root=root)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """An MLP of the digits (fc1 an MPO, default initialization, not trained) exported with
    its data (`timed=False`: no latency in its README): `out`, `data`, `root`."""
    import torch

    from tnsearch import plan as plans
    from tnsearch.data import DigitsDataModule
    from tnsearch.results.export import write_package
    from tnsearch.study.record import Record

    root = tmp_path_factory.mktemp("digits-package")
    data = DigitsDataModule(batch_size=64, seed=0)
    data.setup()
    fc1 = {"topology": "mpo", "order": 2, "rank": 4, "in_modes": [8, 8], "out_modes": [4, 8]}
    inputs = {"in_channels": 1, "image_size": 8, "num_classes": 10}
    plan = plans.make({"_target_": "tnsearch.models.MLP", "hidden": [32]}, inputs, {"fc1": fc1})
    torch.manual_seed(0)
    torch.save(plans.build(plan).state_dict(), root / "weights.pt")
    trial = Record(number=1, plan=plan, quality=0.5, params=1000, compression=2.0)
    out = write_package(
        trial, root / "weights.pt", root / "pkg", study_name="d", data=data, timed=False
    )
    return SimpleNamespace(out=out, data=data, root=root)
