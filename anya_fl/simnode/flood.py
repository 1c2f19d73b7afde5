"""A mempool flood on the simulated node: low-fee transactions filling the mempool up to ``-maxmempool``.

What the node does follows Bitcoin Core (src/txmempool.cpp ``TrimToSize``, ``trackPackageRemoved``,
``GetMinFee``, ``removeForBlock``; validation.cpp's fee checks), on a grid of ``GRID_S`` simulated seconds:

* During the window flood transactions of ``FLOOD_TX_VSIZE`` vbytes, all at the same fee rate, arrive at
  ``vbytes_per_s`` (the j-th at ``start + j x FLOOD_TX_VSIZE / vbytes_per_s``, j >= 1). One is accepted while its
  rate is at least the mempool minimum fee (the rolling minimum, minrelaytxfee; Core's "mempool min fee not met").
* Usage is ``USAGE_PER_VBYTE`` x vbytes (the simulator's fit of DynamicMemoryUsage). When the simulated mempool and
  the flood together use more than maxmempool, the lowest fee rates are evicted first, which are the flood's
  (the newest first: Core's descendant-score order puts the later of equal rates first), until it fits; each
  eviction raises the rolling minimum fee to the evicted rate + incrementalrelayfee (so the next flood
  transactions are refused) and stops its decay until the next block.
* The rolling minimum decays from the first block after the last bump (Core resets its update time there), with
  a half-life of 12 h (6 h while usage is under half of maxmempool, 3 h under a quarter), to 0 once under half
  of incrementalrelayfee; while non-zero it reports at least incrementalrelayfee. Once it has decayed to the
  flood's rate, flood transactions are accepted again while the window lasts, and fill the mempool again.
* After the window nothing arrives: the flood's transactions stay until evicted (a real transaction arriving into
  a full mempool evicts as many as it needs) or expired ``EXPIRY_S`` (Core's -mempoolexpiry, 336 h) after entry.

Simplifications: flood transactions are counted by getmempoolinfo (size, bytes, usage, total_fee) and move
mempoolminfee (and estimatesmartfee's floor), but are not listed (getrawmempool, getmempoolentry and the mempool
sequence do not see them) and are never mined. The simulated chain's own transactions are never evicted nor
refused because of the flood (the timeline is not re-swept): those paying less than the flood stay, and those
arriving while the minimum fee is raised are accepted. The flood's state changes on the grid only (Core also
updates its rolling minimum at most every 10 s); a real arrival between grid points takes its room from the
flood at once, without a bump until the next grid point. A reorg's returned transactions are not counted in
the room the flood sees (only in what it may show).
"""

from __future__ import annotations

import math
import threading
from collections import deque

import numpy as np

from anya_fl.simnode.config import INCREMENTAL_SAT_VB, MIN_RELAY_SAT_VB, ROLLING_FEE_HALFLIFE_S, USAGE_PER_VBYTE
from anya_fl.simnode.timeline import Timeline

GRID_S = 10.0  # the flood's state is stepped every 10 simulated seconds
FLOOD_TX_VSIZE = 200  # vbytes per flood transaction (the simulated chain's median)
EXPIRY_S = 336 * 3600.0  # Core's DEFAULT_MEMPOOL_EXPIRY_HOURS
_CHUNK = 2048  # grid points computed per batch
_EPS = 1e-9


