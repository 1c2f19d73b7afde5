"""Node telemetry: Bitcoin Core's RPC replies -> one float32 vector per sample (``TELEMETRY_SCHEMA``).

``telemetry_sample`` takes the raw JSON replies of getpeerinfo, getnetworkinfo, getchaintips, getmempoolinfo
and getblockchaininfo taken at ``now`` (UNIX seconds), optionally the previous sample (for rates and churn)
and a resources dict (as ``PerformanceMonitor.sample_resources`` returns), and gives a ``TelemetrySample``.

* Bad input never raises: a malformed peer or chain-tip entry is skipped, a malformed optional field is
  treated as absent, a missing reply (None) leaves its features at 0; each case adds one line to
  ``problems`` naming the field (``getpeerinfo[3].pingtime: ...``). Only a wrong ``now`` or ``previous``
  (the caller's own arguments, not the node's replies) raises ``FeatureError``.
* Nothing is clipped: ``TELEMETRY_SCHEMA.check(vector)`` names the features outside their valid range, and
  the sample's ``problems`` name them too.
* Privacy: a sample keeps, per peer, only its node-local id, its inbound flag and its counters (for the next
  sample's rates). No address is stored, not even in ``problems`` (a malformed address is described, never
  quoted); netgroups are counted and forgotten. ``TelemetrySample.to_public()`` holds the time and the vector
  only.

Netgroups follow Core's ``NetGroupManager::GetGroup`` without asmap (``mapped_as`` is ignored, so nodes with
and without -asmap give comparable values): IPv4 /16 (IPv6 with an embedded IPv4, i.e. mapped, 6to4 or
Teredo, counts as that IPv4), IPv6 /32 (he.net's 2001:470::/32 by /36, as Core does), every unroutable
address in one group. Onion, I2P and CJDNS each count as one group per network: Core's GetGroup takes 4
(CJDNS 12) bits of their key, which anyone grinds for free, and Core's outbound selection itself ignores
those groups for diversity. Unlike Core, the documentation ranges (RFC 5737, RFC 3849) count as routable, so
simulated nodes, which use them to name no real host, keep their diversity.
"""

from __future__ import annotations

import ipaddress
import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import numpy as np

from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA, TelemetrySchema
from core.errors import FeatureError

__all__ = ["TELEMETRY_SCHEMA", "PeerCounters", "TelemetrySample", "TelemetrySchema", "telemetry_sample"]


_INDEX = {name: i for i, name in enumerate(TELEMETRY_SCHEMA.names)}

_BTC_PER_KVB_TO_SAT_PER_VB = 1e5
_NETWORKS = ("ipv4", "ipv6", "onion", "i2p", "cjdns")
_CORE_NETWORKS = {*_NETWORKS, "not_publicly_routable", "internal"}
_CONNECTION_TYPES = {"inbound": "", "outbound-full-relay": "peers_outbound_full_relay",
                     "block-relay-only": "peers_block_relay_only", "manual": "peers_manual",
                     "feeler": "peers_feeler_addrfetch", "addr-fetch": "peers_feeler_addrfetch"}
_SHORT_LIVED = {"feeler", "addr-fetch"}  # not counted for netgroups and churn, as in Core's outbound selection
_TIP_STATUSES = {"active", "valid-fork", "valid-headers", "headers-only", "invalid"}
_BYTE_KINDS = ("inv", "tx", "addr", "other")
_ADDR_MSGS = {"addr", "addrv2"}

_ONION_RE = re.compile(r"[a-z2-7]{56}\.onion")
_I2P_RE = re.compile(r"[a-z2-7]{52}\.b32\.i2p")
_PORT_RE = re.compile(r"\d{1,5}")

# Core's IsRoutable() refusals, less the documentation ranges (see the module docstring)
_UNROUTABLE = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "198.18.0.0/15", "::/128", "::1/128", "fc00::/7", "fe80::/64", "2001:10::/28",
    "2001:20::/28",
))
_HE_NET = ipaddress.ip_network("2001:470::/32")
_CJDNS = ipaddress.ip_network("fc00::/8")


