"""The watch's telemetry history and the operator's incidents: the network task's training data on a real node.

One SQLite file, ``<watch state dir>/telemetry.sqlite`` (``anya-fl node``: ``<data-dir>/watch/``), in WAL mode::

    telemetry   time (UNIX s, primary key), schema version, the TELEMETRY_SCHEMA vector (float32 blob)
    incidents   start, end (UNIX s), kind, note: spans the operator marks as "under attack"

A node cannot tell on its own when it was attacked (that is what the model is for): the labels are the
operator's. A minute inside a marked incident is an attack (1); every other recorded minute is taken as
normal (0), so a node whose operator marked nothing declines the task rather than learn that all is normal.
Only the vectors are stored (no peer id, address or problem text: ``TelemetrySample.to_public``), and they
never leave the node; only model weights trained on them do. Each write is one short transaction, so the
watch (appending) and ``anya-fl watch incident add`` (another process) can write at once.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA
from core.data.datasets import DEFAULT_SPLIT, SPLITS, TaskSplits
from core.errors import ConfigError
from core.sqlite_db import open_store, write_transaction

FILE = "telemetry.sqlite"
WATCH_DIR = "watch"  # the watch's state directory under a node's data dir (`anya-fl node`)
APPLICATION_ID = 0x616E7974  # "anyt"
SCHEMA_VERSION = 1
RETAIN_DAYS = 90.0
MAX_KIND = 64
MAX_NOTE = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (time REAL PRIMARY KEY, schema_version INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (id INTEGER PRIMARY KEY, start REAL NOT NULL, end REAL NOT NULL,
    kind TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', added REAL NOT NULL, CHECK (end > start));
"""


def telemetry_store_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE


def node_telemetry_path(data_dir: str | Path) -> Path:
    """The telemetry store of `anya-fl node --data-dir DATA_DIR`'s watch."""
    return telemetry_store_path(Path(data_dir) / WATCH_DIR)


class TelemetryStore:
    """Append telemetry vectors, mark incidents, read both back as the network task's rows."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.db = open_store(self.path, application_id=APPLICATION_ID, version=SCHEMA_VERSION, schema=_SCHEMA,
                             kind="telemetry store", readonly=readonly,
                             missing="the watch writes it (`anya-fl watch` or `anya-fl node --watch`)")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TelemetryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self.db)

    # ---- telemetry

    def append(self, t: float, vector: np.ndarray, retain_days: float = RETAIN_DAYS) -> None:
        """Record one vector at ``t`` (a repeated time replaces the row); rows older than ``retain_days`` go."""
        v = np.asarray(vector, dtype=np.float32)
        if v.shape != (TELEMETRY_SCHEMA.width,) or not math.isfinite(t):
            raise ValueError(f"telemetry row at {t!r}: shape {v.shape}, want ({TELEMETRY_SCHEMA.width},)")
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO telemetry (time, schema_version, vector) VALUES (?, ?, ?)",
                       (float(t), TELEMETRY_SCHEMA.version, v.tobytes()))
            db.execute("DELETE FROM telemetry WHERE time < ?", (float(t) - retain_days * 86400.0,))

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, vectors) of this schema version, by time."""
        got = self.db.execute("SELECT time, vector FROM telemetry WHERE schema_version = ? ORDER BY time",
                              (TELEMETRY_SCHEMA.version,)).fetchall()
        t = np.array([r[0] for r in got], dtype=np.float64)
        x = (np.frombuffer(b"".join(r[1] for r in got), dtype=np.float32).reshape(len(got), TELEMETRY_SCHEMA.width)
             if got else np.zeros((0, TELEMETRY_SCHEMA.width), np.float32))
        return t, x.copy()

    # ---- incidents

    def add_incident(self, start: float, end: float, kind: str, note: str = "") -> int:
        """Mark [start, end) as under attack; returns the incident's id. Bad fields raise ConfigError."""
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(name, f"{value!r} must be a time (UNIX seconds >= 0)")
        if not end > start:
            raise ConfigError("end", f"{end} must be after start {start}")
        if not isinstance(kind, str) or not kind.strip() or len(kind) > MAX_KIND or not kind.isprintable():
            raise ConfigError("kind", f"{kind!r} must be a printable name of 1 to {MAX_KIND} characters")
        if not isinstance(note, str) or len(note) > MAX_NOTE or not note.isprintable():
            raise ConfigError("note", f"must be printable text of at most {MAX_NOTE} characters")
        with self._write() as db:
            cur = db.execute("INSERT INTO incidents (start, end, kind, note, added) VALUES (?, ?, ?, ?, ?)",
                             (float(start), float(end), kind.strip(), note, time.time()))
            return int(cur.lastrowid or 0)

    def remove_incident(self, incident_id: int) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM incidents WHERE id = ?", (int(incident_id),)).rowcount > 0

    def incidents(self) -> list[dict[str, Any]]:
        return [{"id": r[0], "start": r[1], "end": r[2], "kind": r[3], "note": r[4]} for r in self.db.execute(
            "SELECT id, start, end, kind, note FROM incidents ORDER BY start, id")]


def network_splits(path: str | Path, fractions: tuple[float, float, float] = DEFAULT_SPLIT
                   ) -> tuple[TaskSplits | None, str]:
    """The network task's rows from a telemetry store, split by time (the first ``fractions[0]`` of the rows
    train, and so on), labelled by the operator's incidents; (None, why) when it cannot train yet."""
    if not Path(path).is_file():
        return None, "no telemetry recorded yet (the watch records it: `anya-fl node --watch`)"
    with TelemetryStore(path, readonly=True) as st:
        t, x = st.rows()
        spans = st.incidents()
    if not len(t):
        return None, "no telemetry recorded yet (the watch records it: `anya-fl node --watch`)"
    if not spans:
        return None, ("no incident marked by the operator (`anya-fl watch incident add`): the node cannot tell "
                      "an attack from normal on its own")
    y = np.zeros(len(t), dtype=np.float32)
    for s in spans:
        y[(t >= s["start"]) & (t < s["end"])] = 1.0
    n = len(t)
    cut1, cut2 = int(round(n * fractions[0])), int(round(n * (fractions[0] + fractions[1])))
    parts = dict(zip(SPLITS, (slice(0, cut1), slice(cut1, cut2), slice(cut2, n)), strict=True))
    train = y[parts["train"]]
    if not 0 < train.sum() < len(train):
        return None, (f"the training window ({cut1} of {n} recorded minutes) holds "
                      f"{'no marked incident' if train.sum() == 0 else 'only incident minutes'}: the model needs "
                      "both")
    return TaskSplits(x={s: np.ascontiguousarray(x[p]) for s, p in parts.items()},
                      y={s: np.ascontiguousarray(y[p]) for s, p in parts.items()}), ""
