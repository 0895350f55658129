"""The model zoo: plain ``nn.Module`` reference networks that tnsearch tensorizes.

Every constructor is keyword-only and takes ``in_channels``, ``image_size`` and ``num_classes``
from the data module (`tnsearch.plan.build_dense` passes the facts a signature names).
`from_pretrained` loads a Hugging Face model from a local folder.
Layers carry torchvision-style names (``fc1``, ``conv1``, ``layer2.1.conv2``, ``fc``) so layer globs
such as ``layer*.*.conv*`` select them, and every ``forward`` looks its layers up by attribute, so a
layer replaced in place (``setattr(parent, name, tensorized)``) is used from then on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "MLP", "LeNet5", "ResNet", "BasicBlock", "as_linear", "is_conv1d"]

#: tnsearch's own models: what a plan may name without the caller trusting anything more.
MODELS = (
    "tnsearch.models.MLP",
    "tnsearch.models.LeNet5",
    "tnsearch.models.ResNet",
    "tnsearch.models.from_pretrained",
)

#: The transformers classes `from_pretrained` may load with (`model.auto_class`).
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForMaskedLM",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForImageClassification",
)


def from_pretrained(path: str, auto_class: str = "AutoModel", *, weights: bool = True) -> nn.Module:
    """A Hugging Face model with its pretrained weights, from a local folder (offline).

    Only safetensors weights are read (a pickled ``pytorch_model.bin`` could run code), no
    code of the folder's own is run (`tnsearch.hf`: the folder is refused first if its config
    names any), and `auto_class` is one of `AUTO_CLASSES`.

    Args:
        path: the folder (config.json and model.safetensors).
        auto_class: the transformers Auto class to load it as.
        weights: False: the model its config.json describes, default-initialized (an export
            package, whose weights are loaded afterwards, has no Hugging Face weights file).

    Raises:
        ValueError: ``model.path: ...`` / ``model.auto_class: ...`` for a wrong folder or class.
        ImportError: transformers is not installed (``pip install tnsearch[hf]``).
    """
    from pathlib import Path

    from tnsearch import hf

    folder = Path(str(path))
    if not (folder / "config.json").is_file():
        raise ValueError(f"model.path: {path} is not a Hugging Face model folder (no config.json)")
    if weights and not any(folder.glob("*.safetensors")):
        raise ValueError(
            f"model.path: {path} has no .safetensors weights (pickled weights are not read)"
        )
    if auto_class not in AUTO_CLASSES:
        raise ValueError(
            f"model.auto_class: must be one of {', '.join(AUTO_CLASSES)}, got {auto_class!r}"
        )
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ImportError(
            "model: Hugging Face models need transformers: pip install 'tnsearch[hf]'"
        ) from None
    return hf.model(folder, auto_class, "model.path", weights=weights)


from_pretrained.pretrained = True  # its weights are trained: studies of it start warm


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's `Conv1D` (GPT-2's projections): a Linear with its weight transposed,
    (in, out). Recognized by its shape, so that tnsearch needs no transformers import."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(getattr(module, "nf", None), int)
        and weight is not None
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


def as_linear(conv1d: nn.Module) -> nn.Linear:
    """The `nn.Linear` that computes what a Hugging Face Conv1D (weight (in, out)) does."""
    nx, nf = conv1d.weight.shape
    ref = conv1d.weight
    linear = nn.Linear(nx, nf, bias=conv1d.bias is not None, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        linear.weight.copy_(conv1d.weight.t())
        if conv1d.bias is not None:
            linear.bias.copy_(conv1d.bias)
    return linear


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal init (fan_out for convs, fan_in for linears), zero biases, unit BN scale."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MLP(nn.Module):
    """LeNet-300-100: a fully connected network on flattened images.

    Layers are ``fc1 .. fc{len(hidden) + 1}``, with ReLU between them.

    Args:
        in_channels: input channels C.
        image_size: input height and width S.
        num_classes: number of output logits.
        hidden: widths of the hidden layers.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: Sequence[int] = (300, 100),
    ) -> None:
        super().__init__()
        sizes = [in_channels * image_size**2, *hidden, num_classes]
        self.depth = len(sizes) - 1
        for i in range(self.depth):
            self.add_module(f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1]))
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        x = torch.flatten(x, 1)  # (B, C*S*S)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.depth:
                x = F.relu(x)
        return x


def _pool(size: int) -> int:
    """Side length after a 2x2 max pool with ceil_mode (never below 1)."""
    return (size + 1) // 2


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling.

    conv1 6@5x5 (padding 2, so 28x28 MNIST keeps its size) -> pool -> conv2 16@5x5 -> pool ->
    fc1 120 -> fc2 84 -> fc3 num_classes. conv2 is padded too where the map is too small for a
    valid 5x5 convolution (8x8 digits), and the pools round up, so no map collapses below 1x1.
    The flatten size follows from ``image_size``: 16*5*5 for 28x28, 16*6*6 for 32x32,
    16*2*2 for 8x8.

    Args:
        in_channels: input channels C.
        image_size: input height and width S.
        num_classes: number of output logits.
    """

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        size = _pool(image_size)  # conv1 keeps the size (padding 2)
        pad2 = 0 if size >= 5 else 2  # a valid (unpadded) 5x5 conv needs >= 5 pixels
        size = _pool(size - 4 + 2 * pad2)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.fc1 = nn.Linear(16 * size * size, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, ceil_mode=True)  # (B, 6, S/2, S/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, ceil_mode=True)  # (B, 16, s, s)
        x = torch.flatten(x, 1)  # (B, 16*s*s)
        x = F.relu(self.fc1(x))  # (B, 120)
        x = F.relu(self.fc2(x))  # (B, 84)
        return self.fc3(x)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016).

    Where the block changes the stride or width, the shortcut is option B: ``downsample`` =
    1x1 conv + BN (torchvision's name); otherwise it is the identity.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_planes, H, W) -> (B, planes, H/stride, W/stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """The CIFAR ResNet of He et al. 2016 (ResNet-20/32/44/56/110).

    conv1 3x3 (width) -> BN -> ReLU -> layer1, layer2, layer3 (n BasicBlocks each, with width,
    2*width, 4*width channels; stride 2 at the start of layer2 and layer3) -> global average
    pool -> fc. depth = 6n + 2. Shortcuts that change shape use option B (1x1 conv + BN, named
    ``layerK.0.downsample``); the paper's CIFAR models use the parameter-free option A, so
    ResNet-20 here has 272,474 parameters instead of 269,722 (both "0.27M").

    Args:
        depth: total number of weighted layers, 6n + 2 (20, 32, 44, 56, 110, ...).
        in_channels: input channels C.
        image_size: input height and width S (any size >= 1; the pool is global).
        num_classes: number of output logits.
        width: channels of the first stage (16 in the paper).

    Raises:
        ValueError: ``model.depth`` is not 6n+2 or ``model.width`` is below 1.
    """

    def __init__(
        self,
        *,
        depth: int = 20,
        in_channels: int,
        image_size: int,
        num_classes: int,
        width: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"model.depth: must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"model.width: must be a positive integer, got {width}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, n, stride=1)
        self.layer2 = self._stage(width, 2 * width, n, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, n, stride=2)
        self.fc = nn.Linear(4 * width, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w, S, S)
        x = self.layer1(x)  # (B, w, S, S)
        x = self.layer2(x)  # (B, 2w, S/2, S/2)
        x = self.layer3(x)  # (B, 4w, S/4, S/4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 4w)
        return self.fc(x)
