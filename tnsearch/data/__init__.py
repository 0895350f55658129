"""Data modules: image classification sets held in memory as uint8 tensors, and text.

Every image module splits its data into train/val/test with a fixed seed (class-stratified,
identical in every process), normalizes with per-channel statistics of the training split, and
serves batches by indexing whole batches at once (``Dataset.__getitems__``), so a DataLoader costs
little more than slicing a tensor. ``in_channels``, ``image_size``, ``num_classes`` and ``name``
are class attributes, available before any data is read, because the model is built from them.

``check()`` is cheap (it only looks for the files) and raises the one-line error for missing data;
``prepare_data()`` downloads when ``download=True`` and then checks; ``setup()`` reads the files
once per process (cached by path) and builds the splits.

`TextDataModule` (``data=text``) serves tokenized lines of text files (by default real English
sentences of CPython's own documentation) with the model's tokenizer.
"""

from tnsearch.data._base import Normalize, TensorImageDataset, random_crop_flip
from tnsearch.data._embedded import DigitsDataModule, MNIST5kDataModule
from tnsearch.data._files import CIFAR10DataModule, MNISTDataModule, read_idx
from tnsearch.data._text import TextBatch, TextDataModule, embedded_sentences, tokenizer_record

__all__ = [
    "CIFAR10DataModule",
    "DigitsDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "Normalize",
    "TensorImageDataset",
    "TextBatch",
    "TextDataModule",
    "embedded_sentences",
    "random_crop_flip",
    "read_idx",
    "tokenizer_record",
]
