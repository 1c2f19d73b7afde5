"""Bitcoin Core verbose JSON -> feature rows (TX_SCHEMA, MEMPOOL_SCHEMA).

This module only extracts and validates the raw fields of Core's RPC replies; every feature is computed by
the vectorized builders in ``core.bitcoin.features`` (``transaction_features``, ``mempool_features``), the
same code path the simulator uses. Inputs this module understands:

* ``parse_transaction``: a verbose transaction from ``getrawtransaction <txid> 2`` or an entry of the ``tx``
  list of ``getblock <hash> 2|3`` (``getrawtransaction <txid> true`` works when it carries ``fee`` or
  every input's ``prevout``).
* ``parse_block``: a ``getblock <hash> 2|3`` reply (the coinbase transaction is skipped).
* ``parse_mempool``: a ``getrawmempool true`` reply, optionally with ``getmempoolinfo``.

Every problem raises ``FeatureError(field, problem)`` naming the JSON path (``vout[2].value``,
``tx[5].vin[0].sequence``, ``entries[<txid>].fees.base``) and what is wrong with it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from core.bitcoin.features import (
    CORE_SCRIPT_TYPES,
    DEFAULT_MIN_RELAY_SAT_VB,
    MAX_MONEY_BTC,
    MAX_SEQUENCE,
    MEMPOOL_SCHEMA,
    OTHER_SCRIPT,
    RBF_SEQUENCE_LIMIT,
    SATS_PER_BTC,
    TX_SCHEMA,
    mempool_features,
    transaction_features,
)
from core.errors import FeatureError

__all__ = ["parse_block", "parse_mempool", "parse_transaction"]

Number = int | float | Decimal

# Sanity bound for integer fields before they reach numpy (larger ints cannot become float64 safely).
# Plausibility (vsize above 1,000,000 vB and so on) is judged afterwards by TX_SCHEMA.validate.
_MAX_SAFE_INT = 2**53
_MAX_MONEY_SAT = round(MAX_MONEY_BTC * SATS_PER_BTC)
_MAX_HEIGHT = 100_000_000  # far above any plausible block height, well inside float64 precision
MEMPOOL_HEIGHT = 0x7FFFFFFF  # Core's coin height for an output of an unconfirmed parent (txmempool.h)
_VSIZE_VALID = TX_SCHEMA.columns[TX_SCHEMA.index("vsize")].valid
_MIN_RELAY_VALID = (0.0, 1_000.0)  # sat/vB: a relay floor above 1,000 sat/vB is a misconfiguration
_SAT_PER_VB_PER_BTC_PER_KVB = SATS_PER_BTC / 1_000  # 1e-5 BTC/kvB = 1 sat/vB

_MISSING_FEE = (
    "missing: the transaction has no 'fee' field and {why}, so its fee cannot be computed; "
    "pass transactions from getblock <hash> 2 or 3, or getrawtransaction <txid> 2 (Bitcoin Core 25+), "
    "which report the fee and/or every input's prevout"
)


# --------------------------------------------------------------------------------------------
# Field access and validation helpers
# --------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """Short 'type repr' text for error messages (repr truncated)."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _text(num: Number) -> str:
    """A number for an error message; huge integers are abbreviated."""
    text = str(num)
    return text if len(text) <= 30 else f"{text[:12]}... ({len(text)} characters)"


def _get(obj: Mapping, key: str, path: str) -> Any:
    """``obj[key]`` or FeatureError(path, 'missing')."""
    if key not in obj:
        raise FeatureError(path, "missing")
    return obj[key]


def _mapping(value: Any, path: str, what: str = "a JSON object") -> Mapping:
    if not isinstance(value, Mapping):
        raise FeatureError(path, f"wrong type: expected {what}, got {_describe(value)}")
    return value


