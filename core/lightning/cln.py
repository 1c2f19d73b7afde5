"""Core Lightning read-only: its JSON-RPC 2.0 over the unix socket ``lightning-rpc`` in the network directory.

Standard library only. A request is one JSON object (``{"jsonrpc": "2.0", "id": "anya-fl:getinfo#1", "method":
..., "params": {...}}``) written to a fresh connection; lightningd ends every reply with ``"\\n\\n"`` (its
json_stream promises it, and pyln-client splits on it), so the client reads until that mark and parses what
precedes it (a complete object at end of stream is accepted too).

Only ``ALLOWED_METHODS`` are ever sent, whatever the caller asks: ``getinfo`` (who, version, height, sync
warnings), ``listpeerchannels`` (channels, balances, reserves, HTLCs in flight, fee policies) and ``listforwards``
(forwards, paged with ``index=created start= limit=`` from v23.11). The oldest version accepted is
``MIN_VERSION`` = v23.02, the first with ``listpeerchannels`` (earlier releases put channels inside ``listpeers``).

Decisions:

* msat amounts are accepted as JSON integers (v23.05 onwards, and v23.02 with ``allow-deprecated-apis=false``)
  or as ``"1000msat"`` strings (v0.12 to v23.02 by default); anything else fails naming the field.
* A malformed channel or forward fails the whole call (``LightningReplyError`` naming ``channels[i].field``):
  dropping one would silently change the node's totals (capacity, balance, fees earned). An unknown channel state
  or forward status fails with ``LightningVersionError`` naming the field (a newer Core Lightning than this
  adapter knows). The one entry skipped is an ``OPENINGD`` channel (a v1 open still negotiating: no funding
  outpoint yet, so no channel in the model's sense); each skip is recorded in ``CLNClient.problems``.
* ``CLOSED`` (in lightningd's state enum, not listed by ``listpeerchannels`` in practice: closed channels move
  to ``listclosedchannels``) maps to closed should it appear.
* Balances: ``local_msat`` is ``to_us_msat`` and ``remote_msat`` is ``total_msat - to_us_msat`` (Core Lightning
  does not take the commitment fee from either). HTLCs in flight are counted from ``htlcs``.
* Policies: ours from ``updates.local`` (v24.02+) or else the top-level ``fee_base_msat``,
  ``fee_proportional_millionths``, ``minimum_htlc_out_msat``, ``maximum_htlc_out_msat`` (no time-lock delta
  then); the peer's from ``updates.remote`` (v24.02+, when its update was seen), else None: ``listchannels`` is
  not read. Core Lightning reports no per-channel uptime, so ``uptime_s``/``lifetime_s`` stay None.
* Forwards: ``fee_msat`` counts only when settled (0 otherwise, as the model says); ``out_channel``/``out_msat``
  are None where Core Lightning omits them (failed before choosing a channel); a missing ``received_time`` is 0
  (lightningd omitted it for pre-v0.7 forwards stored as 0); ``resolved`` is ``resolved_time`` or None;
  ``failure`` is ``failreason`` (or ``"failcode N"``) for failed and local_failed forwards.
* Paging reads every forward (Core Lightning cannot select by time) and filters to [start, end).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
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

__all__ = [
    "ALLOWED_METHODS",
    "CLN_STATES",
    "MIN_VERSION",
    "PAGING_VERSION",
    "CLNClient",
    "CLNConfig",
    "CLNRPCError",
    "format_version",
    "parse_getinfo",
    "parse_listforwards",
    "parse_listpeerchannels",
    "parse_version",
]

ALLOWED_METHODS = frozenset({"getinfo", "listpeerchannels", "listforwards"})
MIN_VERSION = (23, 2)  # listpeerchannels appeared in v23.02
PAGING_VERSION = (23, 11)  # listforwards index/start/limit
PAGE_LIMIT = 5000  # forwards per listforwards page
MAX_REPLY_BYTES = 256 * 1024 * 1024
_AF_UNIX_MAX = 107  # sun_path is 108 bytes with the terminating NUL

# Core Lightning's channel states (lightningd/channel_state.h, listpeerchannels' schema) in the model's words
CLN_STATES = {
    "OPENINGD": PENDING_OPEN,  # skipped: no funding outpoint yet (see the module's notes)
    "DUALOPEND_OPEN_INIT": PENDING_OPEN,
    "DUALOPEND_OPEN_COMMIT_READY": PENDING_OPEN,
    "DUALOPEND_OPEN_COMMITTED": PENDING_OPEN,
    "DUALOPEND_AWAITING_LOCKIN": PENDING_OPEN,
    "CHANNELD_AWAITING_LOCKIN": PENDING_OPEN,
    "CHANNELD_NORMAL": OPEN,
    "CHANNELD_AWAITING_SPLICE": OPEN,  # usable on the old funding while a splice confirms
    "CHANNELD_SHUTTING_DOWN": CLOSING,
    "CLOSINGD_SIGEXCHANGE": CLOSING,
    "CLOSINGD_COMPLETE": CLOSING,
    "AWAITING_UNILATERAL": CLOSING,
    "FUNDING_SPEND_SEEN": CLOSING,
    "ONCHAIN": CLOSING,
    "CLOSED": CLOSED,
}
_STATUSES = {"settled": SETTLED, "failed": FAILED, "local_failed": LOCAL_FAILED, "offered": OFFERED}

_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_MSAT_RE = re.compile(r"(\d+)msat")
_PUBKEY_RE = re.compile(r"0[23][0-9a-f]{64}")
_SCID_RE = re.compile(r"\d+x\d+x\d+")
_TXID_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------------------------
# Configuration and errors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CLNConfig:
    """Where lightningd's RPC socket is (``<lightning-dir>/<network>/lightning-rpc``) and how long to wait."""

    socket_path: Path
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.socket_path, str):
            object.__setattr__(self, "socket_path", Path(self.socket_path))
        if not isinstance(self.socket_path, Path):
            raise ConfigError("cln.socket_path", f"{self.socket_path!r} is not a path")
        if len(str(self.socket_path).encode()) > _AF_UNIX_MAX:
            raise ConfigError("cln.socket_path", f"longer than the {_AF_UNIX_MAX} bytes a unix socket path may have")
        t = self.timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ConfigError("cln.timeout_s", f"{t!r} must be a positive number of seconds")


