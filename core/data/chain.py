"""The simulated chain: transactions, blocks, mempool snapshots and confirmation outcomes.

Transactions arrive as a Poisson process whose rate swings around the chain's capacity (so the
mempool congests and clears); blocks come every Exp(600 s) with a 4,000,000 WU limit and miners take
the highest fee rates first. Users pick fee rates from a drifting market level times their urgency.
Categories (``core.data.categories``) give realistic transaction shapes and labeled fraud patterns;
a small share of transactions is altered into anomalies. Everything is vectorized NumPy and fully
determined by ``ChainConfig.seed``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from core.bitcoin.features import (
    DEFAULT_MIN_RELAY_SAT_VB,
    OTHER_SCRIPT,
    ROUND_UNIT_SAT,
    SATS_PER_BTC,
    mempool_features,
    transaction_features,
)
from core.data.categories import (
    CATEGORIES,
    INPUT_NONWITNESS_BYTES,
    INPUT_WITNESS_WU,
    OUTPUT_BYTES,
    category_shares,
)
from core.errors import ConfigError
from core.seeding import categorical, stream

ANOMALY_KINDS = ("fat_finger_fee", "witness_bloat", "dormant_whale")
START_HEIGHT = 850_000
COINBASE_RESERVE_WU = 4_000


@dataclass(frozen=True)
class ChainConfig:
    """Knobs of the simulated chain. Defaults give a congesting, clearing mainnet-like chain."""

    n_transactions: int = 200_000
    seed: int = 0
    block_interval_s: float = 600.0
    block_weight_limit: int = 4_000_000
    load_mean: float = 0.97  # mean arrival weight / capacity
    load_swing: float = 0.35  # amplitude of the demand cycle (fraction of capacity)
    cycle_s: float = 4 * 3600.0  # period of the demand cycle
    base_fee_rate: float = 6.0  # market fee level in sat/vB at mean load
    fee_drift_sigma: float = 0.25  # slow log-normal drift of the market level per hour
    anomaly_share: float = 0.01
    snapshot_interval_s: float = 60.0
    min_relay_sat_vb: float = DEFAULT_MIN_RELAY_SAT_VB

    def validate(self) -> ChainConfig:
        checks = [
            ("n_transactions", self.n_transactions >= 1_000, "must be at least 1000"),
            ("n_transactions", self.n_transactions <= 50_000_000, "must be at most 50,000,000"),
            ("block_interval_s", self.block_interval_s > 0, "must be positive"),
            ("block_weight_limit", self.block_weight_limit >= 100_000, "must be at least 100,000 WU"),
            ("load_mean", 0 < self.load_mean < 3, "must be in (0, 3)"),
            ("load_swing", 0 <= self.load_swing < self.load_mean, "must be in [0, load_mean)"),
            ("cycle_s", self.cycle_s > 0, "must be positive"),
            ("base_fee_rate", self.base_fee_rate >= self.min_relay_sat_vb, "must be at least the min relay fee"),
            ("fee_drift_sigma", self.fee_drift_sigma >= 0, "must be >= 0"),
            ("anomaly_share", 0 <= self.anomaly_share < 0.5, "must be in [0, 0.5)"),
            ("snapshot_interval_s", self.snapshot_interval_s > 0, "must be positive"),
            ("min_relay_sat_vb", self.min_relay_sat_vb > 0, "must be positive"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ConfigError(f"chain.{name}", f"{getattr(self, name)!r} {problem}")
        return self


@dataclass
class Chain:
    """A simulated chain. Transaction index order is arrival order."""

    config: ChainConfig
    tx: dict[str, np.ndarray]  # per-transaction columns (see simulate_chain)
    outputs: dict[str, np.ndarray]  # ragged outputs: offsets (n+1), value_sat, script
    tx_rows: np.ndarray  # TX_SCHEMA rows
    snapshot_time: np.ndarray
    snapshot_rows: np.ndarray  # MEMPOOL_SCHEMA rows
    block_time: np.ndarray
    block_threshold: np.ndarray  # fee rate a tx needed to enter each block (sat/vB)
    block_weight: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def n_transactions(self) -> int:
        return len(self.tx_rows)

    @property
    def n_blocks(self) -> int:
        return len(self.block_time)

    def block_height(self, b: np.ndarray | int) -> np.ndarray | int:
        return START_HEIGHT + 1 + b

    def tx_snapshot(self) -> np.ndarray:
        """Index of the mempool snapshot each transaction arrived into (the latest one before it)."""
        idx = np.searchsorted(self.snapshot_time, self.tx["arrival_time"], side="right") - 1
        return np.maximum(idx, 0)

    def fee_labels(self, targets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(snapshot index, k, required fee rate) for every snapshot with k blocks still to come.

        The required rate is the lowest fee rate that would have entered one of the next k blocks:
        min over those blocks of the marginal included rate (the min relay fee for a block that had
        room to spare).
        """
        nb = np.searchsorted(self.block_time, self.snapshot_time, side="right")
        snaps, ks, ys = [], [], []
        for k in targets:
            ok = nb + k <= self.n_blocks
            idx = np.flatnonzero(ok)
            window = np.stack([self.block_threshold[nb[idx] + j] for j in range(k)], axis=1)
            snaps.append(idx)
            ks.append(np.full(len(idx), k))
            ys.append(window.min(axis=1))
        return np.concatenate(snaps), np.concatenate(ks), np.concatenate(ys).astype(np.float32)

    def label_block_end(self, snapshot_idx: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Time of the last block a fee label looks at (for leak-free time splits)."""
        nb = np.searchsorted(self.block_time, self.snapshot_time[snapshot_idx], side="right")
        return self.block_time[np.minimum(nb + k - 1, self.n_blocks - 1)]


def _lognormal_int(rng: np.random.Generator, median: np.ndarray, sigma: np.ndarray, cap: np.ndarray, low: int = 1) -> np.ndarray:
    v = np.rint(median * np.exp(sigma * rng.standard_normal(len(median))))
    return np.clip(v, low, cap).astype(np.int64)


def _arrival_times(rng: np.random.Generator, n: int, rate0: float, cfg: ChainConfig) -> np.ndarray:
    """Sorted arrival times of a Poisson process with intensity rate0 * load(t)."""
    duration_est = n / (rate0 * cfg.load_mean) * 1.2 + cfg.cycle_s
    grid = np.linspace(0.0, duration_est, 20_000)
    w = 2 * math.pi / cfg.cycle_s
    cum = rate0 * (cfg.load_mean * grid + cfg.load_swing / w * (1 - np.cos(w * grid)))
    ops = np.cumsum(rng.exponential(1.0, n))
    if ops[-1] > cum[-1]:
        raise ConfigError("chain.n_transactions", "arrival grid too short (internal); reduce load_swing")
    return np.interp(ops, cum, grid)


def simulate_chain(config: ChainConfig | None = None) -> Chain:
    """Simulate a chain deterministically from ``config.seed``."""
    cfg = (config or ChainConfig()).validate()
    rng = stream(cfg.seed, "chain")
    n = cfg.n_transactions
    cats = CATEGORIES

    def param(fn) -> np.ndarray:
        return np.array([fn(c) for c in cats], dtype=np.float64)

    cat = rng.choice(len(cats), size=n, p=category_shares())
    illicit = param(lambda c: c.illicit)[cat].astype(bool)
    shape = np.array([c.shape for c in cats])[cat]

    n_in = _lognormal_int(rng, param(lambda c: c.n_in[0])[cat], param(lambda c: c.n_in[1])[cat], param(lambda c: c.n_in[2])[cat])
    n_out = _lognormal_int(rng, param(lambda c: c.n_out[0])[cat], param(lambda c: c.n_out[1])[cat], param(lambda c: c.n_out[2])[cat])
    two = (shape == "change") | (shape == "peel")
    n_out[two] = 2
    n_out[(shape == "equal") & (n_out < 3)] = 3
    in_kind = categorical(rng, np.array([c.in_kinds for c in cats]), cat)

    # ---- outputs (ragged)
    offsets = np.concatenate(([0], np.cumsum(n_out)))
    m = int(offsets[-1])
    owner = np.repeat(np.arange(n), n_out)
    pos = np.arange(m) - offsets[owner]  # position of the output inside its transaction
    ocat = cat[owner]
    oshape = shape[owner]
    script = categorical(rng, np.array([c.out_scripts for c in cats]), ocat)
    med = param(lambda c: c.value_btc[0])[ocat] * SATS_PER_BTC
    sig = param(lambda c: c.value_btc[1])[ocat]
    value = med * np.exp(sig * rng.standard_normal(m))
    # round amounts (payments to people), only the payment output of a change-shaped transaction
    round_ok = (oshape != "change") | (pos == 0)
    is_round = round_ok & (rng.random(m) < param(lambda c: c.round_share)[ocat])
    value = np.where(is_round, np.maximum(np.rint(value / ROUND_UNIT_SAT), 1) * ROUND_UNIT_SAT, value)
    # change outputs: larger than the payment by a log-normal factor
    change = (oshape == "change") & (pos == 1)
    value = np.where(change, value * np.exp(0.3 + 1.5 * rng.standard_normal(m)), value)
    # peel chains: a small peel (pos 0) and a large remainder (pos 1)
    peel = oshape == "peel"
    value = np.where(peel & (pos == 0), value * rng.uniform(0.03, 0.25, m), value)
    value = np.where(peel & (pos == 1), value * rng.uniform(3.0, 12.0, m), value)
    # equal-output transactions: most outputs share the transaction's denomination
    denom_round = np.array([0.001, 0.01, 0.05, 0.1, 0.5]) * SATS_PER_BTC
    tx_denom = np.where(
        rng.random(n) < np.where(param(lambda c: c.illicit)[cat] > 0, 0.8, 0.5),
        denom_round[rng.integers(0, len(denom_round), n)],
        np.rint(np.exp(rng.uniform(np.log(5e4), np.log(2e7), n))),
    )
    equal_share = np.where(param(lambda c: c.illicit)[cat] > 0, 0.9, 0.75)
    eq = (oshape == "equal") & (rng.random(m) < equal_share[owner])
    value = np.where(eq, tx_denom[owner], value)
    # OP_RETURN: most 'other' outputs are nulldata carrying 0 sat
    nulldata = (script == OTHER_SCRIPT) & (rng.random(m) < 0.7)
    value = np.where(nulldata, 0.0, np.maximum(value, 1.0))
    value = np.where(oshape == "dust", np.clip(value, 250, 2_000), value)
    value_sat = np.rint(value).astype(np.int64)

    # ---- sizes
    varint_extra = (n_in > 252) * 2 + (n_out > 252) * 2
    out_bytes = np.bincount(owner, weights=OUTPUT_BYTES[script], minlength=n)
    nonwit = 10 + varint_extra + n_in * INPUT_NONWITNESS_BYTES[in_kind] + out_bytes
    wit = n_in * INPUT_WITNESS_WU[in_kind]
    wit = np.where(wit > 0, wit + 2, 0)  # segwit marker and flag
    weight = (4 * nonwit + wit).astype(np.int64)

    input_age = _lognormal_int(rng, param(lambda c: c.input_age[0])[cat], param(lambda c: c.input_age[1])[cat],
                               np.full(n, 1_500_000.0))
    input_age[np.array([c.name for c in cats])[cat] == "miner_payout"] = np.maximum(
        input_age[np.array([c.name for c in cats])[cat] == "miner_payout"], 101
    )

    # ---- anomalies (altered copies of ordinary-looking transactions)
    anomaly = rng.random(n) < cfg.anomaly_share
    anomaly_kind = np.full(n, -1, dtype=np.int64)
    anomaly_kind[anomaly] = rng.integers(0, len(ANOMALY_KINDS), int(anomaly.sum()))
    bloat = anomaly_kind == 1
    weight = weight + np.where(bloat, rng.integers(4_000, 200_000, n), 0)
    dormant = anomaly_kind == 2
    input_age = np.where(dormant, rng.integers(150_000, 500_000, n), input_age)
    vsize = (weight + 3) // 4

    # ---- arrivals and the fee market
    capacity_tx_s = (cfg.block_weight_limit - COINBASE_RESERVE_WU) / float(weight.mean()) / cfg.block_interval_s
    arrival = _arrival_times(rng, n, capacity_tx_s, cfg)
    hours = int(arrival[-1] // 3600) + 2
    drift = np.cumsum(cfg.fee_drift_sigma * rng.standard_normal(hours)) * 0.5
    drift -= drift.mean()
    w = 2 * math.pi / cfg.cycle_s
    market = cfg.base_fee_rate * np.exp(1.1 * np.sin(w * arrival - 0.6) + np.interp(arrival / 3600, np.arange(hours), drift))
    urgency = param(lambda c: c.urgency[0])[cat] * np.exp(param(lambda c: c.urgency[1])[cat] * rng.standard_normal(n))
    rate = market * urgency
    rate = np.where(anomaly_kind == 0, rate * rng.uniform(20, 80, n), rate)
    rate = np.clip(rate, cfg.min_relay_sat_vb, 50_000.0)
    fee_sat = np.ceil(rate * vsize).astype(np.int64)
    fee_rate = fee_sat / vsize

    # dormant whales move a lot of coin
    value_sat = np.where(dormant[owner] & (value_sat > 0), value_sat * 200, value_sat)
    value_sat = np.minimum(value_sat, 2_000_000 * SATS_PER_BTC)

    rbf = rng.random(n) < param(lambda c: c.rbf)[cat]
    has_locktime = rng.random(n) < param(lambda c: c.locktime)[cat]

    blocks = _mine_blocks(rng, cfg, arrival, fee_rate, weight, vsize)
    entry_height = START_HEIGHT + np.searchsorted(blocks["time"], arrival, side="right")
    locktime = np.where(has_locktime, entry_height, 0)

    tx = {
        "arrival_time": arrival,
        "entry_height": entry_height.astype(np.int64),
        "confirm_height": blocks["confirm_height"],
        "category": cat.astype(np.int64),
        "illicit": illicit,
        "anomaly": anomaly,
        "anomaly_kind": anomaly_kind,
        "vsize": vsize.astype(np.int64),
        "weight": weight,
        "fee_sat": fee_sat,
        "n_inputs": n_in,
        "input_kind": in_kind.astype(np.int64),
        "rbf": rbf,
        "locktime": locktime.astype(np.int64),
        "input_age": input_age.astype(np.int64),
    }
    outputs = {"offsets": offsets.astype(np.int64), "value_sat": value_sat, "script": script.astype(np.int64)}
    tx_rows = transaction_features(
        vsize=vsize, weight=weight, fee_sat=fee_sat, n_inputs=n_in, rbf=rbf, locktime=locktime,
        input_age_blocks=input_age, input_age_known=np.ones(n), out_offsets=offsets,
        out_value_sat=value_sat, out_script=script,
    )
    return Chain(
        config=cfg, tx=tx, outputs=outputs, tx_rows=tx_rows,
        snapshot_time=blocks["snapshot_time"], snapshot_rows=blocks["snapshot_rows"],
        block_time=blocks["time"], block_threshold=blocks["threshold"], block_weight=blocks["weight"],
        meta={"config": asdict(cfg), "capacity_tx_per_s": capacity_tx_s},
    )


def _mine_blocks(
    rng: np.random.Generator, cfg: ChainConfig, arrival: np.ndarray, fee_rate: np.ndarray, weight: np.ndarray, vsize: np.ndarray
) -> dict[str, np.ndarray]:
    """Block production, miner selection by fee rate, and mempool snapshots between blocks."""
    n = len(arrival)
    horizon = arrival[-1] + 24 * cfg.block_interval_s
    gaps = rng.exponential(cfg.block_interval_s, int(horizon / cfg.block_interval_s * 1.5) + 50)
    times = np.cumsum(gaps)
    times = times[: int(np.searchsorted(times, horizon)) + 1]
    limit = cfg.block_weight_limit - COINBASE_RESERVE_WU
    snap_times = np.arange(0.0, times[-1], cfg.snapshot_interval_s)
    snap_rows = np.zeros((len(snap_times), 12), dtype=np.float32)
    confirm = np.full(n, -1, dtype=np.int64)
    threshold = np.zeros(len(times))
    used = np.zeros(len(times), dtype=np.int64)

    mp = np.zeros(0, dtype=np.int64)  # mempool, sorted by fee rate ascending
    ptr = 0
    s = 0
    for b, t_block in enumerate(times):
        while s < len(snap_times) and snap_times[s] <= t_block:
            end = int(np.searchsorted(arrival, snap_times[s], side="right"))
            members = np.concatenate((mp, np.arange(ptr, end)))
            snap_rows[s] = mempool_features(fee_rate[members], vsize[members], cfg.min_relay_sat_vb)
            s += 1
        end = int(np.searchsorted(arrival, t_block, side="right"))
        new = np.arange(ptr, end)
        ptr = end
        merged = np.concatenate((mp, new[np.argsort(fee_rate[new], kind="stable")]))
        merged = merged[np.argsort(fee_rate[merged], kind="stable")]
        desc = merged[::-1]
        cum = np.cumsum(weight[desc])
        k = int(np.searchsorted(cum, limit, side="right"))
        chosen = desc[:k]
        confirm[chosen] = START_HEIGHT + 1 + b
        used[b] = cum[k - 1] if k else 0
        threshold[b] = fee_rate[chosen[-1]] if (k < len(desc) and k > 0) else cfg.min_relay_sat_vb
        if k == 0 and len(desc):
            threshold[b] = fee_rate[desc[0]]
        mp = desc[k:][::-1].copy()
    return {
        "time": times,
        "threshold": threshold,
        "weight": used,
        "confirm_height": confirm,
        "snapshot_time": snap_times,
        "snapshot_rows": snap_rows,
    }


CORE_TYPE_NAMES = ("pubkeyhash", "scripthash", "witness_v0_keyhash", "witness_v0_scripthash", "witness_v1_taproot")


def core_transaction_json(chain: Chain, i: int) -> dict:
    """Transaction ``i`` rendered as Bitcoin Core shows it in ``getblock <hash> 3`` (fee and prevouts).

    Lets tests and demos push simulated transactions through the real JSON parser.
    """
    tx, outs = chain.tx, chain.outputs
    a, b = int(outs["offsets"][i]), int(outs["offsets"][i + 1])
    values = outs["value_sat"][a:b]
    scripts = outs["script"][a:b]
    fee = int(tx["fee_sat"][i])
    n_in = int(tx["n_inputs"][i])
    total_in = int(values.sum()) + fee
    in_values = [total_in // n_in + (total_in % n_in if j == 0 else 0) for j in range(n_in)]
    height = int(tx["entry_height"][i])
    prev_height = height - int(tx["input_age"][i])
    seq = 0xFFFFFFFD if tx["rbf"][i] else (0xFFFFFFFE if tx["locktime"][i] else 0xFFFFFFFF)
    vout = []
    for n, (v, s) in enumerate(zip(values.tolist(), scripts.tolist(), strict=True)):
        kind = CORE_TYPE_NAMES[s] if s < OTHER_SCRIPT else ("nulldata" if v == 0 else "multisig")
        vout.append({"value": v / SATS_PER_BTC, "n": n, "scriptPubKey": {"type": kind}})
    return {
        "txid": f"{i:064x}",
        "version": 2,
        "size": int(tx["vsize"][i]),
        "vsize": int(tx["vsize"][i]),
        "weight": int(tx["weight"][i]),
        "locktime": int(tx["locktime"][i]),
        "vin": [
            {"txid": f"{(i * 7919 + j) % (1 << 60):064x}", "vout": j, "sequence": seq,
             "prevout": {"generated": False, "height": prev_height, "value": in_values[j] / SATS_PER_BTC}}
            for j in range(n_in)
        ],
        "vout": vout,
        "fee": fee / SATS_PER_BTC,
    }
