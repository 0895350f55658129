"""Calibration: layer inputs recorded by hooks, data-aware plans, batch norms re-estimated."""

import pytest
import torch
from torch import nn

from tests.helpers import val_accuracy
from tnsearch import tn
from tnsearch.budget import calibration
from tnsearch.data import DigitsDataModule
from tnsearch.models import ResNet


@pytest.fixture(scope="module")
def trained():
    """A small ResNet trained on the digits for a few epochs, and its data."""
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    model = ResNet(depth=8, width=8, in_channels=1, image_size=8, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(6):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval(), dm


def convs(model: nn.Module, topology: str = "tucker") -> dict:
    spec = {"topology": topology, "order": 1, "rank": 3}
    return {
        n: {**spec, "in_modes": [m.in_channels], "out_modes": [m.out_channels]}
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.in_channels >= 8 and m.kernel_size == (3, 3)
    }


def test_collect_sees_each_layers_inputs(trained):
    model, dm = trained
    inputs = calibration.batches(dm.train_dataloader(), 100)
    assert sum(len(x) for x in inputs) == 100
    stats = calibration.collect(model, inputs, ["fc", "conv1"])
    assert stats["fc"].count == 100  # one row per example
    assert stats["conv1"].count == 100 * 8 * 8  # one patch per output pixel
    assert stats["conv1"].second.shape == (9, 9)


def test_batchnorm_reestimation_restores_what_decomposition_loses(trained):
    import copy

    model, dm = trained
    dense = val_accuracy(model, dm)
    inputs = calibration.batches(dm.train_dataloader(), 512)
    plain = copy.deepcopy(model)
    # MPO (a rank-3 channel bottleneck): Tucker-2 at rank 3 loses so much of this small model
    # that which statistics its batch norms keep hardly matters (0.375 before, 0.25 after)
    calibration.tensorize(plain, convs(model, "mpo"), None)
    lost = val_accuracy(plain, dm)
    assert calibration.reestimate_batchnorm(plain, inputs) > 0
    restored = val_accuracy(plain, dm)
    assert lost < dense - 0.05  # the decomposition did lose accuracy
    assert restored > lost + 0.05


def test_data_aware_plans_keep_more_than_plain_ones(trained):
    import copy

    model, dm = trained
    inputs = calibration.batches(dm.train_dataloader(), 512)
    layers = convs(model)
    stats = calibration.collect(model, inputs, layers)
    plain, aware = copy.deepcopy(model), copy.deepcopy(model)
    plain_errors = calibration.tensorize(plain, layers, None)
    aware_errors = calibration.tensorize(aware, layers, stats, steps=30)
    for name in layers:
        dense_layer = model.get_submodule(name)
        assert tn.output_error(aware.get_submodule(name), dense_layer, stats[name]) < (
            tn.output_error(plain.get_submodule(name), dense_layer, stats[name])
        )
    assert set(plain_errors) == set(aware_errors) == set(layers)
    for m in (plain, aware):
        calibration.reestimate_batchnorm(m, inputs)
    assert val_accuracy(aware, dm) >= val_accuracy(plain, dm)
