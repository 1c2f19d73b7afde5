"""The collector's store, block judgement and operator labels on hand-made data (no node)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from core.bitcoin.features import MEMPOOL_SCHEMA, TX_SCHEMA
from core.collector.labels import judge_block, min_relay_sat_vb, read_operator_labels
from core.collector.store import (
    SCHEMA_VERSION,
    BlockRecord,
    CollectorStore,
    SnapshotRecord,
    TxRecord,
    store_path,
)
from core.errors import ConfigError, DatasetError

H0 = 850_000
T0 = 1_700_000_000


def _h(i: int) -> str:
    return f"{i:064x}"


def _block(height: int, prev: str | None = None, time: int | None = None, tag: str = "") -> BlockRecord:
    return BlockRecord(hash=_h(height) if not tag else _h(height + 10**9), height=height,
                       prev_hash=prev if prev is not None else _h(height - 1), time=time or T0 + 600 * (height - H0),
                       mediantime=None, weight=4_000, tx_weight=1_000, tx_count=1, total_fee_sat=1_000,
                       min_fee_rate=4.0, median_fee_rate=4.0, max_fee_rate=4.0, input_age_known=True)


def _tx(txid: str, first_seen: int, fee_sat: int = 1_000, vsize: int = 250) -> TxRecord:
    row = np.zeros(TX_SCHEMA.width, dtype=np.float32)
    row[0], row[2], row[21] = vsize, fee_sat / vsize, 1
    return TxRecord(txid=txid, features=row, fee_sat=fee_sat, vsize=vsize, weight=4 * vsize, first_seen=first_seen,
                    seen_in_mempool=True, first_seen_tip=H0, entry_height=H0, arrival_snapshot=None)


def _snapshot(tip: int, time: int) -> SnapshotRecord:
    return SnapshotRecord(time=time, tip_height=tip, tip_hash=_h(tip), features=np.ones(MEMPOOL_SCHEMA.width))


# --------------------------------------------------------------------------------------------
# judge_block: the simulator's threshold from what the node shows
# --------------------------------------------------------------------------------------------


def test_judge_block():
    common = dict(min_included=5.0, tx_weight=3_990_000, min_relay=1.0)
    # nothing left waiting: the block had room, the threshold is the min relay fee
    assert judge_block(**common, certain_waiting=False, ambiguous=[]) == (False, 1.0, "room")
    # a transaction certainly waiting: the block was full, the threshold is its lowest included rate
    assert judge_block(**common, certain_waiting=True, ambiguous=[]) == (True, 5.0, "waiting")
    # ambiguous arrivals (entry time within a second of the header): a higher rate than the block's lowest, or one
    # that would still have fitted, was not there yet; a low-rate one that did not fit counts as waiting
    assert judge_block(**common, certain_waiting=False, ambiguous=[(6.0, 40_000), (4.0, 1_000)]).full is False
    assert judge_block(**common, certain_waiting=False, ambiguous=[(4.0, 8_000)]) == (True, 5.0, "ambiguous-waiting")
    # an empty block that left a transaction waiting takes the highest waiting rate
    assert judge_block(min_included=None, tx_weight=0, min_relay=1.0, certain_waiting=True, ambiguous=[],
                       max_waiting_rate=7.5) == (True, 7.5, "waiting")
    assert min_relay_sat_vb(0.00001) == 1.0 and min_relay_sat_vb(0.00002345) == 2.345


# --------------------------------------------------------------------------------------------
# operator labels
# --------------------------------------------------------------------------------------------


def test_operator_labels_file(tmp_path: Path):
    a, b, c = "a" * 64, "B" * 64, "c" * 64
    p = tmp_path / "labels.csv"
    p.write_text(f"kind,id,label\n# a comment\ntxid,{a},illicit\naddress,bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq,"
                 f"licit\ntxid,{a},licit\nbogus,{c},illicit\ntxid,{c}\n\ntxid,{b},ILLICIT\n{c}\nnot-a-txid\n")
    read = read_operator_labels(p)
    assert sorted(read.labels) == [("address", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", 0), ("txid", a, 1),
                                   ("txid", b.lower(), 1), ("txid", c, 1)]
    assert [s.reason for s in read.skipped] == [
        f"line 5: txid {a} is labeled illicit on line 3",
        "line 6: kind 'bogus' is not 'txid' or 'address'",
        "line 7: expected 3 fields kind,id,label, got 2",
        "line 11: 'not-a-txid' is not a txid (64 hex digits) nor a 'kind,id,label' line",
    ]
    assert {s.ref for s in read.skipped} == {"labels.csv:5", "labels.csv:6", "labels.csv:7", "labels.csv:11"}
    assert read.summary == {"lines": 11, "labels": 4, "skipped": 4, "txid": 3, "address": 1, "illicit": 3}
    (tmp_path / "plain.txt").write_text(f"{a}\n{b}\n")
    assert read_operator_labels(tmp_path / "plain.txt").labels == [("txid", a, 1), ("txid", b.lower(), 1)]
    with pytest.raises(ConfigError, match="labels: .* does not exist"):
        read_operator_labels(tmp_path / "missing.csv")


# --------------------------------------------------------------------------------------------
# the store
# --------------------------------------------------------------------------------------------


def test_schema_version_and_foreign_files(tmp_path: Path):
    CollectorStore.open(tmp_path).close()
    path = store_path(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(DatasetError, match=f"schema version {SCHEMA_VERSION + 1} is newer than this build reads"):
        CollectorStore.open(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 0")
    with pytest.raises(DatasetError, match="unknown collector store schema version 0"):
        CollectorStore(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(DatasetError, match="not an anya-fl collector store"):
        CollectorStore(other)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatasetError, match="not a readable SQLite database"):
        CollectorStore(junk)
    with pytest.raises(DatasetError, match="no collector store"):
        CollectorStore(tmp_path / "none.sqlite", readonly=True)


def test_one_writer_per_store(tmp_path: Path):
    with CollectorStore.open(tmp_path):
        with pytest.raises(ConfigError, match="another collector is writing to"):
            CollectorStore.open(tmp_path)
        CollectorStore.open(tmp_path, readonly=True).close()  # readers are welcome
    CollectorStore.open(tmp_path).close()


def test_a_failed_block_leaves_nothing(tmp_path: Path):
    with CollectorStore.open(tmp_path) as st:
        st.connect_block(_block(H0, prev=_h(H0 - 1)), [_tx(_h(1), T0)], [])
        bad = _tx(_h(2), T0)
        bad.features = np.zeros(5)  # fails after the block row and the first transaction were written
        with pytest.raises(ValueError):
            st.connect_block(_block(H0 + 1), [_tx(_h(3), T0), bad], [_h(1)])
        assert st.tip() == (H0, _h(H0))
        assert st.counts()["blocks"] == 1 and st.counts()["transactions"] == 1
        assert st.db.execute("SELECT block_hash FROM transactions WHERE txid = ?", (_h(1),)).fetchone()[0] == _h(H0)


def test_fee_labels_follow_the_active_chain(tmp_path: Path):
    with CollectorStore.open(tmp_path) as st:
        st.connect_block(_block(H0, prev=_h(H0 - 1)), [], [])
        st.finish_mempool_batch(_snapshot(H0, T0 + 10), [], removed_at=T0 + 10, removed_tip=H0)
        for i, thr in enumerate([3.0, 1.0, 2.0], start=1):
            st.connect_block(_block(H0 + i), [], [])
            st.set_threshold(_h(H0 + i), thr > 1, thr, "waiting")
        st.set_threshold(_h(H0), True, 9.0, "waiting")
        assert st.judged_height() == H0 + 3
        assert st.label_fee_snapshots((1, 2, 3, 6), st.judged_height()) == 3
        labels = dict(st.db.execute("SELECT k, label FROM fee_labels"))
        assert labels == {1: 3.0, 2: 1.0, 3: 1.0}
        # a reorg of the top block drops the label that looked at it; the new block's threshold relabels it
        out = st.disconnect_block(_h(H0 + 3))
        assert out["fee_labels"] == 1 and st.tip() == (H0 + 2, _h(H0 + 2))
        st.connect_block(_block(H0 + 3, tag="fork"), [], [])
        st.set_threshold(_h(H0 + 3 + 10**9), True, 0.5, "waiting")
        assert st.label_fee_snapshots((1, 2, 3, 6), st.judged_height()) == 1
        assert dict(st.db.execute("SELECT k, label FROM fee_labels")) == {1: 3.0, 2: 1.0, 3: 0.5}
