"""P2P-side scenarios of the simulated node (anya_fl.simnode.network_scenarios) through the product's RPC client."""

from __future__ import annotations

import ipaddress
import math

import numpy as np
import pytest

from anya_fl.simnode import GENESIS_EPOCH, SimNode, relay
from anya_fl.simnode.network_scenarios import MAX_INBOUND
from core.bitcoin.rpc import RPCReplyError
from core.data.chain import START_HEIGHT
from core.errors import ConfigError
from tests.simnode_fixtures import T0, client, started_nodes
from tests.simnode_fixtures import make_node as _make_node


def make_node(**kw) -> SimNode:
    return _make_node(T0, **kw)  # every node here starts with its clock at T0

@pytest.fixture
def fresh():
    """Started nodes of their own (stopped afterwards), their clocks at T0."""
    yield from started_nodes(make_node)


def outbound(peers: list[dict]) -> list[dict]:
    return [p for p in peers if not p["inbound"]]


def test_no_scenario_keeps_ten_outbound_peers(fresh) -> None:
    node = fresh()
    rpc = client(node)
    peers = rpc.call("getpeerinfo")
    assert [p["id"] for p in peers] == list(range(10)) and not any(p["inbound"] for p in peers)
    assert all("addrv2" not in p["bytesrecv_per_msg"] and p["addr_rate_limited"] == 0 for p in peers)
    assert rpc.call("getconnectioncount") == 10 and node.truth.network_events() == []


def test_eclipse_replaces_every_outbound_peer_with_one_slash16(fresh) -> None:
    node = fresh()
    rpc = client(node)
    before = rpc.call("getpeerinfo")
    at = T0 + 60
    node.inject_eclipse(at)
    node.advance(59)
    assert [(p["id"], p["addr"]) for p in rpc.call("getpeerinfo")] == [(p["id"], p["addr"]) for p in before]
    node.advance(1)
    after = rpc.call("getpeerinfo")
    assert len(after) == 10 and not {p["id"] for p in after} & {p["id"] for p in before}
    assert [p["id"] for p in after] == list(range(10, 20))
    nets = {ipaddress.ip_network(p["addr"].rsplit(":", 1)[0] + "/16", strict=False) for p in after}
    assert nets == {ipaddress.ip_network("198.51.0.0/16")}
    assert len({p["addr"] for p in after}) == 10
    assert all(p["network"] == "ipv4" and p["conntime"] == GENESIS_EPOCH + int(at) for p in after)
    assert len({p["mapped_as"] for p in after}) == 1
    assert sorted(p["connection_type"] for p in after) == sorted(p["connection_type"] for p in before)
    net = rpc.getnetworkinfo()
    assert net["connections"] == net["connections_out"] == 10 and net["connections_in"] == 0
    node.advance(3600)  # open-ended
    assert [p["id"] for p in rpc.call("getpeerinfo")] == list(range(10, 20))
    twin = make_node()
    twin.inject_eclipse(at)
    twin.clock.set(node.now())
    assert twin.rpc.call("getpeerinfo") == rpc.call("getpeerinfo")  # determined by the seed
    assert node.truth.network_events() == [{"kind": "eclipse", "start": at, "end": None}]
    assert node.truth.network_events(detail=True)[0]["peers"] == list(range(10, 20))


def test_inbound_flood_fills_the_inbound_slots(fresh) -> None:
    node = fresh()
    rpc = client(node)
    at, per_min, duration = T0 + 30, 40.0, 1800.0
    node.inject_inbound_flood(at, per_min=per_min, duration_s=duration)
    assert rpc.getnetworkinfo()["connections_in"] == 0
    node.advance(30 + 60)
    peers = rpc.call("getpeerinfo")
    inbound = [p for p in peers if p["inbound"]]
    assert len(inbound) == int(60 * per_min / 60) == 40 and len(outbound(peers)) == 10
    node.advance(540)  # 10 simulated minutes into the flood
    expected = min(int(10 * per_min), 125 - 10)
    assert (expected, MAX_INBOUND) == (115, 115)
    peers = rpc.call("getpeerinfo")
    inbound = [p for p in peers if p["inbound"]]
    assert len(inbound) == expected
    net = rpc.getnetworkinfo()
    assert (net["connections_in"], net["connections_out"], net["connections"]) == (expected, 10, expected + 10)
    assert rpc.call("getconnectioncount") == expected + 10
    v4, v6 = ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")
    for p in inbound:
        assert p["connection_type"] == "inbound" and p["inbound"] is True
        host = ipaddress.ip_address(p["addr"].rsplit(":", 1)[0].strip("[]"))
        assert host in (v4 if p["network"] == "ipv4" else v6)
        assert GENESIS_EPOCH + at < p["conntime"] <= GENESIS_EPOCH + at + 600
        assert sum(p["bytesrecv_per_msg"].values()) == p["bytesrecv"]
    assert sorted(p["id"] for p in inbound) == list(range(10, 10 + expected))
    node.advance(duration)  # after the window they stay
    assert rpc.getnetworkinfo()["connections_in"] == expected
    assert node.truth.network_events() == [{"kind": "inbound_flood", "start": at, "end": at + duration}]


