"""Data read from the official files: MNIST (IDX) and CIFAR-10 (python pickles)."""

from __future__ import annotations

import functools
import gzip
import hashlib
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
from torch import Tensor

from tnsearch.data._base import _ImageDataModule
from tnsearch.files import atomic_path

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


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _fetch(urls: Sequence[str], dest: Path, md5: str) -> None:
    """Download the first reachable url to dest, checking its MD5."""
    errors = []
    for url in urls:
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with (
                atomic_path(dest) as part,
                urllib.request.urlopen(url, timeout=60) as response,
                open(part, "wb") as f,
            ):
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                if digest.hexdigest() != md5:
                    raise OSError("checksum mismatch")
            return
        except OSError as err:  # URLError and timeouts are OSErrors
            errors.append(f"{url}: {err}")
    raise RuntimeError(f"data.download: could not fetch {dest.name} ({'; '.join(errors)})")


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
