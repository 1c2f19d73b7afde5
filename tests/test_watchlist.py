"""The double-spend watch list (core.bitcoin.network.watchlist) and the simulated node's support for it
(gettxspendingprevout, gettxout, SimNode.inject_double_spend), through the product's RPC client."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from anya_fl.simnode import SimNode
from anya_fl.simnode.render import SUBSIDY_SAT
from core.alerts import AlertEngine, Severity
from core.bitcoin.network.watchlist import DETECTOR, RETIRE_CHECKS, WatchList, check_watchlist, parse_watch_item
from core.bitcoin.rpc import BitcoinRPC, RPCConfig, RPCReplyError
from core.errors import ConfigError
from tests.simnode_fixtures import PASSWORD, T0, USER, client, started_nodes
from tests.simnode_fixtures import make_node as _make_node

TXOUT_KEYS = {"bestblock", "confirmations", "value", "scriptPubKey", "coinbase"}


def make_node(**kw) -> SimNode:
    return _make_node(T0, **kw)  # every node here starts with its clock at T0






@pytest.fixture
def fresh():
    """Started nodes of their own (stopped afterwards), their clocks at T0."""
    yield from started_nodes(make_node)


def pending(node: SimNode, rbf: bool | None = None, skip: int = 0) -> int:
    """Chain index of a transaction in the mempool now (no phantom) that confirms in a later block."""
    tl, tx = node.timeline, node.chain.tx
    nb = node.view().nb
    found = [int(i) for i in node.truth.mempool_at(node.now()) if tl.confirm_block[i] >= nb
             and tl.phantom_entry[i] < 0 and (rbf is None or bool(tx["rbf"][i]) == rbf)]
    return found[skip]


def at_block_of(node: SimNode, i: int) -> int:
    """Move the clock to the block that holds chain transaction ``i`` (canonically); returns its height."""
    b = int(node.timeline.confirm_block[i])
    node.clock.set(float(node.chain.block_time[b]))
    return node.blocks.first + b


def outpoints(rpc: BitcoinRPC, txid: str) -> list[dict]:
    return [{"txid": v["txid"], "vout": v["vout"]} for v in rpc.call("getrawtransaction", txid, True)["vin"]]


def only(findings: list, item: str):
    (f,) = [f for f in findings if f.key == f"watch:{item}"]
    assert f.detector == DETECTOR
    return f


# ---- the simulated node


def test_gettxspendingprevout_and_gettxout_shapes(fresh) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node)
    txid = node.truth.txid(i)
    ops = outpoints(rpc, txid)
    spends = rpc.call("gettxspendingprevout", ops)
    assert [set(s) for s in spends] == [{"txid", "vout", "spendingtxid"}] * len(ops)
    assert [(s["txid"], s["vout"]) for s in spends] == [(o["txid"], o["vout"]) for o in ops]
    assert {s["spendingtxid"] for s in spends} == {txid}
    assert rpc.call("gettxspendingprevout", [{"txid": txid, "vout": 0}]) == [{"txid": txid, "vout": 0}]  # unspent

    first = ops[0]
    assert rpc.call("gettxout", first["txid"], first["vout"]) is None  # spent in the mempool
    utxo = rpc.call("gettxout", first["txid"], first["vout"], False)  # still in the chain's UTXO set
    assert set(utxo) == TXOUT_KEYS and utxo["bestblock"] == rpc.call("getbestblockhash")
    assert utxo["confirmations"] >= 1 and utxo["coinbase"] is False and utxo["value"] > 0
    assert {"asm", "desc", "hex", "type"} <= set(utxo["scriptPubKey"])
    prevout = rpc.call("getrawtransaction", txid, 1)
    assert rpc.call("gettxout", first["txid"], (first["vout"] + 1) % 4) is None  # no such output
    own = rpc.call("gettxout", txid, 0)
    assert set(own) == TXOUT_KEYS and own["confirmations"] == 0 and own["value"] == prevout["vout"][0]["value"]
    assert rpc.call("gettxout", txid, 0, False) is None  # not in the chain yet
    assert rpc.call("gettxout", txid, len(prevout["vout"])) is None
    assert rpc.call("gettxout", "ab" * 32, 0) is None

    tip_block = rpc.call("getblock", rpc.call("getbestblockhash"), 1)
    reward = rpc.call("gettxout", tip_block["tx"][0], 0)
    assert reward["coinbase"] is True and reward["confirmations"] == 1
    assert rpc.call("gettxout", tip_block["tx"][0], 1) is None  # the witness commitment is unspendable

    height = at_block_of(node, i)
    assert rpc.call("gettxout", first["txid"], first["vout"], False) is None  # spent in the chain
    assert "spendingtxid" not in rpc.call("gettxspendingprevout", [first])[0]  # no longer a mempool spend
    assert rpc.call("gettxout", txid, 0, False)["confirmations"] == 1 == rpc.call("getblockcount") - height + 1

    for params, code in [([[]], -8), ([[{"txid": txid}]], -3), ([[{"txid": txid, "vout": -1}]], -8),
                         ([[{"txid": "zz", "vout": 0}]], -8), ([[{"txid": txid, "vout": 0, "x": 1}]], -3),
                         ([[{"txid": txid, "vout": "0"}]], -3), (["nope"], -3)]:
        with pytest.raises(RPCReplyError) as err:
            rpc.call("gettxspendingprevout", *params)
        assert err.value.code == code, params
    with pytest.raises(RPCReplyError) as err:
        rpc.call("gettxout", txid, -1)
    assert err.value.code == -1


def test_inject_double_spend_replaces_then_confirms_the_conflict(fresh) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node)
    target = node.truth.txid(i)
    before = rpc.call("getrawtransaction", target, True)
    seq = rpc.call("getrawmempool", False, True)["mempool_sequence"]
    conflict = node.inject_double_spend(target)  # now
    (event,) = node.truth.network_events(detail=True)
    height = int(node.chain.tx["confirm_height"][i])
    assert event == {"kind": "double_spend", "start": T0, "end": None, "txid": target, "conflict": conflict,
                     "height": height}
    after = rpc.call("getrawmempool", False, True)
    assert after["mempool_sequence"] == seq + 2  # the target removed, the conflict added
    assert conflict in after["txids"] and target not in after["txids"]
    with pytest.raises(RPCReplyError) as err:
        rpc.call("getmempoolentry", target)
    assert err.value.code == -5
    entry = rpc.call("getmempoolentry", conflict)
    fee = round(entry["fees"]["base"] * 1e8)
    assert fee > int(node.chain.tx["fee_sat"][i]) and entry["vsize"] == before["vsize"]
    doc = rpc.call("getrawtransaction", conflict, True)
    assert [(v["txid"], v["vout"]) for v in doc["vin"]] == [(v["txid"], v["vout"]) for v in before["vin"]]
    paid = {o["scriptPubKey"].get("address") for o in before["vout"]} - {None}
    assert paid and not paid & {o["scriptPubKey"].get("address") for o in doc["vout"]}  # pays someone else
    spends = rpc.call("gettxspendingprevout", outpoints(rpc, conflict))
    assert {s["spendingtxid"] for s in spends} == {conflict}
    assert rpc.call("gettxout", conflict, 0)["confirmations"] == 0 and rpc.call("gettxout", target, 0) is None

    with pytest.raises(ConfigError, match="already double-spent"):
        node.inject_double_spend(target)
    with pytest.raises(ConfigError) as bad:
        node.inject_double_spend(conflict)
    assert bad.value.setting == "txid"
    with pytest.raises(ConfigError) as bad:
        node.inject_double_spend(node.truth.txid(int(node.timeline.block_txs(0)[0])))  # long confirmed
    assert bad.value.setting == "at_s"

    assert at_block_of(node, i) == height
    block = rpc.call("getblock", rpc.call("getblockhash", height), 1)
    assert conflict in block["tx"] and target not in block["tx"]
    full = rpc.call("getblock", block["hash"], 2)
    fees = sum(round(t["fee"] * 1e8) for t in full["tx"][1:])
    assert round(full["tx"][0]["vout"][0]["value"] * 1e8) == SUBSIDY_SAT + fees  # the coinbase collects its fee
    confirmed = rpc.call("getrawtransaction", conflict, True)
    assert confirmed["blockhash"] == block["hash"] and confirmed["confirmations"] == 1
    with pytest.raises(RPCReplyError) as err:
        rpc.call("getrawtransaction", target, True)
    assert err.value.code == -5
    assert conflict not in rpc.call("getrawmempool")
    first = outpoints(rpc, conflict)[0]
    assert rpc.call("gettxout", first["txid"], first["vout"], False) is None


# ---- the watch list


def test_watch_pending_then_replaced_then_conflict_confirmed(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node, rbf=False)
    target = node.truth.txid(i)
    wl = WatchList(tmp_path / "watch.json")
    assert wl.add(target.upper()) == target
    f = only(check_watchlist(rpc, wl), target)
    assert not f.active and f.severity == Severity.INFO and "mempool" in f.title
    assert wl.outpoints(target) == [(o["txid"], o["vout"]) for o in outpoints(rpc, target)]

    node.inject_double_spend(target, T0 + 30)
    node.advance(29)
    assert not only(check_watchlist(rpc, wl), target).active
    node.advance(1)
    conflict = node.truth.network_events(detail=True)[0]["conflict"]
    f = only(check_watchlist(rpc, wl), target)
    assert f.active and f.severity == Severity.CRITICAL
    assert f"replaced by {conflict}" in f.title and f"replaced by {conflict}" in f.message

    engine = AlertEngine(None)
    (alert,) = engine.submit([f])
    assert alert.severity == Severity.CRITICAL and engine.submit(check_watchlist(rpc, wl)) == []  # dedup

    at_block_of(node, i)
    f = only(check_watchlist(rpc, wl), target)
    assert f.active and f.severity == Severity.CRITICAL and "a conflicting transaction was confirmed" in f.title


def test_watched_transaction_confirms(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node)
    txid = node.truth.txid(i)
    wl = WatchList(tmp_path / "watch.json")
    wl.add(txid)
    assert not only(check_watchlist(rpc, wl), txid).active
    height = at_block_of(node, i)
    f = only(check_watchlist(rpc, wl), txid)
    assert not f.active and f.severity == Severity.INFO and f"confirmed in block {height}" in f.title
    assert f.value == 1.0

    class NoTxindex:
        """The node's RPC as a node without -txindex answers: getrawtransaction finds mempool transactions only."""

        def __init__(self, rpc: BitcoinRPC) -> None:
            self.rpc, self.url = rpc, rpc.url

        def call(self, method: str, *params):
            reply = self.rpc.call(method, *params)
            if method == "getrawtransaction" and "blockhash" in reply:
                raise RPCReplyError(-5, "No such mempool transaction.", url=self.url, method=method)
            return reply

    node.advance(1)
    f = only(check_watchlist(NoTxindex(rpc), wl), txid)  # type: ignore[arg-type]
    assert not f.active and "confirmed" in f.title and f.value == rpc.call("getblockcount") - height + 1


