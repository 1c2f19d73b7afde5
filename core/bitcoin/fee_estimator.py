"""A Bitcoin-Core-style bucket fee estimator: the baseline the learned fee model must beat.

Modelled on ``CBlockPolicyEstimator`` / ``TxConfirmStats`` (Bitcoin Core ``policy/fees.cpp``):

* Fee-rate buckets from 1 to 10,000 sat/vB (Core: 1,000 to 10,000,000 sat/kvB) spaced by a factor
  of 1.05, plus a last bucket up to infinity; a rate goes to the first bucket whose upper bound is
  ``>=`` it (Core's ``bucketMap.lower_bound``), so rates below 1 sat/vB land in the first bucket.
* Three horizons with Core's constants: short (12 periods of 1 block, decay 0.962), medium (24
  periods of 2 blocks = 48 blocks, decay 0.9952), long (42 periods of 24 blocks = 1008 blocks, decay
  0.99931). Each tracks per bucket the decayed count of confirmed txs (``tx_ct``), their decayed fee
  sum (for the bucket's mean rate), per period target the decayed count confirmed within it
  (``conf``), and per period target the decayed count that left the mempool unconfirmed after
  waiting at least that long (``fail``). Every average is decayed once per block, before the block's
  txs are added, as in Core's ``processBlock``.
* ``EstimateMedianVal`` is followed line by line: walk buckets from the highest rate down, close a
  group once its confirmed count reaches ``sufficient / (1 - decay)`` (0.5 txs per block for short,
  0.1 for medium and long), test ``confirmed within target / (total confirmed + failures + txs still
  in the mempool for >= target blocks)`` against the threshold; a failing range keeps accumulating
  into the next group, a passing one resets the counters. The answer is the mean rate of the bucket
  holding the median confirmed tx of the lowest passing range.
* ``estimate`` follows ``estimateSmartFee``: target 1 becomes 2; the target is capped at half the
  number of blocks seen since the first recorded confirmation (``MaxUsableEstimate``); the answer is
  the max of the 60 % estimate at ``k/2``, the 85 % estimate at ``k`` and the 95 % estimate at
  ``2k`` (each from the shortest horizon tracking that target, lowered by shorter horizons' own
  longest-target answers as ``estimateCombinedFee(checkShorterHorizon=True)`` does); conservative
  mode (or no answer) also takes ``estimateConservativeFee`` (95 % at ``2k`` on medium and long).
  Results are rounded to whole sat/kvB, i.e. 0.001 sat/vB.

Simplified from Core:

* No per-transaction tracking. Confirmed txs arrive as arrays of (entry height, rate), and the
  mempool as a snapshot after each block. "Still in the mempool for >= target blocks" (Core's
  ``unconfTxs``/``oldUnconfTxs``) is read from the latest snapshot.
* Core counts a *failure* when a tracked tx leaves the mempool without confirming (eviction,
  expiry, replacement). Without tx ids we infer those removals by counting: per (entry height,
  bucket), txs in the previous snapshot minus those confirmed now minus those still in the mempool,
  floored at 0. This is exact unless a snapshot already held txs that entered at its own height
  (then it is a lower bound for that cell). They are aged at the previous tip and counted before
  the block's decay, as Core counts them between blocks. Pass ``infer_evictions=False`` when the
  snapshots are not the full mempool.
* All txs passed in count: Core only tracks txs that entered while it was at the chain tip.
* No ``fee_estimates.dat`` persistence (so no ``HistoricalBlockSpan``), no reorg handling (heights
  must increase; a gap is decayed once, as Core does), and no RPC-level floor at the mempool
  minimum or min-relay fee.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_BUCKET_SAT_VB = 1.0
MAX_BUCKET_SAT_VB = 10_000.0
FEE_SPACING = 1.05
HALF_SUCCESS_PCT = 0.60
SUCCESS_PCT = 0.85
DOUBLE_SUCCESS_PCT = 0.95
SUFFICIENT_FEETXS = 0.1  # txs per block, medium and long horizons
SUFFICIENT_TXS_SHORT = 0.5  # txs per block, short horizon


def _bucket_bounds() -> np.ndarray:
    """Upper bounds in sat/vB, built like Core (repeated multiplication in sat/kvB) plus +inf."""
    bounds = []
    b = MIN_BUCKET_SAT_VB * 1000.0
    while b <= MAX_BUCKET_SAT_VB * 1000.0:
        bounds.append(b / 1000.0)
        b *= FEE_SPACING
    return np.array([*bounds, np.inf])


BUCKET_BOUNDS = _bucket_bounds()
N_BUCKETS = BUCKET_BOUNDS.size  # 190
HORIZON_NAMES = ("short", "medium", "long")


@dataclass
class _Stats:
    """One horizon's decayed statistics (Core's ``TxConfirmStats``)."""

    name: str
    periods: int
    scale: int
    decay: float
    sufficient: float
    conf: np.ndarray = field(init=False)  # (periods, buckets): confirmed within p+1 periods
    fail: np.ndarray = field(init=False)  # (periods, buckets): left unconfirmed after >= p+1 periods
    tx_ct: np.ndarray = field(init=False)  # (buckets,) confirmed txs
    fee_sum: np.ndarray = field(init=False)  # (buckets,) sum of their rates, sat/vB

    def __post_init__(self) -> None:
        self.conf = np.zeros((self.periods, N_BUCKETS))
        self.fail = np.zeros((self.periods, N_BUCKETS))
        self.tx_ct = np.zeros(N_BUCKETS)
        self.fee_sum = np.zeros(N_BUCKETS)

    @property
    def max_confirms(self) -> int:
        return self.periods * self.scale

    def decay_all(self) -> None:
        for arr in (self.conf, self.fail, self.tx_ct, self.fee_sum):
            arr *= self.decay

    def record(self, blocks_to_confirm: np.ndarray, bucket: np.ndarray, ct: np.ndarray, fees: np.ndarray) -> None:
        """Add confirmed txs (Core's ``Record``); ``ct``/``fees`` are per-bucket totals."""
        periods_to_confirm = (blocks_to_confirm + self.scale - 1) // self.scale
        row = np.minimum(periods_to_confirm, self.periods + 1) - 1  # row == periods: too slow for any target
        hist = np.bincount(row * N_BUCKETS + bucket, minlength=(self.periods + 1) * N_BUCKETS)
        self.conf += np.cumsum(hist.reshape(self.periods + 1, N_BUCKETS)[: self.periods], axis=0)
        self.tx_ct += ct
        self.fee_sum += fees

    def record_failures(self, removed_at_least: np.ndarray) -> None:
        """Add txs that left the mempool unconfirmed (Core's ``removeTx``).

        ``removed_at_least[a, b]``: such txs of bucket b that had waited >= ``a`` blocks. One that
        waited n whole periods failed every target of fewer than n periods (rows 0..n-1).
        """
        rows = self.scale * np.arange(1, self.periods + 1)
        rows = rows[rows < removed_at_least.shape[0]]  # older rows hold nothing
        self.fail[: rows.size] += removed_at_least[rows]

    def estimate_median(self, target: int, threshold: float, unconfirmed: np.ndarray) -> float:
        """Core's ``EstimateMedianVal``; ``unconfirmed``: per bucket, mempool txs waiting >= ``target`` blocks.

        Returns -1.0 when no bucket range passes.
        """
        period = (target + self.scale - 1) // self.scale
        conf = self.conf[period - 1].tolist()
        fail = self.fail[period - 1].tolist()
        tx_ct = self.tx_ct.tolist()
        extra_by_bucket = unconfirmed.tolist()
        sufficient = self.sufficient / (1.0 - self.decay)

        n_conf = total = fail_num = partial = 0.0
        extra = 0
        cur_near = best_near = best_far = N_BUCKETS - 1
        found = False
        new_range = True
        for bucket in range(N_BUCKETS - 1, -1, -1):
            if new_range:
                cur_near = bucket
                new_range = False
            n_conf += conf[bucket]
            partial += tx_ct[bucket]
            total += tx_ct[bucket]
            fail_num += fail[bucket]
            extra += extra_by_bucket[bucket]
            if partial < sufficient:
                continue
            partial = 0.0
            if n_conf / (total + fail_num + extra) < threshold:
                continue  # failing: keep accumulating into the next group
            found = True
            best_near, best_far = cur_near, bucket
            n_conf = total = fail_num = 0.0
            extra = 0
            new_range = True

        if not found:
            return -1.0
        lo, hi = best_far, best_near
        half = sum(tx_ct[lo : hi + 1]) / 2.0
        if half == 0.0:
            return -1.0
        for j in range(lo, hi + 1):
            if tx_ct[j] < half:
                half -= tx_ct[j]
            else:
                return self.fee_sum[j] / tx_ct[j]
        return -1.0  # unreachable: the loop always finds the median bucket


def _int_vector(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {tuple(arr.shape)}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" or (arr.size == 0 and arr.dtype.kind not in "biu"):
        arr = arr.astype(np.float64)
        if not (np.isfinite(arr) & (arr == np.round(arr))).all():
            raise ValueError(f"{name}: block heights must be integers")
        return arr.astype(np.int64)
    raise ValueError(f"{name}: block heights must be integers, got dtype {arr.dtype}")


def _rate_vector(values: Any, name: str, n: int, ref: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {tuple(arr.shape)}")
    if arr.size != n:
        raise ValueError(f"{name}: length {arr.size} does not match {ref} length {n}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected fee rates in sat/vB, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: fee rates must be finite and >= 0 sat/vB, element {i} is {arr[i]!r}")
    return arr


_LOG_SPACING = float(np.log(FEE_SPACING))


def bucket_index(fee_rate: np.ndarray) -> np.ndarray:
    """Bucket of each rate (sat/vB, not NaN): the first bucket whose upper bound is >= the rate.

    Same result as ``np.searchsorted(BUCKET_BOUNDS, fee_rate)``, several times faster on large
    unsorted arrays: the logarithm, biased to err at most one bucket low, corrected against the bounds.
    """
    rate = np.asarray(fee_rate, dtype=np.float64)
    q = np.log(np.maximum(rate, MIN_BUCKET_SAT_VB))
    q *= 1.0 / _LOG_SPACING
    q -= 1e-9  # log and bound rounding errors are ~1e-12 buckets
    np.minimum(q, N_BUCKETS - 1, out=q)
    idx = np.ceil(q, out=q).astype(np.intp)
    idx += BUCKET_BOUNDS[idx] < rate
    return idx


class BucketFeeEstimator:
    """Core-style fee estimator fed block by block, in height order; rates in sat/vB.

    Usage: ``est.process_block(height, conf_entry_heights, conf_rates, mempool_entry_heights,
    mempool_rates)`` once per block, then ``est.estimate(k)`` at any point.
    """

    def __init__(self, infer_evictions: bool = True) -> None:
        self.infer_evictions = infer_evictions
        self.stats = {
            "short": _Stats("short", periods=12, scale=1, decay=0.962, sufficient=SUFFICIENT_TXS_SHORT),
            "medium": _Stats("medium", periods=24, scale=2, decay=0.9952, sufficient=SUFFICIENT_FEETXS),
            "long": _Stats("long", periods=42, scale=24, decay=0.99931, sufficient=SUFFICIENT_FEETXS),
        }
        self.max_confirms = self.stats["long"].max_confirms  # 1008
        # ages (blocks since entry) at or beyond this share one histogram row
        self._fold = self.max_confirms + 1
        self.best_height: int | None = None
        self.first_recorded_height: int | None = None
        self._mempool_hist: np.ndarray | None = None  # (ages, buckets) by min(best_height - entry, fold)
        self._unconfirmed_table: np.ndarray | None = None  # row a: per bucket, mempool txs waiting >= a blocks

    # -- feeding -----------------------------------------------------------------------------

    def _age_hist(self, ages: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """Counts by (min(age, fold), bucket); negative ages dropped; rows up to the largest age present."""
        if ages.size and ages.min() < 0:
            keep = ages >= 0
            ages, bucket = ages[keep], bucket[keep]
        key = np.minimum(ages, self._fold)
        rows = int(key.max()) + 1 if key.size else 1
        key *= N_BUCKETS
        key += bucket
        return np.bincount(key, minlength=rows * N_BUCKETS).reshape(rows, N_BUCKETS)

    def process_block(
        self,
        height: int,
        confirmed_entry_heights: Any,
        confirmed_fee_rates: Any,
        mempool_entry_heights: Any,
        mempool_fee_rates: Any,
    ) -> None:
        """Record one new block: the txs it confirmed and the mempool left after it.

        Entry height = chain tip height when the tx entered the mempool; a confirmed tx took
        ``height - entry_height`` (>= 1) blocks. Heights must strictly increase between calls.
        """
        if isinstance(height, bool) or not isinstance(height, numbers.Integral):
            raise ValueError(f"height: must be an integer, got {height!r}")
        height = int(height)
        if self.best_height is not None and height <= self.best_height:
            raise ValueError(f"height: {height} is not above the last processed height {self.best_height}")
        conf_e = _int_vector(confirmed_entry_heights, "confirmed_entry_heights")
        conf_r = _rate_vector(confirmed_fee_rates, "confirmed_fee_rates", conf_e.size, "confirmed_entry_heights")
        mp_e = _int_vector(mempool_entry_heights, "mempool_entry_heights")
        mp_r = _rate_vector(mempool_fee_rates, "mempool_fee_rates", mp_e.size, "mempool_entry_heights")
        if (conf_e >= height).any():
            i = int(np.argmax(conf_e >= height))
            raise ValueError(f"confirmed_entry_heights: element {i} is {conf_e[i]}, must be below height {height}")
        if (mp_e > height).any():
            i = int(np.argmax(mp_e > height))
            raise ValueError(f"mempool_entry_heights: element {i} is {mp_e[i]}, must not exceed height {height}")

        prev_height = self.best_height
        self.best_height = height
        conf_b = bucket_index(conf_r)
        mp_b = bucket_index(mp_r)

        # txs that left the mempool unconfirmed since the last block, aged at the previous tip:
        # Core counts them (removeTx, inBlock=false) before the next block's decay
        if self.infer_evictions and prev_height is not None and self._mempool_hist is not None:
            gone = self._mempool_hist.copy()  # keyed by prev_height - entry height
            for later in (self._age_hist(prev_height - conf_e, conf_b), self._age_hist(prev_height - mp_e, mp_b)):
                rows = min(gone.shape[0], later.shape[0])
                gone[:rows] -= later[:rows]
            removed = np.maximum(gone, 0)
            if removed.any():
                at_least = np.cumsum(removed[::-1], axis=0)[::-1].astype(np.float64)
                for s in self.stats.values():
                    s.record_failures(at_least)

        for s in self.stats.values():
            s.decay_all()
        if conf_e.size:
            ct = np.bincount(conf_b, minlength=N_BUCKETS)
            fees = np.bincount(conf_b, weights=conf_r, minlength=N_BUCKETS)
            for s in self.stats.values():
                s.record(height - conf_e, conf_b, ct, fees)
            if self.first_recorded_height is None:
                self.first_recorded_height = height

        self._mempool_hist = self._age_hist(height - mp_e, mp_b)
        self._unconfirmed_table = None

    # -- estimating ----------------------------------------------------------------------------

    @property
    def max_usable_target(self) -> int:
        """Largest target answered (Core's ``MaxUsableEstimate``): half the blocks seen since the first confirmation."""
        if self.best_height is None or self.first_recorded_height is None:
            return 0
        return min(self.max_confirms, (self.best_height - self.first_recorded_height) // 2)

    def _unconfirmed(self, target: int) -> np.ndarray:
        if self._mempool_hist is None:
            return np.zeros(N_BUCKETS, dtype=np.int64)
        if self._unconfirmed_table is None:
            self._unconfirmed_table = np.cumsum(self._mempool_hist[::-1], axis=0)[::-1]
        row = min(target, self._fold)
        if row >= self._unconfirmed_table.shape[0]:
            return np.zeros(N_BUCKETS, dtype=np.int64)
        return self._unconfirmed_table[row]

    def _median(self, horizon: str, target: int, threshold: float) -> float:
        return self.stats[horizon].estimate_median(target, threshold, self._unconfirmed(target))

    def _combined(self, target: int, threshold: float, check_shorter: bool) -> float:
        """Core's ``estimateCombinedFee``; -1.0 when there is no answer."""
        short, medium = self.stats["short"].max_confirms, self.stats["medium"].max_confirms
        if not 1 <= target <= self.max_confirms:
            return -1.0
        horizon = "short" if target <= short else "medium" if target <= medium else "long"
        est = self._median(horizon, target, threshold)
        if check_shorter:
            for name, reach in (("medium", medium), ("short", short)):
                if target > reach:
                    shorter = self._median(name, reach, threshold)
                    if shorter > 0 and (est == -1.0 or shorter < est):
                        est = shorter
        return est

    def _conservative(self, double_target: int) -> float:
        """Core's ``estimateConservativeFee``: 95 % at ``2k`` on the medium and long horizons."""
        est = -1.0
        if double_target <= self.stats["short"].max_confirms:
            est = self._median("medium", double_target, DOUBLE_SUCCESS_PCT)
        if double_target <= self.stats["medium"].max_confirms:
            est = max(est, self._median("long", double_target, DOUBLE_SUCCESS_PCT))
        return est

    def _check_target(self, k: Any, name: str = "k") -> int:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ValueError(f"{name}: must be an integer number of blocks, got {k!r}")
        if not 1 <= int(k) <= self.max_confirms:
            raise ValueError(f"{name}: must be between 1 and {self.max_confirms} blocks, got {k}")
        return int(k)

    def estimate(self, k: int, conservative: bool = False) -> float | None:
        """Fee rate (sat/vB) to confirm within ``k`` blocks, as ``estimatesmartfee``; None without enough data.

        Like Core, ``k=1`` is answered as ``k=2`` and ``k`` is capped at ``max_usable_target``.
        """
        k = self._check_target(k)
        k = min(max(k, 2), self.max_usable_target)
        if k <= 1:
            return None
        median = max(
            self._combined(k // 2, HALF_SUCCESS_PCT, True),
            self._combined(k, SUCCESS_PCT, True),
            self._combined(2 * k, DOUBLE_SUCCESS_PCT, not conservative),
        )
        if conservative or median == -1.0:
            median = max(median, self._conservative(2 * k))
        if median < 0:
            return None
        return round(median * 1000.0) / 1000.0

    def estimate_raw(self, k: int, threshold: float = DOUBLE_SUCCESS_PCT, horizon: str = "medium") -> float | None:
        """One horizon at one threshold, as ``estimaterawfee``; None when no bucket range passes."""
        k = self._check_target(k)
        if horizon not in self.stats:
            raise ValueError(f"horizon: must be one of {HORIZON_NAMES}, got {horizon!r}")
        if k > self.stats[horizon].max_confirms:
            raise ValueError(
                f"k: the {horizon} horizon tracks at most {self.stats[horizon].max_confirms} blocks, got {k}"
            )
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold: must be in (0, 1], got {threshold!r}")
        median = self._median(horizon, k, threshold)
        return None if median < 0 else round(median * 1000.0) / 1000.0
