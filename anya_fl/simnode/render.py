"""Simulated transactions and blocks rendered in Bitcoin Core 27's JSON shapes (TxToUniv, blockToJSON).

Transactions keep the simulator's numbers exactly (sizes, fee, outputs, RBF flag, locktime), so
``core.bitcoin.parsing`` turns them back into ``chain.tx_rows``. Inputs split ``sum(outputs) + fee`` over
the inputs; each input's ``prevout.height`` is ``height - input_age`` where ``height`` is the block holding
the transaction (or, for a mempool transaction, the tip when it is asked for), so the parsed mean input age
equals the simulator's ``input_age`` wherever that is possible (an input age above the height cannot be
written, as heights are >= 0; about 1 transaction in 20,000 has one: it parses with the age of height 0).
Scripts, addresses (real bech32/bech32m/Base58Check encodings) and descriptors are derived from hashes of
(seed, transaction, output); ``hex`` has the serialized size but is not a decodable transaction.

Entries: chain transactions 0..n-1, RBF phantoms n..n+p-1 (the canonical inputs and outputs, a lower fee taken
from the largest output), injected replacements n+p.. (``add_conflict``: the target's inputs and a higher fee
taken from the largest output; a double spend pays outputs of the same kinds and values to other scripts, a fee
bump keeps the target's scripts, so only its largest output, the change, differs). Every input spends a
fake outpoint ``(hex_id("anya-fl simnode prevout <seed> <i> <j>"), first byte % 4)`` (``prevout_of``).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np

from anya_fl.simnode.encoding import base58check, descriptor, digest, hex_id, segwit_address
from core.bitcoin.features import OTHER_SCRIPT, SATS_PER_BTC
from core.data.categories import INPUT_NONWITNESS_BYTES, OUTPUT_BYTES
from core.data.chain import Chain

SUBSIDY_SAT = 312_500_000  # 3.125 BTC: heights 840,000 to 1,049,999
COINBASE_SIZE, COINBASE_STRIPPED, COINBASE_WEIGHT = 200, 164, 692
SEQUENCE_RBF, SEQUENCE_LOCKTIME, SEQUENCE_FINAL = 0xFFFFFFFD, 0xFFFFFFFE, 0xFFFFFFFF
PREVOUT_TYPES = ("pubkeyhash", "scripthash", "witness_v0_keyhash", "witness_v1_taproot")  # by INPUT_KINDS
OUT_TYPES = ("pubkeyhash", "scripthash", "witness_v0_keyhash", "witness_v0_scripthash", "witness_v1_taproot")
_CACHE_TXS = 20_000


def btc(sat: int) -> float:
    """Satoshis as Core prints BTC amounts (8 decimals)."""
    return round(int(sat) / SATS_PER_BTC, 8)


def compact_size(n: int) -> str:
    """Bitcoin's CompactSize encoding of ``n`` as hex."""
    if n < 0xFD:
        return f"{n:02x}"
    if n <= 0xFFFF:
        return "fd" + n.to_bytes(2, "little").hex()
    return "fe" + n.to_bytes(4, "little").hex()


@lru_cache(maxsize=50_000)
def script_pubkey(kind: str, tag: str) -> dict[str, Any]:
    """Core's ``scriptPubKey`` object (asm, desc, hex, address, type) of a script of ``kind``, content from ``tag``."""
    h = digest(tag)
    if kind == "pubkeyhash":
        prog = h[:20].hex()
        addr = base58check(0, h[:20])
        return {"asm": f"OP_DUP OP_HASH160 {prog} OP_EQUALVERIFY OP_CHECKSIG", "desc": descriptor(f"addr({addr})"),
                "hex": f"76a914{prog}88ac", "address": addr, "type": kind}
    if kind == "scripthash":
        prog = h[:20].hex()
        addr = base58check(5, h[:20])
        return {"asm": f"OP_HASH160 {prog} OP_EQUAL", "desc": descriptor(f"addr({addr})"), "hex": f"a914{prog}87",
                "address": addr, "type": kind}
    if kind == "witness_v0_keyhash":
        addr = segwit_address(h[:20], 0)
        return {"asm": f"0 {h[:20].hex()}", "desc": descriptor(f"addr({addr})"), "hex": f"0014{h[:20].hex()}",
                "address": addr, "type": kind}
    if kind == "witness_v0_scripthash":
        addr = segwit_address(h, 0)
        return {"asm": f"0 {h.hex()}", "desc": descriptor(f"addr({addr})"), "hex": f"0020{h.hex()}",
                "address": addr, "type": kind}
    if kind == "witness_v1_taproot":
        addr = segwit_address(h, 1)
        return {"asm": f"1 {h.hex()}", "desc": descriptor(f"rawtr({h.hex()})"), "hex": f"5120{h.hex()}",
                "address": addr, "type": kind}
    if kind == "nulldata":
        data = h.hex()
        return {"asm": f"OP_RETURN {data}", "desc": descriptor(f"raw(6a20{data})"), "hex": f"6a20{data}",
                "type": kind}
    # bare 1-of-2 multisig
    pk1, pk2 = "02" + h.hex(), "03" + digest(tag + "/2").hex()
    return {"asm": f"1 {pk1} {pk2} 2 OP_CHECKMULTISIG", "desc": descriptor(f"multi(1,{pk1},{pk2})"),
            "hex": f"5121{pk1}21{pk2}52ae", "type": "multisig"}


