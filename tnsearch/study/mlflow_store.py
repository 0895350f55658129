"""A new MLflow SQLite store in milliseconds: a copy of an empty one, made once per MLflow version.

MLflow builds a new SQLite store by running its schema migrations (about 50 of them): 1.7 s on a
quiet 2-core machine, 5.7 s on a loaded one, paid by every new study root and by every test that
makes a store. Copying an already migrated empty store and opening it takes 0.03 s. The empty
store (the template) is made once per MLflow version in the user's cache folder
(`$XDG_CACHE_HOME/tnsearch/`, else `~/.cache/tnsearch/`); anything that goes wrong with it
leaves the store to MLflow, as before.

Workers that start together must not create one store twice: `lock` holds a file lock beside
the database while a store is made and opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from tnsearch.files import atomic_path

__all__ = ["cache_folder", "lock", "seed", "sqlite_path", "template"]


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None: another store, in memory, or with options)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///")
    if not path or path == ":memory:" or "?" in path:
        return None
    return Path(path)


@contextlib.contextmanager
def lock(uri: str) -> Iterator[None]:
    """Hold an exclusive file lock next to a SQLite store (no-op for other stores)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_folder() -> Path:
    """Where tnsearch keeps what it makes once per user (`$XDG_CACHE_HOME/tnsearch/`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tnsearch"


def template() -> Path:
    """The empty store of the installed MLflow version (made now if it is not cached yet)."""
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = cache_folder() / f"mlflow-{mlflow.__version__}-empty.db"
    if path.is_file():
        return path
    with atomic_path(path) as tmp:  # two first studies at once: either template is whole
        store = SqlAlchemyStore(f"sqlite:///{tmp}", str(tmp.parent / "unused-artifacts"))
        store.engine.dispose()
        # MLflow adds experiment 0 ("Default") with an artifact folder in the working directory
        # of whoever made the store; without it, MLflow adds it on first opening the copy, as
        # it would have for a store of its own.
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return path


def seed(uri: str) -> bool:
    """Put a copy of the empty store where a `sqlite:///` store does not exist yet; return whether
    it did. Call it under `lock(uri)`. On any error the store is left to MLflow (False)."""
    db = sqlite_path(uri)
    if db is None or db.exists():
        return False
    try:
        source = template()
        with atomic_path(db) as tmp:  # never half a database where MLflow looks
            shutil.copyfile(source, tmp)
    except Exception:  # noqa: BLE001 - the template saves time; MLflow can still make a store
        return False
    return True
