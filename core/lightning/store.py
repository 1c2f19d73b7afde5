"""A Lightning node's history on the node: channel balance snapshots and forwards, for the channel report.

One SQLite file, ``<state dir>/lightning.sqlite`` (WAL)::

    snapshots  time (UNIX s), block_height, channel_id, peer, state, active, capacity_sat, local_msat,
               remote_msat, local_reserve_sat, remote_reserve_sat, uptime_s, lifetime_s, and both directions' fee
               policies (base fee, proportional fee, largest HTLC): ours and the peer's
    forwards   received, resolved, in_channel, out_channel, in_msat, out_msat, fee_msat, outcome, failure
               (one row per forward: the same forward read twice is kept once)

Implementations keep forwards (LND's forwarding history, CLN's listforwards) but not past balances, so the
balance trend exists only from the first snapshot this store took. Nothing in it leaves the node.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from core.lightning.model import Channel, ChannelPolicy, Forward
from core.sqlite_db import open_store, write_transaction

FILE = "lightning.sqlite"
APPLICATION_ID = 0x616E796C  # "anyl"
SCHEMA_VERSION = 1
RETAIN_DAYS = 180.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (time REAL NOT NULL, block_height INTEGER, channel_id TEXT NOT NULL,
    peer TEXT NOT NULL, state TEXT NOT NULL, active INTEGER NOT NULL, capacity_sat INTEGER NOT NULL,
    local_msat INTEGER NOT NULL, remote_msat INTEGER NOT NULL, local_reserve_sat INTEGER, remote_reserve_sat INTEGER,
    uptime_s INTEGER, lifetime_s INTEGER, base_fee_msat INTEGER, fee_rate_ppm INTEGER, max_htlc_msat INTEGER,
    remote_base_fee_msat INTEGER, remote_fee_rate_ppm INTEGER, remote_max_htlc_msat INTEGER,
    PRIMARY KEY (channel_id, time));
CREATE TABLE IF NOT EXISTS forwards (received REAL NOT NULL, resolved REAL, in_channel TEXT NOT NULL,
    out_channel TEXT NOT NULL DEFAULT '', in_msat INTEGER NOT NULL, out_msat INTEGER, fee_msat INTEGER NOT NULL,
    outcome TEXT NOT NULL, failure TEXT, UNIQUE (received, in_channel, out_channel, in_msat, outcome));
CREATE INDEX IF NOT EXISTS forwards_received ON forwards (received);
"""


_COLUMNS = ("time, block_height, channel_id, peer, state, active, capacity_sat, local_msat, remote_msat, "
            "local_reserve_sat, remote_reserve_sat, uptime_s, lifetime_s, base_fee_msat, fee_rate_ppm, max_htlc_msat, "
            "remote_base_fee_msat, remote_fee_rate_ppm, remote_max_htlc_msat")


def _policy_row(p: ChannelPolicy | None) -> tuple[int | None, int | None, int | None]:
    return (None, None, None) if p is None else (p.base_fee_msat, p.fee_rate_ppm, p.max_htlc_msat)


def _policy(base: int | None, ppm: int | None, max_htlc: int | None) -> ChannelPolicy | None:
    return None if ppm is None else ChannelPolicy(base or 0, ppm, max_htlc_msat=max_htlc)


def lightning_store_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILE


class LightningStore:
    """Record snapshots and forwards; read them back for the report."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.db = open_store(self.path, application_id=APPLICATION_ID, version=SCHEMA_VERSION, schema=_SCHEMA,
                             kind="Lightning store", readonly=readonly,
                             missing="`anya-fl lightning collect` writes it")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> LightningStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return write_transaction(self.db)

    def record(self, t: float, channels: Iterable[Channel], forwards: Iterable[Forward],
               retain_days: float = RETAIN_DAYS, block_height: int | None = None) -> tuple[int, int]:
        """One poll: a snapshot of every channel with a short id at ``t`` (the chain at ``block_height``) and the
        forwards read (new ones kept); rows older than ``retain_days`` go. Returns (snapshots, new forwards)."""
        snaps = [(float(t), block_height, c.channel_id, c.peer, c.state, int(c.active), c.capacity_sat, c.local_msat,
                  c.remote_msat, c.local_reserve_sat, c.remote_reserve_sat, c.uptime_s, c.lifetime_s,
                  *_policy_row(c.local_policy), *_policy_row(c.remote_policy))
                 for c in channels if c.channel_id is not None]
        rows = [(f.received, f.resolved, f.in_channel, f.out_channel or "", f.in_msat, f.out_msat, f.fee_msat,
                 f.outcome, f.failure) for f in forwards]
        cutoff = float(t) - retain_days * 86_400.0
        with self._write() as db:
            db.executemany(f"INSERT OR REPLACE INTO snapshots VALUES ({', '.join('?' * 19)})", snaps)
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO forwards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            added = db.total_changes - before
            db.execute("DELETE FROM snapshots WHERE time < ?", (cutoff,))
            db.execute("DELETE FROM forwards WHERE received < ?", (cutoff,))
        return len(snaps), added

    def latest(self) -> tuple[float | None, list[Channel]]:
        """The newest snapshot's time and its channels (as the node showed them then)."""
        row = self.db.execute("SELECT MAX(time) FROM snapshots").fetchone()
        if row[0] is None:
            return None, []
        return float(row[0]), self.snapshots(float(row[0]))[0][2]

    def snapshots(self, start: float) -> list[tuple[float, int | None, list[Channel]]]:
        """(time, block height, channels) of every snapshot since ``start``, oldest first."""
        out: list[tuple[float, int | None, list[Channel]]] = []
        for r in self.db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE time >= ? ORDER BY time, channel_id",
                                 (start,)):
            (t, height, cid, peer, state, active, cap, local, remote, lres, rres, up, life,
             base, ppm, mx, rbase, rppm, rmx) = r
            if not out or out[-1][0] != t:
                out.append((float(t), height, []))
            out[-1][2].append(Channel(cid, "", peer, state, bool(active), cap, local, remote, local_reserve_sat=lres,
                                      remote_reserve_sat=rres, uptime_s=up, lifetime_s=life,
                                      local_policy=_policy(base, ppm, mx), remote_policy=_policy(rbase, rppm, rmx)))
        return out

    def last_forward_time(self) -> float | None:
        row = self.db.execute("SELECT MAX(received) FROM forwards").fetchone()
        return None if row[0] is None else float(row[0])

    def history(self, start: float) -> dict[str, list[tuple[float, float]]]:
        """Channel id -> (time, our balance ratio) since ``start``, oldest first."""
        out: dict[str, list[tuple[float, float]]] = {}
        for t, cid, local, remote in self.db.execute(
                "SELECT time, channel_id, local_msat, remote_msat FROM snapshots WHERE time >= ? ORDER BY time",
                (start,)):
            total = local + remote
            out.setdefault(cid, []).append((t, 0.5 if total <= 0 else local / total))
        return out

    def forwards(self, start: float, end: float) -> list[Forward]:
        return [Forward(r[0], r[1], r[2], r[3] or None, r[4], r[5], r[6], r[7], r[8]) for r in self.db.execute(
            "SELECT * FROM forwards WHERE received >= ? AND received < ? ORDER BY received", (start, end))]
