"""Hugging Face folders, read without running any code of theirs.

Every call of tnsearch that reads a Hugging Face folder (a model, its config, its tokenizer)
goes through this module: local files only, ``trust_remote_code=False``, and, before
transformers reads anything, `refuse_code` looks at the folder's JSON files for what would make
transformers import code of the folder's own (an ``auto_map``, a ``model_type`` or tokenizer
class it does not ship). So no folder can run code or make transformers prompt
"Do you wish to run the custom code?".

Errors are ``ValueError("<key>: <folder>: <reason>")`` in one line, `key` the config key that
named the folder (``model.path``, ``data.tokenizer``, or a package's file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TOKENIZER_FILES", "config", "model", "refuse_code", "tokenizer"]

#: Files `tokenizer(...).save_pretrained` may write (any of them, by tokenizer kind).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "chat_template.jinja",
)
#: The JSON files of a folder that tell transformers which classes (and so which code) to use.
_CLASS_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor_config.json",
    "feature_extractor_config.json",
    "video_preprocessor_config.json",
)
#: A class-naming JSON file larger than this is not a config (it is not read).
_MAX_JSON_BYTES = 16 * 2**20


def _read_json(path: Path, key: str) -> dict[str, Any]:
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise ValueError(f"{key}: {path}: {path.stat().st_size:,} bytes is not a config file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{key}: {path}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{key}: {path}: must be a JSON object, got a {type(data).__name__}")
    return data


def refuse_code(folder: str | Path, key: str) -> None:
    """Raise if a transformers call on `folder` could import code the folder brings.

    Looks, without transformers, at the folder's config files: an ``auto_map`` (classes of the
    folder's own Python files), a ``model_type`` transformers does not know (it could only be
    built by the folder's code), a ``tokenizer_class`` / ``processor_class`` /
    ``image_processor_type`` that transformers does not ship.

    Raises:
        ValueError: ``<key>: <folder>: ...``, before anything else reads the folder.
    """
    folder = Path(folder)
    for name in _CLASS_FILES:
        path = folder / name
        if not path.is_file():
            continue
        data = _read_json(path, key)
        if "auto_map" in data:
            raise ValueError(
                f"{key}: {folder}: its {name} has an auto_map (classes from the folder's own "
                "Python files): tnsearch runs no code from a model folder"
            )
        kind = data.get("model_type") if name == "config.json" else None
        if kind is not None and not _known_model_type(kind):
            raise ValueError(
                f"{key}: {folder}: its config.json has model_type {kind!r}, which transformers "
                "does not ship (only the folder's own code could build it): not loaded"
            )
        for field in ("tokenizer_class", "processor_class", "image_processor_type"):
            value = data.get(field)
            if value is not None and not _known_class(value):
                raise ValueError(
                    f"{key}: {folder}: its {name} names {field} {value!r}, which transformers "
                    "does not ship: tnsearch runs no code from a model folder"
                )


def _known_model_type(kind: Any) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(kind, str) and kind in CONFIG_MAPPING_NAMES


def _known_class(name: Any) -> bool:
    import transformers

    if not isinstance(name, str) or not name.isidentifier():
        return False
    base = name.removesuffix("Fast")
    return any(hasattr(transformers, n) for n in (name, base, base + "Fast"))


def _quiet() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # a bar per trial says nothing here


def config(folder: str | Path, key: str) -> Any:
    """The folder's ``config.json`` as a transformers config (`refuse_code` first)."""
    refuse_code(folder, key)
    _quiet()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ValueError(f"{key}: {folder}: not a Hugging Face config ({text})") from None


def model(folder: str | Path, auto_class: str, key: str, *, weights: bool = True) -> Any:
    """The folder's model as `auto_class` (a transformers Auto class name), in eval mode.

    Args:
        weights: read its safetensors weights (`from_pretrained`); False: build it from its
            ``config.json`` alone (`from_config`, default initialization), e.g. to load other
            weights into it.
    """
    import transformers

    loader = getattr(transformers, auto_class)
    if not weights:
        built = loader.from_config(config(folder, key), trust_remote_code=False)
        return built.eval()
    refuse_code(folder, key)
    _quiet()
    try:
        built = loader.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise ValueError(f"{key}: cannot load {folder} as {auto_class}: {text}") from None
    return built.eval()


def tokenizer(folder: str | Path, key: str) -> Any:
    """The folder's tokenizer (`AutoTokenizer`, `refuse_code` first).

    Raises:
        ValueError: ``<key>: <folder>: not a Hugging Face tokenizer folder (...)``.
    """
    refuse_code(folder, key)
    _quiet()
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # noqa: BLE001 - any failure means: not a tokenizer folder
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise ValueError(
            f"{key}: {folder}: not a Hugging Face tokenizer folder ({reason})"
        ) from None