class CLNRPCError(LightningError):
    """lightningd answered with a JSON-RPC error object: ``code`` and ``rpc_message`` are its own."""

    def __init__(self, code: int, rpc_message: str, *, node: str, call: str) -> None:
        self.code, self.rpc_message = code, rpc_message
        super().__init__(f"error {code}: {' '.join(rpc_message.split())}", node=node, call=call)


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"v24.08.1"`` (also ``"v24.08"``, ``"v24.08.1-modded"``, ``"v24.11-12-gabc"``) -> (24, 8, 1); else None."""
    m = _VERSION_RE.match(text) if isinstance(text, str) else None
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def format_version(version: tuple[int, ...]) -> str:
    """(23, 2) -> ``"v23.02"``."""
    return "v" + ".".join([str(version[0]), f"{version[1]:02d}", *(str(v) for v in version[2:] if v)])


# --------------------------------------------------------------------------------------------
# Field checks: every problem names its field (``channels[2].to_us_msat``)
# --------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Entry:
    """One JSON object of a reply, read field by field; ``where`` is its path (``channels[2]``). ``x(name)``
    requires the field, ``opt_x(name)`` gives None when it is absent; a present field must be right."""

    def __init__(self, obj: Any, where: str, node: str, call: str) -> None:
        self.node, self.call, self.where = node, call, where
        if not isinstance(obj, dict):
            raise LightningReplyError(f"expected an object, got {_show(obj)}", node=node, call=call,
                                      field=where or None)
        self.obj: dict[str, Any] = obj

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def bad(self, name: str, problem: str) -> LightningReplyError:
        return LightningReplyError(problem, node=self.node, call=self.call, field=self.path(name))

    def need(self, name: str) -> Any:
        if name not in self.obj:
            raise self.bad(name, "missing")
        return self.obj[name]

    # ---- checks of one present value

    def _string(self, name: str, value: Any, pattern: re.Pattern[str] | None = None, what: str = "a string") -> str:
        if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
            raise self.bad(name, f"{_show(value)} is not {what}")
        return value

    def _integer(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(name, f"{_show(value)} is not an integer")
        if value < 0:
            raise self.bad(name, f"{value} is negative")
        return value

    def _number(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.bad(name, f"{_show(value)} is not a number")
        if value < 0:
            raise self.bad(name, f"{value} is negative")
        return float(value)

    def _msat(self, name: str, value: Any) -> int:
        """A JSON integer (v23.05+) or a ``"1000msat"`` string (before); never negative."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise self.bad(name, f"{value} is negative")
            return value
        m = _MSAT_RE.fullmatch(value) if isinstance(value, str) else None
        if m is None:
            raise self.bad(name, f"{_show(value)} is not an msat amount")
        return int(m[1])

    def _scid(self, name: str, value: Any) -> str:
        return self._string(name, value, _SCID_RE, "a short channel id (BLOCKxTXxOUTPUT)")

    # ---- required fields

    def string(self, name: str) -> str:
        return self._string(name, self.need(name))

    def pubkey(self, name: str) -> str:
        return self._string(name, self.need(name), _PUBKEY_RE, "a node public key (66 hex digits)")

    def txid(self, name: str) -> str:
        return self._string(name, self.need(name), _TXID_RE, "a txid (64 hex digits)")

    def scid(self, name: str) -> str:
        return self._scid(name, self.need(name))

    def integer(self, name: str) -> int:
        return self._integer(name, self.need(name))

    def boolean(self, name: str) -> bool:
        value = self.need(name)
        if not isinstance(value, bool):
            raise self.bad(name, f"{_show(value)} is not a boolean")
        return value

    def msat(self, name: str) -> int:
        return self._msat(name, self.need(name))

    def entry(self, name: str) -> _Entry:
        return _Entry(self.need(name), self.path(name), self.node, self.call)

    def array(self, name: str) -> list[Any]:
        value = self.need(name)
        if not isinstance(value, list):
            raise self.bad(name, f"expected an array, got {_show(value)}")
        return value

    # ---- optional fields

    def opt_string(self, name: str) -> str | None:
        return self.string(name) if name in self.obj else None

    def opt_scid(self, name: str) -> str | None:
        return self.scid(name) if name in self.obj else None

    def opt_integer(self, name: str) -> int | None:
        return self.integer(name) if name in self.obj else None

    def opt_number(self, name: str) -> float | None:
        return self._number(name, self.obj[name]) if name in self.obj else None

    def opt_boolean(self, name: str) -> bool | None:
        return self.boolean(name) if name in self.obj else None

    def opt_msat(self, name: str) -> int | None:
        return self.msat(name) if name in self.obj else None

    def opt_entry(self, name: str) -> _Entry | None:
        return self.entry(name) if name in self.obj else None

    def opt_array(self, name: str) -> list[Any] | None:
        return self.array(name) if name in self.obj else None


