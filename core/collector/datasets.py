"""Task arrays from the collector's store, split by time exactly as ``core.data.datasets.task_arrays`` does.

* Time boundaries come from :func:`core.data.datasets.split_times` (quantiles of the transactions' times,
  snapped to block times), fed the store's first-seen times and the active chain's block header times.
* **fraud**: TX_SCHEMA rows of the transactions the operator labeled (a txid label wins; otherwise an
  address label on one of its outputs or spent prevouts, illicit winning over licit); split by first-seen
  time.
* **anomaly**: ANOMALY_SCHEMA rows (``anomaly_rows``: the transaction joined with the mempool snapshot it
  arrived into) of every transaction with an arrival snapshot; y is 0 (no labels: the autoencoder
  reconstructs its input); split by first-seen time.
* **fee**: FEE_SCHEMA rows (``fee_rows(snapshot features, k)``) with the fee label; a label whose look-ahead
  (snapshot time to the time of block tip+k) crosses a boundary is dropped, as in ``task_arrays``.

Transactions that were replaced are left out (a near-copy of their replacement); everything else stored is
used. ``index`` holds store row ids (transactions.id for fraud and anomaly, snapshots.id for fee).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from core.bitcoin.features import MEMPOOL_SCHEMA, TX_SCHEMA, anomaly_rows, fee_rows
from core.collector.store import CollectorStore, rows_from_blobs
from core.collector.store import store_path as _store_file
from core.data.datasets import DEFAULT_SPLIT, FEE_TARGETS, SPLITS, TaskSplits, split_times

__all__ = ["task_splits_from_store"]


def _store_at(path: str | Path) -> Path:
    p = Path(path)
    return _store_file(p) if p.is_dir() else p


def _splits(x: np.ndarray, y: np.ndarray, split: np.ndarray, index: np.ndarray) -> TaskSplits:
    return TaskSplits(
        x={s: np.ascontiguousarray(x[split == i], dtype=np.float32) for i, s in enumerate(SPLITS)},
        y={s: np.ascontiguousarray(y[split == i], dtype=np.float32) for i, s in enumerate(SPLITS)},
        index={s: index[split == i] for i, s in enumerate(SPLITS)},
    )


def task_splits_from_store(store_path: str | Path, fractions: tuple[float, float, float] = DEFAULT_SPLIT,
                           targets: tuple[int, ...] = FEE_TARGETS) -> tuple[dict[str, TaskSplits], dict[str, Any]]:
    """Task splits from a collector store (its path, or the ``--data-dir`` holding it) and a summary.

    Only tasks with rows are returned; ``summary["unavailable"]`` says why a task is missing. The summary
    also has rows per task and split, label coverage, the time span and the split boundaries.
    """
    store = _store_at(store_path)
    with CollectorStore(store, readonly=True) as st:
        db = st.db
        tx = db.execute("SELECT t.id, t.txid, t.first_seen, t.features, t.arrival_snapshot, s.features "
                        "FROM transactions t LEFT JOIN snapshots s ON s.id = t.arrival_snapshot "
                        "WHERE t.removed IS NULL OR t.removed != 'replaced' ORDER BY t.id").fetchall()
        block_time = np.array([r[0] for r in db.execute(
            "SELECT time FROM blocks WHERE connected = 1 ORDER BY height")], dtype=np.float64)
        labels_txid = dict(db.execute("SELECT id, label FROM operator_labels WHERE kind = 'txid'").fetchall())
        n_labels = int(db.execute("SELECT count(*) FROM operator_labels").fetchone()[0])
        by_address = dict(db.execute(
            "SELECT a.tx_id, max(l.label) FROM tx_addresses a JOIN operator_labels l "
            "ON l.kind = 'address' AND l.key = a.address GROUP BY a.tx_id").fetchall())
        ks = sorted(set(targets))
        fee = db.execute(
            f"SELECT f.snapshot_id, f.k, f.label, f.end_time, s.time, s.features FROM fee_labels f "
            f"JOIN snapshots s ON s.id = f.snapshot_id WHERE f.k IN ({','.join('?' * len(ks))}) "
            f"ORDER BY f.snapshot_id, f.k", ks).fetchall()
        n_snapshots = int(db.execute("SELECT count(*) FROM snapshots").fetchone()[0])
        labeled_snapshots = int(db.execute("SELECT count(DISTINCT snapshot_id) FROM fee_labels").fetchone()[0])

    summary: dict[str, Any] = {"store": str(store), "transactions": len(tx), "blocks": len(block_time),
                               "snapshots": n_snapshots, "rows": {}, "label_coverage": {}, "unavailable": {}}
    if not len(tx) or not len(block_time):
        why = "the store has no transactions yet" if not len(tx) else "the store has no blocks yet"
        summary["unavailable"] = {t: why for t in ("fraud", "fee", "anomaly")}
        return {}, summary

    ids = np.array([r[0] for r in tx], dtype=np.int64)
    t_tx = np.array([r[2] for r in tx], dtype=np.float64)
    x_tx = rows_from_blobs([r[3] for r in tx], TX_SCHEMA.width)
    t1, t2 = split_times(SimpleNamespace(tx={"arrival_time": t_tx}, block_time=block_time), fractions)
    tx_split = np.where(t_tx < t1, 0, np.where(t_tx < t2, 1, 2))
    summary["time_span"] = [float(min(t_tx.min(), block_time.min())), float(max(t_tx.max(), block_time.max()))]
    summary["boundaries"] = [t1, t2]
    out: dict[str, TaskSplits] = {}

    # fraud: operator-labeled transactions
    label = np.full(len(tx), -1.0)
    for i, (rid, txid) in enumerate((r[0], r[1]) for r in tx):
        if txid in labels_txid:
            label[i] = labels_txid[txid]
        elif rid in by_address:
            label[i] = by_address[rid]
    has = label >= 0
    summary["label_coverage"]["fraud"] = {"labeled": int(has.sum()), "of": len(tx),
                                          "illicit": int((label == 1).sum()), "operator_labels": n_labels}
    if n_labels == 0:
        summary["unavailable"]["fraud"] = "no operator labels (anya-fl collect --labels FILE)"
    elif not has.any():
        summary["unavailable"]["fraud"] = f"none of the {n_labels} operator labels matches a stored transaction"
    else:
        out["fraud"] = _splits(x_tx[has], label[has], tx_split[has], ids[has])

    # anomaly: transactions with the mempool state they arrived into
    arrived = np.array([r[4] is not None for r in tx])
    summary["label_coverage"]["anomaly"] = {"with_arrival_snapshot": int(arrived.sum()), "of": len(tx),
                                            "labels": "none (unsupervised)"}
    if not arrived.any():
        summary["unavailable"]["anomaly"] = "no transaction with a mempool snapshot at arrival yet"
    else:
        snap_rows = rows_from_blobs([r[5] for r in tx if r[4] is not None], MEMPOOL_SCHEMA.width)
        x_an = anomaly_rows(x_tx[arrived], snap_rows)
        out["anomaly"] = _splits(x_an, np.zeros(int(arrived.sum()), np.float32), tx_split[arrived], ids[arrived])

    # fee: labeled snapshots, leak-free look-ahead
    summary["label_coverage"]["fee"] = {"snapshots_labeled": labeled_snapshots, "of": n_snapshots}
    if not fee:
        summary["unavailable"]["fee"] = ("no fee labels yet: a snapshot is labeled for target k once k blocks "
                                         "follow its tip")
    else:
        s_idx = np.array([r[0] for r in fee], dtype=np.int64)
        k = np.array([r[1] for r in fee], dtype=np.float32)
        y_fee = np.array([r[2] for r in fee], dtype=np.float32)
        t_end = np.array([r[3] for r in fee], dtype=np.float64)
        t_snap = np.array([r[4] for r in fee], dtype=np.float64)
        x_fee = fee_rows(rows_from_blobs([r[5] for r in fee], MEMPOOL_SCHEMA.width), k)
        fee_split = np.where(t_end < t1, 0, np.where((t_snap >= t1) & (t_end < t2), 1, np.where(t_snap >= t2, 2, -1)))
        summary["label_coverage"]["fee"]["dropped_crossing_boundary"] = int((fee_split < 0).sum())
        out["fee"] = _splits(x_fee, y_fee, fee_split, s_idx)

    for t in [t for t, splits in out.items() if sum(splits.size(s) for s in SPLITS) == 0]:
        del out[t]
        summary["unavailable"][t] = "every label's look-ahead crosses a split boundary"
    summary["rows"] = {t: {s: out[t].size(s) for s in SPLITS} for t in out}
    return out, summary
