"""Blocks of the simulated node: hashes, the active chain at a simulated time, stale branches, Core's block JSON.

A block is identified by (height, branch): branch 0 is the simulator's canonical chain, branch r >= 1 the
stale branch of reorg r. Hashes are SHA-256 of (seed, height, branch). Block b of the chain has height
START_HEIGHT + 1 + b and header time ``GENESIS_EPOCH + ceil(block_time[b])``, so for an integer simulated
time T "block_time <= T" is "header time <= GENESIS_EPOCH + T". Heights up to START_HEIGHT are history the
node does not serve (getblockhash answers -8 for them); their times, used for mediantime, are 600 s apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anya_fl.simnode.config import GENESIS_EPOCH
from anya_fl.simnode.encoding import hex_id
from anya_fl.simnode.render import (
    COINBASE_SIZE,
    COINBASE_STRIPPED,
    COINBASE_WEIGHT,
    SUBSIDY_SAT,
    TxRenderer,
    compact_size,
)
from anya_fl.simnode.timeline import Timeline
from core.bitcoin.features import OTHER_SCRIPT
from core.data.categories import OUTPUT_BYTES
from core.data.chain import START_HEIGHT, Chain

BITS = 0x17034219
_TARGET = (BITS & 0xFFFFFF) * 256 ** ((BITS >> 24) - 3)
DIFFICULTY = 0xFFFF * 256 ** (0x1D - 3) / _TARGET
WORK_PER_BLOCK = 2**256 // (_TARGET + 1)
PER_UTXO_OVERHEAD = 41  # sizeof(COutPoint) + sizeof(uint32_t) + sizeof(bool), as getblockstats counts
PREVOUT_BYTES = np.array([34, 32, 31, 43])  # serialized prevout size by input kind (p2pkh, p2sh, p2wpkh, p2tr)
STATS_PERCENTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class Reorg:
    """A stale branch of ``depth`` blocks shown from ``t_start`` until the next canonical block (``t_end``)."""

    id: int
    depth: int
    t_start: float
    t_end: float
    first_height: int
    top_height: int
    kept: dict[int, np.ndarray]  # height -> chain indices the stale block holds
    dropped: np.ndarray  # chain indices back in the mempool while the stale branch is active
    dropped_mask: np.ndarray = field(repr=False)
    n_canonical: int = 0  # transactions of the canonical blocks the branch replaces
    n_kept: int = 0

    def covers(self, height: int) -> bool:
        return self.first_height <= height <= self.top_height


@dataclass(frozen=True)
class View:
    """The node at simulated time ``t``: canonical blocks mined, the active tip, the stale branch shown."""

    t: float
    nb: int
    tip: int
    reorg: Reorg | None
    reorgs: tuple[Reorg, ...]  # every reorg started by t


class Blocks:
    """Block hashes, the active chain at a view, and Core-shaped headers, blocks and block stats."""

    def __init__(self, chain: Chain, timeline: Timeline, txs: TxRenderer, seed: int) -> None:
        self.chain = chain
        self.timeline = timeline
        self.txs = txs
        self.seed = seed
        self.first = START_HEIGHT + 1
        self._hashes: dict[tuple[int, int], str] = {}
        self.by_hash: dict[str, tuple[int, int]] = {}
        for h in range(START_HEIGHT, self.first + chain.n_blocks):
            self.hash(h, 0)
        self._reorgs: dict[int, Reorg] = {}
        tx = chain.tx
        outs = chain.outputs
        script = outs["script"]
        nulldata = (script == OTHER_SCRIPT) & (outs["value_sat"] == 0)
        owner = np.repeat(np.arange(chain.n_transactions), np.diff(outs["offsets"]))
        self._nulldata = np.bincount(owner, weights=nulldata, minlength=chain.n_transactions).astype(np.int64)
        self._out_total = np.bincount(owner, weights=outs["value_sat"], minlength=chain.n_transactions).astype(np.int64)
        self._out_bytes = np.bincount(owner, weights=OUTPUT_BYTES[script], minlength=chain.n_transactions)
        self._spendable_bytes = np.bincount(owner, weights=OUTPUT_BYTES[script] * ~nulldata,
                                            minlength=chain.n_transactions)
        self._in_bytes = tx["n_inputs"] * PREVOUT_BYTES[tx["input_kind"]]
        # UTXO growth per canonical block (spendable outputs - inputs, + the coinbase's spendable output)
        growth = np.array([self._utxo_growth(timeline.block_txs(b)) for b in range(chain.n_blocks)])
        self._utxo_cum = np.concatenate(([0], np.cumsum(growth)))
        self._tx_cum = np.concatenate(([0], np.cumsum(np.diff(timeline.block_offsets) + 1)))

    # ---- identity

    def hash(self, height: int, branch: int = 0) -> str:
        key = (height, branch)
        h = self._hashes.get(key)
        if h is None:
            h = hex_id(f"anya-fl simnode block {self.seed} {height} {branch}")
            self._hashes[key] = h
            self.by_hash[h] = key
        return h

    def add_reorg(self, reorg: Reorg) -> None:
        self._reorgs[reorg.id] = reorg
        for h in range(reorg.first_height, reorg.top_height + 1):
            self.hash(h, reorg.id)

    def active(self, height: int, view: View) -> tuple[int, int] | None:
        """The active chain's block at ``height`` in ``view``, or None."""
        if not self.first <= height <= view.tip:
            return None
        r = view.reorg
        return (height, r.id) if r is not None and r.covers(height) else (height, 0)

    def tip(self, view: View) -> tuple[int, int]:
        """The active tip's block (before the first served block: the unserved block at START_HEIGHT)."""
        return self.active(view.tip, view) or (view.tip, 0)

    def lookup(self, blockhash: str, view: View) -> tuple[int, int] | None:
        """The block a hash names, if the node knows it at ``view`` (mined, or its stale branch shown)."""
        key = self.by_hash.get(blockhash)
        if key is None:
            return None
        height, branch = key
        if branch == 0:
            return key if self.first <= height < self.first + view.nb else None
        r = self._reorgs.get(branch)
        return key if r is not None and view.t >= r.t_start else None

    def members(self, key: tuple[int, int]) -> np.ndarray:
        height, branch = key
        if branch:
            return self._reorgs[branch].kept[height]
        return self.timeline.block_txs(height - self.first)

    # ---- header fields

    def time(self, height: int) -> int:
        b = height - self.first
        if b < 0:
            return GENESIS_EPOCH - 600 * (START_HEIGHT - height)
        return GENESIS_EPOCH + math.ceil(float(self.chain.block_time[b]))

    def mediantime(self, height: int) -> int:
        return sorted(self.time(h) for h in range(height - 10, height + 1))[5]

    def chainwork(self, height: int) -> str:
        return f"{(height + 1) * WORK_PER_BLOCK:064x}"

    def confirmations(self, key: tuple[int, int], view: View) -> int:
        return view.tip - key[0] + 1 if self.active(key[0], view) == key else -1

    def _aggregate(self, key: tuple[int, int]) -> tuple[int, int, int, int, int]:
        """(n_tx incl. coinbase, size, strippedsize, weight, fees) of a block."""
        m = self.members(key)
        n_tx = len(m) + 1
        head = 80 + len(compact_size(n_tx)) // 2
        size = head + COINBASE_SIZE + int(self.txs.size[m].sum())
        stripped = head + COINBASE_STRIPPED + int(self.txs.stripped[m].sum())
        weight = 4 * head + COINBASE_WEIGHT + int(self.chain.tx["weight"][m].sum())
        fees = int(self.chain.tx["fee_sat"][m].sum())
        return n_tx, size, stripped, weight, fees

    def header(self, key: tuple[int, int], view: View) -> dict[str, Any]:
        """getblockheader <hash> true."""
        height, branch = key
        n_tx = len(self.members(key)) + 1
        doc: dict[str, Any] = {
            "hash": self.hash(height, branch), "confirmations": self.confirmations(key, view), "height": height,
            "version": 0x20000000, "versionHex": "20000000",
            "merkleroot": hex_id(f"anya-fl simnode merkle {self.seed} {height} {branch}"),
            "time": self.time(height), "mediantime": self.mediantime(height),
            "nonce": int(hex_id(f"anya-fl simnode nonce {self.seed} {height} {branch}")[:8], 16),
            "bits": f"{BITS:08x}", "difficulty": DIFFICULTY, "chainwork": self.chainwork(height), "nTx": n_tx,
            "previousblockhash": self.hash(height - 1, self._parent_branch(key)),
        }
        nxt = self.active(height + 1, view) if self.active(height, view) == key else None
        if nxt is not None:
            doc["nextblockhash"] = self.hash(*nxt)
        return doc

    def _parent_branch(self, key: tuple[int, int]) -> int:
        height, branch = key
        if branch and self._reorgs[branch].first_height < height:
            return branch
        return 0

    def header_hex(self, key: tuple[int, int]) -> str:
        """The 80-byte header serialization (getblockheader <hash> false)."""
        height, branch = key
        doc_prev = self.hash(height - 1, self._parent_branch(key))
        merkle = hex_id(f"anya-fl simnode merkle {self.seed} {height} {branch}")
        nonce = int(hex_id(f"anya-fl simnode nonce {self.seed} {height} {branch}")[:8], 16)
        return ((0x20000000).to_bytes(4, "little").hex() + bytes.fromhex(doc_prev)[::-1].hex()
                + bytes.fromhex(merkle)[::-1].hex() + self.time(height).to_bytes(4, "little").hex()
                + BITS.to_bytes(4, "little").hex() + nonce.to_bytes(4, "little").hex())

    def coinbase(self, key: tuple[int, int]) -> dict[str, Any]:
        """The block's coinbase transaction (getblock 2 shape)."""
        return self.txs.coinbase(key[0], key[1], self._aggregate(key)[4])

    def block(self, key: tuple[int, int], view: View, verbosity: int) -> Any:
        """getblock <hash> verbosity: hex (0), txids (1), transactions (2, with fee), and prevouts (3)."""
        height, branch = key
        m = self.members(key).tolist()
        n_tx, size, stripped, weight, fees = self._aggregate(key)
        coinbase = self.txs.coinbase(height, branch, fees)
        if verbosity <= 0:
            return "".join([self.header_hex(key), compact_size(n_tx), coinbase["hex"],
                            *(self.txs.hex(i) for i in m)])
        doc = self.header(key, view)
        doc.update(strippedsize=stripped, size=size, weight=weight)
        if verbosity == 1:
            doc["tx"] = [coinbase["txid"], *(self.txs.txids[i] for i in m)]
        else:
            doc["tx"] = [coinbase, *(self.txs.tx(i, min(verbosity, 3), height) for i in m)]
        return doc

    # ---- getblockstats

    def _utxo_growth(self, m: np.ndarray) -> int:
        tx = self.chain.tx
        return int((self.txs.n_out[m] - self._nulldata[m] - tx["n_inputs"][m]).sum()) + 1

    def stats(self, key: tuple[int, int]) -> dict[str, Any]:
        """Every getblockstats statistic, computed as Core does (amounts in sat, fee rates in sat/vB)."""
        height, branch = key
        tx = self.chain.tx
        m = self.members(key)
        fee = tx["fee_sat"][m]
        weight = tx["weight"][m]
        size = self.txs.size[m]
        n = len(m)
        feerate = (fee * 4) // weight if n else np.zeros(0, dtype=np.int64)
        total_weight = int(weight.sum())
        totalfee = int(fee.sum())
        percentiles = [0] * 5
        if n:
            order = np.lexsort((weight, feerate))
            cum = np.cumsum(weight[order])
            for k, q in enumerate(STATS_PERCENTILES):
                j = int(np.searchsorted(cum, total_weight * q, side="left"))
                percentiles[k] = int(feerate[order][min(j, n - 1)])
        ins = int(tx["n_inputs"][m].sum())
        outs = int(self.txs.n_out[m].sum()) + 2
        spendable = outs - int(self._nulldata[m].sum()) - 1
        witness = size > self.txs.stripped[m]
        out_bytes = float(self._out_bytes[m].sum()) + 31 + 46  # + coinbase outputs
        spend_bytes = float(self._spendable_bytes[m].sum()) + 31
        in_bytes = float(self._in_bytes[m].sum())

        def median(values: np.ndarray) -> int:
            if not len(values):
                return 0
            v = np.sort(values)
            half = len(v) // 2
            return int(v[half]) if len(v) % 2 else int((v[half - 1] + v[half]) // 2)

        return {
            "avgfee": totalfee // n if n else 0,
            "avgfeerate": totalfee * 4 // total_weight if total_weight else 0,
            "avgtxsize": int(size.sum()) // n if n else 0,
            "blockhash": self.hash(height, branch),
            "feerate_percentiles": percentiles,
            "height": height,
            "ins": ins,
            "maxfee": int(fee.max()) if n else 0,
            "maxfeerate": int(feerate.max()) if n else 0,
            "maxtxsize": int(size.max()) if n else 0,
            "medianfee": median(fee),
            "mediantime": self.mediantime(height),
            "mediantxsize": median(size),
            "minfee": int(fee.min()) if n else 0,
            "minfeerate": int(feerate.min()) if n else 0,
            "mintxsize": int(size.min()) if n else 0,
            "outs": outs,
            "subsidy": SUBSIDY_SAT,
            "swtotal_size": int(size[witness].sum()),
            "swtotal_weight": int(weight[witness].sum()),
            "swtxs": int(witness.sum()),
            "time": self.time(height),
            "total_out": int(self._out_total[m].sum()),
            "total_size": int(size.sum()),
            "total_weight": total_weight,
            "totalfee": totalfee,
            "txs": n + 1,
            "utxo_increase": outs - ins,
            "utxo_size_inc": int(out_bytes + PER_UTXO_OVERHEAD * outs - in_bytes - PER_UTXO_OVERHEAD * ins),
            "utxo_increase_actual": spendable - ins,
            "utxo_size_inc_actual": int(spend_bytes + PER_UTXO_OVERHEAD * spendable - in_bytes
                                        - PER_UTXO_OVERHEAD * ins),
        }

    # ---- UTXO set

    def utxo_counts(self, view: View) -> tuple[int, int]:
        """(txouts growth, transactions) of the active chain since START_HEIGHT."""
        nb = view.nb
        growth = int(self._utxo_cum[nb])
        txs = int(self._tx_cum[nb])
        r = view.reorg
        if r is not None:
            for h in range(r.first_height, r.top_height + 1):
                canonical = self.timeline.block_txs(h - self.first)
                growth += self._utxo_growth(r.kept[h]) - self._utxo_growth(canonical)
                txs += len(r.kept[h]) - len(canonical)
        return growth, txs
