"""The collector against a real SimNode on loopback (manual clock): exact rows and fee labels, a reorg, an
outage, restarts (in-process between statements, and a SIGKILLed `anya-fl collect` process), bad input,
retention and `collect status --json`.

Every run follows the same schedule (STEPS polls, STEP simulated seconds apart), so two runs of the same
seed can be compared store to store: ``main`` (nothing injected) is the canonical reference.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anya_fl.simnode import SimNode, SimNodeConfig
from core.bitcoin.features import anomaly_rows
from core.bitcoin.rpc import BitcoinRPC, RPCConfig
from core.collector.datasets import task_splits_from_store
from core.collector.follower import Collector, CollectorSettings
from core.collector.labels import read_operator_labels
from core.collector.store import CollectorStore, rows_from_blobs, store_path
from core.data.datasets import FEE_TARGETS, SPLITS
from tests.collector_truth import truth_checks

NODE = dict(seed=0, profile="merchant", transactions=3_000, speed=0.0, rpcuser="u", rpcpassword="p", start_block=2,
            warmup_s=0, maxmempool_mb=300, replacement_share=0.0, block_weight_limit=400_000)
SETTINGS = CollectorSettings(block_max_weight=400_000, fetch_workers=2)
STEP = 150.0
STEPS = 50
ROOT = Path(__file__).resolve().parents[1]


def start_node(**overrides: Any) -> SimNode:
    return SimNode(SimNodeConfig(**{**NODE, **overrides})).start(port=0)


def client(node: SimNode) -> BitcoinRPC:
    return BitcoinRPC(RPCConfig(url=node.url, user="u", password="p", retries=0, timeout_s=10))


def advance_to(node: SimNode, t: float) -> None:
    """Move the manual clock to simulated time ``t`` (the schedule is absolute, whatever an event did)."""
    node.advance(max(0.0, t - node.now()))


def follow(node: SimNode, data_dir: Path, rpc: BitcoinRPC | None = None,
           events: dict[int, Callable[[SimNode, Collector], Collector | None]] | None = None,
           labels: Path | None = None) -> list[str]:
    """Poll at the start and after each of STEPS clock steps; ``events[i]`` runs after poll i (it may return a
    replacement collector). Returns the poll states."""
    store = CollectorStore.open(data_dir)
    if labels is not None:
        read = read_operator_labels(labels)
        store.import_operator_labels(read.labels, str(labels), read.skipped)
    collector = Collector(rpc or client(node), store, SETTINGS)
    t0 = node.now()
    states = [collector.poll_once().state]
    for i in range(1, STEPS + 1):
        advance_to(node, t0 + i * STEP)
        states.append(collector.poll_once().state)
        if events and i in events:
            collector = events[i](node, collector) or collector
    collector.close()
    collector.store.close()
    return states


def dump(data_dir: Path) -> dict[str, Any]:
    """Connected blocks, transactions (confirmation, features) and fee labels of snapshots on the active chain."""
    with sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True) as db:
        blocks = {h: (b, thr, full) for h, b, thr, full in db.execute(
            "SELECT height, hash, threshold, full FROM blocks WHERE connected = 1")}
        txs = {t: (b, f) for t, b, f in db.execute("SELECT txid, block_hash, features FROM transactions")}
        n_rows = db.execute("SELECT count(*) FROM transactions").fetchone()[0]
        labels = {(t, h, k): y for t, h, k, y in db.execute(
            "SELECT s.time, s.tip_height, f.k, f.label FROM fee_labels f JOIN snapshots s ON s.id = f.snapshot_id")}
    assert n_rows == len(txs)
    return {"blocks": blocks, "txs": txs, "labels": labels}


def assert_same_chain_data(got: dict, ref: dict) -> None:
    """Blocks, transaction confirmations and features equal; every label also in the reference, equal."""
    assert got["blocks"] == ref["blocks"]
    assert got["txs"].keys() == ref["txs"].keys()
    diff = [t for t in ref["txs"] if got["txs"][t] != ref["txs"][t]]
    assert not diff, f"{len(diff)} transactions differ, e.g. {diff[:3]}"
    extra = {k: v for k, v in got["labels"].items() if ref["labels"].get(k) != v}
    assert not extra, f"labels not in the reference run: {list(extra.items())[:5]}"


# --------------------------------------------------------------------------------------------
# the reference run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory):
    """One run with nothing injected (with operator labels): the reference for the other runs."""
    d = tmp_path_factory.mktemp("main")
    node = start_node()
    try:
        node.write_labels(d / "labels.csv", share=0.5, seed=1)
        states = follow(node, d, labels=d / "labels.csv")
        yield {"dir": d, "node": node, "states": states, "dump": dump(d)}
    finally:
        node.stop()


def test_rows_and_fee_labels_equal_the_simulators(main):
    assert set(main["states"]) == {"ok"}
    n = truth_checks(main["node"], main["dir"])
    assert n["rows"] > 1_000 and n["labels"] > 100 and n["ks"] == len(FEE_TARGETS) and n["blocks"] >= 10
    # every transaction of every stored block after the first is stored with that block
    node = main["node"]
    blocks = main["dump"]["blocks"]
    txs = main["dump"]["txs"]
    for h in sorted(blocks)[1:]:
        want = {node.truth.txid(i) for i in node.truth.block_txs(h)}
        assert {t for t, (b, _) in txs.items() if b == blocks[h][0]} == want
    # the pending transactions are the node's mempool now
    pending = {t for t, (b, _) in txs.items() if b is None}
    assert pending == {node.truth.txid(i) for i in node.truth.mempool_at(node.now())}


def test_task_splits_from_store(main):
    data, summary = task_splits_from_store(main["dir"])
    node = main["node"]
    assert set(data) == {"fraud", "fee", "anomaly"} and not summary["unavailable"]
    t1, t2 = summary["boundaries"]
    with CollectorStore.open(main["dir"], readonly=True) as st:
        txid = dict(st.db.execute("SELECT id, txid FROM transactions"))
        seen = dict(st.db.execute("SELECT id, first_seen FROM transactions"))
        fee_meta = {(s, k): (t, e) for s, k, t, e in st.db.execute(
            "SELECT f.snapshot_id, f.k, s.time, f.end_time FROM fee_labels f JOIN snapshots s ON s.id = f.snapshot_id")}
    for i, split in enumerate(SPLITS):
        fraud = data["fraud"]
        want = node.chain.tx["illicit"][[node.truth.tx_index(txid[j]) for j in fraud.index[split]]]
        np.testing.assert_array_equal(fraud.y[split], want.astype(np.float32))
        times = np.array([seen[j] for j in data["anomaly"].index[split]])
        assert ((times >= t1) if i else (times < t1)).all() and ((times >= t2) if i == 2 else (times < t2)).all()
        # fee: no look-ahead crosses a boundary
        fee = data["fee"]
        k = fee.x[split][:, -1].astype(int)
        for s_id, kk in zip(fee.index[split], k, strict=True):
            t_snap, t_end = fee_meta[(int(s_id), int(kk))]
            lo, hi = (-np.inf, t1) if i == 0 else ((t1, t2) if i == 1 else (t2, np.inf))
            assert lo <= t_snap and t_end < hi
    assert summary["label_coverage"]["fraud"]["labeled"] > 0
    assert summary["rows"]["fee"]["train"] > 0 and summary["rows"]["anomaly"]["test"] > 0
    # anomaly rows: the transaction joined with its arrival snapshot
    with CollectorStore.open(main["dir"], readonly=True) as st:
        row = st.db.execute("SELECT t.id, t.features, s.features FROM transactions t JOIN snapshots s "
                            "ON s.id = t.arrival_snapshot ORDER BY t.id LIMIT 1").fetchone()
    want = anomaly_rows(rows_from_blobs([row[1]], 22), rows_from_blobs([row[2]], 12))[0]
    where = [(s, j) for s in SPLITS for j, rid in enumerate(data["anomaly"].index[s]) if rid == row[0]]
    np.testing.assert_array_equal(data["anomaly"].x[where[0][0]][where[0][1]], want)


# --------------------------------------------------------------------------------------------
# reorg, outage, restarts
# --------------------------------------------------------------------------------------------


def test_reorg_of_depth_3_matches_the_canonical_run(main, tmp_path):
    node = start_node()
    seen: dict[str, Any] = {}

    def consistent(db: sqlite3.Connection) -> bool:
        """Every fee label is the min threshold of the connected blocks in its window (the active chain's)."""
        thr = dict(db.execute("SELECT height, threshold FROM blocks WHERE connected = 1"))
        rows = db.execute("SELECT s.tip_height, f.k, f.label FROM fee_labels f JOIN snapshots s "
                          "ON s.id = f.snapshot_id").fetchall()
        return all(y == min(thr[h] for h in range(tip + 1, tip + k + 1)) for tip, k, y in rows)

    def reorg(node: SimNode, c: Collector) -> None:
        top = node.tip_height()
        db = c.store.db
        seen["labels_on_old_blocks"] = db.execute("SELECT count(*) FROM fee_labels WHERE last_height >= ?",
                                                  (top - 2,)).fetchone()[0]
        node.inject_reorg(3)
        res = c.poll_once()  # the stale branch is active now
        assert res.state == "ok" and res.blocks_disconnected == 3 and res.blocks_connected == 3
        seen["consistent"] = consistent(db)
        stale = {b for (b,) in db.execute("SELECT hash FROM blocks WHERE connected = 1 AND height >= ?", (top - 2,))}
        seen["stale_is_new"] = not stale & {main["dump"]["blocks"][h][0] for h in range(top - 2, top + 1)}
        dropped = [node.truth.txid(i) for h in range(top - 2, top + 1) for i in node.truth.block_txs(h)[-1:]]
        seen["dropped_pending"] = db.execute(
            f"SELECT count(*) FROM transactions WHERE block_hash IS NULL AND txid IN ({','.join('?' * len(dropped))})",
            dropped).fetchone()[0] == len(dropped)

    try:
        states = follow(node, tmp_path, events={30: reorg})
    finally:
        node.stop()
    assert set(states) == {"ok"}
    assert seen.pop("labels_on_old_blocks") > 0
    assert seen == {"consistent": True, "stale_is_new": True, "dropped_pending": True}
    got = dump(tmp_path)
    assert_same_chain_data(got, main["dump"])
    missing = set(main["dump"]["labels"]) - set(got["labels"])
    assert len(missing) < len(main["dump"]["labels"]) // 5  # only snapshots taken on the stale branch
    with CollectorStore.open(tmp_path, readonly=True) as st:
        assert st.db.execute("SELECT count(*) FROM blocks WHERE connected = 0").fetchone()[0] == 3  # the stale branch


def test_blocks_mined_unwatched_are_not_judged_to_have_room(tmp_path):
    """Blocks mined while the collector was not looking (here: four between two polls, 4 MWU blocks that are
    mostly not full) may have left transactions waiting that a later block took before the collector saw
    them: "room" cannot be concluded for them, so their threshold is unknown and no fee label spans them.
    The block the collector saw as the tip is judged as usual, and every threshold it gives is the truth."""
    node = start_node(seed=3, profile="exchange", transactions=6_000, block_weight_limit=4_000_000)
    try:
        store = CollectorStore.open(tmp_path)
        collector = Collector(client(node), store, CollectorSettings(fetch_workers=2))
        assert collector.poll_once().state == "ok"
        first = node.tip_height()
        while node.tip_height() < first + 4:  # a gap of at least four blocks
            node.advance(60.0)
        gap_top = node.tip_height()
        for _ in range(60):
            assert collector.poll_once().state == "ok"
            node.advance(150.0)
        collector.close()
        with store.transaction() as db:
            judged = dict(db.execute("SELECT height, evidence FROM blocks WHERE connected = 1").fetchall())
            spans = db.execute("SELECT count(*) FROM fee_labels f JOIN snapshots s ON s.id = f.snapshot_id "
                               "WHERE s.tip_height < ? AND s.tip_height + f.k >= ?", (first + 1, first + 1)).fetchone()[0]
        store.close()
        gap = [judged[h] for h in range(first + 1, gap_top)]
        assert all(e == "unobserved" or e in ("waiting", "ambiguous-waiting", "mempool-min-fee") for e in gap), gap
        assert "unobserved" in gap
        assert judged[gap_top] != "unobserved"
        unobserved = [h for h, e in judged.items() if e == "unobserved"]
        assert len(unobserved) < len(judged) / 3  # regular polls see (nearly) every block as the tip
        n = truth_checks(node, tmp_path)
        assert n["labels"] > 20
        if judged[first + 1] == "unobserved":
            assert spans == 0  # the first snapshot's labels end before the unknown block
    finally:
        node.stop()


def test_a_transaction_mined_while_being_fetched_takes_its_age_from_its_block(tmp_path):
    """The mempool is listed at tip h; before its transactions are fetched, two blocks arrive (a node with
    -txindex then answers getrawtransaction with the confirmed transaction). The collector leaves those to the
    block path, so their input ages count from their own block, not from the tip (which is a block higher)."""
    node = start_node()

    class RacingRPC(BitcoinRPC):
        """The real client; the node's clock jumps two blocks ahead at the first fetch after ``armed``."""

        armed = False

        def getrawtransaction(self, txid, verbose=True):
            if RacingRPC.armed:
                RacingRPC.armed = False
                tip = node.tip_height()
                while node.tip_height() < tip + 2:
                    node.advance(30.0)
            return super().getrawtransaction(txid, verbose)

    try:
        store = CollectorStore.open(tmp_path)
        collector = Collector(RacingRPC(RPCConfig(url=node.url, user="u", password="p", retries=0)), store, SETTINGS)
        assert collector.poll_once().state == "ok"
        node.advance(400.0)
        RacingRPC.armed = True
        assert collector.poll_once().state == "ok"
        assert not RacingRPC.armed
        vanished = collector.totals["vanished"]
        for _ in range(6):
            node.advance(STEP)
            assert collector.poll_once().state == "ok"
        collector.close()
        store.close()
        truth_checks(node, tmp_path)  # every stored row (ages included) equals the simulator's
        assert vanished > 0  # the mined ones were left to the block path
    finally:
        node.stop()


def test_outage_loses_nothing_core_still_holds(main, tmp_path):
    node = start_node()
    t0 = node.now()
    bt = node.chain.block_time
    # an outage that starts right after a poll and hides a block: the next good poll must fetch it
    at = next(i for i in range(5, STEPS - 5) if ((bt > t0 + i * STEP) & (bt < t0 + i * STEP + 45)).any())
    states_out: list[str] = []

    def outage(node: SimNode, c: Collector) -> None:
        node.inject_outage(60)
        states_out.append(c.poll_once().state)
        node.advance(45)  # the block is mined now, and the node is still down
        states_out.append(c.poll_once().state)

    try:
        states = follow(node, tmp_path, events={at: outage})
    finally:
        node.stop()
    assert states_out == ["unreachable", "unreachable"]
    assert set(states) == {"ok"}
    assert_same_chain_data(dump(tmp_path), main["dump"])
    assert dump(tmp_path)["labels"] == main["dump"]["labels"]


class _Killed(BaseException):
    """Stands for the process dying between two SQL statements."""


class _Dying:
    """Wraps the store's connection: dies at the ``nth`` statement inserting a transaction, once armed."""

    def __init__(self, db: sqlite3.Connection, nth: int, in_block: bool) -> None:
        self.db, self.nth, self.in_block, self.block_open = db, nth, in_block, False

    def _count(self, sql: str) -> None:
        if sql.startswith("INSERT INTO blocks"):
            self.block_open = True
        if sql.startswith("INSERT INTO transactions") and self.block_open == self.in_block:
            self.nth -= 1
            if self.nth == 0:
                raise _Killed(sql)
        if sql.startswith("COMMIT"):
            self.block_open = False

    def execute(self, sql: str, *args: Any) -> Any:
        self._count(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        self._count(sql)
        return self.db.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_restart_after_dying_between_statements(main, tmp_path):
    node = start_node()
    deaths: list[str] = []
    plan = {8: True, 20: False}  # after these steps: die inserting a block's transactions, then a mempool chunk
    try:
        c = Collector(client(node), CollectorStore.open(tmp_path), SETTINGS)
        t0 = node.now()
        states = [c.poll_once().state]
        for i in range(1, STEPS + 1):
            advance_to(node, t0 + i * STEP)
            if i in plan:
                c.store.db = _Dying(c.store.db, 2, plan[i])
            try:
                states.append(c.poll_once().state)
            except _Killed:
                deaths.append("block" if c.store.db.in_block else "mempool")
                c.store.close()  # the process is gone: nothing after its last COMMIT was kept
                c = Collector(client(node), CollectorStore.open(tmp_path), SETTINGS)
                states.append(c.poll_once().state)  # a new process, at the same node time
        c.close()
        c.store.close()
    finally:
        node.stop()
    assert deaths == ["block", "mempool"] and set(states) == {"ok"}
    got = dump(tmp_path)
    assert got["blocks"] == main["dump"]["blocks"]
    assert got["txs"] == main["dump"]["txs"]
    truth_checks(main["node"], tmp_path)


def _wait(predicate: Callable[[], bool], what: str, limit_s: float = 120.0) -> None:
    end = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def _meta(data_dir: Path, key: str) -> Any:
    try:
        with sqlite3.connect(f"file:{store_path(data_dir)}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return json.loads(row[0]) if row else None


def test_sigkilled_collect_process_restarts_without_gaps(tmp_path, monkeypatch):
    from anya_fl.simnode.rpc import CoreRPC

    slow = {"s": 0.0}
    plain = CoreRPC.getrawtransaction

    def getrawtransaction(self, *args):  # a slower node, so that the kill lands while the collector works
        time.sleep(slow["s"])
        return plain(self, *args)

    monkeypatch.setattr(CoreRPC, "getrawtransaction", getrawtransaction)
    node = start_node()
    env = {**os.environ, "ANYA_FL_RPC_PASSWORD": "p", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "anya_fl.cli", "collect", "--rpc-url", node.url, "--rpc-user", "u",
           "--data-dir", str(tmp_path), "--interval", "0.05"]
    procs: list[subprocess.Popen] = []
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        procs.append(proc)
        for _ in range(8):
            node.advance(STEP)
            best = client(node).call("getbestblockhash")
            _wait(lambda best=best: _meta(tmp_path, "mempool_tip_hash") == best and proc.poll() is None,
                  "the collector to catch up")
        before = _meta(tmp_path, "tip_height")
        slow["s"] = 0.005
        node.advance(10 * STEP)  # a lot of new work: blocks, then a thousand mempool transactions
        best = client(node).call("getbestblockhash")
        _wait(lambda: (_meta(tmp_path, "tip_height") or 0) > before, "the collector to start on it")
        mid_stream = _meta(tmp_path, "mempool_tip_hash") != best
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert mid_stream  # killed after storing new blocks, before the mempool caught up
        slow["s"] = 0.0
        node.advance(4 * STEP)
        once = subprocess.run([*cmd, "--once"], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert once.returncode == 0, once.stdout + once.stderr
        assert once.stdout.startswith("ok: tip ")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        node.stop()
    d = dump(tmp_path)
    heights = sorted(d["blocks"])
    assert heights == list(range(heights[0], node.tip_height() + 1))
    for h in heights:
        want = {node.truth.txid(i) for i in node.truth.block_txs(h)}
        assert {t for t, (b, _) in d["txs"].items() if b == d["blocks"][h][0]} == want, f"block {h}"
    pending = {t for t, (b, _) in d["txs"].items() if b is None}
    assert pending == {node.truth.txid(i) for i in node.truth.mempool_at(node.now())}
    truth_checks(node, tmp_path)


def test_replacements_evictions_and_mempool_without_details(tmp_path):
    """RBF phantoms replaced by their canonical version, a 0.3 MB mempool evicting and refusing, and mempool
    transactions shown as Core shows them (no fee, no prevouts: input age filled in at confirmation)."""
    node = start_node(replacement_share=0.3, maxmempool_mb=0.3, mempool_tx_details=False)
    try:
        assert set(follow(node, tmp_path)) == {"ok"}
    finally:
        node.stop()
    with CollectorStore.open(tmp_path, readonly=True) as st:
        rows = st.db.execute("SELECT txid, removed, replaced_by, block_hash, age_known FROM transactions").fetchall()
        evidence = {e for (e,) in st.db.execute("SELECT evidence FROM blocks")}
    canonical = node.txs.index
    replaced = [(t, by) for t, why, by, _, _ in rows if why == "replaced"]
    assert replaced and all(node.truth.phantom_of(t) == node.truth.tx_index(by) for t, by in replaced)
    assert any(why == "evicted" for _, why, _, b, _ in rows if b is None)
    assert all(age for t, _, _, b, age in rows if b is not None)  # from getblock 3 once confirmed
    assert not any(age for t, _, _, b, age in rows if b is None and t in canonical)
    assert "mempool-min-fee" in evidence
    truth_checks(node, tmp_path)  # rows (confirmed ones carry the input age now), thresholds, labels


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


class _FaultyRPC(BitcoinRPC):
    """Real replies from the node, with chosen faults: an entry without its fee, a refused transaction in the
    first block, a block reply without its time (once)."""

    def __init__(self, config: RPCConfig, bad_time_height: int) -> None:
        super().__init__(config)
        self.bad_time_height = bad_time_height
        self.no_fee: str | None = None
        self.refused: str | None = None
        self.first_block: str | None = None
        self.time_dropped = False

    def call(self, method: str, *params: Any) -> Any:
        result = super().call(method, *params)
        if method == "getrawmempool" and params == (True,) and result:
            if self.no_fee is None:
                self.no_fee = sorted(result)[0]
            if self.no_fee in result:
                del result[self.no_fee]["fees"]
        elif method == "getmempoolentry" and params[0] == self.no_fee:
            del result["fees"]
        elif method == "getblock":
            if self.first_block in (None, result["hash"]):
                self.first_block = result["hash"]
                tx = result["tx"][1]
                self.refused = tx["txid"]
                tx["vout"][0]["value"] = -1.0
            if result["height"] == self.bad_time_height and not self.time_dropped:
                self.time_dropped = True
                del result["time"]
        return result


def test_bad_input_is_skipped_counted_and_the_rest_collected(tmp_path):
    node = start_node()
    top = node.tip_height()
    rpc = _FaultyRPC(RPCConfig(url=node.url, user="u", password="p", retries=0), bad_time_height=top + 2)
    labels = tmp_path / "labels.csv"
    labels.write_text(f"kind,id,label\ntxid,{'a' * 64},illicit\ntxid,nothex,illicit\naddress,bc1qxyz0,maybe\n")
    try:
        store = CollectorStore.open(tmp_path)
        read = read_operator_labels(labels)
        store.import_operator_labels(read.labels, str(labels), read.skipped)
        c = Collector(rpc, store, SETTINGS)
        states = [c.poll_once().state]
        while node.tip_height() < top + 4:
            node.advance(STEP)
            states.append(c.poll_once().state)
        c.close()
    finally:
        node.stop()
    assert states.count("error") == 1 and states[-1] == "ok"
    skipped = {(s["kind"], s["field"]): s for s in store.skipped()}
    assert set(skipped) == {("mempool_entry", "fees.base"), ("transaction", "vout[0].value"), ("reply", "time"),
                            ("label_line", None)}
    assert rpc.no_fee in skipped[("mempool_entry", "fees.base")]["reason"]
    assert rpc.refused in skipped[("transaction", "vout[0].value")]["ref"]
    assert "negative" in skipped[("transaction", "vout[0].value")]["reason"]
    assert skipped[("reply", "time")]["ref"].startswith("getblock ")
    lines = [s["reason"] for s in store.skipped() if s["kind"] == "label_line"]
    assert lines == ["line 3: txid 'nothex' is not 64 hex digits", "line 4: label 'maybe' is not 'illicit' or 'licit'"]
    assert c.totals["skipped"] == 3  # the labels file's lines were counted by its reader
    # the rest: the first block's other transactions, every later block whole, the block that lacked its time
    d = dump(tmp_path)
    first = d["blocks"][top][0]
    assert len([t for t, (b, _) in d["txs"].items() if b == first]) == len(node.truth.block_txs(top)) - 1
    for h in range(top + 1, node.tip_height() + 1):
        assert len([t for t, (b, _) in d["txs"].items() if b == d["blocks"][h][0]]) == len(node.truth.block_txs(h))
    store.close()


# --------------------------------------------------------------------------------------------
# retention and status
# --------------------------------------------------------------------------------------------


def _copy_store(src: Path, dst: Path) -> Path:
    out = store_path(dst)
    out.parent.mkdir(parents=True)
    with sqlite3.connect(f"file:{store_path(src)}?mode=ro", uri=True) as a, sqlite3.connect(out) as b:
        a.backup(b)
    return dst


def test_retention_prunes_oldest_first(main, tmp_path):
    d = _copy_store(main["dir"], tmp_path / "copy")
    with CollectorStore.open(d) as st:
        before = st.counts()
        lo, hi = st.db.execute("SELECT min(time), max(time) FROM blocks").fetchone()
        days = (hi - lo) / 2 / 86_400
        pruned = st.prune(retain_days=days, max_mb=2048, keep_blocks=3)
        cutoff = hi - int(days * 86_400)
        after = st.counts()
        assert pruned["blocks"] > 0 and pruned["transactions"] > 0 and pruned["snapshots"] > 0
        assert before["blocks"] - after["blocks"] == pruned["blocks"]
        assert before["transactions"] - after["transactions"] == pruned["transactions"]
        assert st.db.execute("SELECT count(*) FROM blocks WHERE time < ?", (cutoff,)).fetchone()[0] == 0
        assert st.db.execute("SELECT count(*) FROM snapshots WHERE time < ?", (cutoff,)).fetchone()[0] == 0
        assert st.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert after["pending"] == before["pending"]  # what is still in the mempool stays
        # the size bound: the oldest data goes until the store fits (here: all but the kept blocks)
        pruned = st.prune(retain_days=3650, max_mb=0.01, keep_blocks=3)
        assert pruned["blocks"] > 0 and st.counts()["blocks"] == 3
        assert st.get_meta("pruned_total")["blocks"] == before["blocks"] - 3


def test_collect_status_json(main, tmp_path):
    from typer.testing import CliRunner

    from anya_fl.cli import app

    out = tmp_path / "status.json"
    res = CliRunner().invoke(app, ["collect", "status", "--data-dir", str(main["dir"]), "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["tip_height"] == max(main["dump"]["blocks"])
    assert doc["counts"]["transactions"] == len(main["dump"]["txs"])
    assert doc["store_mb"] > 0 and doc["skipped"]["total"] == 0
    assert set(doc["tasks"]["rows"]) == {"fraud", "fee", "anomaly"}
    assert doc["tasks"]["label_coverage"]["fraud"]["labeled"] > 0
    assert doc["time_span"][1] > doc["time_span"][0]
    assert doc["collector"]["tip_height"] == doc["tip_height"]
    res = CliRunner().invoke(app, ["collect", "status", "--data-dir", str(tmp_path / "none")])
    assert res.exit_code != 0 and "no collector store" in str(res.exception)


# --------------------------------------------------------------------------------------------
# the run loop and the command line
# --------------------------------------------------------------------------------------------


def test_run_loop_waits_out_the_warm_up(tmp_path):
    import threading

    from core.collector.follower import zmq_available

    node = start_node(warmup_s=100)
    states: list[str] = []
    stop = threading.Event()
    c = Collector(client(node), CollectorStore.open(tmp_path), SETTINGS)

    def on_poll(res) -> None:
        states.append(res.state)
        if states.count("warming_up") == 2 and res.state == "warming_up":
            node.advance(100)  # the node finishes loading its block index
        if states.count("ok") >= 2:
            stop.set()

    loop = threading.Thread(target=c.run, args=(stop, 0.01),
                            kwargs={"zmq_endpoint": "tcp://127.0.0.1:9", "on_poll": on_poll, "max_backoff_s": 0.02})
    try:
        loop.start()
        loop.join(timeout=120)
        assert not loop.is_alive()
    finally:
        stop.set()
        c.close()
        c.store.close()
        node.stop()
    assert states[:2] == ["warming_up", "warming_up"] and states[2:] == ["ok", "ok"]
    assert c.last_result is not None and c.last_result.tip_height == node.tip_height()
    if not zmq_available():
        assert "pyzmq is not installed: --zmq ignored, polling only" in c.messages


def test_collect_command_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from anya_fl.cli import app
    from core.errors import AnyaError, ConfigError

    monkeypatch.delenv("ANYA_FL_RPC_PASSWORD", raising=False)
    run = CliRunner().invoke
    res = run(app, ["collect", "--rpc-url", "http://127.0.0.1:1", "--rpc-user", "u", "--data-dir", str(tmp_path)])
    assert isinstance(res.exception, ConfigError)
    assert str(res.exception) == "rpc-user: the password comes from ANYA_FL_RPC_PASSWORD, which is not set"
    res = run(app, ["collect", "--rpc-url", "http://127.0.0.1:1", "--rpc-user", "u"])
    assert str(res.exception) == "data-dir: missing: the directory for the collector's store"
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:00ff")
    res = run(app, ["collect", "--rpc-url", "http://127.0.0.1:1", "--rpc-cookie", str(cookie), "--data-dir",
                    str(tmp_path), "--once"])
    assert isinstance(res.exception, AnyaError) and "cannot connect to Bitcoin Core at http://127.0.0.1:1" in str(
        res.exception)
    assert "\n" not in str(res.exception)


def test_bench_measurements(tmp_path):
    from core.collector.bench import measure_ingest, measure_mempool_rss_synthetic

    node = start_node()
    try:
        out = measure_ingest(client(node), tmp_path / "ingest", advance=node.advance, step_s=STEP, polls=6,
                             settings=SETTINGS)
    finally:
        node.stop()
    assert out["polls_by_state"] == {"ok": 6} and out["transactions"] > 0 and out["tx_per_s"] > 0
    out = measure_mempool_rss_synthetic(tmp_path / "rss", size=2_000)
    assert out["state"] == "ok" and out["mempool_transactions"] == 2_000 and out["rss_mb"] > 0
