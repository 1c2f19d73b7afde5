"""A Core Lightning look-alike: JSON-RPC 2.0 on a unix socket answering ``getinfo``, ``listpeerchannels`` and
``listforwards`` in Core Lightning's shapes, rendered from any ``LightningSource`` (the inverse of
``core.lightning.cln``). Standard library only: one accept thread, one thread per connection.

Like lightningd it reads a stream of request objects (no delimiter needed), answers each with compact JSON ending
in ``"\\n\\n"``, creates its socket with mode 0600, and answers errors with its codes and words: -32600 for a
malformed request, -32601 ``Unknown command 'x'``, -32602 for a parameter it does not take. What it renders depends
on the source's version (``NodeInfo.version``; the newest shapes when it does not parse): ``channel_type`` from
v23.05, ``created_index`` and ``index``/``start``/``limit`` paging from v23.11, ``updates`` and
``reestablished`` from v24.02. ``msat_strings=True`` writes every msat amount as ``"1000msat"`` (v0.12 to v23.02).

What a model object cannot say is rendered as documented here, so the adapter reads back what the source holds:
``peer_connected`` is the channel's ``active``; closed channels are left out (Core Lightning lists them in
``listclosedchannels``); the state is CHANNELD_NORMAL, CHANNELD_AWAITING_LOCKIN or CHANNELD_SHUTTING_DOWN;
``total_msat`` is ``capacity_sat * 1000`` and ``to_us_msat`` is ``local_msat`` (a source whose local + remote is
not the capacity reads back with remote = capacity - local); a channel's HTLCs are ``pending_htlcs`` outgoing
entries sharing ``pending_htlc_msat``; ``updates`` appears only when the local policy is complete (time-lock
delta, HTLC minimum and maximum known) and ``updates.remote`` only when the remote one is; ``disabled`` is not
rendered (Core Lightning's updates do not carry it). A forward's ``created_index`` is its rank by receipt among
all the source's forwards; ``failcode`` comes from the BOLT #4 name in ``failure`` (``"failcode N"`` gives N
alone, an unknown name gives ``failreason`` alone); ``received_time``/``resolved_time`` are rounded to the
millisecond as lightningd writes them, and a settled or failed forward without ``resolved`` gets its receipt
time (the schema requires one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

from core.lightning.cln import parse_version
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
    LightningSource,
    NodeInfo,
)

__all__ = ["BOLT4_FAILCODES", "CLNServer", "render_channel", "render_forward", "render_getinfo"]

METHOD_NOT_FOUND, INVALID_PARAMS, INVALID_REQUEST, LIGHTNINGD = -32601, -32602, -32600, -1
_NEWEST = (99, 0, 0)
_MAX_REQUEST = 1 << 20
_STATE_NAMES = {OPEN: "CHANNELD_NORMAL", PENDING_OPEN: "CHANNELD_AWAITING_LOCKIN", CLOSING: "CHANNELD_SHUTTING_DOWN",
                CLOSED: "CLOSED"}
_STATUS_NAMES = {SETTLED: "settled", FAILED: "failed", LOCAL_FAILED: "local_failed", OFFERED: "offered"}
_BADONION, _PERM, _NODE, _UPDATE = 0x8000, 0x4000, 0x2000, 0x1000
# BOLT #4 failure codes by the names lightningd writes in failreason (wire/onion_wire.csv)
BOLT4_FAILCODES = {
    "WIRE_TEMPORARY_NODE_FAILURE": _NODE | 2, "WIRE_PERMANENT_NODE_FAILURE": _PERM | _NODE | 2,
    "WIRE_REQUIRED_NODE_FEATURE_MISSING": _PERM | _NODE | 3,
    "WIRE_INVALID_ONION_VERSION": _BADONION | _PERM | 4, "WIRE_INVALID_ONION_HMAC": _BADONION | _PERM | 5,
    "WIRE_INVALID_ONION_KEY": _BADONION | _PERM | 6, "WIRE_TEMPORARY_CHANNEL_FAILURE": _UPDATE | 7,
    "WIRE_PERMANENT_CHANNEL_FAILURE": _PERM | 8, "WIRE_REQUIRED_CHANNEL_FEATURE_MISSING": _PERM | 9,
    "WIRE_UNKNOWN_NEXT_PEER": _PERM | 10, "WIRE_AMOUNT_BELOW_MINIMUM": _UPDATE | 11,
    "WIRE_FEE_INSUFFICIENT": _UPDATE | 12, "WIRE_INCORRECT_CLTV_EXPIRY": _UPDATE | 13,
    "WIRE_EXPIRY_TOO_SOON": _UPDATE | 14, "WIRE_INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS": _PERM | 15,
    "WIRE_FINAL_INCORRECT_CLTV_EXPIRY": 18, "WIRE_FINAL_INCORRECT_HTLC_AMOUNT": 19,
    "WIRE_CHANNEL_DISABLED": _UPDATE | 20, "WIRE_EXPIRY_TOO_FAR": 21, "WIRE_INVALID_ONION_PAYLOAD": _PERM | 22,
    "WIRE_MPP_TIMEOUT": 23, "WIRE_INVALID_ONION_BLINDING": _BADONION | _PERM | 24,
}
_FAILCODE_RE = re.compile(r"failcode (\d+)")
# each method's parameters, in positional order, with the version that added each
_PARAMS: dict[str, list[tuple[str, tuple[int, int, int]]]] = {
    "getinfo": [],
    "listpeerchannels": [("id", (0, 0, 0)), ("short_channel_id", (25, 5, 0))],
    "listforwards": [("status", (0, 0, 0)), ("in_channel", (0, 0, 0)), ("out_channel", (0, 0, 0)),
                     ("index", (23, 11, 0)), ("start", (23, 11, 0)), ("limit", (23, 11, 0))],
}


class _ParamError(Exception):
    """A request lightningd would refuse: ``code`` and ``message`` are its own."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


