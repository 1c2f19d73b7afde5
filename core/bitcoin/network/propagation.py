"""Block propagation as one node sees it: per block, from its first announcement among our peers to its arrival.

What a node can observe over RPC, poll by poll: the best header height its peers have told it of
(``getpeerinfo`` ``synced_headers``: the second highest, so one peer's bad value cannot move it; and our own
header chain ``getblockchaininfo.headers``, which Core has validated), and the height of our own active chain
(``getblockchaininfo.blocks``). A height is *announced* at the first poll where that header height reaches
it, and has *arrived* at the first poll where our chain does; the delay is the difference. Both ends are poll
times, so a delay is known to within one poll interval, and a block announced and connected between two
polls shows 0. Not timed: heights announced before the watch's first poll or while it was stopped (their
announcement was not seen), blocks that arrive more than ``CATCH_UP_BLOCKS`` at once (a node catching up
after a partition or a restart: the ``partition`` detector's case, not propagation), and heights still
missing ``PENDING_TIMEOUT_S`` after their announcement (dropped).

What one node cannot observe: when a block was mined (its header time is the miner's claim, allowed two hours
off) and how fast it reached the rest of the network. The simulated node knows both; ``anya-fl bench network``
scores the measurement against it.

Detector ``propagation`` (WARNING): at least ``SLOW_BLOCKS`` of the last ``RECENT_BLOCKS`` timed blocks took
``SLOW_BLOCK_S`` or more. Core has no constant for "slow" arrival; its block download timeout
(``BLOCK_DOWNLOAD_TIMEOUT_BASE``, 10 minutes per block in flight) is when it gives up on a peer. Compact block
relay (BIP152) delivers a block to a well-connected node in seconds, so a minute, several times in a row, is
far outside the honest case and well inside the download timeout (a partition, blocks withheld for 20 minutes
while peers are ahead, is the ``partition`` detector's).

Each timed block also keeps the context it came through (the forecast's features from the poll before its
announcement, given by the watch); the last ``HISTORY_BLOCKS`` of them are what ``arrival_forecast`` learns from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.alerts import Finding, Severity

SLOW_BLOCK_S = 60.0
CATCH_UP_BLOCKS = 2  # more blocks than this connected in one poll: a resync, not propagation
PENDING_TIMEOUT_S = 2 * 3600.0  # an announced height that has not arrived by then is dropped
RECENT_BLOCKS = 6
SLOW_BLOCKS = 3
MAX_PENDING = 2016  # announced heights waiting for their block (a day of blocks is 144; more is a bad reply)
HISTORY_BLOCKS = 2016  # timed blocks kept for the slow-arrival forecast (two weeks)


@dataclass(frozen=True)
class BlockArrival:
    """One timed block: announced and arrived at poll times (UNIX s); ``delay_s`` is their difference;
    ``context``: the forecast's features from the poll before its announcement (None if unknown)."""

    height: int
    announced: float
    arrived: float
    context: tuple[float, ...] | None = None

    @property
    def delay_s(self) -> float:
        return self.arrived - self.announced


