"""The LND adapter (core.lightning.lnd): LND's recorded reply shapes field by field, malformed replies, and round
trips against the simulated LND (anya_fl.simln.lnd_server) over loopback HTTPS."""

from __future__ import annotations

import copy
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from anya_fl.simln.lnd_server import LNDServer
from anya_fl.simln.static_source import StaticSource
from core.lightning.lnd import (
    MACAROON_HEADER,
    HtlcStreamReader,
    LNDClient,
    LNDConfig,
    parse_channels,
    parse_edge,
    parse_error,
    parse_forwarding_page,
    parse_info,
    scid_from_int,
    scid_to_int,
)
from core.lightning.model import (
    CLOSING,
    FAILED,
    LOCAL_FAILED,
    OFFERED,
    OPEN,
    PENDING_OPEN,
    SETTLED,
    Channel,
    ChannelPolicy,
    Forward,
    LightningAuthError,
    LightningConnectionError,
    LightningError,
    LightningReplyError,
    LightningVersionError,
    NodeInfo,
)

FIXTURES = Path(__file__).parent / "fixtures" / "lightning" / "lnd"
ME = "022bd806c97f0e00af1a1fc3328fa763a9269723c8db8fac4f93af71db186d6e90"  # getinfo.json's identity_pubkey
CH0, CH1, CH2, CH3 = "800000x1234x1", "810000x55x0", "820000x7x1", "830000x2x0"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def edge_file(scid: str) -> str:
    return f"graph_edge_{scid_to_int(scid)}.json"


# --------------------------------------------------------------------------------------------
# Recorded shapes
# --------------------------------------------------------------------------------------------


def test_short_channel_ids() -> None:
    assert scid_to_int(CH0) == 800000 << 40 | 1234 << 16 | 1 == 879609302301671425
    assert scid_from_int(879609302301671425) == CH0
    assert scid_from_int(scid_to_int("1x0x0")) == "1x0x0"
    for bad in (0, 5, 1 << 64):  # 0; block 0; past uint64
        with pytest.raises(ValueError):
            scid_from_int(bad)
    for bad in ("800000x1", "ax1x2", "0x1x1", "1x1x65536", "16777216x0x0"):
        with pytest.raises(ValueError):
            scid_to_int(bad)


def test_getinfo() -> None:
    info = parse_info(load("getinfo.json"), node="https://node:8080")
    assert info == NodeInfo(pubkey=ME, alias="alice-routing", implementation="lnd",
                            version="0.18.3-beta commit=v0.18.3-beta", block_height=861234, synced_to_chain=True)


@pytest.mark.parametrize("version", ["0.15.5-beta commit=v0.15.5-beta", "0.14.0-beta"])
def test_getinfo_refuses_old_versions(version: str) -> None:
    reply = load("getinfo.json") | {"version": version}
    with pytest.raises(LightningVersionError) as err:
        parse_info(reply, node="https://node:8080")
    text = str(err.value)
    assert "\n" not in text and "0.16.0" in text and version.split()[0] in text and "subscribed_event" in text
    with pytest.raises(LightningVersionError, match="not LND's MAJOR.MINOR.PATCH"):
        parse_info(load("getinfo.json") | {"version": "v1 (custom)"})


def test_channels_field_by_field() -> None:
    channels, chan_ids = parse_channels(load("channels.json"), load("pending_channels.json"))
    assert chan_ids == [scid_to_int(c) for c in (CH0, CH1, CH2, CH3)]
    assert [c.state for c in channels] == [OPEN] * 4 + [PENDING_OPEN, CLOSING, CLOSING]
    public, private, inactive, busy, opening, waiting, forced = channels
    assert public == Channel(
        channel_id=CH0, channel_point=public.channel_point, peer=public.peer, state=OPEN, active=True,
        capacity_sat=5_000_000, local_msat=2_500_000_000, remote_msat=2_496_530_000,  # sat strings -> msat
        pending_htlcs=0, pending_htlc_msat=0, local_reserve_sat=50_000, remote_reserve_sat=50_000,
        initiator_local=True, private=False, uptime_s=86_000, lifetime_s=86_400)
    assert public.channel_point.endswith(":1") and public.peer.startswith("03")
    assert (private.channel_id, private.private, private.initiator_local, private.local_reserve_sat) == (
        CH1, True, False, 10_000)
    assert (inactive.channel_id, inactive.active, inactive.uptime_s, inactive.lifetime_s) == (CH2, False, 0, 604_800)
    assert (busy.pending_htlcs, busy.pending_htlc_msat) == (2, 62_000_000)  # 50 000 + 12 000 sat
    assert (opening.channel_id, opening.active, opening.local_msat, opening.remote_msat, opening.initiator_local) == (
        None, False, 996_530_000, 0, True)
    assert (waiting.channel_id, waiting.initiator_local, waiting.local_reserve_sat, waiting.capacity_sat) == (
        None, None, 5_000, 500_000)  # INITIATOR_UNKNOWN
    assert (forced.private, forced.initiator_local, forced.local_msat, forced.remote_msat) == (
        True, False, 1_200_000_000, 796_530_000)
    assert all(c.local_policy is None and c.remote_policy is None for c in channels)