def test_slow_flood_stops_at_its_window(fresh) -> None:
    node = fresh()
    node.inject_inbound_flood(T0, per_min=3.0, duration_s=600.0)
    rpc = client(node)
    node.advance(300)
    assert rpc.getnetworkinfo()["connections_in"] == 15
    node.advance(3000)
    assert rpc.getnetworkinfo()["connections_in"] == 30


def addr_model(per_s: float, elapsed: float) -> tuple[int, int]:
    """(processed, rate limited) of Core's 0.1/s token bucket of 1,000 against ``per_s`` addresses a second."""
    arrivals = math.floor(per_s * elapsed)
    processed = min(arrivals, math.floor(1000 + 0.1 * elapsed))
    return processed, arrivals - processed


def test_addr_spam_rate_limits_one_full_relay_peer(fresh) -> None:
    node = fresh()
    rpc = client(node)
    at, per_s = T0 + 10, 50.0
    base = {p["id"]: p for p in rpc.call("getpeerinfo")}
    node.inject_addr_spam(at, per_s=per_s, duration_s=1800)
    target = node.truth.network_events(detail=True)[0]["peer"]
    assert base[target]["connection_type"] == "outbound-full-relay"

    def counters() -> tuple[int, int, int]:
        p = next(p for p in rpc.call("getpeerinfo") if p["id"] == target)
        assert sum(p["bytesrecv_per_msg"].values()) == p["bytesrecv"]
        return p["addr_processed"], p["addr_rate_limited"], p["bytesrecv_per_msg"].get("addrv2", 0)

    def normal(t: float) -> int:
        return int(max(t - node.peers[target].conntime, 1.0) / 60)  # the peer's own addr traffic

    node.advance(10 + 10)  # 10 s in: 500 addresses, all within the bucket
    assert counters() == (normal(node.now()) + 500, 0, 30 * 500)
    node.advance(90)  # 100 s in: the bucket is used up
    p1, r1, b1 = counters()
    node.advance(60)
    p2, r2, b2 = counters()
    m1, m2 = addr_model(per_s, 100), addr_model(per_s, 160)
    assert r1 == m1[1] == 3990 and r2 - r1 == m2[1] - m1[1] == round((per_s - 0.1) * 60) == 2994
    assert p2 - p1 == (m2[0] - m1[0]) + normal(node.now()) - normal(node.now() - 60)
    assert b2 - b1 == 30 * 50 * 60
    others = [p for p in rpc.call("getpeerinfo") if p["id"] != target]
    assert all(p["addr_rate_limited"] == 0 and "addrv2" not in p["bytesrecv_per_msg"] for p in others)
    node.advance(1800)  # after the window the counters stop growing
    end = counters()
    node.advance(600)
    assert counters()[1:] == end[1:] == (addr_model(per_s, 1800)[1], 30 * 50 * 1800)


