"""Optuna storages built from the `storage/` config group.

`journal` is the default: one append-only file in the study folder, safe for many processes on
one machine (and on a shared file system) without a database server. `rdb` takes any SQLAlchemy
URL: `sqlite:///...` for one machine, `postgresql://...` for several machines joining one study.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileSymlinkLock

from tnsearch.config import ConfigError
from tnsearch.study.journal_file import RepairingJournalFileBackend
from tnsearch.ui import console


def journal(path: str) -> BaseStorage:
    """A journal-file storage at `path` (the folder is created; a torn last record is set aside,
    a damaged record anywhere is replaced so that every other one is read: `journal_file`).

    Optuna's JournalFileBackend writes each batch of records under a lock with one write and an
    fsync, and on reading skips a last line that has no newline. But a crash or a full disk in
    the middle of that write leaves such a torn line, and the next append lands right after it:
    the torn record and the new one become one line that is not JSON, and from then on every
    read of the study fails. So before Optuna opens the file, under the same lock its writers
    hold, a torn tail is cut off and kept in a side file.
    """
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileSymlinkLock(str(file))
    set_aside_torn_tail(file, lock)
    return JournalStorage(RepairingJournalFileBackend(str(file), lock_obj=lock))


def set_aside_torn_tail(file: Path, lock: JournalFileSymlinkLock | None = None) -> Path | None:
    """Move the bytes after the journal's last newline (a record torn mid-write) to a side file
    `<journal>.torn-<unix time>`; return that file (None: the journal was whole)."""
    if not file.is_file() or file.stat().st_size == 0:
        return None
    if lock is not None:
        while not lock.acquire():
            time.sleep(0.01)
    try:
        with open(file, "rb+") as handle:
            size = handle.seek(0, 2)
            tail_start = _after_last_newline(handle, size)
            if tail_start == size:
                return None
            handle.seek(tail_start)
            torn = handle.read()
            side = file.with_name(f"{file.name}.torn-{int(time.time())}")
            side.write_bytes(torn)
            handle.truncate(tail_start)
            handle.flush()
    finally:
        if lock is not None:
            lock.release()
    console.warn(
        f"{file}: its last record was torn (a crash or a full disk mid-write); "
        f"its {len(torn)} bytes were set aside in {side.name}, the earlier records are read"
    )
    return side


def _after_last_newline(handle, size: int, block: int = 1 << 16) -> int:
    """The offset just after the last b"\n" of the open file (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - block)
        handle.seek(start)
        chunk = handle.read(end - start)
        found = chunk.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


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
        secret = _password(url)
        if secret:
            reason = reason.replace(secret, "***")
        raise ConfigError("storage.url", f"cannot connect to {redact(url)}: {reason}") from None
    finally:
        if "engine" in locals():
            engine.dispose()


_USERINFO = re.compile(r"(?P<head>://[^:/@]*:)(?P<password>[^@]*)@")


def _password(url: str) -> str | None:
    found = _USERINFO.search(url)
    return found["password"] if found else None


def redact(url: str) -> str:
    """A database URL with its password hidden (also when the URL does not parse)."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL: hide what sits where a password goes
        return _USERINFO.sub(lambda m: f"{m['head']}***@", url)


def label(storage_cfg) -> str:
    """Where a `storage` config node points: the journal file or the (password-free) URL."""
    if storage_cfg.get("path") is not None:
        return str(storage_cfg.get("path"))
    return redact(str(storage_cfg.get("url", "?")))


__all__ = ["check_reachable", "journal", "label", "rdb", "redact"]
