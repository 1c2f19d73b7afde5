"""The one feature schema: Bitcoin Core JSON or simulator columns -> float32 rows.

Three column sets are defined here and nowhere else:

* ``TX_SCHEMA`` — one row per transaction (fraud task; first part of the anomaly input).
* ``MEMPOOL_SCHEMA`` — one row per mempool snapshot (fee task; second part of the anomaly input).
* ``FEE_SCHEMA`` / ``ANOMALY_SCHEMA`` — the task inputs built from the two above.

Every column carries its unit, a *valid* range (values outside it are refused by ``Schema.validate``, the
one rule for parsed JSON, simulator columns and the prediction API's rows) and a *typical* range taken from
public knowledge of mainnet, not from any node's data (valid values far outside it are flagged by
``Schema.out_of_distribution``). Models normalize with the typical range (``Schema.normalization``), so
normalization never leaks a node's raw data.

Parsers (``parse_transaction``, ``parse_mempool``) and the simulator both end in the same vectorized
functions (``transaction_features``, ``mempool_features``), so one code path makes every row.
"""

from __future__ import annotations

import numpy as np

from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA
from core.bitcoin.schema import NORM_CLIP, Column, Schema  # noqa: F401 - NORM_CLIP re-exported
from core.errors import FeatureError
from core.lightning.liquidity import LIQUIDITY_SCHEMA

SCHEMA_VERSION = 1
SATS_PER_BTC = 100_000_000
MAX_MONEY_BTC = 21_000_000.0
DUST_LIMIT_SAT = 546
ROUND_UNIT_SAT = 100_000  # 0.001 BTC: outputs that are a multiple of it count as round amounts
DEFAULT_MIN_RELAY_SAT_VB = 1.0
MAX_SEQUENCE = 0xFFFFFFFF
RBF_SEQUENCE_LIMIT = 0xFFFFFFFE  # BIP125: any input with nSequence below this signals replaceability
MEMPOOL_DEPTHS_VB = (1_000_000, 2_000_000, 3_000_000, 6_000_000)
FEE_PERCENTILES = (10, 25, 50, 75, 90)

# scriptPubKey.type as Bitcoin Core names it -> our output script class
SCRIPT_CLASSES = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "other")
CORE_SCRIPT_TYPES = {
    "pubkeyhash": 0,
    "scripthash": 1,
    "witness_v0_keyhash": 2,
    "witness_v0_scripthash": 3,
    "witness_v1_taproot": 4,
}
OTHER_SCRIPT = 5
NULLDATA = "nulldata"


_SAT = 1e-8  # one satoshi in BTC, the log offset of BTC amounts
_FRAC = ((0.0, 1.0), (0.0, 1.0))

TX_SCHEMA = Schema(
    "transaction",
    (
        Column("vsize", "vB", "virtual size, ceil(weight / 4)", (10, 1_000_000), (110, 2_000), 0.0),
        Column("weight", "WU", "BIP141 weight", (40, 4_000_000), (440, 8_000), 0.0),
        Column("fee_rate", "sat/vB", "fee / vsize", (0, 1e8), (1, 300), 1.0),
        Column("n_inputs", "count", "number of inputs", (1, 100_000), (1, 20), 0.0),
        Column("n_outputs", "count", "number of outputs", (1, 100_000), (1, 20), 0.0),
        Column("total_output_btc", "BTC", "sum of output values", (0, MAX_MONEY_BTC), (1e-4, 10), _SAT),
        Column("max_output_btc", "BTC", "largest output value", (0, MAX_MONEY_BTC), (1e-4, 10), _SAT),
        Column("min_output_btc", "BTC", "smallest output value", (0, MAX_MONEY_BTC), (1e-5, 1), _SAT),
        Column("output_value_cv", "ratio", "coefficient of variation of output values (0 for one output)", (0, 1_000), (0, 2)),
        *(
            Column(f"frac_{s}", "fraction", f"share of outputs paying to {s}", *_FRAC)
            for s in SCRIPT_CLASSES
        ),
        Column("rbf_signaling", "flag", "any input nSequence < 0xfffffffe (BIP125)", *_FRAC),
        Column("has_locktime", "flag", "nLockTime > 0", *_FRAC),
        Column("round_output_frac", "fraction", "share of outputs that are multiples of 0.001 BTC", *_FRAC),
        Column("dust_output_count", "count", "outputs below 546 sat (OP_RETURN excluded)", (0, 100_000), (0, 5), 1.0),
        Column("equal_output_frac", "fraction", "(most common output value count - 1) / (outputs - 1); 0 for one output", *_FRAC),
        Column("input_age_blocks", "blocks", "mean confirmations of the spent outputs (0 when unknown)", (0, 2_000_000), (1, 50_000), 1.0),
        Column("input_age_known", "flag", "1 when every input's previous output height was known", *_FRAC),
    ),
)