@dataclass(frozen=True)
class PeerCounters:
    """What a sample keeps of one peer for the next sample's rates: no address, only flags and counters."""

    inbound: bool
    addr_processed: float | None
    addr_rate_limited: float | None
    bytes_recv: tuple[float, float, float, float] | None  # inv, tx, addr + addrv2, other


@dataclass(frozen=True, eq=False)
class TelemetrySample:
    """One telemetry vector at ``time`` plus the node-local peer state the next sample needs.

    ``peers`` maps Core's peer id to its counters and is None when getpeerinfo gave nothing usable; it and
    ``problems`` stay on the node: share ``to_public()`` only.
    """

    time: float
    vector: np.ndarray
    problems: list[str] = field(default_factory=list)
    peers: Mapping[int, PeerCounters] | None = field(default=None, repr=False)

    def value(self, name: str) -> float:
        """One feature by name."""
        return float(self.vector[_INDEX[name]])

    def as_dict(self) -> dict[str, float]:
        """Feature name -> value."""
        return dict(zip(TELEMETRY_SCHEMA.names, self.vector.tolist(), strict=True))

    def to_public(self) -> dict[str, Any]:
        """The shareable part: the time and the vector (JSON-ready), no peer id, address or problem text."""
        return {"time": self.time, "vector": self.vector.tolist()}


# ------------------------------------------------------------------------------------------------
# reading JSON fields: each helper returns None (and notes a problem) for what it cannot use
# ------------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: Any, path: str, problems: list[str], *, minimum: float | None = 0.0) -> float | None:
    """A finite JSON number (not a bool), at least ``minimum``; else None with a problem."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real | Decimal):
        problems.append(f"{path}: {_show(value)} is not a number; treated as absent")
        return None
    x = float(value)
    if not math.isfinite(x):
        problems.append(f"{path}: {_show(value)} is not a finite number; treated as absent")
        return None
    if minimum is not None and x < minimum:
        problems.append(f"{path}: {x:g} is below {minimum:g}; treated as absent")
        return None
    return x


def _optional_number(entry: Mapping[str, Any], key: str, path: str, problems: list[str],
                     *, minimum: float | None = 0.0) -> float | None:
    if key not in entry:
        return None
    return _number(entry[key], f"{path}.{key}", problems, minimum=minimum)


def _flag(entry: Mapping[str, Any], key: str, path: str, problems: list[str]) -> bool | None:
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, bool):
        problems.append(f"{path}.{key}: {_show(value)} is not true or false; treated as absent")
        return None
    return value


def _reply(value: Any, method: str, kind: type, features: str, problems: list[str]) -> Any:
    if value is None:
        problems.append(f"{method}: no reply; {features} are 0")
        return None
    if not isinstance(value, kind):
        want = "a list" if kind is list else "an object"
        problems.append(f"{method}: expected {want}, got {_kind(value)}; {features} are 0")
        return None
    return value


# ------------------------------------------------------------------------------------------------
# addresses and netgroups
# ------------------------------------------------------------------------------------------------

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address | str  # str: "onion" or "i2p" (the key is not kept)


def _parse_addr(addr: str) -> _Address | None:
    """Core's ``addr`` (host:port, [IPv6]:port, <56>.onion:port, <52>.b32.i2p:port) -> address, or None."""
    if addr.startswith("["):
        host, sep, port = addr[1:].partition("]:")
        if not sep:
            return None
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            return None
    if not _PORT_RE.fullmatch(port) or int(port) > 65_535:
        return None
    if addr.startswith("["):
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return None
        return ip.ipv4_mapped or ip  # Core keeps ::ffff:a.b.c.d as IPv4
    if _ONION_RE.fullmatch(host):
        return "onion"
    if _I2P_RE.fullmatch(host):
        return "i2p"
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None


def _linked_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address, as Core's GetLinkedIPv4
    return None


