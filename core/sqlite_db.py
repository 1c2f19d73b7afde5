"""The one SQLite write transaction of our stores (the collector's, the watch's telemetry, Lightning's), and
the one way the smaller stores open their file (``open_store``)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from core.errors import DatasetError


@contextlib.contextmanager
def write_transaction(db: sqlite3.Connection, lock: threading.RLock | None = None) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on ``db`` (opened with ``isolation_level=None``), rolled back on any exception;
    under ``lock`` when the connection is shared by threads."""
    with lock if lock is not None else contextlib.nullcontext():
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def open_store(path: Path, *, application_id: int, version: int, schema: str, kind: str, readonly: bool = False,
               missing: str = "") -> sqlite3.Connection:
    """Open (or create, in WAL mode, with ``schema``) an anya-fl SQLite store of one ``kind``: its
    ``application_id`` and ``user_version`` must be ours, else DatasetError says what the file is. ``readonly``
    refuses a missing file (``missing`` says what writes it) and never writes."""
    if readonly:
        if not path.is_file():
            raise DatasetError(f"no {kind} at {path}" + (f": {missing}" if missing else ""))
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30,
                             check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
    try:
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if app_id == 0 and found == 0 and not readonly:
            db.execute("PRAGMA journal_mode = WAL")
            with write_transaction(db):
                for statement in schema.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {application_id}")
                db.execute(f"PRAGMA user_version = {version}")
        elif app_id != application_id:
            raise DatasetError(f"{path} is not an anya-fl {kind} (application_id {app_id:#x})")
        elif found != version:
            raise DatasetError(f"{path}: {kind} version {found}, this build reads {version}")
        if not readonly:
            db.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise DatasetError(f"{path} is not a readable SQLite database ({exc}); move it away") from None
    except BaseException:
        db.close()
        raise
    return db
