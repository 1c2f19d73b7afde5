"""The liquidity task's rows on a real node: its Lightning store's snapshots, labelled by its own balances.

``anya-fl lightning collect --state-dir <data-dir>/lightning`` keeps the snapshots; each one, thinned to one per
``SNAPSHOT_EVERY_S``, gives ``labelled_rows`` over the channels it saw (the same code that labels a simulated
router), with amounts drawn from a generator seeded by the snapshot's time, so the same store gives the same rows.
The rows are split by time: the oldest snapshots train, the newest test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.datasets import DEFAULT_SPLIT, SPLITS, TaskSplits
from core.lightning.liquidity import LIQUIDITY_SCHEMA, labelled_rows
from core.lightning.store import LightningStore, lightning_store_path

LIGHTNING_DIR = "lightning"  # under a node's data dir: `anya-fl lightning collect --state-dir <data-dir>/lightning`
SNAPSHOT_EVERY_S = 900.0  # one labelled snapshot per 15 minutes (balances move slowly; more would repeat rows)
MIN_SNAPSHOTS = 12  # three hours of snapshots before a node trains (and at least one in each split)
MAX_ROWS = 200_000  # the newest snapshots are kept up to this many rows


def node_lightning_path(data_dir: str | Path) -> Path:
    """The Lightning store of a node whose data dir is ``data_dir``."""
    return lightning_store_path(Path(data_dir) / LIGHTNING_DIR)


def thinned(times: list[float], every_s: float = SNAPSHOT_EVERY_S) -> list[int]:
    """Indices of ``times`` (ascending) kept when at most one is kept per ``every_s``."""
    keep: list[int] = []
    for i, t in enumerate(times):
        if not keep or t - times[keep[-1]] >= every_s:
            keep.append(i)
    return keep


def trainable(path: str | Path) -> tuple[bool, str]:
    """Whether the store has ``MIN_SNAPSHOTS`` thinned snapshots (cheap: their times only, for health checks)."""
    if not Path(path).is_file():
        return False, "no Lightning channel history"
    with LightningStore(path, readonly=True) as store:
        times = [float(t) for (t,) in store.db.execute(
            "SELECT DISTINCT time FROM snapshots WHERE block_height IS NOT NULL ORDER BY time")]
    n = len(thinned(times))
    return n >= MIN_SNAPSHOTS, f"{n} of {MIN_SNAPSHOTS} Lightning snapshots needed"


def liquidity_splits(path: str | Path, fractions: tuple[float, float, float] = DEFAULT_SPLIT
                     ) -> tuple[TaskSplits | None, str]:
    """The liquidity task's rows from a Lightning store, split by time; (None, why) when it cannot train yet."""
    if not Path(path).is_file():
        return None, ("no Lightning channel history (`anya-fl lightning collect --state-dir "
                      f"<data-dir>/{LIGHTNING_DIR}` records it)")
    with LightningStore(path, readonly=True) as store:
        snaps = [s for s in store.snapshots(0.0) if s[1] is not None]
    snaps = [snaps[i] for i in thinned([s[0] for s in snaps])]
    per_snapshot: list[tuple[list[np.ndarray], list[bool]]] = []
    for t, height, channels in snaps:
        rng = np.random.default_rng([int(t), int(height)])
        per_snapshot.append(labelled_rows(sorted(channels, key=lambda c: c.channel_id or ""), height, rng))
    per_snapshot = [s for s in per_snapshot if s[0]]
    total = 0
    for k in range(len(per_snapshot) - 1, -1, -1):  # the newest first, up to MAX_ROWS
        total += len(per_snapshot[k][0])
        if total > MAX_ROWS:
            per_snapshot = per_snapshot[k + 1:]
            break
    if len(per_snapshot) < MIN_SNAPSHOTS:
        return None, (f"{len(per_snapshot)} snapshot(s) of open channels with both fee policies, "
                      f"{MIN_SNAPSHOTS} needed ({MIN_SNAPSHOTS * SNAPSHOT_EVERY_S / 3600:.0f} h of collecting)")
    a = max(1, int(len(per_snapshot) * fractions[0]))
    b = max(a + 1, int(len(per_snapshot) * (fractions[0] + fractions[1])))
    parts = {"train": per_snapshot[:a], "val": per_snapshot[a:b], "test": per_snapshot[b:]}
    x = {s: LIQUIDITY_SCHEMA.validate(np.stack([r for snap in parts[s] for r in snap[0]]), f"liquidity {s} rows")
         for s in SPLITS}
    y = {s: np.asarray([v for snap in parts[s] for v in snap[1]], dtype=np.float32) for s in SPLITS}
    return TaskSplits(x=x, y=y), ""
