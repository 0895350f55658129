"""Tests for data=text: the embedded sentences, seeded splits, tokenized batches, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import bert_tokenizer, compose_cfg
from tnsearch.config import ConfigError
from tnsearch.data import TextBatch, TextDataModule, embedded_sentences


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    return str(bert_tokenizer(tmp_path_factory.mktemp("tok"), embedded_sentences()[:300]))


@pytest.fixture(scope="module")
def full(tok) -> TextDataModule:
    """The embedded set, every line, set up once."""
    dm = TextDataModule(tokenizer=tok, max_length=32, batch_size=16, seed=3)
    dm.setup()
    return dm


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- the embedded sentences --------------------------------------------------------------------


def test_embedded_sentences_are_real_prose():
    sentences = embedded_sentences()
    assert len(sentences) >= 2000
    assert len(set(sentences)) == len(sentences)
    assert "A class definition is an executable statement." in sentences
    for s in sentences:
        assert s[-1] in ".!?", s
        assert s[0].isupper() or s[0] == '"', s
        assert not s.lstrip().startswith((">>>", "...")), s
        assert "::=" not in s and "\n" not in s and "  " not in s, s
        assert 5 <= len(s.split()) <= 50, s


def test_embedded_sentences_are_deterministic():
    first = embedded_sentences()
    embedded_sentences.cache_clear()
    assert embedded_sentences() == first


# ---- splits ------------------------------------------------------------------------------------


def test_splits_disjoint_cover_everything_and_follow_the_fractions(full):
    n = len(embedded_sentences())
    parts = [set(full.indices[split].tolist()) for split in ("train", "val", "test")]
    assert sum(map(len, parts)) == n and set.union(*parts) == set(range(n))
    assert len(parts[1]) == len(parts[2]) == round(0.1 * n)
    texts = [set(full.texts(split)) for split in ("train", "val", "test")]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])


def test_splits_are_reproducible_and_seeded(tok, full):
    again = TextDataModule(tokenizer=tok, max_length=32, seed=3)
    again.setup()
    for split in ("train", "val", "test"):
        assert (again.indices[split] == full.indices[split]).all()
        for key, value in full.tensors(split).items():
            assert torch.equal(again.tensors(split)[key], value)
    other = TextDataModule(tokenizer=tok, max_length=32, seed=4)
    other.setup()
    assert set(other.indices["test"].tolist()) != set(full.indices["test"].tolist())


def test_limit_takes_the_first_lines_of_the_seeded_shuffle(tok):
    small = TextDataModule(tokenizer=tok, seed=1, limit=50)
    larger = TextDataModule(tokenizer=tok, seed=1, limit=100)
    small.setup()
    larger.setup()
    kept = {
        s: set().union(*(dm.indices[p].tolist() for p in dm.indices))
        for s, dm in (("small", small), ("larger", larger))
    }
    assert len(kept["small"]) == 50 and len(kept["larger"]) == 100
    assert kept["small"] < kept["larger"]
    assert [len(small.indices[p]) for p in ("train", "val", "test")] == [40, 5, 5]


# ---- batches -----------------------------------------------------------------------------------


def test_batches_are_int64_dicts_of_max_length(full):
    batches = list(full.train_dataloader())
    assert len(batches) == len(full.indices["train"]) // 16
    for batch in batches:
        assert isinstance(batch, TextBatch) and isinstance(batch, dict)
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
        for value in batch.values():
            assert value.shape == (16, 32) and value.dtype == torch.int64
    val = list(full.val_dataloader())
    assert sum(len(b["input_ids"]) for b in val) == len(full.indices["val"])
    whole = full.tensors("val")
    assert torch.equal(torch.cat([b["input_ids"] for b in val]), whole["input_ids"])
    ids = whole["input_ids"]
    mask = whole["attention_mask"]
    cls, sep, pad = full.hf_tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]"])
    assert (ids[:, 0] == cls).all() and ((ids == pad) == (mask == 0)).all()
    assert ((ids == sep).sum(dim=1) == 1).all()  # truncated lines still end with [SEP]


def test_train_batches_shuffle_reproducibly(tok):
    def first_batch():
        dm = TextDataModule(tokenizer=tok, limit=200, batch_size=8)
        return next(iter(dm.train_dataloader()))["input_ids"]

    assert torch.equal(first_batch(), first_batch())


def test_example_input_is_real_full_length_sequences(full):
    example = full.example_input(7)
    assert set(example) == {"input_ids", "attention_mask", "token_type_ids"}
    for value in example.values():
        assert value.shape == (7, 32) and value.dtype == torch.int64
    assert (example["attention_mask"] == 1).all()  # the longest lines fill every position
    train = {tuple(row) for row in full.tensors("train")["input_ids"].tolist()}
    assert all(tuple(row) in train for row in example["input_ids"].tolist())
    assert full.example_input()["input_ids"].shape == (1, 32)


def test_example_input_repeats_a_small_split(tok, tmp_path):
    dm = TextDataModule(
        files=[write(tmp_path / "a.txt", "one\ntwo\nthree\nfour\nfive\n")],
        tokenizer=tok,
        max_length=8,
    )
    example = dm.example_input(5)
    assert example["input_ids"].shape == (5, 8)
    assert len({tuple(r) for r in example["input_ids"].tolist()}) == len(dm.indices["train"])


def test_batch_moves_like_a_tensor(full):
    from lightning.fabric.utilities.apply_func import move_data_to_device

    batch = full.example_input(2)
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, TextBatch) and torch.equal(moved["input_ids"], batch["input_ids"])
    assert isinstance(batch.to("cpu"), TextBatch)


def test_facts_and_token_counts(full):
    assert full.facts == {"vocab_size": len(full.hf_tokenizer), "max_length": 32}
    counts = full.token_counts()
    assert counts.dtype == torch.int64 and counts.shape == (full.facts["vocab_size"],)
    train = full.tensors("train")
    pad = full.hf_tokenizer.pad_token_id
    assert counts.sum() == (train["input_ids"] != pad).sum() == train["attention_mask"].sum()
    assert counts[pad] == 0
    cls = full.hf_tokenizer.cls_token_id
    assert counts[cls] == len(full.indices["train"])


def test_a_tokenizer_without_pad_token_pads_with_eos(tok):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok, local_files_only=True)
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    dm = TextDataModule(tokenizer=tokenizer, limit=40, max_length=16)
    train = dm.tensors("train")
    assert train["input_ids"].shape == (32, 16)
    assert dm.token_counts().sum() == train["attention_mask"].sum()


# ---- files -------------------------------------------------------------------------------------


def test_files_one_example_per_line(tok, tmp_path):
    a = write(tmp_path / "a.txt", "the class statement.\n\n   \nan executable statement.\r\n")
    b = write(tmp_path / "b.txt", "\ufeffassert statements are convenient.\n  the line  \n")
    dm = TextDataModule(files=[a, Path(b)], tokenizer=tok, max_length=12, batch_size=2)
    assert dm.lines == [
        "the class statement.",
        "an executable statement.",
        "assert statements are convenient.",
        "the line",
    ]
    dm.setup()
    assert sorted(sum((dm.texts(s) for s in ("train", "val", "test")), [])) == sorted(dm.lines)
    assert [len(dm.indices[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    ids = dm.tensors("train")["input_ids"]
    words = dm.hf_tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert words == [t.lower() for t in dm.texts("train")]
    single = TextDataModule(files=a, tokenizer=tok, max_length=12)  # one path, not a list
    assert single.lines == dm.lines[:2]


# ---- bad input ---------------------------------------------------------------------------------


def bad_cases(tmp: Path, tok: str) -> dict[str, dict]:
    """Options -> the key their ConfigError must start with."""
    (tmp / "folder").mkdir()
    (tmp / "not_a_tokenizer").mkdir()
    write(tmp / "not_a_tokenizer" / "tokenizer_config.json", "{")
    return {
        "files=[]": ("data.files", {"files": []}),
        "missing file": ("data.files", {"files": [str(tmp / "missing.txt")]}),
        "folder": ("data.files", {"files": [str(tmp / "folder")]}),
        "empty file": ("data.files", {"files": [write(tmp / "empty.txt", "\n  \n")]}),
        "binary file": ("data.files", {"files": [str(_binary(tmp / "bin.txt"))]}),
        "not a path": ("data.files", {"files": [3]}),
        "too few lines": ("data.files", {"files": [write(tmp / "two.txt", "a\nb\n")]}),
        "no tokenizer": ("data.tokenizer", {"tokenizer": None}),
        "tokenizer missing": ("data.tokenizer", {"tokenizer": str(tmp / "nowhere")}),
        "tokenizer a file": ("data.tokenizer", {"tokenizer": write(tmp / "t.json", "{}")}),
        "tokenizer empty folder": ("data.tokenizer", {"tokenizer": str(tmp / "folder")}),
        "tokenizer broken": ("data.tokenizer", {"tokenizer": str(tmp / "not_a_tokenizer")}),
        "tokenizer a number": ("data.tokenizer", {"tokenizer": 5}),
        "max_length=0": ("data.max_length", {"max_length": 0}),
        "max_length=2": ("data.max_length", {"max_length": 2}),  # [CLS] and [SEP] only
        "max_length=1.5": ("data.max_length", {"max_length": 1.5}),
        "batch_size=0": ("data.batch_size", {"batch_size": 0}),
        "batch_size=True": ("data.batch_size", {"batch_size": True}),
        "eval_batch_size=0": ("data.eval_batch_size", {"eval_batch_size": 0}),
        "seed=-1": ("data.seed", {"seed": -1}),
        "limit=0": ("data.limit", {"limit": 0}),
        "limit=2": ("data.limit", {"limit": 2}),
        "val_fraction=0": ("data.val_fraction", {"val_fraction": 0}),
        "val_fraction=1": ("data.val_fraction", {"val_fraction": 1.0}),
        "test_fraction=-0.1": ("data.test_fraction", {"test_fraction": -0.1}),
        "fractions sum to 1": ("data.test_fraction", {"val_fraction": 0.5, "test_fraction": 0.5}),
    }


def _binary(path: Path) -> Path:
    path.write_bytes(b"\xff\xfe\x00\x81 not utf-8\n")
    return path


def test_every_bad_input_is_one_config_error_naming_its_key(tok, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = bad_cases(tmp_path, tok)
    before = sorted(tmp_path.rglob("*"))
    for name, (key, options) in cases.items():
        with pytest.raises(ConfigError) as info:
            TextDataModule(**{"tokenizer": tok, **options}).check()
        message = str(info.value)
        assert message.startswith(f"{key}: "), (name, message)
        assert "\n" not in message and info.value.key == key, name
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_setup_and_loaders_check_first(tmp_path):
    dm = TextDataModule(tokenizer=None)
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: "):
        dm.setup()
    with pytest.raises(ConfigError, match=r"^data\.tokenizer: "):
        dm.train_dataloader()
    with pytest.raises(ConfigError, match=r"^data\.files: "):
        TextDataModule(files=[str(tmp_path / "x")], tokenizer=str(tmp_path)).prepare_data()


# ---- the config --------------------------------------------------------------------------------


def test_the_real_config_composes_and_instantiates(tok):
    cfg = compose_cfg(["data=text", f"data.tokenizer={tok}", "data.limit=100", "seed=5"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, TextDataModule)
    assert (dm.max_length, dm.batch_size, dm.eval_batch_size, dm.seed) == (64, 32, 32, 5)
    assert dm.files is None and dm.val_fraction == dm.test_fraction == 0.1
    dm.check()
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (32, 64)
    assert dm.example_input(3)["attention_mask"].shape == (3, 64)


def test_the_config_takes_the_models_path_as_tokenizer(tok, tmp_path):
    assert compose_cfg(["data=text"]).data.tokenizer is None  # resnet has no path
    cfg = compose_cfg(["data=text", f"+model.path={tok}"])
    assert cfg.data.tokenizer == tok
    files = write(tmp_path / "lines.txt", "one line\nanother line\na third line\n")
    dm = instantiate(compose_cfg(["data=text", f"+model.path={tok}", f"data.files=[{files}]"]).data)
    dm.setup()
    assert sorted(dm.lines) == ["a third line", "another line", "one line"]
