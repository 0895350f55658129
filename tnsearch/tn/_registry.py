"""The topology registry: name -> layer class. Adding a topology is one decorated class."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from tnsearch.tn._base import TNLayer

__all__ = ["TOPOLOGIES", "register", "topology_class"]


class _Registry(Mapping[str, type[TNLayer]]):
    """Read-only mapping of topology names to :class:`TNLayer` subclasses, sorted by name."""

    def __init__(self) -> None:
        self._items: dict[str, type[TNLayer]] = {}

    def __getitem__(self, name: str) -> type[TNLayer]:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"TOPOLOGIES({', '.join(self)})"


TOPOLOGIES = _Registry()


def register(name: str) -> Callable[[type[TNLayer]], type[TNLayer]]:
    """Class decorator adding a :class:`TNLayer` subclass to :data:`TOPOLOGIES` as ``name``."""

    def add(cls: type[TNLayer]) -> type[TNLayer]:
        if name in TOPOLOGIES._items:
            raise ValueError(f"topology: {name!r} is already registered")
        cls.topology = name
        TOPOLOGIES._items[name] = cls
        return cls

    return add


def topology_class(name: object) -> type[TNLayer]:
    """The class registered as ``name``; ``ValueError("topology: unknown ...")`` otherwise."""
    if not isinstance(name, str) or name not in TOPOLOGIES:
        raise ValueError(f"topology: unknown {name!r} (known: {', '.join(TOPOLOGIES)})")
    return TOPOLOGIES[name]
