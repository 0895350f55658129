"""The one command-line wrapper: every `python -m tnsearch...` command is a Hydra main made here.

`command(config_name)` turns `fn(cfg) -> int | None` (cfg: the composed config; `resolve`
makes it the command's typed configuration, `tnsearch.config`) into a console entry point
that composes `pkg://tnsearch.conf` (the top-level conf/ folder, installed with the package),
silences library chatter, and turns a `ConfigError` into one line on stderr and exit status 2.
Hydra's own options work as usual: `--help`, `--cfg job`, `-cd DIR` for a folder of your own
presets; a `conf/` folder in the working directory is on the search path too (a preset
`conf/study/mine.yaml` is `study=mine`).

Every command ends the same way on a wrong key and on a signal:

- Hydra's own errors (an unknown preset `study=nope`, a key no config has `trails=5`, an
  override that does not parse) are one line naming the key, with the valid presets or the
  closest known key, and exit status 2 (`hydra_error`). Hydra prints them itself, in several
  lines, with exit status 1, unless HYDRA_FULL_ERROR is set: the command sets it while Hydra
  composes the config, and unsets it (if it set it) before the command's own work, whose
  errors Hydra reports as it always does.
- SIGINT (Ctrl-C) and SIGTERM, from the first line to the last, end the command with one line
  (`error: interrupted: SIGTERM`) and exit status 130 / 143 (`tnsearch.interrupts`); the study
  command says more itself (what became of its running trials).

A command's first line comes before its heavy imports (`loading`): PyTorch, Lightning and MLflow
take several seconds to import, and a command that says nothing for that long looks hung.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tnsearch import interrupts
from tnsearch.config import ConfigError, register
from tnsearch.environ import ENV_OVERRIDES, ENV_SPAWNED
from tnsearch.ui import console
from tnsearch.ui.chatter import quiet

__all__ = ["CONFIG_PATH", "command", "quiet", "resolve"]  # quiet: tnsearch.ui.chatter

#: Where every command's configs are found (conf/ at the top of the repository).
CONFIG_PATH = "pkg://tnsearch.conf"


def resolve(cfg, schema: type | str | None = None):
    """The composed Hydra config as the command's typed configuration (`tnsearch.config.load`:
    checked, then built; `schema` None: the one its keys say); a missing mandatory value, a
    wrong type or range is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from tnsearch.config import load

    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(str(exc.full_key), "is required but not set") from None
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "config")
        raise ConfigError(key, str(exc).splitlines()[0]) from None
    return load(container, schema)


def command(
    config_name: str,
    *,
    argv: Callable[[list[str]], list[str]] | None = None,
    loading: str = "PyTorch and Optuna",
) -> Callable[[Callable[[Any], int | None]], Callable[[], None]]:
    """Decorate `fn(cfg) -> exit code (None: 0)` into a console entry point.

    Args:
        config_name: the primary config in conf/ (e.g. "config", "report", "export").
        argv: rewrites the command line's arguments before Hydra parses them.
        loading: what the command imports before it can say more, named in its first line
            (`tnsearch.export: study 'quick': loading PyTorch and Optuna ...`).
    """

    def decorate(fn: Callable[[Any], int | None]) -> Callable[[], None]:
        import hydra

        @hydra.main(config_path=CONFIG_PATH, config_name=config_name, version_base=None)
        def hydra_main(cfg) -> None:
            _composed()  # the command's own errors: as Hydra reports them
            _announce(_program(fn), cfg, loading)
            quiet()
            try:
                code = fn(cfg)
            except ConfigError as exc:
                console.error(str(exc))
                sys.exit(2)
            if code:
                sys.exit(code)

        @functools.wraps(fn)
        def main() -> None:
            if argv is not None:
                sys.argv[1:] = argv(sys.argv[1:])
            sys.argv[1:1] = _inherited_overrides()
            _add_local_conf()
            register()  # the schemas in Hydra's ConfigStore (schema/config, ...)
            try:
                with interrupts.handled(), _composing():
                    hydra_main()
            except interrupts.Interrupted as exc:
                console.error(f"interrupted: {exc.name}")
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:  # a signal outside the main thread's handling
                console.error("interrupted: SIGINT")
                sys.exit(130)
            except Exception as exc:
                error = hydra_error(exc, config_name, sys.argv[1:])
                if error is None:
                    raise
                console.error(str(error))
                sys.exit(2)

        main.run = fn  # the command without Hydra, for tests and Python callers
        return main

    return decorate


#: Hydra re-raises its errors instead of printing them when this is "1".
_FULL_ERROR = "HYDRA_FULL_ERROR"
_SET_HERE = {"set": False}  # whether the command set it (then it unsets it too)


