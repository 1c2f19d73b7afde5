"""A loopback HTTPS server answering as LND's REST proxy does, rendering a ``LightningSource``'s model objects in
LND's shapes (those of LND 0.18.3, grpc-gateway v2: proto field names, every field emitted, 64-bit integers as
decimal strings, enums by name): the inverse of ``core.lightning.lnd``.

Endpoints: ``GET /v1/getinfo``, ``GET /v1/channels``, ``GET /v1/channels/pending``,
``GET /v1/graph/edge/{chan_id}``, ``POST /v1/switch`` (settled forwards only, stamped at settlement, paged by
``index_offset``/``num_max_events``) and ``GET /v2/router/htlcevents`` (newline-delimited ``{"result": ...}``
events, opened by a ``subscribed_event``, for forwards the source reports with ``received`` at or after the
subscription; the source is polled every 0.1 s). Anything else: grpc-gateway's 404 (or 405 for a known path
with another method). A call without ``state_dir/readonly.macaroon`` in the ``Grpc-Metadata-macaroon`` header
(hex) gets LND's HTTP 500 ``{"code": 2, "message": ...}``.

Rendering, and so what reads back through the adapter: balances and HTLC amounts are whole satoshis (msat
truncated, as LND's are); CLOSING channels are rendered as waiting-close; an open channel whose two policies are
None has no graph edge ("edge not found": HTTP 500 code 2 before LND 0.20, HTTP 404 code 5 since, following the
source's version); a local failure's ``failure`` is rendered as an LND FailureDetail or BOLT wire-code name when
it is one, else as ``failure_string``.

``state_dir`` (tls.cert, tls.key, readonly.macaroon: kept across restarts, as LND keeps them) and the port are all
it touches. ``start()`` listens, ``stop()`` closes every connection and joins every thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import math
import re
import secrets
import select
import socket
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.lightning.lnd import MACAROON_HEADER, parse_version, scid_to_int
from core.lightning.model import (
    CLOSING,
    FAILED,
    LOCAL_FAILED,
    OPEN,
    PENDING_OPEN,
    SETTLED,
    Channel,
    ChannelPolicy,
    Forward,
    LightningSource,
    NodeInfo,
)
from core.storage import atomic_write_bytes

__all__ = ["LNDServer", "render_channel", "render_edge", "render_forwarding_event", "render_getinfo",
           "render_pending"]

POLL_S = 0.1
HANDSHAKE_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 10.0
MAX_BODY = 1 << 20
_EDGE = re.compile(r"/v1/graph/edge/([^/]*)\Z")
_PATHS = {"/v1/getinfo": "GET", "/v1/channels": "GET", "/v1/channels/pending": "GET", "/v1/switch": "POST",
          "/v2/router/htlcevents": "GET"}
_HISTORY_FIELDS = {"start_time", "end_time", "index_offset", "num_max_events", "peer_alias_lookup",
                   "incoming_chan_ids", "outgoing_chan_ids"}
# LND's FailureDetail names the adapter reports as a local failure's reason: (BOLT wire code, failure_string)
_DETAILS = {
    "ONION_DECODE": ("INVALID_ONION_VERSION", "could not decode wire failure"),
    "LINK_NOT_ELIGIBLE": ("UNKNOWN_NEXT_PEER", "link not eligible"),
    "ON_CHAIN_TIMEOUT": ("PERMANENT_CHANNEL_FAILURE", "payment was resolved on-chain, then canceled back"),
    "HTLC_EXCEEDS_MAX": ("TEMPORARY_CHANNEL_FAILURE", "htlc exceeds maximum policy amount"),
    "INSUFFICIENT_BALANCE": ("TEMPORARY_CHANNEL_FAILURE", "insufficient bandwidth to route htlc"),
    "INCOMPLETE_FORWARD": ("TEMPORARY_CHANNEL_FAILURE", "failed after detecting incomplete forward"),
    "HTLC_ADD_FAILED": ("TEMPORARY_CHANNEL_FAILURE", "could not add downstream htlc"),
    "FORWARDS_DISABLED": ("TEMPORARY_CHANNEL_FAILURE", "node configured to disallow forwards"),
    "CIRCULAR_ROUTE": ("TEMPORARY_CHANNEL_FAILURE", "same incoming and outgoing channel"),
}
_WIRE_CODES = (
    "INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS", "INCORRECT_PAYMENT_AMOUNT", "FINAL_INCORRECT_CLTV_EXPIRY",
    "FINAL_INCORRECT_HTLC_AMOUNT", "FINAL_EXPIRY_TOO_SOON", "INVALID_REALM", "EXPIRY_TOO_SOON",
    "INVALID_ONION_VERSION", "INVALID_ONION_HMAC", "INVALID_ONION_KEY", "AMOUNT_BELOW_MINIMUM", "FEE_INSUFFICIENT",
    "INCORRECT_CLTV_EXPIRY", "CHANNEL_DISABLED", "TEMPORARY_CHANNEL_FAILURE", "REQUIRED_NODE_FEATURE_MISSING",
    "REQUIRED_CHANNEL_FEATURE_MISSING", "UNKNOWN_NEXT_PEER", "TEMPORARY_NODE_FAILURE", "PERMANENT_NODE_FAILURE",
    "PERMANENT_CHANNEL_FAILURE", "EXPIRY_TOO_FAR", "MPP_TIMEOUT", "INVALID_ONION_PAYLOAD", "INVALID_ONION_BLINDING",
    "INTERNAL_FAILURE",
)
_FEATURES = {"0": ("data-loss-protect", True), "5": ("upfront-shutdown-script", False),
             "7": ("gossip-queries", False), "9": ("tlv-onion", False), "12": ("static-remote-key", True),
             "14": ("payment-addr", True), "17": ("multi-path-payments", False),
             "23": ("anchors-zero-fee-htlc-tx", False), "27": ("shutdown-any-segwit", False), "31": ("amp", False),
             "45": ("explicit-commitment-type", False)}


class _Fault(Exception):
    """An error reply in grpc-gateway's shape: ``{"code", "message", "details": []}`` with its HTTP status."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": []}