def _network_of(address: _Address) -> str:
    """The network Core would name for an address read from ``addr`` alone."""
    if isinstance(address, str):
        return address
    if any(address in net for net in _UNROUTABLE if net.version == address.version):
        return "not_publicly_routable"
    return "ipv4" if _linked_ipv4(address) is not None else "ipv6"  # Core's GetNetClass: 6to4, Teredo are ipv4


def _netgroup(address: _Address, network: str) -> tuple[Any, ...]:
    """Core's GetGroup without asmap, with one group per privacy network (see the module docstring)."""
    if network in ("onion", "i2p", "cjdns"):
        return (network,)
    if isinstance(address, str):  # an onion or i2p name although the network field says otherwise
        return (address,)
    if any(address in net for net in _UNROUTABLE if net.version == address.version):
        return ("unroutable",)
    v4 = _linked_ipv4(address)
    if v4 is not None:
        return ("ipv4", v4.packed[:2])
    packed = address.packed
    if address in _HE_NET:
        return ("ipv6", packed[:4], packed[4] | 0x0F)
    return ("ipv6", packed[:4])


# ------------------------------------------------------------------------------------------------
# the sample
# ------------------------------------------------------------------------------------------------


@dataclass
class _Peer:
    id: int
    inbound: bool
    connection_type: str | None
    network: str
    group: tuple[Any, ...] | None
    counters: PeerCounters
    ping_ms: float | None
    minping_ms: float | None
    synced_headers: float | None
    synced_blocks: float | None
    hb_to: bool
    hb_from: bool


def _read_bytes(entry: Mapping[str, Any], path: str, problems: list[str]) -> tuple[float, float, float, float] | None:
    if "bytesrecv_per_msg" not in entry:
        return None
    per_msg = entry["bytesrecv_per_msg"]
    if not isinstance(per_msg, Mapping):
        problems.append(f"{path}.bytesrecv_per_msg: expected an object, got {_kind(per_msg)}; treated as absent")
        return None
    sums = dict.fromkeys(_BYTE_KINDS, 0.0)  # Core lists only message types seen: a missing one is 0
    for msg, value in per_msg.items():
        n = _number(value, f"{path}.bytesrecv_per_msg[{_show(msg)}]", problems)
        if n is None:
            continue
        kind = "addr" if msg in _ADDR_MSGS else (msg if msg in ("inv", "tx") else "other")
        sums[kind] += n
    return tuple(sums[k] for k in _BYTE_KINDS)  # type: ignore[return-value]