# --------------------------------------------------------------------------------------------
# Replies -> model
# --------------------------------------------------------------------------------------------


def parse_getinfo(result: Any, node: str = "lightning-rpc") -> NodeInfo:
    """``getinfo``'s result -> NodeInfo (synced unless a ``warning_*_sync`` is present); checks the version."""
    e = _Entry(result, "", node, "getinfo")
    version = e.string("version")
    parsed = parse_version(version)
    if parsed is None:
        raise LightningVersionError(f"{version!r} is not a Core Lightning version (vYY.MM[.P])", node=node,
                                    call="getinfo", field="version")
    if parsed[:2] < MIN_VERSION:
        raise LightningVersionError(
            f"Core Lightning {version} is older than {format_version(MIN_VERSION)}, the first with "
            "listpeerchannels, which this adapter reads", node=node, call="getinfo", field="version")
    warned = [w for w in ("warning_bitcoind_sync", "warning_lightningd_sync") if e.opt_string(w) is not None]
    return NodeInfo(pubkey=e.pubkey("id"), alias=e.string("alias"), implementation="cln", version=version,
                    block_height=e.integer("blockheight"), synced_to_chain=not warned)


def _policy(e: _Entry) -> ChannelPolicy:
    """A gossip update (``updates.local`` / ``updates.remote``) -> ChannelPolicy."""
    return ChannelPolicy(base_fee_msat=e.msat("fee_base_msat"), fee_rate_ppm=e.integer("fee_proportional_millionths"),
                         time_lock_delta=e.integer("cltv_expiry_delta"), min_htlc_msat=e.msat("htlc_minimum_msat"),
                         max_htlc_msat=e.msat("htlc_maximum_msat"))


