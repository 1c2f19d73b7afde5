"""Bitcoin Core verbose JSON -> feature rows: exact columns, malformed inputs, property tests."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.bitcoin.features import CORE_SCRIPT_TYPES, MEMPOOL_SCHEMA, SATS_PER_BTC, TX_SCHEMA
from core.bitcoin.parsing import parse_block, parse_mempool, parse_transaction
from core.errors import FeatureError

TX = TX_SCHEMA.index
MP = MEMPOOL_SCHEMA.index
BLOCK_HEIGHT = 850_000


def spk(kind: str) -> dict[str, Any]:
    """A scriptPubKey object as Core prints it (only ``type`` matters to the parser)."""
    return {"asm": "", "hex": "", "type": kind}


def segwit_tx(*, with_fee: bool = True, with_prevout: bool = True) -> dict[str, Any]:
    """A realistic verbosity-3 segwit transaction: 2 inputs, outputs p2wpkh + p2tr + OP_RETURN.

    Outputs 0.015 + 0.00123456 + 0 BTC, prevouts 0.01 + 0.00644856 BTC: fee 21,400 sat over 214 vB = 100 sat/vB.
    """
    vin = [
        {"txid": "aa" * 32, "vout": 0, "sequence": 0xFFFFFFFD, "txinwitness": ["30", "02"]},
        {"txid": "bb" * 32, "vout": 1, "sequence": 0xFFFFFFFF, "txinwitness": ["30", "03"]},
    ]
    if with_prevout:
        vin[0]["prevout"] = {
            "generated": False,
            "height": 849_900,
            "value": 0.01,
            "scriptPubKey": spk("witness_v0_keyhash"),
        }
        vin[1]["prevout"] = {
            "generated": False,
            "height": 849_000,
            "value": 0.00644856,
            "scriptPubKey": spk("witness_v0_keyhash"),
        }
    tx: dict[str, Any] = {
        "txid": "cc" * 32,
        "hash": "dd" * 32,
        "version": 2,
        "size": 372,
        "vsize": 214,
        "weight": 853,
        "locktime": 849_999,
        "vin": vin,
        "vout": [
            {"value": 0.015, "n": 0, "scriptPubKey": spk("witness_v0_keyhash")},
            {"value": 0.00123456, "n": 1, "scriptPubKey": spk("witness_v1_taproot")},
            {"value": 0.0, "n": 2, "scriptPubKey": spk("nulldata")},
        ],
        "hex": "02000000...",
    }
    if with_fee:
        tx["fee"] = 0.000214
    return tx


def coinbase_tx() -> dict[str, Any]:
    return {
        "txid": "ee" * 32,
        "vsize": 150,
        "weight": 600,
        "locktime": 0,
        "vin": [{"coinbase": "03d0f80c", "sequence": 0xFFFFFFFF}],
        "vout": [{"value": 3.2, "n": 0, "scriptPubKey": spk("witness_v0_keyhash")}],
    }


# --------------------------------------------------------------------------------------------
# A realistic transaction, column by column
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_fee", "with_prevout"), [(True, True), (True, False), (False, True)], ids=["fee+prevout", "fee", "prevout"]
)
def test_realistic_segwit_tx_columns(with_fee: bool, with_prevout: bool) -> None:
    row = parse_transaction(segwit_tx(with_fee=with_fee, with_prevout=with_prevout), height=BLOCK_HEIGHT)
    assert row.dtype == np.float32 and row.shape == (TX_SCHEMA.width,)
    assert row[TX("vsize")] == 214 and row[TX("weight")] == 853
    assert row[TX("fee_rate")] == pytest.approx(100.0)
    assert row[TX("n_inputs")] == 2 and row[TX("n_outputs")] == 3
    assert row[TX("total_output_btc")] == pytest.approx(0.01623456)
    assert row[TX("max_output_btc")] == pytest.approx(0.015)
    assert row[TX("min_output_btc")] == 0.0
    third = np.float32(1 / 3)
    assert row[TX("frac_p2wpkh")] == third and row[TX("frac_p2tr")] == third and row[TX("frac_other")] == third
    assert row[TX("frac_p2pkh")] == row[TX("frac_p2sh")] == row[TX("frac_p2wsh")] == 0.0
    assert row[TX("rbf_signaling")] == 1.0  # vin[0] sequence 0xfffffffd
    assert row[TX("has_locktime")] == 1.0
    assert row[TX("round_output_frac")] == third  # only 0.015 BTC is a multiple of 0.001 BTC
    assert row[TX("dust_output_count")] == 0.0  # the 0-sat OP_RETURN is exempt
    assert row[TX("equal_output_frac")] == 0.0
    if with_prevout:
        assert row[TX("input_age_blocks")] == 550.0  # mean(100, 1000)
        assert row[TX("input_age_known")] == 1.0
    else:
        assert row[TX("input_age_blocks")] == 0.0 and row[TX("input_age_known")] == 0.0


def test_input_age_unknown_without_height() -> None:
    row = parse_transaction(segwit_tx())
    assert row[TX("input_age_blocks")] == 0.0 and row[TX("input_age_known")] == 0.0


def test_unconfirmed_parent_height_marker() -> None:
    """Core gives an output of an unconfirmed parent the height 0x7FFFFFFF: in the mempool that input's age is
    unknown (not an error); in a block it cannot happen."""
    tx = segwit_tx()
    tx["vin"][0]["prevout"]["height"] = 0x7FFFFFFF
    row = parse_transaction(tx)
    assert row[TX("input_age_blocks")] == 0.0 and row[TX("input_age_known")] == 0.0
    np.testing.assert_array_equal(np.delete(row, [TX("input_age_blocks"), TX("input_age_known")]),
                                  np.delete(parse_transaction(segwit_tx()), [TX("input_age_blocks"), TX("input_age_known")]))
    with pytest.raises(FeatureError, match=r"vin\[0\]\.prevout\.height"):
        parse_transaction(tx, height=800_000)


def test_dust_rbf_locktime_and_script_mapping() -> None:
    tx = segwit_tx(with_prevout=False)
    tx["locktime"] = 0
    for vin in tx["vin"]:
        vin["sequence"] = 0xFFFFFFFE  # final-but-locktime: not BIP125
    tx["vout"] = [
        {"value": 0.000005, "n": 0, "scriptPubKey": spk("witness_v0_keyhash")},  # 500 sat: dust
        {"value": 0.00000330, "n": 1, "scriptPubKey": spk("anchor")},  # 330 sat anchor: dust, other
        {"value": 0.0, "n": 2, "scriptPubKey": spk("nulldata")},  # exempt
        {"value": 0.05, "n": 3, "scriptPubKey": spk("pubkeyhash")},
        {"value": 0.05, "n": 4, "scriptPubKey": spk("scripthash")},
        {"value": 0.05, "n": 5, "scriptPubKey": spk("witness_v0_scripthash")},
        {"value": 0.001, "n": 6, "scriptPubKey": spk("multisig")},
        {"value": 0.001, "n": 7, "scriptPubKey": spk("witness_unknown")},
    ]
    row = parse_transaction(tx)
    assert row[TX("rbf_signaling")] == 0.0 and row[TX("has_locktime")] == 0.0
    assert row[TX("dust_output_count")] == 2.0
    assert row[TX("n_outputs")] == 8
    assert row[TX("frac_p2pkh")] == row[TX("frac_p2sh")] == row[TX("frac_p2wsh")] == np.float32(1 / 8)
    assert row[TX("frac_p2wpkh")] == np.float32(1 / 8) and row[TX("frac_p2tr")] == 0.0
    assert row[TX("frac_other")] == np.float32(4 / 8)
    assert row[TX("round_output_frac")] == np.float32(5 / 8)
    assert row[TX("equal_output_frac")] == np.float32(2 / 7)  # three outputs of 0.05 BTC


def test_decimal_amounts_as_python_bitcoinrpc_returns_them() -> None:
    tx = segwit_tx()
    tx["fee"] = Decimal("0.00021400")
    for vin in tx["vin"]:
        vin["prevout"]["value"] = Decimal(str(vin["prevout"]["value"]))
    for vout in tx["vout"]:
        vout["value"] = Decimal(str(vout["value"]))
    np.testing.assert_array_equal(
        parse_transaction(tx, height=BLOCK_HEIGHT), parse_transaction(segwit_tx(), height=BLOCK_HEIGHT)
    )


def test_vsize_within_one_of_weight_is_accepted() -> None:
    tx = segwit_tx()
    tx["vsize"] = 213  # ceil(853 / 4) = 214, off by one is tolerated
    assert parse_transaction(tx)[TX("vsize")] == 213


# --------------------------------------------------------------------------------------------
# Malformed transactions: each raises FeatureError naming the field
# --------------------------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(tx: dict[str, Any]) -> Any:
        obj = tx
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
        return tx

    return edit


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
    def edit(tx: dict[str, Any]) -> Any:
        obj = tx
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
        return tx

    return edit


def _absurd_size(tx: dict[str, Any]) -> dict[str, Any]:
    tx["vsize"], tx["weight"] = 5_000_000, 20_000_000
    return tx


def _no_fee_no_prevout(tx: dict[str, Any]) -> dict[str, Any]:
    del tx["fee"]
    del tx["vin"][1]["prevout"]
    return tx


def _outputs_exceed_inputs(tx: dict[str, Any]) -> dict[str, Any]:
    del tx["fee"]
    tx["vout"][0]["value"] = 1.0
    return tx


def _coinbase(tx: dict[str, Any]) -> dict[str, Any]:
    return coinbase_tx()


MALFORMED: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("missing vsize", _delete(("vsize",)), "vsize", "missing"),
    ("missing weight", _delete(("weight",)), "weight", "missing"),
    ("vsize as string", _set(("vsize",), "214"), "vsize", "wrong type"),
    ("bool as number", _set(("weight",), True), "weight", "bool"),
    ("fractional vsize", _set(("vsize",), 214.5), "vsize", "integer"),
    ("NaN output value", _set(("vout", 1, "value"), float("nan")), "vout[1].value", "not a finite"),
    ("infinite fee", _set(("fee",), float("inf")), "fee", "not a finite"),
    ("negative output value", _set(("vout", 2, "value"), -0.0001), "vout[2].value", "negative"),
    ("value above 21e6 BTC", _set(("vout", 0, "value"), 21_000_001.0), "vout[0].value", "21,000,000"),
    ("huge integer value", _set(("vout", 0, "value"), 10**400), "vout[0].value", "out of range"),
    ("string output value", _set(("vout", 0, "value"), "0.015"), "vout[0].value", "wrong type"),
    ("empty vin", _set(("vin",), []), "vin", "empty"),
    ("vin not a list", _set(("vin",), {"0": {}}), "vin", "wrong type"),
    ("vout not a list", _set(("vout",), "outputs"), "vout", "wrong type"),
    ("vout entry not an object", _set(("vout", 1), 0.5), "vout[1]", "wrong type"),
    ("coinbase transaction", _coinbase, "vin[0].coinbase", "skip"),
    ("fee missing without prevout", _no_fee_no_prevout, "fee", "missing"),
    ("vsize/weight mismatch", _set(("vsize",), 300), "vsize", "expected ceil(weight / 4) = 214"),
    ("absurd vsize", _absurd_size, "vsize", "outside the valid range"),
    ("sequence out of range", _set(("vin", 0, "sequence"), 0x1_0000_0000), "vin[0].sequence", "out of range"),
    ("negative sequence", _set(("vin", 1, "sequence"), -1), "vin[1].sequence", "negative"),
    ("missing sequence", _delete(("vin", 0, "sequence")), "vin[0].sequence", "missing"),
    ("locktime out of range", _set(("locktime",), 2**32), "locktime", "out of range"),
    ("tx not an object", lambda tx: [tx], "transaction", "wrong type"),
    ("scriptPubKey missing type", _delete(("vout", 0, "scriptPubKey", "type")), "vout[0].scriptPubKey.type", "missing"),
    (
        "scriptPubKey type not a string",
        _set(("vout", 0, "scriptPubKey", "type"), 3),
        "vout[0].scriptPubKey.type",
        "wrong type",
    ),
    ("scriptPubKey missing", _delete(("vout", 0, "scriptPubKey")), "vout[0].scriptPubKey", "missing"),
    ("negative fee", _outputs_exceed_inputs, "fee", "negative"),
    ("outputs sum above 21e6 BTC", _set(("vout", 1, "value"), 20_999_999.99), "vout", "money supply"),
    ("prevouts sum above 21e6 BTC", _set(("vin", 1, "prevout", "value"), 21_000_000.0), "vin", "money supply"),
    ("huge Decimal vsize", _set(("vsize",), Decimal("1e999999999")), "vsize", "out of range"),
    ("huge int weight", _set(("weight",), 10**400), "weight", "characters"),
    ("Decimal NaN fee", _set(("fee",), Decimal("sNaN")), "fee", "not a finite"),
    ("numpy bool sequence", _set(("vin", 0, "sequence"), np.True_), "vin[0].sequence", "bool"),
    ("negative fee field", _set(("fee",), -0.0001), "fee", "negative"),
    ("fee disagrees with prevouts", _set(("fee",), 0.0003), "fee", "disagrees"),
    ("prevout not an object", _set(("vin", 0, "prevout"), "0.01"), "vin[0].prevout", "wrong type"),
    (
        "prevout height after block",
        _set(("vin", 1, "prevout", "height"), BLOCK_HEIGHT + 1),
        "vin[1].prevout.height",
        "above",
    ),
    ("prevout value NaN", _set(("vin", 0, "prevout", "value"), float("nan")), "vin[0].prevout.value", "not a finite"),
    ("vout n out of range", _set(("vout", 2, "n"), 7), "vout[2].n", "out of range"),
]


@pytest.mark.parametrize(("edit", "field", "problem"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_transaction_names_field(edit: Callable[[dict[str, Any]], Any], field: str, problem: str) -> None:
    tx = edit(segwit_tx())
    with pytest.raises(FeatureError) as info:
        parse_transaction(tx, height=BLOCK_HEIGHT)
    err = info.value
    assert err.field == field, str(err)
    assert problem in err.problem, str(err)
    assert str(err).startswith(f"{field}: ")
    assert len(str(err)) < 400  # one readable line, even for huge inputs


def test_absurd_fee_rate_rejected_by_schema() -> None:
    tx = segwit_tx(with_prevout=False)
    tx["fee"] = 500.0  # 5e10 sat over 214 vB: above the 1e8 sat/vB valid limit
    with pytest.raises(FeatureError, match=r"^fee_rate: .*outside the valid range"):
        parse_transaction(tx)


def test_height_argument_validated() -> None:
    with pytest.raises(FeatureError, match="^height: negative"):
        parse_transaction(segwit_tx(), height=-1)
    with pytest.raises(FeatureError, match="^height: wrong type"):
        parse_transaction(segwit_tx(), height=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def block(*txs: dict[str, Any]) -> dict[str, Any]:
    return {"hash": "00" * 32, "height": BLOCK_HEIGHT, "nTx": len(txs) + 1, "tx": [coinbase_tx(), *txs]}


def test_parse_block_skips_coinbase_and_uses_block_height() -> None:
    other = segwit_tx(with_fee=False)
    other["vin"] = other["vin"][:1]
    other["vin"][0]["sequence"] = 0xFFFFFFFF
    other["vsize"], other["weight"] = 141, 561
    other["vout"] = [{"value": 0.0099, "n": 0, "scriptPubKey": spk("pubkeyhash")}]  # fee 0.0001 BTC = 10,000 sat
    rows = parse_block(block(segwit_tx(), other))
    assert rows.shape == (2, TX_SCHEMA.width) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], parse_transaction(segwit_tx(), height=BLOCK_HEIGHT))
    assert rows[0, TX("input_age_blocks")] == 550.0
    assert rows[1, TX("fee_rate")] == pytest.approx(10_000 / 141)
    assert rows[1, TX("rbf_signaling")] == 0.0 and rows[1, TX("input_age_blocks")] == 100.0


def test_parse_block_with_only_coinbase_is_empty() -> None:
    rows = parse_block(block())
    assert rows.shape == (0, TX_SCHEMA.width) and rows.dtype == np.float32


@pytest.mark.parametrize(
    ("make", "field", "problem"),
    [
        (lambda: block(segwit_tx(), _set(("vout", 1, "value"), "x")(segwit_tx())), "tx[2].vout[1].value", "wrong type"),
        (lambda: block(_absurd_size(segwit_tx())), "tx[1].vsize", "outside the valid range"),
        (lambda: block(segwit_tx(), coinbase_tx()), "tx[2].vin[0].coinbase", "skip"),
        (lambda: {**block(), "tx": [coinbase_tx(), "ab" * 32]}, "tx[1]", "verbosity 1"),
        (lambda: {**block(), "tx": "txs"}, "tx", "wrong type"),
        (lambda: {k: v for k, v in block().items() if k != "height"}, "height", "missing"),
        (lambda: [block()], "block", "wrong type"),
    ],
    ids=["bad value", "absurd size", "second coinbase", "verbosity 1", "tx not list", "no height", "not object"],
)
def test_parse_block_errors_name_the_transaction(make: Callable[[], Any], field: str, problem: str) -> None:
    with pytest.raises(FeatureError) as info:
        parse_block(make())
    assert info.value.field == field, str(info.value)
    assert problem in info.value.problem, str(info.value)


# --------------------------------------------------------------------------------------------
# Mempool
# --------------------------------------------------------------------------------------------


def mempool_entry(rate_sat_vb: int, vsize: int, *, legacy_fee: bool = False) -> dict[str, Any]:
    fee_btc = rate_sat_vb * vsize / SATS_PER_BTC
    entry: dict[str, Any] = {
        "vsize": vsize,
        "weight": vsize * 4,
        "time": 1_717_000_000,
        "height": BLOCK_HEIGHT,
        "descendantcount": 1,
        "ancestorcount": 1,
        "bip125-replaceable": False,
        "depends": [],
        "spentby": [],
    }
    if legacy_fee:
        entry["fee"] = fee_btc
    else:
        entry["fees"] = {"base": fee_btc, "modified": fee_btc, "ancestor": fee_btc, "descendant": fee_btc}
    return entry


def small_mempool() -> dict[str, dict[str, Any]]:
    """3 MvB: 50 sat/vB x 500 kvB, 20 x 700 kvB, 5 x 1 MvB, 1 x 800 kvB (legacy ``fee`` field)."""
    return {
        "a" * 64: mempool_entry(50, 500_000),
        "b" * 64: mempool_entry(20, 700_000),
        "c" * 64: mempool_entry(5, 1_000_000),
        "d" * 64: mempool_entry(1, 800_000, legacy_fee=True),
    }


def test_parse_mempool_percentiles_and_depths() -> None:
    row = parse_mempool(small_mempool(), {"loaded": True, "minrelaytxfee": 0.00002, "mempoolminfee": 0.00002})
    assert row.dtype == np.float32 and row.shape == (MEMPOOL_SCHEMA.width,)
    assert row[MP("mempool_tx_count")] == 4 and row[MP("mempool_vbytes")] == 3_000_000
    # ascending cumulative vB: 800k (1), 1.8M (5), 2.5M (20), 3.0M (50)
    expected_pcts = {"fee_rate_p10": 1, "fee_rate_p25": 1, "fee_rate_p50": 5, "fee_rate_p75": 20, "fee_rate_p90": 50}
    for name, value in expected_pcts.items():
        assert row[MP(name)] == pytest.approx(value), name
    assert row[MP("min_fee_rate")] == pytest.approx(1.0)
    # from the top: 500k (50), 1.2M (20), 2.2M (5), 3.0M (1); 6 MvB is deeper than the mempool -> min relay fee
    assert row[MP("depth_rate_1mvb")] == pytest.approx(20)
    assert row[MP("depth_rate_2mvb")] == pytest.approx(5)
    assert row[MP("depth_rate_3mvb")] == pytest.approx(1)
    assert row[MP("depth_rate_6mvb")] == pytest.approx(2.0)  # 2e-5 BTC/kvB = 2 sat/vB


def test_parse_mempool_empty_uses_min_relay_fee() -> None:
    default = parse_mempool({})
    assert default[MP("mempool_tx_count")] == 0 and default[MP("mempool_vbytes")] == 0
    np.testing.assert_array_equal(default[2:], np.ones(MEMPOOL_SCHEMA.width - 2, np.float32))
    info = parse_mempool({}, {"minrelaytxfee": 0.00001})
    np.testing.assert_array_equal(info, default)
    lower = parse_mempool({}, {"minrelaytxfee": Decimal("0.00000100")})  # Core 28+: 0.1 sat/vB
    assert lower[MP("min_fee_rate")] == pytest.approx(0.1) and lower[MP("depth_rate_6mvb")] == pytest.approx(0.1)


TXID = "f" * 64
_DROP = object()


def _entry(**changes: Any) -> dict[str, dict[str, Any]]:
    entry = mempool_entry(10, 200)
    for key, value in changes.items():
        if value is _DROP:
            del entry[key]
        else:
            entry[key] = value
    return {TXID: entry}


@pytest.mark.parametrize(
    ("entries", "info", "field", "problem"),
    [
        (_entry(vsize=_DROP), None, f"entries[{TXID}].vsize", "missing"),
        (_entry(vsize="200"), None, f"entries[{TXID}].vsize", "wrong type"),
        (_entry(vsize=0), None, f"entries[{TXID}].vsize", "below"),
        (_entry(vsize=5_000_000), None, f"entries[{TXID}].vsize", "above"),
        (_entry(fees={"modified": 0.0001}), None, f"entries[{TXID}].fees.base", "missing"),
        (_entry(fees={"base": float("nan")}), None, f"entries[{TXID}].fees.base", "not a finite"),
        (_entry(fees={"base": -1e-5}), None, f"entries[{TXID}].fees.base", "negative"),
        (_entry(fees={"base": False}), None, f"entries[{TXID}].fees.base", "bool"),
        (_entry(fees=[0.0001]), None, f"entries[{TXID}].fees", "wrong type"),
        (_entry(fees=_DROP), None, f"entries[{TXID}].fees.base", "missing"),
        (_entry(fees=_DROP, fee="0.0001"), None, f"entries[{TXID}].fee", "wrong type"),
        ({TXID: None}, None, f"entries[{TXID}]", "wrong type"),
        ([TXID], None, "entries", "getrawmempool true"),
        ({}, {"minrelaytxfee": "0.00001"}, "mempool_info.minrelaytxfee", "wrong type"),
        ({}, {"mempoolminfee": 0.00001}, "mempool_info.minrelaytxfee", "missing"),
        ({}, {"minrelaytxfee": 5.0}, "mempool_info.minrelaytxfee", "out of range"),
        ({}, [0.00001], "mempool_info", "wrong type"),
    ],
)
def test_parse_mempool_malformed_names_field(entries: Any, info: Any, field: str, problem: str) -> None:
    with pytest.raises(FeatureError) as err:
        parse_mempool(entries, info)
    assert err.value.field == field, str(err.value)
    assert problem in err.value.problem, str(err.value)


# --------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------

SCRIPT_TYPES = [*CORE_SCRIPT_TYPES, "nulldata", "multisig", "nonstandard", "witness_unknown", "anchor", "pubkey"]


@st.composite
def valid_txs(draw: st.DrawFn) -> tuple[dict[str, Any], int, int]:
    """(verbose tx, fee in sat, block height) with random inputs, outputs, script types and values."""
    n_out = draw(st.integers(1, 6))
    outputs = []
    for n in range(n_out):
        kind = draw(st.sampled_from(SCRIPT_TYPES))
        sat = 0 if kind == "nulldata" else draw(st.one_of(st.integers(0, 2_000), st.integers(0, 10**12)))
        outputs.append((kind, sat, n))
    vsize = draw(st.integers(60, 100_000))
    weight = 4 * vsize - draw(st.integers(0, 3))
    fee = draw(st.integers(0, vsize * 1_000))
    total_in = sum(s for _, s, _ in outputs) + fee
    n_in = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, total_in), min_size=n_in - 1, max_size=n_in - 1)))
    in_values = [b - a for a, b in zip([0, *cuts], [*cuts, total_in], strict=True)]
    height = draw(st.integers(0, 900_000))
    mode = draw(st.sampled_from(["fee", "prevout", "both"]))
    vin = []
    for value in in_values:
        entry: dict[str, Any] = {"txid": "00" * 32, "vout": 0, "sequence": draw(st.integers(0, 0xFFFFFFFF))}
        if mode != "fee":
            entry["prevout"] = {
                "height": draw(st.integers(0, height)),
                "value": value / SATS_PER_BTC,
                "scriptPubKey": spk("pubkeyhash"),
            }
        vin.append(entry)
    tx: dict[str, Any] = {
        "vsize": vsize,
        "weight": weight,
        "locktime": draw(st.integers(0, 0xFFFFFFFF)),
        "vin": vin,
        "vout": [{"value": s / SATS_PER_BTC, "n": n, "scriptPubKey": spk(k)} for k, s, n in outputs],
    }
    if mode != "prevout":
        tx["fee"] = fee / SATS_PER_BTC
    return tx, fee, height


@settings(max_examples=200, deadline=None)
@given(valid_txs())
def test_valid_transactions_satisfy_invariants(case: tuple[dict[str, Any], int, int]) -> None:
    tx, fee, height = case
    row = parse_transaction(tx, height=height)
    assert row.dtype == np.float32 and row.shape == (TX_SCHEMA.width,)
    assert np.isfinite(row).all()
    TX_SCHEMA.validate(row, what="transaction")
    fracs = row[TX("frac_p2pkh") : TX("frac_other") + 1]
    assert math.isclose(float(fracs.sum()), 1.0, rel_tol=1e-5)
    assert row[TX("n_outputs")] == len(tx["vout"]) and row[TX("n_inputs")] == len(tx["vin"])
    assert math.isclose(float(row[TX("fee_rate")]) * tx["vsize"], fee, rel_tol=1e-5, abs_tol=1e-3)
    rbf = any(v["sequence"] < 0xFFFFFFFE for v in tx["vin"])
    assert row[TX("rbf_signaling")] == float(rbf)
    known = all("prevout" in v for v in tx["vin"])
    assert row[TX("input_age_known")] == float(known)
    if known:
        ages = [height - v["prevout"]["height"] for v in tx["vin"]]
        assert math.isclose(float(row[TX("input_age_blocks")]), sum(ages) / len(ages), rel_tol=1e-6)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.decimals(allow_nan=True, allow_infinity=True),
)
JSON_LIKE = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TX_KEYS = [
    "vsize",
    "weight",
    "locktime",
    "vin",
    "vout",
    "fee",
    "sequence",
    "prevout",
    "value",
    "height",
    "scriptPubKey",
    "type",
    "coinbase",
    "n",
]
TX_SHAPED = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(TX_KEYS), children, max_size=6)
    ),
    max_leaves=20,
)


def _row_or_feature_error(call: Callable[[], np.ndarray], schema: Any) -> None:
    try:
        row = call()
    except FeatureError as exc:
        assert exc.field and exc.problem
        return
    assert row.dtype == np.float32 and np.isfinite(row).all()
    schema.validate(row)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(JSON_LIKE, TX_SHAPED), st.one_of(st.none(), st.integers(), JSON_SCALARS))
def test_garbage_raises_only_feature_error(garbage: Any, height: Any) -> None:
    _row_or_feature_error(lambda: parse_transaction(garbage, height=height), TX_SCHEMA)
    _row_or_feature_error(lambda: parse_block({"height": height, "tx": garbage}), TX_SCHEMA)
    _row_or_feature_error(lambda: parse_mempool(garbage), MEMPOOL_SCHEMA)
    _row_or_feature_error(lambda: parse_mempool({TXID: garbage}, {"minrelaytxfee": height}), MEMPOOL_SCHEMA)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a JSON-like object (excluding the root)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    out = []
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_txs(), st.data())
def test_valid_tx_with_one_field_corrupted_raises_only_feature_error(
    case: tuple[dict[str, Any], int, int], data: st.DataObject
) -> None:
    tx, _, height = case
    tx = copy.deepcopy(tx)
    path = data.draw(st.sampled_from(_paths(tx)))
    parent = tx
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans(), label="delete") and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_LIKE, label="garbage")
    _row_or_feature_error(lambda: parse_transaction(tx, height=height), TX_SCHEMA)
    _row_or_feature_error(lambda: parse_block({"height": height, "tx": [coinbase_tx(), tx]}), TX_SCHEMA)