def test_partition_freezes_the_chain_then_catches_up(fresh) -> None:
    node = fresh()
    reference = make_node()  # the same chain, never partitioned
    rpc = client(node)
    at, duration = T0 + 10, 5400.0
    node.inject_partition(at, duration_s=duration)
    node.advance(10)
    frozen = rpc.getblockcount()
    frozen_hash = rpc.call("getbestblockhash")
    assert frozen == node.true_tip(at)
    seen_ahead = 0
    for _ in range(int(duration // 300) - 1):
        node.advance(300)
        true_tip = node.true_tip(node.now())
        assert rpc.getblockcount() == frozen and rpc.call("getbestblockhash") == frozen_hash
        info = rpc.getblockchaininfo()
        assert info["blocks"] == info["headers"] == frozen and info["bestblockhash"] == frozen_hash
        assert rpc.call("getchaintips") == [{"height": frozen, "hash": frozen_hash, "branchlen": 0,
                                             "status": "active"}]
        assert rpc.getblockhash(frozen) == frozen_hash
        assert "nextblockhash" not in rpc.call("getblockheader", frozen_hash)
        peers = rpc.call("getpeerinfo")
        assert {(p["synced_headers"], p["synced_blocks"]) for p in peers} == {(true_tip, true_tip)}
        if true_tip > frozen:
            seen_ahead += 1
            with pytest.raises(RPCReplyError) as err:
                rpc.getblockhash(frozen + 1)
            assert (err.value.code, err.value.rpc_message) == (-8, "Block height out of range")
            unseen = node.blocks.hash(frozen + 1)
            for method in ("getblockheader", "getblock"):
                with pytest.raises(RPCReplyError) as err:
                    rpc.call(method, unseen)
                assert (err.value.code, err.value.rpc_message) == (-5, "Block not found")
    assert seen_ahead and node.true_tip(node.now()) > frozen + 2
    node.advance(at + duration - node.now())  # the window is over: the node has the true chain again
    reference.clock.set(node.now())
    tip = rpc.getblockcount()
    assert tip == node.true_tip(node.now()) == reference.rpc.call("getblockcount") > frozen
    assert [rpc.getblockhash(h) for h in range(frozen, tip + 1)] == \
        [reference.rpc.call("getblockhash", [h]) for h in range(frozen, tip + 1)]
    assert rpc.getblockchaininfo() == reference.rpc.call("getblockchaininfo")
    assert rpc.call("getblockheader", frozen_hash)["nextblockhash"] == rpc.getblockhash(frozen + 1)
    assert node.truth.network_events() == [{"kind": "partition", "start": at, "end": at + duration}]
    assert node.truth.network_events(detail=True)[0]["height"] == frozen


def test_slow_propagation_announces_blocks_at_once_and_connects_them_late(fresh) -> None:
    """During the window headers (getblockchaininfo.headers, peers' synced_headers) follow the true tip while the
    node's chain lags: each block joins it exactly delay_s after it is mined (the truth says when, the RPC agrees);
    a block mined in the window's last delay_s joins at its end, when the node catches up."""
    node = fresh()
    reference = make_node()  # the same chain, blocks arriving as they are mined
    rpc = client(node)
    at, delay, end = T0 + 10, 120.0, 12_600.0  # the fixture's blocks: 9644.5, 9685.6, ..., 12565.7 (34 s before end)
    node.inject_slow_propagation(at, delay_s=delay, duration_s=end - at)
    (event,) = node.truth.network_events(detail=True)
    blocks = event["blocks"]
    assert {k: v for k, v in event.items() if k != "blocks"} == {"kind": "slow_propagation", "start": at, "end": end,
                                                                 "delay_s": delay}
    times = node.chain.block_time
    mined = [float(t) for t in times if at < t < end]
    first = node.true_tip(at) + 1
    assert [(b["height"], b["mined"]) for b in blocks] == list(zip(range(first, first + len(mined)), mined,
                                                                   strict=True))
    assert len(blocks) >= 5 and blocks[-1]["mined"] > end - delay  # the last one is caught up at the end
    assert [b["arrived"] for b in blocks] == [min(b["mined"] + delay, end) for b in blocks]
    assert node.truth.network_events() == [{"kind": "slow_propagation", "start": at, "end": end}]

    def arrived_by(t: float) -> int:
        return sum(b["arrived"] <= t for b in blocks)

    leads = []
    for t in np.arange(T0, end + 120, 15.0):
        node.clock.set(float(t))
        true_tip = node.true_tip(float(t))
        count, info = rpc.getblockcount(), rpc.getblockchaininfo()
        peers = rpc.call("getpeerinfo")
        assert count == info["blocks"] == node.true_tip(at) + arrived_by(float(t))  # the truth's arrivals
        assert info["headers"] == true_tip  # the headers arrive at once
        assert {(p["synced_headers"], p["synced_blocks"]) for p in peers} == {(true_tip, true_tip)}
        in_flight = sum(max(at, t - delay) < m <= t for m in mined) if at <= t < end else 0
        assert info["headers"] - count == in_flight  # the blocks mined in the last delay_s of the window
        assert rpc.call("getchaintips") == [{"height": count, "hash": rpc.call("getbestblockhash"), "branchlen": 0,
                                             "status": "active"}]
        leads.append(in_flight)
        if in_flight:
            with pytest.raises(RPCReplyError) as err:
                rpc.getblockhash(count + 1)
            assert err.value.code == -8
    assert max(leads) == 2 and leads[-1] == 0  # 9644.5 and 9685.6 in flight together; none after the window
    for b in blocks:  # each block joins the chain at its arrival, not a millisecond before
        node.clock.set(b["arrived"] - 1e-3)
        assert rpc.getblockcount() == b["height"] - 1
        node.clock.set(b["arrived"] + 1e-6)
        reference.clock.set(b["arrived"] + 1e-6)
        assert rpc.getblockcount() == b["height"]
        assert rpc.call("getbestblockhash") == reference.rpc.call("getblockhash", [b["height"]])
        assert b["arrived"] - b["mined"] == (delay if b["mined"] + delay < end else end - b["mined"])
    node.clock.set(end)  # caught up: the same answers as a node that never lagged
    reference.clock.set(end)
    assert rpc.getblockchaininfo() == reference.rpc.call("getblockchaininfo", [])
    assert rpc.getblockcount() == node.true_tip(end) == blocks[-1]["height"]


def test_degraded_relay_delays_each_block_by_the_peer_mix_its_rpc_shows(fresh) -> None:
    """As the link saturates, getpeerinfo's pings grow and its high-bandwidth peers go; each block joins the chain
    after the BIP152 round trips over the peer mix getpeerinfo showed when it was mined (plus the truth's hidden lag
    and missing share), never before its parent, and at the window's end at the latest."""
    node = fresh()
    rpc = client(node)
    at, end = T0 + 10, 12_600.0
    node.inject_degraded_relay(at, duration_s=end - at)
    (event,) = node.truth.network_events(detail=True)
    blocks = event["blocks"]
    assert event["kind"] == "degraded_relay" and len(blocks) >= 5
    base = {p["id"]: p["pingtime"] for p in outbound(rpc.call("getpeerinfo"))}
    previous = at
    for b in blocks:
        node.clock.set(b["mined"])
        s = relay.saturation(at, end, b["mined"])
        assert b["saturation"] == pytest.approx(s) and 0 <= b["missing"] <= relay.MISSING_MAX and b["lag"] > 0
        peers = outbound(rpc.call("getpeerinfo"))
        pings = [p["pingtime"] for p in peers]
        hb = sum(p["bip152_hb_to"] for p in peers)
        assert hb == relay.hb_peers(s) and pings == pytest.approx([base[p["id"]] + relay.BUFFERBLOAT_S * s
                                                                   for p in peers], abs=1e-5)
        delay = relay.arrival_delay(pings, hb, b["missing"], s, b["lag"])
        assert b["arrived"] == pytest.approx(min(max(b["mined"] + delay, previous), end), abs=1e-4)
        previous = b["arrived"]
        node.clock.set(b["arrived"] - 1e-3)  # the chain holds it back until then, its header already known
        assert rpc.getblockcount() < b["height"] <= rpc.getblockchaininfo()["headers"]
        node.clock.set(b["arrived"] + 1e-6)
        assert rpc.getblockcount() >= b["height"]
    assert blocks[-1]["arrived"] - blocks[-1]["mined"] > blocks[0]["arrived"] - blocks[0]["mined"]
    node.clock.set(end)  # after the window: the original peer mix
    assert {p["id"]: p["pingtime"] for p in outbound(rpc.call("getpeerinfo"))} == base


def test_stale_fork_is_a_valid_fork_tip(fresh) -> None:
    node = fresh()
    rpc = client(node)
    at = T0 + 5
    node.inject_stale_fork(at, branchlen=2)
    assert len(rpc.call("getchaintips")) == 1
    node.advance(5)
    tip = rpc.getblockcount()
    tips = rpc.call("getchaintips")
    fork_hash = node.truth.network_events(detail=True)[0]["hash"]
    assert tips == [{"height": tip, "hash": rpc.call("getbestblockhash"), "branchlen": 0, "status": "active"},
                    {"height": tip, "hash": fork_hash, "branchlen": 2, "status": "valid-fork"}]
    assert fork_hash != rpc.getblockhash(tip)
    header = rpc.call("getblockheader", fork_hash)
    assert header["confirmations"] == -1 and header["height"] == tip
    parent = rpc.call("getblockheader", header["previousblockhash"])
    assert parent["confirmations"] == -1 and parent["previousblockhash"] == rpc.getblockhash(tip - 2)
    node.advance(7200)
    later = rpc.call("getchaintips")
    assert later[0]["status"] == "active" and later[0]["height"] > tip
    assert {"height": tip, "hash": fork_hash, "branchlen": 2, "status": "valid-fork"} in later
    twin = make_node()
    twin.inject_stale_fork(at, branchlen=2)
    assert twin.truth.network_events(detail=True)[0]["hash"] == fork_hash
    assert make_node(seed=4).blocks.hash(tip, 1_000_000) != fork_hash


def test_network_events_list_every_scenario(fresh) -> None:
    node = fresh()
    node.inject_partition(T0 + 400, duration_s=600)
    node.inject_eclipse(T0 + 100)
    node.inject_addr_spam(T0 + 10, per_s=5.0, duration_s=60)
    node.inject_inbound_flood(T0 + 200)
    node.inject_stale_fork(T0 + 200, branchlen=1)
    assert node.truth.network_events() == [
        {"kind": "addr_spam", "start": T0 + 10, "end": T0 + 70},
        {"kind": "eclipse", "start": T0 + 100, "end": None},
        {"kind": "inbound_flood", "start": T0 + 200, "end": T0 + 2000},
        {"kind": "stale_fork", "start": T0 + 200, "end": None},
        {"kind": "partition", "start": T0 + 400, "end": T0 + 1000},
    ]
    node.advance(1000)
    rpc = client(node)
    peers = rpc.call("getpeerinfo")
    assert len(outbound(peers)) == 10 and all(p["addr"].startswith("198.51.") for p in outbound(peers))
    assert len(peers) == 10 + MAX_INBOUND


@pytest.mark.parametrize(("method", "kwargs", "setting"), [
    ("inject_eclipse", {"at_s": math.nan}, "at_s"),
    ("inject_eclipse", {"at_s": 0.0}, "at_s"),
    ("inject_eclipse", {"at_s": True}, "at_s"),
    ("inject_inbound_flood", {"at_s": T0, "per_min": 0}, "per_min"),
    ("inject_inbound_flood", {"at_s": T0, "duration_s": math.inf}, "duration_s"),
    ("inject_addr_spam", {"at_s": T0, "per_s": -1.0}, "per_s"),
    ("inject_addr_spam", {"at_s": "soon"}, "at_s"),
    ("inject_partition", {"at_s": T0, "duration_s": 0}, "duration_s"),
    ("inject_stale_fork", {"at_s": T0, "branchlen": 0}, "branchlen"),
    ("inject_stale_fork", {"at_s": T0, "branchlen": 1.0}, "branchlen"),
    ("inject_stale_fork", {"at_s": T0, "branchlen": 10_000}, "branchlen"),
    ("inject_mempool_flood", {"at_s": T0, "vbytes_per_s": 0}, "vbytes_per_s"),
    ("inject_mempool_flood", {"at_s": T0, "vbytes_per_s": "fast"}, "vbytes_per_s"),
    ("inject_mempool_flood", {"at_s": T0, "fee_sat_vb": 0.5}, "fee_sat_vb"),
    ("inject_mempool_flood", {"at_s": T0, "fee_sat_vb": True}, "fee_sat_vb"),
    ("inject_mempool_flood", {"at_s": T0, "fee_sat_vb": math.nan}, "fee_sat_vb"),
    ("inject_mempool_flood", {"at_s": T0, "duration_s": -1}, "duration_s"),
    ("inject_mempool_flood", {"at_s": -5.0}, "at_s"),
    ("inject_slow_propagation", {"at_s": T0, "delay_s": 0}, "delay_s"),
    ("inject_slow_propagation", {"at_s": T0, "delay_s": math.inf}, "delay_s"),
    ("inject_slow_propagation", {"at_s": T0, "delay_s": True}, "delay_s"),
    ("inject_slow_propagation", {"at_s": T0, "duration_s": -60.0}, "duration_s"),
    ("inject_slow_propagation", {"at_s": math.nan}, "at_s"),
    ("inject_degraded_relay", {"at_s": T0, "duration_s": 0}, "duration_s"),
    ("inject_rbf_bump", {"txid": "zz", "at_s": T0}, "txid"),
    ("inject_rbf_bump", {"txid": "ab" * 32, "at_s": T0}, "txid"),
])
def test_bad_arguments_are_config_errors(method, kwargs, setting) -> None:
    node = make_node()
    with pytest.raises(ConfigError) as err:
        getattr(node, method)(**kwargs)
    assert err.value.setting == setting
    assert node.truth.network_events() == []


def test_overlapping_partitions_are_refused() -> None:
    node = make_node()
    node.inject_partition(T0 + 100, duration_s=600)
    with pytest.raises(ConfigError):
        node.inject_partition(T0 + 600, duration_s=600)
    node.inject_partition(T0 + 700, duration_s=600)  # back to back is fine
    assert [e["start"] for e in node.truth.network_events()] == [T0 + 100, T0 + 700]
    assert node.true_tip(T0) >= START_HEIGHT


def test_chain_windows_never_overlap_and_say_which() -> None:
    """A slow propagation overlapping a partition or another slow propagation is refused, naming the other window;
    so is one starting before an injected reorg or holding the chain below an injected stale fork's tip."""
    node = make_node()
    node.inject_partition(T0 + 100, duration_s=600)
    cases = [(lambda: node.inject_slow_propagation(T0 + 600, duration_s=600), "overlaps the partition"),
             (lambda: node.inject_slow_propagation(T0, duration_s=101), "overlaps the partition")]
    node.inject_slow_propagation(T0 + 700, duration_s=600)  # back to back with the partition
    cases += [(lambda: node.inject_slow_propagation(T0 + 1000, duration_s=60), "overlaps the slow_propagation"),
              (lambda: node.inject_partition(T0 + 1200, duration_s=600), "the partition .* overlaps the "
                                                                         "slow_propagation")]
    for inject, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            inject()
        assert err.value.setting == "at_s"
    node.inject_slow_propagation(T0 + 1300, duration_s=60)
    assert [(e["kind"], e["start"]) for e in node.truth.network_events()] == [
        ("partition", T0 + 100), ("slow_propagation", T0 + 700), ("slow_propagation", T0 + 1300)]
    forked = make_node()
    forked.inject_stale_fork(T0 + 400, branchlen=1)  # on the blocks of 9644.5 and 9685.6
    with pytest.raises(ConfigError, match="stale fork .* above the slow_propagation's tip") as err:
        forked.inject_slow_propagation(T0 + 10, delay_s=600)
    assert err.value.setting == "at_s"
    forked.inject_slow_propagation(T0 + 500)  # after the fork: its tip is already there
    reorged = make_node()
    reorged.inject_reorg(1)
    with pytest.raises(ConfigError, match="before an injected reorg; a slow_propagation") as err:
        reorged.inject_slow_propagation(T0 - 10)
    assert err.value.setting == "at_s" and reorged.truth.network_events() == []


# ---- mempool flood


def test_mempool_flood_fills_the_mempool_then_raises_the_minimum_fee(fresh) -> None:
    """Flood transactions pile up in getmempoolinfo until usage reaches maxmempool; then the node evicts them (the
    lowest fee rate), mempoolminfee becomes their rate + incrementalrelayfee and decays after the window."""
    from anya_fl.simnode.flood import FLOOD_TX_VSIZE, GRID_S

    node = fresh(maxmempool_mb=3.0)  # the simulated mempool alone peaks at about 1.25 MB of usage
    reference = make_node(maxmempool_mb=3.0)  # the same chain, no flood
    rpc = client(node)
    at, rate, duration = T0 + 60, 2000.0, 3600.0
    node.inject_mempool_flood(at, vbytes_per_s=rate, fee_sat_vb=1.0, duration_s=duration)
    (event,) = node.truth.network_events(detail=True)
    full_at = event["full_at"]
    limit = 3_000_000
    assert event == {"kind": "mempool_flood", "start": at, "end": at + duration, "vbytes_per_s": rate,
                     "fee_sat_vb": 1.0, "tx_vsize": FLOOD_TX_VSIZE, "full_at": full_at}
    assert at < full_at <= at + limit / (3 * rate) + GRID_S  # the flood alone fills it that fast

    def both(t: float) -> tuple[dict, dict]:
        node.clock.set(t)
        reference.clock.set(t)
        return rpc.getmempoolinfo(), reference.rpc.call("getmempoolinfo", [])

    mine, theirs = both(at - 1)
    assert mine == theirs
    flood_sizes = []
    for t in np.arange(at + 60, full_at, 60):  # filling: the flood's part of the mempool grows
        mine, theirs = both(float(t))
        n = mine["size"] - theirs["size"]
        flood_sizes.append(n)
        assert mine["bytes"] - theirs["bytes"] == n * FLOOD_TX_VSIZE and mine["usage"] == 3 * mine["bytes"]
        assert round((mine["total_fee"] - theirs["total_fee"]) * 1e8) == n * FLOOD_TX_VSIZE  # at 1 sat/vB
        assert mine["usage"] <= limit and mine["mempoolminfee"] == mine["minrelaytxfee"] == 1e-5
        assert rpc.call("getrawmempool") == reference.rpc.call("getrawmempool", [])  # counted, not listed
    assert len(flood_sizes) >= 5 and all(b > a for a, b in zip(flood_sizes, flood_sizes[1:], strict=False))
    mine, _ = both(full_at)  # full: usage at maxmempool (less than one flood transaction short)
    assert limit - 3 * FLOOD_TX_VSIZE < mine["usage"] <= limit
    assert mine["mempoolminfee"] == 2e-5 > mine["minrelaytxfee"]  # the evicted 1 sat/vB + incrementalrelayfee
    usages, fees = [], []
    for t in np.arange(full_at + 60, at + duration, 60):  # full for the rest of the window
        mine, theirs = both(float(t))
        usages.append(mine["usage"])
        fees.append(mine["mempoolminfee"])
        assert mine["usage"] <= limit and mine["size"] > theirs["size"]
    assert max(usages) > limit - 3 * FLOOD_TX_VSIZE and min(fees) > 1e-5
    end_fee = both(at + duration)[0]["mempoolminfee"]
    later, theirs = both(at + duration + 6 * 3600)  # after the window: the flood stays, the minimum decays
    assert later["size"] > theirs["size"] and 1e-5 <= later["mempoolminfee"] < end_fee
    assert both(at + duration + 48 * 3600)[0]["mempoolminfee"] == 1e-5  # decayed (12 h half-life) to the floor


def test_one_mempool_flood_per_node() -> None:
    node = make_node()
    node.inject_mempool_flood(T0, duration_s=600)
    with pytest.raises(ConfigError) as err:
        node.inject_mempool_flood(T0 + 3600)
    assert err.value.setting == "at_s" and len(node.truth.network_events()) == 1


def test_simnode_cli_accepts_the_new_scenarios() -> None:
    """`anya-fl simnode --scenario`: mempool_flood@S (either spelling), rbf_replacement@S replacing the mempool's
    first transaction at that time."""
    from anya_fl.cli.simnode import _inject, _scenarios

    specs = ["mempool_flood@60", "rbf-replacement@120", "double_spend@240", "slow_propagation@7200"]
    assert _scenarios(specs) == [("mempool-flood", 60.0), ("rbf-replacement", 120.0), ("double-spend", 240.0),
                                 ("slow-propagation", 7200.0)]
    assert _scenarios(["slow-propagation@30"]) == [("slow-propagation", 30.0)]
    with pytest.raises(ConfigError, match="scenario: .*KIND@SECONDS"):
        _scenarios(["rbf@10"])
    node, twin = make_node(), make_node()
    twin.clock.set(twin.t_start + 120)
    first = twin.rpc.call("getrawmempool", [])[0]  # what the node will list first then, as the bench picks it
    notes = [_inject(node, kind, at) for kind, at in _scenarios(specs)]
    flood, bump, spend, slow = sorted(node.truth.network_events(detail=True), key=lambda e: e["start"])
    assert (slow["kind"], slow["start"], slow["end"], slow["delay_s"]) == (
        "slow_propagation", node.t_start + 7200, node.t_start + 10_800, 120.0) and notes[3] is None
    assert (flood["kind"], flood["start"]) == ("mempool_flood", node.t_start + 60) and notes[0] is None
    assert (bump["kind"], bump["txid"]) == ("rbf_replacement", first)
    assert first in notes[1] and bump["replacement"] in notes[1] and f"anya-fl watch add {first}" in notes[1]
    assert spend["kind"] == "double_spend" and spend["txid"] != first and spend["conflict"] in notes[2]
