"""How fast a block reaches the simulated node when its link is saturated: the ``degraded_relay`` scenario.

A saturated uplink (a backup, a busy household, a flood of inv or tx traffic) queues every packet: pings grow by
the queueing delay (bufferbloat) and the bandwidth left for a block shrinks. During the window the saturation
``s`` rises linearly from 0 at the start to 1 at two thirds of it and stays at 1 to the end. At saturation ``s``:

* every outbound peer's ping is its own ping + ``BUFFERBLOAT_S`` x s;
* the node keeps ``round(HB_PEERS x (1 - s))`` BIP152 high-bandwidth peers (Core picks the peers that delivered
  the last blocks first; over a saturated link others win that race);
* the link leaves ``LINK_BPS`` x (1 - s)^2 + ``FLOOR_BPS`` bytes a second to a block.

A block mined at ``tb`` in the window arrives (joins the node's chain) ``arrival_delay`` later, BIP152's round
trips over the fastest peer: a network lag before the first of our peers has it (exponential, mean
``NETWORK_LAG_S``), then 0.5 RTT (a high-bandwidth peer sends ``cmpctblock`` unsolicited) or 1.5 RTT (``headers``,
``getdata``, ``cmpctblock``), then, for the share ``m`` of its transactions missing from our mempool, one more
round trip (``getblocktxn``) and ``m`` x ``BLOCK_BYTES`` over the link. A block never arrives before its parent
(arrivals are made monotone) and at the window's end the node catches up at once.

Simplification: the simulated node has one mempool and does not model how another node's differs, so ``m`` is
drawn per block (uniform on [0, ``MISSING_MAX``], from the seed): a cause of slow arrivals the node cannot see
before the block comes. What it can see is the peer mix: pings, high-bandwidth peers.
"""

from __future__ import annotations

import math

from anya_fl.simnode.encoding import digest

BUFFERBLOAT_S = 2.0  # queueing delay added to every ping at full saturation
HB_PEERS = 3  # Core's high-bandwidth compact block peers (at most 3)
LINK_BPS = 1_000_000.0  # the link's bandwidth left to a block when not saturated (bytes/s)
FLOOR_BPS = 5_000.0  # ... and at full saturation
NETWORK_LAG_S = 2.0  # mean time before the first of our peers has the block
BLOCK_BYTES = 1_500_000  # a full block's serialized size
MISSING_MAX = 0.5  # a block's share of transactions missing from our mempool: uniform on [0, MISSING_MAX]
RAMP = 2.0 / 3.0  # the saturation reaches 1 at this fraction of the window


def saturation(start: float, end: float, t: float) -> float:
    """The link's saturation at ``t`` in the window [start, end) (0 outside it)."""
    if not start <= t < end:
        return 0.0
    return min(1.0, (t - start) / (RAMP * (end - start)))


def ping(base_s: float, s: float) -> float:
    """A peer's ping at saturation ``s``."""
    return base_s + BUFFERBLOAT_S * s


def hb_peers(s: float) -> int:
    """How many high-bandwidth compact block peers the node keeps at saturation ``s``."""
    return round(HB_PEERS * (1.0 - s))


def bandwidth(s: float) -> float:
    """Bytes a second the link leaves to a block at saturation ``s``."""
    return LINK_BPS * (1.0 - s) ** 2 + FLOOR_BPS


def block_draws(seed: int, index: int, height: int) -> tuple[float, float]:
    """(network lag s, missing share) of one block in degraded relay ``index``, from the seed."""
    h = digest(f"anya-fl simnode relay {seed} {index} {height}")
    u1 = (int.from_bytes(h[:4], "big") + 0.5) / 2**32
    u2 = int.from_bytes(h[4:8], "big") / 2**32
    return -NETWORK_LAG_S * math.log(u1), MISSING_MAX * u2


def arrival_delay(pings: list[float], hb: int, missing: float, s: float, lag: float) -> float:
    """Seconds from a block's mining to its arrival: lag + the BIP152 round trips over the fastest peer."""
    rtt = min(pings) if pings else 1.0
    delay = lag + rtt * (0.5 if hb > 0 else 1.5)
    if missing > 0:
        delay += rtt + missing * BLOCK_BYTES / bandwidth(s)
    return delay