def test_edges_give_both_policies() -> None:
    ours, theirs = parse_edge(load(edge_file(CH0)), ME)
    assert ours == ChannelPolicy(base_fee_msat=1000, fee_rate_ppm=250, time_lock_delta=80, min_htlc_msat=1000,
                                 max_htlc_msat=4_950_000_000, disabled=False)
    assert theirs == ChannelPolicy(0, 1, 40, 1, 4_950_000_000, False)
    ours, theirs = parse_edge(load(edge_file(CH1)), ME)
    assert ours is not None and ours.fee_rate_ppm == 100 and theirs is None  # the peer never announced one
    ours, theirs = parse_edge(load(edge_file(CH3)), ME)
    assert ours is not None and ours.time_lock_delta == 144 and theirs is not None and theirs.disabled
    with pytest.raises(LightningReplyError, match="this node's key"):
        parse_edge(load(edge_file(CH0)), "03" + "f" * 64)


def test_forwarding_history_pages() -> None:
    assert parse_forwarding_page(load("fwdinghistory_empty.json")) == ([], 0)
    page, last = parse_forwarding_page(load("fwdinghistory_page.json"))
    assert last == 3 and [f.outcome for f in page] == [SETTLED] * 3
    assert page[0] == Forward(received=1725000000.123456789, resolved=1725000000.123456789, in_channel=CH0,
                              out_channel=CH3, in_msat=100_250_000, out_msat=100_224_750, fee_msat=25_250,
                              outcome=SETTLED)
    assert (page[1].in_msat, page[1].fee_msat) == (2_000_000_501, 1_000_501)  # msat fields, not the sat ones
    assert (page[2].in_channel, page[2].in_msat, page[2].out_msat, page[2].fee_msat) == (CH1, 1000, 999, 1)
    first, offset1 = parse_forwarding_page(load("fwdinghistory_paging_1.json"))
    second, offset2 = parse_forwarding_page(load("fwdinghistory_paging_2.json"))
    assert (offset1, offset2) == (2, 3) and first + second == page


def test_htlc_stream_lines() -> None:
    reader = HtlcStreamReader()
    lines = (FIXTURES / "htlcevents.jsonl").read_bytes().splitlines(keepends=True)
    for line in lines + lines:  # LND may replay events: each counts once
        reader.feed(line)
    assert reader.subscribed and reader.problems == []
    downstream, no_balance, no_peer = reader.failures
    assert downstream == Forward(received=1725000300.0, resolved=1725000301.25, in_channel=CH0, out_channel=CH3,
                                 in_msat=50_005_000, out_msat=50_000_000, fee_msat=0, outcome=FAILED, failure=None)
    assert no_balance == Forward(received=1725000302.0, resolved=1725000302.0, in_channel=CH1, out_channel=CH0,
                                 in_msat=2_000_200_000, out_msat=2_000_000_000, fee_msat=0, outcome=LOCAL_FAILED,
                                 failure="INSUFFICIENT_BALANCE")
    assert (no_peer.out_channel, no_peer.failure, no_peer.outcome) == (None, "UNKNOWN_NEXT_PEER", LOCAL_FAILED)


def test_htlc_stream_skips_what_it_cannot_use() -> None:
    lines = (FIXTURES / "htlcevents.jsonl").read_text().splitlines()
    reader = HtlcStreamReader()
    for line in [lines[0], "{not json", '{"result": {"event_type": "FORWARD", "link_fail_event": {}}}',
                 lines[2], lines[4]]:  # the forward_fail_event without its forward_event
        reader.feed(line)
    assert [f.failure for f in reader.failures] == ["INSUFFICIENT_BALANCE"]
    assert len(reader.problems) == 3 and "not JSON" in reader.problems[0]
    assert "incoming_channel_id: missing" in reader.problems[1] and "without its forward_event" in reader.problems[2]
    reader.feed('{"error": {"code": 2, "message": "routerrpc server shutting down", "details": []}}')
    assert reader.ended and "shutting down" in reader.problems[-1]
    with pytest.raises(LightningAuthError):  # an error before the subscription is confirmed is the call's error
        HtlcStreamReader().feed(json.dumps({"error": load("error_bad_macaroon.json")}))


