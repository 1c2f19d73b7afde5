"""The read-only Core Lightning adapter (core.lightning.cln) and the CLN-shaped server (anya_fl.simln.cln_server):
recorded replies parsed field by field, malformed replies refused naming the field, and a real unix socket."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from anya_fl.simln.cln_server import CLNServer, render_forward
from anya_fl.simln.static_source import StaticSource
from core.errors import ConfigError
from core.lightning.cln import (
    CLNClient,
    CLNConfig,
    CLNRPCError,
    parse_getinfo,
    parse_listforwards,
    parse_listpeerchannels,
    parse_version,
)
from core.lightning.model import (
    CLOSED,
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

FIXTURES = Path(__file__).parent / "fixtures" / "lightning" / "cln"


def reply(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def result(name: str) -> Any:
    return reply(name)["result"]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for sockets (AF_UNIX paths are limited to 108 bytes; tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(dir="/tmp", prefix="cln"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Recorded replies
# --------------------------------------------------------------------------------------------


def test_every_fixture_is_a_jsonrpc_reply() -> None:
    names = sorted(p.stem for p in FIXTURES.glob("*.json"))
    assert len(names) >= 15
    for name in names:
        r = reply(name)
        assert r["jsonrpc"] == "2.0" and ("result" in r) != ("error" in r), name


def test_getinfo_fixtures() -> None:
    info = parse_getinfo(result("getinfo_v26.09"))
    assert info == NodeInfo("033845802d25b4e074ccfd7cd8b339a41dc75bf9978a034800444b51d42b07799a",
                            "SILENTARTIST-v26.09", "cln", "v26.09", 114, True)
    syncing = parse_getinfo(result("getinfo_v24.08.1_syncing"))
    assert (syncing.version, syncing.block_height, syncing.synced_to_chain) == ("v24.08.1", 860123, False)
    old = parse_getinfo(result("getinfo_v23.02_msat_strings"))
    assert (old.version, old.block_height, old.synced_to_chain, old.alias) == ("v23.02.2", 780001, False, "ANYAFLTEST")


def test_versions_before_23_02_are_refused() -> None:
    with pytest.raises(LightningVersionError) as err:
        parse_getinfo(result("getinfo_v0.10.2"), "rpc")
    assert err.value.field == "version" and "older than v23.02" in str(err.value)
    assert "listpeerchannels" in str(err.value) and "\n" not in str(err.value)
    for text, parsed in [("v24.08.1", (24, 8, 1)), ("v24.08", (24, 8, 0)), ("v24.08.1-modded", (24, 8, 1)),
                         ("v24.11-12-gabcdef", (24, 11, 0)), ("23.02", (23, 2, 0)), ("lnd-0.18", None)]:
        assert parse_version(text) == parsed, text
    for version in ("v22.11.1", "v0.12.1"):
        with pytest.raises(LightningVersionError):
            parse_getinfo(dict(result("getinfo_v26.09"), version=version))
    with pytest.raises(LightningVersionError, match="not a Core Lightning version"):
        parse_getinfo(dict(result("getinfo_v26.09"), version="master"))
    assert parse_getinfo(dict(result("getinfo_v26.09"), version="v23.02")).version == "v23.02"


def test_listpeerchannels_normal_htlcs_and_closing() -> None:
    channels, problems = parse_listpeerchannels(result("listpeerchannels_v26.09"))
    assert problems == [] and len(channels) == 3
    policy = ChannelPolicy(base_fee_msat=1, fee_rate_ppm=10, time_lock_delta=6, min_htlc_msat=0,
                           max_htlc_msat=990000000)
    incoming, outgoing, closing = channels
    assert incoming == Channel(
        channel_id="116x1x1", channel_point="6958d6b2c23a79254dfd48b9b3d2a357c8c12c52a8bbd90bf48bd04e55996368:1",
        peer="038194b5f32bdf0aa59812c86c4ef7ad2f294104fa027d1ace9b469bb6f88cf37b", state=OPEN, active=True,
        capacity_sat=1_000_000, local_msat=609507210, remote_msat=390492790, pending_htlcs=1,
        pending_htlc_msat=4000082, local_reserve_sat=10000, remote_reserve_sat=10000, initiator_local=False,
        private=False, uptime_s=None, lifetime_s=None, local_policy=policy, remote_policy=policy)
    assert (outgoing.channel_id, outgoing.initiator_local, outgoing.local_msat, outgoing.remote_msat) == (
        "130x1x0", True, 899996000, 100004000)
    assert (outgoing.pending_htlcs, outgoing.pending_htlc_msat, outgoing.active) == (1, 4000041, True)
    assert (closing.state, closing.active, closing.channel_id, closing.pending_htlcs) == (CLOSING, False, "168x1x0", 0)
    assert closing.channel_point.endswith(":0") and closing.local_msat == 500000000


def test_listpeerchannels_v24_08_1() -> None:
    (channel,), problems = parse_listpeerchannels(result("listpeerchannels_v24.08.1"))
    assert problems == []
    assert (channel.channel_id, channel.state, channel.capacity_sat, channel.local_msat, channel.remote_msat) == (
        "109x1x1", OPEN, 1_000_000, 490518792, 509481208)
    assert channel.local_policy == ChannelPolicy(1, 10, 6, 0, 990000000)


def test_listpeerchannels_pending_private_onchain_and_openingd() -> None:
    channels, problems = parse_listpeerchannels(result("listpeerchannels_pending_onchain"))
    lockin, dual, onchain = channels
    assert lockin.channel_id is None and lockin.state == PENDING_OPEN and lockin.private is True
    assert lockin.active is False  # connected, but not open yet
    assert (lockin.capacity_sat, lockin.local_msat, lockin.remote_msat, lockin.initiator_local) == (
        2_000_000, 2_000_000_000, 0, True)
    assert lockin.local_policy == ChannelPolicy(1000, 100, 34, 1, 1980000000) and lockin.remote_policy is None
    assert lockin.local_reserve_sat == 20000
    assert (dual.state, dual.initiator_local, dual.local_msat, dual.remote_msat, dual.capacity_sat) == (
        PENDING_OPEN, False, 250_000_000, 250_000_000, 500_000)
    assert (onchain.state, onchain.channel_id, onchain.active, onchain.local_msat) == (
        CLOSING, "850000x12x1", False, 123456789)
    assert onchain.remote_policy == ChannelPolicy(2000, 250, 80, 1000, 990000000)
    assert len(problems) == 1 and "channels[3]: OPENINGD" in problems[0]


def test_listpeerchannels_msat_strings_v23_02() -> None:
    (channel,), _ = parse_listpeerchannels(result("listpeerchannels_v23.02_msat_strings"))
    assert (channel.channel_id, channel.state, channel.active, channel.capacity_sat) == (
        "780000x1x1", OPEN, True, 1_000_000)
    assert (channel.local_msat, channel.remote_msat, channel.local_reserve_sat, channel.remote_reserve_sat) == (
        490518792, 509481208, 10000, 10000)
    assert (channel.pending_htlcs, channel.pending_htlc_msat) == (2, 5_020_000)
    # no `updates` before v24.02: our policy from the top-level fields (no time-lock delta), none for the peer
    assert channel.local_policy == ChannelPolicy(1000, 10, None, 0, 990000000)
    assert channel.remote_policy is None
    # the same reply with integers instead of strings reads the same
    as_ints = _strings_to_ints(result("listpeerchannels_v23.02_msat_strings"))
    assert parse_listpeerchannels(as_ints)[0] == [channel]


def _strings_to_ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strings_to_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings_to_ints(v) for v in value]
    if isinstance(value, str) and value.endswith("msat") and value[:-4].isdigit():
        return int(value[:-4])
    return value


def test_listforwards_v26_09() -> None:
    forwards = parse_listforwards(result("listforwards_v26.09"))
    assert len(forwards) == 12
    assert [f.outcome for f in forwards].count(SETTLED) == 8
    assert forwards[0] == Forward(received=1738000000.0, resolved=1738000000.0, in_channel="116x1x1",
                                  out_channel="118x1x0", in_msat=10001, out_msat=10000, fee_msat=1, outcome=SETTLED)
    cltv = forwards[6]
    assert (cltv.outcome, cltv.out_channel, cltv.out_msat, cltv.fee_msat, cltv.resolved, cltv.failure) == (
        LOCAL_FAILED, "118x1x0", None, 0, None, "WIRE_INCORRECT_CLTV_EXPIRY")
    offered = forwards[8]
    assert (offered.outcome, offered.out_msat, offered.fee_msat, offered.resolved, offered.failure) == (
        OFFERED, 4000041, 0, None, None)  # fee_msat 41 is not earned until settled
    assert sum(f.fee_msat for f in forwards) == 1 + 1 + 101 + 1 + 1 + 1 + 501 + 501


def test_listforwards_failures_and_empty() -> None:
    failed, silent, local, offered = parse_listforwards(result("listforwards_failures"))
    assert failed == Forward(1727900000.125, 1727900001.5, "850000x12x1", "109x1x1", 2000210, 2000000, 0, FAILED,
                             "WIRE_INVALID_ONION_HMAC")
    assert (silent.outcome, silent.failure, silent.fee_msat, silent.resolved) == (FAILED, None, 0, 1727900012.25)
    assert local == Forward(1727900020.5, None, "850000x12x1", None, 1000100, None, 0, LOCAL_FAILED,
                            "WIRE_UNKNOWN_NEXT_PEER")
    assert (offered.outcome, offered.out_channel, offered.resolved) == (OFFERED, "109x1x1", None)
    assert parse_listforwards(result("listforwards_empty")) == []


def test_listforwards_msat_strings_v23_02() -> None:
    ancient, settled, local = parse_listforwards(result("listforwards_v23.02_msat_strings"))
    assert (ancient.received, ancient.resolved, ancient.fee_msat) == (0.0, None, 1)  # pre-v0.7: no times
    assert settled == Forward(1677700000.123, 1677700002.456, "780000x1x1", "780002x3x0", 50001000, 50000000, 1000,
                              SETTLED)
    assert (local.outcome, local.failure, local.out_msat) == (LOCAL_FAILED, "WIRE_FEE_INSUFFICIENT", None)


# --------------------------------------------------------------------------------------------
# Malformed replies: one line naming the field
# --------------------------------------------------------------------------------------------


def _set(path: list[Any], value: Any) -> Callable[[Any], None]:
    def apply(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        if value is _DELETE:
            del doc[path[-1]]
        else:
            doc[path[-1]] = value
    return apply


_DELETE = object()
_CHANNELS = "listpeerchannels_v26.09"
_FORWARDS = "listforwards_v26.09"

MALFORMED = [
    (_CHANNELS, ["channels", 2, "to_us_msat"], "12abc", LightningReplyError, "channels[2].to_us_msat",
     "'12abc' is not an msat amount"),
    (_CHANNELS, ["channels", 0, "total_msat"], _DELETE, LightningReplyError, "channels[0].total_msat", "missing"),
    (_CHANNELS, ["channels", 1, "to_us_msat"], -5, LightningReplyError, "channels[1].to_us_msat", "negative"),
    (_CHANNELS, ["channels", 0, "to_us_msat"], "-5msat", LightningReplyError, "channels[0].to_us_msat",
     "not an msat amount"),
    (_CHANNELS, ["channels", 0, "to_us_msat"], 2_000_000_000, LightningReplyError, "channels[0].to_us_msat",
     "exceeds total_msat"),
    (_CHANNELS, ["channels", 1, "peer_connected"], "yes", LightningReplyError, "channels[1].peer_connected",
     "not a boolean"),
    (_CHANNELS, ["channels", 0, "state"], "CHANNELD_TELEPORTING", LightningVersionError, "channels[0].state",
     "not a channel state this adapter knows"),
    (_CHANNELS, ["channels", 0, "htlcs", 0, "amount_msat"], 1.5, LightningReplyError,
     "channels[0].htlcs[0].amount_msat", "not an msat amount"),
    (_CHANNELS, ["channels", 0, "short_channel_id"], "116:1:1", LightningReplyError, "channels[0].short_channel_id",
     "not a short channel id"),
    (_CHANNELS, ["channels", 2, "funding_outnum"], "1", LightningReplyError, "channels[2].funding_outnum",
     "not an integer"),
    (_CHANNELS, ["channels", 0, "updates", "remote", "cltv_expiry_delta"], True, LightningReplyError,
     "channels[0].updates.remote.cltv_expiry_delta", "not an integer"),
    (_CHANNELS, ["channels", 1, "opener"], "both", LightningReplyError, "channels[1].opener", "not 'local'"),
    (_CHANNELS, ["channels"], {"0": {}}, LightningReplyError, "channels", "expected an array"),
    (_FORWARDS, ["forwards", 3, "in_msat"], _DELETE, LightningReplyError, "forwards[3].in_msat", "missing"),
    (_FORWARDS, ["forwards", 0, "received_time"], "yesterday", LightningReplyError, "forwards[0].received_time",
     "not a number"),
    (_FORWARDS, ["forwards", 0, "fee_msat"], -1, LightningReplyError, "forwards[0].fee_msat", "negative"),
    (_FORWARDS, ["forwards", 1, "out_msat"], _DELETE, LightningReplyError, "forwards[1].out_msat",
     "missing for a settled forward"),
    (_FORWARDS, ["forwards", 2, "status"], "teleported", LightningVersionError, "forwards[2].status",
     "not a forward status"),
    (_FORWARDS, ["forwards", 4], ["not", "an", "object"], LightningReplyError, "forwards[4]", "expected an object"),
    ("getinfo_v26.09", ["blockheight"], "114", LightningReplyError, "blockheight", "not an integer"),
    ("getinfo_v26.09", ["id"], "02abc", LightningReplyError, "id", "not a node public key"),
]


def _parse(name: str, doc: Any) -> Any:
    if name.startswith("listpeerchannels"):
        return parse_listpeerchannels(doc, "rpc")
    if name.startswith("listforwards"):
        return parse_listforwards(doc, "rpc")
    return parse_getinfo(doc, "rpc")


@pytest.mark.parametrize(("name", "path", "value", "error", "field", "problem"), MALFORMED,
                         ids=[f"{m[4]}={m[2]!r}"[:50] for m in MALFORMED])
def test_malformed_reply_names_the_field(name: str, path: list[Any], value: Any, error: type, field: str,
                                         problem: str) -> None:
    doc = copy.deepcopy(result(name))
    _set(path, value)(doc)
    with pytest.raises(error) as err:
        _parse(name, doc)
    assert err.value.field == field, str(err.value)
    assert problem in err.value.problem and "\n" not in str(err.value)
    assert str(err.value).startswith(f"rpc {name.split('_')[0]}.{field}: ")


def test_malformed_top_level() -> None:
    with pytest.raises(LightningReplyError, match="expected an object"):
        parse_listpeerchannels(["channels"])
    with pytest.raises(LightningReplyError, match=r"forwards: missing"):
        parse_listforwards({})


# --------------------------------------------------------------------------------------------
# A raw unix-socket peer for the transport's edge cases and for replaying fixtures
# --------------------------------------------------------------------------------------------


class RawServer:
    """Answers each connection's one request with ``respond(request)``: bytes ending in ``\\n\\n`` (or b"") are
    sent and the connection kept until the client closes it; other bytes are sent and the connection closed at
    once (a reply cut short); None closes without a word."""

    def __init__(self, path: Path, respond: Callable[[dict[str, Any]], bytes | None]) -> None:
        self.path, self.respond = path, respond
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(4)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
            try:
                request = json.loads(data)
                break
            except ValueError:
                continue
        answer = self.respond(request)
        if answer is None:
            return
        conn.sendall(answer)
        if answer == b"" or answer.endswith(b"\n\n"):
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.listener.close()


def _replay(files: dict[str, str]) -> Callable[[dict[str, Any]], bytes]:
    """Answer each method with its fixture, the id set to the request's (as lightningd echoes it)."""
    def respond(request: dict[str, Any]) -> bytes:
        answer = dict(reply(files[request["method"]]), id=request["id"])
        return json.dumps(answer).encode() + b"\n\n"
    return respond