MEMPOOL_SCHEMA = Schema(
    "mempool",
    (
        Column("mempool_tx_count", "count", "transactions in the mempool", (0, 10_000_000), (100, 200_000), 1.0),
        Column("mempool_vbytes", "vB", "sum of vsize in the mempool", (0, 5e9), (1e4, 1e8), 1.0),
        *(
            Column(f"fee_rate_p{p}", "sat/vB", f"vsize-weighted {p}th percentile fee rate", (0, 1e8), (1, 300), 1.0)
            for p in FEE_PERCENTILES
        ),
        Column("min_fee_rate", "sat/vB", "lowest fee rate in the mempool", (0, 1e8), (1, 100), 1.0),
        *(
            Column(
                f"depth_rate_{d // 1_000_000}mvb",
                "sat/vB",
                f"fee rate at {d // 1_000_000} MvB from the top of the mempool (min relay fee when smaller)",
                (0, 1e8),
                (1, 300),
                1.0,
            )
            for d in MEMPOOL_DEPTHS_VB
        ),
    ),
)

CONF_TARGET = Column("conf_target_blocks", "blocks", "confirmation target k", (1, 1008), (1, 144), 0.0)
FEE_SCHEMA = Schema("fee", (*MEMPOOL_SCHEMA.columns, CONF_TARGET))
ANOMALY_SCHEMA = Schema("anomaly", (*TX_SCHEMA.columns, *MEMPOOL_SCHEMA.columns))
FRAUD_SCHEMA = TX_SCHEMA
NETWORK_SCHEMA = TELEMETRY_SCHEMA  # the network task: one node telemetry vector per row
TASKS = ("fraud", "fee", "anomaly", "network", "liquidity")  # the one list of tasks (core/serving/inference/riscv.py, copied alone to boards, aside)
CHAIN_TASKS = TASKS[:3]  # learned from transactions and mempool snapshots (a simulated chain gives them all)
TASK_SCHEMAS: dict[str, Schema] = dict(zip(TASKS, (FRAUD_SCHEMA, FEE_SCHEMA, ANOMALY_SCHEMA, NETWORK_SCHEMA,
                                                  LIQUIDITY_SCHEMA), strict=True))


# --------------------------------------------------------------------------------------------
# Vectorized feature builders (the one code path for parsed JSON and simulator columns)
# --------------------------------------------------------------------------------------------