def test_replaceable_payment_is_an_active_info(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    txid = node.truth.txid(pending(node, rbf=True))
    assert rpc.call("getmempoolentry", txid)["bip125-replaceable"] is True
    wl = WatchList(tmp_path / "watch.json")
    wl.add(txid)
    f = only(check_watchlist(rpc, wl), txid)
    assert f.active and f.severity == Severity.INFO and "replaceable (opt-in RBF)" in f.title


def test_phantom_replaced_by_the_canonical_version_is_a_fee_bump(fresh, tmp_path) -> None:
    """A phantom is a lower-fee version of a simulated transaction (the same outputs, a larger change): the
    canonical version replacing it is the payer's fee bump, not a double spend."""
    node = fresh(replacement_share=1.0)
    tl = node.timeline
    rpc = client(node)
    k = int(np.argmax((tl.e_enter[tl.n:] > node.now() + 60) & (tl.confirm_block[tl.phantom_of] >= 0)))
    i = int(tl.phantom_of[k])
    phantom, canonical = node.truth.phantom_txid(i), node.truth.txid(i)
    node.clock.set(float(tl.e_enter[tl.n + k]))
    wl = WatchList(tmp_path / "watch.json")
    wl.add(phantom)
    assert only(check_watchlist(rpc, wl), phantom).severity == Severity.INFO
    node.clock.set(float(node.chain.tx["arrival_time"][i]))
    f = only(check_watchlist(rpc, wl), phantom)
    assert f.active and f.severity == Severity.WARNING
    assert f.title.endswith(f"fee-bumped (RBF) by {canonical}: still pays the same outputs")
    height = at_block_of(node, i)
    f = only(check_watchlist(rpc, wl), phantom)
    assert not f.active and f"fee-bumped by {canonical[:16]}, confirmed in block {height}" in f.title


def test_inject_rbf_bump_keeps_every_output_but_the_change(fresh) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node)
    target = node.truth.txid(i)
    before = rpc.call("getrawtransaction", target, True)
    seq = rpc.call("getrawmempool", False, True)["mempool_sequence"]
    replacement = node.inject_rbf_bump(target)  # now
    (event,) = node.truth.network_events(detail=True)
    height = int(node.chain.tx["confirm_height"][i])
    assert event == {"kind": "rbf_replacement", "start": T0, "end": None, "txid": target,
                     "replacement": replacement, "height": height}
    after = rpc.call("getrawmempool", False, True)
    assert after["mempool_sequence"] == seq + 2 and replacement in after["txids"] and target not in after["txids"]
    doc = rpc.call("getrawtransaction", replacement, True)
    assert [(v["txid"], v["vout"]) for v in doc["vin"]] == [(v["txid"], v["vout"]) for v in before["vin"]]
    old = [(o["scriptPubKey"]["hex"], round(o["value"] * 1e8)) for o in before["vout"]]
    new = [(o["scriptPubKey"]["hex"], round(o["value"] * 1e8)) for o in doc["vout"]]
    change = max(range(len(old)), key=lambda n: (old[n][1], -n))  # the largest output (the first of equals)
    fee_old = int(node.chain.tx["fee_sat"][i])
    fee_new = round(rpc.call("getmempoolentry", replacement)["fees"]["base"] * 1e8)
    bump = fee_new - fee_old
    assert bump >= max(fee_old // 5, before["vsize"])  # BIP 125: at least incrementalrelayfee x vsize more
    assert [o for n, o in enumerate(new) if n != change] == [o for n, o in enumerate(old) if n != change]
    assert new[change] == (old[change][0], old[change][1] - bump)  # the same script, less by the bump
    with pytest.raises(ConfigError, match="already double-spent or fee-bumped"):
        node.inject_double_spend(target)
    with pytest.raises(ConfigError) as bad:
        node.inject_rbf_bump(replacement)
    assert bad.value.setting == "txid"
    assert at_block_of(node, i) == height
    assert replacement in rpc.call("getblock", rpc.call("getblockhash", height), 1)["tx"]
    assert rpc.call("getrawtransaction", replacement, True)["confirmations"] == 1


def test_watch_fee_bump_is_a_warning_never_critical(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    i = pending(node, rbf=True)
    target = node.truth.txid(i)
    path = tmp_path / "watch.json"
    wl = WatchList(path)
    wl.add(target)
    assert only(check_watchlist(rpc, wl), target).severity == Severity.INFO  # replaceable, pending
    paid = [(o["scriptPubKey"]["hex"], round(o["value"] * 1e8))
            for o in rpc.call("getrawtransaction", target, True)["vout"]]
    assert wl.vout(target) == paid and WatchList(path).vout(target) == paid  # remembered in the file
    replacement = node.inject_rbf_bump(target, T0 + 30)
    node.advance(30)
    f = only(check_watchlist(rpc, wl), target)
    assert f.active and f.severity == Severity.WARNING
    assert f"fee-bumped (RBF) by {replacement}: still pays the same outputs" in f.title
    assert "smaller" in f.message and "unless that output is your payment" in f.message
    assert WatchList(path).bumped_by(target) == replacement
    engine = AlertEngine(None)
    (alert,) = engine.submit([f])
    assert alert.severity == Severity.WARNING
    severities = []
    for _ in range(5):  # polls until its block: still a fee bump
        node.advance(60)
        severities.append(only(check_watchlist(rpc, wl), target).severity)
    height = at_block_of(node, i)
    assert set(severities) <= {Severity.WARNING, Severity.INFO} and Severity.CRITICAL not in severities
    f = only(check_watchlist(rpc, WatchList(path)), target)  # a restarted watcher still knows the bump
    assert not f.active and f.severity == Severity.INFO and f"confirmed in block {height}" in f.title


def test_double_spend_says_what_it_no_longer_pays(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    target = node.truth.txid(pending(node))
    wl = WatchList(tmp_path / "watch.json")
    wl.add(target)
    check_watchlist(rpc, wl)
    conflict = node.inject_double_spend(target)
    f = only(check_watchlist(rpc, wl), target)
    assert f.severity == Severity.CRITICAL and f.title.endswith(f"replaced by {conflict}")
    assert f"replaced by {conflict}: it no longer pays output 0 (" in f.message
    assert wl.bumped_by(target) is None


@pytest.mark.parametrize(("replacement", "bump"), [
    ([("aa", 100), ("bb", 50)], True),  # the same outputs (a fee bump by an added input)
    ([("aa", 100), ("bb", 40)], True),  # the change shrank
    ([("bb", 40), ("aa", 100), ("cc", 7)], True),  # reordered, an output added
    ([("aa", 90), ("bb", 40)], False),  # two outputs shrank
    ([("aa", 100)], False),  # an output dropped
    ([("aa", 100), ("dd", 50)], False),  # paid to another script
    ([("aa", 100), ("bb", 60)], False),  # the same script, more: not the payer's change paying the fee
])
def test_fee_bump_rule(replacement, bump) -> None:
    from core.bitcoin.network.watchlist import _same_outputs

    assert _same_outputs([("aa", 100), ("bb", 50)], replacement)[0] is bump


def test_old_watch_list_file_without_outputs(fresh, tmp_path) -> None:
    """A file of the previous version (outpoints and an output count, no outputs) loads; its outputs are added when
    the transaction is seen again; replaced before that, a fee bump cannot be told and stays CRITICAL."""
    node = fresh()
    rpc = client(node)
    seen, unseen = (node.truth.txid(pending(node, skip=k)) for k in (0, 1))
    path = tmp_path / "watch.json"

    def old_item(txid: str) -> dict:
        ops = [[o["txid"], o["vout"]] for o in outpoints(rpc, txid)]
        return {"item": txid, "kind": "txid", "outpoints": ops,
                "outputs": len(rpc.call("getrawtransaction", txid, True)["vout"])}

    path.write_text(json.dumps({"format": "anya-fl.watchlist/1", "items": [old_item(seen), old_item(unseen)],
                                "retired": {}}))
    wl = WatchList(path)
    assert wl.items() == [seen, unseen] and wl.vout(seen) is None and wl.outpoints(seen) is not None
    replacement = node.inject_rbf_bump(unseen)  # before the watch list sees it again
    findings = check_watchlist(rpc, wl)
    assert not only(findings, seen).active
    assert WatchList(path).vout(seen) == [(o["scriptPubKey"]["hex"], round(o["value"] * 1e8))
                                          for o in rpc.call("getrawtransaction", seen, True)["vout"]]
    f = only(findings, unseen)
    assert f.severity == Severity.CRITICAL and f"replaced by {replacement}" in f.title
    assert "never recorded" in f.message

    doc = json.loads(path.read_text())
    doc["items"][0]["vout"] = [["zz", 1]]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"items\[0\]\.vout") as err:
        WatchList(path)
    assert err.value.setting == "watch"


def test_fee_bump_that_cannot_be_fetched_stays_critical(fresh, tmp_path) -> None:
    node = fresh()
    target = node.truth.txid(pending(node))
    wl = WatchList(tmp_path / "watch.json")
    wl.add(target)
    check_watchlist(client(node), wl)
    replacement = node.inject_rbf_bump(target)

    class Hides:
        """The node's RPC, not finding the replacement (as a node that dropped it again would answer)."""

        def __init__(self, rpc: BitcoinRPC) -> None:
            self.rpc, self.url = rpc, rpc.url

        def call(self, method: str, *params):
            if method == "getrawtransaction" and params[0] == replacement:
                raise RPCReplyError(-5, "No such mempool transaction.", url=self.url, method=method)
            return self.rpc.call(method, *params)

    f = only(check_watchlist(Hides(client(node)), wl), target)  # type: ignore[arg-type]
    assert f.severity == Severity.CRITICAL and f"replaced by {replacement}" in f.title
    assert "could not be fetched" in f.message
    assert only(check_watchlist(client(node), wl), target).severity == Severity.WARNING  # found: a fee bump


def test_evicted_payment_left_the_mempool(fresh, tmp_path) -> None:
    peak = make_node().timeline._peak_usage()
    node = fresh(maxmempool_mb=round(0.6 * peak / 1e6, 3))
    tl = node.timeline
    rpc = client(node)
    n = tl.n
    leave = tl.e_leave[:n]
    block_at = np.where(tl.confirm_block >= 0, node.chain.block_time[np.maximum(tl.confirm_block, 0)], np.inf)
    evicted = np.flatnonzero((tl.e_reason[:n] == 3) & tl.e_accepted[:n] & (tl.e_enter[:n] < leave)
                             & (leave < block_at) & (tl.phantom_entry < 0))
    e = int(evicted[0])
    txid = node.truth.txid(e)
    node.clock.set(float(tl.e_enter[e]))  # the evictions come early in this chain: going back is allowed
    wl = WatchList(tmp_path / "watch.json")
    wl.add(txid)
    assert not only(check_watchlist(rpc, wl), txid).active
    node.clock.set(float(leave[e]))
    f = only(check_watchlist(rpc, wl), txid)
    assert f.active and f.severity == Severity.WARNING and "left the mempool" in f.title


@pytest.mark.parametrize("item", ["hello", "00" * 31, "ab" * 32 + "0", "g" * 64, "",
                                  "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb",  # genesis address, checksum broken
                                  "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5",  # BIP 173: bad checksum
                                  "bc1qW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",  # mixed case
                                  "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", 42, None])
def test_malformed_items_are_refused_naming_watch(tmp_path, item) -> None:
    wl = WatchList(tmp_path / "watch.json")
    with pytest.raises(ConfigError) as err:
        wl.add(item)
    assert err.value.setting == "watch" and str(err.value).startswith("watch: ")
    assert wl.items() == [] and not (tmp_path / "watch.json").exists()


def test_valid_addresses_are_accepted(fresh) -> None:
    node = fresh()
    simulated = {o["scriptPubKey"]["type"]: o["scriptPubKey"]["address"] for i in range(300)
                 for o in node.txs.tx(i, 1, 0)["vout"] if "address" in o["scriptPubKey"]}
    assert len(simulated) >= 4  # p2pkh, p2sh, p2wpkh, p2wsh, p2tr
    known = ["1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
             "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
             "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7"]
    for address in [*simulated.values(), *known]:
        assert parse_watch_item(address)[0] == "address", address
    assert parse_watch_item(known[1]) == ("address", known[1].lower())


def test_file_survives_a_reload_and_removal_retires(fresh, tmp_path) -> None:
    node = fresh()
    rpc = client(node)
    path = tmp_path / "watch.json"
    txid = node.truth.txid(pending(node))
    address = node.txs.addresses(0)[0]
    wl = WatchList(path)
    wl.add(txid)
    wl.add(address)
    wl.add(txid)  # again: nothing changes
    findings = check_watchlist(rpc, wl)
    assert [f.key for f in findings] == [f"watch:{txid}", f"watch:{address}"]
    f = only(findings, address)
    assert not f.active and "collector" in f.message
    again = WatchList(path)
    assert again.items() == [txid, address] and again.outpoints(txid) == wl.outpoints(txid) is not None
    assert again.outputs(txid) == len(rpc.call("getrawtransaction", txid, True)["vout"])
    assert json.loads(path.read_text())["format"] == "anya-fl.watchlist/1"

    assert again.remove(txid) and not again.remove(txid)
    reloaded = WatchList(path)
    assert reloaded.items() == [address] and reloaded.retired() == [txid]
    for _ in range(RETIRE_CHECKS):
        f = only(check_watchlist(rpc, reloaded), txid)
        assert not f.active and "no longer watched" in f.title
    assert [f.key for f in check_watchlist(rpc, reloaded)] == [f"watch:{address}"]

    path.write_text("{not json")
    with pytest.raises(ConfigError) as err:
        WatchList(path)
    assert err.value.setting == "watch"


def test_unreachable_node_gives_warnings_not_exceptions(fresh, tmp_path) -> None:
    node = fresh()
    txids = [node.truth.txid(pending(node, skip=k)) for k in range(3)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    dead = BitcoinRPC(RPCConfig(url=f"http://127.0.0.1:{port}", user=USER, password=PASSWORD, timeout_s=2.0,
                                retries=0))
    wl = WatchList(tmp_path / "watch.json")
    for t in txids:
        wl.add(t)
    wl.add("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
    findings = check_watchlist(dead, wl)
    assert len(findings) == 4
    for t in txids:
        f = only(findings, t)
        assert f.active and f.severity == Severity.WARNING and "getrawtransaction" in f.title + f.message

    class OneFails:
        """The node's RPC, with getrawtransaction of one txid failing."""

        def __init__(self, rpc: BitcoinRPC) -> None:
            self.rpc, self.url = rpc, rpc.url

        def call(self, method: str, *params):
            if method == "getrawtransaction" and params[0] == txids[1]:
                raise RPCReplyError(-1, "boom", url=self.url, method=method)
            return self.rpc.call(method, *params)

    findings = check_watchlist(OneFails(client(node)), wl)  # type: ignore[arg-type]
    bad = only(findings, txids[1])
    assert bad.severity == Severity.WARNING and "getrawtransaction" in bad.title and "boom" in bad.message
    assert not only(findings, txids[0]).active and not only(findings, txids[2]).active
