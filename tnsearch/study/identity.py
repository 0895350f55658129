"""What a study is made with, kept in it: a continuation with other settings refuses.

A study's trials are only comparable when they searched one model, on one data, in one space,
for one task, from one starting point. So the config sections that say so (`SECTIONS`) are
stored, flattened to dotted keys, as a user attribute of the study when it is created (and when
an older study without it is first continued). A command that joins the study with any of these
keys changed stops before it writes anything, with one line naming the keys and telling to
start a new study with another `name=`; there is no switch to mix them, because Optuna cannot
either (a changed space makes every new trial fail on its distributions).

Keys that only say how the search runs never refuse: `trials`, `workers`, `worker`, `timeout`,
`retries`, `tracking`, `storage`, `sampler` (another sampler, or seed, on the same space is a
legitimate second round), `latency`, `constraints`, `pruning` and the data loader's own
`RUNNING` keys. Nor do keys the study was made without (a newer tnsearch adds keys with their
defaults): they are told once and recorded. `epochs` is between: each trial's training budget,
so a front of trials trained for 1 and for 5 epochs compares unequal things, yet a longer
second round on the same study is a common wish; a changed `epochs` warns once (each trial's
MLflow run records its epochs).

The same record sits inside the study's `pretrained.pt` (`warmstart`): weights trained with other
`model`, `data` or `pretrain` keys are refused, not silently reused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from tnsearch.config import Config, ConfigError
from tnsearch.ui import console

__all__ = ["ATTR", "SECTIONS", "check", "differences", "made_with", "remember"]

#: The study user attribute that holds `made_with`.
ATTR = "made_with"
#: The config sections that make a study what it is.
SECTIONS = ("model", "data", "space", "task", "pretrain")
#: Keys that change what a trial means but may change between runs: a warning.
TRAINING = ("epochs",)
#: Keys inside SECTIONS that only concern running (how data is loaded, not which).
RUNNING = ("data.eval_batch_size", "data.num_workers", "data.download")


def made_with(
    cfg: Config | Mapping[str, Any], sections: Iterable[str] = (*SECTIONS, *TRAINING)
) -> dict:
    """`sections` of the config as {dotted key: value} (JSON values; RUNNING left out).

    >>> made_with({"model": {"_target_": "m.MLP", "hidden": [3]}, "epochs": 2})
    {'model._target_': 'm.MLP', 'model.hidden': [3], 'epochs': 2}
    """
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping) and value:
            for name, child in value.items():
                walk(child, f"{key}.{name}")
        elif key not in RUNNING:
            flat[key] = json.loads(json.dumps(value, default=str))

    values = cfg.to_dict() if isinstance(cfg, Config) else cfg
    for section in sections:
        if section in values:
            walk(values[section], section)
    return flat


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ (or that only one of the two has), in stored order."""
    keys = [*stored, *(k for k in current if k not in stored)]
    return [k for k in keys if stored.get(k, _ABSENT) != current.get(k, _ABSENT)]


_ABSENT = object()


def describe(key: str, stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """`'was' here 'now'` for one key, short."""
    return f"made with {_short(stored, key)}, this command has {_short(current, key)}"


def _short(values: Mapping[str, Any], key: str) -> str:
    if key not in values:
        return "none"
    text = json.dumps(values[key])
    return text if len(text) <= 60 else text[:57] + "..."


def check(stored: Mapping[str, Any] | None, current: Mapping[str, Any], what: str) -> list[str]:
    """Raise ConfigError when `current` differs from the `stored` record in a key of SECTIONS
    that the record holds; warn once when only TRAINING keys differ. Return the keys of
    SECTIONS this command has and the record lacks: a newer tnsearch adds keys with their
    defaults, and refusing them would shut every older study out after an upgrade.

    Args:
        stored: the stored record (None: an older study or file without one: nothing to check).
        current: `made_with` of this command's config.
        what: the study (or file) in the message, e.g. "study 'mlp'".
    """
    if stored is None:
        return []
    changed = differences(stored, current)
    ours = [k for k in changed if k.split(".", 1)[0] in SECTIONS]
    refused = [k for k in ours if k in stored]
    if refused:
        key, more = refused[0], refused[1:]
        also = f" (also: {', '.join(more[:5])}{', ...' if len(more) > 5 else ''})" if more else ""
        raise ConfigError(
            key,
            f"{what} was {describe(key, stored, current)}{also}: start a new study with "
            "another name= (or continue this one with its own keys)",
        )
    for key in (k for k in changed if k in TRAINING and k in stored):
        console.warn(
            f"{key}: {what} was {describe(key, stored, current)}; its front compares trials "
            "trained both ways (each trial's MLflow run records its epochs)"
        )
    return [k for k in ours if k not in stored]


def remember(study, cfg: Config, added: Iterable[str] = ()) -> None:
    """Store what the study is made with, unless it holds it already (the first run's); keys
    `added` since (`check`) are told once and recorded with their values now."""
    stored = study.user_attrs.get(ATTR)
    current = made_with(cfg)
    if stored is None:
        study.set_user_attr(ATTR, current)
        return
    added = list(added)
    if added:
        console.warn(
            f"{', '.join(added)}: study {study.study_name!r} was made before "
            f"{'these keys' if len(added) > 1 else 'this key'} (a newer tnsearch, or a key "
            "of your own): recorded now with this command's values"
        )
        study.set_user_attr(ATTR, {**stored, **{k: current[k] for k in added}})
