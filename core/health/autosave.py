"""One auto-save mechanism: every Nth input or change, snapshot a component's state (and write it durably).

Used by :class:`core.health.agent_checker.AgentChecker` (inputs) and :class:`core.health.performance.PerformanceMonitor`
(configuration changes). The owner calls :meth:`AutoSaver.tick` under its own lock after each counted
event; on every Nth tick the owner's ``state_fn`` is called (still under the owner's lock, so the state is
consistent) and the copy is kept in memory with a timestamp. With a ``path``, the snapshot is then also
written to disk atomically (temp file, fsync, rename) outside the owner's lock, by the thread that took it,
before that thread's call returns; an older snapshot never overwrites a newer one. A crash therefore
loses at most the events after the last snapshot, and never a snapshot itself.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import AnyaError, ConfigError
from core.storage import atomic_write_json, remove_stale_temp_files

DEFAULT_EVERY = 20
FORMAT = "anya-fl.autosave/1"


@dataclass(frozen=True)
class Snapshot:
    """One saved state: its sequence number (1, 2, ...), the event count it covers and when it was taken."""

    seq: int
    events: int
    taken_at: float  # time.time()
    state: dict[str, Any]


class AutoSaver:
    """Count events; every ``every``-th takes a snapshot of ``state_fn()`` (and writes it to ``path``).

    Not locked itself: call :meth:`tick` and :meth:`snapshot_now` under the owner's lock (that is what
    makes the snapshot consistent), then call :meth:`flush` after releasing it with the snapshot they
    returned. :meth:`restore` reads the last durable snapshot at start-up.
    """

    def __init__(self, state_fn: Callable[[], dict[str, Any]], *, every: int = DEFAULT_EVERY,
                 path: str | Path | None = None, name: str = "component") -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every <= 0:
            raise ConfigError("autosave-every", f"{every!r} must be a whole number > 0")
        self.state_fn = state_fn
        self.every = every
        self.path = Path(path) if path is not None else None
        self.name = name
        self.events = 0
        self._next_save = every
        self.latest: Snapshot | None = None
        self.saves = 0            # snapshots taken in this process
        self.writes = 0           # snapshots written to disk in this process
        self._written_seq = 0
        self._write_lock = threading.Lock()

    def tick(self, n: int = 1) -> Snapshot | None:
        """Count ``n`` events; returns the snapshot to :meth:`flush` when one was due (owner's lock held)."""
        self.events += n
        if self.events < self._next_save:
            return None
        self._next_save = (self.events // self.every + 1) * self.every
        return self._take()

    def snapshot_now(self) -> Snapshot:
        """Take a snapshot regardless of the count (for example at a stage transition or shutdown)."""
        return self._take()

    def _take(self) -> Snapshot:
        seq = (self.latest.seq if self.latest else 0) + 1
        snap = Snapshot(seq=seq, events=self.events, taken_at=time.time(), state=self.state_fn())
        self.latest = snap
        self.saves += 1
        return snap

    def flush(self, snap: Snapshot | None) -> None:
        """Write ``snap`` durably when a path is set (call without the owner's lock; newest wins)."""
        if snap is None or self.path is None:
            return
        with self._write_lock:
            if snap.seq <= self._written_seq:
                return  # a newer snapshot is already on disk
            atomic_write_json(self.path, {"format": FORMAT, "name": self.name, "seq": snap.seq,
                                          "events": snap.events, "taken_at": snap.taken_at, "state": snap.state})
            self._written_seq = snap.seq
            self.writes += 1

    def restore(self) -> Snapshot | None:
        """Load the last durable snapshot (None when there is no file); resume counting from it."""
        if self.path is None:
            return None
        remove_stale_temp_files(self.path)  # left by a write that a crash interrupted; the target is intact
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT!r}")
            snap = Snapshot(seq=int(doc["seq"]), events=int(doc["events"]), taken_at=float(doc["taken_at"]),
                            state=dict(doc["state"]))
            if snap.seq < 1 or snap.events < 0 or not math.isfinite(snap.taken_at):
                raise ValueError("negative or non-finite counters")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AnyaError(f"autosave: {self.path} is not a readable {self.name} snapshot ({exc}); "
                            "move it away to start fresh") from exc
        self.latest = snap
        self.events = snap.events
        self._next_save = (snap.events // self.every + 1) * self.every
        self._written_seq = snap.seq
        return snap

    def info(self) -> dict[str, Any]:
        """Counters for reports and metrics."""
        return {"every": self.every, "events": self.events, "saves": self.saves, "writes": self.writes,
                "last_seq": self.latest.seq if self.latest else 0,
                "last_saved_at": self.latest.taken_at if self.latest else None,
                "path": str(self.path) if self.path else None}
