"""The shared data module: seeded splits, normalization, batch-at-once loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


def random_crop_flip(
    images: Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> Tensor:
    """Crop every image of a batch at a random offset after zero padding; flip half of them.

    The standard CIFAR augmentation, done for the whole batch with one gather.
    images: (B, C, H, W) of any dtype; returns the same shape and dtype.
    """
    b, c, h, w = images.shape
    pw = w + 2 * padding
    padded = F.pad(images, (padding,) * 4).view(b, c, -1)  # (B, C, (H+2p)*(W+2p))
    dy = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator)
    flip = torch.rand(b, 1, 1, generator=generator) < 0.5
    cols = torch.arange(w).view(1, 1, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx  # (B, 1, W): a flip reads them backwards
    rows = torch.arange(h).view(1, h, 1) + dy  # (B, H, 1)
    index = (rows * pw + cols).view(b, 1, h * w).expand(b, c, h * w)  # (B, C, H*W)
    return padded.gather(2, index).view(b, c, h, w)


class Normalize(nn.Module):
    """Per-channel normalization as the image data modules apply it: raw pixel values
    (B, C, H, W), any dtype -> ``(x - mean) / std`` float32, computed as ``x * (1 / std) +
    (-mean / std)`` exactly as `TensorImageDataset` does, so that a model given raw pixels
    through it sees the very tensors it was trained on.

    Args:
        mean, std: (C,) statistics of the training split's raw pixels.
    """

    def __init__(self, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> None:
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (1.0 / std).view(1, -1, 1, 1))  # (1, C, 1, 1)
        self.register_buffer("shift", (-mean / std).view(1, -1, 1, 1))  # (1, C, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) raw pixels -> (B, C, H, W) float32, normalized."""
        return x.to(torch.float32) * self.scale + self.shift


class TensorImageDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,), normalized (and augmented) per batch.

    ``__getitems__`` is PyTorch's batched fetch: the DataLoader hands it a batch of indices and
    gets back ``(x, y)`` with x (B, C, H, W) float32, y (B,) int64.
    """

    def __init__(
        self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, augment: bool, seed: int
    ) -> None:
        self.images, self.labels, self.augment = images, labels, augment
        self.scale = (1.0 / std).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.shift = (-mean / std).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.generator = _stream(seed, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx]  # (B, C, H, W) uint8
        if self.augment:
            x = random_crop_flip(x, 4, self.generator)
        return x.float().mul_(self.scale).add_(self.shift), self.labels[idx]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All examples, normalized, never augmented: (N, C, H, W) float32 and (N,) int64."""
        return self.images.float().mul_(self.scale).add_(self.shift), self.labels


def _keep_batch(batch: Any) -> Any:
    """collate_fn for a dataset whose ``__getitems__`` already returns a batch."""
    return batch


class _SplitLoaders:
    """The loaders of a data module whose datasets serve whole batches: `dataset(split)`,
    `batch_size`, `eval_batch_size` and a seeded `_shuffle` generator come from the module."""

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        return DataLoader(
            data,
            batch_size=min(self.batch_size, len(data)),
            shuffle=True,
            drop_last=True,
            generator=self._shuffle,
            collate_fn=_keep_batch,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val"), self.eval_batch_size, collate_fn=_keep_batch)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test"), self.eval_batch_size, collate_fn=_keep_batch)


def _split(
    labels: np.ndarray, n_held: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (kept, held), len(held) == n_held, each class in proportion.

    Examples are shuffled, ranked within their class, and ordered by rank / class size, so any
    prefix of that order holds the classes in proportion; the prefix of n_held is held out.
    """
    perm = rng.permutation(len(labels))
    lab = labels[perm]
    counts = np.bincount(lab)
    order = np.argsort(lab, kind="stable")
    rank = np.empty(len(lab), dtype=np.int64)
    rank[order] = np.arange(len(lab)) - np.repeat(np.cumsum(counts) - counts, counts)
    interleaved = perm[np.argsort((rank + 0.5) / counts[lab], kind="stable")]
    return np.sort(interleaved[n_held:]), np.sort(interleaved[:n_held])


def _channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and std (C,) of uint8 images (N, C, H, W), from 256-bin histograms."""
    values = torch.arange(256, dtype=torch.float64)
    stats = []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()  # (256,)
        mean = (hist * values).sum() / hist.sum()
        var = (hist * (values - mean) ** 2).sum() / hist.sum()
        stats.append((mean, var.sqrt().clamp_min(1e-3)))
    mean, std = (torch.stack(s).float() for s in zip(*stats, strict=True))
    return mean, std


def _stream(seed: int, purpose: int) -> torch.Generator:
    """An independent torch generator per (seed, purpose): shuffling and augmentation differ."""
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])
    )


def _positive_int(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key}: must be a positive integer, got {value}")


def _fraction(key: str, value: Any) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{key}: must be between 0 and 1 (exclusive), got {value}")