def _height(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**8 else None


def heights(peers: Any, blockchain: Any) -> tuple[int | None, int | None]:
    """(best announced header height, our chain's height) from getpeerinfo and getblockchaininfo replies;
    None where a reply or field is missing or malformed."""
    ours = _height(blockchain.get("blocks")) if isinstance(blockchain, Mapping) else None
    claims = sorted(h for h in ((_height(p.get("synced_headers")) for p in peers if isinstance(p, Mapping))
                                if isinstance(peers, list) else ()) if h is not None)
    announced = [claims[-2] if len(claims) >= 2 else claims[-1]] if claims else []
    if isinstance(blockchain, Mapping) and (h := _height(blockchain.get("headers"))) is not None:
        announced.append(h)
    return (max(announced) if announced else None), ours


@dataclass
class PropagationTracker:
    """Times blocks from announcement to arrival across polls; its memory survives restarts (to_dict)."""

    last_announced: int | None = None
    pending: dict[int, float] = field(default_factory=dict)  # height -> announced at
    recent: list[BlockArrival] = field(default_factory=list)
    resumed: bool = field(default=False, compare=False)  # loaded from saved state, not yet polled
    behind: int | None = field(default=None, compare=False)  # the last poll's announced - our height
    contexts: dict[int, tuple[float, ...]] = field(default_factory=dict)  # pending height -> its context
    history: list[BlockArrival] = field(default_factory=list)  # timed blocks with a context, the newest last
    last_context: tuple[float, ...] | None = field(default=None, compare=False)

    def observe(self, now: float, peers: Any, blockchain: Any,
                context: tuple[float, ...] | None = None) -> list[BlockArrival]:
        """One poll's replies and this poll's context (None: unknown); returns the blocks that arrived since the
        previous poll."""
        previous, self.last_context = self.last_context, context
        announced, ours = heights(peers, blockchain)
        self.behind = None if announced is None or ours is None else max(announced - ours, 0)
        if self.behind is None or not math.isfinite(now):
            return []
        if self.last_announced is None or self.resumed:  # announced before we watched, or while we were stopped
            self.last_announced = max(announced, ours, self.last_announced or 0)
            self.resumed = False
        elif announced > self.last_announced:
            for h in range(max(self.last_announced + 1, announced - MAX_PENDING + 1), announced + 1):
                if h not in self.pending:
                    self.pending[h] = now
                    if previous is not None:
                        self.contexts[h] = previous
            self.last_announced = announced
        arrived = [BlockArrival(h, t, now, self.contexts.get(h)) for h, t in sorted(self.pending.items()) if h <= ours]
        for a in arrived:
            del self.pending[a.height]
        for h in [h for h, t in self.pending.items() if now - t > PENDING_TIMEOUT_S]:
            del self.pending[h]
        self.contexts = {h: c for h, c in self.contexts.items() if h in self.pending}
        if len(arrived) > CATCH_UP_BLOCKS:  # a resync after a partition or an outage: not propagation
            return []
        self.recent = (self.recent + arrived)[-RECENT_BLOCKS:]
        self.history = (self.history + [a for a in arrived if a.context is not None])[-HISTORY_BLOCKS:]
        return arrived

    def findings(self) -> list[Finding]:
        """The propagation condition, active or not."""
        slow = [a for a in self.recent if a.delay_s >= SLOW_BLOCK_S]
        delays = sorted(a.delay_s for a in self.recent)
        median = delays[len(delays) // 2] if delays else 0.0
        active = len(slow) >= SLOW_BLOCKS
        return [Finding("propagation", "blocks", Severity.WARNING if active else Severity.INFO,
                        "blocks arrive long after peers announce them",
                        f"{len(slow)} of the last {len(self.recent)} blocks arrived {SLOW_BLOCK_S:.0f} s or more after "
                        f"their announcement (median {median:.0f} s)", median, active=active)]

    def to_dict(self) -> dict[str, Any]:
        return {"last_announced": self.last_announced, "pending": {str(h): t for h, t in self.pending.items()},
                "recent": [[a.height, a.announced, a.arrived] for a in self.recent],
                "contexts": {str(h): list(c) for h, c in self.contexts.items()},
                "history": [[a.height, a.announced, a.arrived, list(a.context or ())] for a in self.history]}

    @classmethod
    def from_dict(cls, d: Any) -> PropagationTracker:
        """The tracker from ``to_dict``'s output; anything malformed starts it afresh."""
        try:
            last = d.get("last_announced")
            return cls(last_announced=_height(last),
                       pending={int(h): float(t) for h, t in d.get("pending", {}).items()},
                       recent=[BlockArrival(int(h), float(a), float(b)) for h, a, b in d.get("recent", [])],
                       contexts={int(h): tuple(float(v) for v in c) for h, c in d.get("contexts", {}).items()},
                       history=[BlockArrival(int(h), float(a), float(b), tuple(float(v) for v in c))
                                for h, a, b, c in d.get("history", [])][-HISTORY_BLOCKS:],
                       resumed=True)
        except (AttributeError, TypeError, ValueError):
            return cls()
