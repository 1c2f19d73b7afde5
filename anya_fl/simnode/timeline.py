"""The node's mempool timeline: which transactions are in its mempool at any simulated time, and why they left.

Every mempool entry (a chain transaction, or an RBF *phantom*) has an enter time and a leave time; the
mempool at T is the accepted entries with ``enter <= T < leave``. Without scenario effects a transaction
enters at its arrival and leaves when the block holding it is mined (``block_time <= T``); the simulator's
blocks are never altered.

* Phantoms (``replacement_share``): for that share of RBF-signalling transactions (those paying at least
  2 sat/vB, so a version 1 sat/vB cheaper can exist), a lower-fee version with another txid enters 1 to 30
  simulated minutes before the canonical transaction arrives, and leaves at that arrival (replaced). It
  spends the same inputs; its fee is 50-90 % of the canonical fee, at least 1 sat/vB, and at least 1 sat/vB
  (BIP 125 rule 4, incrementalrelayfee) below it. Phantoms never confirm.
* Mempool limit (``maxmempool``): usage is ``USAGE_PER_VBYTE`` x vsize (a rough fit of Core's
  DynamicMemoryUsage), compared to maxmempool as Core does. When an arrival pushes usage above it, the
  lowest fee-rate entries are evicted (removal reason sizelimit) until it fits, and the rolling minimum fee
  rises to the highest evicted rate + incrementalrelayfee (1 sat/vB); an arrival paying less than the rolling
  minimum is not accepted, nor one that is itself evicted at once ("mempool full"). Simplified from Core: the
  rolling minimum decays with a fixed 12 h half-life from each bump (Core waits for a block after the bump and
  shortens the half-life while the mempool is below half or a quarter of its limit), and a replacement of a
  phantom is never refused for the minimum fee. Evicted transactions still confirm in their canonical block;
  the node just no longer has them in its mempool.

* Double spends and fee bumps (``add_conflict``, ``SimNode.inject_double_spend``, ``SimNode.inject_rbf_bump``:
  the same mechanism, only the replacement's outputs differ): from its time a conflicting entry that
  spends the same inputs at a higher fee replaces a chain transaction (its *target*) in the mempool; the target
  is never shown again (not in the mempool, not in its block), and the conflict holds the target's block slot:
  it leaves the mempool when that block is mined (never, for a target that never confirms). The sorted views
  and per-block snapshots are not rebuilt: ``mempool``, ``alive`` and ``sequence`` apply the conflicts on top
  (the fee estimator's snapshots keep the targets, and the mempool limit is not re-swept).

``mempool_sequence`` follows Core: it starts at 1 and grows by one on every entry added and every entry
removed, for any reason (Core also counts removals for block inclusion, src/txmempool.cpp removeUnchecked).
"""

from __future__ import annotations

import heapq

import numpy as np

from anya_fl.simnode.config import INCREMENTAL_SAT_VB, ROLLING_FEE_HALFLIFE_S, USAGE_PER_VBYTE
from core.data.chain import START_HEIGHT, Chain
from core.seeding import stream

BLOCK, REPLACED, SIZELIMIT = 1, 2, 3  # removal reasons
REASONS = {0: "", BLOCK: "block", REPLACED: "replaced", SIZELIMIT: "sizelimit"}
PHANTOM_LEAD_S = (60.0, 1800.0)


