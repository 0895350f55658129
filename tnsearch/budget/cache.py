"""The profile's cache: one file per measured option, written the moment it is measured.

A folder per model and settings (`${root}/${name}/profile/<key>/`, the key: a hash of the trained
weights and the settings every option depends on) holds ``dense.json`` (the dense reference)
and one ``<group>--<topology>-o<order>-r<rank>.json`` per measured option, each written
atomically. A killed profile loses at most the option in flight; a rerun reads what is there
and measures the rest. Several processes share the folder: an option is measured by the one
that holds its lock (`claim`), the others go on to the next and read it once it is written.

A file that does not parse, or was written by another version, is set aside
(``<file>.damaged-<time>``) with one warning and measured again; nothing here raises on a
damaged cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tnsearch.budget.profile import VERSION, Entry, Group
from tnsearch.files import write_text
from tnsearch.plan import FLOAT32

__all__ = ["OptionCache"]

DENSE = "dense.json"


class OptionCache:
    """Measured options of one profile key, one file each.

    Args:
        folder: the key's folder (made if missing).
        warn: called once per read with what was set aside (default: nothing said).
    """

    def __init__(self, folder: str | Path, *, warn: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.warn = warn or (lambda _text: None)

    # -- names --------------------------------------------------------------------------------
    def path(self, key: tuple) -> Path:
        """An option's file: (group, topology, order, rank[, precision]); float32 has no
        suffix (the name profiles had before precisions)."""
        group, topology, order, rank, *rest = key
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", group)
        suffix = "" if not rest or rest[0] == FLOAT32 else f"-{rest[0]}"
        return self.folder / f"{safe}--{topology}-o{order}-r{rank}{suffix}.json"

    # -- the dense reference ----------------------------------------------------------------------
    def dense(self) -> dict[str, Any] | None:
        data = self._read(self.folder / DENSE)
        if data is None:
            return None
        try:
            groups = {k: Group(tuple(v["layers"]), int(v["params"]), float(v["latency_ms"]),
                               int(v.get("bytes", 0)))
                      for k, v in data["groups"].items()}  # fmt: skip
            return {**data, "groups": groups}
        except (KeyError, TypeError, ValueError):
            self._set_aside(self.folder / DENSE, "its fields do not parse")
            return None

    def write_dense(self, dense: dict[str, Any]) -> None:
        data = {**dense, "groups": {k: asdict(g) for k, g in dense["groups"].items()}}
        write_text(self.folder / DENSE, json.dumps({"version": VERSION, **data}, indent=1) + "\n")

    # -- options ----------------------------------------------------------------------------------
    def entries(self) -> dict[tuple, Entry]:
        """Every measured option in the folder, by key (damaged files set aside, once warned)."""
        found, damaged = {}, []
        for path in sorted(self.folder.glob("*--*.json")):
            data = self._read(path, quiet=True)
            entry = None
            if data is not None:
                data.pop("version", None)
                try:
                    entry = Entry(**data)
                except TypeError:
                    entry = None
            if entry is None:
                damaged.append(path)
                continue
            found[entry.option] = entry
        for path in damaged:
            self._set_aside(path, "", quiet=True)
        if damaged:
            self.warn(
                f"profile cache: {len(damaged)} damaged or outdated entr"
                f"{'y' if len(damaged) == 1 else 'ies'} in {self.folder} set aside "
                f"(*.damaged-*), measured again"
            )
        return found

    def write(self, entry: Entry) -> None:
        data = {"version": VERSION, **asdict(entry)}
        write_text(self.path(entry.option), json.dumps(data, indent=1) + "\n")

    def read(self, key: tuple) -> Entry | None:
        data = self._read(self.path(key), quiet=True)
        if data is None:
            return None
        data.pop("version", None)
        try:
            return Entry(**data)
        except TypeError:
            return None

    @contextlib.contextmanager
    def claim(self, key: tuple) -> Iterator[bool]:
        """Hold the option's lock if no other process does (True), else yield False at once."""
        lock = self.path(key).with_suffix(".lock")
        with open(lock, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def hold(self, key: tuple) -> Iterator[None]:
        """Hold the option's lock, waiting for any other process that holds it."""
        lock = self.path(key).with_suffix(".lock")
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def wait(self, key: tuple) -> None:
        """Block until no process holds the option's lock."""
        with self.hold(key):
            pass

    # -- files -------------------------------------------------------------------------------------
    def _read(self, path: Path, *, quiet: bool = False) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            if not quiet:
                self._set_aside(path, "it does not parse or is from another version")
            return None
        return data

    def _set_aside(self, path: Path, why: str, *, quiet: bool = False) -> None:
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        with contextlib.suppress(OSError):
            path.replace(aside)
        if not quiet:
            self.warn(f"profile cache: {path} set aside as {aside.name} ({why}); measured again")