def _policies(e: _Entry) -> tuple[ChannelPolicy | None, ChannelPolicy | None]:
    """Ours and the peer's: ``updates`` (v24.02+) or, for ours, the top-level fee fields."""
    updates = e.opt_entry("updates")
    local = updates.opt_entry("local") if updates else None
    remote = updates.opt_entry("remote") if updates else None
    ours: ChannelPolicy | None = None
    if local is not None:
        ours = _policy(local)
    elif "fee_base_msat" in e.obj or "fee_proportional_millionths" in e.obj:
        ours = ChannelPolicy(base_fee_msat=e.msat("fee_base_msat"),
                             fee_rate_ppm=e.integer("fee_proportional_millionths"),
                             min_htlc_msat=e.opt_msat("minimum_htlc_out_msat"),
                             max_htlc_msat=e.opt_msat("maximum_htlc_out_msat"))
    return ours, _policy(remote) if remote is not None else None


def _state(e: _Entry) -> tuple[str, str]:
    """(Core Lightning's state name, the model's state); an unknown name is a LightningVersionError."""
    name = e.string("state")
    if name not in CLN_STATES:
        raise LightningVersionError(f"{_show(name)} is not a channel state this adapter knows (a newer Core "
                                    "Lightning?)", node=e.node, call=e.call, field=e.path("state"))
    return name, CLN_STATES[name]


def _htlcs(e: _Entry) -> tuple[int, int]:
    """(count, total msat) of the HTLCs in flight."""
    items = e.opt_array("htlcs") or []
    total = sum(_Entry(item, e.path(f"htlcs[{j}]"), e.node, e.call).msat("amount_msat")
                for j, item in enumerate(items))
    return len(items), total


def _opener(e: _Entry) -> bool:
    opener = e.need("opener")
    if opener not in ("local", "remote"):
        raise e.bad("opener", f"{_show(opener)} is not 'local' or 'remote'")
    return opener == "local"


def _channel(e: _Entry, state: str) -> Channel:
    """One committed channel of ``listpeerchannels``."""
    peer, connected = e.pubkey("peer_id"), e.boolean("peer_connected")
    scid, point = e.opt_scid("short_channel_id"), f"{e.txid('funding_txid')}:{e.integer('funding_outnum')}"
    total, to_us = e.msat("total_msat"), e.msat("to_us_msat")
    if to_us > total:
        raise e.bad("to_us_msat", f"{to_us} exceeds total_msat {total}")
    n_htlcs, htlc_msat = _htlcs(e)
    our_reserve, their_reserve = e.opt_msat("our_reserve_msat"), e.opt_msat("their_reserve_msat")
    local_policy, remote_policy = _policies(e)
    return Channel(
        channel_id=scid, channel_point=point, peer=peer, state=state, active=state == OPEN and connected,
        capacity_sat=total // 1000, local_msat=to_us, remote_msat=total - to_us,
        pending_htlcs=n_htlcs, pending_htlc_msat=htlc_msat,
        local_reserve_sat=None if our_reserve is None else our_reserve // 1000,
        remote_reserve_sat=None if their_reserve is None else their_reserve // 1000,
        initiator_local=_opener(e), private=bool(e.opt_boolean("private")),
        local_policy=local_policy, remote_policy=remote_policy,
    )


