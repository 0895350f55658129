"""Optuna storages built from the `storage/` config group.

`journal` is the default: one append-only file in the study folder, safe for many processes on
one machine (and on a shared file system) without a database server. `rdb` takes any SQLAlchemy
URL: `sqlite:///...` for one machine, `postgresql://...` for several machines joining one study.
"""

from __future__ import annotations

from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from tnsearch.config import ConfigError


def journal(path: str) -> BaseStorage:
    """A journal-file storage at `path` (the folder is created)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(file)))


def rdb(url: str) -> BaseStorage:
    """An RDB storage (SQLite or a database server) for the study."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several local workers share one SQLite file: wait for the lock instead of failing
        # at once with "database is locked" (optuna#820, #4994).
        engine_kwargs = {"connect_args": {"timeout": 120}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    # No Optuna heartbeat: it only beats inside study.optimize, and tnsearch drives Optuna with
    # ask/tell; its own heartbeat (tnsearch.liveness) works the same on every storage.
    return RDBStorage(url, engine_kwargs=engine_kwargs)


def check_reachable(storage_cfg) -> None:
    """Raise ConfigError if an RDB URL cannot be reached; writes nothing.

    Args:
        storage_cfg: the `storage` config node (with `url` for RDB storages).
    """
    url = storage_cfg.get("url")
    if url is None or url.startswith("sqlite:"):
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any driver error means unreachable
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError("storage.url", f"cannot connect to {redact(url)}: {reason}") from None
    finally:
        if "engine" in locals():
            engine.dispose()


def redact(url: str) -> str:
    """A database URL with its password hidden."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def label(storage_cfg) -> str:
    """Where a `storage` config node points: the journal file or the (password-free) URL."""
    if storage_cfg.get("path") is not None:
        return str(storage_cfg["path"])
    return redact(str(storage_cfg.get("url", "?")))


__all__ = ["check_reachable", "journal", "label", "rdb", "redact"]