def test_error_replies() -> None:
    err = parse_error(500, load("error_bad_macaroon.json"), node="https://node:8080", call="GetInfo")
    assert isinstance(err, LightningAuthError) and "signature mismatch" in str(err)
    err = parse_error(404, load("error_unknown_path.json"), call="GetInfo", path="/v1/getinfo")
    assert isinstance(err, LightningVersionError) and "/v1/getinfo is not served" in str(err)
    err = parse_error(500, {"code": 2, "message": "wallet locked, unlock it to enable full RPC access"})
    assert isinstance(err, LightningConnectionError)
    err = parse_error(500, load("error_edge_not_found.json"))
    assert type(err) is LightningError and "edge not found" in str(err)


# --------------------------------------------------------------------------------------------
# Malformed replies: LightningReplyError naming the field
# --------------------------------------------------------------------------------------------


def _set(path: list[Any], value: Any) -> Any:
    def change(reply: Any) -> None:
        target = reply
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


_DELETE = object()
_CHANNEL_CASES = [
    (["channels", 3, "local_balance"], _DELETE, "channels[3].local_balance", "missing"),
    (["channels", 3, "local_balance"], "abc", "channels[3].local_balance", "'abc' is not an integer string"),
    (["channels", 3, "local_balance"], "-5", "channels[3].local_balance", "-5 is negative"),
    (["channels", 1, "capacity"], 1.5, "channels[1].capacity", "1.5 is not an integer"),
    (["channels", 0, "chan_id"], "0", "channels[0].chan_id", "impossible channel id"),
    (["channels", 0, "chan_id"], "18446744073709551616", "channels[0].chan_id", "out of range"),
    (["channels", 2, "remote_pubkey"], "zz", "channels[2].remote_pubkey", "not a 33-byte hex public key"),
    (["channels", 2, "active"], "yes", "channels[2].active", "not a boolean"),
    (["channels", 3, "pending_htlcs", 1, "amount"], "x", "channels[3].pending_htlcs[1].amount", "not an integer"),
    (["channels"], {}, "channels", "is not an array"),
]


@pytest.mark.parametrize(("path", "value", "field", "problem"), _CHANNEL_CASES)
def test_malformed_channels(path: list[Any], value: Any, field: str, problem: str) -> None:
    listed = copy.deepcopy(load("channels.json"))
    _set(path, value)(listed)
    with pytest.raises(LightningReplyError) as err:
        parse_channels(listed, load("pending_channels.json"), node="https://node:8080")
    assert err.value.field == field and problem in err.value.problem
    assert str(err.value).startswith(f"https://node:8080 ListChannels.{field}: ") and "\n" not in str(err.value)


def test_malformed_pending_forwards_and_info() -> None:
    pending = copy.deepcopy(load("pending_channels.json"))
    del pending["pending_open_channels"][0]["channel"]
    with pytest.raises(LightningReplyError, match=r"PendingChannels\.pending_open_channels\[0\]\.channel: None"):
        parse_channels(load("channels.json"), pending)
    pending = copy.deepcopy(load("pending_channels.json"))
    pending["waiting_close_channels"][0]["channel"]["initiator"] = 1
    with pytest.raises(LightningReplyError, match=r"channel\.initiator: 1 is not an Initiator name"):
        parse_channels(load("channels.json"), pending)
    for key, value, problem in (("fee_msat", "1", "is not amt_in_msat - amt_out_msat"),
                                ("amt_in_msat", _DELETE, "missing"), ("timestamp_ns", "x", "not an integer string")):
        history = copy.deepcopy(load("fwdinghistory_page.json"))
        _set(["forwarding_events", 1, key], value)(history)
        with pytest.raises(LightningReplyError) as err:
            parse_forwarding_page(history)
        assert err.value.field == f"forwarding_events[1].{key}" and problem in err.value.problem
    info = load("getinfo.json")
    del info["block_height"]
    with pytest.raises(LightningReplyError, match=r"GetInfo\.block_height: missing"):
        parse_info(info)


# --------------------------------------------------------------------------------------------
# Against the simulated LND
# --------------------------------------------------------------------------------------------

