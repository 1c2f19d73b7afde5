"""The one SQLite write transaction of our stores (the collector's, the watch's telemetry)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator


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
