"""LND read-only, over its REST API (HTTPS, the ``Grpc-Metadata-macaroon`` header): a ``LightningSource``.

What is read, and from where (shapes as LND's grpc-gateway v2 REST proxy writes them: proto field names,
every field emitted even when zero, 64-bit integers as decimal *strings*, 32-bit ones and bools as JSON natives,
enums as their names):

* ``info()``: ``GET /v1/getinfo`` (identity_pubkey, alias, block_height, synced_to_chain, and version as LND
  writes it, ``"0.18.3-beta commit=v0.18.3-beta"``).
* ``channels()``: ``GET /v1/channels`` (open channels), ``GET /v1/channels/pending`` (pending_open_channels ->
  ``pending_open``; waiting_close_channels, pending_force_closing_channels and the deprecated
  pending_closing_channels -> ``closing``) and, per open channel, ``GET /v1/graph/edge/{chan_id}`` for both
  sides' fee policies. The graph edge is used rather than ``GET /v1/feereport``: the fee report holds only our
  own base fee and rate, the edge holds both directions' full policies (time lock delta, min/max HTLC,
  disabled), and the peer's policy is the only view of what the peer charges. A channel the graph does not
  know (LND answers "edge not found": HTTP 500 code 2 before 0.20, HTTP 404 code 5 since) has no policies
  (None), as has a side with a ``null`` policy (never announced).
* ``forwards(start, end)``: ``POST /v1/switch`` pages (``index_offset``/``num_max_events``, next offset from
  ``last_offset_index``) until a page comes back short. LND's forwarding log holds SETTLED forwards only,
  stamped at settlement: each becomes a ``Forward`` with ``received == resolved ==`` that time.
* ``htlc_events(duration_s)``: ``GET /v2/router/htlcevents`` read for a bounded time; the failed forwards seen.

Amounts: LND's channel balances and reserves are satoshis (msat = sat * 1000: LND truncates the msat part);
forwarding amounts, fees and policies are msat. Short channel ids: LND's ``chan_id`` is the uint64
``block << 40 | tx << 16 | output``, given here as ``BLOCKxTXxOUTPUT``.

Security decisions: the TLS certificate is pinned: the context's only trust anchor is ``tls_cert`` (partial
chains allowed, so a CA-issued certificate pinned as a leaf works too) and the certificate the server presents
must be byte-identical to the first one in that file. The hostname is *not* checked: the pin is a stronger
identity than a name, and LND's self-signed certificates name only localhost, 127.0.0.1, ::1, the host name and
``tlsextraip``/``tlsextradomain``, so a node reached by its LAN address or a container name would otherwise
need a regenerated certificate for no gain. The macaroon file (binary) is read at every call and sent hex.

Malformed replies: any entry of ``channels``, the pending lists, an edge or ``forwarding_events`` that is not
the documented shape fails the whole call with ``LightningReplyError`` naming the field: a silently dropped
channel or forward would misstate balances and fee income. The HTLC event stream is the exception: a bad line
is skipped and recorded in ``problems`` (the stream is best-effort by LND's own account, and what is not read
while listening cannot be read again, so one bad line must not lose the rest of the window).
"""

from __future__ import annotations

import http.client
import json
import math
import re
import socket
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from core.errors import ConfigError
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
    LightningAuthError,
    LightningConnectionError,
    LightningError,
    LightningReplyError,
    LightningVersionError,
    NodeInfo,
)

__all__ = [
    "MIN_VERSION",
    "HtlcStreamReader",
    "LNDClient",
    "LNDConfig",
    "parse_channels",
    "parse_edge",
    "parse_error",
    "parse_forwarding_page",
    "parse_info",
    "parse_version",
    "link_failure",
    "scid_from_int",
    "scid_to_int",
]

# 0.16.0: the REST shapes parsed here are grpc-gateway v2's (0.14: error bodies {"code","message","details"},
# stream lines {"result"}/{"error"}); ForwardingEvent.timestamp_ns exists since 0.13, Channel.local_constraints
# since 0.11, /v2/router/htlcevents since 0.11; and since 0.16 the HTLC stream opens with a ``subscribed_event``,
# which is what marks the moment from which this reader sees failures (before it, the REST proxy sends nothing,
# not even the HTTP headers, until the first HTLC event).
MIN_VERSION = (0, 16, 0)
MIN_VERSION_REASON = (
    "the HTLC event stream confirms a subscription (subscribed_event) only since 0.16, and the REST shapes read "
    "here are those of LND's grpc-gateway v2 proxy (0.14+)"
)
IMPLEMENTATION = "lnd"
MACAROON_HEADER = "Grpc-Metadata-macaroon"
DEFAULT_PAGE = 10_000  # forwarding events per page (LND caps a reply at 50k)
_U64 = (1 << 64) - 1
_I64 = (1 << 63) - 1
_INT_TEXT = re.compile(r"-?[0-9]{1,20}\Z")  # uint64 has at most 20 digits
_PUBKEY = re.compile(r"0[23][0-9a-f]{64}\Z")
_OUTPOINT = re.compile(r"[0-9a-f]{64}:[0-9]+\Z")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_SNIPPET = 60
_LAST_SECOND = 9_000_000_000  # LND turns end_time into int64 nanoseconds: keep below 2^63 ns (year 2262)
_MAX_LINE = 1 << 20
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")
# error messages of LND's macaroon check (macaroons/service.go, rpcperms) and of a locked or starting node
_AUTH_WORDS = ("macaroon", "verification failed", "permission denied", "invalid id", "encoding/hex",
               "root key", "caveat")
