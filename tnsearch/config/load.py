"""From the composed config to typed objects, once, where a command starts.

`load` checks the plain data (`checks`: types and ranges, in their one-line words), then builds
the command's schema (`build`). `register` puts the schemas in Hydra's ConfigStore
(`schema/config`, `schema/report`, ...), where a primary config of a user's own can take one as
its base, so that Hydra checks the types while it composes:

    defaults:
      - schema/config
      - config
      - _self_

(tnsearch's own conf/ does not: its commands check once, after composing, in the words above.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from tnsearch.config import checks
from tnsearch.config.build import build
from tnsearch.config.schema import SCHEMAS, Config

S = TypeVar("S")


def load(container: Mapping[str, Any], schema: type[S] | str | None = None) -> S:
    """The command's typed configuration from the resolved container (`cli.resolve`).

    Args:
        container: plain data (lists, dicts, scalars), interpolations resolved.
        schema: the schema class, or a primary config's name in conf/ (`report`); None picks
            it by the keys the container holds (a report's `report`, a probe's `layer`, an
            export's `trial`).
    """
    if isinstance(schema, str):
        schema = SCHEMAS[schema]
    schema = schema or _schema_of(container)
    if issubclass(schema, Config):
        checks.check_basic(container)
    return build(schema, container)


def register() -> None:
    """The schemas in Hydra's ConfigStore, group `schema` (`schema/config`, `schema/report`,
    ...); done once per process by every command before Hydra composes."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(group="schema", name=name, node=schema, package="_global_")


def _schema_of(container: Mapping[str, Any]) -> type[Config]:
    if "report" in container:
        return SCHEMAS["report"]
    if "layer" in container:
        return SCHEMAS["probe"]
    if "trial" in container:
        return SCHEMAS["export"]
    return Config
