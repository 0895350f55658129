"""Tests for the model zoo: shapes on every data geometry, sizes, names, errors, Hydra use."""

from fnmatch import fnmatch

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from tnsearch.models import MLP, LeNet5, ResNet

GEOMETRIES = [(1, 8), (1, 28), (3, 32)]  # digits, MNIST, CIFAR: (in_channels, image_size)
BUILDERS = {
    "mlp": lambda **kw: MLP(**kw),
    "lenet5": lambda **kw: LeNet5(**kw),
    "resnet": lambda **kw: ResNet(depth=8, width=4, **kw),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("channels, size", GEOMETRIES)
@pytest.mark.parametrize("name", BUILDERS)
def test_forward_shape(name: str, channels: int, size: int) -> None:
    model = BUILDERS[name](in_channels=channels, image_size=size, num_classes=7)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_lenet5_never_collapses(size: int) -> None:
    model = LeNet5(in_channels=1, image_size=size, num_classes=10)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_mlp_is_lenet_300_100() -> None:
    model = MLP(in_channels=1, image_size=28, num_classes=10)
    shapes = {name: tuple(m.weight.shape) for name, m in model.named_modules() if name}
    assert shapes == {"fc1": (300, 784), "fc2": (100, 300), "fc3": (10, 100)}
    assert n_params(model) == 266_610  # 784*300+300 + 300*100+100 + 100*10+10


def test_lenet5_layers() -> None:
    model = LeNet5(in_channels=1, image_size=28, num_classes=10)
    assert model.conv1.out_channels == 6 and model.conv2.out_channels == 16
    assert model.fc1.in_features == 16 * 5 * 5  # 28 -> conv(pad 2) 28 -> 14 -> conv 10 -> 5
    assert LeNet5(in_channels=3, image_size=32, num_classes=10).fc1.in_features == 16 * 6 * 6
    assert LeNet5(in_channels=1, image_size=8, num_classes=10).fc1.in_features == 16 * 2 * 2


def test_resnet20_parameter_count() -> None:
    # ResNet-20 on CIFAR-10, width 16, option-B shortcuts; convs have no bias, BN 2 per channel:
    #   conv1 3*16*9 + bn 2*16                                        =     464
    #   layer1: 3 blocks * 2 * (16*16*9 + 2*16)                        =  14,016
    #   layer2: block 0: 16*32*9 + 32*32*9 + 2*(2*32) + 1x1 16*32 + 2*32 = 14,528
    #           blocks 1, 2: 2 * 2 * (32*32*9 + 2*32)                  =  37,120
    #   layer3: block 0: 32*64*9 + 64*64*9 + 2*(2*64) + 1x1 32*64 + 2*64 = 57,728
    #           blocks 1, 2: 2 * 2 * (64*64*9 + 2*64)                  = 147,968
    #   fc 64*10 + 10                                                   =     650
    # total 272,474 = the paper's 269,722 ("0.27M", option A) + the two 1x1 shortcuts (2,752).
    model = ResNet(depth=20, in_channels=3, image_size=32, num_classes=10)
    assert n_params(model) == 272_474


@pytest.mark.parametrize("depth, blocks", [(8, 1), (20, 3), (32, 5)])
def test_resnet_depth(depth: int, blocks: int) -> None:
    model = ResNet(depth=depth, in_channels=3, image_size=32, num_classes=10, width=4)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [blocks] * 3
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # the 3x3 convs and the fc are the weighted layers


@pytest.mark.parametrize("depth", [21, 19, 2, 0, -4])
def test_resnet_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError) as info:
        ResNet(depth=depth, in_channels=3, image_size=32, num_classes=10)
    assert str(info.value) == f"model.depth: must be 6n+2 (20, 32, 44, 56, ...), got {depth}"


def test_resnet_bad_width() -> None:
    with pytest.raises(ValueError, match=r"^model\.width: "):
        ResNet(in_channels=3, image_size=32, num_classes=10, width=0)


def test_resnet_module_names() -> None:
    model = ResNet(depth=20, in_channels=3, image_size=32, num_classes=10, width=4)
    names = dict(model.named_modules())
    assert {"conv1", "bn1", "layer1.0.conv1", "layer2.1.conv2", "layer3.2.conv2", "fc"} <= set(
        names
    )
    matched = [n for n in names if fnmatch(n, "layer*.*.conv*")]
    assert len(matched) == 18  # 3 stages * 3 blocks * 2 convs
    assert all(isinstance(names[n], nn.Conv2d) for n in matched)
    assert [n for n in names if "downsample" in n and n.count(".") == 2] == [
        "layer2.0.downsample",
        "layer3.0.downsample",
    ]


def test_replaced_layer_is_used() -> None:
    """Forward passes look layers up by name, so in-place surgery takes effect."""
    for model in (
        MLP(in_channels=1, image_size=8, num_classes=10),
        LeNet5(in_channels=1, image_size=8, num_classes=10),
        ResNet(depth=8, in_channels=1, image_size=8, num_classes=10, width=4),
    ):
        model.eval()
        x = torch.randn(2, 1, 8, 8)
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        setattr(model, last, nn.Sequential(getattr(model, last), nn.Identity()))
        before = model(x)
        getattr(model, last)[1] = ZeroLayer()
        assert torch.equal(model(x), torch.zeros_like(before))


class ZeroLayer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("name", BUILDERS)
def test_deterministic_given_seed(name: str) -> None:
    def build() -> dict:
        torch.manual_seed(123)
        return BUILDERS[name](in_channels=3, image_size=32, num_classes=10).state_dict()

    first, second = build(), build()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_kaiming_init() -> None:
    torch.manual_seed(0)
    model = ResNet(depth=20, in_channels=3, image_size=32, num_classes=10)
    conv = model.layer3[1].conv1
    expected = (2.0 / (64 * 9)) ** 0.5  # fan_out mode: std = sqrt(2 / (out_channels * k * k))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.equal(model.bn1.weight, torch.ones(16))


@pytest.mark.parametrize(
    "target, extra",
    [("MLP", {}), ("LeNet5", {}), ("ResNet", {"depth": 8, "width": 4}), ("MLP", {"hidden": [32]})],
)
def test_hydra_instantiate(target: str, extra: dict) -> None:
    cfg = {"_target_": f"tnsearch.models.{target}", **extra}
    model = instantiate(cfg, in_channels=1, image_size=28, num_classes=10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