@pytest.fixture
def raw_server(sock_dir: Path) -> Iterator[Callable[..., CLNClient]]:
    servers: list[RawServer] = []

    def make(respond: Callable[[dict[str, Any]], bytes | None], timeout_s: float = 2.0) -> CLNClient:
        servers.append(RawServer(sock_dir / "lightning-rpc", respond))
        return CLNClient(CLNConfig(sock_dir / "lightning-rpc", timeout_s))

    yield make
    for server in servers:
        server.stop()


def test_fixtures_replayed_over_a_socket(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(_replay({"getinfo": "getinfo_v23.02_msat_strings",
                                 "listpeerchannels": "listpeerchannels_pending_onchain",
                                 "listforwards": "listforwards_v23.02_msat_strings"}))
    assert client.info().version == "v23.02.2"
    assert [c.state for c in client.channels()] == [PENDING_OPEN, PENDING_OPEN, CLOSING]
    assert len(client.problems) == 1
    assert [f.outcome for f in client.forwards(1677700000, 1677700101)] == [SETTLED, LOCAL_FAILED]
    assert client.forwards(0, 1) == parse_listforwards(result("listforwards_v23.02_msat_strings"))[:1]


def test_error_object_becomes_a_lightning_error(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(_replay({"getinfo": "error_unknown_parameter"}))
    with pytest.raises(CLNRPCError) as err:
        client.info()
    assert err.value.code == -32602 and "unknown parameter: index" in str(err.value)
    assert isinstance(err.value, LightningError) and "\n" not in str(err.value)


def test_malformed_request_error_has_a_null_id(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(lambda req: json.dumps(reply("error_malformed_request")).encode() + b"\n\n")
    with pytest.raises(CLNRPCError) as err:
        client.info()
    assert err.value.code == -32600 and "must be specified" in err.value.rpc_message


def test_reply_cut_short_or_missing(raw_server: Callable[..., CLNClient]) -> None:
    full = json.dumps(dict(reply("getinfo_v26.09"), id="x")).encode()
    client = raw_server(lambda req: full[: len(full) // 2])
    with pytest.raises(LightningConnectionError, match="connection closed mid-reply"):
        client.info()


def test_server_closes_without_a_reply(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(lambda req: None)
    with pytest.raises(LightningConnectionError, match="connection closed without a reply"):
        client.info()


def test_silent_server_times_out(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(lambda req: b"", timeout_s=0.2)
    with pytest.raises(LightningConnectionError, match=r"no reply within 0.2 s"):
        client.info()


def test_wrong_id_and_not_json(raw_server: Callable[..., CLNClient]) -> None:
    answers = iter([json.dumps(dict(reply("getinfo_v26.09"), id="other#9")).encode() + b"\n\n",
                    b"<html>502 Bad Gateway</html>\n\n"])
    client = raw_server(lambda req: next(answers))
    with pytest.raises(LightningReplyError) as err:
        client.info()
    assert err.value.field == "id"
    with pytest.raises(LightningReplyError, match="not JSON"):
        client.info()


def test_complete_object_without_the_end_mark_is_read(raw_server: Callable[..., CLNClient]) -> None:
    client = raw_server(lambda req: json.dumps(dict(reply("getinfo_v26.09"), id=req["id"])).encode() + b" ")
    assert client.info().block_height == 114


# --------------------------------------------------------------------------------------------
# The adapter against CLNServer over a StaticSource
# --------------------------------------------------------------------------------------------

US = "02" + "11" * 32
PEERS = ["03" + f"{i:02x}" * 32 for i in range(1, 5)]
FULL = ChannelPolicy(base_fee_msat=1000, fee_rate_ppm=100, time_lock_delta=34, min_htlc_msat=1,
                     max_htlc_msat=990_000_000)
T0 = 1_727_900_000.0
THEIRS = ChannelPolicy(base_fee_msat=0, fee_rate_ppm=250, time_lock_delta=80, min_htlc_msat=1000,
                       max_htlc_msat=500_000_000)


def _source(version: str = "v24.08.1") -> StaticSource:
    channels = [
        Channel("850000x1x0", "aa" * 32 + ":0", PEERS[0], OPEN, True, 1_000_000, 600_000_000, 400_000_000,
                pending_htlcs=3, pending_htlc_msat=7_000_001, local_reserve_sat=10_000, remote_reserve_sat=10_000,
                initiator_local=True, private=False, local_policy=FULL, remote_policy=THEIRS),
        Channel("850001x7x1", "bb" * 32 + ":1", PEERS[1], OPEN, False, 2_000_000, 0, 2_000_000_000,
                local_reserve_sat=20_000, remote_reserve_sat=20_000, initiator_local=False, private=True,
                local_policy=FULL, remote_policy=None),
        Channel(None, "cc" * 32 + ":2", PEERS[2], PENDING_OPEN, False, 500_000, 500_000_000, 0,
                initiator_local=True, local_policy=FULL),
        Channel("840000x3x0", "dd" * 32 + ":0", PEERS[3], CLOSING, False, 300_000, 123_456_000, 176_544_000,
                local_reserve_sat=3000, remote_reserve_sat=3000, initiator_local=False, local_policy=FULL,
                remote_policy=THEIRS),
    ]
    t0 = T0
    forwards = [
        Forward(t0 + 0.125, t0 + 1.5, "850000x1x0", "850001x7x1", 2_000_210, 2_000_000, 210, SETTLED),
        Forward(t0 + 10, t0 + 12.25, "850000x1x0", "850001x7x1", 3_000_300, 3_000_000, 0, FAILED),
        Forward(t0 + 20, t0 + 21, "850000x1x0", "850001x7x1", 3_000_300, 3_000_000, 0, FAILED,
                "WIRE_INVALID_ONION_HMAC"),
        Forward(t0 + 30.5, None, "850000x1x0", None, 1_000_100, None, 0, LOCAL_FAILED, "WIRE_UNKNOWN_NEXT_PEER"),
        Forward(t0 + 40, t0 + 40.001, "850001x7x1", "850000x1x0", 10_000, None, 0, LOCAL_FAILED, "failcode 4108"),
        Forward(t0 + 50.75, None, "850001x7x1", "850000x1x0", 4_000_082, 4_000_041, 0, OFFERED),
        Forward(t0 + 60, t0 + 61, "850001x7x1", "840000x3x0", 50_001_000, 50_000_000, 1000, SETTLED),
    ]
    return StaticSource(NodeInfo(US, "anya-sim", "cln", version, 860_000, True), channels, forwards)


@pytest.fixture
def serve(sock_dir: Path) -> Iterator[Callable[..., tuple[CLNServer, CLNClient]]]:
    servers: list[CLNServer] = []

    def make(source: StaticSource, msat_strings: bool = False, page_limit: int = 5000) -> tuple[CLNServer, CLNClient]:
        path = sock_dir / f"rpc{len(servers)}"
        servers.append(CLNServer(source, path, msat_strings=msat_strings).start())
        return servers[-1], CLNClient(CLNConfig(path, timeout_s=2.0), page_limit=page_limit)

    yield make
    for server in servers:
        server.stop()


@pytest.mark.parametrize("msat_strings", [False, True], ids=["msat-integers", "msat-strings"])
def test_round_trip(serve: Callable[..., tuple[CLNServer, CLNClient]], msat_strings: bool) -> None:
    source = _source()
    server, client = serve(source, msat_strings=msat_strings, page_limit=3)
    assert client.info() == source.node
    assert client.channels() == source.channel_list and client.problems == []
    assert client.forwards(0, 2e9) == source.forward_list
    assert client.forwards(T0 + 10, T0 + 40) == source.forward_list[1:4]  # [start, end)
    assert client.forwards(T0 + 100, T0 + 200) == []
    # three pages of three (the last short) for each full read, after one getinfo
    assert server.requests.count("listforwards") == 3 * 3 and "stop" not in server.requests


def test_round_trip_v23_02_reads_without_paging_or_updates(serve: Callable[..., tuple[CLNServer, CLNClient]]) -> None:
    source = _source("v23.02")
    source.node = NodeInfo(US, "anya-sim", "cln", "v23.02", 780_000, False)
    server, client = serve(source, msat_strings=True)
    assert client.info() == source.node
    expected = [Channel(**{**c.__dict__, "local_policy": ChannelPolicy(1000, 100, None, 1, 990_000_000),
                           "remote_policy": None}) for c in source.channel_list]
    assert client.channels() == expected
    assert client.forwards(0, 2e9) == source.forward_list
    assert server.requests == ["getinfo", "listpeerchannels", "listforwards"]
    with pytest.raises(CLNRPCError) as err:  # index/start/limit came in v23.11
        client.call("listforwards", {"index": "created", "start": 0, "limit": 10})
    assert err.value.code == -32602 and "unknown parameter: index" in err.value.rpc_message


def test_server_leaves_closed_channels_out_and_renders_cln_shapes(
        serve: Callable[..., tuple[CLNServer, CLNClient]]) -> None:
    source = _source()
    source.channel_list.append(Channel("800000x1x1", "ee" * 32 + ":1", PEERS[0], CLOSED, False, 1000, 0, 1_000_000))
    server, client = serve(source, msat_strings=True)
    raw = client.call("listpeerchannels")["channels"]
    assert len(raw) == 4 and raw[0]["state"] == "CHANNELD_NORMAL" and raw[0]["to_us_msat"] == "600000000msat"
    assert raw[0]["updates"]["remote"]["fee_base_msat"] == "0msat" and "short_channel_id" not in raw[2]
    assert raw[0]["direction"] == 0 and raw[0]["htlcs"][0]["amount_msat"] == "2333335msat"
    fwd = client.call("listforwards")["forwards"]
    assert fwd[2]["failcode"] == 49157 and fwd[4] == render_forward(source.forward_list[4], 5, strings=True)
    assert "failreason" not in fwd[4] and fwd[4]["failcode"] == 4108
    info = client.call("getinfo")
    assert info["fees_collected_msat"] == "1210msat" and info["num_active_channels"] == 2


def test_unknown_method_gets_clns_error_object(serve: Callable[..., tuple[CLNServer, CLNClient]]) -> None:
    server, _ = serve(_source())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(str(server.socket_path))
        sock.sendall(b'{"jsonrpc": "2.0", "id": "t#1", "method": "stop", "params": {}}'
                     b'{"jsonrpc": "2.0", "id": 2, "method": "getinfo", "params": {"x": 1}}')
        data = b""
        while data.count(b"\n\n") < 2:
            data += sock.recv(65536)
    first, second = (json.loads(part) for part in data.split(b"\n\n")[:2])
    assert first == {"jsonrpc": "2.0", "id": "t#1", "error": {"code": -32601, "message": "Unknown command 'stop'"}}
    assert second["id"] == 2 and second["error"]["code"] == -32602
    assert reply("error_unknown_command")["error"]["code"] == first["error"]["code"]


def test_methods_outside_the_allow_list_are_never_sent(serve: Callable[..., tuple[CLNServer, CLNClient]]) -> None:
    server, client = serve(_source())
    for method in ("stop", "pay", "close", "withdraw", "listchannels", "getinfo ", "GETINFO", ["getinfo"]):
        with pytest.raises(LightningError, match="not one of the read-only methods"):
            client.call(method)  # type: ignore[arg-type]
    assert server.requests == []
    client.info()
    assert server.requests == ["getinfo"]


def test_socket_is_0600_and_stop_cleans_up(sock_dir: Path) -> None:
    before = threading.active_count()
    server = CLNServer(_source(), sock_dir / "lightning-rpc").start()
    client = CLNClient(CLNConfig(sock_dir / "lightning-rpc", 2.0))
    client.info()
    mode = os.stat(server.socket_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:  # a connection left open is closed by stop()
        idle.settimeout(2)
        idle.connect(str(server.socket_path))
        idle.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "getinfo", "params": []}')
        data = b""
        while not data.endswith(b"\n\n"):
            data += idle.recv(65536)
        assert data.startswith(b'{"jsonrpc":"2.0","id":1,"result":{')
        server.stop()
        assert idle.recv(65536) == b""
    assert not server.socket_path.exists() and threading.active_count() == before
    with pytest.raises(LightningConnectionError):
        client.info()


def test_no_socket_and_refused(sock_dir: Path) -> None:
    with pytest.raises(LightningConnectionError, match="no socket here") as err:
        CLNClient(CLNConfig(sock_dir / "missing-rpc", 1.0)).channels()
    assert err.value.call == "getinfo" and str(sock_dir / "missing-rpc") in str(err.value)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:  # bound but not listening
        bound.bind(str(sock_dir / "dead-rpc"))
        with pytest.raises(LightningConnectionError, match="connection refused"):
            CLNClient(CLNConfig(sock_dir / "dead-rpc", 1.0)).info()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions on sockets")
def test_socket_without_permission(serve: Callable[..., tuple[CLNServer, CLNClient]]) -> None:
    server, client = serve(_source())
    os.chmod(server.socket_path, 0)
    with pytest.raises(LightningAuthError, match="permission denied"):
        client.info()


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="cln.socket_path"):
        CLNConfig(Path("/tmp/" + "x" * 120))
    with pytest.raises(ConfigError, match="cln.timeout_s"):
        CLNConfig(Path("/tmp/rpc"), timeout_s=0)
    assert CLNConfig("/tmp/rpc").socket_path == Path("/tmp/rpc")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cln.page_limit"):
        CLNClient(CLNConfig(Path("/tmp/rpc")), page_limit=0)