PEERS = ["03" + "1" * 64, "02" + "2" * 64, "03" + "3" * 64, "02" + "4" * 64]
NODE = NodeInfo(pubkey="02" + "9" * 64, alias="sim", implementation="lnd",
                version="0.18.3-beta commit=v0.18.3-beta", block_height=850_000, synced_to_chain=True)
T0 = 1_725_000_000.25


def _policy(base: int, ppm: int, disabled: bool = False) -> ChannelPolicy:
    return ChannelPolicy(base, ppm, 80, 1000, 990_000_000, disabled)


def _channels() -> list[Channel]:
    def chan(i: int, scid: str | None, state: str, **kw: Any) -> Channel:
        base = dict(channel_id=scid, channel_point=f"{i:064x}:{i % 2}", peer=PEERS[i % 4], state=state,
                    active=state == OPEN, capacity_sat=1_000_000, local_msat=400_000_000, remote_msat=596_530_000,
                    local_reserve_sat=10_000, remote_reserve_sat=10_000, initiator_local=True,
                    uptime_s=3600 if state == OPEN else None, lifetime_s=7200 if state == OPEN else None)
        return Channel(**(base | kw))
    return [
        chan(1, "800000x1x0", OPEN, local_policy=_policy(1000, 100), remote_policy=_policy(0, 1)),
        chan(2, "800001x2x1", OPEN, private=True, initiator_local=False, local_policy=_policy(0, 50),
             remote_policy=None),
        chan(3, "800002x3x0", OPEN, active=False, local_policy=_policy(10, 5, True), remote_policy=_policy(2, 2)),
        chan(4, "800003x4x1", OPEN, pending_htlcs=3, pending_htlc_msat=90_000_000, local_policy=_policy(1, 1),
             remote_policy=_policy(1, 1)),
        chan(5, "800004x5x0", OPEN),  # no policy: no graph edge
        chan(6, None, PENDING_OPEN, local_msat=996_530_000, remote_msat=0),
        chan(7, None, CLOSING, initiator_local=None),
    ]


def _forwards() -> list[Forward]:
    channels = ["800000x1x0", "800001x2x1", "800002x3x0", "800003x4x1"]
    out = [Forward(received=T0 + 10 * i, resolved=T0 + 10 * i + 0.125, in_channel=channels[i % 4],
                   out_channel=channels[(i + 1) % 4], in_msat=1_000_000 + i, out_msat=999_000, fee_msat=1000 + i,
                   outcome=SETTLED) for i in range(7)]
    out.append(Forward(T0 + 15, T0 + 16, channels[0], channels[1], 5000, 4000, 0, FAILED))
    out.append(Forward(T0 + 25, T0 + 25, channels[0], None, 5000, None, 0, LOCAL_FAILED, "UNKNOWN_NEXT_PEER"))
    out.append(Forward(T0 + 35, None, channels[0], channels[2], 5000, 4000, 0, OFFERED))
    return out


@pytest.fixture
def lnd(tmp_path: Path) -> Any:
    servers: list[LNDServer] = []

    def start(source: StaticSource | None = None, name: str = "lnd") -> tuple[LNDServer, StaticSource]:
        source = source or StaticSource(NODE, _channels(), _forwards())
        server = LNDServer(source, tmp_path / name).start()
        servers.append(server)
        return server, source

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def _client(server: LNDServer, **kw: Any) -> LNDClient:
    cfg = kw.pop("config", None) or LNDConfig(server.url, server.cert_path, server.macaroon_path, timeout_s=2.0)
    return LNDClient(cfg, **kw)


def test_round_trip(lnd: Any) -> None:
    server, source = lnd()
    assert (server.macaroon_path.stat().st_mode & 0o777) == 0o600
    client = _client(server, page_size=3)  # 7 settled forwards: pages of 3, 3, 1
    assert client.info() == NODE
    assert client.channels() == source.channel_list
    settled = [replace(f, received=f.resolved) for f in source.forward_list if f.outcome == SETTLED]
    assert client.forwards(T0, T0 + 1000) == settled  # LND stamps a forward when it settles
    assert client.forwards(T0 + 20.125, T0 + 40.125) == settled[2:4]  # [start, end) cut exactly
    assert _client(server, page_size=7).forwards(0, T0 + 1000) == settled  # a full page, then an empty one


@pytest.mark.parametrize("version", ["0.18.3-beta commit=v0.18.3-beta", "0.20.0-beta"])
def test_no_edge_and_no_forwards(lnd: Any, version: str) -> None:
    """"edge not found" is HTTP 500 code 2 before 0.20 and HTTP 404 code 5 since: both read as no policy."""
    channel = _channels()[4]
    server, _ = lnd(StaticSource(replace(NODE, version=version), [channel], []))
    client = _client(server)
    assert client.channels() == [channel] and client.forwards(0, T0) == []
    full = version if "commit=" in version else f"{version} commit=v{version}"  # the server adds LND's commit part
    assert client.info().version == full


