"""mempool.space-style recommended fees from a mempool: projected blocks, their median fees, five levels.

Reimplemented from mempool/mempool at commit 3b6ed8bd (2026-08-06); the fee logic was last changed in
3c9745be "round precise fees to 3.d.p" (2025-12-03):

* ``backend/src/api/fee-api.ts`` ``calculateRecommendedFee`` (lines 50-89) and ``optimizeMedianFee``
  (lines 91-101), followed line by line in :func:`recommend_from_blocks`:
  minimum = max(mempoolminfee rounded *up* to the increment, the increment); fastest from projected
  block 1, halfHour from block 2 averaged with fastest, hour from block 3 averaged with halfHour
  (``useFee = (medianFee + previousFee) / 2``); a block of <= 500,000 vB or whose median is under the
  minimum gives the minimum; the *last* projected block of <= 950,000 vB scales its fee by
  ``(vsize - 500,000) / 500,000`` and rounds to nearest, any other block rounds its fee *up*; every level
  is floored at the minimum; economy = max(minimum, min(2 x minimum, hour before the monotone step));
  then fastest >= halfHour >= hour >= economy; every level rounded to nearest increment.
* Two endpoints, both offered (``precision``): ``/api/v1/fees/recommended`` (``getRecommendedFee``,
  increment 1 sat/vB: whole sat/vB, the default here, "mempool.space-style") and ``/api/v1/fees/precise``
  (``getPreciseRecommendedFee``, lines 32-48: increment 0.001 sat/vB, then fastest + 0.5 floored at 1,
  halfHour + 0.25 floored at 0.5, all rounded to 0.001 sat/vB).
* ``backend/src/api/common.ts`` ``calcEffectiveFeeStatistics`` (line 1040, commit bf60cf72): a projected
  block's ``medianFee`` is *not* the median of its own transactions: it is the vsize-weighted mean fee
  rate over the middle 0.25 % of a *full* 4,000,000 WU block (``BLOCK_WEIGHT_UNITS / 800`` = 5,000 WU =
  1,250 vB either side of 500,000 vB), counted with the block's unused space at the low-fee end, so a
  block under ~498,750 vB has median 0 and a block of one transaction has median 0. Its fee range is
  [min, p10, p25, p50, p75, p90, max] with ``getNthPercentile`` (index ``floor((n - 1) p / 100)`` of the
  ascending rates), min = min(p1, the lowest rate of the last 2 % in block order), max = max(p99, the
  highest rate of the first 2 %).
* ``backend/src/api/mempool-blocks.ts`` (lines 379-389, 667-680): with 8 projected blocks
  (``MEMPOOL_BLOCKS_AMOUNT``) the last one takes the rest of the mempool; when it exceeds one block its
  median comes from ``OnlineFeeStatsCalculator`` (common.ts line 1260): the mean rate over a band of
  0.5 % of its weight centred on its middle, in block order.
* Block packing (``rust/gbt/src/gbt.rs`` lines 153-160, ``backend/src/cluster-mempool/block-builder.ts``
  lines 24, 125): transactions fill a block by fee rate while their weight stays under 4,000,000 -
  8,000 WU, i.e. 998,000 vB of transactions (``reserved_vsize`` = 2,000 vB).

Simplified from mempool.space (stated so results are read correctly):

* Transactions are independent (no ancestors, so no CPFP packages: the effective rate is fee / vsize).
* Packing is a prefix cut of the rate-sorted mempool, as the simulated chain's miner does
  (``core/data/chain.py``); mempool.space's GBT keeps trying smaller transactions after one does not fit.
  A block can differ by the size of the transaction that straddles its boundary.
* Sizes are in vB (weight / 4); the median window and the 500,000 / 950,000 vB rules scale with
  ``block_vsize`` (exactly mempool.space's numbers at the default 1,000,000 vB).
* The stack block's fee range uses the same 7-number rule as the other blocks (mempool.space gives it
  11 band means); no fee uses it.

Mapping a confirmation target k to a level (:func:`estimate_for_target`): mempool.space labels its levels
"high priority ~10 minutes", "medium ~30 minutes", "low ~1 hour" and "no priority"; with 10-minute blocks
that is k=1 -> fastest, k=2-3 -> half_hour, k=4-6 -> hour, k>6 -> economy. A second estimator,
:func:`projected_block_fee`, answers k with the median fee of projected block k (floored at the mempool
minimum fee): "projected block k median".
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from core.errors import ConfigError

BLOCK_VSIZE = 1_000_000  # BLOCK_WEIGHT_UNITS / 4
RESERVED_VSIZE = 2_000  # 8,000 WU: coinbase reserve + packing margin (gbt.rs, block-builder.ts)
N_PROJECTED_BLOCKS = 8  # MEMPOOL_BLOCKS_AMOUNT
MEDIAN_HALF_WIDTH = 1 / 800  # of the block: calcEffectiveFeeStatistics' halfWidth
STACK_BAND = 0.005  # OnlineFeeStatsCalculator(stackWeight, 0.5): band of 0.5 % of the stack
PRECISIONS = ("whole", "precise")
INCREMENT = {"whole": 1.0, "precise": 0.001}
PRIORITY_FACTOR = 0.5  # /fees/precise: added to fastest (half of it to halfHour)
MIN_FASTEST_PRECISE = 1.0
MIN_HALF_HOUR_PRECISE = 0.5
LEVELS = ("fastest", "half_hour", "hour", "economy", "minimum")


@dataclass(frozen=True)
class ProjectedBlock:
    """One projected block: vsize of its transactions (vB), count, median fee and fee range (sat/vB)."""

    vsize: float
    n_tx: int
    median_fee: float
    fee_range: tuple[float, ...]  # min, p10, p25, p50, p75, p90, max


@dataclass(frozen=True)
class RecommendedFees:
    """mempool.space's five levels in sat/vB, highest priority first."""

    fastest: float
    half_hour: float
    hour: float
    economy: float
    minimum: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