# --------------------------------------------------------------------------------------------
# Model -> Core Lightning's shapes
# --------------------------------------------------------------------------------------------


def _amount(value: int, strings: bool) -> int | str:
    return f"{value}msat" if strings else value


def _complete(policy: ChannelPolicy | None) -> bool:
    return policy is not None and None not in (policy.time_lock_delta, policy.min_htlc_msat, policy.max_htlc_msat)


def _update(p: ChannelPolicy, strings: bool) -> dict[str, Any]:
    return {"htlc_minimum_msat": _amount(p.min_htlc_msat or 0, strings),
            "htlc_maximum_msat": _amount(p.max_htlc_msat or 0, strings),
            "cltv_expiry_delta": p.time_lock_delta, "fee_base_msat": _amount(p.base_fee_msat, strings),
            "fee_proportional_millionths": p.fee_rate_ppm}


def _channel_id(txid: str, vout: int) -> str:
    """BOLT #2's v1 channel_id: the funding txid (internal byte order) XOR the output index."""
    raw = bytearray(bytes.fromhex(txid)[::-1]) if len(txid) == 64 else bytearray(32)
    raw[30] ^= (vout >> 8) & 0xFF
    raw[31] ^= vout & 0xFF
    return raw.hex()


def _htlcs(c: Channel, height: int, strings: bool) -> list[dict[str, Any]]:
    n = c.pending_htlcs
    if n <= 0:
        return []
    share, extra = divmod(c.pending_htlc_msat, n)
    return [{"direction": "out", "id": k, "amount_msat": _amount(share + (extra if k == 0 else 0), strings),
             "expiry": height + 144, "payment_hash": hashlib.sha256(f"{c.channel_point}:{k}".encode()).hexdigest(),
             "state": "SENT_ADD_ACK_REVOCATION"} for k in range(n)]


def _fee_fields(c: Channel, strings: bool) -> dict[str, Any]:
    p = c.local_policy
    if p is None:
        return {}
    return {"fee_base_msat": _amount(p.base_fee_msat, strings), "fee_proportional_millionths": p.fee_rate_ppm}