class MempoolFlood:
    """The flood's transactions in the mempool and its rolling minimum fee, as functions of simulated time."""

    def __init__(self, timeline: Timeline, maxmempool_bytes: int, start: float, end: float, vbytes_per_s: float,
                 fee_sat_vb: float) -> None:
        self.timeline = timeline
        self.limit = int(maxmempool_bytes)
        self.start, self.end = float(start), float(end)
        self.vbytes_per_s = float(vbytes_per_s)
        self.fee_tx = max(1, round(fee_sat_vb * FLOOD_TX_VSIZE))  # sat per flood transaction
        self.rate = self.fee_tx / FLOOD_TX_VSIZE  # sat/vB
        self.per_s = self.vbytes_per_s / FLOOD_TX_VSIZE  # arrivals per second
        tl = timeline
        acc = tl.acc_order  # the accepted entries by entry time (injected conflicts have their target's size)
        size = tl.e_vsize[acc].astype(np.int64)
        self._enter = tl.acc_enter
        self._cum_in = np.concatenate(([0], np.cumsum(size)))
        leave = tl.e_leave[acc]
        done = np.isfinite(leave)
        order = np.argsort(leave[done], kind="stable")
        self._leave = leave[done][order]
        self._cum_out = np.concatenate(([0], np.cumsum(size[done][order])))
        self._lock = threading.Lock()
        # per grid point k (time start + k x GRID_S): flood transactions in the mempool, reported minimum fee
        self._count_at: list[int] = []
        self._fee_at: list[float] = []
        self._idle_from: int | None = None  # from this grid point on nothing changes (no flood, no minimum)
        # running state at the last grid point
        self._stack: deque[list[float]] = deque()  # [entry time, count], oldest first
        self._count = 0
        self._arrived = 0
        self._rolling = 0.0  # sat/vB
        self._updated = self.start
        self._block_since_bump = False
        self._blocks = tl.blocks_at(self.start)
        self.full_at: float | None = None  # the first grid time the flood was trimmed to maxmempool

    # ---- the simulated mempool's own size

    def real_vbytes(self, t: np.ndarray) -> np.ndarray:
        """The simulated mempool's vbytes at times ``t`` (without a reorg's overlay)."""
        return (self._cum_in[np.searchsorted(self._enter, t, side="right")]
                - self._cum_out[np.searchsorted(self._leave, t, side="right")])

    def _cap(self, real_vbytes: int) -> int:
        """Flood transactions that fit beside ``real_vbytes`` of other transactions."""
        return max((self.limit - USAGE_PER_VBYTE * int(real_vbytes)) // (USAGE_PER_VBYTE * FLOOD_TX_VSIZE), 0)

    # ---- Core's rolling minimum fee

    def _decay(self, t: float, usage: int) -> None:
        """GetMinFee at ``t``: decay the rolling minimum (only after a block since the last bump)."""
        if not self._block_since_bump or self._rolling == 0.0 or t <= self._updated:
            return
        halflife = ROLLING_FEE_HALFLIFE_S
        if usage < self.limit / 4:
            halflife /= 4
        elif usage < self.limit / 2:
            halflife /= 2
        self._rolling /= 2.0 ** ((t - self._updated) / halflife)
        self._updated = t
        if self._rolling < INCREMENTAL_SAT_VB / 2:
            self._rolling = 0.0

    def _min_fee(self) -> float:
        """What GetMinFee returns now in sat/vB (Core rounds to whole sat/kvB), 0 when there is no minimum."""
        if self._rolling == 0.0:
            return 0.0
        rolling = round(self._rolling * 1000) / 1000
        return rolling if not self._block_since_bump else max(rolling, INCREMENTAL_SAT_VB)

    # ---- stepping

    def _step(self, t: float, real: int, blocks: int) -> None:
        tl = self.timeline
        usage = USAGE_PER_VBYTE * (real + self._count * FLOOD_TX_VSIZE)
        if blocks > self._blocks:  # removeForBlock: the decay (re)starts from the newest block
            tb = float(tl.block_time[blocks - 1])
            self._decay(tb, usage)
            self._updated, self._block_since_bump, self._blocks = max(tb, self._updated), True, blocks
        self._decay(t, usage)
        while self._stack and self._stack[0][0] + EXPIRY_S <= t:  # -mempoolexpiry
            self._count -= int(self._stack.popleft()[1])
        arrived = math.floor(self.per_s * (min(t, self.end) - self.start) + _EPS) if t > self.start else 0
        new, self._arrived = arrived - self._arrived, max(arrived, self._arrived)
        floor = max(self._min_fee(), MIN_RELAY_SAT_VB, tl.rolling_min_fee(t))
        if new > 0 and self.rate >= floor - _EPS:
            self._stack.append([t, new])
            self._count += new
        cap = self._cap(real)
        if self._count > cap:  # TrimToSize: the flood is the lowest fee rate; the newest go first
            drop = self._count - cap
            self._count = cap
            while drop:
                top = self._stack[-1]
                k = min(drop, int(top[1]))
                top[1] -= k
                drop -= k
                if not top[1]:
                    self._stack.pop()
            bump = self.rate + INCREMENTAL_SAT_VB  # trackPackageRemoved
            if bump > self._rolling:
                self._rolling, self._block_since_bump = bump, False
            if self.full_at is None:
                self.full_at = t
        self._count_at.append(self._count)
        self._fee_at.append(self._min_fee())
        if t >= self.end and self._count == 0 and self._rolling == 0.0 and self._idle_from is None:
            self._idle_from = len(self._count_at) - 1

    def _extend(self, k: int) -> None:
        """Compute the grid up to point ``k``."""
        while len(self._count_at) <= k and self._idle_from is None:
            ks = np.arange(len(self._count_at), min(k + 1, len(self._count_at) + _CHUNK))
            ts = self.start + ks * GRID_S
            reals = self.real_vbytes(ts).tolist()
            blocks = np.searchsorted(self.timeline.block_time, ts, side="right").tolist()
            for t, real, nb in zip(ts.tolist(), reals, blocks, strict=True):
                self._step(t, int(real), int(nb))
                if self._idle_from is not None:
                    break

    def _point(self, t: float) -> tuple[int, float]:
        if t < self.start:
            return 0, 0.0
        k = int((t - self.start) // GRID_S)
        self._extend(k)
        if self._idle_from is not None and k >= self._idle_from:
            return 0, 0.0
        return self._count_at[k], self._fee_at[k]

    # ---- queries

    def count(self, t: float, real_vbytes: int) -> int:
        """Flood transactions in the mempool at ``t`` beside ``real_vbytes`` of other transactions."""
        with self._lock:
            n, _ = self._point(t)
        return min(n, self._cap(real_vbytes))

    def min_fee(self, t: float) -> float:
        """The flood's part of mempoolminfee at ``t`` in sat/vB (0: none)."""
        with self._lock:
            return self._point(t)[1]

    def first_full(self) -> float | None:
        """The first simulated time (on the grid) the flood filled the mempool to maxmempool, None if it never does."""
        with self._lock:
            k_end = math.ceil((self.end - self.start) / GRID_S)
            while self.full_at is None and self._idle_from is None and len(self._count_at) <= k_end:
                self._extend(min(len(self._count_at) + _CHUNK - 1, k_end))
            return self.full_at
