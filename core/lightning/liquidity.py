"""The liquidity features: can a channel forward an amount in a direction? What a payer sees of any channel in
the public graph (gossip), plus the amount, and nothing that names the channel or its ends.

A payer knows of a channel what its announcements say: the capacity, each direction's fee policy (base fee,
proportional fee, largest HTLC) and, from its short channel id, how old it is. It never sees a balance. The
features are those, per direction and amount (``LIQUIDITY_SCHEMA``); fee asymmetry is among them because routers
that manage their fees charge more in the direction their balance is short (charge-lnd's proportional strategy,
and the simulated network's fee managers).

Who can label a row: only the two ends of a channel know its balance. A router labels rows of its own channels,
both directions (our spendable balance covers the amount: it can go out; the peer's covers it: it can come in),
from its own snapshots; the labels never leave it, only DP-trained weights do. The model then answers for any
channel of the graph, which is what a payer needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.bitcoin.schema import Column, Schema
from core.lightning.model import OPEN, Channel

BLOCKS_PER_DAY = 144
PAYMENT_MEDIAN_SAT = 20_000  # a typical Lightning payment: half of the labelled amounts are drawn around it
AMOUNTS_PER_DIRECTION = 4
BIMODAL_SCALE_SAT = 300_000  # LND's DefaultBimodalScaleMsat, 300,000,000 msat (the liquidity model starts from it)

LIQUIDITY_SCHEMA = Schema(
    "liquidity",
    (
        Column("log_capacity_sat", "log10 sat", "log10 of the channel's capacity", (0.0, 10.0), (5.0, 7.2)),
        Column("amount_share", "fraction", "amount / capacity", (0.0, 1.0), (0.0, 0.5)),
        Column("log_amount_sat", "log10 sat", "log10 of the amount", (0.0, 10.0), (3.0, 6.0)),
        Column("log_fee_ppm", "log10 ppm", "log10(1 + proportional fee) of this direction", (0.0, 7.0), (0.0, 3.5)),
        Column("log_fee_ppm_reverse", "log10 ppm", "log10(1 + proportional fee) of the other direction", (0.0, 7.0),
               (0.0, 3.5)),
        Column("fee_asymmetry", "log10", "log10((1 + fee) / (1 + reverse fee)): high when this side charges more",
               (-7.0, 7.0), (-1.5, 1.5)),
        Column("base_fee_sat", "sat", "base fee of this direction, sat", (0.0, 1e6), (0.0, 1.0)),
        Column("max_htlc_share", "fraction", "largest HTLC this direction accepts / capacity (1 if not given)",
               (0.0, 1.0), (0.5, 1.0)),
        Column("age_days", "days", "days since the funding block (from the short channel id)", (0.0, 1e5),
               (0.0, 1500.0), 1.0),
    ),
)


@dataclass(frozen=True)
class Direction:
    """One direction of a channel as the public graph shows it."""

    capacity_sat: int
    fee_rate_ppm: int
    fee_rate_ppm_reverse: int
    base_fee_msat: int
    max_htlc_msat: int | None
    funding_height: int


def features(d: Direction, amount_sat: float, tip_height: int) -> np.ndarray:
    """The LIQUIDITY_SCHEMA row of sending ``amount_sat`` along ``d`` when the chain is at ``tip_height``."""
    cap = max(d.capacity_sat, 1)
    fee, rev = math.log10(1 + max(d.fee_rate_ppm, 0)), math.log10(1 + max(d.fee_rate_ppm_reverse, 0))
    max_share = 1.0 if d.max_htlc_msat is None else min(1.0, d.max_htlc_msat / (cap * 1000))
    return np.array([math.log10(cap), min(1.0, amount_sat / cap), math.log10(max(amount_sat, 1.0)), fee, rev,
                     fee - rev, d.base_fee_msat / 1000, max_share,
                     max(0.0, (tip_height - d.funding_height) / BLOCKS_PER_DAY)], dtype=np.float32)


def funding_height(short_channel_id: str) -> int:
    """The block of a short channel id ``BLOCKxTXxOUTPUT``."""
    return int(short_channel_id.split("x", 1)[0])


def own_directions(c: Channel) -> list[tuple[Direction, int]]:
    """Both directions of one of our open channels with what can be sent each way (out: our balance less our
    reserve; in: the peer's less its reserve), msat; [] without both policies or a short channel id."""
    if c.state != OPEN or c.channel_id is None or c.local_policy is None or c.remote_policy is None:
        return []
    cap, lp, rp, height = c.capacity_sat, c.local_policy, c.remote_policy, funding_height(c.channel_id)
    out = Direction(cap, lp.fee_rate_ppm, rp.fee_rate_ppm, lp.base_fee_msat, lp.max_htlc_msat, height)
    into = Direction(cap, rp.fee_rate_ppm, lp.fee_rate_ppm, rp.base_fee_msat, rp.max_htlc_msat, height)
    return [(out, max(0, c.local_msat - (c.local_reserve_sat or 0) * 1000)),
            (into, max(0, c.remote_msat - (c.remote_reserve_sat or 0) * 1000))]


def sample_amount(rng: np.random.Generator, capacity_sat: int, payment_sized: bool) -> int:
    """An amount to label: payment-sized (log-normal around PAYMENT_MEDIAN_SAT) or a uniform share of the
    capacity, so that small payments and the whole range are both covered."""
    if payment_sized:
        return int(np.clip(rng.lognormal(math.log(PAYMENT_MEDIAN_SAT), 1.2), 1_000, max(capacity_sat, 1_000)))
    return max(1, int(rng.uniform(0.0, 1.0) * capacity_sat))


def labelled_rows(channels: list[Channel], tip_height: int, rng: np.random.Generator,
                  per_direction: int = AMOUNTS_PER_DIRECTION) -> tuple[list[np.ndarray], list[bool]]:
    """One router's rows at one snapshot: per direction of each of its channels, ``per_direction`` amounts,
    labelled by whether the sending side could spend them. The same code labels a simulated router and a real
    node's snapshots."""
    x, y = [], []
    for c in channels:
        for d, spendable_msat in own_directions(c):
            for k in range(per_direction):
                a = sample_amount(rng, d.capacity_sat, payment_sized=k % 2 == 0)
                x.append(features(d, a, tip_height))
                y.append(spendable_msat >= a * 1000)
    return x, y