_NOT_READY_WORDS = ("wallet locked", "wallet not created", "waiting to start", "in the process of starting")
# link failures: these wire codes say nothing beyond "see failure_string"
_VAGUE_WIRE = ("", "RESERVED", "UNKNOWN_FAILURE", "UNREADABLE_FAILURE")
_VAGUE_DETAIL = ("", "UNKNOWN", "NO_DETAIL")


# --------------------------------------------------------------------------------------------
# Short channel ids
# --------------------------------------------------------------------------------------------


def scid_from_int(value: int) -> str:
    """LND's uint64 chan_id as ``BLOCKxTXxOUTPUT``; ValueError for 0, a block of 0 or a value past uint64."""
    if not 0 < value <= _U64:
        raise ValueError(f"{value} is not a uint64 channel id")
    block, tx, out = value >> 40, (value >> 16) & 0xFFFFFF, value & 0xFFFF
    if block == 0:
        raise ValueError(f"{value} names block 0 (block {block}, tx {tx}, output {out}): no channel is funded there")
    return f"{block}x{tx}x{out}"


def scid_to_int(scid: str) -> int:
    """``BLOCKxTXxOUTPUT`` as LND's uint64 chan_id; ValueError when it is not one."""
    parts = scid.split("x") if isinstance(scid, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{scid!r} is not a short channel id BLOCKxTXxOUTPUT")
    block, tx, out = (int(p) for p in parts)
    if not (0 < block < 1 << 24 and tx < 1 << 24 and out < 1 << 16):
        raise ValueError(f"{scid!r} is out of range (block 1..2^24-1, tx < 2^24, output < 2^16)")
    return block << 40 | tx << 16 | out


# --------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Fields:
    """Typed reads from one reply; each problem raises LightningReplyError naming node, call and field path."""

    def __init__(self, node: str, call: str) -> None:
        self.node, self.call = node, call

    def fail(self, field: str, problem: str) -> NoReturn:
        raise LightningReplyError(problem, node=self.node, call=self.call, field=field or None)

    def obj(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"{_show(value)} is not an object")
        return value

    def items(self, parent: dict[str, Any], key: str, path: str) -> list[Any]:
        """A repeated field: omitted or null is empty."""
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(_join(path, key), f"{_show(value)} is not an array")
        return value

    def int_(self, parent: dict[str, Any], key: str, path: str, *, required: bool = False,
             low: int = 0, high: int = _U64) -> int:
        """An integer field: a decimal string (64-bit fields) or a JSON integer (32-bit ones); omitted is 0."""
        field = _join(path, key)
        if key not in parent or parent[key] is None:
            if required:
                self.fail(field, "missing")
            return 0
        value = parent[key]
        if isinstance(value, str):
            if not _INT_TEXT.match(value):
                self.fail(field, f"{_show(value)} is not an integer string")
            number = int(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            self.fail(field, f"{_show(value)} is not an integer")
        if number < low:
            self.fail(field, f"{number} is negative" if low == 0 else f"{number} is below {low}")
        if number > high:
            self.fail(field, f"{number} is out of range (at most {high})")
        return number

    def opt_int(self, parent: dict[str, Any], key: str, path: str) -> int | None:
        """An int64 field that may be absent from older replies: None then."""
        return self.int_(parent, key, path, high=_I64) if parent.get(key) is not None else None

    def str_(self, parent: dict[str, Any], key: str, path: str, *, required: bool = False,
             pattern: re.Pattern[str] | None = None, what: str = "") -> str:
        field = _join(path, key)
        if key not in parent or parent[key] is None:
            if required:
                self.fail(field, "missing")
            return ""
        value = parent[key]
        if not isinstance(value, str):
            self.fail(field, f"{_show(value)} is not a string")
        if pattern is not None and not pattern.match(value):
            self.fail(field, f"{_show(value)} is not {what}")
        return value

    def bool_(self, parent: dict[str, Any], key: str, path: str) -> bool:
        value = parent.get(key, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(_join(path, key), f"{_show(value)} is not a boolean")
        return value

    def scid(self, parent: dict[str, Any], key: str, path: str, *, allow_zero: bool = False) -> str | None:
        number = self.int_(parent, key, path, required=not allow_zero)
        if number == 0 and allow_zero:
            return None
        try:
            return scid_from_int(number)
        except ValueError as exc:
            self.fail(_join(path, key), f"impossible channel id: {exc}")

    def pubkey(self, parent: dict[str, Any], key: str, path: str) -> str:
        return self.str_(parent, key, path, required=True, pattern=_PUBKEY, what="a 33-byte hex public key")

    def outpoint(self, parent: dict[str, Any], key: str, path: str) -> str:
        return self.str_(parent, key, path, required=True, pattern=_OUTPOINT, what="a funding outpoint txid:vout")


# --------------------------------------------------------------------------------------------
# Reply parsers (pure: the client calls them, tests feed them recorded replies)
# --------------------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of LND's ``"0.18.3-beta commit=v0.18.3-beta"``; None when not of that form."""
    match = _VERSION.match(text.strip())
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def parse_info(reply: Any, *, node: str = "lnd", call: str = "GetInfo") -> NodeInfo:
    """``GET /v1/getinfo`` -> NodeInfo; LightningVersionError for a version below MIN_VERSION."""
    f = _Fields(node, call)
    reply = f.obj(reply, "")
    version = f.str_(reply, "version", "", required=True).strip()  # kept whole: "0.18.3-beta commit=v0.18.3-beta"
    number = parse_version(version)
    if number is None:
        raise LightningVersionError(f"version {version!r} is not LND's MAJOR.MINOR.PATCH form", node=node,
                                    call=call, field="version")
    if number < MIN_VERSION:
        least = ".".join(map(str, MIN_VERSION))
        raise LightningVersionError(f"LND {version.split()[0]} is older than {least}, the oldest this adapter "
                                    f"reads: {MIN_VERSION_REASON}", node=node, call=call, field="version")
    synced = reply.get("synced_to_chain")
    return NodeInfo(
        pubkey=f.pubkey(reply, "identity_pubkey", ""),
        alias=f.str_(reply, "alias", ""),
        implementation=IMPLEMENTATION,
        version=version,
        block_height=f.int_(reply, "block_height", "", required=True, high=0xFFFFFFFF),
        synced_to_chain=None if synced is None else f.bool_(reply, "synced_to_chain", ""),
    )


def parse_edge(reply: Any, our_pubkey: str, *, node: str = "lnd", call: str = "GetChanInfo"
               ) -> tuple[ChannelPolicy | None, ChannelPolicy | None]:
    """``GET /v1/graph/edge/{chan_id}`` -> (our policy, the peer's policy); a ``null`` side is None."""
    f = _Fields(node, call)
    reply = f.obj(reply, "")
    node1, node2 = f.pubkey(reply, "node1_pub", ""), f.pubkey(reply, "node2_pub", "")
    if our_pubkey not in (node1, node2):
        f.fail("node1_pub", f"neither node1_pub nor node2_pub is this node's key {our_pubkey[:16]}...")
    p1, p2 = (_policy(f, reply.get(key), key) for key in ("node1_policy", "node2_policy"))
    return (p1, p2) if node1 == our_pubkey else (p2, p1)


def _policy(f: _Fields, value: Any, path: str) -> ChannelPolicy | None:
    if value is None:
        return None
    p = f.obj(value, path)
    return ChannelPolicy(
        base_fee_msat=f.int_(p, "fee_base_msat", path, required=True, high=_I64),
        fee_rate_ppm=f.int_(p, "fee_rate_milli_msat", path, required=True, high=_I64),
        time_lock_delta=f.int_(p, "time_lock_delta", path, high=0xFFFF),
        min_htlc_msat=f.int_(p, "min_htlc", path, high=_I64),
        max_htlc_msat=f.int_(p, "max_htlc_msat", path),
        disabled=f.bool_(p, "disabled", path),
    )


def _reserve(f: _Fields, ch: dict[str, Any], path: str, side: str) -> int | None:
    """``{side}_constraints.chan_reserve_sat`` (0.11+), else the deprecated ``{side}_chan_reserve_sat``."""
    constraints = ch.get(f"{side}_constraints")
    if constraints is not None:
        where = _join(path, f"{side}_constraints")
        return f.int_(f.obj(constraints, where), "chan_reserve_sat", where, required=True)
    return f.opt_int(ch, f"{side}_chan_reserve_sat", path)


def _open_channel(f: _Fields, ch: Any, path: str) -> tuple[Channel, int]:
    """One ``channels[i]`` entry -> (Channel, the chan_id to look its edge up by)."""
    ch = f.obj(ch, path)
    chan_id = f.int_(ch, "chan_id", path, required=True)
    scid = f.scid(ch, "chan_id", path) or ""
    if f.bool_(ch, "zero_conf", path):
        confirmed = f.scid(ch, "zero_conf_confirmed_scid", path, allow_zero=True)
        scid = confirmed or scid  # before confirmation a zero-conf channel has only its alias
    htlc_msat, htlcs = 0, f.items(ch, "pending_htlcs", path)
    for i, htlc in enumerate(htlcs):
        where = _join(_join(path, "pending_htlcs"), i)
        htlc_msat += 1000 * f.int_(f.obj(htlc, where), "amount", where, required=True, high=_I64)
    channel = Channel(
        channel_id=scid,
        channel_point=f.outpoint(ch, "channel_point", path),
        peer=f.pubkey(ch, "remote_pubkey", path),
        state=OPEN,
        active=f.bool_(ch, "active", path),
        capacity_sat=f.int_(ch, "capacity", path, required=True, high=_I64),
        local_msat=1000 * f.int_(ch, "local_balance", path, required=True, high=_I64),
        remote_msat=1000 * f.int_(ch, "remote_balance", path, required=True, high=_I64),
        pending_htlcs=len(htlcs),
        pending_htlc_msat=htlc_msat,
        local_reserve_sat=_reserve(f, ch, path, "local"),
        remote_reserve_sat=_reserve(f, ch, path, "remote"),
        initiator_local=f.bool_(ch, "initiator", path),
        private=f.bool_(ch, "private", path),
        uptime_s=f.int_(ch, "uptime", path, high=_I64),
        lifetime_s=f.int_(ch, "lifetime", path, high=_I64),
    )
    return channel, chan_id


_INITIATOR = {"INITIATOR_LOCAL": True, "INITIATOR_REMOTE": False, "INITIATOR_BOTH": None, "INITIATOR_UNKNOWN": None}
_PENDING_LISTS = (("pending_open_channels", PENDING_OPEN), ("waiting_close_channels", CLOSING),
                  ("pending_force_closing_channels", CLOSING), ("pending_closing_channels", CLOSING))


def _pending_channel(f: _Fields, entry: Any, path: str, state: str) -> Channel:
    """One pending/closing entry: its nested ``channel`` object (no chan_id: LND gives none while pending)."""
    where = _join(path, "channel")
    pc = f.obj(f.obj(entry, path).get("channel"), where)
    initiator = pc.get("initiator", "INITIATOR_UNKNOWN")
    if initiator not in _INITIATOR:
        f.fail(_join(where, "initiator"), f"{_show(initiator)} is not an Initiator name")
    return Channel(
        channel_id=None,
        channel_point=f.outpoint(pc, "channel_point", where),
        peer=f.pubkey(pc, "remote_node_pub", where),
        state=state,
        active=False,
        capacity_sat=f.int_(pc, "capacity", where, required=True, high=_I64),
        local_msat=1000 * f.int_(pc, "local_balance", where, required=True, high=_I64),
        remote_msat=1000 * f.int_(pc, "remote_balance", where, required=True, high=_I64),
        local_reserve_sat=f.opt_int(pc, "local_chan_reserve_sat", where),
        remote_reserve_sat=f.opt_int(pc, "remote_chan_reserve_sat", where),
        initiator_local=_INITIATOR[initiator],
        private=f.bool_(pc, "private", where),
    )


def parse_channels(listed: Any, pending: Any, *, node: str = "lnd") -> tuple[list[Channel], list[int]]:
    """``GET /v1/channels`` and ``GET /v1/channels/pending`` -> (channels without policies, the open ones'
    chan_ids, in the same order as the first ``len(chan_ids)`` channels)."""
    f = _Fields(node, "ListChannels")
    channels, chan_ids = [], []
    for i, ch in enumerate(f.items(f.obj(listed, ""), "channels", "")):
        channel, chan_id = _open_channel(f, ch, f"channels[{i}]")
        channels.append(channel)
        chan_ids.append(chan_id)
    f = _Fields(node, "PendingChannels")
    pending = f.obj(pending, "")
    for key, state in _PENDING_LISTS:
        for i, entry in enumerate(f.items(pending, key, "")):
            channels.append(_pending_channel(f, entry, f"{key}[{i}]", state))
    return channels, chan_ids


def parse_forwarding_page(reply: Any, *, node: str = "lnd", call: str = "ForwardingHistory"
                          ) -> tuple[list[Forward], int]:
    """One ``POST /v1/switch`` reply -> (settled forwards, last_offset_index)."""
    f = _Fields(node, call)
    reply = f.obj(reply, "")
    out = []
    for i, event in enumerate(f.items(reply, "forwarding_events", "")):
        path = f"forwarding_events[{i}]"
        event = f.obj(event, path)
        ts = f.int_(event, "timestamp_ns", path, required=True) / 1_000_000_000
        amt_in = f.int_(event, "amt_in_msat", path, required=True)
        amt_out = f.int_(event, "amt_out_msat", path, required=True)
        fee = f.int_(event, "fee_msat", path, required=True)
        if fee != amt_in - amt_out:
            f.fail(_join(path, "fee_msat"), f"{fee} is not amt_in_msat - amt_out_msat = {amt_in - amt_out}")
        out.append(Forward(received=ts, resolved=ts, in_channel=f.scid(event, "chan_id_in", path) or "",
                           out_channel=f.scid(event, "chan_id_out", path), in_msat=amt_in, out_msat=amt_out,
                           fee_msat=fee, outcome=SETTLED))
    return out, f.int_(reply, "last_offset_index", "", high=0xFFFFFFFF)


def link_failure(wire: str, detail: str, text: str) -> str | None:
    """A link failure's reason: LND's FailureDetail name when it says something, else the BOLT wire code's
    name, else failure_string (None when empty)."""
    if detail not in _VAGUE_DETAIL:
        return detail
    if wire not in _VAGUE_WIRE:
        return wire
    return text or None


class HtlcStreamReader:
    """Turns ``/v2/router/htlcevents`` lines into failed forwards.

    A downstream failure is a ``forward_event`` (the offer, with the amounts) followed by a
    ``forward_fail_event`` with the same (incoming, outgoing) channel and HTLC ids: it becomes ``FAILED``
    (failure None: the downstream reason is encrypted for the payer, LND cannot say). A ``link_fail_event``
    (refused here: no balance, fee too low, unknown next channel...) becomes ``LOCAL_FAILED``. Settles, sends,
    receives, ``final_htlc_event`` and kinds this reader does not know are passed over; replayed events (LND may
    repeat some after a restart) are counted once. A malformed line is skipped and described in ``problems``, as
    is a failure whose offer came before the subscription (its amounts are unknown)."""

    _KINDS = ("forward_event", "forward_fail_event", "settle_event", "link_fail_event", "subscribed_event",
              "final_htlc_event")

    def __init__(self, *, node: str = "lnd", call: str = "SubscribeHtlcEvents") -> None:
        self.node, self.call = node, call
        self.failures: list[Forward] = []
        self.problems: list[str] = []
        self.subscribed = False
        self.ended = False
        self.lines = 0
        self._offers: dict[tuple[int, int, int, int], tuple[float, int, int]] = {}
        self._seen: set[tuple[str, tuple[int, int, int, int]]] = set()

    def feed(self, line: bytes | str) -> None:
        """Read one line of the stream (blank lines are ignored). An ``{"error": ...}`` line ends the stream: it
        raises the LightningError before the subscription is confirmed, and is recorded in ``problems`` after."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if not text.strip():
            return
        self.lines += 1
        where = f"line {self.lines}"
        try:
            message = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            self.problems.append(f"{where}: not JSON (starts {text[:_SNIPPET]!r}); skipped")
            return
        if isinstance(message, dict) and isinstance(message.get("error"), dict):
            error = parse_error(200, message, node=self.node, call=self.call, path="/v2/router/htlcevents")
            if not self.subscribed:
                raise error
            self.ended = True  # e.g. "routerrpc server shutting down": keep what was seen
            self.problems.append(f"{where}: LND ended the stream ({error.problem}); failures after that were not seen")
            return
        if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
            self.problems.append(f"{where}: not a {{\"result\": {{...}}}} object; skipped")
            return
        try:
            self._event(message["result"], where)
        except LightningReplyError as exc:
            self.problems.append(f"{where}: {exc.field}: {exc.problem}; skipped")

    def _event(self, event: dict[str, Any], where: str) -> None:
        f = _Fields(self.node, self.call)
        kinds = [k for k in self._KINDS if event.get(k) is not None]
        if "subscribed_event" in kinds:
            self.subscribed = True
            return
        if not kinds or event.get("event_type") != "FORWARD":
            return  # a send, a receive, a final resolution, or a kind this reader does not know
        kind = kinds[0]
        key = tuple(f.int_(event, k, "", required=k == "incoming_channel_id") for k in
                    ("incoming_channel_id", "incoming_htlc_id", "outgoing_channel_id", "outgoing_htlc_id"))
        ts = f.int_(event, "timestamp_ns", "", required=True) / 1_000_000_000
        if (kind, key) in self._seen:
            return
        if kind == "forward_event":
            info = f.obj(f.obj(event[kind], kind).get("info"), f"{kind}.info")
            self._offers[key] = (ts, f.int_(info, "incoming_amt_msat", f"{kind}.info", required=True),
                                 f.int_(info, "outgoing_amt_msat", f"{kind}.info", required=True))
        elif kind == "settle_event":
            self._offers.pop(key, None)
        elif kind == "forward_fail_event":
            self._forward_fail(f, event, key, ts, where)
        elif kind == "link_fail_event":
            self._link_fail(f, event[kind], event, ts)
        self._seen.add((kind, key))  # only once understood: a malformed event's replay may still be read

    def _forward_fail(self, f: _Fields, event: dict[str, Any], key: tuple[int, int, int, int], ts: float,
                      where: str) -> None:
        offer = self._offers.pop(key, None)
        if offer is None:
            self.problems.append(f"{where}: forward_fail_event for channel {key[0]} htlc {key[1]} without its "
                                 "forward_event (offered before the subscription): amounts unknown; skipped")
            return
        received, amt_in, amt_out = offer
        self.failures.append(Forward(
            received=received, resolved=ts, in_channel=f.scid(event, "incoming_channel_id", "") or "",
            out_channel=f.scid(event, "outgoing_channel_id", "", allow_zero=True), in_msat=amt_in,
            out_msat=amt_out, fee_msat=0, outcome=FAILED, failure=None))

    def _link_fail(self, f: _Fields, fail: Any, event: dict[str, Any], ts: float) -> None:
        fail = f.obj(fail, "link_fail_event")
        info = f.obj(fail.get("info"), "link_fail_event.info")
        names = [f.str_(fail, k, "link_fail_event") for k in ("wire_failure", "failure_detail", "failure_string")]
        out_msat = f.int_(info, "outgoing_amt_msat", "link_fail_event.info")
        self.failures.append(Forward(
            received=ts, resolved=ts, in_channel=f.scid(event, "incoming_channel_id", "") or "",
            out_channel=f.scid(event, "outgoing_channel_id", "", allow_zero=True),
            in_msat=f.int_(info, "incoming_amt_msat", "link_fail_event.info", required=True),
            out_msat=out_msat or None, fee_msat=0, outcome=LOCAL_FAILED, failure=link_failure(*names)))


# --------------------------------------------------------------------------------------------
# Configuration and errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LNDConfig:
    """Where LND's REST API listens (``https://host:8080``), its ``tls.cert`` and a (read-only) macaroon."""

    url: str
    tls_cert: Path
    macaroon: Path
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("tls_cert", "macaroon"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, Path(getattr(self, name)))

    def validate(self) -> LNDConfig:
        """Return self, or raise ConfigError naming the setting and the problem."""
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise ConfigError("lnd.url", f"{self.url!r} is not an https:// url with a host (LND's REST is TLS)")
        try:
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            raise ConfigError("lnd.url", f"{self.url!r} has an invalid port") from exc
        if parts.username is not None or parts.path not in ("", "/") or parts.query:
            raise ConfigError("lnd.url", f"{self.url!r} must be https://host[:port] only")
        if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, int | float) or not self.timeout_s > 0:
            raise ConfigError("lnd.timeout_s", f"{self.timeout_s!r} must be a positive number of seconds")
        return self


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_error(status: int, reply: Any, *, node: str = "lnd", call: str = "", path: str = "") -> LightningError:
    """An HTTP error reply as the matching LightningError: grpc-gateway's ``{"code", "message", "details"}``,
    or a stream's ``{"error": {...}}`` line; a 404 that is no LND error object means the path is not served."""
    error = reply.get("error") if isinstance(reply, dict) and isinstance(reply.get("error"), dict) else reply
    code, message = (error.get("code"), error.get("message")) if isinstance(error, dict) else (None, None)
    return _status_error(status, code, message, node=node, call=call, path=path)


def _status_error(status: int, code: Any, message: Any, *, node: str, call: str, path: str) -> LightningError:
    """LND's error (gRPC ``code``, ``message``) as the matching LightningError."""
    text = " ".join(str(message).split()) if message is not None else ""
    lowered = text.lower()
    where = f"HTTP {status}, code {code}" if code is not None else f"HTTP {status}"
    if status == 404 and code in (5, None) and lowered in ("not found", ""):
        return LightningVersionError(f"{path} is not served ({where} {text or 'Not Found'}): not LND's REST API, "
                                     "or an LND without this endpoint", node=node, call=call)
    if status in (401, 403) or code in (7, 16) or any(w in lowered for w in _AUTH_WORDS):
        return LightningAuthError(f"LND refused the macaroon ({where}): {text}", node=node, call=call)
    if any(w in lowered for w in _NOT_READY_WORDS):
        return LightningConnectionError(f"LND is not ready ({where}): {text}", node=node, call=call)
    return LightningError(f"LND answered {where}: {text or '(no message)'}", node=node, call=call)


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class _Session:
    """One HTTPS connection (kept alive across the requests of one public call), pinned and authenticated."""

    def __init__(self, client: LNDClient, call: str) -> None:
        self.client, self.node = client, client.url
        self._pinned, context = client._tls(call)
        self._macaroon = client._macaroon_hex(call)
        parts = urlsplit(client.config.url)
        self.conn = http.client.HTTPSConnection(parts.hostname or "", parts.port or 8080,
                                                timeout=client.config.timeout_s, context=context)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection_error(self, problem: str, call: str) -> LightningConnectionError:
        return LightningConnectionError(problem, node=self.node, call=call)

    def open(self, method: str, path: str, call: str, body: Any = None) -> http.client.HTTPResponse:
        """Send one request and return the response (headers read); transport errors as LightningErrors."""
        headers = {MACAROON_HEADER: self._macaroon, "Accept": "application/json", "User-Agent": "anya-fl"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            if self.conn.sock is None:
                self.conn.connect()
                self._check_pin(call)
            self.conn.request(method, path, body=data, headers=headers)
            return self.conn.getresponse()
        except LightningError:
            self.conn.close()
            raise
        except Exception as exc:  # noqa: BLE001 - every transport failure becomes one line
            self.conn.close()
            raise self._transport_error(exc, call) from exc

    def _check_pin(self, call: str) -> None:
        sock = self.conn.sock
        presented = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        if presented != self._pinned:
            raise self._connection_error(f"the server's TLS certificate is not the pinned one "
                                         f"({self.client.config.tls_cert})", call)

    def _transport_error(self, exc: BaseException, call: str) -> LightningError:
        timeout = self.conn.timeout
        if isinstance(exc, TimeoutError):
            return self._connection_error(f"no reply within {timeout:g} s", call)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self._connection_error(f"the server's TLS certificate does not verify against the pinned "
                                          f"{self.client.config.tls_cert} ({exc.verify_message})", call)
        if isinstance(exc, ssl.SSLError):
            return self._connection_error(f"TLS error: {exc.reason or exc}", call)
        if isinstance(exc, ConnectionRefusedError):
            return self._connection_error("connection refused", call)
        if isinstance(exc, socket.gaierror):
            return self._connection_error(f"host not found: {exc.strerror or exc}", call)
        if isinstance(exc, ConnectionError | http.client.RemoteDisconnected):
            return self._connection_error("the connection was closed without a reply", call)
        if isinstance(exc, http.client.HTTPException):
            return LightningReplyError(f"not a valid HTTP reply ({type(exc).__name__})", node=self.node, call=call)
        if isinstance(exc, OSError):
            return self._connection_error((exc.strerror or str(exc) or type(exc).__name__).lower(), call)
        return LightningReplyError(f"unreadable reply ({type(exc).__name__}: {exc})", node=self.node, call=call)

    def read(self, resp: http.client.HTTPResponse, call: str) -> bytes:
        try:
            return resp.read()
        except Exception as exc:  # noqa: BLE001
            self.conn.close()
            raise self._transport_error(exc, call) from exc

    def json(self, method: str, path: str, call: str, body: Any = None, *,
             not_found: str | None = None) -> dict[str, Any] | None:
        """The reply object of one call; None when LND says ``not_found`` (e.g. "edge not found")."""
        resp = self.open(method, path, call, body)
        data = self.read(resp, call)
        status = resp.status
        try:
            reply = json.loads(data, parse_constant=_no_constant) if data.strip() else None
        except (ValueError, RecursionError, UnicodeDecodeError):
            reply = _NOT_JSON
        if status == 200:
            if reply is _NOT_JSON or not isinstance(reply, dict):
                snippet = data[:_SNIPPET].decode("utf-8", "replace")
                raise LightningReplyError(f"not a JSON object (HTTP 200, body starts {snippet!r})", node=self.node,
                                          call=call)
            return reply
        message = _message(reply)
        if not_found and message is not None and not_found in message.lower():
            return None
        if message is None and status != 404:
            snippet = data[:_SNIPPET].decode("utf-8", "replace")
            raise LightningReplyError(f"HTTP {status} without LND's error object (body starts {snippet!r})",
                                      node=self.node, call=call)
        raise parse_error(status, reply, node=self.node, call=call, path=path)


def _message(reply: Any) -> str | None:
    """The ``message`` of an error reply (plain or stream-wrapped), when it is a string."""
    error = reply.get("error") if isinstance(reply, dict) and isinstance(reply.get("error"), dict) else reply
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


_NOT_JSON = object()


class LNDClient:
    """A ``LightningSource`` over LND's REST API, read-only. Every public call checks (once per client) that the
    node runs LND ``MIN_VERSION`` or newer, and raises a LightningError subclass, never anything else."""

    implementation = IMPLEMENTATION

    def __init__(self, config: LNDConfig, *, page_size: int = DEFAULT_PAGE) -> None:
        self.config = config.validate()
        self.url = config.url.rstrip("/")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or not 0 < page_size <= 50_000:
            raise ConfigError("lnd.page_size", f"{page_size!r} must be an integer in 1..50000")
        self.page_size = page_size
        self.problems: list[str] = []  # what the last htlc_events() skipped, and why
        self._node: NodeInfo | None = None

    def __repr__(self) -> str:
        return f"LNDClient({self.url!r})"

    # ---- credentials

    def _tls(self, call: str) -> tuple[bytes, ssl.SSLContext]:
        """(the pinned certificate's DER, a context trusting only it); re-read at every call (LND may renew it)."""
        path = self.config.tls_cert
        try:
            first = _PEM_CERT.search(path.read_text(encoding="ascii"))
            if first is None:
                raise ValueError("no PEM certificate in it")
            pem = first[0]
            pinned = ssl.PEM_cert_to_DER_cert(pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False  # the pin is the identity: see the module's docstring
            context.verify_mode = ssl.CERT_REQUIRED
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_verify_locations(cadata=pem)
        except (OSError, ValueError, ssl.SSLError) as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise LightningConnectionError(f"cannot use the TLS certificate {path} ({why}): it must be LND's "
                                           "tls.cert (PEM)", node=self.url, call=call) from exc
        return pinned, context

    def _macaroon_hex(self, call: str) -> str:
        path = self.config.macaroon
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LightningAuthError(f"cannot read the macaroon {path} ({exc.strerror or exc})", node=self.url,
                                     call=call) from exc
        if not data:
            raise LightningAuthError(f"the macaroon {path} is empty", node=self.url, call=call)
        return data.hex()

    def _session(self, call: str) -> _Session:
        return _Session(self, call)

    # ---- LightningSource

    def _checked(self, s: _Session) -> NodeInfo:
        """The node's info, fetched and version-checked on the first call of this client."""
        if self._node is None:
            self._node = parse_info(s.json("GET", "/v1/getinfo", "GetInfo"), node=self.url)
        return self._node

    def info(self) -> NodeInfo:
        """``GET /v1/getinfo``: identity, alias, version (LightningVersionError below MIN_VERSION), height."""
        with self._session("GetInfo") as s:
            self._node = None
            return self._checked(s)

    def channels(self) -> list[Channel]:
        """Open channels with both fee policies, then pending-open and closing ones (no id, no policy)."""
        with self._session("ListChannels") as s:
            me = self._checked(s).pubkey
            listed = s.json("GET", "/v1/channels", "ListChannels")
            pending = s.json("GET", "/v1/channels/pending", "PendingChannels")
            channels, chan_ids = parse_channels(listed, pending, node=self.url)
            for i, chan_id in enumerate(chan_ids):
                edge = s.json("GET", f"/v1/graph/edge/{chan_id}", "GetChanInfo", not_found="edge not found")
                if edge is not None:
                    local, remote = parse_edge(edge, me, node=self.url, call=f"GetChanInfo({chan_id})")
                    channels[i] = _with_policies(channels[i], local, remote)
            return channels

    def forwards(self, start: float, end: float) -> list[Forward]:
        """Settled forwards in [start, end) (UNIX s, by settlement time), oldest first, all pages."""
        if math.isnan(start) or math.isnan(end):
            raise ConfigError("forwards", f"start {start!r} and end {end!r} must be UNIX times")
        if end <= start or end <= 0:
            return []
        # LND's window is whole seconds, both ends inclusive; the exact [start, end) is cut here
        first = max(0, math.floor(min(start, _LAST_SECOND)))
        last = math.ceil(min(end, _LAST_SECOND))
        out: list[Forward] = []
        with self._session("ForwardingHistory") as s:
            self._checked(s)
            offset = 0
            while True:
                page, next_offset = self._history_page(s, first, last, offset)
                out.extend(page)
                if len(page) < self.page_size:
                    break
                if next_offset <= offset:
                    raise LightningReplyError(f"{next_offset} does not advance past index_offset {offset}",
                                              node=self.url, call="ForwardingHistory", field="last_offset_index")
                offset = next_offset
        return sorted((fw for fw in out if start <= fw.received < end), key=lambda fw: fw.received)

    def _history_page(self, s: _Session, first: int, last: int, offset: int) -> tuple[list[Forward], int]:
        body = {"start_time": str(first), "end_time": str(last), "index_offset": offset,
                "num_max_events": self.page_size}
        reply = s.json("POST", "/v1/switch", "ForwardingHistory", body)
        return parse_forwarding_page(reply, node=self.url, call=f"ForwardingHistory(index_offset={offset})")

    def htlc_events(self, duration_s: float) -> list[Forward]:
        """Failed forwards (``FAILED``, ``LOCAL_FAILED``) seen on ``GET /v2/router/htlcevents`` within
        ``duration_s`` seconds, oldest first. LND keeps no history of failures: a node sees them only while it
        listens, and what happened before the subscription, between two calls or during a reconnect is in no
        history at all. What was skipped (malformed lines, failures of HTLCs offered before listening) is left
        in ``self.problems``."""
        if not duration_s > 0:
            raise ConfigError("duration_s", f"{duration_s!r} must be a positive number of seconds")
        self.problems = []
        reader = HtlcStreamReader(node=self.url)
        deadline = time.monotonic() + duration_s
        with self._session("SubscribeHtlcEvents") as s:
            self._checked(s)
            resp = s.open("GET", "/v2/router/htlcevents", "SubscribeHtlcEvents")
            if resp.status != 200:
                self._stream_refused(s, resp)
            self._read_stream(s, resp, reader, deadline)
        if not reader.subscribed:
            reader.problems.append("the stream never confirmed the subscription (no subscribed_event)")
        self.problems = reader.problems
        return sorted(reader.failures, key=lambda fw: fw.received)

    def _stream_refused(self, s: _Session, resp: http.client.HTTPResponse) -> NoReturn:
        data = s.read(resp, "SubscribeHtlcEvents")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        raise parse_error(resp.status, reply, node=self.url, call="SubscribeHtlcEvents", path="/v2/router/htlcevents")

    def _read_stream(self, s: _Session, resp: http.client.HTTPResponse, reader: HtlcStreamReader,
                     deadline: float) -> None:
        sock = s.conn.sock
        while (left := deadline - time.monotonic()) > 0:
            if sock is not None:
                sock.settimeout(left)
            try:
                line = resp.readline(_MAX_LINE)
            except TimeoutError:
                return  # the window is over
            except (OSError, http.client.HTTPException) as exc:
                reader.problems.append(f"the stream broke after {reader.lines} lines ({type(exc).__name__}); "
                                       "failures after that were not seen")
                return
            if not line:
                reader.problems.append(f"LND closed the stream after {reader.lines} lines; failures after that "
                                       "were not seen")
                return
            reader.feed(line)
            if reader.ended:
                return


def _with_policies(channel: Channel, local: ChannelPolicy | None, remote: ChannelPolicy | None) -> Channel:
    return replace(channel, local_policy=local, remote_policy=remote)
