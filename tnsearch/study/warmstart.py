"""Warm start: begin every trial from a trained dense model instead of from scratch.

Either the user hands over trained weights (`model.checkpoint=PATH`: a Lightning checkpoint or a
state_dict), or the study trains the dense model itself once (`pretrain.epochs=K`) and every
trial and every worker reuses it. Tensorized layers are then initialized by decomposing the
trained weights, and each trial only fine-tunes ("heals") for `epochs`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tnsearch.config import ConfigError
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


def pretrained(
    study_dir: Path, epochs: int, train: Any, *, say: Callable[[str], None] | None = None
) -> dict[str, torch.Tensor]:
    """The study's trained dense weights: trained once by the first worker, read by all others.

    Args:
        study_dir: the study folder; the weights are `study_dir / PRETRAINED`.
        epochs: pretraining epochs (for the message).
        train: a callable returning the trained dense model's state_dict (runs at most once).
        say: where to tell the user that the study pretrains (None: nowhere).

    A file lock makes a second worker wait while the first trains; the file is written
    atomically, so nobody ever reads half of it.
    """
    study_dir.mkdir(parents=True, exist_ok=True)
    target = study_dir / PRETRAINED
    with open(study_dir / (PRETRAINED + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not target.exists():
                if say is not None:
                    say(f"pretraining the dense model for {epochs} epochs (once per study)")
                state = {k: v.detach().cpu() for k, v in train().items()}
                with atomic_path(target) as tmp:
                    torch.save({"state_dict": state, "epochs": epochs, "worker": os.getpid()}, tmp)
            saved = torch.load(target, map_location="cpu", weights_only=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return saved["state_dict"]