@contextlib.contextmanager
def _composing() -> Iterator[None]:
    """Hydra raises its errors (the command turns them into one line) while it composes."""
    if os.environ.get(_FULL_ERROR) is None:
        os.environ[_FULL_ERROR] = "1"
        _SET_HERE["set"] = True
    try:
        yield
    finally:
        _composed()


def _composed() -> None:
    """The config is composed: HYDRA_FULL_ERROR as the user left it."""
    if _SET_HERE["set"]:
        os.environ.pop(_FULL_ERROR, None)
        _SET_HERE["set"] = False


def hydra_error(
    exc: BaseException, config_name: str = "config", overrides: Sequence[str] = ()
) -> ConfigError | None:
    """Hydra's error while composing the config as one line naming the key (None: not one of
    Hydra's composition errors). `overrides`: the command line's, for the closest known key."""
    import re

    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, InstantiationException):
        return None  # the command's own work (HYDRA_FULL_ERROR set by the user): as it is

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        return ConfigError(
            group or "config",
            f"no preset {option!r} (presets: {', '.join(exc.options)}; your own: -cd DIR or "
            f"./conf/{group}/{option}.yaml)",
        )
    if isinstance(exc, OverrideParseException):
        key = str(exc.override).split("=", 1)[0].lstrip("+~") or "overrides"
        return ConfigError(key, f"cannot parse {exc.override!r}: {_first_line(exc.message)}")
    cause = exc.__cause__
    if isinstance(exc, ConfigCompositionException) and isinstance(
        cause, ConfigKeyError | ConfigAttributeError
    ):
        key = str(getattr(cause, "full_key", "") or "config")
        near = _closest(key, config_name, overrides)
        hint = f"did you mean {near}? " if near else ""
        return ConfigError(key, f"no such key ({hint}a key of your own takes a +: +{key}=...)")
    there = re.search(r"An item is already at '([^']+)'", str(exc))
    if isinstance(exc, ConfigCompositionException) and there:
        return ConfigError(there[1], f"is a known key: set it without the + ({there[1]}=...)")
    if isinstance(exc, HydraException):
        key = str(getattr(cause, "full_key", "") or "config")
        text = _first_line(exc)
        if cause is not None:
            text = f"{text} ({_first_line(cause)})"
        return ConfigError(key, text)
    return None


def _closest(key: str, config_name: str, overrides: Sequence[str] = ()) -> str | None:
    """The known config key nearest to `key`: of the primary config with the command line's
    group choices (`study=mlp`, `model=custom`), or with its defaults when those fail too."""
    import difflib
    from importlib.resources import files

    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    known_groups = {p.name for p in files("tnsearch.conf").iterdir() if p.is_dir()}
    groups = [o for o in overrides if o.split("=", 1)[0] in known_groups and "=" in o]
    cfg = None
    for chosen in (groups, []):
        try:
            with initialize_config_module("tnsearch.conf", version_base=None):
                cfg = compose(config_name, overrides=chosen)
            break
        except Exception:  # noqa: BLE001 - a hint only
            continue
    if cfg is None:
        return None
    known: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for name, child in node.items():
            known.append(f"{prefix}{name}")
            if isinstance(child, dict):
                walk(child, f"{prefix}{name}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    found = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return found[0] if found else None


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _announce(program: str, cfg, loading: str) -> None:
    """The command's first line: which study, and what is being loaded (before it is).

    Local workers (`workers=N`) are copies of the command: only the command itself says it.
    """
    import os

    if os.environ.get(ENV_SPAWNED) == "1":
        return
    try:
        study = f" study {cfg.name!r}:"
    except Exception:  # noqa: BLE001 - a bad `name` is the command's own error to report
        study = ""
    console.Console().say(f"{program}:{study} loading {loading} ...")


def _program(fn: Callable) -> str:
    """The command's name as typed: `tnsearch`, `tnsearch.report` (`python -m` runs the module
    as `__main__`; its spec keeps the name)."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else "tnsearch"
    return module.removesuffix(".__main__")


def _inherited_overrides() -> list[str]:
    """A local worker's overrides come from its parent through the environment."""
    import json
    import os

    if os.environ.get(ENV_SPAWNED) != "1" or ENV_OVERRIDES not in os.environ:
        return []
    return list(json.loads(os.environ.pop(ENV_OVERRIDES)))


def _add_local_conf() -> None:
    """Put ./conf on Hydra's search path when it holds presets of the user's own."""
    from importlib.resources import files
    from pathlib import Path

    local = Path("conf").resolve()
    own = Path(str(files("tnsearch.conf"))).resolve()
    if not local.is_dir() or local == own:
        return
    if any(a.startswith(("hydra.searchpath", "--config-dir", "-cd")) for a in sys.argv[1:]):
        return
    sys.argv.insert(1, f"hydra.searchpath=[file://{local}]")