def parse_listpeerchannels(result: Any, node: str = "lightning-rpc") -> tuple[list[Channel], list[str]]:
    """``listpeerchannels``' result -> (channels, problems): OPENINGD entries are skipped and recorded."""
    top = _Entry(result, "", node, "listpeerchannels")
    channels: list[Channel] = []
    problems: list[str] = []
    for i, item in enumerate(top.array("channels")):
        e = _Entry(item, f"channels[{i}]", node, "listpeerchannels")
        name, state = _state(e)
        if name == "OPENINGD":
            problems.append(f"channels[{i}]: OPENINGD (peer {_show(e.obj.get('peer_id'))}) has no funding "
                            "outpoint yet; skipped")
            continue
        channels.append(_channel(e, state))
    return channels, problems


def _forward(e: _Entry) -> Forward:
    """One entry of ``listforwards``."""
    status = e.string("status")
    if status not in _STATUSES:
        raise LightningVersionError(f"{_show(status)} is not a forward status this adapter knows (a newer Core "
                                    "Lightning?)", node=e.node, call=e.call, field=e.path("status"))
    outcome = _STATUSES[status]
    in_channel, out_channel = e.scid("in_channel"), e.opt_scid("out_channel")
    in_msat, out_msat, fee = e.msat("in_msat"), e.opt_msat("out_msat"), e.opt_msat("fee_msat")
    if outcome == SETTLED and out_msat is None:
        raise e.bad("out_msat", "missing for a settled forward")
    if outcome == SETTLED and fee is None:
        fee = max(0, in_msat - (out_msat or 0))
    failcode, failreason = e.opt_integer("failcode"), e.opt_string("failreason")
    failure = failreason or (f"failcode {failcode}" if failcode is not None else None)
    return Forward(
        received=e.opt_number("received_time") or 0.0, resolved=e.opt_number("resolved_time"),
        in_channel=in_channel, out_channel=out_channel, in_msat=in_msat, out_msat=out_msat,
        fee_msat=(fee or 0) if outcome == SETTLED else 0, outcome=outcome,
        failure=failure if outcome in (FAILED, LOCAL_FAILED) else None,
    )


def _forward_page(result: Any, node: str, offset: int = 0) -> list[tuple[int | None, Forward]]:
    """(created_index or None, Forward) for each entry; fields are named ``forwards[offset + i]``."""
    top = _Entry(result, "", node, "listforwards")
    out = []
    for i, item in enumerate(top.array("forwards")):
        e = _Entry(item, f"forwards[{offset + i}]", node, "listforwards")
        out.append((e.opt_integer("created_index"), _forward(e)))
    return out


def parse_listforwards(result: Any, node: str = "lightning-rpc") -> list[Forward]:
    """``listforwards``' result -> forwards, in Core Lightning's order."""
    return [f for _, f in _forward_page(result, node)]


# --------------------------------------------------------------------------------------------
# Transport
# --------------------------------------------------------------------------------------------


class _NonFinite(ValueError):
    """NaN or Infinity: not JSON, though Python's json would accept it."""


def _no_constant(name: str) -> Any:
    raise _NonFinite(name)


