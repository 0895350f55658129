"""Tests for the data modules: embedded sets, official-format readers, splits, loaders, errors."""

import gzip
import pickle
import struct
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from tnsearch.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    random_crop_flip,
    read_idx,
)

EMBEDDED = {"digits": (DigitsDataModule, 1797, 8), "mnist5k": (MNIST5kDataModule, 5000, 28)}


# ---- writers of the official formats, on small data --------------------------------------------


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fake_mnist(folder: Path, gz: tuple[bool, ...] = (True, False, True, False)) -> dict:
    """Write 50 train and 20 test images in the MNIST IDX files; return what was written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(50, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for (name, array), zipped in zip(arrays.items(), gz, strict=True):
        write_idx(folder / (f"{name}.gz" if zipped else name), array)
    return arrays


def fake_cifar(folder: Path, per_batch: int = 12, n_test: int = 10) -> dict:
    """Write the six CIFAR-10 python pickles with the official keys; return what was written."""
    rng = np.random.default_rng(1)
    written = {}
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = batch
    return written


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    return dm


# ---- embedded data sets -------------------------------------------------------------------------


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_shapes_and_splits(name: str) -> None:
    cls, total, size = EMBEDDED[name]
    dm = cls(batch_size=128)
    # geometry is known before any data is read: models are built from it
    assert (dm.name, dm.in_channels, dm.image_size, dm.num_classes) == (name, 1, size, 10)
    assert dm.example_input(5).shape == (5, 1, size, size)
    assert dm.example_input(5).dtype == torch.float32
    dm.setup()
    sizes = {split: len(idx) for split, idx in dm.indices.items()}
    assert sum(sizes.values()) == total
    assert sizes["test"] == round(0.2 * total)
    assert sizes["val"] == round(0.1 * (total - sizes["test"]))
    train, val, test = (set(dm.indices[s].tolist()) for s in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    for split in ("train", "val", "test"):
        x, y = dm.tensors(split)
        assert x.shape == (sizes[split], 1, size, size) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
        counts = torch.bincount(y, minlength=10).float()
        assert counts.max() - counts.min() <= 0.03 * sizes[split] + 2  # stratified
    x, _ = dm.train_tensors()
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2  # train statistics


def test_mnist5k_is_real_mnist() -> None:
    dm = MNIST5kDataModule()
    dm.setup()
    images = torch.cat([dm.dataset(s).images for s in ("train", "val", "test")])
    assert images.dtype == torch.uint8 and images.max() == 255
    labels = torch.cat([dm.dataset(s).labels for s in ("train", "val", "test")])
    assert torch.bincount(labels).tolist() == [500] * 10


def test_splits_depend_only_on_seed(digits: DigitsDataModule) -> None:
    np.random.seed(123)  # global RNG states must not matter
    torch.manual_seed(123)
    same = DigitsDataModule(batch_size=64)
    same.setup()
    for split in ("train", "val", "test"):
        assert np.array_equal(same.indices[split], digits.indices[split])
        assert torch.equal(same.tensors(split)[0], digits.tensors(split)[0])
    other = DigitsDataModule(batch_size=64, seed=1)
    other.setup()
    for split in ("train", "val", "test"):
        assert not np.array_equal(other.indices[split], digits.indices[split])


def test_limit_keeps_a_stratified_subset() -> None:
    dm = MNIST5kDataModule(limit=300, val_fraction=0.2)
    dm.setup()
    assert (len(dm.indices["train"]), len(dm.indices["val"]), len(dm.indices["test"])) == (
        240,
        60,
        1000,
    )
    assert torch.bincount(dm.dataset("train").labels).tolist() == [24] * 10


# ---- loaders ------------------------------------------------------------------------------------


def test_train_loader_fixed_shape_and_seeded_shuffle(digits: DigitsDataModule) -> None:
    n_train = len(digits.indices["train"])
    batches = list(digits.train_dataloader())
    assert len(batches) == n_train // 64  # drop_last
    assert all(x.shape == (64, 1, 8, 8) and y.shape == (64,) for x, y in batches)
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    again = list(digits.train_dataloader())
    assert not torch.equal(batches[0][1], again[0][1])  # a new order every epoch
    twin = DigitsDataModule(batch_size=64)
    assert torch.equal(next(iter(twin.train_dataloader()))[0], batches[0][0])  # seeded


def test_small_train_split_gives_one_full_batch() -> None:
    dm = DigitsDataModule(batch_size=512, limit=100)
    (x, y), *rest = list(dm.train_dataloader())
    assert not rest and x.shape[0] == len(dm.indices["train"]) == 90


def test_eval_loaders_cover_splits_in_order(digits: DigitsDataModule) -> None:
    dm = DigitsDataModule(batch_size=64, eval_batch_size=100)
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        xs, ys = zip(*loader, strict=True)
        assert xs[0].shape[0] == 100 or len(xs) == 1
        x, y = dm.tensors(split)
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)


def test_dataset_single_item(digits: DigitsDataModule) -> None:
    x, y = digits.dataset("val")[3]
    xs, ys = digits.tensors("val")
    assert torch.equal(x, xs[3]) and y == ys[3]


class _TinyClassifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def training_step(self, batch: tuple, _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple, _: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_uses_the_loaders(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyClassifier(), datamodule=DigitsDataModule(batch_size=32))
    assert "val_acc" in trainer.callback_metrics


# ---- official-format readers --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["root", "MNIST/raw"])
def test_mnist_reads_idx_files(tmp_path: Path, layout: str) -> None:
    folder = tmp_path if layout == "root" else tmp_path / "MNIST" / "raw"
    written = fake_mnist(folder)
    dm = MNISTDataModule(root=str(tmp_path), val_fraction=0.2, batch_size=8)
    assert (dm.name, dm.in_channels, dm.image_size, dm.num_classes) == ("mnist", 1, 28, 10)
    dm.check()
    dm.prepare_data()
    dm.setup()
    assert (len(dm.indices["train"]), len(dm.indices["val"]), len(dm.indices["test"])) == (
        40,
        10,
        20,
    )
    train_images = written["train-images-idx3-ubyte"]
    assert np.array_equal(dm.dataset("val").images[:, 0].numpy(), train_images[dm.indices["val"]])
    assert np.array_equal(
        dm.dataset("test").images[:, 0].numpy(), written["t10k-images-idx3-ubyte"]
    )
    assert dm.dataset("test").labels.tolist() == written["t10k-labels-idx1-ubyte"].tolist()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,)


def test_read_idx_plain_and_gz(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"  # magic 2051 of the image files
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x03" + raw[4:])  # float data, not ubyte
    with pytest.raises(ValueError, match=r"^data\.root: "):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match=r"^data\.root: "):
        read_idx(tmp_path / "short")


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "root"])
def test_cifar10_reads_pickles(tmp_path: Path, layout: str) -> None:
    written = fake_cifar(tmp_path / layout if layout != "root" else tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_fraction=0.25, batch_size=16)
    assert (dm.name, dm.in_channels, dm.image_size, dm.num_classes) == ("cifar10", 3, 32, 10)
    assert dm.augment
    dm.check()
    dm.setup()
    assert (len(dm.indices["train"]), len(dm.indices["val"]), len(dm.indices["test"])) == (
        45,
        15,
        10,
    )
    test = written["test_batch"]
    assert np.array_equal(dm.dataset("test").images.numpy().reshape(10, 3072), test[b"data"])
    assert dm.dataset("test").labels.tolist() == test[b"labels"]
    first = written["data_batch_1"][b"data"][0].reshape(3, 32, 32)  # row = R plane, G, B
    position = 0  # example 0 of the train pool is in train or val
    split = "train" if position in dm.indices["train"] else "val"
    row = dm.indices[split].tolist().index(position)
    assert np.array_equal(dm.dataset(split).images[row].numpy(), first)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and y.shape == (16,)


def test_cifar10_augments_only_training_batches(tmp_path: Path) -> None:
    fake_cifar(tmp_path / "cifar-10-batches-py")
    plain = CIFAR10DataModule(root=str(tmp_path), augment=False, batch_size=16)
    augmented = CIFAR10DataModule(root=str(tmp_path), augment=True, batch_size=16)
    (xp, yp), (xa, ya) = (
        next(iter(plain.train_dataloader())),
        next(iter(augmented.train_dataloader())),
    )
    assert torch.equal(yp, ya) and xp.shape == xa.shape  # the same examples ...
    assert not torch.equal(xp, xa)  # ... cropped and flipped
    for loaders in ((plain.val_dataloader(), augmented.val_dataloader()),):
        for (x1, y1), (x2, y2) in zip(*loaders, strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, _), (x2, _) in zip(plain.test_dataloader(), augmented.test_dataloader(), strict=True):
        assert torch.equal(x1, x2)
    assert torch.equal(plain.train_tensors()[0], augmented.train_tensors()[0])


def test_random_crop_flip_is_a_padded_crop_or_its_mirror() -> None:
    images = torch.randint(1, 256, (32, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    seen = set()
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(5)
            for dx in range(5)
            for flip in (False, True)
            if torch.equal(
                out[i],
                padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1)
                if flip
                else padded[i, :, dy : dy + 8, dx : dx + 8],
            )
        ]
        assert matches, f"image {i} is no crop of its padded original"
        seen.update(matches)
    assert len({flip for _, _, flip in seen}) == 2 and len({dy for dy, _, _ in seen}) > 2


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [MNISTDataModule, CIFAR10DataModule])
def test_missing_files_one_line_error(tmp_path: Path, cls: type) -> None:
    dm = cls(root=str(tmp_path / "nowhere"))  # constructing never reads or raises
    for step in (dm.check, dm.prepare_data, dm.setup):
        with pytest.raises(FileNotFoundError) as info:
            step()
        message = str(info.value)
        assert message.startswith("data.root: ") and "\n" not in message
        assert str(tmp_path / "nowhere") in message and "data.download=true" in message


def test_incomplete_mnist_is_missing(tmp_path: Path) -> None:
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"^data\.root: no MNIST files in .*t10k-labels"):
        MNISTDataModule(root=str(tmp_path)).check()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": -1}, "data.eval_batch_size"),
        ({"limit": 0}, "data.limit"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"test_fraction": 0.0}, "data.test_fraction"),
    ],
)
def test_bad_options(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}: "):
        DigitsDataModule(**kwargs)


def test_too_small_limit() -> None:
    with pytest.raises(ValueError, match=r"^data\.limit: "):
        DigitsDataModule(limit=1).setup()


def test_hydra_instantiate(tmp_path: Path) -> None:
    dm = instantiate({"_target_": "tnsearch.data.DigitsDataModule", "batch_size": 16, "seed": 3})
    assert isinstance(dm, DigitsDataModule) and dm.batch_size == 16 and dm.seed == 3
    cfg = {"_target_": "tnsearch.data.MNISTDataModule", "root": str(tmp_path), "download": False}
    assert instantiate(cfg).root == tmp_path