class _ImageDataModule(_SplitLoaders, LightningDataModule):
    """Shared logic: seeded splits, normalization, cheap loaders. Subclasses implement ``_load``.

    Args:
        batch_size: training batch size; every training batch has exactly this shape
            (drop_last; a training split smaller than it gives one batch of the whole split).
        eval_batch_size: batch size for val/test (default: batch_size).
        seed: seeds the splits, the shuffling and the augmentation.
        val_fraction: share of the training pool held out for validation.
        test_fraction: share of all data held out for test, where there is no official test split.
        limit: keep only this many training-pool examples (a seeded, class-stratified subset,
            taken before the validation split; test is untouched) for fast runs.
        augment: random crop and flip on training batches (never on val/test).
    """

    name: str  # the config name (data/<name>.yaml)
    title: str  # the data set's name in messages
    in_channels: int
    image_size: int
    num_classes: int

    def __init__(
        self,
        *,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float | None = None,
        limit: int | None = None,
        augment: bool = False,
    ) -> None:
        super().__init__()
        _positive_int("data.batch_size", batch_size)
        if eval_batch_size is not None:
            _positive_int("data.eval_batch_size", eval_batch_size)
        if limit is not None:
            _positive_int("data.limit", limit)
        _fraction("data.val_fraction", val_fraction)
        if test_fraction is not None:
            _fraction("data.test_fraction", test_fraction)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.seed, self.val_fraction, self.test_fraction = seed, val_fraction, test_fraction
        self.limit, self.augment = limit, augment
        self.indices: dict[str, np.ndarray] = {}  # split -> indices into its source arrays
        self.mean: Tensor | None = None  # (C,) after setup
        self.std: Tensor | None = None  # (C,) after setup
        self._datasets: dict[str, TensorImageDataset] = {}
        self._shuffle = _stream(seed, 0)

    def _load(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Images (N, C, S, S) uint8 and labels (N,) int64 of the train part and the test part
        (None, None where the data set has no official test split)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise a one-line error if the data are not available (cheap: reads no data)."""

    def prepare_data(self) -> None:
        self.check()

    def example_input(self, batch_size: int = 1) -> Tensor:
        """Zeros (batch_size, C, S, S) float32: an input of the right shape, e.g. for latency."""
        return torch.zeros(batch_size, self.in_channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:
            return
        images, labels, test_images, test_labels = self._load()
        y = labels.numpy()
        rng = np.random.default_rng(self.seed)
        pool = np.arange(len(y))
        if test_images is None:
            pool, test = _split(y, max(1, round(self.test_fraction * len(y))), rng)
            test_images, test_labels = images[torch.from_numpy(test)], labels[test]
        else:
            test = np.arange(len(test_labels))
        if self.limit is not None and self.limit < len(pool):
            pool = pool[_split(y[pool], self.limit, rng)[1]]
        n_val = max(1, round(self.val_fraction * len(pool)))
        if n_val >= len(pool):
            raise ValueError(f"data.limit: {len(pool)} examples are too few to hold out validation")
        train, val = (pool[part] for part in _split(y[pool], n_val, rng))
        self.indices = {"train": train, "val": val, "test": test}
        train, val = torch.from_numpy(train), torch.from_numpy(val)
        self.mean, self.std = _channel_stats(images[train])
        parts = {
            "train": (images[train], labels[train]),
            "val": (images[val], labels[val]),
            "test": (test_images, test_labels),
        }
        for split, (x, t) in parts.items():
            augment = self.augment and split == "train"
            self._datasets[split] = TensorImageDataset(
                x, t, self.mean, self.std, augment, self.seed
            )

    def dataset(self, split: str) -> TensorImageDataset:
        """The ``train``, ``val`` or ``test`` dataset (sets up on first use)."""
        self.setup()
        return self._datasets[split]

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        """A whole split, normalized, never augmented: (N, C, S, S) float32, (N,) int64."""
        return self.dataset(split).tensors()

    def train_tensors(self) -> tuple[Tensor, Tensor]:
        """``tensors("train")``: the data of a plain PyTorch loop that matches the loaders."""
        return self.tensors("train")

    def raw_inputs(self, split: str, n: int | None = None) -> Tensor:
        """The first `n` (all: None) images of a split as the data set yields them, before
        normalization: (n, C, S, S) float32 pixel values (0-255; 0-16 for digits)."""
        return self.dataset(split).images[:n].to(torch.float32)

    def preprocessing(self) -> dict[str, Any]:
        """What a model trained on this data expects done to raw pixels, as plain data (an
        export package's ``preprocessing.json``): the input shape, the raw pixels' range and
        dtype, and the normalization (`Normalize`) with the training split's statistics."""
        self.setup()
        images = self.dataset("train").images
        return {
            "kind": "image",
            "shape": [self.in_channels, self.image_size, self.image_size],
            "pixels": {"dtype": str(images.dtype).removeprefix("torch."), "min": 0,
                       "max": int(images.max())},
            "normalize": {"mean": [float(m) for m in self.mean],
                          "std": [float(s) for s in self.std]},
        }  # fmt: skip


class _NoTestSplitDataModule(_ImageDataModule):
    """A data set without an official test split: ``test_fraction`` of it is held out."""

    def __init__(self, *, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(test_fraction=test_fraction, **kwargs)

    _read: Callable[[], tuple[Tensor, Tensor]]  # images (N, C, S, S) uint8, labels (N,) int64

    def _load(self) -> tuple[Tensor, Tensor, None, None]:
        return (*self._read(), None, None)