class TxRenderer:
    """Core-shaped JSON for the chain's transactions (and RBF phantoms), with txids from (seed, index)."""

    def __init__(self, chain: Chain, seed: int, phantom_of: np.ndarray, phantom_fee: np.ndarray) -> None:
        self.chain = chain
        self.seed = seed
        tx, outs = chain.tx, chain.outputs
        n = chain.n_transactions
        self.txids = [hex_id(f"anya-fl simnode tx {seed} {i}") for i in range(n)]
        self.phantom_of = phantom_of
        self.phantom_fee = phantom_fee
        self.phantom_txids = [hex_id(f"anya-fl simnode phantom {seed} {int(i)}") for i in phantom_of]
        self.index = {t: i for i, t in enumerate(self.txids)}
        self.phantom_index = {t: k for k, t in enumerate(self.phantom_txids)}
        self.conflict_of: list[int] = []  # target chain index of each injected double spend
        self.conflict_fee: list[int] = []
        self.conflict_txids: list[str] = []
        self.conflict_keeps: list[bool] = []  # a fee bump (the target's scripts) or a double spend (other scripts)
        self.conflict_index: dict[str, int] = {}
        self._prevouts: dict[str, tuple[int, int]] | None = None  # fake prevout txid -> (chain index, input)
        # serialized sizes: the simulator's weight = 4 x non-witness bytes + witness bytes
        n_out = np.diff(outs["offsets"])
        owner = np.repeat(np.arange(n), n_out)
        out_bytes = np.bincount(owner, weights=OUTPUT_BYTES[outs["script"]], minlength=n).astype(np.int64)
        n_in = tx["n_inputs"]
        varint_extra = (n_in > 252) * 2 + (n_out > 252) * 2
        stripped = 10 + varint_extra + n_in * INPUT_NONWITNESS_BYTES[tx["input_kind"]] + out_bytes
        self.stripped = np.minimum(stripped, tx["weight"] // 4)
        self.size = tx["weight"] - 3 * self.stripped
        self.n_out = n_out
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    # ---- identifiers

    def txid(self, e: int) -> str:
        """Txid of entry ``e`` (a chain index, n + k for phantom k, n + p + k for double spend k)."""
        n, p = self.chain.n_transactions, len(self.phantom_txids)
        if e < n:
            return self.txids[e]
        return self.phantom_txids[e - n] if e < n + p else self.conflict_txids[e - n - p]

    def entry_of(self, txid: str) -> int | None:
        """Entry id of a txid, or None."""
        i = self.index.get(txid)
        if i is not None:
            return i
        n = self.chain.n_transactions
        k = self.phantom_index.get(txid)
        if k is not None:
            return n + k
        k = self.conflict_index.get(txid)
        return None if k is None else n + len(self.phantom_txids) + k

    def add_conflict(self, i: int, fee: int, keep_outputs: bool = False) -> str:
        """Register a replacement of chain transaction ``i`` paying ``fee`` sat: a double spend, or a fee bump
        (``keep_outputs``: the same output scripts); returns its txid (its entry id is n + p + its order, as the
        timeline's)."""
        k = len(self.conflict_txids)
        what = "rbf bump" if keep_outputs else "double spend"
        txid = hex_id(f"anya-fl simnode {what} {self.seed} {int(i)} {k}")
        self.conflict_keeps.append(bool(keep_outputs))
        self.conflict_of.append(int(i))
        self.conflict_fee.append(int(fee))
        self.conflict_txids.append(txid)
        self.conflict_index[txid] = k
        return txid

    def prevout_of(self, i: int, j: int) -> tuple[str, int]:
        """The fake outpoint (txid, vout) input ``j`` of chain transaction ``i`` spends."""
        prev = hex_id(f"anya-fl simnode prevout {self.seed} {int(i)} {int(j)}")
        return prev, int(prev[:2], 16) % 4

    def spender_of(self, txid: str, vout: int) -> tuple[int, int] | None:
        """(chain index, input) of the simulated input spending outpoint ``txid:vout``, or None."""
        if self._prevouts is None:
            n_in = self.chain.tx["n_inputs"].tolist()
            self._prevouts = {hex_id(f"anya-fl simnode prevout {self.seed} {i} {j}"): (i, j)
                              for i in range(self.chain.n_transactions) for j in range(n_in[i])}
        hit = self._prevouts.get(txid)
        return hit if hit is not None and int(txid[:2], 16) % 4 == vout else None

    def prevout_output(self, i: int, j: int) -> tuple[float, dict[str, Any]]:
        """(value in BTC, scriptPubKey) of the fake output input ``j`` of chain transaction ``i`` spends."""
        value, kind, tag = self._static(i)["prevouts"][j]
        return value, script_pubkey(kind, tag)

    def wtxid(self, e: int) -> str:
        i = self._canonical(e)
        if self.size[i] == self.stripped[i]:
            return self.txid(e)
        return hex_id(f"anya-fl simnode wtx {self.seed} {e}")

    def _canonical(self, e: int) -> int:
        n, p = self.chain.n_transactions, len(self.phantom_txids)
        if e < n:
            return e
        return int(self.phantom_of[e - n]) if e < n + p else self.conflict_of[e - n - p]

    def fee_sat(self, e: int) -> int:
        n, p = self.chain.n_transactions, len(self.phantom_txids)
        if e < n:
            return int(self.chain.tx["fee_sat"][e])
        return int(self.phantom_fee[e - n]) if e < n + p else self.conflict_fee[e - n - p]

    def output_values(self, i: int) -> list[int]:
        outs = self.chain.outputs
        return outs["value_sat"][outs["offsets"][i]:outs["offsets"][i + 1]].tolist()

    # ---- static parts (cached)

    def _static(self, e: int) -> dict[str, Any]:
        doc = self._cache.get(e)
        if doc is not None:
            self._cache.move_to_end(e)
            return doc
        i = self._canonical(e)
        tx, outs = self.chain.tx, self.chain.outputs
        seed = self.seed
        a = int(outs["offsets"][i])
        values = self.output_values(i)
        scripts = outs["script"][a:a + len(values)].tolist()
        fee = self.fee_sat(e)
        canonical_fee = int(tx["fee_sat"][i])
        if fee != canonical_fee:  # a phantom pays less (a replacement more): the largest output takes the difference
            big = int(np.argmax(values))
            values = list(values)
            values[big] += canonical_fee - fee
        first_conflict = self.chain.n_transactions + len(self.phantom_txids)
        own_scripts = e < first_conflict or self.conflict_keeps[e - first_conflict]
        out_tag = f"out {seed} {i}" if own_scripts else f"double spend {seed} {i}"
        n_in = int(tx["n_inputs"][i])
        total_in = sum(self.output_values(i)) + canonical_fee  # the same inputs as the canonical tx
        in_values = [total_in // n_in + (total_in % n_in if j == 0 else 0) for j in range(n_in)]
        kind = int(tx["input_kind"][i])
        seq = SEQUENCE_RBF if tx["rbf"][i] else (SEQUENCE_LOCKTIME if tx["locktime"][i] else SEQUENCE_FINAL)
        vin = []
        prevouts = []
        for j in range(n_in):
            tag = f"{seed} {i} {j}"
            prev, prev_vout = self.prevout_of(i, j)
            sig = (digest("sig " + tag) * 3)[:71].hex() + "01"
            pub = "02" + digest("pub " + tag).hex()
            item: dict[str, Any] = {"txid": prev, "vout": prev_vout}
            if kind == 0:  # p2pkh
                item["scriptSig"] = {"asm": f"{sig[:-2]}[ALL] {pub}", "hex": f"48{sig}21{pub}"}
            elif kind == 1:  # p2sh-p2wpkh
                redeem = "0014" + digest("redeem " + tag)[:20].hex()
                item["scriptSig"] = {"asm": redeem, "hex": "16" + redeem}
                item["txinwitness"] = [sig, pub]
            elif kind == 2:  # p2wpkh
                item["scriptSig"] = {"asm": "", "hex": ""}
                item["txinwitness"] = [sig, pub]
            else:  # p2tr key path
                item["scriptSig"] = {"asm": "", "hex": ""}
                item["txinwitness"] = [(digest("sig " + tag) * 2).hex()]
            item["sequence"] = seq
            vin.append(item)
            prevouts.append((btc(in_values[j]), PREVOUT_TYPES[kind], "in " + tag))
        vout = []
        for k, (v, s) in enumerate(zip(values, scripts, strict=True)):
            kind_name = OUT_TYPES[s] if s < OTHER_SCRIPT else ("nulldata" if v == 0 else "multisig")
            vout.append({"value": btc(v), "n": k,
                         "scriptPubKey": script_pubkey(kind_name, f"{out_tag} {k}")})
        doc = {
            "txid": self.txid(e), "hash": self.wtxid(e), "version": 2, "size": int(self.size[i]),
            "vsize": int(tx["vsize"][i]), "weight": int(tx["weight"][i]), "locktime": int(tx["locktime"][i]),
            "vin": vin, "vout": vout, "fee": btc(fee), "prevouts": prevouts,
            "input_age": int(tx["input_age"][i]),
        }
        self._cache[e] = doc
        if len(self._cache) > _CACHE_TXS:
            self._cache.popitem(last=False)
        return doc

    def hex(self, e: int) -> str:
        """Serialized-size hex (version 2 then zeros: the right length, not a decodable transaction)."""
        return "02000000" + "00" * (int(self.size[self._canonical(e)]) - 4)

    def addresses(self, i: int) -> list[str]:
        """Addresses of transaction ``i``'s outputs (outputs without one are skipped)."""
        return [o["scriptPubKey"]["address"] for o in self._static(i)["vout"] if "address" in o["scriptPubKey"]]

    # ---- rendering

    def tx(self, e: int, verbosity: int, height: int) -> dict[str, Any]:
        """TxToUniv: verbosity 1 without fee, 2 with ``fee``, 3 also each input's ``prevout``.

        ``height`` is the block holding the transaction, or the tip for a mempool transaction.
        """
        s = self._static(e)
        prev_height = max(0, height - s["input_age"])
        if verbosity >= 3:
            vin = []
            for item, (value, kind, tag) in zip(s["vin"], s["prevouts"], strict=True):
                full = {k: v for k, v in item.items() if k != "sequence"}  # Core: prevout before sequence
                full["prevout"] = {"generated": False, "height": prev_height, "value": value,
                                   "scriptPubKey": script_pubkey(kind, tag)}
                full["sequence"] = item["sequence"]
                vin.append(full)
        else:
            vin = s["vin"]
        doc = {k: s[k] for k in ("txid", "hash", "version", "size", "vsize", "weight", "locktime")}
        doc["vin"] = vin
        doc["vout"] = s["vout"]
        if verbosity >= 2:
            doc["fee"] = s["fee"]
        doc["hex"] = self.hex(e)
        return doc

    def coinbase(self, height: int, branch: int, fees_sat: int) -> dict[str, Any]:
        """The block's coinbase: subsidy + fees to a P2WPKH output, and the witness commitment."""
        txid = hex_id(f"anya-fl simnode coinbase {self.seed} {height} {branch}")
        commitment = "6a24aa21a9ed" + digest(f"commitment {self.seed} {height} {branch}").hex()
        return {
            "txid": txid, "hash": hex_id(f"anya-fl simnode coinbase-w {self.seed} {height} {branch}"),
            "version": 2, "size": COINBASE_SIZE, "vsize": (COINBASE_WEIGHT + 3) // 4, "weight": COINBASE_WEIGHT,
            "locktime": 0,
            "vin": [{"coinbase": "03" + height.to_bytes(3, "little").hex() + digest(txid).hex()[:16],
                     "txinwitness": ["00" * 32], "sequence": SEQUENCE_FINAL}],
            "vout": [
                {"value": btc(SUBSIDY_SAT + fees_sat), "n": 0,
                 "scriptPubKey": script_pubkey("witness_v0_keyhash", f"miner {self.seed} {height % 7}")},
                {"value": 0.0, "n": 1,
                 "scriptPubKey": {"asm": f"OP_RETURN {commitment[4:]}", "desc": descriptor(f"raw({commitment})"),
                                  "hex": commitment, "type": "nulldata"}},
            ],
            "hex": "02000000" + "00" * (COINBASE_SIZE - 4),
        }
