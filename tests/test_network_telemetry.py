"""Node telemetry vector: hand-written Core-shaped replies -> exact features, problems and privacy."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest

from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA, TelemetrySample, telemetry_sample
from core.errors import FeatureError

NOW = 1_760_000_000.0
HEIGHT = 870_000
ONION_A = base64.b32encode(hashlib.sha256(b"peer a").digest() + b"\x12\x34\x03").decode().lower() + ".onion:8333"
ONION_B = base64.b32encode(hashlib.sha256(b"peer b").digest() + b"\x56\x78\x03").decode().lower() + ".onion:8333"
I2P = base64.b32encode(hashlib.sha256(b"peer i2p").digest()).decode().lower().rstrip("=") + ".b32.i2p:0"
CJDNS = "[fc32:17ea:e415:c3bf:9808:149d:b5a2:c9aa]:8333"

EXPECTED_NAMES = [
    "peers_total", "peers_inbound", "peers_outbound_full_relay", "peers_block_relay_only", "peers_manual",
    "peers_feeler_addrfetch", "peers_ipv4", "peers_ipv6", "peers_onion", "peers_i2p", "peers_cjdns",
    "peers_other_network", "outbound_netgroups", "outbound_top_netgroup_share", "outbound_churn",
    "inbound_new_per_min", "addr_processed_per_s", "addr_rate_limited_per_s", "ping_p50_ms", "ping_p90_ms",
    "minping_p50_ms", "peers_headers_ahead", "peers_blocks_ahead", "bip152_hb_to", "bip152_hb_from",
    "bytes_recv_per_s_inv", "bytes_recv_per_s_tx", "bytes_recv_per_s_addr", "bytes_recv_per_s_other",
    "tip_age_s", "chain_tips_not_active", "chain_tips_valid_fork", "chain_tips_headers_only", "max_fork_branchlen",
    "network_active", "connections", "mempool_usage_ratio", "mempool_min_fee_sat_vb", "mempool_size",
    "cpu_percent", "memory_rss_mb", "disk_free_gb",
]


def peer(pid: int, addr: str, network: str, connection_type: str, **fields: Any) -> dict[str, Any]:
    """A getpeerinfo entry as Core 27 writes it (the fields telemetry reads plus a few it ignores)."""
    entry: dict[str, Any] = {
        "id": pid, "addr": addr, "addrbind": "192.0.2.250:8333", "network": network,
        "services": "0000000000000c09", "relaytxes": connection_type != "block-relay-only",
        "inbound": connection_type == "inbound", "connection_type": connection_type,
        "pingtime": 0.05, "minping": 0.04, "synced_headers": HEIGHT, "synced_blocks": HEIGHT,
        "bytessent": 10_000, "bytesrecv": 20_000, "lastsend": int(NOW) - 1, "lastrecv": int(NOW) - 1,
        "bytesrecv_per_msg": {"inv": 1_000, "tx": 5_000, "addr": 100, "addrv2": 200, "ping": 64},
        "bytessent_per_msg": {"inv": 500, "pong": 64},
        "addr_processed": 10, "addr_rate_limited": 0, "bip152_hb_to": False, "bip152_hb_from": False,
        "transport_protocol_type": "v2",
    }
    if network in ("ipv4", "ipv6"):
        entry["mapped_as"] = 64_496 + pid
    entry.update(fields)
    return entry


def replies(**override: Any) -> dict[str, Any]:
    """Consistent getnetworkinfo / getchaintips / getmempoolinfo / getblockchaininfo replies."""
    base: dict[str, Any] = {
        "network": {"version": 270000, "subversion": "/Satoshi:27.0.0/", "protocolversion": 70016,
                    "connections": 14, "connections_in": 3, "connections_out": 11, "networkactive": True,
                    "relayfee": 0.00001, "warnings": ""},
        "chaintips": [
            {"height": HEIGHT, "hash": "00" * 32, "branchlen": 0, "status": "active"},
            {"height": HEIGHT - 10, "hash": "11" * 32, "branchlen": 2, "status": "valid-fork"},
            {"height": HEIGHT + 3, "hash": "22" * 32, "branchlen": 5, "status": "headers-only"},
            {"height": HEIGHT - 50, "hash": "33" * 32, "branchlen": 1, "status": "invalid"},
        ],
        "mempool": {"loaded": True, "size": 42_000, "bytes": 30_000_000, "usage": 150_000_000,
                    "total_fee": 1.5, "maxmempool": 300_000_000, "mempoolminfee": 0.00001,
                    "minrelaytxfee": 0.00001, "incrementalrelayfee": 0.00001, "unbroadcastcount": 0},
        "blockchain": {"chain": "main", "blocks": HEIGHT, "headers": HEIGHT + 3, "bestblockhash": "00" * 32,
                       "time": int(NOW) - 300, "mediantime": int(NOW) - 2_000, "initialblockdownload": False},
    }
    base.update(override)
    return base


def mixed_peers() -> list[dict[str, Any]]:
    pings = {i: 0.01 * (i + 1) for i in range(10)}  # 10..100 ms for ids 0..9, none for the others
    out = [
        peer(0, "198.51.100.7:8333", "ipv4", "outbound-full-relay", synced_headers=HEIGHT + 1, bip152_hb_to=True),
        peer(1, "198.51.7.20:8333", "ipv4", "outbound-full-relay", synced_headers=HEIGHT + 2,
             synced_blocks=HEIGHT + 1, bip152_hb_to=True),
        peer(2, "[2001:db8:1::5]:8333", "ipv6", "outbound-full-relay"),
        peer(3, "[2001:db8:ffff::9]:8333", "ipv6", "outbound-full-relay"),
        peer(4, ONION_A, "onion", "outbound-full-relay"),
        peer(5, ONION_B, "onion", "outbound-full-relay"),
        peer(6, "203.0.113.50:8333", "ipv4", "block-relay-only", bip152_hb_to=True),
        peer(7, I2P, "i2p", "block-relay-only"),
        peer(8, CJDNS, "cjdns", "manual"),
        peer(9, "192.0.2.44:8333", "ipv4", "feeler", synced_headers=-1, synced_blocks=-1),
        peer(10, "127.0.0.1:40123", "onion", "inbound"),  # inbound Tor: Core shows the local proxy side
        peer(11, "192.0.2.77:50000", "ipv4", "inbound", bip152_hb_from=True),
        peer(12, "10.0.0.5:40000", "not_publicly_routable", "inbound"),
        peer(13, "[2a01:4f8::1]:8333", "ipv6", "addr-fetch"),
    ]
    for p in out:
        if p["id"] in pings:
            p["pingtime"], p["minping"] = pings[p["id"]], pings[p["id"]] / 2
        else:
            del p["pingtime"], p["minping"]
    return out


def sample(peers: Any, *, now: float = NOW, previous: TelemetrySample | None = None, **override: Any) -> TelemetrySample:
    r = replies(**override)
    resources = r.pop("resources", None)
    return telemetry_sample(peers=peers, now=now, previous=previous, resources=resources, **r)


def test_schema_is_versioned_and_lists_every_feature_once():
    assert TELEMETRY_SCHEMA.version == 1
    assert TELEMETRY_SCHEMA.names == EXPECTED_NAMES
    assert TELEMETRY_SCHEMA.width == len(EXPECTED_NAMES)
    for col in TELEMETRY_SCHEMA.columns:
        assert col.unit and col.description and col.valid[0] < col.valid[1]


def test_mixed_peer_set_gives_exact_counts_and_netgroups():
    s = sample(mixed_peers(), resources={"cpu_percent": 12.5, "rss_mb": 512.0, "disk_free_gb": 100.0})
    assert s.problems == []
    assert s.vector.dtype == np.float32 and s.vector.shape == (TELEMETRY_SCHEMA.width,)
    v = s.as_dict()
    assert {k: v[k] for k in EXPECTED_NAMES[:12]} == {
        "peers_total": 14, "peers_inbound": 3, "peers_outbound_full_relay": 6, "peers_block_relay_only": 2,
        "peers_manual": 1, "peers_feeler_addrfetch": 2, "peers_ipv4": 5, "peers_ipv6": 3, "peers_onion": 3,
        "peers_i2p": 1, "peers_cjdns": 1, "peers_other_network": 1,
    }
    # long-lived outbound: ids 0..8. Groups: 198.51/16 {0,1}, 2001:db8::/32 {2,3}, onion {4,5}, 203.0/16, i2p, cjdns
    assert v["outbound_netgroups"] == 6
    assert v["outbound_top_netgroup_share"] == pytest.approx(2 / 9)
    # ping over ids 0..9: 10..100 ms (numpy's linear interpolation); minping is half
    assert v["ping_p50_ms"] == pytest.approx(55.0) and v["ping_p90_ms"] == pytest.approx(91.0)
    assert v["minping_p50_ms"] == pytest.approx(27.5)
    assert (v["peers_headers_ahead"], v["peers_blocks_ahead"]) == (2, 1)
    assert (v["bip152_hb_to"], v["bip152_hb_from"]) == (3, 1)
    assert v["tip_age_s"] == 300
    assert (v["chain_tips_not_active"], v["chain_tips_valid_fork"], v["chain_tips_headers_only"]) == (3, 1, 1)
    assert v["max_fork_branchlen"] == 5
    assert (v["network_active"], v["connections"]) == (1, 14)
    assert v["mempool_usage_ratio"] == 0.5
    assert v["mempool_min_fee_sat_vb"] == pytest.approx(1.0) and v["mempool_size"] == 42_000
    assert (v["cpu_percent"], v["memory_rss_mb"], v["disk_free_gb"]) == (12.5, 512, 100)
    # no previous sample: every rate and the churn are 0
    for name in ("outbound_churn", "inbound_new_per_min", "addr_processed_per_s", "addr_rate_limited_per_s",
                 "bytes_recv_per_s_inv", "bytes_recv_per_s_tx", "bytes_recv_per_s_addr", "bytes_recv_per_s_other"):
        assert v[name] == 0, name
    assert TELEMETRY_SCHEMA.check(s.vector) == []


def test_eclipse_like_outbound_set_is_one_netgroup():
    peers = [peer(i, f"203.0.{i * 30}.{i + 1}:8333", "ipv4", "outbound-full-relay") for i in range(8)]
    peers += [peer(20 + i, f"{11 + 40 * i}.9.8.7:8333", "ipv4", "inbound") for i in range(4)]  # diverse inbound
    v = sample(peers).as_dict()
    assert v["peers_outbound_full_relay"] == 8
    assert v["outbound_netgroups"] == 1 and v["outbound_top_netgroup_share"] == 1.0  # mapped_as differs: ignored
    # the same eight spread over eight /16s
    spread = [peer(i, f"{20 + i}.0.0.1:8333", "ipv4", "outbound-full-relay") for i in range(8)]
    v = sample(spread).as_dict()
    assert v["outbound_netgroups"] == 8 and v["outbound_top_netgroup_share"] == pytest.approx(1 / 8)


def test_netgroups_follow_core_for_embedded_ipv4_unroutable_and_hurricane_electric():
    peers = [
        peer(0, "[::ffff:198.51.100.1]:8333", "ipv4", "outbound-full-relay"),  # same /16 as the next one
        peer(1, "198.51.3.3:8333", "ipv4", "outbound-full-relay"),
        peer(2, "[2002:c633:6401::1]:8333", "ipv4", "outbound-full-relay"),  # 6to4 of 198.51.100.1
        peer(3, "[2001:470:1000::1]:8333", "ipv6", "outbound-full-relay"),  # he.net: /36
        peer(4, "[2001:470:2000::1]:8333", "ipv6", "outbound-full-relay"),
        peer(5, "10.1.1.1:8333", "not_publicly_routable", "manual"),  # every unroutable address: one group
        peer(6, "192.168.7.7:8333", "not_publicly_routable", "manual"),
    ]
    s = sample(peers)
    assert s.problems == []
    assert s.value("outbound_netgroups") == 4  # 198.51, he.net/36 x2, unroutable
    assert s.value("outbound_top_netgroup_share") == pytest.approx(3 / 7)


def test_two_samples_give_exact_rates_and_churn():
    def p(pid: int, ctype: str, **kw: Any) -> dict[str, Any]:
        return peer(pid, f"{30 + pid}.1.2.3:8333", "ipv4", ctype, **kw)

    first = sample([
        p(1, "outbound-full-relay", addr_processed=100, addr_rate_limited=5,
          bytesrecv_per_msg={"inv": 1_000, "tx": 5_000, "addr": 100, "addrv2": 200, "ping": 64}),
        p(2, "outbound-full-relay", addr_processed=50, bytesrecv_per_msg={"inv": 500, "tx": 1_000}),
        p(3, "inbound"),
        p(9, "outbound-full-relay"),  # gone by the second sample
    ])
    second = sample([
        p(1, "outbound-full-relay", addr_processed=160, addr_rate_limited=17,
          bytesrecv_per_msg={"inv": 2_200, "tx": 17_000, "addr": 100, "addrv2": 440, "ping": 424, "headers": 300}),
        p(2, "outbound-full-relay", addr_processed=10, bytesrecv_per_msg={"inv": 400, "tx": 1_000}),  # backwards
        p(3, "inbound"),
        p(4, "outbound-full-relay", addr_processed=10**6, bytesrecv_per_msg={"tx": 10**9}),  # new: no rate
        p(5, "block-relay-only"),
        p(6, "inbound"), p(7, "inbound"),
        p(8, "feeler"),  # short-lived: not in the churn
    ], now=NOW + 120, previous=first)
    assert second.problems == []
    v = second.as_dict()
    assert v["outbound_churn"] == pytest.approx(2 / 4)  # ids 4 and 5 of 1, 2, 4, 5
    assert v["inbound_new_per_min"] == pytest.approx(1.0)  # ids 6, 7 in 2 minutes
    assert v["addr_processed_per_s"] == pytest.approx(60 / 120)  # peer 2 went backwards: 0
    assert v["addr_rate_limited_per_s"] == pytest.approx(12 / 120)
    assert v["bytes_recv_per_s_inv"] == pytest.approx(1_200 / 120)
    assert v["bytes_recv_per_s_tx"] == pytest.approx(12_000 / 120)
    assert v["bytes_recv_per_s_addr"] == pytest.approx(240 / 120)
    assert v["bytes_recv_per_s_other"] == pytest.approx((360 + 300) / 120)
    # a previous sample at the same time gives no rates, and says so
    again = sample([p(1, "outbound-full-relay"), p(6, "inbound")], now=NOW, previous=first)
    assert again.value("inbound_new_per_min") == 0 and again.value("outbound_churn") == 0
    assert any(m.startswith("now:") and "not after the previous sample" in m for m in again.problems)


def test_previous_without_peer_data_gives_no_churn():
    blind = sample(None)
    assert blind.peers is None
    after = sample([peer(1, "30.1.2.3:8333", "ipv4", "outbound-full-relay"), peer(2, "31.1.2.3:8333", "ipv4", "inbound")],
                   now=NOW + 60, previous=blind)
    assert after.value("outbound_churn") == 0 and after.value("inbound_new_per_min") == 0


def test_malformed_peers_are_skipped_with_problems_naming_the_field():
    peers = [
        "not a peer",
        {k: v for k, v in peer(1, "30.1.1.1:8333", "ipv4", "outbound-full-relay").items() if k != "id"},
        peer(2, "30.2.2.2:8333", "ipv4", "outbound-full-relay", pingtime="fast"),
        peer(3, "nonsense", "ipv4", "outbound-full-relay"),
        peer(4, ONION_A, "onion", "outbound-full-relay"),
        peer(5, I2P, "i2p", "block-relay-only"),
        peer(6, CJDNS, "cjdns", "manual"),
        {k: v for k, v in peer(7, "30.7.7.7:8333", "ipv4", "inbound", inbound="yes").items()
         if k != "connection_type"},
        peer(8, "[zz::1]:8333", "ipv6", "inbound", bytesrecv_per_msg="lots", bip152_hb_to=1, synced_headers=None),
        peer(2, "30.9.9.9:8333", "ipv4", "inbound"),  # repeats id 2
        {"id": True, "addr": "30.1.1.2:8333"},
    ]
    # a minimal old-style entry: no network, no connection_type, optional fields missing
    peers.append({"id": 11, "addr": "[2a02:1::7]:8333", "inbound": False})
    s = sample(peers)
    text = "\n".join(s.problems)
    for needle in ("getpeerinfo[0]: expected an object, got str; peer skipped",
                   "getpeerinfo[1].id: missing; peer skipped",
                   "getpeerinfo[2].pingtime: 'fast' is not a number",
                   "getpeerinfo[3].addr: ", "not an address Core writes",
                   "getpeerinfo[7].inbound: 'yes' is not true or false",
                   "getpeerinfo[7].inbound: missing, and no connection_type to tell; peer skipped",
                   "getpeerinfo[8].addr: ", "getpeerinfo[8].bytesrecv_per_msg: expected an object, got str",
                   "getpeerinfo[8].bip152_hb_to: 1 is not true or false",
                   "getpeerinfo[8].synced_headers: None is not a number",
                   "getpeerinfo[9].id: 2 repeats an earlier peer's id; peer skipped",
                   "getpeerinfo[10].id: True is not a peer id"):
        assert needle in text, needle
    assert not any(m.startswith(("getpeerinfo[4]", "getpeerinfo[5]", "getpeerinfo[6]", "getpeerinfo[11]"))
                   for m in s.problems)
    assert "nonsense" not in text  # a malformed address is described, never quoted
    v = s.as_dict()
    # kept: ids 2, 3, 4, 5, 6, 8, 11
    assert v["peers_total"] == 7 and v["peers_inbound"] == 1
    assert (v["peers_ipv4"], v["peers_ipv6"], v["peers_onion"], v["peers_i2p"], v["peers_cjdns"]) == (2, 2, 1, 1, 1)
    assert v["peers_other_network"] == 0
    # outbound with a known group: 2 (30.2/16), 4 onion, 5 i2p, 6 cjdns, 11 (2a02:1::/32); 3 has no readable address
    assert v["outbound_netgroups"] == 5 and v["outbound_top_netgroup_share"] == pytest.approx(1 / 5)
    assert v["ping_p50_ms"] == pytest.approx(50.0)  # peer 2's "fast" is absent; others report 50 ms
    assert v["bip152_hb_to"] == 0


def test_addresses_without_network_field_are_classified_from_addr():
    bare = [{"id": i, "addr": a, "inbound": True} for i, a in enumerate(
        ["30.1.2.3:8333", "[2a02:1::7]:8333", ONION_A, I2P, "127.0.0.1:5555", "[fc00::1]:8333"])]
    s = sample(bare)
    assert s.problems == []
    v = s.as_dict()
    assert (v["peers_ipv4"], v["peers_ipv6"], v["peers_onion"], v["peers_i2p"]) == (1, 1, 1, 1)
    assert v["peers_other_network"] == 2 and v["peers_cjdns"] == 0  # without the network field fc00::/8 is a ULA


@pytest.mark.parametrize("addr", ["1.2.3.4", "1.2.3.4:99999", "[2001:db8::1]", "[2001:db8::1:8333",
                                  "abc.onion:8333", "1" * 56 + ".onion:8333", "short.b32.i2p:0", "300.1.1.1:8333", ""])
def test_addresses_core_does_not_write_are_refused(addr: str):
    s = sample([peer(0, addr, "ipv4", "outbound-full-relay")])
    assert any(m.startswith("getpeerinfo[0].addr: ") for m in s.problems)
    assert s.value("peers_total") == 1 and s.value("outbound_netgroups") == 0


def test_unknown_chain_tip_status_counts_as_not_active():
    tips = [{"height": HEIGHT, "hash": "00" * 32, "branchlen": 0, "status": "active"},
            {"height": HEIGHT - 1, "hash": "11" * 32, "branchlen": 3, "status": "weird"},
            "garbage", {"height": 1, "branchlen": 1}]
    s = sample([], chaintips=tips)
    v = s.as_dict()
    assert v["chain_tips_not_active"] == 1 and v["chain_tips_valid_fork"] == 0 and v["max_fork_branchlen"] == 3
    assert any(m.startswith("getchaintips[1].status: 'weird'") and "counted as not active" in m for m in s.problems)
    assert any(m.startswith("getchaintips[2]: expected an object") for m in s.problems)
    assert any(m.startswith("getchaintips[3].status: missing") for m in s.problems)
    no_active = sample([], chaintips=[{"status": "valid-fork", "branchlen": 1}])
    assert "getchaintips: 0 tips with status active, Core reports exactly one" in no_active.problems


def test_missing_replies_give_zero_features_and_a_problem_each():
    s = telemetry_sample(peers=None, network=None, chaintips=None, mempool=None, blockchain=None, now=NOW)
    assert not s.vector.any()
    for method in ("getpeerinfo", "getnetworkinfo", "getchaintips", "getmempoolinfo", "getblockchaininfo"):
        assert any(m.startswith(f"{method}: no reply;") for m in s.problems), method
    # a reply of the wrong shape is the same as none; the other replies still count
    s = sample({"not": "a list"}, network=["x"])
    assert any(m.startswith("getpeerinfo: expected a list, got dict") for m in s.problems)
    assert any(m.startswith("getnetworkinfo: expected an object, got list") for m in s.problems)
    assert s.value("peers_total") == 0 and s.value("network_active") == 0 and s.value("mempool_size") == 42_000
    # missing fields inside a reply
    s = sample([], mempool={"size": 5, "maxmempool": 0, "usage": 7}, resources={"cpu_percent": "high"},
               blockchain={"chain": "main"})
    assert s.value("mempool_usage_ratio") == 0 and s.value("tip_age_s") == 0 and s.value("cpu_percent") == 0
    for needle in ("getmempoolinfo: usage or maxmempool", "getmempoolinfo.mempoolminfee: missing",
                   "resources.cpu_percent: 'high' is not a number", "resources.memory_rss_mb: missing",
                   "getblockchaininfo.time: missing", "getblockchaininfo.blocks: missing"):
        assert any(m.startswith(needle) for m in s.problems), needle


def test_out_of_range_values_are_kept_and_named_not_clipped():
    future = replies()["blockchain"] | {"time": int(NOW) + 10_000}
    s = sample([], blockchain=future, mempool=replies()["mempool"] | {"usage": 900_000_000})
    assert s.value("tip_age_s") == -10_000 and s.value("mempool_usage_ratio") == 3.0
    assert TELEMETRY_SCHEMA.check(s.vector) == ["tip_age_s", "mempool_usage_ratio"]
    assert any(m.startswith("tip_age_s: -10000 is outside the valid range") for m in s.problems)
    rows = np.zeros((3, TELEMETRY_SCHEMA.width), np.float32)
    rows[2, TELEMETRY_SCHEMA.index("outbound_churn")] = math.nan
    assert TELEMETRY_SCHEMA.check(rows) == ["outbound_churn"]
    with pytest.raises(FeatureError, match="vector"):
        TELEMETRY_SCHEMA.check(np.zeros(3))


def test_public_part_holds_no_address_or_peer_id():
    peers = mixed_peers()
    for p in peers:
        p["id"] += 987_650  # ids that cannot be confused with a count
    s1 = sample(peers)
    s2 = sample(peers + [peer(987_699, "garbage-addr", "ipv4", "outbound-full-relay")], now=NOW + 60, previous=s1)
    public = s2.to_public()
    assert set(public) == {"time", "vector"}
    text = json.dumps(public)
    assert np.array_equal(np.asarray(public["vector"], np.float32), s2.vector)
    for p in peers:
        assert str(p["id"]) not in text
    # no address anywhere in the sample, including its node-local parts
    local = repr(s2) + repr(dict(s2.peers or {})) + "\n".join(s2.problems) + text
    for p in peers:
        host = p["addr"].rsplit(":", 1)[0].strip("[]")
        assert p["addr"] not in local and host not in local
    assert "garbage-addr" not in local


def test_same_input_gives_the_same_vector_and_the_vector_is_read_only():
    a, b = sample(mixed_peers()), sample(mixed_peers())
    assert np.array_equal(a.vector, b.vector) and a.problems == b.problems
    assert a.vector.dtype == np.float32 and a.vector.shape == (TELEMETRY_SCHEMA.width,)
    with pytest.raises(ValueError):
        a.vector[0] = 1.0


def test_caller_errors_raise_feature_errors():
    with pytest.raises(FeatureError, match="^now: "):
        sample([], now=math.nan)
    with pytest.raises(FeatureError, match="^previous: "):
        telemetry_sample(peers=[], network=None, chaintips=None, mempool=None, blockchain=None, now=NOW,
                         previous={"time": 0})  # type: ignore[arg-type]


def test_simulated_node_peers_read_cleanly():
    from anya_fl.simnode.peers import make_peers, network_info, peer_info

    peers = [peer_info(p, 5_000.0, HEIGHT, int(NOW) - 60, HEIGHT - 5) for p in make_peers(7, 1_000.0)]
    s = sample(peers, network=network_info(len(peers)))
    assert s.problems == []
    v = s.as_dict()
    assert (v["peers_total"], v["peers_outbound_full_relay"], v["peers_block_relay_only"]) == (10, 8, 2)
    assert (v["peers_ipv4"], v["peers_ipv6"], v["peers_onion"]) == (6, 2, 2)