def _read_peer(entry: Any, path: str, problems: list[str]) -> _Peer | None:
    """One getpeerinfo entry -> _Peer, or None (with a problem) when it cannot be used at all."""
    if not isinstance(entry, Mapping):
        problems.append(f"{path}: expected an object, got {_kind(entry)}; peer skipped")
        return None
    if "id" not in entry:
        problems.append(f"{path}.id: missing; peer skipped")
        return None
    pid = entry["id"]
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 0:
        problems.append(f"{path}.id: {_show(pid)} is not a peer id (an integer >= 0); peer skipped")
        return None

    ctype = entry.get("connection_type")
    if ctype is not None and ctype not in _CONNECTION_TYPES:
        problems.append(f"{path}.connection_type: {_show(ctype)} is not a connection type Core names; "
                        "treated as absent")
        ctype = None
    inbound = _flag(entry, "inbound", path, problems)
    if inbound is None:
        if ctype is None:
            problems.append(f"{path}.inbound: missing, and no connection_type to tell; peer skipped")
            return None
        inbound = ctype == "inbound"
    elif ctype is not None and inbound != (ctype == "inbound"):
        problems.append(f"{path}.connection_type: {ctype} contradicts inbound {str(inbound).lower()}; "
                        "connection_type treated as absent")
        ctype = None

    address: _Address | None = None
    raw_addr = entry.get("addr")
    if raw_addr is None:
        problems.append(f"{path}.addr: missing; netgroup unknown")
    elif not isinstance(raw_addr, str):
        problems.append(f"{path}.addr: expected a string, got {_kind(raw_addr)}; netgroup unknown")
    else:
        address = _parse_addr(raw_addr)
        if address is None:  # described, never quoted: a near-address must not be kept in problems
            problems.append(f"{path}.addr: a {len(raw_addr)}-character string that is not an address Core writes "
                            "(a.b.c.d:port, [ipv6]:port, <56 base32>.onion:port, <52 base32>.b32.i2p:port); "
                            "netgroup unknown")

    network = entry.get("network")
    if network is not None and network not in _CORE_NETWORKS:
        problems.append(f"{path}.network: {_show(network)} is not a network Core names; treated as absent")
        network = None
    if network is None:
        network = _network_of(address) if address is not None else "not_publicly_routable"
    elif network == "cjdns" and address is not None and (isinstance(address, str) or address not in _CJDNS):
        problems.append(f"{path}.addr: not in fc00::/8 although network is cjdns; netgroup unknown")
        address = None
    group = _netgroup(address, network) if address is not None else None

    ping, minping = (_optional_number(entry, k, path, problems) for k in ("pingtime", "minping"))
    counters = PeerCounters(
        inbound=inbound,
        addr_processed=_optional_number(entry, "addr_processed", path, problems),
        addr_rate_limited=_optional_number(entry, "addr_rate_limited", path, problems),
        bytes_recv=_read_bytes(entry, path, problems),
    )
    return _Peer(
        id=pid, inbound=inbound, connection_type=ctype, network=network, group=group, counters=counters,
        ping_ms=None if ping is None else ping * 1_000.0, minping_ms=None if minping is None else minping * 1_000.0,
        synced_headers=_optional_number(entry, "synced_headers", path, problems, minimum=None),
        synced_blocks=_optional_number(entry, "synced_blocks", path, problems, minimum=None),
        hb_to=bool(_flag(entry, "bip152_hb_to", path, problems)),
        hb_from=bool(_flag(entry, "bip152_hb_from", path, problems)),
    )


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def _peer_features(out: dict[str, float], peers: list[_Peer], height: float | None,
                   previous: Mapping[int, PeerCounters] | None, elapsed: float | None) -> None:
    out["peers_total"] = len(peers)
    out["peers_inbound"] = sum(p.inbound for p in peers)
    for p in peers:
        column = _CONNECTION_TYPES.get(p.connection_type or "", "")
        if column:
            out[column] += 1
        out[f"peers_{p.network}" if p.network in _NETWORKS else "peers_other_network"] += 1

    # long-lived outbound: full-relay, block-relay-only, manual (and outbound of an unnamed type)
    outbound = [p for p in peers if not p.inbound and p.connection_type not in _SHORT_LIVED]
    groups = Counter(p.group for p in outbound if p.group is not None)
    if groups:
        out["outbound_netgroups"] = len(groups)
        out["outbound_top_netgroup_share"] = max(groups.values()) / groups.total()

    if previous is not None and elapsed is not None:
        if outbound:
            out["outbound_churn"] = sum(p.id not in previous for p in outbound) / len(outbound)
        out["inbound_new_per_min"] = sum(p.inbound and p.id not in previous for p in peers) / (elapsed / 60.0)
        addr_processed = addr_limited = 0.0
        byte_sums = [0.0] * len(_BYTE_KINDS)
        for p in peers:
            before = previous.get(p.id)
            if before is None:
                continue
            now_c = p.counters
            if now_c.addr_processed is not None and before.addr_processed is not None:
                addr_processed += max(0.0, now_c.addr_processed - before.addr_processed)
            if now_c.addr_rate_limited is not None and before.addr_rate_limited is not None:
                addr_limited += max(0.0, now_c.addr_rate_limited - before.addr_rate_limited)
            if now_c.bytes_recv is not None and before.bytes_recv is not None:
                for k, (a, b) in enumerate(zip(now_c.bytes_recv, before.bytes_recv, strict=True)):
                    byte_sums[k] += max(0.0, a - b)
        out["addr_processed_per_s"] = addr_processed / elapsed
        out["addr_rate_limited_per_s"] = addr_limited / elapsed
        for kind, total in zip(_BYTE_KINDS, byte_sums, strict=True):
            out[f"bytes_recv_per_s_{kind}"] = total / elapsed

    pings = [p.ping_ms for p in peers if p.ping_ms is not None]
    out["ping_p50_ms"] = _percentile(pings, 50)
    out["ping_p90_ms"] = _percentile(pings, 90)
    out["minping_p50_ms"] = _percentile([p.minping_ms for p in peers if p.minping_ms is not None], 50)
    if height is not None:
        out["peers_headers_ahead"] = sum(p.synced_headers is not None and p.synced_headers > height for p in peers)
        out["peers_blocks_ahead"] = sum(p.synced_blocks is not None and p.synced_blocks > height for p in peers)
    out["bip152_hb_to"] = sum(p.hb_to for p in peers)
    out["bip152_hb_from"] = sum(p.hb_from for p in peers)