# --------------------------------------------------------------------------------------------
# Rendering: model -> LND JSON
# --------------------------------------------------------------------------------------------


def _hex(seed: str, size: int = 32) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[: 2 * size]


def _b64(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


def _ns(t: float) -> int:
    """UNIX seconds -> nanoseconds, exactly (so that ns / 1e9 reads back the same float)."""
    return round(Fraction(t) * 1_000_000_000)


def _sat(msat: int) -> str:
    return str(msat // 1000)


def _version_text(info: NodeInfo) -> str:
    """LND's ``"0.18.3-beta commit=v0.18.3-beta"``: the source's version as is when it has the commit part."""
    return info.version if "commit=" in info.version else f"{info.version} commit=v{info.version}"


def render_getinfo(info: NodeInfo, channels: list[Channel]) -> dict[str, Any]:
    """``GET /v1/getinfo`` as LND 0.18.3 answers it."""
    open_ = [c for c in channels if c.state == OPEN]
    return {
        "version": _version_text(info),
        "commit_hash": _hex(_version_text(info), 20),
        "identity_pubkey": info.pubkey,
        "alias": info.alias,
        "color": "#3399ff",
        "num_pending_channels": sum(c.state == PENDING_OPEN for c in channels),
        "num_active_channels": sum(c.active for c in open_),
        "num_inactive_channels": sum(not c.active for c in open_),
        "num_peers": len({c.peer for c in open_ if c.active}),
        "block_height": info.block_height,
        "block_hash": _hex(f"block {info.block_height}"),
        "best_header_timestamp": str(int(time.time())),
        "synced_to_chain": bool(info.synced_to_chain),
        "synced_to_graph": True,
        "testnet": False,
        "chains": [{"chain": "bitcoin", "network": "regtest"}],
        "uris": [],
        "features": {k: {"name": n, "is_required": r, "is_known": True} for k, (n, r) in _FEATURES.items()},
        "require_htlc_interceptor": False,
        "store_final_htlc_resolutions": False,
    }


def _constraints(reserve_sat: int | None) -> dict[str, Any]:
    return {"csv_delay": 144, "chan_reserve_sat": str(reserve_sat or 0), "dust_limit_sat": "354",
            "max_pending_amt_msat": "990000000", "min_htlc_msat": "1", "max_accepted_htlcs": 483}


def _htlcs(channel: Channel, height: int) -> list[dict[str, Any]]:
    """``pending_htlcs``: ``pending_htlcs`` entries sharing ``pending_htlc_msat`` (whole sat, first one the rest)."""
    n = channel.pending_htlcs
    if n <= 0:
        return []
    total = channel.pending_htlc_msat // 1000
    amounts = [total // n + (total % n if i == 0 else 0) for i in range(n)]
    return [{"incoming": i % 2 == 1, "amount": str(a), "hash_lock": _b64(f"{channel.channel_point} {i}"),
             "expiration_height": height + 40 + i, "htlc_index": str(i), "forwarding_channel": "0",
             "forwarding_htlc_index": "0"} for i, a in enumerate(amounts)]


def render_channel(channel: Channel, height: int) -> dict[str, Any]:
    """One open channel of ``GET /v1/channels``."""
    return {
        "active": channel.active,
        "remote_pubkey": channel.peer,
        "channel_point": channel.channel_point,
        "chan_id": str(scid_to_int(channel.channel_id or "")),
        "capacity": str(channel.capacity_sat),
        "local_balance": _sat(channel.local_msat),
        "remote_balance": _sat(channel.remote_msat),
        "commit_fee": "2810",
        "commit_weight": "1116",
        "fee_per_kw": "2500",
        "unsettled_balance": _sat(channel.pending_htlc_msat),
        "total_satoshis_sent": "0",
        "total_satoshis_received": "0",
        "num_updates": str(2 * channel.pending_htlcs),
        "pending_htlcs": _htlcs(channel, height),
        "csv_delay": 144,
        "private": channel.private,
        "initiator": bool(channel.initiator_local),
        "chan_status_flags": "ChanStatusDefault",
        "local_chan_reserve_sat": str(channel.local_reserve_sat or 0),
        "remote_chan_reserve_sat": str(channel.remote_reserve_sat or 0),
        "static_remote_key": True,
        "commitment_type": "ANCHORS",
        "lifetime": str(channel.lifetime_s or 0),
        "uptime": str(channel.uptime_s or 0),
        "close_address": "",
        "push_amount_sat": "0",
        "thaw_height": 0,
        "local_constraints": _constraints(channel.local_reserve_sat),
        "remote_constraints": _constraints(channel.remote_reserve_sat),
        "alias_scids": [],
        "zero_conf": False,
        "zero_conf_confirmed_scid": "0",
        "peer_alias": "",
        "peer_scid_alias": "0",
        "memo": "",
    }


def _initiator(local: bool | None) -> str:
    if local is None:
        return "INITIATOR_UNKNOWN"
    return "INITIATOR_LOCAL" if local else "INITIATOR_REMOTE"


def _pending_channel(channel: Channel) -> dict[str, Any]:
    closing = channel.state == CLOSING
    return {
        "remote_node_pub": channel.peer,
        "channel_point": channel.channel_point,
        "capacity": str(channel.capacity_sat),
        "local_balance": _sat(channel.local_msat),
        "remote_balance": _sat(channel.remote_msat),
        "local_chan_reserve_sat": str(channel.local_reserve_sat or 0),
        "remote_chan_reserve_sat": str(channel.remote_reserve_sat or 0),
        "initiator": _initiator(channel.initiator_local),
        "commitment_type": "ANCHORS",
        "num_forwarding_packages": "0",
        "chan_status_flags": "ChanStatusCoopBroadcasted|ChanStatusLocalCloseInitiator" if closing
        else "ChanStatusDefault",
        "private": channel.private,
        "memo": "",
    }


def render_pending(channels: list[Channel]) -> dict[str, Any]:
    """``GET /v1/channels/pending``: PENDING_OPEN channels pending open, CLOSING ones waiting close."""
    opening = [{"channel": _pending_channel(c), "commit_fee": "2810", "commit_weight": "1116", "fee_per_kw": "2500",
                "funding_expiry_blocks": 2014} for c in channels if c.state == PENDING_OPEN]
    closing = []
    for c in channels:
        if c.state != CLOSING:
            continue
        txid = _hex(f"close {c.channel_point}")
        closing.append({"channel": _pending_channel(c), "limbo_balance": _sat(c.local_msat),
                        "commitments": {"local_txid": _hex(f"local {c.channel_point}"),
                                        "remote_txid": _hex(f"remote {c.channel_point}"), "remote_pending_txid": "",
                                        "local_commit_fee_sat": "2810", "remote_commit_fee_sat": "2810",
                                        "remote_pending_commit_fee_sat": "0"},
                        "closing_txid": txid, "closing_tx_hex": ""})
    return {"total_limbo_balance": str(sum(int(c["limbo_balance"]) for c in closing)),
            "pending_open_channels": opening, "pending_closing_channels": [], "pending_force_closing_channels": [],
            "waiting_close_channels": closing}


def _policy(policy: ChannelPolicy | None, updated: int) -> dict[str, Any] | None:
    if policy is None:
        return None
    return {"time_lock_delta": policy.time_lock_delta or 0, "min_htlc": str(policy.min_htlc_msat or 0),
            "fee_base_msat": str(policy.base_fee_msat), "fee_rate_milli_msat": str(policy.fee_rate_ppm),
            "disabled": policy.disabled, "max_htlc_msat": str(policy.max_htlc_msat or 0), "last_update": updated,
            "custom_records": {}, "inbound_fee_base_msat": 0, "inbound_fee_rate_milli_msat": 0}


def render_edge(channel: Channel, our_pubkey: str) -> dict[str, Any]:
    """``GET /v1/graph/edge/{chan_id}``: node1 is the lesser key (BOLT 7), each side with its own policy."""
    updated = int(time.time())
    ours, theirs = _policy(channel.local_policy, updated), _policy(channel.remote_policy, updated)
    we_are_1 = our_pubkey < channel.peer
    return {"channel_id": str(scid_to_int(channel.channel_id or "")), "chan_point": channel.channel_point,
            "last_update": updated, "node1_pub": our_pubkey if we_are_1 else channel.peer,
            "node2_pub": channel.peer if we_are_1 else our_pubkey, "capacity": str(channel.capacity_sat),
            "node1_policy": ours if we_are_1 else theirs, "node2_policy": theirs if we_are_1 else ours,
            "custom_records": {}}


def _settled_at(fw: Forward) -> float:
    return fw.resolved if fw.resolved is not None else fw.received


def render_forwarding_event(fw: Forward) -> dict[str, Any]:
    """One settled forward as ``forwarding_events[i]`` (stamped at settlement, as LND's log is)."""
    ns = _ns(_settled_at(fw))
    out_msat = fw.out_msat if fw.out_msat is not None else fw.in_msat - fw.fee_msat
    return {"timestamp": str(ns // 1_000_000_000), "chan_id_in": str(scid_to_int(fw.in_channel)),
            "chan_id_out": str(scid_to_int(fw.out_channel or "")), "amt_in": _sat(fw.in_msat),
            "amt_out": _sat(out_msat), "fee": _sat(fw.fee_msat), "fee_msat": str(fw.fee_msat),
            "amt_in_msat": str(fw.in_msat), "amt_out_msat": str(out_msat), "timestamp_ns": str(ns),
            "peer_alias_in": "", "peer_alias_out": ""}


def _link_failure_fields(failure: str | None) -> tuple[str, str, str]:
    """(wire_failure, failure_detail, failure_string) for a local failure's reason (the adapter's inverse)."""
    if failure in _DETAILS:
        wire, text = _DETAILS[failure]
        return wire, failure, text
    if failure in _WIRE_CODES:
        return failure, "NO_DETAIL", failure.replace("_", " ").lower()
    return "UNKNOWN_FAILURE", "NO_DETAIL", failure or ""


class _HtlcFeed:
    """The events one subscriber has been sent, so each forward's next stage is sent once."""

    def __init__(self, since: float) -> None:
        self.since = since
        self._sent: dict[tuple[Any, ...], tuple[str, int, int]] = {}
        self._next_id: dict[str, int] = {}

    def _htlc_id(self, channel: str | None) -> int:
        if channel is None:
            return 0
        n = self._next_id.get(channel, 0)
        self._next_id[channel] = n + 1
        return n

    def lines(self, forwards: list[Forward]) -> list[dict[str, Any]]:
        """The events not yet sent for the forwards received since the subscription, oldest first."""
        out: list[dict[str, Any]] = []
        for fw in sorted(forwards, key=lambda f: f.received):
            if fw.received < self.since:
                continue
            key = (fw.received, fw.in_channel, fw.out_channel, fw.in_msat, fw.out_msat)
            stage, in_id, out_id = self._sent.get(key, ("", -1, -1))
            if stage == "done":
                continue
            if in_id < 0:
                in_id, out_id = self._htlc_id(fw.in_channel), self._htlc_id(fw.out_channel)
            events, stage = _next_events(fw, stage, (fw.in_channel, in_id, fw.out_channel, out_id))
            out += events
            self._sent[key] = (stage, in_id, out_id)
        return out


def _next_events(fw: Forward, stage: str, ids: tuple[str, int, str | None, int]) -> tuple[list[dict[str, Any]], str]:
    """(events, new stage) taking ``fw`` from ``stage`` ("" or "offered") to where its outcome says it is: a
    local failure is one link_fail_event; a forward is offered (forward_event), then settled or failed downstream
    (settle_event / forward_fail_event, then final_htlc_event)."""
    if fw.outcome == LOCAL_FAILED:
        return [_event(ids, fw.received, "link_fail_event", _link_fail(fw))], "done"
    events = []
    if stage == "":
        events.append(_event(ids, fw.received, "forward_event", {"info": _info(fw)}))
        stage = "offered"
    if fw.outcome in (FAILED, SETTLED):
        settled = fw.outcome == SETTLED
        body = {"preimage": _b64(f"preimage {ids}")} if settled else {}
        events.append(_event(ids, _settled_at(fw), "settle_event" if settled else "forward_fail_event", body))
        events.append(_event((ids[0], ids[1], None, 0), _settled_at(fw), "final_htlc_event",
                             {"settled": settled, "offchain": True}, event_type="UNKNOWN"))
        stage = "done"
    return events, stage


def _info(fw: Forward) -> dict[str, Any]:
    return {"incoming_timelock": 800_140, "outgoing_timelock": 800_100, "incoming_amt_msat": str(fw.in_msat),
            "outgoing_amt_msat": str(fw.out_msat or 0)}


def _link_fail(fw: Forward) -> dict[str, Any]:
    wire, detail, text = _link_failure_fields(fw.failure)
    return {"info": _info(fw), "wire_failure": wire, "failure_detail": detail, "failure_string": text}


def _event(ids: tuple[str | None, int, str | None, int], t: float, kind: str, body: dict[str, Any], *,
           event_type: str = "FORWARD") -> dict[str, Any]:
    in_chan, in_id, out_chan, out_id = ids
    return {"result": {
        "incoming_channel_id": str(scid_to_int(in_chan)) if in_chan else "0",
        "outgoing_channel_id": str(scid_to_int(out_chan)) if out_chan else "0",
        "incoming_htlc_id": str(in_id), "outgoing_htlc_id": str(out_id if out_chan else 0),
        "timestamp_ns": str(_ns(t)), "event_type": event_type, kind: body}}


SUBSCRIBED = {"result": {"incoming_channel_id": "0", "outgoing_channel_id": "0", "incoming_htlc_id": "0",
                         "outgoing_htlc_id": "0", "timestamp_ns": "0", "event_type": "UNKNOWN",
                         "subscribed_event": {}}}


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


def _make_tls(cert_path: Path, key_path: Path) -> None:
    """A self-signed P-256 certificate as LND makes it: CA (signs itself), SANs localhost and 127.0.0.1/::1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lnd autogenerated cert"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    sans = [x509.DNSName(n) for n in ("localhost", "unix", "unixpacket", "bufconn")]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=425))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    atomic_write_bytes(key_path, key_pem, mode=0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


# --------------------------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------------------------


class _HTTPSServer(ThreadingHTTPServer):
    """Threads per connection (joined at close), TLS handshakes in those threads, connections tracked."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:  # registered before its thread starts, so that stop() reaches it whatever its stage
            self.connections.add(request)
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's net/http: no Nagle delays
            request.settimeout(HANDSHAKE_TIMEOUT_S)
            request.do_handshake()
        except (OSError, ValueError):
            return  # a client that does not trust this certificate, or not TLS at all
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-request

    def drop_connections(self) -> None:
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LNDServer:
    """LND's REST API over a ``LightningSource``: ``start()`` listens on ``host:port`` (0: a free port)."""

    def __init__(self, source: LightningSource, state_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.source = source
        self.state_dir = Path(state_dir)
        self.host, self._port = host, port
        self.cert_path = self.state_dir / "tls.cert"
        self.key_path = self.state_dir / "tls.key"
        self.macaroon_path = self.state_dir / "readonly.macaroon"
        self.stopping = threading.Event()
        self._httpd: _HTTPSServer | None = None
        self._thread: threading.Thread | None = None
        self._macaroon = b""

    def __enter__(self) -> LNDServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LNDServer:
        """Write (or reuse) tls.cert/tls.key and readonly.macaroon, then listen."""
        if self._httpd is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not (self.cert_path.exists() and self.key_path.exists()):
            _make_tls(self.cert_path, self.key_path)
        if not self.macaroon_path.exists():
            atomic_write_bytes(self.macaroon_path, b"\x02" + secrets.token_bytes(95), mode=0o600)
        self._macaroon = self.macaroon_path.read_bytes()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        self.stopping.clear()
        httpd = _HTTPSServer((self.host, self._port), _make_handler(self))
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"simln-lnd-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, end open streams and connections, and join every thread. The port is kept."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        self.stopping.set()
        httpd.shutdown()
        httpd.drop_connections()
        httpd.server_close()  # joins the connection threads
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self._port}"

    # ---- answers

    def authorized(self, values: list[str]) -> None:
        """Raise LND's fault unless exactly one macaroon header carries readonly.macaroon in hex."""
        if len(values) != 1:
            raise _Fault(500, 2, f"expected 1 macaroon, got {len(values)}")
        try:
            given = bytes.fromhex(values[0])
        except ValueError:
            raise _Fault(500, 2, "encoding/hex: invalid byte in macaroon") from None
        if not hmac.compare_digest(given, self._macaroon):
            raise _Fault(500, 2, "verification failed: signature mismatch after caveat verification")

    def answer(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        """The JSON reply for one unary call (after routing and auth)."""
        if path == "/v1/getinfo":
            return render_getinfo(self.source.info(), self.source.channels())
        if path == "/v1/channels":
            height = self.source.info().block_height
            return {"channels": [render_channel(c, height) for c in self.source.channels() if c.state == OPEN]}
        if path == "/v1/channels/pending":
            return render_pending(self.source.channels())
        if path == "/v1/switch":
            return self._history(body)
        match = _EDGE.match(path)
        assert match is not None
        return self._edge(match[1])

    def _edge(self, raw: str) -> dict[str, Any]:
        if not raw.isdigit() or int(raw) >= 1 << 64:
            raise _Fault(400, 3, f'type mismatch, parameter: chan_id, error: strconv.ParseUint: parsing "{raw}": '
                                 "invalid syntax")
        info = self.source.info()
        for c in self.source.channels():
            if c.state == OPEN and c.channel_id and scid_to_int(c.channel_id) == int(raw):
                if c.local_policy is not None or c.remote_policy is not None:
                    return render_edge(c, info.pubkey)
        if (parse_version(info.version) or (0, 0, 0)) >= (0, 20, 0):
            raise _Fault(404, 5, "edge not found")
        raise _Fault(500, 2, "edge not found")

    def _history(self, body: bytes) -> dict[str, Any]:
        request = _history_request(body)
        start, end = request["start_time"], request["end_time"] or int(time.time())
        offset, limit = request["index_offset"], request["num_max_events"] or 100
        lo, hi = start * 1_000_000_000, end * 1_000_000_000
        settled = [fw for fw in self.source.forwards(0, end + 1)
                   if fw.outcome == SETTLED and lo <= _ns(_settled_at(fw)) <= hi]
        settled.sort(key=_settled_at)
        page = settled[offset:offset + limit]
        return {"forwarding_events": [render_forwarding_event(fw) for fw in page],
                "last_offset_index": offset + len(page)}

    def htlc_lines(self, feed: _HtlcFeed) -> list[dict[str, Any]]:
        return feed.lines(self.source.forwards(feed.since, math.inf))


def _history_request(body: bytes) -> dict[str, int]:
    """ForwardingHistoryRequest as protojson reads it: 64-bit fields as strings or numbers, unknown fields refused."""
    try:
        request = json.loads(body or b"{}")
    except ValueError as exc:
        raise _Fault(400, 3, f"proto: syntax error: {exc}") from None
    if not isinstance(request, dict):
        raise _Fault(400, 3, "proto: syntax error: unexpected token, expected {")
    unknown = sorted(set(request) - _HISTORY_FIELDS)
    if unknown:
        raise _Fault(400, 3, f'proto: unknown field "{unknown[0]}"')
    out = {}
    for name, bits in (("start_time", 64), ("end_time", 64), ("index_offset", 32), ("num_max_events", 32)):
        value = request.get(name, 0)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
            raise _Fault(400, 3, f"proto: invalid value for uint{bits} field {name}: {json.dumps(value)}")
        out[name] = value
    return out


def _make_handler(server: LNDServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = IDLE_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def version_string(self) -> str:
            return "Go-http-server/1.1"

        def _send(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                raise _Fault(400, 3, "request body too large")
            return self.rfile.read(length) if length > 0 else b""

        def _dispatch(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                body = self._body()
                wanted = _PATHS.get(path) or ("GET" if _EDGE.match(path) else None)
                if wanted is None:
                    raise _Fault(404, 5, "Not Found")
                if wanted != self.command:
                    raise _Fault(405, 12, "Method Not Allowed")
                server.authorized(self.headers.get_all(MACAROON_HEADER) or [])
                if path == "/v2/router/htlcevents":
                    self._stream()
                    return
                reply = server.answer(self.command, path, body)
            except _Fault as fault:
                self._send(fault.status, fault.body())
                return
            except Exception as exc:  # noqa: BLE001 - a source that fails: LND's Unknown error
                self._send(500, _Fault(500, 2, f"{type(exc).__name__}: {exc}").body())
                return
            self._send(200, reply)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def _chunk(self, obj: Any) -> None:
            data = json.dumps(obj).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def _stream(self) -> None:
            """The HTLC event stream: subscribed_event, then events until the client leaves or the server stops."""
            self.close_connection = True
            feed = _HtlcFeed(time.time())
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                self._chunk(SUBSCRIBED)
                while not server.stopping.wait(POLL_S):
                    if self._client_gone():
                        return
                    for line in server.htlc_lines(feed):
                        self._chunk(line)
                self._chunk({"error": {"code": 2, "message": "routerrpc server shutting down", "details": []}})
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                return  # the client went away

        def _client_gone(self) -> bool:
            sock = self.connection
            try:
                readable, _, _ = select.select([sock], [], [], 0)
            except (OSError, ValueError):
                return True
            if not readable:
                return False
            old = sock.gettimeout()
            try:
                sock.settimeout(0.01)
                return sock.recv(1) == b""
            except (ssl.SSLWantReadError, TimeoutError):
                return False
            except OSError:
                return True
            finally:
                try:
                    sock.settimeout(old)
                except OSError:
                    pass

    return Handler
