"""What the simulated node knows and one node's collector cannot: checks of a collector store against it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from anya_fl.simnode import SimNode
from core.bitcoin.features import TX_SCHEMA
from core.collector.store import rows_from_blobs, store_path
from core.data.chain import START_HEIGHT


def truth_checks(node: SimNode, data_dir: Path) -> dict[str, int]:
    """Stored rows equal node.truth.tx_rows; thresholds and fee labels equal the simulator's."""
    chain = node.chain
    with sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True) as db:
        # phantoms (RBF versions that never confirm) have no chain row; pending rows without prevouts have no age
        rows = [r for r in db.execute("SELECT txid, features FROM transactions WHERE age_known = 1 OR block_hash "
                                      "IS NOT NULL").fetchall() if r[0] in node.txs.index]
        labels = db.execute("SELECT s.tip_height, f.k, f.label FROM fee_labels f "
                            "JOIN snapshots s ON s.id = f.snapshot_id").fetchall()
        blocks = db.execute("SELECT height, threshold FROM blocks WHERE connected = 1 AND threshold IS NOT NULL "
                            "ORDER BY height").fetchall()
    got = rows_from_blobs([r[1] for r in rows], TX_SCHEMA.width)
    want = node.truth.tx_rows([r[0] for r in rows])
    idx = np.array([node.truth.tx_index(r[0]) for r in rows])
    # the SimNode cannot render an input age above the block height (heights are >= 0): its truth differs there
    comparable = chain.tx["input_age"][idx] <= START_HEIGHT
    np.testing.assert_array_equal(got[comparable], want[comparable])
    assert comparable.mean() > 0.99
    for h, thr in blocks:
        assert thr == chain.block_threshold[h - START_HEIGHT - 1], f"block {h}"
    for tip, k, y in labels:
        assert y == node.truth.fee_label(tip, k), (tip, k)
    return {"rows": len(rows), "labels": len(labels), "blocks": len(blocks), "ks": len({k for _, k, _ in labels})}