class Timeline:
    """Mempool entries of a chain with enter/leave times, per-block snapshots and the rolling minimum fee."""

    def __init__(self, chain: Chain, seed: int, maxmempool_bytes: int, replacement_share: float) -> None:
        tx = chain.tx
        n = chain.n_transactions
        self.n = n
        self.block_time = chain.block_time
        self.n_blocks = nb = chain.n_blocks
        self.first_height = START_HEIGHT + 1
        confirm = tx["confirm_height"]
        never = confirm < 0
        self.confirm_block = np.where(never, -1, confirm - self.first_height)
        rate = tx["fee_sat"] / tx["vsize"]
        # block members: by block, then fee rate descending (a block template's order), then index
        key = np.where(never, nb, self.confirm_block)
        self.block_order = np.lexsort((np.arange(n), -rate, key))
        self.block_offsets = np.searchsorted(key[self.block_order], np.arange(nb + 1))

        # ---- phantoms
        rng = stream(seed, "simnode.phantoms")
        vsize = tx["vsize"]
        fee = tx["fee_sat"]
        arrival = tx["arrival_time"]
        draw = rng.random(n)
        lead = rng.uniform(*PHANTOM_LEAD_S, n)
        cut = rng.uniform(0.5, 0.9, n)
        eligible = tx["rbf"] & (fee - vsize >= vsize) & (arrival - lead >= 0)
        chosen = np.flatnonzero(eligible & (draw < replacement_share))
        self.phantom_of = chosen  # canonical index each phantom shadows
        self.phantom_fee = np.clip(np.rint(fee[chosen] * cut[chosen]).astype(np.int64), vsize[chosen],
                                   fee[chosen] - vsize[chosen])
        p = len(chosen)
        self.n_phantoms = p
        self.phantom_entry = np.full(n, -1, dtype=np.int64)  # entry id of a canonical tx's phantom
        self.phantom_entry[chosen] = n + np.arange(p)

        # ---- entries: 0..n-1 the chain's transactions, n..n+p-1 the phantoms
        self.e_tx = np.concatenate((np.arange(n), chosen))
        self.e_enter = np.concatenate((arrival, arrival[chosen] - lead[chosen]))
        self.e_fee = np.concatenate((fee, self.phantom_fee))
        self.e_vsize = vsize[self.e_tx]
        self.e_rate = self.e_fee / self.e_vsize
        block_leave = np.where(never, np.inf, chain.block_time[np.maximum(self.confirm_block, 0)])
        self.e_leave = np.concatenate((block_leave, arrival[chosen]))
        self.e_reason = np.concatenate((np.where(never, 0, BLOCK), np.full(p, REPLACED))).astype(np.int8)
        self.e_accepted = np.ones(n + p, dtype=bool)
        self.e_height = START_HEIGHT + np.searchsorted(chain.block_time, self.e_enter, side="right")
        self.limit = int(maxmempool_bytes)
        self.bump_time = np.zeros(0)
        self.bump_rate = np.zeros(0)
        self.trimmed_time = np.zeros(0)  # arrivals trimmed at once (a removal without an add, as in Core)
        self.evictions = 0
        self.replaced_at = np.full(n + p, np.inf)  # when a double spend replaced entry e (inf: never)
        self.conflicts: list[int] = []  # entry ids of injected conflicts (n + p + k)
        self.conflict_entry: dict[int, int] = {}  # target chain index -> its conflict's entry id
        if self._peak_usage() > self.limit:
            self._sweep()

        # ---- sorted views and per-block snapshots
        acc = np.flatnonzero(self.e_accepted)
        self.acc_order = acc[np.argsort(self.e_enter[acc], kind="stable")]
        self.acc_enter = self.e_enter[self.acc_order]
        leave = self.e_leave[acc]
        self.acc_leave = np.sort(leave[np.isfinite(leave)])
        self.snapshots: list[np.ndarray] = []  # accepted entries in the mempool right after block b
        alive = np.zeros(0, dtype=np.int64)
        lo = 0
        for b in range(nb):
            hi = int(np.searchsorted(self.acc_enter, self.block_time[b], side="right"))
            cand = np.concatenate((alive, self.acc_order[lo:hi]))
            lo = hi
            alive = cand[self.e_leave[cand] > self.block_time[b]]
            self.snapshots.append(alive)

    # ---- construction

    def _peak_usage(self) -> int:
        """Largest mempool usage over the timeline if nothing were evicted."""
        usage = USAGE_PER_VBYTE * self.e_vsize
        order = np.argsort(self.e_enter, kind="stable")
        added = np.cumsum(usage[order])
        finite = np.isfinite(self.e_leave)
        lorder = np.argsort(self.e_leave[finite], kind="stable")
        removed = np.concatenate(([0], np.cumsum(usage[finite][lorder])))
        gone = removed[np.searchsorted(self.e_leave[finite][lorder], self.e_enter[order], side="right")]
        return int((added - gone).max()) if len(order) else 0

    def _sweep(self) -> None:
        """Replay arrivals and blocks in time order, evicting the lowest fee rates above the mempool limit."""
        n = self.n
        usage = USAGE_PER_VBYTE * self.e_vsize
        usage_l = usage.tolist()
        enter = self.e_enter.tolist()
        rate = self.e_rate.tolist()
        phantom = self.phantom_entry.tolist()
        bt = self.block_time.tolist()
        in_mp = np.zeros(len(enter), dtype=bool)
        size = 0
        heap: list[tuple[float, int]] = []
        bumps_t: list[float] = []
        bumps_r: list[float] = []
        trimmed: list[float] = []
        bi = 0

        def min_fee(t: float) -> float:
            if not bumps_r:
                return 0.0
            r = bumps_r[-1] * 0.5 ** ((t - bumps_t[-1]) / ROLLING_FEE_HALFLIFE_S)
            return r if r >= INCREMENTAL_SAT_VB / 2 else 0.0

        for e in np.argsort(self.e_enter, kind="stable").tolist():
            t = enter[e]
            while bi < self.n_blocks and bt[bi] < t:
                members = self.block_order[self.block_offsets[bi]:self.block_offsets[bi + 1]]
                gone = members[in_mp[members]]
                size -= int(usage[gone].sum())
                in_mp[gone] = False
                bi += 1
            replaced = -1
            if e < n and phantom[e] >= 0 and in_mp[phantom[e]]:
                replaced = phantom[e]
                in_mp[replaced] = False
                size -= usage_l[replaced]
            if replaced < 0 and rate[e] < min_fee(t):
                self.e_accepted[e] = False
                continue
            in_mp[e] = True
            size += usage_l[e]
            heapq.heappush(heap, (rate[e], e))
            while size > self.limit and heap:
                r, x = heapq.heappop(heap)
                if not in_mp[x]:
                    continue
                in_mp[x] = False
                size -= usage_l[x]
                if x == e:  # trimmed at once: never accepted ("mempool full"), but Core counted the removal
                    self.e_accepted[e] = False
                    trimmed.append(t)
                    if replaced >= 0:
                        self.e_reason[replaced] = SIZELIMIT
                else:
                    self.e_leave[x] = t
                    self.e_reason[x] = SIZELIMIT
                    self.evictions += 1
                bumps_t.append(t)
                bumps_r.append(max(min_fee(t), r + INCREMENTAL_SAT_VB))
        self.bump_time = np.array(bumps_t)
        self.bump_rate = np.array(bumps_r)
        self.trimmed_time = np.array(trimmed)

    # ---- double spends

    def add_conflict(self, target: int, at: float, fee: int) -> int:
        """A conflicting entry replacing chain transaction ``target`` from ``at`` (it must be in the mempool then),
        paying ``fee`` sat with the target's size; it takes the target's block slot. Returns its entry id."""
        if not 0 <= target < self.n:
            raise ValueError(f"entry {target} is not a chain transaction")
        if target in self.conflict_entry:
            raise ValueError(f"transaction {target} already has a conflict")
        if not self.alive(target, at):
            raise ValueError(f"transaction {target} is not in the mempool at {at}")
        e = len(self.e_tx)
        b = int(self.confirm_block[target])
        leave = float(self.block_time[b]) if b >= 0 else np.inf
        vsize = self.e_vsize[target]

        def grow(arr: np.ndarray, value: object) -> np.ndarray:
            return np.concatenate((arr, np.array([value], dtype=arr.dtype)))

        self.e_tx = grow(self.e_tx, target)
        self.e_enter = grow(self.e_enter, at)
        self.e_fee = grow(self.e_fee, fee)
        self.e_vsize = grow(self.e_vsize, vsize)
        self.e_rate = grow(self.e_rate, fee / vsize)
        self.e_leave = grow(self.e_leave, leave)
        self.e_reason = grow(self.e_reason, BLOCK if b >= 0 else 0)
        self.e_accepted = grow(self.e_accepted, True)
        self.e_height = grow(self.e_height, START_HEIGHT + int(np.searchsorted(self.block_time, at, side="right")))
        self.replaced_at = grow(self.replaced_at, np.inf)
        self.replaced_at[target] = at
        self.conflicts.append(e)
        self.conflict_entry[target] = e
        return e

    def is_conflict(self, e: int) -> bool:
        """Whether entry ``e`` is an injected conflict."""
        return e >= self.n + self.n_phantoms

    def replaced(self, e: int, t: float) -> bool:
        """Whether entry ``e`` was replaced by a double spend at or before ``t``."""
        return bool(self.replaced_at[e] <= t)

    def slot_of(self, e: int) -> int | None:
        """The chain index whose block slot entry ``e`` has: itself, a conflict's target; None for a phantom."""
        if e < self.n:
            return e
        return int(self.e_tx[e]) if self.is_conflict(e) else None

    # ---- queries

    def blocks_at(self, t: float) -> int:
        """Number of blocks mined by simulated time ``t`` (block_time <= t)."""
        return int(np.searchsorted(self.block_time, t, side="right"))

    def block_txs(self, b: int) -> np.ndarray:
        """Chain indices of block ``b``'s transactions, in block order."""
        return self.block_order[self.block_offsets[b]:self.block_offsets[b + 1]]

    def mempool(self, t: float) -> np.ndarray:
        """Entry ids in the mempool at ``t``, in order of entry."""
        nb = self.blocks_at(t)
        hi = int(np.searchsorted(self.acc_enter, t, side="right"))
        if nb == 0:
            cand = self.acc_order[:hi]
        else:
            lo = int(np.searchsorted(self.acc_enter, self.block_time[nb - 1], side="right"))
            cand = np.concatenate((self.snapshots[nb - 1], self.acc_order[lo:hi]))
        ids = cand[self.e_leave[cand] > t]
        if not self.conflicts:
            return ids
        ids = ids[self.replaced_at[ids] > t]
        extra = [c for c in self.conflicts if self.alive(c, t)]
        if not extra:
            return ids
        ids = np.concatenate((ids, np.array(extra, dtype=ids.dtype)))
        return ids[np.argsort(self.e_enter[ids], kind="stable")]

    def alive(self, e: int, t: float) -> bool:
        """Whether entry ``e`` is in the mempool at ``t``."""
        return bool(self.e_accepted[e] and self.e_enter[e] <= t < self.e_leave[e] and self.replaced_at[e] > t)

    def sequence(self, t: float) -> int:
        """Core's mempool sequence at ``t``: 1 + entries added + entries removed (a trimmed arrival: removed)."""
        adds = int(np.searchsorted(self.acc_enter, t, side="right"))
        removes = int(np.searchsorted(self.acc_leave, t, side="right"))
        seq = 1 + adds + removes + int(np.searchsorted(self.trimmed_time, t, side="right"))
        for c in self.conflicts:  # target removed and conflict added at its time; the conflict's own removal
            target = int(self.e_tx[c])  # replaces the target's original one (counted in acc_leave)
            seq += 2 * int(self.e_enter[c] <= t) - int(self.e_leave[target] <= t) + int(self.e_leave[c] <= t)
        return seq

    def rolling_min_fee(self, t: float) -> float:
        """The mempool's rolling minimum fee rate at ``t`` in sat/vB (0 when none)."""
        k = int(np.searchsorted(self.bump_time, t, side="right")) - 1
        if k < 0:
            return 0.0
        r = float(self.bump_rate[k]) * 0.5 ** ((t - float(self.bump_time[k])) / ROLLING_FEE_HALFLIFE_S)
        return r if r >= INCREMENTAL_SAT_VB / 2 else 0.0
