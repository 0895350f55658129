"""The one command-line wrapper: every `python -m tnsearch...` command is a Hydra main made here.

`command(config_name)` turns `fn(cfg) -> int | None` (cfg: the composed config; `resolve`
makes it plain data) into a console entry point that composes `pkg://tnsearch.conf` (the
top-level conf/ folder, installed with the package), silences library chatter, and turns a
`ConfigError` into one line on stderr and exit status 2. Hydra's own options work as usual:
`--help`, `--cfg job`, `-cd DIR` for a folder of your own presets; a `conf/` folder in the
working directory is on the search path too (a preset `conf/study/mine.yaml` is `study=mine`).

A command's first line comes before its heavy imports (`loading`): PyTorch, Lightning and MLflow
take several seconds to import, and a command that says nothing for that long looks hung.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any

from tnsearch.config import ConfigError
from tnsearch.ui import console

__all__ = ["CONFIG_PATH", "command", "quiet", "resolve"]

#: Where every command's configs are found (conf/ at the top of the repository).
CONFIG_PATH = "pkg://tnsearch.conf"
#: Set in the local workers a `workers=N` command starts (`tnsearch.study.workers.spawn`).
ENV_SPAWNED = "TNSEARCH_SPAWNED"
#: A local worker's overrides (JSON list), handed over by its parent.
ENV_OVERRIDES = "TNSEARCH_OVERRIDES"


def quiet() -> None:
    """Silence library chatter that says nothing to a tnsearch user."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    warnings.filterwarnings("ignore", message=".*multivariate.*")


def resolve(cfg) -> dict[str, Any]:
    """The composed Hydra config as plain data; a missing mandatory value is a ConfigError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(str(exc.full_key), "is required but not set") from None
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", "") or "config")
        raise ConfigError(key, str(exc).splitlines()[0]) from None


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
            hydra_main()

        main.run = fn  # the command without Hydra, for tests and Python callers
        return main

    return decorate


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