def _number(value: Any, field: str, *, low: float, low_ok: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, f"must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or (v == low and not low_ok):
        raise ConfigError(field, f"must be a finite number {'>=' if low_ok else '>'} {low:g}, got {value!r}")
    return v


def _integer(value: Any, field: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(field, f"must be an integer, got {value!r}")
    if int(value) < low:
        raise ConfigError(field, f"must be at least {low}, got {value}")
    return int(value)


def _vector(values: Any, field: str, n: int | None, positive: bool) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(field, f"expected a 1-D array, got shape {tuple(arr.shape)}")
    if n is not None and arr.size != n:
        raise ConfigError(field, f"length {arr.size} does not match fee_rate's length {n}")
    if arr.size and arr.dtype.kind not in "iuf":
        raise ConfigError(field, f"expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(field, f"must be finite and {'> 0' if positive else '>= 0'}, element {i} is {arr[i]!r}")
    return arr


def _precision(precision: Any) -> float:
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {PRECISIONS}, got {precision!r}")
    return INCREMENT[precision]


def _block_shape(block_vsize: Any, reserved_vsize: Any, n_blocks: Any) -> tuple[float, float, int]:
    b = _number(block_vsize, "block_vsize", low=0.0, low_ok=False)
    r = _number(reserved_vsize, "reserved_vsize", low=0.0)
    if r >= b:
        raise ConfigError("reserved_vsize", f"{reserved_vsize!r} must be below block_vsize ({block_vsize!r})")
    return b, r, _integer(n_blocks, "n_blocks", 1)


# ---------------------------------------------------------------------------------------------
# projected blocks
# ---------------------------------------------------------------------------------------------


def _band_mean(rate: np.ndarray, size: np.ndarray, cum: np.ndarray, lo: float, hi: float) -> float:
    """vsize-weighted mean rate over positions [lo, hi] from the block's top (0 when nothing is there)."""
    i0 = int(np.searchsorted(cum, lo, side="right"))  # first tx ending after lo
    i1 = int(np.searchsorted(cum, hi, side="left")) + 1  # one past the tx that reaches hi
    if i0 >= rate.size:
        return 0.0
    end = cum[i0:i1]
    start = end - size[i0:i1]
    w = np.minimum(end, hi) - np.maximum(start, lo)
    w = np.maximum(w, 0.0)
    total = float(w.sum())
    return float(np.dot(rate[i0:i1], w) / total) if total > 0 else 0.0


def _fee_range(rate: np.ndarray) -> tuple[float, ...]:
    """calcEffectiveFeeStatistics' [min, p10, p25, p50, p75, p90, max] of rates in block order (descending)."""
    n = rate.size
    asc = rate[::-1]

    def nth(p: float) -> float:
        return float(asc[int(math.floor((n - 1) * (p / 100)))])

    tail = rate[math.ceil(n * 49 / 50):]
    head = rate[: int(n / 50)]
    lo = min(nth(1), float(tail.min()) if tail.size else math.inf)
    hi = max(nth(99), float(head.max()) if head.size else 0.0)
    return (lo, *(nth(p) for p in (10, 25, 50, 75, 90)), hi)


def projected_blocks_sorted(
    rate_desc: np.ndarray,
    vsize_desc: np.ndarray,
    block_vsize: float = BLOCK_VSIZE,
    n_blocks: int = N_PROJECTED_BLOCKS,
    reserved_vsize: float = RESERVED_VSIZE,
) -> list[ProjectedBlock]:
    """Projected blocks of a mempool already sorted by fee rate, highest first (no validation: the replay's path)."""
    blocks: list[ProjectedBlock] = []
    capacity = block_vsize - reserved_vsize
    cum_all = np.cumsum(vsize_desc)
    start = 0
    used = 0.0  # vsize before ``start``
    n = rate_desc.size
    half, half_width = block_vsize / 2, block_vsize * MEDIAN_HALF_WIDTH
    while start < n and len(blocks) < n_blocks:
        last = len(blocks) == n_blocks - 1
        if last:
            end = n
        else:
            # the prefix whose weight stays strictly under the capacity (block-builder.ts line 125)
            end = int(np.searchsorted(cum_all, used + capacity, side="left"))
            end = max(end, start + 1)  # a transaction larger than a block still makes one
        rate, size = rate_desc[start:end], vsize_desc[start:end]
        cum = cum_all[start:end] - used
        total = float(cum[-1])
        if last and total > block_vsize:
            width = total * STACK_BAND
            median = _band_mean(rate, size, cum, total / 2 - width / 2, total / 2 + width / 2)
        elif rate.size <= 1:
            median = 0.0
        else:
            median = _band_mean(rate, size, cum, half - half_width, half + half_width)
        fee_range = _fee_range(rate) if rate.size > 1 else (0.0,) * 7
        blocks.append(ProjectedBlock(vsize=total, n_tx=int(rate.size), median_fee=median, fee_range=fee_range))
        used = float(cum_all[end - 1])
        start = end
    return blocks


def projected_blocks(
    fee_rate: Any,
    vsize: Any,
    block_vsize: float = BLOCK_VSIZE,
    n_blocks: int = N_PROJECTED_BLOCKS,
    reserved_vsize: float = RESERVED_VSIZE,
) -> list[ProjectedBlock]:
    """The mempool (fee rates in sat/vB, vsizes in vB) packed into projected blocks, next block first.

    Blocks 1..n_blocks-1 hold up to ``block_vsize - reserved_vsize`` vB each; the last takes the rest.
    An empty mempool gives no block.
    """
    rate = _vector(fee_rate, "fee_rate", None, positive=False)
    size = _vector(vsize, "vsize", rate.size, positive=True)
    b, r, n = _block_shape(block_vsize, reserved_vsize, n_blocks)
    order = np.argsort(-rate, kind="stable")
    return projected_blocks_sorted(rate[order], size[order], b, n, r)


# ---------------------------------------------------------------------------------------------
# recommended fees (fee-api.ts)
# ---------------------------------------------------------------------------------------------


def _js_round(x: float) -> float:
    """JavaScript's Math.round: halves go up."""
    return float(math.floor(x + 0.5))


def _round_up(value: float, nearest: float) -> float:
    return math.ceil(value / nearest) * nearest


def _round_to(value: float, nearest: float) -> float:
    return _js_round(value / nearest) * nearest


def _optimize_median_fee(
    block: ProjectedBlock, next_block: ProjectedBlock | None, previous: float | None,
    min_fee: float, inc: float, block_vsize: float,
) -> float:
    """fee-api.ts ``optimizeMedianFee``."""
    use_fee = (block.median_fee + previous) / 2 if previous else block.median_fee
    half = block_vsize / 2
    if block.vsize <= half or block.median_fee < min_fee:
        return min_fee
    if block.vsize <= 0.95 * block_vsize and next_block is None:
        multiplier = (block.vsize - half) / half
        return max(_round_to(use_fee * multiplier, inc), min_fee)
    return max(_round_up(use_fee, inc), min_fee)


def mempool_minimum_fee(mempool_min_fee_sat_vb: float, precision: str = "whole") -> float:
    """mempool.space's minimumFee: mempoolminfee rounded up to the increment, at least the increment."""
    inc = _precision(precision)
    m = _number(mempool_min_fee_sat_vb, "mempool_min_fee_sat_vb", low=0.0)
    return max(_round_up(m, inc), inc)


def recommend_from_blocks(
    blocks: list[ProjectedBlock], mempool_min_fee_sat_vb: float, precision: str = "whole",
    block_vsize: float = BLOCK_VSIZE,
) -> RecommendedFees:
    """fee-api.ts ``calculateRecommendedFee`` (``precision="precise"``: ``getPreciseRecommendedFee``)."""
    inc = _precision(precision)
    minimum = mempool_minimum_fee(mempool_min_fee_sat_vb, precision)
    if not blocks:
        fastest = half_hour = hour = economy = minimum
    else:
        def block(i: int) -> ProjectedBlock | None:
            return blocks[i] if i < len(blocks) else None

        first = _optimize_median_fee(blocks[0], block(1), None, minimum, inc, block_vsize)
        second = (_optimize_median_fee(blocks[1], block(2), first, minimum, inc, block_vsize)
                  if len(blocks) > 1 else minimum)
        third = (_optimize_median_fee(blocks[2], block(3), second, minimum, inc, block_vsize)
                 if len(blocks) > 2 else minimum)
        fastest, half_hour, hour = max(minimum, first), max(minimum, second), max(minimum, third)
        economy = max(minimum, min(2 * minimum, third))
        fastest = max(fastest, half_hour, hour, economy)
        half_hour = max(half_hour, hour, economy)
        hour = max(hour, economy)
    levels = [_round_to(v, inc) for v in (fastest, half_hour, hour, economy, minimum)]
    if precision == "precise":
        levels[0] = max(levels[0] + PRIORITY_FACTOR, MIN_FASTEST_PRECISE)
        levels[1] = max(levels[1] + PRIORITY_FACTOR / 2, MIN_HALF_HOUR_PRECISE)
        levels = [_js_round(v * 1000) / 1000 for v in levels]
    return RecommendedFees(*levels)


def recommended_fees(
    fee_rate: Any,
    vsize: Any,
    mempool_min_fee_sat_vb: float,
    precision: str = "whole",
    block_vsize: float = BLOCK_VSIZE,
) -> RecommendedFees:
    """mempool.space's recommended fees for a mempool (rates sat/vB, vsizes vB; mempoolminfee in sat/vB)."""
    _precision(precision)
    _number(mempool_min_fee_sat_vb, "mempool_min_fee_sat_vb", low=0.0)
    blocks = projected_blocks(fee_rate, vsize, block_vsize=block_vsize)
    return recommend_from_blocks(blocks, mempool_min_fee_sat_vb, precision, block_vsize)


# ---------------------------------------------------------------------------------------------
# confirmation targets
# ---------------------------------------------------------------------------------------------


def level_for_target(k: Any) -> str:
    """The level answering target k: 1 fastest, 2-3 half_hour, 4-6 hour, more economy (~10/30/60 min)."""
    k = _integer(k, "k", 1)
    return "fastest" if k == 1 else "half_hour" if k <= 3 else "hour" if k <= 6 else "economy"


def estimate_for_target(rec: RecommendedFees, k: Any) -> float:
    """The recommended fee (sat/vB) for confirmation within k blocks."""
    if not isinstance(rec, RecommendedFees):
        raise ConfigError("rec", f"must be RecommendedFees, got {type(rec).__name__}")
    return float(getattr(rec, level_for_target(k)))


def projected_block_fee(blocks: list[ProjectedBlock], k: Any, mempool_min_fee_sat_vb: float) -> float:
    """"Projected block k median": the median fee of projected block k, at least the mempool minimum fee.

    With fewer than k projected blocks the k-th block is empty and the minimum is enough. Rounded to
    0.001 sat/vB (1 sat/kvB). Project at least k + 1 blocks so that block k is not the stacked last one.
    """
    k = _integer(k, "k", 1)
    floor = _number(mempool_min_fee_sat_vb, "mempool_min_fee_sat_vb", low=0.0)
    median = blocks[k - 1].median_fee if k <= len(blocks) else 0.0
    return _js_round(max(median, floor) * 1000) / 1000