def transaction_features(
    *,
    vsize: np.ndarray,
    weight: np.ndarray,
    fee_sat: np.ndarray,
    n_inputs: np.ndarray,
    rbf: np.ndarray,
    locktime: np.ndarray,
    input_age_blocks: np.ndarray,
    input_age_known: np.ndarray,
    out_offsets: np.ndarray,
    out_value_sat: np.ndarray,
    out_script: np.ndarray,
) -> np.ndarray:
    """Rows of TX_SCHEMA for n transactions.

    Outputs are ragged: transaction i owns ``out_value_sat[out_offsets[i]:out_offsets[i+1]]`` and the
    matching ``out_script`` codes (indices into SCRIPT_CLASSES; nulldata is coded as ``OTHER_SCRIPT``
    with its dust exemption expressed by a value of 0 sat, as OP_RETURN outputs carry).
    """
    n = len(vsize)
    offsets = np.asarray(out_offsets, dtype=np.int64)
    n_out = np.diff(offsets)
    if n and np.any(n_out < 1):
        bad = int(np.argmax(n_out < 1))
        raise FeatureError(f"transaction[{bad}].vout", "must have at least one output")
    values = np.asarray(out_value_sat, dtype=np.float64)
    owner = np.repeat(np.arange(n), n_out)
    total = np.bincount(owner, weights=values, minlength=n)
    starts = offsets[:-1]
    max_v = np.maximum.reduceat(values, starts) if n else np.zeros(0)
    min_v = np.minimum.reduceat(values, starts) if n else np.zeros(0)
    mean = total / n_out
    sq = np.bincount(owner, weights=(values - mean[owner]) ** 2, minlength=n)
    std = np.sqrt(sq / n_out)
    cv = np.where(mean > 0, std / np.where(mean > 0, mean, 1.0), 0.0)

    script = np.asarray(out_script, dtype=np.int64)
    n_cls = len(SCRIPT_CLASSES)
    script_counts = np.bincount(owner * n_cls + script, minlength=n * n_cls).reshape(n, n_cls)

    vint = values.astype(np.int64)
    is_round = (vint > 0) & (vint % ROUND_UNIT_SAT == 0)
    is_dust = (vint < DUST_LIMIT_SAT) & ~((script == OTHER_SCRIPT) & (vint == 0))

    # most common output value per transaction: sort packed (owner, dense value rank) keys, count runs
    rank = np.unique(vint, return_inverse=True)[1].astype(np.uint64)
    key = np.sort((owner.astype(np.uint64) << np.uint64(32)) | rank)
    new_run = np.ones(len(key), dtype=bool)
    new_run[1:] = key[1:] != key[:-1]
    starts_run = np.flatnonzero(new_run)
    run_len = np.diff(np.append(starts_run, len(key)))
    run_owner = key[starts_run] >> np.uint64(32)
    first_run = np.flatnonzero(np.r_[True, run_owner[1:] != run_owner[:-1]]) if n else np.zeros(0, np.int64)
    most_common = np.maximum.reduceat(run_len, first_run) if n else np.zeros(0)
    out_n = n_out.astype(np.float64)

    rows = np.empty((n, TX_SCHEMA.width), dtype=np.float32)
    vsize_f = np.asarray(vsize, dtype=np.float64)
    rows[:, 0] = vsize_f
    rows[:, 1] = weight
    rows[:, 2] = np.asarray(fee_sat, dtype=np.float64) / vsize_f
    rows[:, 3] = n_inputs
    rows[:, 4] = out_n
    rows[:, 5] = total / SATS_PER_BTC
    rows[:, 6] = max_v / SATS_PER_BTC
    rows[:, 7] = min_v / SATS_PER_BTC
    rows[:, 8] = cv
    rows[:, 9 : 9 + n_cls] = script_counts / out_n[:, None]
    rows[:, 15] = rbf
    rows[:, 16] = np.asarray(locktime) > 0
    rows[:, 17] = np.bincount(owner, weights=is_round, minlength=n) / out_n
    rows[:, 18] = np.bincount(owner, weights=is_dust, minlength=n)
    rows[:, 19] = np.where(n_out > 1, (most_common - 1) / np.maximum(out_n - 1, 1), 0.0)
    rows[:, 20] = input_age_blocks
    rows[:, 21] = input_age_known
    return rows


def mempool_features(fee_rate: np.ndarray, vsize: np.ndarray, min_relay: float = DEFAULT_MIN_RELAY_SAT_VB) -> np.ndarray:
    """One MEMPOOL_SCHEMA row from the fee rates (sat/vB) and vsizes (vB) of the mempool's entries."""
    rate = np.asarray(fee_rate, dtype=np.float64)
    size = np.asarray(vsize, dtype=np.float64)
    n_pct, n_depth = len(FEE_PERCENTILES), len(MEMPOOL_DEPTHS_VB)
    if rate.size == 0:
        return np.array([0.0, 0.0, *([min_relay] * (n_pct + 1 + n_depth))], dtype=np.float32)
    order = np.argsort(rate, kind="stable")
    r_asc, s_asc = rate[order], size[order]
    cum = np.cumsum(s_asc)
    total = cum[-1]
    pct_idx = np.searchsorted(cum, np.array(FEE_PERCENTILES) / 100.0 * total, side="left")
    pcts = r_asc[np.minimum(pct_idx, len(r_asc) - 1)]
    # depth from the top: vbytes at fee rates >= r_asc[i] is total - cum[i-1]
    above = total - np.concatenate(([0.0], cum[:-1]))  # decreasing in i
    depths = []
    for d in MEMPOOL_DEPTHS_VB:
        if total < d:
            depths.append(min_relay)
        else:
            # the highest i whose 'above' still reaches d: the marginal rate at that depth
            i = int(np.searchsorted(-above, -d, side="right")) - 1
            depths.append(r_asc[max(i, 0)])
    return np.array([len(rate), total, *pcts, r_asc[0], *depths], dtype=np.float32)


def fee_rows(mempool_rows: np.ndarray, conf_target: np.ndarray) -> np.ndarray:
    """FEE_SCHEMA rows: a mempool row joined with its confirmation target k."""
    return np.concatenate([np.asarray(mempool_rows, np.float32), np.asarray(conf_target, np.float32)[:, None]], axis=1)


def anomaly_rows(tx_rows: np.ndarray, mempool_rows: np.ndarray) -> np.ndarray:
    """ANOMALY_SCHEMA rows: each transaction joined with the mempool state it arrived into."""
    return np.concatenate([np.asarray(tx_rows, np.float32), np.asarray(mempool_rows, np.float32)], axis=1)
