"""Text for transformer models: lines of text, tokenized once by the model's own tokenizer.

``data=text`` reads examples one per line from ``files`` (blank lines skipped), or, with
``files: null``, takes the embedded English sentences of `embedded_sentences`. The lines are split
train/val/test with a fixed seed (the same in every process), each split is tokenized once in
``setup`` (padded and truncated to ``max_length``) and held in memory as int64 tensors, and the
loaders serve whole batches by indexing them (``Dataset.__getitems__``). A batch is a `TextBatch`:
a dict ``{"input_ids": (B, L), "attention_mask": (B, L)}`` of int64 tensors (plus
``"token_type_ids"`` when the tokenizer gives them), L = ``max_length``, that can be passed to a
Hugging Face model as ``model(**batch)``.

The embedded sentences
----------------------
They come from the Python documentation that ships with every CPython:
``from pydoc_data.topics import topics`` (the text the ``help()`` built-in shows for keywords and
topics, rendered by Sphinx from the Language Reference and Library docs; nothing is downloaded,
and no sentence is generated). `embedded_sentences` selects them deterministically:

1. Each topic (in sorted key order) is cut into paragraphs at blank lines.
2. A paragraph is prose only when its lines share one indentation (a bullet's continuation lines
   under its text), none of them is a heading underline or a table row (``+---``, ``|``), none
   looks like code (an interactive prompt ``>>>``/``...``, a grammar rule ``::=``, a shell
   ``$``, a comment, a decorator, or a Python statement such as ``def f(x):``), and no line
   but the last ends with ``:``. A definition (a term line, then its text indented below it)
   keeps the text. Everything else -- code blocks, grammar, tables, headings -- is skipped.
3. The lines of a paragraph are joined (a word hyphenated at a line break is rejoined),
   footnote marks ``[1]`` and the ``*emphasis*``/``**strong**`` asterisks are removed, and the
   text is split into sentences after ``.``, ``!`` or ``?`` and a space (not after "e.g.",
   "i.e.", "etc." and similar abbreviations).
4. A sentence is kept when it starts with a capital letter (or a quoted name, ``"dir()" ...``),
   ends with ``.``, ``!`` or ``?``, has 5 to 50 words, its quotes and parentheses balance, and
   outside its quoted code (``"..."``) it has at least 5 words, no code characters
   (any of ``=<>{}[]|#$@~^*``, a backslash, a backquote), at least half the characters of the
   sentence, and at least 75% letters among its non-blank characters.
5. Repeats are dropped (the first occurrence stays, in topic order).

On CPython 3.11.7 this gives 2,100 sentences (other versions ship other docs, so slightly other
counts); e.g. "A class definition is an executable statement."
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset

from tnsearch import hf
from tnsearch.config import ConfigError
from tnsearch.data._base import _SplitLoaders, _stream

SPLITS = ("train", "val", "test")
#: The tokenizer outputs a batch holds (those the tokenizer gives).
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")

# ---- the embedded sentences ---------------------------------------------------------------------

_HEADING = re.compile(r"^[*=\-~^\"#+]{3,}$")
_BULLET = re.compile(r"^(?:[*\-+] |\(?\d+[.)] |\(?[a-z][.)] )")
_CODE_LINE = re.compile(
    r"^(?:>>>|\.\.\.|\$ |#|@|%)"
    r"|::="
    r"|^(?:def|class|if|elif|else|for|while|try|except|finally|with|return|import|from|raise"
    r"|pass|yield|async|await|lambda|print|assert|del|global|nonlocal|match|case)\b"
    r"[^,]*[:(=]\s*\S*$"
)
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”|‘[^’]*’|'[^']*'")
_ABBREVIATION = re.compile(
    r"(?:\.\.\.|\b(?:a\.k\.a|e\.g|i\.e|etc|vs|cf|viz|approx|No|Fig|al|Mr|Mrs|Dr)\.)$"
)
_CODE_CHARS = re.compile(r"[=<>{}\[\]\\|#$@~^`*]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PAIRS = (("(", ")"), ('"', '"'), ("“", "”"))


def _paragraphs(text: str) -> Iterator[list[str]]:
    """The runs of non-blank lines of ``text``."""
    para: list[str] = []
    for line in text.splitlines():
        if line.strip():
            para.append(line.rstrip())
        elif para:
            yield para
            para = []
    if para:
        yield para


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _prose(para: list[str]) -> str | None:
    """The paragraph's text on one line, or None where it is not prose (step 2 of the module
    docstring)."""
    first = para[0].lstrip()
    bullet = _BULLET.match(first)
    rest = para[1:]
    if rest and _HEADING.match(rest[-1].strip()):
        return None
    if (
        rest
        and not bullet
        and all(_indent(line) == _indent(rest[0]) > _indent(para[0]) for line in rest)
    ):  # a definition: a term, then its text indented below it
        return None if _CODE_LINE.search(first) else _prose(rest)
    continuation = _indent(para[0]) + (len(bullet.group(0)) if bullet else 0)
    lines = [first[len(bullet.group(0)) :] if bullet else first]
    for line in rest:
        if _indent(line) != continuation:
            return None
        lines.append(line.strip())
    for i, line in enumerate(lines):
        if line.startswith(("+", "|")) or _CODE_LINE.search(line):
            return None
        if line.endswith(":") and i < len(lines) - 1:
            return None
    text = ""
    for line in lines:
        if text.endswith("-") and len(text) > 1 and text[-2].isalpha():
            text += line  # "decimal-" + "point": a word hyphenated at the line break
        else:
            text += (" " if text else "") + line
    return text


def _clean(text: str) -> str:
    """Drop footnote marks and emphasis asterisks; one space between words (step 3)."""
    text = re.sub(r"\s*\[\d+\]", "", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", text)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    """``text`` cut after sentence ends, not after abbreviations (step 3)."""
    out: list[str] = []
    for part in _SENTENCE_END.split(text):
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] += " " + part
        else:
            out.append(part)
    return out


def _is_sentence(s: str) -> bool:
    """Step 4 of the module docstring."""
    starts = s[:1].isupper() or (s[:1] == '"' and s[1:2] != '"')
    if not (starts and s[-1] in ".!?" and 5 <= len(s.split()) <= 50):
        return False
    for a, b in _PAIRS:
        if (s.count(a) % 2 if a == b else s.count(a) - s.count(b)) != 0:
            return False
    bare = _QUOTED.sub("", s)
    if _CODE_CHARS.search(bare) or len(bare) < 0.5 * len(s) or len(bare.split()) < 5:
        return False
    chars = bare.replace(" ", "")
    return sum(c.isalpha() for c in chars) >= 0.75 * len(chars)


@functools.cache
def embedded_sentences() -> tuple[str, ...]:
    """English sentences of the Python documentation shipped with CPython (``pydoc_data``),
    selected as the module docstring describes; the same on every call and machine.

    >>> sentences = embedded_sentences()
    >>> len(sentences) >= 2000, "A class definition is an executable statement." in sentences
    (True, True)
    """
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for para in _paragraphs(topics[key]):
            text = _prose(para)
            if text is None:
                continue
            for sentence in _sentences(_clean(text)):
                if _is_sentence(sentence):
                    seen.setdefault(sentence, None)
    return tuple(seen)


# ---- batches and datasets -----------------------------------------------------------------------


class TextBatch(dict):
    """A batch of tokenized text: ``{"input_ids": (B, L), "attention_mask": (B, L), ...}``, int64.

    A plain dict (``model(**batch)``) that also moves like a tensor: ``batch.to(device)``.
    """

    def to(self, *args: Any, **kwargs: Any) -> TextBatch:
        return TextBatch({key: value.to(*args, **kwargs) for key, value in self.items()})


class TextDataset(Dataset):
    """Tokenized examples held as one `TextBatch` of (N, L) tensors; ``__getitems__`` indexes a
    whole batch at once (the DataLoader hands it a batch of indices)."""

    def __init__(self, batch: TextBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[index] for key, value in self.batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> TextBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TextBatch({key: value[idx] for key, value in self.batch.items()})

    def tensors(self) -> TextBatch:
        """All examples: a `TextBatch` of (N, L) int64 tensors."""
        return TextBatch(self.batch)


# ---- the data module ----------------------------------------------------------------------------


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be an integer >= {minimum}, got {value!r}")


def _fraction(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise ConfigError(key, f"must be a number between 0 and 1 (exclusive), got {value!r}")


def _read_lines(path: Path, name: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; ConfigError on ``data.files``."""
    if not path.exists():
        raise ConfigError("data.files", f"{name}: no such file")
    if path.is_dir():
        raise ConfigError("data.files", f"{name}: is a folder, not a text file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("data.files", f"{name}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError("data.files", f"{name}: cannot be read ({exc.strerror})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ConfigError("data.files", f"{name}: has no lines of text")
    return lines


class TextDataModule(_SplitLoaders, LightningDataModule):
    """Lines of text tokenized by the model's own Hugging Face tokenizer, for transformers.

    Args:
        files: text files, one example per line (blank lines skipped, whitespace stripped);
            None: the embedded English sentences (`embedded_sentences`).
        tokenizer: a local Hugging Face model or tokenizer folder (read by ``AutoTokenizer``,
            local files only, no code of the folder's own: `tnsearch.hf`), or a loaded
            tokenizer. The config's default is the model's own ``model.path``. A tokenizer
            without a pad token pads with its end-of-sequence token.
        max_length: every sequence is padded or truncated to this many tokens.
        batch_size: training batch size; every training batch has exactly this many sequences
            (drop_last; a training split smaller than it gives one batch of the whole split).
        eval_batch_size: batch size for val/test (default: batch_size).
        seed: seeds the split, ``limit``'s choice and the shuffling.
        val_fraction: share of the (kept) lines held out for validation (at least one line).
        test_fraction: share of the (kept) lines held out for test (at least one line).
        limit: keep only the first ``limit`` lines of the seeded shuffle (tests, quick runs).
        model_path: the model's folder (``model.path``), when there is one: a `tokenizer` that is
            this folder is checked as the model's (its errors name ``model.path``).

    ``check()`` raises the one-line `ConfigError` of a bad option (it reads the files and the
    tokenizer, writes nothing); ``setup()`` splits and tokenizes once, and caches the tensors.
    """

    name = "text"  # the config name (data/text.yaml)
    title = "text"  # the data set's name in messages

    def __init__(
        self,
        *,
        files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        tokenizer: Any = None,
        max_length: int = 64,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        limit: int | None = None,
        model_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.model_path = model_path
        if isinstance(files, str | os.PathLike):
            files = [files]
        self.files = None if files is None else list(files)
        self.tokenizer_source = tokenizer
        self.max_length, self.seed, self.limit = max_length, seed, limit
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._check_options()
        self.indices: dict[str, np.ndarray] = {}  # split -> positions in `lines`
        self._lines: list[str] | None = None
        self._tokenizer: Any = None
        self._datasets: dict[str, TextDataset] = {}
        self._shuffle = _stream(seed, 0)

    # -- checks -----------------------------------------------------------------------------------

    def _check_options(self) -> None:
        """The options that need no file: one ConfigError naming the key."""
        if self.files is not None:
            if not self.files:
                raise ConfigError("data.files", "must name at least one file (null: embedded)")
            for file in self.files:
                if not isinstance(file, str | os.PathLike) or not str(file).strip():
                    raise ConfigError("data.files", f"must be paths of text files, got {file!r}")
        _positive_int("data.max_length", self.max_length)
        _positive_int("data.batch_size", self.batch_size)
        _positive_int("data.eval_batch_size", self.eval_batch_size)
        _positive_int("data.seed", self.seed, minimum=0)
        if self.limit is not None:
            _positive_int("data.limit", self.limit)
        _fraction("data.val_fraction", self.val_fraction)
        _fraction("data.test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "data.test_fraction",
                f"val_fraction + test_fraction must be below 1, got "
                f"{self.val_fraction} + {self.test_fraction}",
            )

    def check(self) -> None:
        """Raise the one-line `ConfigError` of a bad option: unreadable or empty ``files``, a
        ``tokenizer`` that is no Hugging Face folder, too few lines to split, a ``max_length``
        the tokenizer cannot take, ... Reads the files and the tokenizer (kept); writes nothing."""
        self._check_options()
        lines = self.lines
        tokenizer = self.hf_tokenizer
        special = tokenizer.num_special_tokens_to_add()
        if self.max_length <= special:
            raise ConfigError(
                "data.max_length",
                f"must be above the {special} special tokens the tokenizer adds, "
                f"got {self.max_length}",
            )
        most = getattr(tokenizer, "model_max_length", None)
        if isinstance(most, int) and most < 1_000_000 and self.max_length > most:
            raise ConfigError(
                "data.max_length",
                f"the tokenizer takes at most {most} tokens, got {self.max_length}",
            )
        n = len(lines) if self.limit is None else min(self.limit, len(lines))
        if n - sum(self._held_out(n)) < 1:
            key = (
                "data.limit" if self.limit is not None and self.limit < len(lines) else "data.files"
            )
            raise ConfigError(key, f"{n} lines are too few for a train, a val and a test split")

    def prepare_data(self) -> None:
        self.check()

    @property
    def lines(self) -> list[str]:
        """All examples, one per line (before ``limit``), read once."""
        if self._lines is None:
            if self.files is None:
                self._lines = list(embedded_sentences())
            else:
                self._lines = [
                    line
                    for file in self.files
                    for line in _read_lines(Path(file).expanduser(), str(file))
                ]
        return self._lines

    @property
    def hf_tokenizer(self) -> Any:
        """The Hugging Face tokenizer, loaded once from ``tokenizer`` (local files only)."""
        if self._tokenizer is None:
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _is_model_path(self, path: Path) -> bool:
        if self.model_path is None:
            return False
        model = Path(self.model_path).expanduser()
        return path == model or (path.exists() and model.exists() and path.samefile(model))

    def _load_tokenizer(self) -> Any:
        source = self.tokenizer_source
        if source is None:
            raise ConfigError(
                "data.tokenizer",
                "give a local Hugging Face tokenizer folder (null takes model.path, "
                "and this model has none)",
            )
        if isinstance(source, str | os.PathLike):
            path = Path(source).expanduser()
            # the model's own folder (the default): what is wrong with it is model.path's fault
            key = "model.path" if self._is_model_path(path) else "data.tokenizer"
            if not path.is_dir():
                what = "not a folder" if path.exists() else "no such folder"
                raise ConfigError(
                    key, f"{source}: {what} (give a local Hugging Face model or tokenizer folder)"
                )
            try:
                tokenizer = hf.tokenizer(path, key)
            except ValueError as exc:
                raise ConfigError.from_exception(exc, key) from None
        elif callable(source) and hasattr(source, "pad_token"):
            tokenizer = source
        else:
            raise ConfigError(
                "data.tokenizer", f"must be a Hugging Face tokenizer folder, got {source!r}"
            )
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ConfigError(
                    "data.tokenizer", "has neither a pad token nor an end-of-sequence token"
                )
            tokenizer.pad_token = tokenizer.eos_token  # the usual choice for GPT-style models
        return tokenizer

    # -- the splits -------------------------------------------------------------------------------

    def _held_out(self, n: int) -> tuple[int, int]:
        """(n_test, n_val) of n kept lines: at least one each."""
        return max(1, round(self.test_fraction * n)), max(1, round(self.val_fraction * n))

    def setup(self, stage: str | None = None) -> None:
        """Split the lines with the seed, tokenize each split once, cache the tensors."""
        if self._datasets:
            return
        self.check()
        lines, tokenizer = self.lines, self.hf_tokenizer
        order = np.random.default_rng(self.seed).permutation(len(lines))
        if self.limit is not None:
            order = order[: self.limit]
        n_test, n_val = self._held_out(len(order))
        parts = {
            "train": order[n_test + n_val :],
            "val": order[n_test : n_test + n_val],
            "test": order[:n_test],
        }
        for split in SPLITS:
            idx = np.sort(parts[split])
            encoded = tokenizer(
                [lines[i] for i in idx],
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            batch = TextBatch(
                {k: encoded[k].long().contiguous() for k in INPUT_KEYS if k in encoded}
            )
            self.indices[split] = idx
            self._datasets[split] = TextDataset(batch)

    def dataset(self, split: str) -> TextDataset:
        """The ``train``, ``val`` or ``test`` dataset (sets up on first use)."""
        if split not in SPLITS:
            raise ValueError(f"split: must be one of {', '.join(SPLITS)}, got {split!r}")
        self.setup()
        return self._datasets[split]

    def texts(self, split: str) -> list[str]:
        """The lines of a split, in the order of its tensors."""
        self.dataset(split)
        return [self.lines[i] for i in self.indices[split]]

    def tensors(self, split: str) -> TextBatch:
        """A whole split: a `TextBatch` of (N, max_length) int64 tensors."""
        return self.dataset(split).tensors()

    def train_tensors(self) -> TextBatch:
        """``tensors("train")``: the data of a plain PyTorch loop that matches the loaders."""
        return self.tensors("train")

    def raw_inputs(self, split: str, n: int | None = None) -> list[str]:
        """The first `n` (all: None) lines of a split, as text (before tokenization)."""
        return self.texts(split)[:n]

    def preprocessing(self) -> dict[str, Any]:
        """How text becomes a model's input here, as plain data (an export package's
        ``preprocessing.json``): see `tokenizer_record`."""
        return tokenizer_record(self.hf_tokenizer, self.max_length)

    # -- what the rest of tnsearch asks ---------------------------------------------------------

    @property
    def facts(self) -> dict[str, int]:
        """What a model is built from: ``vocab_size`` (the tokenizer's, added tokens included)
        and ``max_length``."""
        return {"vocab_size": len(self.hf_tokenizer), "max_length": self.max_length}

    def example_input(self, batch_size: int = 1) -> TextBatch:
        """``batch_size`` real training sequences of exactly ``max_length`` tokens (the longest
        ones first, repeated if the split is smaller), e.g. for latency."""
        _positive_int("batch_size", batch_size)
        train = self.tensors("train")
        lengths = train["attention_mask"].sum(dim=1)  # (N,)
        order = torch.argsort(lengths, descending=True, stable=True)
        idx = order[torch.arange(batch_size) % len(order)]
        return TextBatch({key: value[idx] for key, value in train.items()})

    def token_counts(self) -> Tensor:
        """How often each token id occurs in the training split, padding excluded:
        int64 (vocab_size,), summing to the number of attended tokens of ``tensors("train")``."""
        train = self.tensors("train")
        ids = train["input_ids"][train["attention_mask"].bool()]
        return torch.bincount(ids, minlength=self.facts["vocab_size"]).long()


def tokenizer_record(tokenizer: Any, max_length: int) -> dict[str, Any]:
    """How `tokenizer` makes a model's input of at most `max_length` tokens, as plain data: the
    outputs the model takes (of `INPUT_KEYS`), ``max_length`` (truncation) and the pad token
    (padding; a tokenizer without one pads with its end-of-sequence token, as the data module
    does)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    given = tokenizer(["a"], truncation=True, max_length=max_length)
    return {
        "kind": "text",
        "max_length": int(max_length),
        "inputs": [k for k in INPUT_KEYS if k in given],
        "pad_token": tokenizer.pad_token,
        "pad_id": None if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id),
    }
