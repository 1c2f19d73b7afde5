"""The collector's SQLite store: blocks, transactions, mempool snapshots, fee labels, operator labels.

One file, ``<data-dir>/collector/store.sqlite``, in WAL mode with foreign keys on. ``PRAGMA application_id``
marks the file as ours and ``PRAGMA user_version`` holds :data:`SCHEMA_VERSION`; another file, or a newer
or unknown version, is refused with a :class:`DatasetError` that says what to do.

Every change is one SQLite transaction (a block with its transactions, a mempool batch with its snapshot, a
rollback of one block, a pruning step), so a process killed between two statements leaves the store as it
was before that transaction: never half a block. ``synchronous=NORMAL`` keeps that guarantee for a killed
process; a power loss may lose the last transactions, which the follower fetches again from the node
(``meta`` moves with the data in the same transaction).

Tables::

    meta              key -> value (tip height/hash, mempool sequence, counters)
    blocks            one row per block seen; connected = 1 on the active chain (unique per height),
                      threshold / full / evidence: the block's marginal fee rate (labels.judge_block)
    transactions      one row per txid: 22 TX_SCHEMA features (float32 blob), first-seen time, arrival
                      snapshot, confirmation (block hash/height), removal (replaced / evicted)
    tx_inputs         spent outpoints (64-bit keys) per transaction: replacement detection
    tx_addresses      output and prevout addresses (64-bit keys) per transaction: address labels
    snapshots         mempool snapshots: node time, tip, 12 MEMPOOL_SCHEMA features (float32 blob)
    fee_labels        (snapshot, k) -> required fee rate, once k blocks follow the snapshot's tip
    operator_labels   txid / address -> illicit (1) / licit (0) from the operator's file
    skipped           what was refused (reply, transaction, label line), with the reason and a count
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.bitcoin.features import MEMPOOL_SCHEMA, TX_SCHEMA
from core.errors import ConfigError, DatasetError
from core.sqlite_db import write_transaction

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "BlockRecord",
    "CollectorStore",
    "Removal",
    "Skip",
    "SnapshotRecord",
    "TxRecord",
    "address_key",
    "outpoint_key",
    "rows_from_blobs",
    "store_path",
]

SCHEMA_VERSION = 1
APPLICATION_ID = 0x616E7961  # "anya"
STORE_DIR = "collector"
STORE_FILE = "store.sqlite"
KEEP_RECENT_BLOCKS = 144  # never pruned: reorg detection and label windows need the recent chain
_CHUNK = 500  # parameters per IN (...) query
_DAY_S = 86_400
_AGE_KNOWN = TX_SCHEMA.index("input_age_known")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE blocks (
    hash TEXT PRIMARY KEY,
    height INTEGER NOT NULL,
    prev_hash TEXT,
    time INTEGER NOT NULL,
    mediantime INTEGER,
    weight INTEGER NOT NULL,
    tx_weight INTEGER NOT NULL,
    tx_count INTEGER NOT NULL,
    total_fee_sat INTEGER NOT NULL,
    min_fee_rate REAL,
    median_fee_rate REAL,
    max_fee_rate REAL,
    input_age_known INTEGER NOT NULL,
    full INTEGER,
    threshold REAL,
    evidence TEXT,
    connected INTEGER NOT NULL DEFAULT 1,
    stored_at REAL NOT NULL
);
CREATE UNIQUE INDEX blocks_main ON blocks(height) WHERE connected = 1;
CREATE INDEX blocks_time ON blocks(time);
CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    tip_height INTEGER NOT NULL,
    tip_hash TEXT NOT NULL,
    mempool_sequence INTEGER,
    features BLOB NOT NULL,
    labeled_k INTEGER NOT NULL DEFAULT 0,
    labels_done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX snapshots_tip ON snapshots(tip_height);
CREATE INDEX snapshots_time ON snapshots(time);
CREATE INDEX snapshots_unlabeled ON snapshots(tip_height) WHERE labels_done = 0;
CREATE TABLE transactions (
    id INTEGER PRIMARY KEY,
    txid TEXT NOT NULL UNIQUE,
    first_seen INTEGER NOT NULL,
    seen_in_mempool INTEGER NOT NULL,
    first_seen_tip INTEGER,
    entry_height INTEGER,
    arrival_snapshot INTEGER REFERENCES snapshots(id) ON DELETE SET NULL,
    features BLOB NOT NULL,
    fee_sat INTEGER NOT NULL,
    vsize INTEGER NOT NULL,
    weight INTEGER NOT NULL,
    fee_rate REAL NOT NULL,
    age_known INTEGER NOT NULL,
    block_hash TEXT REFERENCES blocks(hash),
    block_height INTEGER,
    removed TEXT CHECK (removed IN ('replaced', 'evicted')),
    removed_at INTEGER,
    removed_tip INTEGER,
    replaced_by TEXT
);
CREATE INDEX tx_block_hash ON transactions(block_hash);
CREATE INDEX tx_block_height ON transactions(block_height);
CREATE INDEX tx_first_seen ON transactions(first_seen);
CREATE INDEX tx_arrival ON transactions(arrival_snapshot);
CREATE INDEX tx_pending ON transactions(first_seen) WHERE block_hash IS NULL AND removed IS NULL;
CREATE INDEX tx_removed ON transactions(removed_tip) WHERE removed IS NOT NULL;
CREATE TABLE tx_inputs (
    tx_id INTEGER NOT NULL REFERENCES transactions(id) ON DELETE CASCADE,
    outpoint INTEGER NOT NULL
);
CREATE INDEX tx_inputs_outpoint ON tx_inputs(outpoint);
CREATE INDEX tx_inputs_tx ON tx_inputs(tx_id);
CREATE TABLE tx_addresses (
    tx_id INTEGER NOT NULL REFERENCES transactions(id) ON DELETE CASCADE,
    address INTEGER NOT NULL
);
CREATE INDEX tx_addresses_address ON tx_addresses(address);
CREATE INDEX tx_addresses_tx ON tx_addresses(tx_id);
CREATE TABLE fee_labels (
    snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    k INTEGER NOT NULL,
    label REAL NOT NULL,
    last_height INTEGER NOT NULL,
    end_time INTEGER NOT NULL,
    PRIMARY KEY (snapshot_id, k)
) WITHOUT ROWID;
CREATE INDEX fee_labels_last ON fee_labels(last_height);
CREATE TABLE operator_labels (
    kind TEXT NOT NULL CHECK (kind IN ('txid', 'address')),
    id TEXT NOT NULL,
    key INTEGER,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    source TEXT,
    PRIMARY KEY (kind, id)
);
CREATE INDEX operator_labels_key ON operator_labels(key) WHERE kind = 'address';
CREATE TABLE skipped (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    field TEXT,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 1,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    UNIQUE (kind, ref, reason)
);
"""