def _tip_features(out: dict[str, float], tips: list[Any], problems: list[str]) -> None:
    active = 0
    for i, tip in enumerate(tips):
        path = f"getchaintips[{i}]"
        if not isinstance(tip, Mapping):
            problems.append(f"{path}: expected an object, got {_kind(tip)}; tip skipped")
            continue
        status = tip.get("status")
        if not isinstance(status, str):
            problems.append(f"{path}.status: {'missing' if status is None else _show(status)}; tip skipped")
            continue
        if status == "active":
            active += 1
            continue
        if status not in _TIP_STATUSES:
            problems.append(f"{path}.status: {_show(status)} is not a status Core names; counted as not active")
        out["chain_tips_not_active"] += 1
        out["chain_tips_valid_fork"] += status == "valid-fork"
        out["chain_tips_headers_only"] += status == "headers-only"
        branchlen = _optional_number(tip, "branchlen", path, problems)
        if branchlen is not None:
            out["max_fork_branchlen"] = max(out["max_fork_branchlen"], branchlen)
    if active != 1:
        problems.append(f"getchaintips: {active} tips with status active, Core reports exactly one")


def telemetry_sample(
    *,
    peers: Any,
    network: Any,
    chaintips: Any,
    mempool: Any,
    blockchain: Any,
    now: float,
    previous: TelemetrySample | None = None,
    resources: Mapping[str, Any] | None = None,
) -> TelemetrySample:
    """One ``TELEMETRY_SCHEMA`` vector from Core's raw replies taken at ``now`` (UNIX s).

    ``peers``: getpeerinfo (list); ``network``: getnetworkinfo; ``chaintips``: getchaintips (list);
    ``mempool``: getmempoolinfo; ``blockchain``: getblockchaininfo; ``previous``: the sample before this one
    (rates and churn are 0 without it); ``resources``: cpu_percent, memory_rss_mb (or rss_mb) and disk_free_gb,
    as ``PerformanceMonitor.sample_resources`` gives them. Reply problems never raise (see the module docstring).
    """
    if isinstance(now, bool) or not isinstance(now, numbers.Real) or not math.isfinite(float(now)):
        raise FeatureError("now", f"{_show(now)} is not a finite UNIX time in seconds")
    now = float(now)
    if previous is not None and not isinstance(previous, TelemetrySample):
        raise FeatureError("previous", f"expected a TelemetrySample or None, got {_kind(previous)}")
    problems: list[str] = []
    out = dict.fromkeys(TELEMETRY_SCHEMA.names, 0.0)

    height = None
    info = _reply(blockchain, "getblockchaininfo", Mapping, "tip_age_s, peers_headers_ahead and peers_blocks_ahead",
                  problems)
    if info is not None:
        height = _optional_number(info, "blocks", "getblockchaininfo", problems)
        tip_time = _optional_number(info, "time", "getblockchaininfo", problems)
        if height is None:
            problems.append("getblockchaininfo.blocks: missing or unusable; peers_headers_ahead and "
                            "peers_blocks_ahead are 0")
        if tip_time is None:
            problems.append("getblockchaininfo.time: missing or unusable; tip_age_s is 0")
        else:
            out["tip_age_s"] = now - tip_time

    elapsed = None
    prev_peers = previous.peers if previous is not None else None
    if previous is not None:
        if now > previous.time:
            elapsed = now - previous.time
        else:
            problems.append(f"now: {now:g} is not after the previous sample's time {previous.time:g}; "
                            "rates and churn are 0")

    peer_list = _reply(peers, "getpeerinfo", list, "peer features", problems)
    kept: dict[int, PeerCounters] | None = None
    if peer_list is not None:
        read: list[_Peer] = []
        kept = {}
        for i, entry in enumerate(peer_list):
            peer = _read_peer(entry, f"getpeerinfo[{i}]", problems)
            if peer is None:
                continue
            if peer.id in kept:
                problems.append(f"getpeerinfo[{i}].id: {peer.id} repeats an earlier peer's id; peer skipped")
                continue
            kept[peer.id] = peer.counters
            read.append(peer)
        _peer_features(out, read, height, prev_peers, elapsed)

    net = _reply(network, "getnetworkinfo", Mapping, "network_active and connections", problems)
    if net is not None:
        active = _flag(net, "networkactive", "getnetworkinfo", problems)
        if active is None and "networkactive" not in net:
            problems.append("getnetworkinfo.networkactive: missing; network_active is 0")
        out["network_active"] = float(bool(active))
        connections = _optional_number(net, "connections", "getnetworkinfo", problems)
        if connections is None and "connections" not in net:
            problems.append("getnetworkinfo.connections: missing; connections is 0")
        out["connections"] = connections or 0.0

    tips = _reply(chaintips, "getchaintips", list, "chain-tip features", problems)
    if tips is not None:
        _tip_features(out, tips, problems)

    pool = _reply(mempool, "getmempoolinfo", Mapping, "mempool features", problems)
    if pool is not None:
        usage = _optional_number(pool, "usage", "getmempoolinfo", problems)
        limit = _optional_number(pool, "maxmempool", "getmempoolinfo", problems)
        if usage is not None and limit:
            out["mempool_usage_ratio"] = usage / limit
        else:
            problems.append("getmempoolinfo: usage or maxmempool missing, unusable or 0; mempool_usage_ratio is 0")
        for key, column, scale in (("mempoolminfee", "mempool_min_fee_sat_vb", _BTC_PER_KVB_TO_SAT_PER_VB),
                                   ("size", "mempool_size", 1.0)):
            value = _optional_number(pool, key, "getmempoolinfo", problems)
            if value is None and key not in pool:
                problems.append(f"getmempoolinfo.{key}: missing; {column} is 0")
            out[column] = (value or 0.0) * scale

    if resources is not None:
        if not isinstance(resources, Mapping):
            problems.append(f"resources: expected an object, got {_kind(resources)}; resource features are 0")
        else:
            for column, keys in (("cpu_percent", ("cpu_percent",)), ("memory_rss_mb", ("memory_rss_mb", "rss_mb")),
                                 ("disk_free_gb", ("disk_free_gb",))):
                key = next((k for k in keys if k in resources), None)
                if key is None:
                    problems.append(f"resources.{keys[0]}: missing; {column} is 0")
                    continue
                out[column] = _number(resources[key], f"resources.{key}", problems) or 0.0

    vector = np.array([out[name] for name in TELEMETRY_SCHEMA.names], dtype=np.float32)
    vector.flags.writeable = False
    for name in TELEMETRY_SCHEMA.check(vector):
        col = TELEMETRY_SCHEMA.columns[_INDEX[name]]
        problems.append(f"{name}: {float(vector[_INDEX[name]]):g} is outside the valid range "
                        f"[{col.valid[0]:g}, {col.valid[1]:g}] {col.unit} (kept, not clipped)")
    return TelemetrySample(time=now, vector=vector, problems=problems,
                           peers=None if kept is None else MappingProxyType(kept))