def _array(value: Any, path: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        raise FeatureError(path, f"wrong type: expected a JSON array, got {_describe(value)}")
    if not value:
        raise FeatureError(path, "empty: a transaction needs at least one entry")
    return value


def _number(value: Any, path: str) -> Number:
    """A finite JSON number (int, float, Decimal, numpy scalar); bools and strings are rejected."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real | Decimal):
        raise FeatureError(path, f"wrong type: expected a number, got {_describe(value)}")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise FeatureError(path, f"not a finite number: {value}")
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        result = float(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise FeatureError(path, f"out of range: {_describe(value)} is not representable as a float") from exc
    if not math.isfinite(result):
        raise FeatureError(path, f"not a finite number: {result}")
    return result


def _integer(value: Any, path: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi]; integral floats (``141.0``) are accepted, fractional ones are not."""
    num = _number(value, path)
    # range first: int(Decimal("1e999999999")) would build a billion-digit integer
    if num < lo:
        problem = f"negative: {_text(num)}" if num < 0 <= lo else f"out of range: {_text(num)} is below {lo}"
        raise FeatureError(path, problem)
    if num > hi:
        raise FeatureError(path, f"out of range: {_text(num)} is above {hi}")
    if isinstance(num, float) and not num.is_integer() or isinstance(num, Decimal) and num != num.to_integral_value():
        raise FeatureError(path, f"must be an integer, got {_text(num)}")
    return int(num)


def _btc_to_sat(value: Any, path: str) -> int:
    """A BTC amount in [0, 21e6] as integer satoshis, ``round(value * 1e8)``.

    For amounts Core prints (8 decimals, at most 21e6 BTC) the float product is within 0.47 sat of the exact
    value, so rounding recovers the exact satoshi count.
    """
    num = _number(value, path)
    if num < 0:
        raise FeatureError(path, f"negative: {_text(num)} BTC")
    if num > MAX_MONEY_BTC:
        raise FeatureError(path, f"out of range: {_text(num)} BTC is above the {MAX_MONEY_BTC:,.0f} BTC money supply")
    if isinstance(num, int):
        return num * SATS_PER_BTC
    return int(round(num * SATS_PER_BTC))


def _sat_text(sat: int) -> str:
    return f"{sat / SATS_PER_BTC:.8f} BTC"


# --------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------


@dataclass
class _TxFields:
    """The validated raw fields of one transaction, ready for ``transaction_features``."""

    vsize: int
    weight: int
    fee_sat: int
    n_inputs: int
    rbf: bool
    locktime: int
    input_age_blocks: float
    input_age_known: bool
    out_value_sat: list[int] = field(default_factory=list)
    out_script: list[int] = field(default_factory=list)


def _is_coinbase_input(vin: Any) -> bool:
    return isinstance(vin, Mapping) and "coinbase" in vin


def _extract_transaction(tx: Any, height: int | None) -> _TxFields:
    """Validate one verbose transaction and pull out the raw fields the builder needs."""
    tx = _mapping(tx, "transaction", "a JSON object (a verbose transaction)")
    if height is not None:
        height = _integer(height, "height", 0, _MAX_HEIGHT)

    weight = _integer(_get(tx, "weight", "weight"), "weight", 1, _MAX_SAFE_INT)
    vsize = _integer(_get(tx, "vsize", "vsize"), "vsize", 1, _MAX_SAFE_INT)
    expected_vsize = (weight + 3) // 4
    if abs(vsize - expected_vsize) > 1:
        raise FeatureError(
            "vsize", f"{vsize} does not match weight {weight}: expected ceil(weight / 4) = {expected_vsize}"
        )
    locktime = _integer(_get(tx, "locktime", "locktime"), "locktime", 0, MAX_SEQUENCE)

    vins = _array(_get(tx, "vin", "vin"), "vin")
    rbf = False
    prevout_sat: list[int | None] = []
    prevout_height: list[int | None] = []
    for i, vin in enumerate(vins):
        path = f"vin[{i}]"
        vin = _mapping(vin, path)
        if "coinbase" in vin:
            raise FeatureError(
                f"{path}.coinbase",
                "coinbase transaction: it carries no fee, so it has no fee-rate features; skip it (parse_block does)",
            )
        sequence = _integer(_get(vin, "sequence", f"{path}.sequence"), f"{path}.sequence", 0, MAX_SEQUENCE)
        rbf = rbf or sequence < RBF_SEQUENCE_LIMIT
        value_sat = prev_height = None
        if "prevout" in vin:
            prevout = _mapping(vin["prevout"], f"{path}.prevout")
            if "value" in prevout:
                value_sat = _btc_to_sat(prevout["value"], f"{path}.prevout.value")
            if "height" in prevout and not (height is None and prevout["height"] == MEMPOOL_HEIGHT):
                # a mempool transaction spending an unconfirmed parent: that input's age is unknown
                prev_height = _integer(prevout["height"], f"{path}.prevout.height", 0, _MAX_HEIGHT)
                if height is not None and prev_height > height:
                    raise FeatureError(
                        f"{path}.prevout.height",
                        f"{prev_height} is above the transaction's block height {height}: "
                        "an input cannot spend an output created later",
                    )
        prevout_sat.append(value_sat)
        prevout_height.append(prev_height)

    vouts = _array(_get(tx, "vout", "vout"), "vout")
    out_value_sat: list[int] = []
    out_script: list[int] = []
    for i, vout in enumerate(vouts):
        path = f"vout[{i}]"
        vout = _mapping(vout, path)
        out_value_sat.append(_btc_to_sat(_get(vout, "value", f"{path}.value"), f"{path}.value"))
        if "n" in vout:
            _integer(vout["n"], f"{path}.n", 0, len(vouts) - 1)
        spk = _mapping(_get(vout, "scriptPubKey", f"{path}.scriptPubKey"), f"{path}.scriptPubKey")
        script_type = _get(spk, "type", f"{path}.scriptPubKey.type")
        if not isinstance(script_type, str):
            raise FeatureError(
                f"{path}.scriptPubKey.type", f"wrong type: expected a string, got {_describe(script_type)}"
            )
        out_script.append(CORE_SCRIPT_TYPES.get(script_type, OTHER_SCRIPT))

    total_out = sum(out_value_sat)
    if total_out > _MAX_MONEY_SAT:  # Core's CheckTransaction: the sum must be in MoneyRange too
        raise FeatureError("vout", f"out of range: the outputs sum to {_sat_text(total_out)}, above the money supply")
    known_in = [v for v in prevout_sat if v is not None]
    computed_fee = total_in = None
    if len(known_in) == len(prevout_sat):
        total_in = sum(known_in)
        if total_in > _MAX_MONEY_SAT:
            raise FeatureError(
                "vin", f"out of range: the prevout values sum to {_sat_text(total_in)}, above the money supply"
            )
        computed_fee = total_in - total_out
    if "fee" in tx:
        fee_sat = _btc_to_sat(tx["fee"], "fee")
        if computed_fee is not None and computed_fee != fee_sat:
            raise FeatureError(
                "fee",
                f"{_sat_text(fee_sat)} disagrees with the inputs' prevout values minus the outputs "
                f"({_sat_text(total_in)} - {_sat_text(total_out)} = {_sat_text(computed_fee)})",
            )
    elif computed_fee is not None:
        if computed_fee < 0:
            raise FeatureError(
                "fee",
                f"negative: the outputs ({_sat_text(total_out)}) exceed the inputs' prevout values "
                f"({_sat_text(total_in)})",
            )
        fee_sat = computed_fee
    else:
        first = next(i for i, v in enumerate(prevout_sat) if v is None)
        raise FeatureError("fee", _MISSING_FEE.format(why=f"vin[{first}] has no 'prevout' with a 'value'"))

    known_heights = [h for h in prevout_height if h is not None]
    age_known = height is not None and len(known_heights) == len(prevout_height)
    age = float(np.mean([height - h for h in known_heights])) if age_known else 0.0

    return _TxFields(
        vsize=vsize,
        weight=weight,
        fee_sat=fee_sat,
        n_inputs=len(vins),
        rbf=rbf,
        locktime=locktime,
        input_age_blocks=age,
        input_age_known=age_known,
        out_value_sat=out_value_sat,
        out_script=out_script,
    )


def _build_rows(txs: list[_TxFields], labels: list[str]) -> np.ndarray:
    """TX_SCHEMA rows for validated transactions via the shared builder, then checked against the schema."""
    n_out = [len(t.out_value_sat) for t in txs]
    rows = transaction_features(
        vsize=np.array([t.vsize for t in txs], dtype=np.float64),
        weight=np.array([t.weight for t in txs], dtype=np.float64),
        fee_sat=np.array([t.fee_sat for t in txs], dtype=np.float64),
        n_inputs=np.array([t.n_inputs for t in txs], dtype=np.float64),
        rbf=np.array([t.rbf for t in txs], dtype=np.float64),
        locktime=np.array([t.locktime for t in txs], dtype=np.float64),
        input_age_blocks=np.array([t.input_age_blocks for t in txs], dtype=np.float64),
        input_age_known=np.array([t.input_age_known for t in txs], dtype=np.float64),
        out_offsets=np.concatenate(([0], np.cumsum(n_out, dtype=np.int64))).astype(np.int64),
        out_value_sat=np.array([v for t in txs for v in t.out_value_sat], dtype=np.float64),
        out_script=np.array([s for t in txs for s in t.out_script], dtype=np.int64),
    )
    try:
        return TX_SCHEMA.validate(rows, what="transaction")
    except FeatureError:
        # find the offending transaction and name the column relative to it
        for row, label in zip(rows, labels, strict=True):
            try:
                TX_SCHEMA.validate(row, what="transaction")
            except FeatureError as exc:
                column = exc.field.rsplit(".", 1)[-1]
                raise FeatureError(label + column, f"{exc.problem}; not a plausible transaction") from None
        raise


def parse_transaction(tx: Mapping, *, height: int | None = None) -> np.ndarray:
    """One TX_SCHEMA row (float32, shape (22,)) from a verbose Bitcoin Core transaction.

    ``height`` is the height of the block holding the transaction (or the chain tip for a mempool
    transaction); with it and every input's ``prevout.height`` the mean input age is filled in.
    """
    return _build_rows([_extract_transaction(tx, height)], [""])[0]


def parse_block(block: Mapping) -> np.ndarray:
    """TX_SCHEMA rows (float32, (n, 22)) for every non-coinbase transaction of a ``getblock <hash> 2|3`` reply."""
    block = _mapping(block, "block", "a JSON object (a getblock <hash> 2 or 3 reply)")
    height = _integer(_get(block, "height", "height"), "height", 0, _MAX_HEIGHT)
    txs = _get(block, "tx", "tx")
    if not isinstance(txs, list | tuple):
        raise FeatureError("tx", f"wrong type: expected a JSON array, got {_describe(txs)}")
    fields: list[_TxFields] = []
    labels: list[str] = []
    for i, tx in enumerate(txs):
        label = f"tx[{i}]"
        if not isinstance(tx, Mapping):
            hint = "; call getblock <hash> 2 or 3 (verbosity 1 lists only txids)" if isinstance(tx, str) else ""
            raise FeatureError(label, f"wrong type: expected a transaction object, got {_describe(tx)}{hint}")
        vins = tx.get("vin")
        if i == 0 and isinstance(vins, list | tuple) and vins and _is_coinbase_input(vins[0]):
            continue
        try:
            fields.append(_extract_transaction(tx, height))
        except FeatureError as exc:
            raise FeatureError(f"{label}.{exc.field}", exc.problem) from exc
        labels.append(f"{label}.")
    return _build_rows(fields, labels)


# --------------------------------------------------------------------------------------------
# Mempool
# --------------------------------------------------------------------------------------------


def _min_relay_sat_vb(mempool_info: Mapping | None) -> float:
    if mempool_info is None:
        return DEFAULT_MIN_RELAY_SAT_VB
    info = _mapping(mempool_info, "mempool_info", "a JSON object (a getmempoolinfo reply)")
    path = "mempool_info.minrelaytxfee"
    btc_per_kvb = _btc_to_sat(_get(info, "minrelaytxfee", path), path) / SATS_PER_BTC
    sat_vb = btc_per_kvb * _SAT_PER_VB_PER_BTC_PER_KVB
    lo, hi = _MIN_RELAY_VALID
    if not lo <= sat_vb <= hi:
        raise FeatureError(path, f"out of range: {btc_per_kvb:g} BTC/kvB is {sat_vb:g} sat/vB, above {hi:g} sat/vB")
    return sat_vb


def parse_mempool(entries: Mapping[str, Mapping], mempool_info: Mapping | None = None) -> np.ndarray:
    """One MEMPOOL_SCHEMA row (float32, shape (12,)) from a ``getrawmempool true`` reply.

    Each entry's fee rate is ``fees.base`` (or the older ``fee``) over ``vsize`` in sat/vB; the minimum relay
    fee comes from ``getmempoolinfo``'s ``minrelaytxfee`` (BTC/kvB) when ``mempool_info`` is given.
    """
    if not isinstance(entries, Mapping):
        hint = "; call getrawmempool true (verbose)" if isinstance(entries, list | tuple) else ""
        raise FeatureError(
            "entries", f"wrong type: expected an object of txid -> entry, got {_describe(entries)}{hint}"
        )
    min_relay = _min_relay_sat_vb(mempool_info)
    rates = np.empty(len(entries), dtype=np.float64)
    sizes = np.empty(len(entries), dtype=np.float64)
    for i, (txid, entry) in enumerate(entries.items()):
        path = f"entries[{txid}]"
        entry = _mapping(entry, path)
        vsize = _integer(_get(entry, "vsize", f"{path}.vsize"), f"{path}.vsize", *map(int, _VSIZE_VALID))
        if "fees" in entry:
            fees = _mapping(entry["fees"], f"{path}.fees")
            fee_sat = _btc_to_sat(_get(fees, "base", f"{path}.fees.base"), f"{path}.fees.base")
        elif "fee" in entry:
            fee_sat = _btc_to_sat(entry["fee"], f"{path}.fee")
        else:
            raise FeatureError(f"{path}.fees.base", "missing (neither 'fees' nor the older 'fee' is present)")
        rates[i] = fee_sat / vsize
        sizes[i] = vsize
    row = mempool_features(rates, sizes, min_relay=min_relay)
    return MEMPOOL_SCHEMA.validate(row, what="mempool")[0]