def _raw(server: LNDServer, method: str, path: str, macaroon: str | None) -> tuple[int, Any]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(server.cert_path)
    conn = http.client.HTTPSConnection("localhost", server.port, context=context, timeout=2)
    try:
        conn.request(method, path, headers={MACAROON_HEADER: macaroon} if macaroon else {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_server_speaks_lnd_errors(lnd: Any) -> None:
    server, _ = lnd()
    good = server.macaroon_path.read_bytes().hex()
    assert _raw(server, "GET", "/v1/nosuch", good) == (404, load("error_unknown_path.json"))
    assert _raw(server, "GET", "/v1/getinfo", "02" + "00" * 40) == (500, load("error_bad_macaroon.json"))
    assert _raw(server, "POST", "/v1/getinfo", good)[0] == 405
    assert _raw(server, "GET", "/v1/getinfo", None)[1]["message"] == "expected 1 macaroon, got 0"
    status, reply = _raw(server, "GET", "/v1/getinfo", good)  # SANs localhost and 127.0.0.1: hostname checked
    assert status == 200 and reply["identity_pubkey"] == NODE.pubkey


def test_wrong_macaroon_and_certificate(lnd: Any, tmp_path: Path) -> None:
    server, _ = lnd()
    other, _ = lnd(name="other")
    wrong = tmp_path / "wrong.macaroon"
    wrong.write_bytes(b"\x02" + bytes(40))
    with pytest.raises(LightningAuthError, match="signature mismatch"):
        _client(server, config=LNDConfig(server.url, server.cert_path, wrong)).channels()
    with pytest.raises(LightningAuthError, match="cannot read the macaroon"):
        _client(server, config=LNDConfig(server.url, server.cert_path, tmp_path / "none")).info()
    with pytest.raises(LightningConnectionError, match="cannot use the TLS certificate"):
        _client(server, config=LNDConfig(server.url, server.macaroon_path, server.macaroon_path)).info()
    with pytest.raises(LightningConnectionError, match="does not verify against the pinned") as err:
        _client(server, config=LNDConfig(server.url, other.cert_path, server.macaroon_path)).info()
    assert "\n" not in str(err.value)


def test_unreachable_node(lnd: Any) -> None:
    server, _ = lnd()
    server.stop()
    with pytest.raises(LightningConnectionError, match="connection refused"):
        _client(server).forwards(0, T0)
    with socket.socket() as silent:  # accepts TCP, never answers the TLS handshake
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        cfg = LNDConfig(url, server.cert_path, server.macaroon_path, timeout_s=0.2)
        with pytest.raises(LightningConnectionError, match="no reply within 0.2 s"):
            LNDClient(cfg).info()


def test_old_node_refused(lnd: Any) -> None:
    server, _ = lnd(StaticSource(replace(NODE, version="0.15.5-beta"), _channels(), []))
    with pytest.raises(LightningVersionError, match="older than 0.16.0"):
        _client(server).channels()


def test_htlc_stream_delivers_failures_added_after_subscribing(lnd: Any) -> None:
    server, source = lnd()
    client = _client(server)
    client.info()  # the version check is done before listening

    def later() -> None:
        time.sleep(0.2)
        now = time.time()
        source.forward_list.append(Forward(now, now + 0.05, "800000x1x0", "800001x2x1", 7000, 6000, 0, FAILED))
        source.forward_list.append(Forward(now + 0.01, now + 0.01, "800002x3x0", None, 9000, None, 0,
                                           LOCAL_FAILED, "INSUFFICIENT_BALANCE"))
        source.forward_list.append(Forward(now + 0.02, now + 0.03, "800002x3x0", "800000x1x0", 9000, 8000, 1000,
                                           SETTLED))

    adder = threading.Thread(target=later)
    adder.start()
    try:
        seen = client.htlc_events(0.7)
    finally:
        adder.join()
    assert seen == source.forward_list[-3:-1]  # both failures, exactly; not the settle, nor the older ones
    assert client.problems == []


def test_stopping_ends_an_open_stream(lnd: Any) -> None:
    server, source = lnd()
    client = _client(server)
    threading.Timer(0.3, server.stop).start()
    assert client.htlc_events(5.0) == []
    assert any("shutting down" in p or "closed the stream" in p for p in client.problems)
