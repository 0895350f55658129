"""Plain data into a schema's dataclass, with OmegaConf's structured configs: they convert what a
command line gives ("3" for an int) and refuse what does not fit, named by key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from tnsearch.config.errors import ConfigError

S = TypeVar("S")

#: OmegaConf's type names, in the words of tnsearch's other messages.
_KINDS = {
    "Integer": "an integer",
    "Float": "a number",
    "Boolean": "true or false",
    "String": "a string",
}


def build(schema: type[S], data: Mapping[str, Any], *, prefix: str = "") -> S:
    """`data` as an instance of `schema` (a dataclass of tnsearch.config.schema); keys it lacks
    take their defaults; a key it does not know, or a value of the wrong type, is a ConfigError
    naming the key (under `prefix`, the section's own key, when `data` is one section)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    base = OmegaConf.structured(schema)
    _writable(base)
    try:
        return OmegaConf.to_object(OmegaConf.merge(base, dict(data)))
    except ConfigKeyError as exc:
        raise ConfigError(_key(prefix, exc), "is not a key of this config") from None
    except ValidationError as exc:
        raise ConfigError(_key(prefix, exc), _reason(_key(prefix, exc), exc)) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(_key(prefix, exc), str(exc.msg).splitlines()[0]) from None


def _writable(node) -> None:
    from omegaconf import Container, OmegaConf

    OmegaConf.set_readonly(node, None)
    for key in node.keys() if hasattr(node, "keys") else range(len(node)):
        child = node._get_node(key)
        if isinstance(child, Container):
            _writable(child)


def _key(prefix: str, exc) -> str:
    key = str(getattr(exc, "full_key", "") or "")
    return ".".join(k for k in (prefix, key) if k) or "config"


def _reason(key: str, exc) -> str:
    """`must be an integer, got 'abc'` from OmegaConf's "Value 'abc' of type 'str' could not
    be converted to Integer"."""
    first = str(exc.msg).splitlines()[0]
    kind = first.rsplit(" ", 1)[-1]
    if kind in _KINDS:
        return f"must be {_KINDS[kind]}, got {exc.value!r}"
    if "is not a valid bool" in first:
        return f"must be true or false, got {exc.value!r}"
    if "ListConfig" in first:
        return f"must be a list, e.g. {key}=[...], got {exc.value!r}"
    return first
