"""P2P-side scenarios of the simulated node, for testing network-attack detectors on its manual clock.

Every scenario starts at a simulated time and most end; the node's answers stay a function of simulated time
and the scenarios injected, determined by the seed:

* ``eclipse``: from its start every outbound peer is replaced by a new one (new id, conntime = the start, same
  connection type per slot) whose IPv4 address is in 198.51.0.0/16 (one /16, one AS); open-ended (a later
  eclipse replaces them again).
* ``inbound_flood``: inbound peers connect every ``60 / per_min`` s from the start to the end of the window
  (arrival j at ``start + j x 60 / per_min``, j >= 1), up to ``MAX_INBOUND`` inbound in all; they stay
  connected. Three in four come from 203.0.113.0/24 (ipv4), the rest from 2001:db8::/32 (ipv6).
* ``addr_spam``: one outbound full-relay peer connected at the start (picked by the seed) sends ``per_s``
  addresses a second during the window. Core's token bucket (0.1/s, 1,000 tokens, full at the start) gives
  ``processed = min(arrivals, 1000 + 0.1 x elapsed)``, ``rate_limited = arrivals - processed`` (floors), and
  bytesrecv_per_msg["addrv2"] grows ``ADDR_BYTES`` per address (shown while that peer stays connected).
* ``partition``: the node receives nothing during the window; its chain stays at the blocks it had at the start
  while peers report the true tip; at the end it catches up (see ``SimNode.inject_partition``).
* ``slow_propagation``: during the window headers arrive at once (peers and getblockchaininfo.headers show the
  true tip) but a block mined at ``tb`` joins the node's chain only at ``tb + delay_s``; at the end it catches up
  (see ``SimNode.inject_slow_propagation``). A partition and a slow propagation are both *chain windows*: the
  node's chain at ``t`` is the true chain at ``chain_time(t)`` (``held_time``), and they never overlap.
* ``degraded_relay``: a third chain window: the node's link saturates (``relay``): outbound pings grow, it loses
  its high-bandwidth compact block peers, and each block mined in the window arrives after a delay that follows
  that peer mix (``SimNode.inject_degraded_relay``); headers arrive at once, as in a slow propagation.
* ``stale_fork``: getchaintips lists a valid-fork tip of ``branchlen`` blocks off the active chain from then on.
* ``double_spend``: a conflicting transaction replaces a mempool transaction from then on (open-ended; see
  ``SimNode.inject_double_spend``); recorded here for ground truth only, it changes no connection.
* ``rbf_replacement``: the payer's fee bump replaces a mempool transaction from then on, paying the same outputs
  but a smaller change (open-ended; ``SimNode.inject_rbf_bump``); ground truth only, as ``double_spend``.
* ``mempool_flood``: low-fee transactions arrive at ``rate`` vbytes a second during the window and fill the mempool
  to maxmempool, raising mempoolminfee (``SimNode.inject_mempool_flood``, modelled in ``flood``); no connection
  changes.

Peer ids follow connection order, as Core's: the ten original peers are 0..9, scenario peers (eclipse and
inbound) are numbered from 10 by (conntime, scenario). A scenario injected before times already served can
renumber peers that connected after its start.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from anya_fl.simnode import relay
from anya_fl.simnode.encoding import digest
from anya_fl.simnode.flood import FLOOD_TX_VSIZE
from anya_fl.simnode.peers import FULL_RELAY, NETWORKS, Peer
from core.errors import ConfigError

MAX_INBOUND = 125 - len(NETWORKS)  # Core's 125 connection slots less the 10 outbound
ADDR_RATE_PER_S = 0.1  # Core's MAX_ADDR_RATE_PER_SECOND
ADDR_BUCKET = 1000.0  # Core's MAX_ADDR_PROCESSING_TOKEN_BUCKET
ADDR_BYTES = 30  # addrv2 bytes per address (rough)
ECLIPSE_AS, FLOOD_AS_V4, FLOOD_AS_V6 = 64500, 64510, 64511  # documentation AS numbers
KINDS = ("eclipse", "inbound_flood", "addr_spam", "partition", "stale_fork", "double_spend", "rbf_replacement",
         "mempool_flood", "slow_propagation", "degraded_relay")
CHAIN_WINDOWS = ("partition", "slow_propagation", "degraded_relay")  # the scenarios that hold the node's chain behind the true one
_EPS = 1e-9


@dataclass(frozen=True)
class NetworkEvent:
    """One injected scenario: ``kind``, its window [start, end) (end None: open-ended) and its settings."""

    index: int  # injection order
    kind: str
    start: float
    end: float | None
    rate: float = 0.0  # inbound_flood: per minute; addr_spam: per second; mempool_flood: vbytes per second
    branchlen: int = 0  # stale_fork
    height: int = 0  # stale_fork: the fork tip's height; partition: the frozen tip
    branch: int = 0  # stale_fork: the block branch number of its blocks
    delay_s: float = 0.0  # slow_propagation: how long after it is mined a block joins the node's chain
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def active(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass(frozen=True)
class Connection:
    """A peer connected during [start, end)."""

    peer: Peer
    start: float
    end: float


def check_time(name: str, value: Any, earliest: float) -> float:
    """A finite simulated time >= ``earliest``, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(name, f"{value!r} must be a finite number of simulated seconds")
    if value < earliest:
        raise ConfigError(name, f"{value!r} is before the node's first simulated second {earliest}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """A finite number > 0, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(name, f"{value!r} must be a finite number > 0")
    return float(value)


def held_time(event: NetworkEvent, t: float) -> float:
    """The simulated time whose blocks the node has at ``t`` inside chain window ``event``: a partition's start
    (it receives nothing), ``max(start, t - delay_s)`` for a slow propagation (never going backwards), and for a
    degraded relay the mining time of the last block of the window that has arrived by ``t`` (else the start)."""
    if event.kind == "partition":
        return event.start
    if event.kind == "slow_propagation":
        return max(event.start, t - event.delay_s)
    if event.kind == "degraded_relay":
        blocks = event.extra["blocks"]  # arrivals are monotone in height
        k = bisect.bisect_right([b["arrived"] for b in blocks], t)
        return max(event.start, blocks[k - 1]["mined"]) if k else event.start
    raise ValueError(f"{event.kind} is not a chain window")


def slow_arrival(event: NetworkEvent, mined: float) -> float:
    """When a block mined at ``mined`` joins the node's chain under slow propagation ``event`` (the first ``t``
    with ``held_time(event, t) >= mined``): at once if mined by the start, ``delay_s`` later inside the window,
    at the end (the catch-up) if that is later than the end."""
    assert event.end is not None
    return mined if mined <= event.start else min(mined + event.delay_s, event.end)


def addr_counts(event: NetworkEvent, t: float) -> tuple[int, int, int]:
    """(addr_processed, addr_rate_limited, addrv2 bytes) an addr-spam event has added by ``t``."""
    if event.end is None:
        raise ValueError("an addr spam event has an end")
    elapsed = max(min(t, event.end) - event.start, 0.0)
    arrivals = math.floor(event.rate * elapsed + _EPS)
    processed = min(arrivals, math.floor(ADDR_BUCKET + ADDR_RATE_PER_S * elapsed + _EPS))
    return processed, arrivals - processed, ADDR_BYTES * arrivals


def flood_arrivals(event: NetworkEvent) -> list[float]:
    """Arrival times of a flood's first ``MAX_INBOUND`` inbound peers (later ones never fit)."""
    assert event.end is not None
    interval = 60.0 / event.rate
    n = math.floor((event.end - event.start) / interval + _EPS)
    return [event.start + j * interval for j in range(1, min(n, MAX_INBOUND) + 1)]


class Network:
    """The node's connections over time under the injected scenarios."""

    def __init__(self, seed: int, originals: list[Peer], tip_at: Callable[[float], int]) -> None:
        self.seed = seed
        self.originals = originals
        self.tip_at = tip_at  # the true chain's tip height at a simulated time
        self.events: list[NetworkEvent] = []
        self.connections: list[Connection] = []
        self.spam_target: dict[int, tuple[str, int, int] | None] = {}  # addr spam event index -> peer key
        self._rebuild()

    def add(self, event: NetworkEvent) -> None:
        self.events.append(event)
        self._rebuild()

    def of_kind(self, kind: str) -> list[NetworkEvent]:
        return [e for e in self.events if e.kind == kind]

    # ---- connections

    def _eclipse_peers(self, e: NetworkEvent) -> list[Peer]:
        peers, used = [], set()
        for p in range(len(NETWORKS)):
            n = 0
            while True:
                h = digest(f"anya-fl simnode eclipse {self.seed} {e.index} {p} {n}")
                addr = f"198.51.{h[0]}.{h[1] % 254 + 1}:8333"
                if addr not in used:
                    break
                n += 1
            used.add(addr)
            full = p < FULL_RELAY
            peers.append(Peer(
                id=-1, addr=addr, network="ipv4", connection_type="outbound-full-relay" if full else "block-relay-only",
                subver=("/Satoshi:27.0.0/", "/Satoshi:26.0.0/")[h[3] % 2], v2=bool(h[4] % 2),
                ping_s=0.005 + h[5] / 255 * 0.03, conntime=e.start,
                recv_rate=(300 + h[8] * 4) if full else 40 + h[8] % 40, send_rate=(150 + h[9] * 2) if full else 20,
                asn=ECLIPSE_AS, starting_height=self.tip_at(e.start), key=("eclipse", e.index, p)))
        return peers

    def _inbound_peer(self, e: NetworkEvent, j: int, t: float) -> Peer:
        h = digest(f"anya-fl simnode inbound {self.seed} {e.index} {j}")
        port = 49152 + (h[2] * 256 + h[3]) % 16384
        v6 = h[0] % 4 == 3
        addr = f"[2001:db8:{h[1]:x}{h[6]:02x}::{h[4]:x}{h[5]:02x}]:{port}" if v6 else f"203.0.113.{h[1] % 254 + 1}:{port}"
        return Peer(
            id=-1, addr=addr, network="ipv6" if v6 else "ipv4", connection_type="inbound",
            subver=("/Satoshi:27.0.0/", "/Satoshi:25.0.0/", "/Satoshi:0.21.1/", "/Satoshi:22.0.0/")[h[7] % 4],
            v2=False, ping_s=0.05 + h[8] / 255 * 0.25, conntime=t, recv_rate=10 + h[9] % 30,
            send_rate=30 + h[10] % 30, asn=FLOOD_AS_V6 if v6 else FLOOD_AS_V4, starting_height=self.tip_at(t),
            key=("inbound", e.index, j))

    def _rebuild(self) -> None:
        """The connection table (ids by connection order) and each addr spam's target peer."""
        eclipses = sorted(self.of_kind("eclipse"), key=lambda e: (e.start, e.index))
        groups: list[tuple[list[Peer], float]] = [(self.originals, -math.inf)]
        groups += [(self._eclipse_peers(e), e.start) for e in eclipses]
        conns: list[Connection] = []
        for g, (peers, start) in enumerate(groups):
            end = groups[g + 1][1] if g + 1 < len(groups) else math.inf
            conns += [Connection(p, start, end) for p in peers]
        arrivals = sorted((t, e.index, j) for e in self.of_kind("inbound_flood")
                          for j, t in enumerate(flood_arrivals(e), start=1))[:MAX_INBOUND]
        by_index = {e.index: e for e in self.events}
        conns += [Connection(self._inbound_peer(by_index[k], j, t), t, math.inf) for t, k, j in arrivals]
        fresh = sorted((c for c in conns if c.peer.key[0] != "original"), key=lambda c: (c.start, c.peer.key))
        ids = {c.peer.key: len(self.originals) + n for n, c in enumerate(fresh)}
        self.connections = [c if c.peer.key[0] == "original" else replace(c, peer=replace(c.peer, id=ids[c.peer.key]))
                            for c in conns]
        self.connections.sort(key=lambda c: c.peer.id)
        self.spam_target = {}
        for e in self.of_kind("addr_spam"):
            full = [c.peer for c in self.connected(e.start) if c.peer.connection_type == "outbound-full-relay"]
            pick = digest(f"anya-fl simnode addr spam {self.seed} {e.index}")[0] % len(full) if full else -1
            self.spam_target[e.index] = full[pick].key if full else None

    def connected(self, t: float) -> list[Connection]:
        """Connections open at ``t``, by id."""
        return [c for c in self.connections if c.start <= t < c.end]

    def peer_of(self, key: tuple[str, int, int] | None) -> Peer | None:
        return next((c.peer for c in self.connections if c.peer.key == key), None)

    def counts(self, t: float) -> tuple[int, int]:
        """(outbound, inbound) connections at ``t``."""
        conns = self.connected(t)
        inbound = sum(c.peer.connection_type == "inbound" for c in conns)
        return len(conns) - inbound, inbound

    def addr_extra(self, peer: Peer, t: float) -> tuple[int, int, int]:
        """What the addr spam events aimed at ``peer`` have added to its counters by ``t``."""
        processed = limited = size = 0
        for e in self.of_kind("addr_spam"):
            if self.spam_target.get(e.index) == peer.key and e.start <= t:
                p, r, b = addr_counts(e, t)
                processed, limited, size = processed + p, limited + r, size + b
        return processed, limited, size

    # ---- chain

    def window_at(self, t: float) -> NetworkEvent | None:
        """The chain window (partition or slow propagation) active at ``t``, if any (they never overlap)."""
        return next((e for e in self.events if e.kind in CHAIN_WINDOWS and e.active(t)), None)

    def chain_time(self, t: float) -> float:
        """The simulated time whose blocks the node has at ``t``: ``held_time`` inside a chain window, else ``t``."""
        w = self.window_at(t)
        return t if w is None else held_time(w, t)

    def saturation(self, t: float) -> float:
        """The link's saturation at ``t`` (``relay.saturation``; 0 outside a degraded relay)."""
        w = self.window_at(t)
        return 0.0 if w is None or w.kind != "degraded_relay" else relay.saturation(w.start, w.end or math.inf, t)

    def header_time(self, t: float) -> float:
        """The simulated time whose block headers the node has at ``t``: a partition's start during it (it
        receives nothing), else ``t`` (a slow block download still gets every header at once)."""
        w = self.window_at(t)
        return w.start if w is not None and w.kind == "partition" else t

    def forks_at(self, t: float) -> list[NetworkEvent]:
        return [e for e in self.of_kind("stale_fork") if e.start <= t]

    # ---- ground truth

    def describe(self, e: NetworkEvent, detail: bool) -> dict[str, Any]:
        """{kind, start, end} of an event, with its settings and peers when ``detail``."""
        doc: dict[str, Any] = {"kind": e.kind, "start": e.start, "end": e.end}
        if not detail:
            return doc
        if e.kind == "eclipse":
            doc["peers"] = [c.peer.id for c in self.connections if c.peer.key[:2] == ("eclipse", e.index)]
        elif e.kind == "inbound_flood":
            doc.update(per_min=e.rate, peers=[c.peer.id for c in self.connections
                                              if c.peer.key[:2] == ("inbound", e.index)])
        elif e.kind == "addr_spam":
            peer = self.peer_of(self.spam_target.get(e.index))
            doc.update(per_s=e.rate, peer=None if peer is None else peer.id, addr=None if peer is None else peer.addr)
        elif e.kind == "partition":
            doc["height"] = e.height
        elif e.kind == "slow_propagation":
            doc.update(delay_s=e.delay_s, blocks=[dict(b) for b in e.extra["blocks"]])
        elif e.kind == "degraded_relay":
            doc["blocks"] = [dict(b) for b in e.extra["blocks"]]
        elif e.kind == "double_spend":
            doc.update(txid=e.extra["txid"], conflict=e.extra["conflict"], height=e.extra["height"])
        elif e.kind == "rbf_replacement":
            doc.update(txid=e.extra["txid"], replacement=e.extra["replacement"], height=e.extra["height"])
        elif e.kind == "mempool_flood":
            doc.update(vbytes_per_s=e.rate, fee_sat_vb=e.extra["fee_sat_vb"], tx_vsize=FLOOD_TX_VSIZE)
        else:
            doc.update(height=e.height, branchlen=e.branchlen, hash=e.extra.get("hash"))
        return doc