def store_path(data_dir: str | Path) -> Path:
    """Where the store of ``data_dir`` lives: ``<data-dir>/collector/store.sqlite``."""
    return Path(data_dir) / STORE_DIR / STORE_FILE


def _writer_lock(path: Path) -> Any:
    """An exclusive lock on ``<store>.lock`` held while the store is open for writing: one collector per store
    (the kernel drops it when the process dies, however it dies)."""
    fh = open(path.with_name(path.name + ".lock"), "a+")  # noqa: SIM115 - held open as the lock
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return fh
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise ConfigError("data-dir", f"another collector is writing to {path}: stop it first, or use another "
                                      "--data-dir") from None
    return fh


def _key(text: str) -> int:
    """A signed 64-bit key (BLAKE2b) for an outpoint or address: compact, indexable, collision-safe enough."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def outpoint_key(txid: str, vout: int) -> int:
    """The key of the outpoint ``txid:vout`` (tx_inputs.outpoint)."""
    return _key(f"{txid}:{vout}")


def address_key(address: str) -> int:
    """The key of an address (tx_addresses.address, operator_labels.key)."""
    return _key(address)


def _blob(row: np.ndarray, width: int) -> bytes:
    arr = np.asarray(row, dtype="<f4").reshape(-1)
    if arr.shape != (width,):
        raise ValueError(f"expected {width} features, got {arr.shape}")
    return arr.tobytes()


def rows_from_blobs(blobs: Sequence[bytes], width: int) -> np.ndarray:
    """(n, width) float32 rows from feature blobs."""
    if not blobs:
        return np.zeros((0, width), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), width).astype(np.float32)


@dataclass
class BlockRecord:
    """One block as stored: header fields and fee statistics of its non-coinbase transactions."""

    hash: str
    height: int
    prev_hash: str | None
    time: int
    mediantime: int | None
    weight: int
    tx_weight: int
    tx_count: int
    total_fee_sat: int
    min_fee_rate: float | None
    median_fee_rate: float | None
    max_fee_rate: float | None
    input_age_known: bool


@dataclass
class TxRecord:
    """One transaction as stored (features: a TX_SCHEMA row)."""

    txid: str
    features: np.ndarray
    fee_sat: int
    vsize: int
    weight: int
    first_seen: int
    seen_in_mempool: bool
    first_seen_tip: int | None
    entry_height: int | None
    arrival_snapshot: int | None
    inputs: list[int] = field(default_factory=list)
    addresses: list[int] = field(default_factory=list)

    @property
    def fee_rate(self) -> float:
        return self.fee_sat / self.vsize


@dataclass
class SnapshotRecord:
    """A mempool snapshot: node time, the tip it was taken at, 12 MEMPOOL_SCHEMA features."""

    time: int
    tip_height: int
    tip_hash: str
    features: np.ndarray
    mempool_sequence: int | None = None


@dataclass(frozen=True)
class Skip:
    """Something refused: kind (reply, transaction, mempool_entry, block_fee, label_line), what (ref), why."""

    kind: str
    ref: str
    reason: str
    field: str | None = None


@dataclass(frozen=True)
class Removal:
    """A transaction that left the mempool without being confirmed."""

    txid: str
    kind: str  # "replaced" | "evicted"
    replaced_by: str | None = None


class CollectorStore:
    """The store (one connection, used by one writer; readers open their own with ``readonly=True``)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        self._lock_file: Any = None
        if readonly:
            if not self.path.is_file():
                raise DatasetError(f"no collector store at {self.path}: run `anya-fl collect` first")
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None,
                                      check_same_thread=False, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = _writer_lock(self.path)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            self._init()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            self._release()
            raise DatasetError(f"{self.path} is not a readable SQLite database ({exc}); move it away to start "
                               "a new store") from None
        except BaseException:
            self.db.close()
            self._release()
            raise

    @classmethod
    def open(cls, data_dir: str | Path, *, readonly: bool = False) -> CollectorStore:
        """The store of ``data_dir`` (created when missing, unless ``readonly``)."""
        return cls(store_path(data_dir), readonly=readonly)

    def _init(self) -> None:
        db = self.db
        app_id = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if app_id == 0 and version == 0 and tables == 0:
            if self.readonly:
                raise DatasetError(f"{self.path} is an empty database, not a collector store")
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: lets pruning shrink the file
            db.execute("PRAGMA journal_mode = WAL")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (json.dumps(time.time()),))
        elif app_id != APPLICATION_ID:
            raise DatasetError(f"{self.path} is not an anya-fl collector store (application_id {app_id:#x}); "
                               "point --data-dir elsewhere or move the file away")
        elif version > SCHEMA_VERSION:
            raise DatasetError(f"{self.path}: collector store schema version {version} is newer than this build "
                               f"reads ({SCHEMA_VERSION}); upgrade anya-fl")
        elif version != SCHEMA_VERSION:
            raise DatasetError(f"{self.path}: unknown collector store schema version {version} (this build reads "
                               f"{SCHEMA_VERSION}); move the file away to start a new store")
        if not self.readonly:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA foreign_keys = ON")

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when this is the writer)."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                if not self.readonly:
                    self.db.execute("PRAGMA optimize")
            self.db.close()
            self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the lock
            self._lock_file = None

    def __enter__(self) -> CollectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One atomic write (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        return write_transaction(self.db, self._lock)

    # ---- meta

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @staticmethod
    def _set_meta(db: sqlite3.Connection, items: dict[str, Any]) -> None:
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                       [(k, json.dumps(v)) for k, v in items.items()])

    def set_meta(self, **items: Any) -> None:
        with self.transaction() as db:
            self._set_meta(db, items)

    def tip(self) -> tuple[int, str] | None:
        """(height, hash) of the last processed block (meta), or None before the first."""
        h, b = self.get_meta("tip_height"), self.get_meta("tip_hash")
        return (int(h), str(b)) if h is not None and b is not None else None

    # ---- blocks

    def connected_hash(self, height: int) -> str | None:
        row = self.db.execute("SELECT hash FROM blocks WHERE height = ? AND connected = 1", (height,)).fetchone()
        return row[0] if row else None

    def lowest_connected_height(self) -> int | None:
        row = self.db.execute("SELECT min(height) FROM blocks WHERE connected = 1").fetchone()
        return row[0]

    def block_connected(self, block_hash: str) -> bool:
        row = self.db.execute("SELECT connected FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return bool(row and row[0])

    def existing_txids(self, txids: Iterable[str]) -> dict[str, bool]:
        """The txids of ``txids`` already stored -> whether their input age is known."""
        ids = list(txids)
        found: dict[str, bool] = {}
        for i in range(0, len(ids), _CHUNK):
            part = ids[i:i + _CHUNK]
            q = f"SELECT txid, age_known FROM transactions WHERE txid IN ({','.join('?' * len(part))})"
            found.update((r[0], bool(r[1])) for r in self.db.execute(q, part))
        return found

    def connect_block(self, block: BlockRecord, new_txs: Sequence[TxRecord], confirmed: Sequence[str],
                      skips: Sequence[Skip] = (), meta: dict[str, Any] | None = None,
                      features: dict[str, np.ndarray] | None = None) -> None:
        """Store a block on the active chain with its transactions, in one transaction.

        ``new_txs`` are transactions not stored yet; ``confirmed`` the txids (already stored) the block
        confirms; ``features``: new rows for stored transactions whose input age was unknown. The meta tip
        moves to this block in the same transaction.
        """
        with self.transaction() as db:
            db.execute(
                "INSERT INTO blocks (hash, height, prev_hash, time, mediantime, weight, tx_weight, tx_count, "
                "total_fee_sat, min_fee_rate, median_fee_rate, max_fee_rate, input_age_known, connected, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?) "
                "ON CONFLICT(hash) DO UPDATE SET connected = 1",
                (block.hash, block.height, block.prev_hash, block.time, block.mediantime, block.weight,
                 block.tx_weight, block.tx_count, block.total_fee_sat, block.min_fee_rate, block.median_fee_rate,
                 block.max_fee_rate, int(block.input_age_known), time.time()),
            )
            # snapshots taken on this block before a reorg took it away are labeled again
            db.execute("UPDATE snapshots SET labeled_k = 0, labels_done = 0 WHERE tip_hash = ? AND labeled_k = -1",
                       (block.hash,))
            self._insert_txs(db, new_txs, block.hash, block.height)
            db.executemany(
                "UPDATE transactions SET block_hash = ?, block_height = ?, removed = NULL, removed_at = NULL, "
                "removed_tip = NULL, replaced_by = NULL WHERE txid = ?",
                [(block.hash, block.height, t) for t in confirmed],
            )
            db.executemany("UPDATE transactions SET features = ?, age_known = ? WHERE txid = ?",
                           [(_blob(row, TX_SCHEMA.width), int(row[_AGE_KNOWN] > 0), t)
                            for t, row in (features or {}).items()])
            self._record_skips(db, skips)
            self._set_meta(db, {"tip_height": block.height, "tip_hash": block.hash, **(meta or {})})

    def disconnect_block(self, block_hash: str) -> dict[str, Any]:
        """Roll back one block (the tip): its transactions become unconfirmed, labels that used it go.

        Returns the height, counts, and ``pending``: (txid, fee_rate, vsize, first_seen) of its transactions.
        """
        with self.transaction() as db:
            row = db.execute("SELECT height, prev_hash FROM blocks WHERE hash = ? AND connected = 1",
                             (block_hash,)).fetchone()
            if row is None:
                raise DatasetError(f"{self.path}: block {block_hash} is not on the stored chain")
            height, prev_hash = row
            db.execute("UPDATE blocks SET connected = 0 WHERE hash = ?", (block_hash,))
            pending = db.execute("UPDATE transactions SET block_hash = NULL, block_height = NULL WHERE block_hash = ? "
                                 "RETURNING txid, fee_rate, vsize, first_seen", (block_hash,)).fetchall()
            labels = db.execute("DELETE FROM fee_labels WHERE last_height >= ?", (height,)).rowcount
            db.execute("UPDATE snapshots SET labeled_k = -1, labels_done = 1 WHERE tip_hash = ?", (block_hash,))
            db.execute(
                "UPDATE snapshots SET labels_done = 0, labeled_k = COALESCE((SELECT max(k) FROM fee_labels f "
                "WHERE f.snapshot_id = snapshots.id), 0) WHERE labeled_k > 0 AND tip_height < ? "
                "AND tip_height + labeled_k >= ?",
                (height, height),
            )
            self._set_meta(db, {"tip_height": height - 1, "tip_hash": prev_hash})
        return {"height": height, "transactions": len(pending), "fee_labels": labels, "pending": pending}

    def _insert_txs(self, db: sqlite3.Connection, txs: Sequence[TxRecord], block_hash: str | None,
                    block_height: int | None) -> None:
        for t in txs:
            cur = db.execute(
                "INSERT INTO transactions (txid, first_seen, seen_in_mempool, first_seen_tip, entry_height, "
                "arrival_snapshot, features, fee_sat, vsize, weight, fee_rate, age_known, block_hash, block_height) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (t.txid, t.first_seen, int(t.seen_in_mempool), t.first_seen_tip, t.entry_height, t.arrival_snapshot,
                 _blob(t.features, TX_SCHEMA.width), t.fee_sat, t.vsize, t.weight, t.fee_rate,
                 int(t.features[_AGE_KNOWN] > 0), block_hash, block_height),
            )
            rowid = cur.lastrowid
            if t.inputs:
                db.executemany("INSERT INTO tx_inputs (tx_id, outpoint) VALUES (?, ?)", [(rowid, k) for k in t.inputs])
            if t.addresses:
                db.executemany("INSERT INTO tx_addresses (tx_id, address) VALUES (?, ?)",
                               [(rowid, k) for k in set(t.addresses)])

    # ---- mempool

    def pending(self) -> Iterator[tuple[str, float, int, int]]:
        """(txid, fee_rate, vsize, first_seen) of the stored mempool: unconfirmed and not removed."""
        return self.db.execute("SELECT txid, fee_rate, vsize, first_seen FROM transactions "
                               "WHERE block_hash IS NULL AND removed IS NULL")

    def max_tx_id(self) -> int:
        return int(self.db.execute("SELECT COALESCE(max(id), 0) FROM transactions").fetchone()[0])

    def add_mempool_txs(self, txs: Sequence[TxRecord], skips: Sequence[Skip] = ()) -> None:
        """Store newly seen mempool transactions (one chunk, one transaction)."""
        with self.transaction() as db:
            self._insert_txs(db, txs, None, None)
            self._record_skips(db, skips)

    def spenders(self, txid: str, exclude_removed: bool = True) -> str | None:
        """Another stored transaction spending an outpoint that ``txid`` spends (a replacement), if any."""
        q = ("SELECT t2.txid FROM transactions t1 JOIN tx_inputs i1 ON i1.tx_id = t1.id "
             "JOIN tx_inputs i2 ON i2.outpoint = i1.outpoint AND i2.tx_id != t1.id "
             "JOIN transactions t2 ON t2.id = i2.tx_id WHERE t1.txid = ?"
             + (" AND t2.removed IS NULL" if exclude_removed else "") + " ORDER BY t2.id LIMIT 1")
        row = self.db.execute(q, (txid,)).fetchone()
        return row[0] if row else None

    def finish_mempool_batch(self, snapshot: SnapshotRecord | None, removals: Sequence[Removal], *, removed_at: int,
                             removed_tip: int, new_from_id: int | None = None, arrival: int | None = None,
                             meta: dict[str, Any] | None = None) -> int | None:
        """Record removals and the poll's snapshot in one transaction; returns the snapshot id.

        Mempool transactions stored in this poll (id above ``new_from_id``) get ``arrival`` as their arrival
        snapshot (the previous snapshot), or this poll's snapshot when ``arrival`` is None.
        """
        with self.transaction() as db:
            db.executemany(
                "UPDATE transactions SET removed = ?, removed_at = ?, removed_tip = ?, replaced_by = ? "
                "WHERE txid = ? AND block_hash IS NULL",
                [(r.kind, removed_at, removed_tip, r.replaced_by, r.txid) for r in removals],
            )
            snap_id = None
            if snapshot is not None:
                snap_id = db.execute(
                    "INSERT INTO snapshots (time, tip_height, tip_hash, mempool_sequence, features) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (snapshot.time, snapshot.tip_height, snapshot.tip_hash, snapshot.mempool_sequence,
                     _blob(snapshot.features, MEMPOOL_SCHEMA.width)),
                ).lastrowid
            if new_from_id is not None and (arrival is not None or snap_id is not None):
                db.execute("UPDATE transactions SET arrival_snapshot = ? WHERE id > ? AND arrival_snapshot IS NULL "
                           "AND seen_in_mempool = 1", (arrival if arrival is not None else snap_id, new_from_id))
            self._set_meta(db, meta or {})
        return snap_id

    def last_snapshot(self) -> tuple[int, int, int, str] | None:
        """(id, time, tip_height, tip_hash) of the newest snapshot."""
        return self.db.execute("SELECT id, time, tip_height, tip_hash FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()

    def snapshot_at_parent(self, height: int, prev_hash: str | None) -> int | None:
        """The newest snapshot taken while the block's parent was the tip (the state its txs arrived into)."""
        row = self.db.execute("SELECT max(id) FROM snapshots WHERE tip_height = ? AND tip_hash = ?",
                              (height - 1, prev_hash)).fetchone()
        return row[0]

    # ---- thresholds and fee labels

    def unjudged_blocks(self, max_height: int) -> list[tuple]:
        """Connected blocks up to ``max_height`` without a threshold, oldest first."""
        return self.db.execute(
            "SELECT hash, height, time, tx_weight, tx_count, min_fee_rate FROM blocks "
            "WHERE connected = 1 AND threshold IS NULL AND evidence IS NULL AND height <= ? ORDER BY height",
            (max_height,)).fetchall()

    def waiting_candidates(self, height: int, header_time: int, since: int) -> list[tuple[int, float, int, int | None]]:
        """(first_seen, fee_rate, weight, first_seen_tip) of mempool-seen transactions not confirmed by block
        ``height`` whose entry time is in [since, header_time] (pending, confirmed later, or removed later)."""
        args = (since, header_time)
        cols = "SELECT first_seen, fee_rate, weight, first_seen_tip FROM transactions"
        rows = self.db.execute(f"{cols} WHERE block_hash IS NULL AND removed IS NULL AND seen_in_mempool = 1 "
                               "AND first_seen BETWEEN ? AND ?", args).fetchall()
        rows += self.db.execute(f"{cols} WHERE block_height > ? AND seen_in_mempool = 1 AND first_seen BETWEEN ? AND ?",
                                (height, *args)).fetchall()
        rows += self.db.execute(f"{cols} WHERE removed = 'evicted' AND removed_tip >= ? AND block_hash IS NULL "
                                "AND seen_in_mempool = 1 AND first_seen BETWEEN ? AND ?", (height, *args)).fetchall()
        return rows

    def any_waiting_before(self, height: int, header_time: int, before_time: int) -> bool:
        """Whether a transaction certainly waiting when block ``height`` was mined exists: seen in the mempool
        (entry time <= ``header_time``) and not confirmed by the block, with an entry time <= ``before_time``
        or first seen while the tip was below ``height``."""
        cond = "first_seen <= ? AND (first_seen <= ? OR first_seen_tip < ?)"
        args = (header_time, before_time, height)
        q1 = (f"SELECT 1 FROM transactions WHERE block_hash IS NULL AND removed IS NULL AND seen_in_mempool = 1 "
              f"AND {cond} LIMIT 1")
        q2 = f"SELECT 1 FROM transactions WHERE block_height > ? AND seen_in_mempool = 1 AND {cond} LIMIT 1"
        q3 = (f"SELECT 1 FROM transactions WHERE removed = 'evicted' AND removed_tip >= ? AND block_hash IS NULL "
              f"AND seen_in_mempool = 1 AND {cond} LIMIT 1")
        return bool(self.db.execute(q1, args).fetchone() or self.db.execute(q2, (height, *args)).fetchone()
                    or self.db.execute(q3, (height, *args)).fetchone())

    def max_waiting_rate(self, height: int, header_time: int) -> float | None:
        """The highest fee rate among transactions waiting at block ``height`` (an empty block's threshold)."""
        rows = self.waiting_candidates(height, header_time, -(2**62))
        return max((r[1] for r in rows), default=None)

    def set_threshold(self, block_hash: str, full: bool | None, threshold: float | None, evidence: str) -> None:
        """A block's judgement; ``threshold`` None (evidence ``unobserved``): it cannot be known."""
        with self.transaction() as db:
            db.execute("UPDATE blocks SET full = ?, threshold = ?, evidence = ? WHERE hash = ?",
                       (None if full is None else int(full), threshold, evidence, block_hash))

    def observed_at_tip(self, height: int, block_hash: str) -> bool:
        """Whether a mempool view (snapshot) was taken while this block was the tip."""
        row = self.db.execute("SELECT 1 FROM snapshots WHERE tip_height = ? AND tip_hash = ? LIMIT 1",
                              (height, block_hash)).fetchone()
        return row is not None

    def judged_height(self) -> int | None:
        """The highest connected height up to which every connected block is judged (a threshold, or unknown)."""
        row = self.db.execute("SELECT min(height) FROM blocks WHERE connected = 1 AND threshold IS NULL "
                              "AND evidence IS NULL").fetchone()
        if row[0] is not None:
            return int(row[0]) - 1
        row = self.db.execute("SELECT max(height) FROM blocks WHERE connected = 1").fetchone()
        return row[0]

    def label_fee_snapshots(self, targets: Sequence[int], judged: int) -> int:
        """Add fee labels for every snapshot whose tip is connected and k blocks after it are judged.

        label(snapshot, k) = min over heights tip+1 .. tip+k of the block threshold; returns labels added. A block
        whose threshold is unknown (``unobserved``) ends the snapshot's labels at the k before it.
        """
        targets = sorted(set(targets))
        kmax = targets[-1]
        snaps = self.db.execute(
            "SELECT id, tip_height, tip_hash, labeled_k FROM snapshots WHERE labels_done = 0 AND tip_height < ?",
            (judged,)).fetchall()
        if not snaps:
            return 0
        lo = min(s[1] for s in snaps) + 1
        blocks = {h: (b, thr, t) for b, h, thr, t in self.db.execute(
            "SELECT hash, height, threshold, time FROM blocks WHERE connected = 1 AND height BETWEEN ? AND ?",
            (lo - 1, judged))}
        added = 0
        with self.transaction() as db:
            for sid, tip, tip_hash, done in snaps:
                if blocks.get(tip, (None,))[0] != tip_hash:
                    if not self._connected(db, tip_hash):
                        db.execute("UPDATE snapshots SET labeled_k = -1, labels_done = 1 WHERE id = ?", (sid,))
                        continue
                rows = []
                running = np.inf
                last_k = done
                ended = False
                for j in range(1, kmax + 1):
                    h = tip + j
                    if h > judged:
                        break
                    if blocks[h][1] is None:  # unknown: no label reaches past it
                        ended = True
                        break
                    running = min(running, blocks[h][1])
                    if j in targets and j > done:
                        rows.append((sid, j, float(running), h, blocks[h][2]))
                        last_k = j
                if rows:
                    db.executemany("INSERT OR REPLACE INTO fee_labels (snapshot_id, k, label, last_height, end_time) "
                                   "VALUES (?, ?, ?, ?, ?)", rows)
                    added += len(rows)
                if rows or ended:
                    db.execute("UPDATE snapshots SET labeled_k = ?, labels_done = ? WHERE id = ?",
                               (last_k, int(ended or last_k >= kmax), sid))
        return added

    @staticmethod
    def _connected(db: sqlite3.Connection, block_hash: str) -> bool:
        row = db.execute("SELECT connected FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return bool(row and row[0])

    # ---- operator labels and the skipped log

    def import_operator_labels(self, labels: Sequence[tuple[str, str, int]], source: str,
                               skips: Sequence[Skip] = ()) -> int:
        """Insert or replace (kind, id, label) rows; returns how many."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO operator_labels (kind, id, key, label, source) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(kind, id) DO UPDATE SET label = excluded.label, source = excluded.source",
                [(k, i, address_key(i) if k == "address" else None, lab, source) for k, i, lab in labels],
            )
            self._record_skips(db, skips)
        return len(labels)

    def record_skips(self, skips: Sequence[Skip]) -> None:
        if skips:
            with self.transaction() as db:
                self._record_skips(db, skips)

    @staticmethod
    def _record_skips(db: sqlite3.Connection, skips: Sequence[Skip]) -> None:
        now = time.time()
        db.executemany(
            "INSERT INTO skipped (kind, ref, field, reason, first_at, last_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(kind, ref, reason) DO UPDATE SET count = count + 1, last_at = excluded.last_at",
            [(s.kind, s.ref, s.field, s.reason, now, now) for s in skips],
        )

    def skipped(self) -> list[dict[str, Any]]:
        cols = ("kind", "ref", "field", "reason", "count")
        return [dict(zip(cols, r, strict=True)) for r in
                self.db.execute("SELECT kind, ref, field, reason, count FROM skipped ORDER BY id")]

    # ---- retention

    def used_bytes(self) -> int:
        """Bytes the data occupies (pages in use, WAL not counted)."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)

    def node_now(self) -> int | None:
        """The newest node time in the store (block header or snapshot time): retention's clock."""
        row = self.db.execute("SELECT max(t) FROM (SELECT max(time) AS t FROM blocks UNION ALL "
                              "SELECT max(time) FROM snapshots)").fetchone()
        return row[0]

    def prune(self, retain_days: float = 90.0, max_mb: float = 2048.0,
              keep_blocks: int = KEEP_RECENT_BLOCKS) -> dict[str, int]:
        """Delete data older than ``retain_days`` (node time), then the oldest data until the store fits
        ``max_mb``; the newest ``keep_blocks`` blocks (and their transactions) and pending transactions are
        kept. Returns what was deleted."""
        if not retain_days > 0:
            raise ConfigError("retain-days", f"{retain_days!r} must be > 0")
        if not max_mb > 0:
            raise ConfigError("max-mb", f"{max_mb!r} must be > 0")
        total = {"blocks": 0, "transactions": 0, "snapshots": 0, "fee_labels": 0}
        now = self.node_now()
        if now is None:
            return total
        self._add(total, self._prune_before(now - int(retain_days * _DAY_S), keep_blocks))
        limit = max_mb * 1024 * 1024
        if self.used_bytes() > limit:
            oldest = self.db.execute(
                "SELECT min(t) FROM (SELECT min(time) AS t FROM blocks UNION ALL SELECT min(time) FROM snapshots "
                "UNION ALL SELECT min(first_seen) FROM transactions WHERE removed IS NOT NULL)").fetchone()[0]
            cutoff = oldest if oldest is not None else now
            step = max(1, (now - cutoff) // 20)  # the oldest 5 % of the time span at a time
            while self.used_bytes() > limit and cutoff < now:
                cutoff = min(cutoff + step, now)
                self._add(total, self._prune_before(cutoff, keep_blocks))
                self.db.execute("PRAGMA incremental_vacuum")
        if any(total.values()):
            self.db.execute("PRAGMA incremental_vacuum")
            with self.transaction() as db:
                before = self.get_meta("pruned_total", {}) or {}
                self._set_meta(db, {"pruned_total": {k: int(before.get(k, 0)) + v for k, v in total.items()},
                                    "last_prune": {**total, "at": time.time()}})
        return total

    @staticmethod
    def _add(total: dict[str, int], part: dict[str, int]) -> None:
        for k, v in part.items():
            total[k] += v

    def _prune_before(self, cutoff: int, keep_blocks: int) -> dict[str, int]:
        """Delete blocks, transactions and snapshots older than ``cutoff`` in one transaction."""
        keep = self.db.execute("SELECT min(height) FROM (SELECT height FROM blocks WHERE connected = 1 "
                               "ORDER BY height DESC LIMIT ?)", (max(keep_blocks, 1),)).fetchone()[0]
        keep = keep if keep is not None else 0
        with self.transaction() as db:
            old_blocks = "SELECT hash FROM blocks WHERE time < ? AND (connected = 0 OR height < ?)"
            labels = db.execute("DELETE FROM fee_labels WHERE snapshot_id IN (SELECT id FROM snapshots WHERE time < ?)",
                                (cutoff,)).rowcount
            txs = db.execute(f"DELETE FROM transactions WHERE block_hash IN ({old_blocks})", (cutoff, keep)).rowcount
            txs += db.execute("DELETE FROM transactions WHERE block_hash IS NULL AND removed IS NOT NULL "
                              "AND first_seen < ?", (cutoff,)).rowcount
            blocks = db.execute("DELETE FROM blocks WHERE time < ? AND (connected = 0 OR height < ?)",
                                (cutoff, keep)).rowcount
            snaps = db.execute("DELETE FROM snapshots WHERE time < ?", (cutoff,)).rowcount
        return {"blocks": blocks, "transactions": txs, "snapshots": snaps, "fee_labels": labels}

    # ---- reading

    def counts(self) -> dict[str, int]:
        q = {
            "blocks": "SELECT count(*) FROM blocks WHERE connected = 1",
            "stale_blocks": "SELECT count(*) FROM blocks WHERE connected = 0",
            "transactions": "SELECT count(*) FROM transactions",
            "confirmed": "SELECT count(*) FROM transactions WHERE block_hash IS NOT NULL",
            "pending": "SELECT count(*) FROM transactions WHERE block_hash IS NULL AND removed IS NULL",
            "replaced": "SELECT count(*) FROM transactions WHERE removed = 'replaced' AND block_hash IS NULL",
            "evicted": "SELECT count(*) FROM transactions WHERE removed = 'evicted' AND block_hash IS NULL",
            "snapshots": "SELECT count(*) FROM snapshots",
            "fee_labels": "SELECT count(*) FROM fee_labels",
            "operator_labels": "SELECT count(*) FROM operator_labels",
            "skipped": "SELECT COALESCE(sum(count), 0) FROM skipped",
        }
        return {k: int(self.db.execute(v).fetchone()[0]) for k, v in q.items()}
