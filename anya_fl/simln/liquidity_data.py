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
from pathlib import Path

import numpy as np

from anya_fl.simln.network import START_HEIGHT, Hop, SimChannel, SimLN, SimLNConfig
from core.data.datasets import DEFAULT_SPLIT, SPLITS, TaskSplits
from core.lightning.liquidity import (
    AMOUNTS_PER_DIRECTION,
    LIQUIDITY_SCHEMA,
    Direction,
    features,
    funding_height,
    labelled_rows,
    sample_amount,
)
from core.lightning.liquidity_splits import SNAPSHOT_EVERY_S


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
                  warmup_hours: float = 6.0, routers: int | None = None
                  ) -> tuple[dict[int, LiquidityRows], LiquidityRows]:
    """Run the network ``warmup_hours`` then ``hours``, a snapshot every ``every_s``: the own rows of routers
    0..``routers``-1 (all by default) and the held-out truth (seeded by the config's seed)."""
    net = SimLN(config)
    rng = np.random.default_rng([config.seed, 7])
    net.advance(warmup_hours * 3600)
    own = {i: LiquidityRows() for i in range(config.nodes if routers is None else routers)}
    held = LiquidityRows()
    for _ in range(int(hours * 3600 // every_s)):
        net.advance(every_s)
        for i in own:
            router_rows(net, i, rng, own[i])
        held_out_rows(net, rng, held_out_per_snapshot, held)
    return own, held


# ---- the liquidity task's datasets for a federation (``anya-fl simulate --tasks ...,liquidity``)

LIQUIDITY_HOURS = 48.0  # simulated hours of snapshots each router labels
LIQUIDITY_EVERY_S = SNAPSHOT_EVERY_S  # a labelled snapshot every 15 minutes, as a real node's store is thinned
MIN_ROUTERS = 30  # the simulated network has at least this many routers; the federation's nodes are 0..nodes-1
HELD_OUT_PER_SNAPSHOT = 40
VAL_SEED_OFFSET, TEST_SEED_OFFSET = 1_000, 2_000  # the coordinator's questions come from networks no node is in


@dataclass(frozen=True)
class LiquiditySim:
    """How a federation's liquidity data is simulated: one network of ``max(MIN_ROUTERS, 3 x nodes)`` routers whose
    routers 0..nodes-1 are the federation's nodes (the first to join: the best connected, as routing nodes that
    would run a federated client are)."""

    seed: int = 0
    nodes: int = 10
    hours: float = LIQUIDITY_HOURS
    every_s: float = LIQUIDITY_EVERY_S

    def config(self, seed: int | None = None) -> SimLNConfig:
        return SimLNConfig(seed=self.seed if seed is None else seed, nodes=max(MIN_ROUTERS, 3 * self.nodes))


def federation_rows(sim: LiquiditySim, seed: int | None = None) -> tuple[dict[int, LiquidityRows], LiquidityRows]:
    """Routers 0..nodes-1's own rows, and payers' questions about any channel of the same network."""
    return simulate_rows(sim.config(seed), sim.hours, sim.every_s, HELD_OUT_PER_SNAPSHOT, routers=sim.nodes)


def time_splits(rows: LiquidityRows, fractions: tuple[float, float, float] = DEFAULT_SPLIT) -> TaskSplits:
    """Rows in snapshot order, split by time: the first ``fractions[0]`` train, then val, then test."""
    x, y = rows.arrays()
    a = int(len(y) * fractions[0])
    b = a + int(len(y) * fractions[1])
    cut = {"train": slice(0, a), "val": slice(a, b), "test": slice(b, len(y))}
    return TaskSplits(x={s: x[c] for s, c in cut.items()}, y={s: y[c] for s, c in cut.items()})


_ROWS: dict[tuple, tuple[dict[int, LiquidityRows], LiquidityRows]] = {}  # one simulation per settings and process


def _cached_rows(sim: LiquiditySim, seed: int | None = None) -> tuple[dict[int, LiquidityRows], LiquidityRows]:
    key = (sim, seed)
    if key not in _ROWS:
        _ROWS[key] = federation_rows(sim, seed)
    return _ROWS[key]


def held_out_liquidity_rows(sim: LiquiditySim, offset: int) -> LiquidityRows:
    """Payers' questions about the channels of the network of seed ``sim.seed + offset`` (``sim.hours / 2`` of
    snapshots), labelled by the simulator's truth, with the hops the priors need."""
    return _cached_rows(LiquiditySim(sim.seed, sim.nodes, sim.hours / 2, sim.every_s), sim.seed + offset)[1]


def held_out_liquidity_splits(sim: LiquiditySim) -> TaskSplits:
    """The coordinator's set: payers' questions about the channels of two other networks (validation: seed +
    VAL_SEED_OFFSET, test: seed + TEST_SEED_OFFSET), no router of which is in the federation."""
    val = held_out_liquidity_rows(sim, VAL_SEED_OFFSET)
    test = held_out_liquidity_rows(sim, TEST_SEED_OFFSET)
    xv, yv = val.arrays()
    xt, yt = test.arrays()
    return TaskSplits(x={"train": xv, "val": xv, "test": xt}, y={"train": yv, "val": yv, "test": yt})


def add_liquidity_data(data_dir: Path, sim: LiquiditySim) -> None:
    """Add the ``liquidity`` task to a simulation's datasets: node i's own channels' rows (router i, split by
    time), and the coordinator's held-out questions (``held_out_liquidity_splits``)."""
    from core.data.datasets import load_dataset, save_dataset

    own, _ = _cached_rows(sim)
    for i in range(sim.nodes):
        d = data_dir / f"node-{i}"
        data, manifest = load_dataset(d)
        data["liquidity"] = time_splits(own[i])
        save_dataset(d, data, {**manifest.get("info", {}), "liquidity_router": i})
    add_coordinator_liquidity_data(data_dir, sim)


def add_coordinator_liquidity_data(data_dir: Path, sim: LiquiditySim) -> None:
    """Add the ``liquidity`` task to the coordinator's held-out set (``<data_dir>/coordinator``). The coordinator
    has no channel truth of its own, so in a deployment too its held-out liquidity set is simulated."""
    from core.data.datasets import load_dataset, save_dataset

    d = data_dir / "coordinator"
    data, manifest = load_dataset(d)
    data["liquidity"] = held_out_liquidity_splits(sim)
    save_dataset(d, data, manifest.get("info", {}))


def sample_liquidity_splits(seed: int = 3) -> TaskSplits:
    """Realistic labelled liquidity rows (three routers' and the held-out questions), the same rows in every split:
    for benchmarks and export checks that need rows, not a fair evaluation."""
    own, held = _cached_rows(LiquiditySim(seed=seed, nodes=3, hours=12.0, every_s=3600.0))
    x = np.concatenate([*(r.arrays()[0] for r in own.values()), held.arrays()[0]])
    y = np.concatenate([*(r.arrays()[1] for r in own.values()), held.arrays()[1]])
    return TaskSplits(x={s: x.copy() for s in SPLITS}, y={s: y.copy() for s in SPLITS})
