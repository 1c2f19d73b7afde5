"""Liquidity rows from the simulated network: what each router can label from its own channels, and a held-out
truth over the whole graph that only the simulator knows.

Each router, at each snapshot, labels both directions of each of its channels for a few amounts: out (our
spendable balance covers it) and in (the peer's does). Half the amounts follow the payment workload's sizes, half
are uniform shares of the capacity, so both small payments and the whole range are covered. The held-out set
draws channels of the whole graph, a direction and a payment-sized amount at the same snapshots: the question a
payer asks of a channel it does not own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anya_fl.simln.network import START_HEIGHT, Hop, SimChannel, SimLN, SimLNConfig
from core.lightning.liquidity import (
    AMOUNTS_PER_DIRECTION,
    LIQUIDITY_SCHEMA,
    Direction,
    features,
    funding_height,
    labelled_rows,
    sample_amount,
)


def direction(c: SimChannel, src: int) -> Direction:
    s = c.side(src)
    p, r = c.policy[s], c.policy[1 - s]
    return Direction(c.capacity_sat, p.fee_rate_ppm, r.fee_rate_ppm, p.base_fee_msat, p.max_htlc_msat,
                     funding_height(c.short_id))


def tip(net: SimLN) -> int:
    return START_HEIGHT + int(net.now // 600)


@dataclass
class LiquidityRows:
    """Rows (LIQUIDITY_SCHEMA), labels, and for held-out rows the hop and amount the priors need."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[bool] = field(default_factory=list)
    hops: list[tuple[Hop, int]] = field(default_factory=list)

    def add(self, row: np.ndarray, label: bool, hop: Hop | None = None, amount_sat: int = 0) -> None:
        self.x.append(row)
        self.y.append(label)
        if hop is not None:
            self.hops.append((hop, amount_sat))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack(self.x) if self.x else np.zeros((0, LIQUIDITY_SCHEMA.width), dtype=np.float32)
        return LIQUIDITY_SCHEMA.validate(x, "liquidity rows"), np.asarray(self.y, dtype=np.float32)


def router_rows(net: SimLN, router: int, rng: np.random.Generator, out: LiquidityRows,
                per_direction: int = AMOUNTS_PER_DIRECTION) -> None:
    """What ``router`` labels now from its own channels, as its node would (``labelled_rows`` over what its
    adapter reads: both directions, ``per_direction`` amounts each)."""
    x, y = labelled_rows(net.router(router).channels(), tip(net), rng, per_direction)
    out.x += x
    out.y += y


def held_out_rows(net: SimLN, rng: np.random.Generator, n: int, out: LiquidityRows) -> None:
    """``n`` payer's questions about any channel of the graph now, labelled by the truth."""
    height = tip(net)
    for _ in range(n):
        c = net.channels[int(rng.integers(len(net.channels)))]
        src = c.a if rng.random() < 0.5 else c.b
        a = sample_amount(rng, c.capacity_sat, payment_sized=True)
        hop = Hop(c.index, src, c.b if src == c.a else c.a, c.capacity_sat, c.policy[c.side(src)])
        out.add(features(direction(c, src), a, height), c.spendable_msat(src) >= a * 1000, hop, a)


def simulate_rows(config: SimLNConfig, hours: float, every_s: float = 3600.0, held_out_per_snapshot: int = 50,
                  warmup_hours: float = 6.0) -> tuple[dict[int, LiquidityRows], LiquidityRows]:
    """Run the network ``warmup_hours`` then ``hours``, a snapshot every ``every_s``: each router's own rows and
    the held-out truth (seeded by the config's seed)."""
    net = SimLN(config)
    rng = np.random.default_rng([config.seed, 7])
    net.advance(warmup_hours * 3600)
    own = {i: LiquidityRows() for i in range(config.nodes)}
    held = LiquidityRows()
    for _ in range(int(hours * 3600 // every_s)):
        net.advance(every_s)
        for i in range(config.nodes):
            router_rows(net, i, rng, own[i])
        held_out_rows(net, rng, held_out_per_snapshot, held)
    return own, held
