"""Fields the collector reads from Bitcoin Core's replies, checked: each problem is a FeatureError naming the
field (the follower turns it into a skipped item, or into an RPCMalformedReplyError naming the method)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.collector.store import address_key, outpoint_key
from core.errors import FeatureError

__all__ = ["addresses", "compact_entry", "entry_fields", "fee_fields", "is_coinbase", "mempool_reply", "outpoints",
           "require_int"]


def is_coinbase(tx: Any) -> bool:
    """Whether a block's transaction is its coinbase (first input has ``coinbase``)."""
    vin = tx.get("vin") if isinstance(tx, Mapping) else None
    return isinstance(vin, list) and bool(vin) and isinstance(vin[0], Mapping) and "coinbase" in vin[0]


def require_int(obj: Mapping, key: str) -> int:
    """``obj[key]`` as an integer, or FeatureError naming the key."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FeatureError(key, "missing" if key not in obj else f"expected an integer, got {value!r}")
    return value


def _int_field(obj: Mapping, key: str, path: str) -> int:
    value = obj.get(key)
    if key not in obj:
        raise FeatureError(path, "missing")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise FeatureError(path, f"expected a whole number >= 0, got {value!r}")
    return int(value)


def _btc_sat(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value > 21e6:
        raise FeatureError(path, f"expected an amount in BTC, got {value!r}")
    return int(round(value * 1e8))


def fee_fields(tx: Mapping) -> tuple[int, int, int]:
    """(fee_sat, vsize, weight) of a block transaction; FeatureError naming the field."""
    if "fee" not in tx:
        raise FeatureError("fee", "missing (the node gave no fee: getblock needs undo data)")
    fee_sat = _btc_sat(tx["fee"], "fee")
    vsize = _int_field(tx, "vsize", "vsize")
    if vsize < 1:
        raise FeatureError("vsize", "must be >= 1")
    weight = _int_field(tx, "weight", "weight") if "weight" in tx else vsize * 4
    return fee_sat, vsize, weight


def entry_fields(entry: Any) -> tuple[int, int, int, int]:
    """(fee_sat, vsize, time, height) of a mempool entry; FeatureError naming the field."""
    if not isinstance(entry, Mapping):
        raise FeatureError("entry", f"expected an object, got {type(entry).__name__}")
    fees = entry.get("fees")
    if isinstance(fees, Mapping) and "base" in fees:
        fee_sat = _btc_sat(fees["base"], "fees.base")
    elif "fee" in entry:
        fee_sat = _btc_sat(entry["fee"], "fee")
    else:
        raise FeatureError("fees.base", "missing")
    vsize = _int_field(entry, "vsize", "vsize")
    if vsize < 1:
        raise FeatureError("vsize", "must be >= 1")
    return fee_sat, vsize, _int_field(entry, "time", "time"), _int_field(entry, "height", "height")


def compact_entry(entry: Any) -> tuple[int, int, int, int] | FeatureError:
    """(fee_sat, vsize, time, height) of a mempool entry, or the FeatureError naming what is wrong."""
    try:
        return entry_fields(entry)
    except FeatureError as exc:
        return exc


def mempool_reply(reply: Any) -> tuple[list[str], int | None]:
    """txids and mempool_sequence of ``getrawmempool false true`` (a plain list from an older node)."""
    if isinstance(reply, list):
        txids, seq = reply, None
    elif isinstance(reply, Mapping):
        txids, seq = reply.get("txids"), reply.get("mempool_sequence")
        if not isinstance(txids, list):
            raise FeatureError("txids", "missing" if "txids" not in reply else "expected an array")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise FeatureError("mempool_sequence", f"expected an integer, got {seq!r}")
    else:
        raise FeatureError("result", "expected an object with txids and mempool_sequence")
    if not all(isinstance(t, str) for t in txids):
        raise FeatureError("txids", "expected an array of txid strings")
    return txids, seq


def outpoints(tx: Mapping) -> list[int]:
    """Keys of the outpoints a transaction spends (replacement detection)."""
    out = []
    for vin in tx.get("vin") or ():
        if isinstance(vin, Mapping) and isinstance(vin.get("txid"), str) and isinstance(vin.get("vout"), int):
            out.append(outpoint_key(vin["txid"], vin["vout"]))
    return out


def addresses(tx: Mapping) -> list[int]:
    """Keys of the addresses a transaction pays to or spends from (``scriptPubKey.address``; address labels)."""
    out = []
    for vout in tx.get("vout") or ():
        spk = vout.get("scriptPubKey") if isinstance(vout, Mapping) else None
        if isinstance(spk, Mapping) and isinstance(spk.get("address"), str):
            out.append(address_key(spk["address"]))
    for vin in tx.get("vin") or ():
        prev = vin.get("prevout") if isinstance(vin, Mapping) else None
        spk = prev.get("scriptPubKey") if isinstance(prev, Mapping) else None
        if isinstance(spk, Mapping) and isinstance(spk.get("address"), str):
            out.append(address_key(spk["address"]))
    return out
