"""core.bitcoin.fee_recommend against hand-computed mempools and mempool.space's own test vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.bitcoin.fee_recommend import (
    ProjectedBlock,
    RecommendedFees,
    estimate_for_target,
    level_for_target,
    mempool_minimum_fee,
    projected_block_fee,
    projected_blocks,
    recommend_from_blocks,
    recommended_fees,
)
from core.errors import ConfigError


def mempool(*groups: tuple[int, float], vsize: float = 1_000.0) -> tuple[np.ndarray, np.ndarray]:
    """(count, rate) groups of equal-size transactions -> (fee rates, vsizes)."""
    rates = np.concatenate([np.full(n, r, dtype=np.float64) for n, r in groups])
    return rates, np.full(rates.size, vsize)


# Three full blocks and a short fourth one. A block's transactions stay strictly under 998,000 vB
# (4,000,000 - 8,000 WU), so 997 transactions of 1,000 vB fill one. Block 1's median window (1,250 vB
# either side of 500,000 vB from the top) is half 30.5, half 10.5.
THREE_BLOCKS = mempool((500, 30.5), (497, 10.5), (997, 8.2), (997, 4.0), (300, 2.0))


def levels(rec: RecommendedFees) -> tuple[float, ...]:
    return (rec.fastest, rec.half_hour, rec.hour, rec.economy, rec.minimum)


def test_projected_blocks_by_hand() -> None:
    blocks = projected_blocks(*THREE_BLOCKS)
    assert [b.n_tx for b in blocks] == [997, 997, 997, 300]
    assert [b.vsize for b in blocks] == [997_000, 997_000, 997_000, 300_000]
    assert [b.median_fee for b in blocks] == pytest.approx([20.5, 8.2, 4.0, 0.0])  # block 4: under half full
    # getNthPercentile: ascending index floor(996 * p / 100); min/max from the 1st/99th and the block's ends
    assert blocks[0].fee_range == (10.5, 10.5, 10.5, 30.5, 30.5, 30.5, 30.5)
    # the last of n blocks takes the rest: 997 x 8.2, 997 x 4.0, 300 x 2.0; its middle 0.5 % is all 4.0
    stacked = projected_blocks(*THREE_BLOCKS, n_blocks=2)
    assert [b.vsize for b in stacked] == [997_000, 2_294_000]
    assert stacked[1].median_fee == pytest.approx(4.0)
    # input order does not matter
    perm = np.random.default_rng(0).permutation(THREE_BLOCKS[0].size)
    assert projected_blocks(THREE_BLOCKS[0][perm], THREE_BLOCKS[1][perm]) == blocks


def test_median_window_is_a_weighted_mean() -> None:
    # 499,500 vB at 40 on top of 250,000 vB at 10: the window 498,750..501,250 from the top holds
    # 750 vB at 40 and 1,750 vB at 10
    rates, sizes = mempool((999, 40.0), (500, 10.0), vsize=500.0)
    block = projected_blocks(rates, sizes)[0]
    assert block.median_fee == pytest.approx((750 * 40 + 1750 * 10) / 2500)


def test_hand_computed_recommendation() -> None:
    # fastest ceil(20.5) = 21; half hour ceil((8.2 + 21) / 2) = 15; hour ceil((4.0 + 15) / 2) = 10;
    # economy min(2 x minimum, hour) = 2; minimum = ceil(mempoolminfee) = 1
    rec = recommended_fees(*THREE_BLOCKS, mempool_min_fee_sat_vb=1.0)
    assert levels(rec) == (21, 15, 10, 2, 1)
    assert rec.as_dict() == {"fastest": 21, "half_hour": 15, "hour": 10, "economy": 2, "minimum": 1}


def test_empty_mempool_gives_the_minimum_everywhere() -> None:
    empty = np.zeros(0)
    assert projected_blocks(empty, empty) == []
    assert levels(recommended_fees(empty, empty, 0.0)) == (1, 1, 1, 1, 1)  # floored at the 1 sat/vB increment
    assert levels(recommended_fees(empty, empty, 2.3)) == (3, 3, 3, 3, 3)  # ceil(mempoolminfee)
    assert levels(recommended_fees(empty, empty, 0.1, precision="precise")) == (1.0, 0.5, 0.1, 0.1, 0.1)


def test_under_half_a_block_uses_the_minimum() -> None:
    rates, sizes = mempool((100, 50.0), (100, 10.0), vsize=2_000.0)  # 400,000 vB: one block <= 500,000 vB
    blocks = projected_blocks(rates, sizes)
    assert len(blocks) == 1 and blocks[0].vsize == 400_000 and blocks[0].median_fee == 0.0
    assert levels(recommended_fees(rates, sizes, 1.0)) == (1, 1, 1, 1, 1)
    # one transaction per block has median 0 (calcEffectiveFeeStatistics), whatever its size
    one = projected_blocks(np.array([90.0]), np.array([600_000.0]))
    assert one[0].median_fee == 0.0 and recommended_fees(np.array([90.0]), np.array([600_000.0]), 1.0).fastest == 1


def test_last_block_between_half_and_950k_is_scaled() -> None:
    # one block of 800,000 vB at 10: round(10 x (800k - 500k) / 500k) = 6; nothing else -> minimum
    rates, sizes = mempool((800, 10.0))
    assert levels(recommended_fees(rates, sizes, 1.0)) == (6, 1, 1, 1, 1)
    # 750,000 vB at 5: 5 x 0.5 = 2.5 rounds half up (JavaScript Math.round) to 3
    rates, sizes = mempool((750, 5.0))
    assert recommended_fees(rates, sizes, 1.0).fastest == 3
    # the same size with a block after it is not scaled: ceil
    rates, sizes = mempool((997, 5.0), (10, 1.0))
    assert recommended_fees(rates, sizes, 1.0).fastest == 5


def test_rounding_whole_and_precise() -> None:
    rates, sizes = mempool((997, 20.0001), (997, 3.2), (997, 3.1), (997, 3.0))
    # medians rounded up: ceil(20.0001) = 21, ceil((3.2 + 21) / 2) = 13, ceil((3.1 + 13) / 2) = 9
    assert levels(recommended_fees(rates, sizes, 1.0)) == (21, 13, 9, 2, 1)
    # /fees/precise: 0.001 increments, fastest 20.5 + 0.5, half hour (8.2 + 20.5) / 2 + 0.25, hour (4 + 14.35) / 2
    precise = recommended_fees(*THREE_BLOCKS, 1.0, precision="precise")
    assert levels(precise) == pytest.approx((21.0, 14.6, 9.175, 2.0, 1.0), abs=1e-12)
    assert all(round(v, 3) == v for v in levels(precise))
    assert mempool_minimum_fee(1.00001) == 2 and mempool_minimum_fee(1.00001, "precise") == pytest.approx(1.001)
    assert mempool_minimum_fee(0.0) == 1 and mempool_minimum_fee(0.0, "precise") == 0.001


def test_mempool_min_fee_above_projected_fees() -> None:
    assert levels(recommended_fees(*THREE_BLOCKS, 25.2)) == (26, 26, 26, 26, 26)
    # between: block 1 (20.5) passes, blocks 2 and 3 (8.2, 4.0) are under the minimum of 10
    assert levels(recommended_fees(*THREE_BLOCKS, 9.3)) == (21, 10, 10, 10, 10)


def test_levels_are_forced_monotone() -> None:
    # a short first block (a huge transaction closed it) under a rich second one: fastest is raised
    blocks = [ProjectedBlock(400_000, 50, 5.0, (0.0,) * 7), ProjectedBlock(998_000, 900, 30.0, (0.0,) * 7),
              ProjectedBlock(998_000, 900, 20.0, (0.0,) * 7), ProjectedBlock(998_000, 900, 10.0, (0.0,) * 7)]
    # first: minimum 1; second ceil((30 + 1) / 2) = 16; third (20 + 16) / 2 = 18; then max over lower levels
    assert levels(recommend_from_blocks(blocks, 1.0)) == (18, 18, 18, 2, 1)


@given(
    rates=st.lists(st.floats(0.0, 500.0, allow_nan=False), min_size=0, max_size=300),
    size=st.floats(500.0, 40_000.0),
    min_fee=st.floats(0.0, 30.0),
    precision=st.sampled_from(["whole", "precise"]),
)
def test_levels_always_decrease_with_priority(rates, size, min_fee, precision) -> None:
    r = np.array(rates, dtype=np.float64)
    rec = recommended_fees(r, np.full(r.size, size), min_fee, precision=precision)
    v = levels(rec)
    assert all(a >= b for a, b in zip(v, v[1:], strict=False)), v
    assert rec.minimum >= min_fee
    if precision == "whole":
        assert all(x == int(x) for x in v)


def test_mempool_space_unit_test_vectors() -> None:
    """backend/src/__tests__/api/fee-api.ts with its test-data/fee-mempool-blocks.json (blockVSize, medianFee)."""
    def blocks(pairs: list[tuple[float, float]]) -> list[ProjectedBlock]:
        return [ProjectedBlock(v, 100, m, (0.0,) * 7) for v, m in pairs]

    tail = [(997857.5, 0.36001120750903104), (3385616.5, 0.35051546391752575)]
    subsat = [(997953.25, 1.0023586640951265), (997963, 0.6082474226804123), (997821.25, 0.5200034509958588),
              (997875.25, 0.5100003123470801), (997810.25, 0.5099975959779666), (997893.25, 0.5099952023028946), *tail]
    lowfee = [(997953.25, 1.0023586640951265), (997963, 1.6082474226804122), (997821.25, 1.5200034509958589),
              (997875.25, 1.5100003123470802), (997811.25, 1.5099975959779666), (997893.25, 1.5099952023028946),
              (997857.5, 1.3600112075090312), (3385616.5, 1.3505154639175259)]
    assert levels(recommend_from_blocks(blocks(subsat), 0.1)) == (2, 1, 1, 1, 1)  # mempoolminfee 0.000001 BTC/kvB
    assert levels(recommend_from_blocks(blocks(lowfee), 1.0)) == (2, 2, 2, 2, 1)
    assert levels(recommend_from_blocks(blocks([(10000, 1)]), 1.0)) == (1, 1, 1, 1, 1)


def test_targets_map_to_levels() -> None:
    rec = RecommendedFees(21, 15, 10, 2, 1)
    assert [level_for_target(k) for k in (1, 2, 3, 4, 6, 7, 12, 1008)] == [
        "fastest", "half_hour", "half_hour", "hour", "hour", "economy", "economy", "economy"]
    assert [estimate_for_target(rec, k) for k in (1, 2, 3, 6, 12)] == [21, 15, 15, 10, 2]


def test_projected_block_fee_by_target() -> None:
    blocks = projected_blocks(*THREE_BLOCKS, n_blocks=13)
    assert [projected_block_fee(blocks, k, 1.0) for k in (1, 2, 3, 4, 6, 12)] == [20.5, 8.2, 4.0, 1.0, 1.0, 1.0]
    assert projected_block_fee(blocks, 2, 9.0) == 9.0  # floored at the mempool minimum fee


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: projected_blocks(np.ones((2, 2)), np.ones((2, 2))), "fee_rate"),
        (lambda: projected_blocks([1.0, -2.0], [100, 100]), "fee_rate"),
        (lambda: projected_blocks([1.0, np.nan], [100, 100]), "fee_rate"),
        (lambda: projected_blocks(["a"], [100]), "fee_rate"),
        (lambda: projected_blocks([1.0, 2.0], [100, 0]), "vsize"),
        (lambda: projected_blocks([1.0, 2.0], [100]), "vsize"),
        (lambda: projected_blocks([1.0], [100], block_vsize=0), "block_vsize"),
        (lambda: projected_blocks([1.0], [100], n_blocks=0), "n_blocks"),
        (lambda: projected_blocks([1.0], [100], n_blocks=True), "n_blocks"),
        (lambda: projected_blocks([1.0], [100], n_blocks=2.5), "n_blocks"),
        (lambda: projected_blocks([1.0], [100], block_vsize=1000, reserved_vsize=1000), "reserved_vsize"),
        (lambda: recommended_fees([1.0], [100], -1.0), "mempool_min_fee_sat_vb"),
        (lambda: recommended_fees([1.0], [100], float("nan")), "mempool_min_fee_sat_vb"),
        (lambda: recommended_fees([1.0], [100], "1"), "mempool_min_fee_sat_vb"),
        (lambda: recommended_fees([1.0], [100], 1.0, precision="fast"), "precision"),
        (lambda: estimate_for_target(RecommendedFees(1, 1, 1, 1, 1), 0), "k"),
        (lambda: estimate_for_target(RecommendedFees(1, 1, 1, 1, 1), 1.5), "k"),
        (lambda: estimate_for_target(RecommendedFees(1, 1, 1, 1, 1), True), "k"),
        (lambda: estimate_for_target({"fastest": 1}, 1), "rec"),
        (lambda: projected_block_fee([], 0, 1.0), "k"),
        (lambda: projected_block_fee([], 1, -1.0), "mempool_min_fee_sat_vb"),
    ],
)
def test_bad_inputs_name_the_field(call, field) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.setting == field
    assert str(info.value).startswith(f"{field}: ")