def _reserve_fields(c: Channel, strings: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dust_limit_msat": _amount(546_000, strings)}
    if c.remote_reserve_sat is not None:
        out["their_reserve_msat"] = _amount(c.remote_reserve_sat * 1000, strings)
    if c.local_reserve_sat is not None:
        out["our_reserve_msat"] = _amount(c.local_reserve_sat * 1000, strings)
    total = c.capacity_sat * 1000
    spendable = max(0, c.local_msat - (c.local_reserve_sat or 0) * 1000)
    receivable = max(0, total - c.local_msat - (c.remote_reserve_sat or 0) * 1000)
    out.update(spendable_msat=_amount(spendable, strings), receivable_msat=_amount(receivable, strings),
               minimum_htlc_in_msat=_amount(0, strings))
    p = c.local_policy
    if p is not None and p.min_htlc_msat is not None:
        out["minimum_htlc_out_msat"] = _amount(p.min_htlc_msat, strings)
    if p is not None and p.max_htlc_msat is not None:
        out["maximum_htlc_out_msat"] = _amount(p.max_htlc_msat, strings)
    return out


def render_channel(c: Channel, our_id: str, version: tuple[int, int, int], height: int,
                   strings: bool = False) -> dict[str, Any]:
    """One ``listpeerchannels`` entry, its fields in lightningd's order (json_add_channel)."""
    txid, _, vout_text = c.channel_point.rpartition(":")
    vout = int(vout_text) if vout_text.isdigit() else 0
    out: dict[str, Any] = {"peer_id": c.peer, "peer_connected": c.active}
    if c.active and version >= (24, 2, 0):
        out["reestablished"] = True
    if version >= (23, 5, 0):
        out["channel_type"] = {"bits": [12, 22], "names": ["static_remotekey/even", "anchors/even"]}
    if version >= (24, 2, 0) and _complete(c.local_policy):
        assert c.local_policy is not None
        out["updates"] = {"local": _update(c.local_policy, strings)}
        if _complete(c.remote_policy):
            assert c.remote_policy is not None
            out["updates"]["remote"] = _update(c.remote_policy, strings)
    out["state"] = _STATE_NAMES[c.state]
    if version >= (24, 2, 0):
        out["lost_state"] = False
    out["feerate"] = {"perkw": 253, "perkb": 1012}
    if c.state in (OPEN, PENDING_OPEN):
        out["owner"] = "channeld"
    if c.channel_id is not None:
        out["short_channel_id"] = c.channel_id
        out["direction"] = 0 if our_id < c.peer else 1
    total = c.capacity_sat * 1000
    local_funds = total if c.initiator_local else 0
    out.update({
        "channel_id": _channel_id(txid, vout), "funding_txid": txid, "funding_outnum": vout, "private": c.private,
        "opener": "local" if c.initiator_local else "remote", "features": ["option_static_remotekey"],
        "funding": {"local_funds_msat": _amount(local_funds, strings),
                    "remote_funds_msat": _amount(total - local_funds, strings), "pushed_msat": _amount(0, strings)},
        "to_us_msat": _amount(c.local_msat, strings), "min_to_us_msat": _amount(c.local_msat, strings),
        "max_to_us_msat": _amount(c.local_msat, strings), "total_msat": _amount(total, strings),
    })
    out.update(_fee_fields(c, strings))
    out.update(_reserve_fields(c, strings))
    out.update({"their_to_self_delay": 144, "our_to_self_delay": 144, "max_accepted_htlcs": 483,
                "state_changes": [], "status": [], "htlcs": _htlcs(c, height, strings)})
    return out


def _failure_fields(failure: str | None) -> dict[str, Any]:
    if failure is None:
        return {}
    if failure in BOLT4_FAILCODES:
        return {"failcode": BOLT4_FAILCODES[failure], "failreason": failure}
    m = _FAILCODE_RE.fullmatch(failure)
    return {"failcode": int(m[1])} if m else {"failreason": failure}


def render_forward(f: Forward, rank: int, strings: bool = False, created_index: bool = True) -> dict[str, Any]:
    """One ``listforwards`` entry, its fields in lightningd's order (json_add_forwarding_fields); ``rank`` (from
    1) is its ``created_index`` (v23.11+) and its ``in_htlc_id``."""
    out: dict[str, Any] = {"created_index": rank} if created_index else {}
    out["in_channel"] = f.in_channel
    out["in_htlc_id"] = rank
    if f.out_channel is not None:
        out["out_channel"] = f.out_channel
    out["in_msat"] = _amount(f.in_msat, strings)
    if f.out_msat is not None:
        fee = f.fee_msat if f.outcome == SETTLED else max(0, f.in_msat - f.out_msat)
        out.update(out_msat=_amount(f.out_msat, strings), fee_msat=_amount(fee, strings))
    out["status"] = _STATUS_NAMES[f.outcome]
    out.update(_failure_fields(f.failure))
    out["style"] = "tlv"
    out["received_time"] = round(f.received, 3)
    resolved = f.resolved if f.resolved is not None or f.outcome not in (SETTLED, FAILED) else f.received
    if resolved is not None:
        out["resolved_time"] = round(resolved, 3)
    return out


def render_getinfo(info: NodeInfo, channels: list[Channel], forwards: list[Forward], *, lightning_dir: str,
                   network: str = "regtest", strings: bool = False) -> dict[str, Any]:
    """``getinfo``'s result: counts from the channels, fees from the settled forwards, a sync warning when the
    source says it is not synced."""
    listed = [c for c in channels if c.state != CLOSED]
    out: dict[str, Any] = {
        "id": info.pubkey, "alias": info.alias, "color": info.pubkey[2:8] or "000000",
        "num_peers": len({c.peer for c in listed}),
        "num_pending_channels": sum(c.state == PENDING_OPEN for c in listed),
        "num_active_channels": sum(c.state == OPEN for c in listed),
        "num_inactive_channels": sum(c.state == CLOSING for c in listed),
        "address": [], "binding": [], "version": info.version, "blockheight": info.block_height,
        "network": network,
        "fees_collected_msat": _amount(sum(f.fee_msat for f in forwards if f.outcome == SETTLED), strings),
        "lightning-dir": lightning_dir,
    }
    if info.synced_to_chain is False:
        out["warning_lightningd_sync"] = "Still loading latest blocks from bitcoind."
    return out


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


def _named_params(method: str, params: Any, version: tuple[int, int, int]) -> dict[str, Any]:
    """The request's parameters by name (positional arrays too), nulls dropped; unknown names refused."""
    known = [name for name, added in _PARAMS[method] if version >= added]
    if isinstance(params, list):
        if len(params) > len(known):
            raise _ParamError(INVALID_PARAMS, f"too many parameters: got {len(params)}, expected {len(known)}")
        params = dict(zip(known, params, strict=False))
    if not isinstance(params, dict):
        raise _ParamError(INVALID_PARAMS, "Expected array or object for params")
    for name in params:
        if name not in known:
            raise _ParamError(INVALID_PARAMS, f"unknown parameter: {name}, this may be caused by a failure to "
                              "autodetect key=value-style parameters. Please try using the -k flag and explicit "
                              "key=value pairs of parameters.")
    return {k: v for k, v in params.items() if v is not None}


def _uint(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise _ParamError(INVALID_PARAMS, f"{name}: should be an unsigned 64 bit integer: invalid token "
                                          f"'{json.dumps(value)}'")
    return value


class CLNServer:
    """Serves ``source`` as Core Lightning would on ``socket_path``; ``requests`` lists the methods received."""

    def __init__(self, source: LightningSource, socket_path: Path, *, msat_strings: bool = False,
                 network: str = "regtest") -> None:
        self.source, self.socket_path = source, Path(socket_path)
        self.msat_strings, self.network = msat_strings, network
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()

    def __enter__(self) -> CLNServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- life cycle

    def start(self) -> CLNServer:
        """Bind the socket (mode 0600 before it listens) and start accepting."""
        path = str(self.socket_path)
        if os.path.lexists(path):
            raise FileExistsError(f"{path}: already exists")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(16)
            listener.settimeout(0.05)
        except BaseException:
            listener.close()
            raise
        self._stop.clear()
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, args=(listener,), name="cln-server-accept",
                                          daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the socket and every connection, remove the file, join the threads."""
        self._stop.set()
        if self._acceptor is not None:  # it polls the stop flag every 50 ms; the listener is closed after it
            self._acceptor.join()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=5)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with self._lock:
                self._conns.add(conn)
            self._spawn(self._serve, "cln-server-conn", conn)

    # ---- one connection

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        decoder = json.JSONDecoder()
        try:
            while not self._stop.is_set():
                data = conn.recv(1 << 16)
                if not data:
                    return
                buf += data
                while True:
                    text = buf.decode("utf-8", "surrogateescape")
                    stripped = text.lstrip()
                    if not stripped:
                        buf = b""
                        break
                    try:
                        request, end = decoder.raw_decode(stripped)
                    except RecursionError:
                        self._send(conn, self._error(None, INVALID_REQUEST, "Malformed request"))
                        return
                    except json.JSONDecodeError:  # incomplete, until it passes the size limit
                        if len(buf) > _MAX_REQUEST:
                            self._send(conn, self._error(None, INVALID_REQUEST, "Malformed request"))
                            return
                        break
                    consumed = len(text) - len(stripped) + end
                    buf = text[consumed:].encode("utf-8", "surrogateescape")
                    self._send(conn, self._answer(request))
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    @staticmethod
    def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply, separators=(",", ":")).encode("utf-8") + b"\n\n")

    @staticmethod
    def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            return self._error(None, INVALID_REQUEST, "Expected {} for json command")
        req_id = request.get("id")
        if "id" not in request:
            return self._error(None, INVALID_REQUEST, "No id")
        if request.get("jsonrpc") != "2.0":
            return self._error(req_id, INVALID_REQUEST, 'jsonrpc: "2.0" must be specified in the request')
        method, params = request.get("method"), request.get("params")
        if method is None or params is None:
            return self._error(req_id, INVALID_REQUEST, "No params" if method is not None else "No method")
        if not isinstance(method, str):
            return self._error(req_id, INVALID_REQUEST, "Expected string for method")
        with self._lock:
            self.requests.append(method)
        if method not in _PARAMS:
            return self._error(req_id, METHOD_NOT_FOUND, f"Unknown command '{method}'")
        try:
            result = self._dispatch(method, params)
        except _ParamError as exc:
            return self._error(req_id, exc.code, exc.message)
        except Exception as exc:  # a source's failure is lightningd's -1, never a dead thread
            return self._error(req_id, LIGHTNINGD, " ".join(str(exc).split()) or type(exc).__name__)
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    # ---- methods

    def _dispatch(self, method: str, params: Any) -> dict[str, Any]:
        info = self.source.info()
        version = parse_version(info.version) or _NEWEST
        named = _named_params(method, params, version)
        if method == "getinfo":
            return render_getinfo(info, self.source.channels(), self._all_forwards(),
                                  lightning_dir=str(self.socket_path.parent), network=self.network,
                                  strings=self.msat_strings)
        if method == "listpeerchannels":
            return self._listpeerchannels(info, version, named)
        return self._listforwards(version, named)

    def _all_forwards(self) -> list[Forward]:
        return self.source.forwards(float("-inf"), float("inf"))

    def _listpeerchannels(self, info: NodeInfo, version: tuple[int, int, int], named: dict[str, Any]) -> dict:
        channels = [c for c in self.source.channels() if c.state != CLOSED]
        if "id" in named:
            channels = [c for c in channels if c.peer == named["id"]]
        if "short_channel_id" in named:
            channels = [c for c in channels if c.channel_id == named["short_channel_id"]]
        return {"channels": [render_channel(c, info.pubkey, version, info.block_height, self.msat_strings)
                             for c in channels]}

    def _listforwards(self, version: tuple[int, int, int], named: dict[str, Any]) -> dict:
        status = named.get("status")
        if status is not None and status not in _STATUS_NAMES.values():
            raise _ParamError(INVALID_PARAMS, f"status: should be a valid forward status: invalid token "
                                              f"'{json.dumps(status)}'")
        index, start, limit = named.get("index"), _uint(named, "start"), _uint(named, "limit")
        if index not in (None, "created"):
            raise _ParamError(INVALID_PARAMS, f"index: {json.dumps(index)} is not simulated (only 'created')")
        if (start or limit is not None) and index is None:
            raise _ParamError(INVALID_PARAMS, "Can only specify {start} with {index}" if start
                              else "Can only specify {limit} with {index}")
        numbered = list(enumerate(self._all_forwards(), start=1))
        numbered = [(i, f) for i, f in numbered
                    if (status is None or _STATUS_NAMES[f.outcome] == status)
                    and named.get("in_channel") in (None, f.in_channel)
                    and named.get("out_channel") in (None, f.out_channel)
                    and i >= (start or 0)]
        if limit is not None:
            numbered = numbered[:limit]
        with_index = version >= (23, 11, 0)
        return {"forwards": [render_forward(f, i, self.msat_strings, with_index) for i, f in numbered]}