class CLNClient:
    """A read-only ``LightningSource`` over Core Lightning's RPC socket. ``problems`` lists what the last
    ``channels()`` skipped."""

    def __init__(self, config: CLNConfig, *, page_limit: int = PAGE_LIMIT) -> None:
        if isinstance(page_limit, bool) or not isinstance(page_limit, int) or page_limit < 1:
            raise ConfigError("cln.page_limit", f"{page_limit!r} must be an integer >= 1")
        self.config, self.page_limit = config, page_limit
        self.node = str(config.socket_path)
        self.problems: list[str] = []
        self._version: tuple[int, int, int] | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CLNClient({self.node!r})"

    # ---- LightningSource

    def info(self) -> NodeInfo:
        """``getinfo``; refuses versions before v23.02 and remembers the version for the other calls."""
        info = parse_getinfo(self.call("getinfo"), self.node)
        self._version = parse_version(info.version)
        return info

    def channels(self) -> list[Channel]:
        """``listpeerchannels``: every channel but those still in OPENINGD (see ``problems``)."""
        self._require_version()
        channels, self.problems = parse_listpeerchannels(self.call("listpeerchannels"), self.node)
        return channels

    def forwards(self, start: float, end: float) -> list[Forward]:
        """``listforwards`` (paged from v23.11), those received in [start, end), oldest first."""
        version = self._require_version()
        if version[:2] >= PAGING_VERSION:
            entries = self._paged_forwards()
        else:
            entries = [f for _, f in _forward_page(self.call("listforwards"), self.node)]
        return sorted((f for f in entries if start <= f.received < end), key=lambda f: f.received)

    # ---- helpers

    def _require_version(self) -> tuple[int, int, int]:
        if self._version is None:
            self.info()
        assert self._version is not None
        return self._version

    def _paged_forwards(self) -> list[Forward]:
        out: list[Forward] = []
        start = 0
        while True:
            params = {"index": "created", "start": start, "limit": self.page_limit}
            page = _forward_page(self.call("listforwards", params), self.node, len(out))
            out.extend(f for _, f in page)
            if len(page) < self.page_limit:
                return out
            last = page[-1][0]
            if last is None or last < start:
                raise LightningReplyError("missing or not increasing with index=created paging", node=self.node,
                                          call="listforwards", field=f"forwards[{len(out) - 1}].created_index")
            start = last + 1

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send one allow-listed read-only ``method`` and return its ``result``; anything else is refused
        before a connection is made."""
        if not isinstance(method, str) or method not in ALLOWED_METHODS:
            raise LightningError(f"{method!r} is not one of the read-only methods this client sends "
                                 f"({', '.join(sorted(ALLOWED_METHODS))})", node=self.node, call=str(method)[:40])
        with self._lock:
            req_id = f"anya-fl:{method}#{next(self._ids)}"
        request = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}
        deadline = time.monotonic() + self.config.timeout_s
        with self._connect(method, deadline) as sock:
            self._send(sock, method, json.dumps(request).encode("utf-8"), deadline)
            reply = self._read_reply(sock, method, deadline)
        return self._result(reply, method, req_id)

    def _conn_error(self, method: str, problem: str) -> LightningConnectionError:
        return LightningConnectionError(problem, node=self.node, call=method)

    def _timeout(self, method: str) -> LightningConnectionError:
        return self._conn_error(method, f"no reply within {self.config.timeout_s:g} s")

    def _remaining(self, method: str, deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._timeout(method)
        return left

    def _connect(self, method: str, deadline: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._remaining(method, deadline))
            sock.connect(self.node)
            return sock
        except FileNotFoundError:
            sock.close()
            raise self._conn_error(method, "no socket here: is lightningd running, and is this its network "
                                           "directory's lightning-rpc?") from None
        except PermissionError:
            sock.close()
            raise LightningAuthError("permission denied on the socket: run as lightningd's user, or give this "
                                     "user access (lightningd's rpc-file-mode)", node=self.node,
                                     call=method) from None
        except ConnectionRefusedError:
            sock.close()
            raise self._conn_error(method, "connection refused: nothing listens on this socket (lightningd "
                                           "stopped?)") from None
        except TimeoutError:
            sock.close()
            raise self._timeout(method) from None
        except OSError as exc:
            sock.close()
            raise self._conn_error(method, (exc.strerror or str(exc) or type(exc).__name__).lower()) from None
        except BaseException:
            sock.close()
            raise

    def _send(self, sock: socket.socket, method: str, data: bytes, deadline: float) -> None:
        try:
            sock.settimeout(self._remaining(method, deadline))
            sock.sendall(data)
        except TimeoutError:
            raise self._timeout(method) from None
        except OSError as exc:
            raise self._conn_error(method, f"sending the request failed ({exc.strerror or exc})") from None

    def _read_reply(self, sock: socket.socket, method: str, deadline: float) -> Any:
        """Read until ``"\\n\\n"`` and parse what precedes it; notifications (no id) are skipped."""
        buf = bytearray()
        scan = 0
        while True:
            mark = buf.find(b"\n\n", scan)
            if mark >= 0:
                obj = self._parse(bytes(buf[:mark]), method)
                del buf[:mark + 2]
                scan = 0
                if isinstance(obj, dict) and "method" in obj and "id" not in obj:
                    continue
                return obj
            scan = max(0, len(buf) - 1)
            try:
                sock.settimeout(self._remaining(method, deadline))
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                raise self._timeout(method) from None
            except OSError as exc:
                raise self._conn_error(method, f"reading the reply failed ({exc.strerror or exc})") from None
            if not chunk:
                return self._at_eof(bytes(buf), method)
            buf += chunk
            if len(buf) > MAX_REPLY_BYTES:
                raise LightningReplyError(f"longer than {MAX_REPLY_BYTES >> 20} MiB", node=self.node, call=method)

    def _at_eof(self, data: bytes, method: str) -> Any:
        if not data.strip():
            raise self._conn_error(method, "connection closed without a reply")
        try:
            return self._parse(data, method)
        except LightningReplyError:
            raise self._conn_error(method, f"connection closed mid-reply ({len(data)} bytes, no complete JSON "
                                           "object)") from None

    def _parse(self, data: bytes, method: str) -> Any:
        try:
            return json.loads(data, parse_constant=_no_constant)
        except _NonFinite as exc:
            raise LightningReplyError(f"{exc} is not JSON", node=self.node, call=method) from None
        except RecursionError:
            raise LightningReplyError("nested too deeply to be a reply", node=self.node, call=method) from None
        except (ValueError, UnicodeDecodeError):
            snippet = data[:60].decode("utf-8", "replace")
            raise LightningReplyError(f"not JSON (starts {snippet!r})", node=self.node, call=method) from None

    def _result(self, reply: Any, method: str, req_id: str) -> Any:
        def bad(problem: str, field: str | None = None) -> LightningReplyError:
            return LightningReplyError(problem, node=self.node, call=method, field=field)

        if not isinstance(reply, dict):
            raise bad(f"not a JSON-RPC reply object (got {type(reply).__name__})")
        if reply.get("id") not in (req_id, None) or (reply.get("id") is None and reply.get("error") is None):
            raise bad(f"{_show(reply.get('id'))} does not match the request id {req_id!r}", "id")
        error = reply.get("error")  # lightningd answers a request it cannot parse with id null
        if error is not None:
            if not isinstance(error, dict):
                raise bad(f"expected an object, got {_show(error)}", "error")
            code, message = error.get("code"), error.get("message")
            if isinstance(code, bool) or not isinstance(code, int):
                raise bad(f"{_show(code)} is not an integer", "error.code")
            if not isinstance(message, str):
                raise bad(f"{_show(message)} is not a string", "error.message")
            raise CLNRPCError(code, message, node=self.node, call=method)
        if "result" not in reply:
            raise bad("missing", "result")
        return reply["result"]
