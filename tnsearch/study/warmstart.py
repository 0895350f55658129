"""Warm start: begin every trial from a trained dense model instead of from scratch.

Either the user hands over trained weights (`model.checkpoint=PATH`: a Lightning checkpoint or a
state_dict), or the study trains the dense model itself once (`pretrain.epochs=K`) and every
trial and every worker reuses it. Tensorized layers are then initialized by decomposing the
trained weights, and each trial only fine-tunes ("heals") for `epochs`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.config import Config, ConfigError
from tnsearch.files import atomic_path

PRETRAINED = "pretrained.pt"  # in the study folder


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict in `path`, checked against `model` (raises ConfigError on a mismatch).

    Accepts a plain state_dict or a Lightning checkpoint (its "state_dict", whose keys may carry
    the LightningModule's attribute prefix such as "model.").
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("model.checkpoint", f"no such file: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unreadable or unsafe file
        first = " ".join(str(exc).split())[:200]
        raise ConfigError(
            "model.checkpoint",
            f"cannot read {path}: not a PyTorch state_dict or Lightning checkpoint "
            f"({type(exc).__name__}: {first})",
        ) from None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError("model.checkpoint", f"{path} holds no state_dict of tensors")
    expected = model.state_dict()
    state = _strip_prefix(dict(state), expected)
    for key, value in expected.items():
        if key not in state:
            raise ConfigError(
                "model.checkpoint", f"{path} does not match the model: missing key {key!r}"
            )
        if state[key].shape != value.shape:
            raise ConfigError(
                "model.checkpoint",
                f"{path} does not match the model: key {key!r} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}",
            )
    for key in state:
        if key not in expected:
            raise ConfigError(
                "model.checkpoint", f"{path} does not match the model: unexpected key {key!r}"
            )
    return {k: state[k] for k in expected}


def _strip_prefix(state: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> dict:
    """Drop a LightningModule attribute prefix ("model.", "net.", ...) shared by every key."""
    if set(state) & set(expected) or not state:
        return state
    first = next(iter(state))
    for cut in range(first.count(".")):
        prefix = ".".join(first.split(".")[: cut + 1]) + "."
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix) :]: v for k, v in state.items()}
            if set(stripped) & set(expected):
                return stripped
    return state


#: What a study's pretrained weights were trained with (`identity.made_with`), kept inside them.
PRETRAINED_WITH = ("model", "data", "pretrain")


def pretrained(
    study_dir: Path,
    epochs: int,
    train: Any,
    *,
    say: Callable[[str], None] | None = None,
    cfg: Config | None = None,
) -> dict[str, torch.Tensor]:
    """The study's trained dense weights: trained once by the first worker, read by all others.

    Args:
        study_dir: the study folder; the weights are `study_dir / PRETRAINED`.
        epochs: pretraining epochs (for the message).
        train: a callable returning the trained dense model's state_dict (runs at most once).
        say: where to tell the user that the study pretrains (None: nowhere).
        cfg: the resolved config; what the weights are trained with is saved beside them, and
            weights trained with other `PRETRAINED_WITH` keys are refused (`check_pretrained`).

    A file lock makes a second worker wait while the first trains; the file is written
    atomically, so nobody ever reads half of it.
    """
    from tnsearch.study import identity

    study_dir.mkdir(parents=True, exist_ok=True)
    target = study_dir / PRETRAINED
    with open(study_dir / (PRETRAINED + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not target.exists():
                if say is not None:
                    say(f"pretraining the dense model for {epochs} epochs (once per study)")
                state = {k: v.detach().cpu() for k, v in train().items()}
                made = identity.made_with(cfg, PRETRAINED_WITH) if cfg is not None else None
                saved = {"state_dict": state, "epochs": epochs, "worker": os.getpid()}
                if made is not None:
                    saved["made_with"] = json.dumps(made)
                with atomic_path(target) as tmp:
                    torch.save(saved, tmp)
            saved = read_pretrained(target)
            if cfg is not None:
                _check_saved(target, saved, cfg)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return saved["state_dict"]


def check_pretrained(study_dir: Path, cfg: Config) -> None:
    """Before anything is written: the study's `pretrained.pt`, if there is one, must read
    back and have been trained with this config's `model`, `data` and `pretrain` keys
    (ConfigError naming the file, or the first differing key, and what to do)."""
    target = Path(study_dir) / PRETRAINED
    if cfg.pretrain.epochs and target.exists():
        _check_saved(target, read_pretrained(target, mmap=True), cfg)


def read_pretrained(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The saved pretrained weights and what they were trained with (ConfigError naming the
    file when it does not read back: truncated, emptied, not a torch file). `mmap`: map the
    tensors instead of reading them (a check that needs only the record)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(saved, Mapping) or not isinstance(saved.get("state_dict"), Mapping):
            raise ValueError("no state_dict in it")
    except Exception as exc:  # noqa: BLE001 - truncated, emptied or overwritten
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ConfigError(
            str(path),
            f"the study's pretrained dense model is damaged ({type(exc).__name__}: {reason}); "
            "delete it to train it again (its trials so far started from it), or start a new "
            "study with another name=",
        ) from None
    return saved


def _check_saved(path: Path, saved: Mapping[str, Any], cfg: Config) -> None:
    from tnsearch.study import identity

    current = identity.made_with(cfg, PRETRAINED_WITH)
    made = saved.get("made_with")
    if made is None:  # saved before what it was trained with was: its epochs at least
        stored = {"pretrain.epochs": saved.get("epochs")}
        current = {"pretrain.epochs": current.get("pretrain.epochs")}
    else:
        stored = json.loads(made)
    identity.check(stored, current, str(path))
