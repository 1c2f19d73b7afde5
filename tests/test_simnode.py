"""The simulated Bitcoin Core node (anya_fl.simnode) through the product's RPC client and parsers."""

from __future__ import annotations

import base64
import csv
import http.client
import json
import math
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from anya_fl.simnode import GENESIS_EPOCH, SimNode
from anya_fl.simnode.timeline import REASONS
from core.bitcoin.features import TX_SCHEMA
from core.bitcoin.parsing import parse_block, parse_mempool, parse_transaction
from core.bitcoin.rpc import BitcoinRPC, RPCConfig, RPCConnectionError, RPCReplyError
from core.data.chain import START_HEIGHT
from core.data.replay import bucket_estimates
from core.errors import ConfigError
from tests.simnode_fixtures import PASSWORD, USER, client, make_node, started_nodes

AGE = TX_SCHEMA.index("input_age_blocks")






@pytest.fixture(scope="module")
def node():
    n = make_node().start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture
def fresh():
    """A node of its own for tests that inject scenarios (stopped afterwards)."""
    yield from started_nodes(make_node)


def at_block(node: SimNode, b: int, after: float = 1.0) -> float:
    """Set the manual clock ``after`` simulated seconds past block ``b``; returns that time."""
    t = float(node.chain.block_time[b]) + after
    node.clock.set(t)
    return t


def sim_mempool(node: SimNode, t: float) -> set[int]:
    """The simulator's mempool at ``t``, from the chain's arrays alone."""
    tx = node.chain.tx
    tip = START_HEIGHT + int(np.searchsorted(node.chain.block_time, t, side="right"))
    keep = (tx["arrival_time"] <= t) & ((tx["confirm_height"] > tip) | (tx["confirm_height"] < 0))
    return set(np.flatnonzero(keep).tolist())


def rows_match(rows: np.ndarray, expected: np.ndarray, height: int) -> None:
    """Parsed rows equal the simulator's exactly, except the input age of an input older than the height."""
    unreachable = expected[:, AGE] > height
    assert np.array_equal(rows[~unreachable], expected[~unreachable])
    assert np.array_equal(np.delete(rows, AGE, axis=1), np.delete(expected, AGE, axis=1))


def post(node: SimNode, body: bytes, *, auth: bool = True, length: int | None = None,
         method: str = "POST") -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        conn.putrequest(method, "/")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body) if length is None else length))
        if auth:
            conn.putheader("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


# ---- chain and blocks


def test_blockchain_info_and_headers(node) -> None:
    at_block(node, 25)
    rpc = client(node)
    info = rpc.getblockchaininfo()
    tip = START_HEIGHT + 26
    assert info["blocks"] == info["headers"] == tip == rpc.getblockcount() == node.tip_height()
    for key, kind in {"chain": str, "bestblockhash": str, "difficulty": float, "time": int, "mediantime": int,
                      "verificationprogress": float, "initialblockdownload": bool, "chainwork": str,
                      "size_on_disk": int, "pruned": bool, "warnings": str}.items():
        assert isinstance(info[key], kind), key
    assert info["bestblockhash"] == rpc.call("getbestblockhash") == rpc.getblockhash(tip)
    header = rpc.call("getblockheader", info["bestblockhash"])
    assert header["time"] == GENESIS_EPOCH + math.ceil(node.chain.block_time[25]) == info["time"]
    assert header["confirmations"] == 1 and "nextblockhash" not in header and header["nTx"] >= 1
    assert header["previousblockhash"] == rpc.getblockhash(tip - 1)
    older = rpc.call("getblockheader", rpc.getblockhash(tip - 3), True)
    assert older["confirmations"] == 4 and older["nextblockhash"] == rpc.getblockhash(tip - 2)
    assert older["mediantime"] <= older["time"]
    raw = rpc.call("getblockheader", info["bestblockhash"], False)
    assert isinstance(raw, str) and len(raw) == 160
    with pytest.raises(RPCReplyError) as err:
        rpc.getblockhash(tip + 1)  # not mined yet at this simulated time
    assert err.value.code == -8
    future = node.blocks.hash(tip + 1)
    with pytest.raises(RPCReplyError) as err:
        rpc.getblock(future, 1)
    assert (err.value.code, err.value.rpc_message) == (-5, "Block not found")


def test_getblock_rows_equal_the_simulator(node) -> None:
    at_block(node, 30)
    rpc = client(node)
    tip = rpc.getblockcount()
    for height in range(tip - 2, tip + 1):
        blockhash = rpc.getblockhash(height)
        block = rpc.getblock(blockhash, 3)
        txids = [tx["txid"] for tx in block["tx"][1:]]
        assert "coinbase" in block["tx"][0]["vin"][0] and "fee" not in block["tx"][0]
        assert [node.truth.tx_index(t) for t in txids] == node.truth.block_txs(height).tolist()
        rows = parse_block(block)
        rows_match(rows, node.truth.tx_rows(txids), height)
        assert rows[:, TX_SCHEMA.index("input_age_known")].all()
        assert block["nTx"] == len(block["tx"]) and block["height"] == height
        assert block["weight"] == sum(tx["weight"] for tx in block["tx"]) + 4 * 81
        verbose2 = rpc.getblock(blockhash, 2)
        assert all("fee" in tx and "prevout" not in tx["vin"][0] for tx in verbose2["tx"][1:])
        assert np.array_equal(parse_block(verbose2)[:, :AGE], rows[:, :AGE])
        assert rpc.getblock(blockhash, 1)["tx"] == [tx["txid"] for tx in block["tx"]]
        raw = rpc.getblock(blockhash, 0)
        assert len(raw) == 2 * block["size"]
        spk = block["tx"][1]["vout"][0]["scriptPubKey"]
        assert {"asm", "desc", "hex", "type"} <= set(spk) and "#" in spk["desc"]
        prevout = block["tx"][1]["vin"][0]["prevout"]
        assert {"generated", "height", "value", "scriptPubKey"} <= set(prevout)


def test_getblockstats_as_core_computes_them(node) -> None:
    at_block(node, 30)
    rpc = client(node)
    tip = rpc.getblockcount()
    stats = rpc.call("getblockstats", tip - 1)
    members = node.truth.block_txs(tip - 1)
    tx = node.chain.tx
    rates = (tx["fee_sat"][members] * 4) // tx["weight"][members]
    assert stats["txs"] == len(members) + 1 and stats["height"] == tip - 1
    assert stats["minfeerate"] == rates.min() and stats["maxfeerate"] == rates.max()
    assert stats["totalfee"] == tx["fee_sat"][members].sum()
    assert stats["total_weight"] == tx["weight"][members].sum()
    assert stats["avgfeerate"] == stats["totalfee"] * 4 // stats["total_weight"]
    p = stats["feerate_percentiles"]
    assert len(p) == 5 and p == sorted(p) and rates.min() <= p[0] and p[-1] <= rates.max()
    assert all(isinstance(stats[k], int) for k in stats if k not in ("blockhash", "feerate_percentiles"))
    by_hash = rpc.call("getblockstats", rpc.getblockhash(tip - 1), ["minfeerate", "txs"])
    assert by_hash == {"minfeerate": stats["minfeerate"], "txs": stats["txs"]}
    for args, code in (((tip + 1,), -8), ((-1,), -8), ((tip, ["nope"]), -8), (("00" * 32,), -5)):
        with pytest.raises(RPCReplyError) as err:
            rpc.call("getblockstats", *args)
        assert err.value.code == code, args


# ---- mempool


def test_mempool_matches_the_simulator(node) -> None:
    t = at_block(node, 30, after=240.0)
    rpc = client(node)
    tip = rpc.getblockcount()
    txids = rpc.getrawmempool(False)
    expected = sim_mempool(node, t)
    assert {node.truth.tx_index(x) for x in txids} == expected == set(node.truth.mempool_at(t).tolist())
    entries = rpc.getrawmempool(True)
    assert set(entries) == set(txids)
    info = rpc.getmempoolinfo()
    row = parse_mempool(entries, info)
    assert row[0] == len(txids) == info["size"]
    assert info["bytes"] == sum(e["vsize"] for e in entries.values()) and info["mempoolminfee"] == 0.00001
    entry = rpc.call("getmempoolentry", txids[0])
    assert entry == entries[txids[0]]
    i = node.truth.tx_index(txids[0])
    assert entry["time"] == GENESIS_EPOCH + math.floor(node.chain.tx["arrival_time"][i])
    assert entry["height"] == node.chain.tx["entry_height"][i] <= tip
    for key, kind in {"vsize": int, "weight": int, "time": int, "height": int, "descendantcount": int,
                      "ancestorcount": int, "wtxid": str, "fees": dict, "depends": list, "spentby": list,
                      "bip125-replaceable": bool, "unbroadcast": bool}.items():
        assert isinstance(entry[key], kind), key
    for txid in txids[:25]:
        doc = rpc.getrawtransaction(txid, 2)  # Core: no undo data for a mempool transaction, so no fee or prevouts
        assert "blockhash" not in doc and "fee" not in doc and "prevout" not in doc["vin"][0]
    assert "fee" not in rpc.getrawtransaction(txids[0], 1)
    assert isinstance(rpc.getrawtransaction(txids[0], False), str)
    with pytest.raises(RPCReplyError) as err:
        rpc.call("getrawmempool", True, True)
    assert err.value.code == -8


def test_confirmed_transaction_lookup(node) -> None:
    at_block(node, 30)
    rpc = client(node)
    tip = rpc.getblockcount()
    block = rpc.getblock(rpc.getblockhash(tip - 2), 1)
    doc = rpc.getrawtransaction(block["tx"][1], 2)
    assert doc["blockhash"] == block["hash"] and doc["confirmations"] == 3 and "prevout" in doc["vin"][0]
    with_hash = rpc.call("getrawtransaction", block["tx"][1], 1, block["hash"])
    assert with_hash["in_active_chain"] is True and "fee" not in with_hash
    coinbase = rpc.getrawtransaction(block["tx"][0], 1)
    assert "coinbase" in coinbase["vin"][0] and coinbase["blockhash"] == block["hash"]
    future = node.truth.txid(int(node.truth.block_txs(tip + 5)[0]))
    if node.chain.tx["arrival_time"][node.truth.tx_index(future)] > node.now():
        with pytest.raises(RPCReplyError) as err:
            rpc.getrawtransaction(future, 2)
        assert err.value.code == -5 and "No such mempool or blockchain transaction" in err.value.rpc_message


def test_mempool_sequence_counts_every_add_and_removal(node) -> None:
    tx = node.chain.tx
    confirmed = tx["confirm_height"] >= 0
    leave = node.chain.block_time[np.where(confirmed, tx["confirm_height"] - START_HEIGHT - 1, 0)]
    rpc = client(node)
    last = 0
    for b, after in ((28, -5.0), (28, 1.0), (28, 300.0), (31, 1.0)):
        t = at_block(node, b, after)
        reply = rpc.call("getrawmempool", False, True)
        expected = 1 + int((tx["arrival_time"] <= t).sum()) + int((confirmed & (leave <= t)).sum())
        assert reply["mempool_sequence"] == expected > last
        assert len(reply["txids"]) == len(sim_mempool(node, t))
        last = expected


def test_estimatesmartfee_is_the_bucket_estimator(node) -> None:
    rpc = client(node)
    at_block(node, 40, after=30.0)
    snapshot = int(np.searchsorted(node.chain.snapshot_time, node.now(), side="right")) - 1
    expected, _ = bucket_estimates(node.chain, np.array([snapshot]), np.array([6]))
    node.clock.set(float(node.chain.snapshot_time[snapshot]))
    reply = rpc.estimatesmartfee(6, "economical")
    assert reply["feerate"] * 1e5 == pytest.approx(max(float(expected[0]), 1.0), rel=1e-5)
    assert 2 <= reply["blocks"] <= 6
    early = make_node(start_block=0, transactions=2_000)  # one block seen: Core has no estimate yet
    assert early.rpc.call("estimatesmartfee", [6]) == {"errors": ["Insufficient data or no feerate found"],
                                                      "blocks": 0}
    for args, code in (((0,), -8), ((1009,), -8), (("6",), -3), ((6, "fast"), -8)):
        with pytest.raises(RPCReplyError) as err:
            rpc.call("estimatesmartfee", *args)
        assert err.value.code == code, args


def test_network_utxo_and_uptime(node) -> None:
    at_block(node, 30)
    rpc = client(node)
    net = rpc.getnetworkinfo()
    assert net["connections"] == net["connections_out"] == 10 and net["connections_in"] == 0
    assert net["version"] == 270000 and net["networkactive"] is True
    peers = rpc.call("getpeerinfo")
    assert len(peers) == 10
    for peer in peers:
        for key in ("id", "addr", "network", "inbound", "pingtime", "minping", "synced_headers", "synced_blocks",
                    "bytessent", "bytesrecv", "lastsend", "lastrecv", "connection_type", "bip152_hb_to",
                    "bip152_hb_from", "addr_processed", "addr_rate_limited", "last_block", "last_transaction",
                    "bytessent_per_msg", "bytesrecv_per_msg", "startingheight", "transport_protocol_type"):
            assert key in peer, key
        assert peer["synced_blocks"] == rpc.getblockcount() and peer["inbound"] is False
        assert sum(peer["bytesrecv_per_msg"].values()) == peer["bytesrecv"]
    assert {p["connection_type"] for p in peers} == {"outbound-full-relay", "block-relay-only"}
    utxo = rpc.gettxoutsetinfo()
    assert utxo["height"] == rpc.getblockcount() and utxo["bestblock"] == rpc.call("getbestblockhash")
    assert rpc.call("uptime") == int(node.now() - node.t_start) >= 0
    assert rpc.call("getchaintips") == [{"height": rpc.getblockcount(), "hash": utxo["bestblock"], "branchlen": 0,
                                         "status": "active"}]


# ---- scenarios


def test_reorg_shows_a_stale_branch_then_the_canonical_chain(fresh) -> None:
    node = fresh()
    reference = make_node()  # the same chain, never reorged
    rpc = client(node)
    t0 = at_block(node, 30, after=10.0)
    tip = rpc.getblockcount()
    canonical = [rpc.getblockhash(h) for h in range(tip - 1, tip + 1)]
    before = rpc.call("getrawmempool", False, True)
    node.inject_reorg(2)
    assert rpc.getblockcount() == tip
    stale = [rpc.getblockhash(h) for h in range(tip - 1, tip + 1)]
    assert not set(stale) & set(canonical)
    assert rpc.getblockhash(tip - 2) == node.blocks.hash(tip - 2)
    tips = rpc.call("getchaintips")
    assert tips[0] == {"height": tip, "hash": stale[-1], "branchlen": 0, "status": "active"}
    assert tips[1] == {"height": tip, "hash": canonical[-1], "branchlen": 2, "status": "valid-fork"}
    stale_block = rpc.getblock(stale[-1], 3)
    canonical_txs = node.truth.block_txs(tip)
    kept = [node.truth.tx_index(t["txid"]) for t in stale_block["tx"][1:]]
    assert set(kept) < set(canonical_txs.tolist()) and len(kept) == len(canonical_txs) - len(canonical_txs) // 2
    dropped = set(canonical_txs.tolist()) - set(kept)
    during = rpc.call("getrawmempool", False, True)
    assert {node.truth.txid(i) for i in dropped} <= set(during["txids"])
    assert during["mempool_sequence"] > before["mempool_sequence"]
    assert rpc.getblock(canonical[-1], 1)["confirmations"] == -1
    assert stale_block["previousblockhash"] == stale[0]

    t_next = float(node.chain.block_time[tip - START_HEIGHT])
    node.advance(t_next - node.now())  # the next canonical block arrives: back to the canonical chain
    assert rpc.getblockcount() == tip + 1
    assert [rpc.getblockhash(h) for h in range(tip - 1, tip + 1)] == canonical
    tips = rpc.call("getchaintips")
    assert tips[0]["status"] == "active" and tips[0]["height"] == tip + 1
    assert {"height": tip, "hash": stale[-1], "branchlen": 2, "status": "valid-fork"} in tips
    assert rpc.getblock(stale[-1], 1)["confirmations"] == -1
    after = rpc.call("getrawmempool", False, True)
    assert after["mempool_sequence"] > during["mempool_sequence"]
    # the same chain as a node that never reorged
    reference.clock.set(node.now())
    ref = reference.rpc
    assert set(after["txids"]) == set(ref.call("getrawmempool", [False]))
    for h in range(tip - 3, tip + 2):
        blockhash = rpc.getblockhash(h)
        assert blockhash == ref.call("getblockhash", [h])
        assert rpc.getblock(blockhash, 1)["tx"] == ref.call("getblock", [blockhash, 1])["tx"]
    assert t0 < node.now()
    with pytest.raises(ConfigError):
        node.inject_reorg(0)


def test_outage_refuses_connections_then_recovers_on_the_same_port(fresh) -> None:
    node = fresh()
    rpc = client(node)
    port = node.port
    assert rpc.getblockcount() == node.tip_height()
    node.inject_outage(120)
    with pytest.raises(RPCConnectionError, match="connection refused"):
        rpc.getblockcount()
    node.advance(60)
    with pytest.raises(RPCConnectionError):
        rpc.getnetworkinfo()
    node.advance(61)
    assert node.port == port and rpc.getblockcount() == node.tip_height()


def test_outage_ends_by_itself_on_a_running_clock(fresh) -> None:
    node = fresh(speed=1_000.0)
    node.inject_outage(5)
    assert not node.listening
    for _ in range(1_000):  # the clock thread re-listens once 5 simulated seconds (~5 ms) have passed
        if node.listening:
            break
        time.sleep(0.01)
    assert node.listening and client(node).getblockcount() >= node.start_height


def test_warmup_answers_loading_block_index(fresh) -> None:
    node = fresh(warmup_s=300.0)
    rpc = client(node)
    with pytest.raises(RPCReplyError) as err:
        rpc.getblockchaininfo()
    assert (err.value.code, err.value.rpc_message) == (-28, "Loading block index...")
    node.advance(301)
    assert rpc.getblockchaininfo()["blocks"] == node.tip_height()


def test_mempool_transactions_with_details_on_request(fresh) -> None:
    """mempool_tx_details=True (not Core 27): a mempool transaction's verbosity 2 carries its fee and prevouts,
    rendered against the tip when asked, and parses back to the simulator's row."""
    node = fresh(mempool_tx_details=True)
    at_block(node, 30, after=240.0)
    rpc = client(node)
    tip = rpc.getblockcount()
    txids = rpc.getrawmempool(False)
    for txid in txids[:25]:
        doc = rpc.getrawtransaction(txid, 2)
        assert "blockhash" not in doc and "fee" in doc and "prevout" in doc["vin"][0]
        rows_match(parse_transaction(doc, height=tip)[None], node.truth.tx_rows([txid]), tip)
    fee = rpc.call("getmempoolentry", txids[0])["fees"]["base"]
    assert round(fee * 1e8) == node.chain.tx["fee_sat"][node.truth.tx_index(txids[0])]


def test_full_mempool_evicts_lowest_fee_rates_and_raises_mempoolminfee(fresh) -> None:
    probe = make_node()
    peak = probe.timeline._peak_usage()
    limit_mb = round(0.6 * peak / 1e6, 3)
    node = fresh(maxmempool_mb=limit_mb)
    tl = node.timeline
    assert tl.evictions > 0 and len(tl.bump_time)
    rpc = client(node)
    k = len(tl.bump_time) // 2
    t = float(tl.bump_time[k])
    node.clock.set(t)
    info = rpc.getmempoolinfo()
    assert info["maxmempool"] == int(limit_mb * 1e6) and info["usage"] <= info["maxmempool"]
    assert info["mempoolminfee"] > info["minrelaytxfee"]
    assert info["mempoolminfee"] == pytest.approx(tl.rolling_min_fee(t) / 1e5, abs=1e-8)
    evicted = np.flatnonzero((tl.e_reason == 3) & (tl.e_leave == t))
    assert len(evicted)
    entries = rpc.getrawmempool(True)
    lowest_left = min(e["fees"]["base"] * 1e8 / e["vsize"] for e in entries.values())
    for e in evicted:
        assert node.txs.txid(int(e)) not in entries
        assert tl.e_rate[e] <= lowest_left + 1e-9  # the lowest fee rates went first
    node.clock.set(t + 6 * 3600)
    assert rpc.getmempoolinfo()["mempoolminfee"] < info["mempoolminfee"]  # decays (half-life 12 h)


def test_phantoms_are_replaced_by_the_canonical_transaction(fresh) -> None:
    node = fresh(replacement_share=1.0, mempool_tx_details=True)  # the phantom's fee in its verbosity-2 reply
    tl = node.timeline
    assert tl.n_phantoms > 0
    rpc = client(node)
    start = node.now()
    k = int(np.argmax(tl.e_enter[tl.n:] > start + 60))  # a phantom entering after the start
    i = int(tl.phantom_of[k])
    phantom = node.truth.phantom_txid(i)
    canonical = node.truth.txid(i)
    assert node.truth.phantom_of(phantom) == i and tl.phantom_fee[k] < node.chain.tx["fee_sat"][i]
    node.clock.set(float(tl.e_enter[tl.n + k]))
    pool = rpc.getrawmempool(False)
    assert phantom in pool and canonical not in pool
    doc = rpc.getrawtransaction(phantom, 2)
    real = node.txs.tx(i, 3, rpc.getblockcount())
    assert doc["fee"] < real["fee"] and [v["txid"] for v in doc["vin"]] == [v["txid"] for v in real["vin"]]
    assert parse_transaction(doc, height=rpc.getblockcount())[TX_SCHEMA.index("fee_rate")] > 0
    assert rpc.call("getmempoolentry", phantom)["bip125-replaceable"] is True
    seq = rpc.call("getrawmempool", False, True)["mempool_sequence"]
    arrival = float(node.chain.tx["arrival_time"][i])
    node.clock.set(arrival)
    after = rpc.call("getrawmempool", False, True)
    assert canonical in after["txids"] and phantom not in after["txids"]
    assert REASONS[int(tl.e_reason[tl.n + k])] == "replaced"
    arrived = int(((tl.acc_enter > float(tl.e_enter[tl.n + k])) & (tl.acc_enter <= arrival)).sum())
    left = int(((tl.acc_leave > float(tl.e_enter[tl.n + k])) & (tl.acc_leave <= arrival)).sum())
    assert after["mempool_sequence"] == seq + arrived + left
    with pytest.raises(RPCReplyError) as err:
        rpc.getrawtransaction(phantom, 1)
    assert err.value.code == -5
    height = int(node.chain.tx["confirm_height"][i])
    at_block(node, height - START_HEIGHT - 1)
    assert canonical in rpc.getblock(rpc.getblockhash(height), 1)["tx"]


def test_labels_file_covers_the_share_of_own_illicit_transactions(node, tmp_path) -> None:
    path = tmp_path / "labels" / "operator.csv"
    count = node.write_labels(path, 0.5, seed=7)
    with path.open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["kind", "id", "label"]
    own = set(node.truth.own.tolist())
    illicit = node.chain.tx["illicit"]
    own_illicit = [i for i in own if illicit[i]]
    txid_rows = [r for r in rows[1:] if r[0] == "txid"]
    bad = [node.truth.tx_index(r[1]) for r in txid_rows if r[2] == "illicit"]
    good = [node.truth.tx_index(r[1]) for r in txid_rows if r[2] == "licit"]
    assert len(bad) == round(0.5 * len(own_illicit)) > 0 and len(good) == len(bad) and count == len(txid_rows)
    assert all(i in own and illicit[i] for i in bad) and all(i in own and not illicit[i] for i in good)
    addresses = {r[1]: r[2] for r in rows[1:] if r[0] == "address"}
    assert addresses and all(a.startswith(("bc1", "1", "3")) for a in addresses)
    assert node.write_labels(path, 0.5, seed=7) == count and path.read_text() == path.read_text()
    with pytest.raises(ConfigError):
        node.write_labels(path, 1.5)
    assert set(node.truth.own.tolist()) == set(make_node(profile="merchant").own.tolist())
    assert set(node.truth.own.tolist()) != set(make_node(profile="exchange").own.tolist())


def test_cookie_auth_like_core(tmp_path) -> None:
    node = make_node(rpcuser=None, rpcpassword=None, cookie_dir=tmp_path / "datadir").start()
    try:
        cookie = node.cookie_path
        assert cookie == tmp_path / "datadir" / ".cookie" and cookie.stat().st_mode & 0o777 == 0o600
        assert cookie.read_text() == f"__cookie__:{node.auth[1]}"
        rpc = BitcoinRPC(RPCConfig(url=node.url, cookie_file=cookie, retries=0))
        assert rpc.getblockcount() == node.tip_height()
    finally:
        node.stop()
    assert not cookie.exists()


# ---- hostile requests


def test_hostile_requests_get_core_replies(node) -> None:
    status, body, resp = post(node, b'{"method": "getblockcount", "id": 1}', auth=False)
    assert (status, body) == (401, b"") and resp.getheader("WWW-Authenticate") == 'Basic realm="jsonrpc"'
    status, body, _ = post(node, b"", auth=False, length=50 << 20)
    assert (status, body) == (401, b"")  # a stranger learns nothing, not even the size limit
    status, _, _ = post(node, b"", length=2 << 20)
    assert status == 413
    status, body, _ = post(node, b"{not json")
    assert status == 500 and json.loads(body) == {"result": None, "error": {"code": -32700, "message": "Parse error"},
                                                  "id": None}
    status, body, _ = post(node, b'{"id": 5}')
    assert status == 400 and json.loads(body)["error"]["code"] == -32600
    status, body, _ = post(node, b'[{"method": "getblockcount", "id": 1}, {"method": "nope", "id": 2}]')
    replies = json.loads(body)
    assert status == 200 and replies[0]["result"] == node.tip_height() and replies[1]["error"]["code"] == -32601
    status, _, _ = post(node, b"[" + b",".join([b'{"method": "uptime"}'] * 1001) + b"]")
    assert status == 400
    status, body, _ = post(node, b"", method="GET")
    assert status == 405
    rpc = client(node)
    for method, args, code in (("getfancystuff", (), -32601), ("getblockhash", ("x",), -3),
                               ("getblockhash", (10**9,), -8), ("getblockhash", (100,), -8),
                               ("getblock", ("zz",), -8), ("getblock", ("00" * 32,), -5),
                               ("getblockcount", (1,), -1), ("getblockhash", (), -1),
                               ("getrawtransaction", ("ab" * 32, 2), -5), ("getmempoolentry", ("ab" * 32,), -5),
                               ("getblockheader", ("00" * 32, 1), -3)):
        with pytest.raises(RPCReplyError) as err:
            rpc.call(method, *args)
        assert err.value.code == code, (method, args)
    status, body, _ = post(node, json.dumps({"method": "getblockhash", "params": {"height": node.tip_height()},
                                             "id": 3}).encode())
    assert status == 200 and json.loads(body)["result"] == client(node).getblockhash(node.tip_height())


# ---- determinism, configuration, ground truth, CLI


def test_same_seed_same_chain_other_seed_other_ids() -> None:
    a, b, c = make_node(), make_node(), make_node(seed=4)
    assert a.txs.txids == b.txs.txids and a.txs.txids[0] != f"{0:064x}"
    assert a.blocks.hash(START_HEIGHT + 5) == b.blocks.hash(START_HEIGHT + 5) != c.blocks.hash(START_HEIGHT + 5)
    assert not set(a.txs.txids[:100]) & set(c.txs.txids[:100])
    v = a.view()
    assert a.blocks.block(a.blocks.active(v.tip, v), v, 3) == b.blocks.block(b.blocks.active(v.tip, v), v, 3)


@pytest.mark.parametrize(("settings", "setting"), [
    ({"profile": "bank"}, "simnode.profile"), ({"speed": -1.0}, "simnode.speed"),
    ({"transactions": 10}, "simnode.transactions"), ({"maxmempool_mb": 0}, "simnode.maxmempool_mb"),
    ({"rpcpassword": None}, "simnode.rpcpassword"), ({"rpcuser": None, "rpcpassword": None}, "simnode.cookie_dir"),
    ({"replacement_share": 2.0}, "simnode.replacement_share"), ({"start_block": 10_000}, "simnode.start_block"),
])
def test_config_errors_name_the_setting(settings: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_node(**settings)
    assert err.value.setting == setting


def test_fee_label_is_the_simulators(node) -> None:
    snaps, ks, ys = node.chain.fee_labels((1, 3))
    for s, k, y in list(zip(snaps, ks, ys, strict=True))[::97]:
        tip = START_HEIGHT + int(np.searchsorted(node.chain.block_time, node.chain.snapshot_time[s], side="right"))
        assert node.truth.fee_label(tip, int(k)) == pytest.approx(float(y), rel=1e-6)
    with pytest.raises(ConfigError):
        node.truth.fee_label(START_HEIGHT + node.chain.n_blocks, 1)


def test_cli_help_and_a_bad_option() -> None:
    from anya_fl.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["simnode", "--help"])
    assert res.exit_code == 0
    for option in ("--seed", "--profile", "--speed", "--port", "--rpcuser", "--datadir", "--warmup", "--maxmempool",
                   "--replacements", "--labels", "--reorg-every", "--outage-at"):
        assert option in res.output
    res = runner.invoke(app, ["simnode", "--speed", "-5"])
    assert isinstance(res.exception, ConfigError) and res.exception.setting == "speed"
    res = runner.invoke(app, ["simnode", "--labels-share", "3"])
    assert isinstance(res.exception, ConfigError) and res.exception.setting == "labels-share"
