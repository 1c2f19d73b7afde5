"""The simulated node's RPC methods, with Bitcoin Core 27's reply shapes, parameter checks and error codes.

Errors: unknown method -32601 "Method not found"; a wrong number of parameters -1 with the method's usage;
a parameter of the wrong JSON type -3 "JSON value of type X is not of expected type Y"; an invalid value
-8 (RPC_INVALID_PARAMETER); an unknown block or transaction -5 (RPC_INVALID_ADDRESS_OR_KEY); during warm-up
-28 "Loading block index...". Named parameters (a params object) are accepted, as Core does.

Outpoints: the simulator does not spend the outputs of its transactions, so ``gettxout`` shows them unspent
while their transaction is confirmed (or in the mempool, with include_mempool); the fake outpoints its inputs
spend (``TxRenderer.prevout_of``) are unspent until a transaction spending them (the canonical one, its RBF
phantom or an injected double spend) is confirmed, or in the mempool with include_mempool; then null.
``gettxspendingprevout`` names the mempool transaction spending such an outpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from anya_fl.simnode import relay
from anya_fl.simnode.blocks import DIFFICULTY, View
from anya_fl.simnode.config import GENESIS_EPOCH, INCREMENTAL_SAT_VB, MIN_RELAY_SAT_VB, USAGE_PER_VBYTE
from anya_fl.simnode.encoding import hex_id
from anya_fl.simnode.flood import FLOOD_TX_VSIZE
from anya_fl.simnode.peers import network_info, peer_info
from anya_fl.simnode.render import SUBSIDY_SAT, btc
from anya_fl.simnode.server import METHOD_NOT_FOUND, RPCFault
from core.data.chain import START_HEIGHT

if TYPE_CHECKING:
    from anya_fl.simnode.node import SimNode

TXOUTS_AT_START = 180_000_000  # UTXO set size at START_HEIGHT (mainnet order of magnitude)
TRANSACTIONS_AT_START = 120_000_000
SUPPLY_AT_START_SAT = 1_971_875_312_500_000 - 5_000_000_000  # subsidies to height 850,000, less genesis
NOT_FOUND_TX = "No such mempool or blockchain transaction. Use gettransaction for wallet transactions."
STATS_KEYS = ("avgfee", "avgfeerate", "avgtxsize", "blockhash", "feerate_percentiles", "height", "ins", "maxfee",
              "maxfeerate", "maxtxsize", "medianfee", "mediantime", "mediantxsize", "minfee", "minfeerate",
              "mintxsize", "outs", "subsidy", "swtotal_size", "swtotal_weight", "swtxs", "time", "total_out",
              "total_size", "total_weight", "totalfee", "txs", "utxo_increase", "utxo_size_inc",
              "utxo_increase_actual", "utxo_size_inc_actual")

# method -> (parameter names (alias after '|'), number required, one-line help)
SIGNATURES: dict[str, tuple[tuple[str, ...], int, str]] = {
    "estimatesmartfee": (("conf_target", "estimate_mode"), 1,
                         "Estimates the approximate fee per kilobyte needed for a transaction to begin confirmation "
                         "within conf_target blocks."),
    "getbestblockhash": ((), 0, "Returns the hash of the best (tip) block in the most-work fully-validated chain."),
    "getblock": (("blockhash", "verbosity|verbose"), 1, "Returns data for the block: hex (0), an object (1), "
                                                         "with transactions (2), with prevouts (3)."),
    "getblockchaininfo": ((), 0, "Returns an object containing various state info regarding blockchain processing."),
    "getblockcount": ((), 0, "Returns the height of the most-work fully-validated chain."),
    "getblockhash": (("height",), 1, "Returns hash of block in best-block-chain at height provided."),
    "getblockheader": (("blockhash", "verbose"), 1, "Returns information about the block header."),
    "getblockstats": (("hash_or_height", "stats"), 1, "Compute per block statistics for a given window."),
    "getchaintips": ((), 0, "Return information about all known tips in the block tree."),
    "getconnectioncount": ((), 0, "Returns the number of connections to other nodes."),
    "getdifficulty": ((), 0, "Returns the proof-of-work difficulty as a multiple of the minimum difficulty."),
    "getmempoolentry": (("txid",), 1, "Returns mempool data for given transaction."),
    "getmempoolinfo": ((), 0, "Returns details on the active state of the TX memory pool."),
    "getnetworkinfo": ((), 0, "Returns an object containing various state info regarding P2P networking."),
    "getpeerinfo": ((), 0, "Returns data about each connected network peer as a json array of objects."),
    "getrawmempool": (("verbose", "mempool_sequence"), 0, "Returns all transaction ids in memory pool."),
    "getrawtransaction": (("txid", "verbosity|verbose", "blockhash"), 1, "Return the raw transaction data."),
    "gettxout": (("txid", "n", "include_mempool"), 2, "Returns details about an unspent transaction output."),
    "gettxoutsetinfo": (("hash_type", "hash_or_height", "use_index"), 0,
                        "Returns statistics about the unspent transaction output set."),
    "gettxspendingprevout": (("outputs",), 1,
                             "Scans the mempool to find transactions spending any of the given outputs"),
    "uptime": ((), 0, "Returns the total uptime of the server."),
}


# ---- parameter checks


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _type_error(v: Any, expected: str) -> RPCFault:
    return RPCFault(-3, f"JSON value of type {_jtype(v)} is not of expected type {expected}")


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _type_error(v, "number")
    if isinstance(v, float) and not v.is_integer():
        raise RPCFault(-1, "JSON integer out of range")
    return int(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _type_error(v, "bool")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise _type_error(v, "string")
    return v


def _hash(v: Any, name: str) -> str:
    text = _str(v)
    if len(text) != 64:
        raise RPCFault(-8, f"{name} must be of length 64 (not {len(text)}, for '{text[:80]}')")
    try:
        int(text, 16)
    except ValueError:
        raise RPCFault(-8, f"{name} must be hexadecimal string (not '{text}')") from None
    return text.lower()


def _verbosity(v: Any, default: int) -> int:
    if v is None:
        return default
    if isinstance(v, bool):
        return int(v)
    return _int(v)


def _usage(method: str) -> str:
    names, required, text = SIGNATURES[method]
    args = [n.split("|")[0] if i < required else f"( {n.split('|')[0]} )" for i, n in enumerate(names)]
    return f"{' '.join([method, *args])}\n\n{text}\n"


def bind(method: str, params: list | dict) -> list[Any]:
    """Positional arguments (missing optional ones None) from positional or named ``params``."""
    names, required, _ = SIGNATURES[method]
    if isinstance(params, dict):
        args: list[Any] = [None] * len(names)
        for key, value in params.items():
            for i, name in enumerate(names):
                if key in name.split("|"):
                    args[i] = value
                    break
            else:
                raise RPCFault(-8, f"Unknown named parameter {key}")
        if any(a is None for a in args[:required]):
            raise RPCFault(-1, _usage(method))
        return args
    if not required <= len(params) <= len(names):
        raise RPCFault(-1, _usage(method))
    return list(params) + [None] * (len(names) - len(params))


class CoreRPC:
    """RPC methods over a SimNode, answering for the node's state at the current simulated time."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self._methods: dict[str, Callable[..., Any]] = {m: getattr(self, m) for m in SIGNATURES}

    def __call__(self, method: str, params: list | dict) -> Any:
        return self.call(method, params)

    def call(self, method: str, params: list | dict | None = None) -> Any:
        """Run ``method``; raise RPCFault with Core's code and message."""
        node = self.node
        if node.config.warmup_s > 0 and node.now() < node.t_start + node.config.warmup_s:
            raise RPCFault(-28, "Loading block index...")  # before anything else, as CRPCTable::execute
        handler = self._methods.get(method)
        if handler is None:
            raise RPCFault(METHOD_NOT_FOUND, "Method not found")
        args = bind(method, params if params is not None else [])
        with node.lock:
            return handler(node.view(), *args)

    # ---- blockchain

    def getblockchaininfo(self, v: View) -> dict[str, Any]:
        b = self.node.blocks
        tip = v.tip
        return {
            "chain": "main", "blocks": tip, "headers": self.node.headers_tip(v.t), "bestblockhash": b.hash(*b.tip(v)),
            "difficulty": DIFFICULTY, "time": b.time(tip), "mediantime": b.mediantime(tip),
            "verificationprogress": 0.9999987, "initialblockdownload": False, "chainwork": b.chainwork(tip),
            "size_on_disk": 650_000_000_000 + 1_600_000 * (tip - b.first), "pruned": False, "warnings": "",
        }

    def getblockcount(self, v: View) -> int:
        return v.tip

    def getbestblockhash(self, v: View) -> str:
        return self.node.blocks.hash(*self.node.blocks.tip(v))

    def getdifficulty(self, v: View) -> float:
        return DIFFICULTY

    def getblockhash(self, v: View, height: Any) -> str:
        key = self.node.blocks.active(_int(height), v)
        if key is None:
            raise RPCFault(-8, "Block height out of range")
        return self.node.blocks.hash(*key)

    def _block(self, v: View, blockhash: Any, name: str = "blockhash") -> tuple[int, int]:
        key = self.node.blocks.lookup(_hash(blockhash, name), v)
        if key is None:
            raise RPCFault(-5, "Block not found")
        return key

    def getblockheader(self, v: View, blockhash: Any, verbose: Any = None) -> Any:
        verbose = verbose is None or _bool(verbose)
        key = self._block(v, blockhash)
        return self.node.blocks.header(key, v) if verbose else self.node.blocks.header_hex(key)

    def getblock(self, v: View, blockhash: Any, verbosity: Any = None) -> Any:
        level = _verbosity(verbosity, 1)
        key = self._block(v, blockhash)
        doc = self.node.blocks.block(key, v, level)
        swaps = self.node.block_conflicts(key, v.t)
        if not swaps or level <= 0:  # verbosity 0: a double spend has its target's size, the hex is the same
            return doc
        txs = self.node.txs
        by_txid = {txs.txid(i): c for i, c in swaps}
        if level == 1:
            doc["tx"] = [txs.txid(by_txid[t]) if t in by_txid else t for t in doc["tx"]]
        else:
            doc["tx"] = [txs.tx(by_txid[d["txid"]], min(level, 3), key[0]) if d["txid"] in by_txid else d
                         for d in doc["tx"]]
            doc["tx"][0] = self.node.coinbase_doc(key, v.t)
        return doc

    def getblockstats(self, v: View, hash_or_height: Any, stats: Any = None) -> dict[str, Any]:
        b = self.node.blocks
        selected: list[str] = []
        if stats is not None:
            if not isinstance(stats, list):
                raise _type_error(stats, "array")
            selected = [_str(s) for s in stats]
        if isinstance(hash_or_height, int | float) and not isinstance(hash_or_height, bool):
            height = _int(hash_or_height)
            if height < 0:
                raise RPCFault(-8, f"Target block height {height} is negative")
            if height > v.tip:
                raise RPCFault(-8, f"Target block height {height} after current tip {v.tip}")
            key = b.active(height, v)
            if key is None:
                raise RPCFault(-8, "Block height out of range")
        else:
            key = self._block(v, hash_or_height, "hash_or_height")
        every = b.stats(key)
        if not selected:
            return every
        for s in selected:
            if s not in every:
                raise RPCFault(-8, f"Invalid selected statistic '{s}'")
        return {s: every[s] for s in sorted(set(selected))}

    def getchaintips(self, v: View) -> list[dict[str, Any]]:
        b = self.node.blocks
        tips = [{"height": v.tip, "hash": b.hash(*b.tip(v)), "branchlen": 0, "status": "active"}]
        for r in v.reorgs:
            branch = 0 if r is v.reorg else r.id  # the branch not shown now is the valid fork
            tips.append({"height": r.top_height, "hash": b.hash(r.top_height, branch), "branchlen": r.depth,
                         "status": "valid-fork"})
        for fork in self.node.network.forks_at(v.t):  # injected stale forks (network_scenarios)
            tips.append({"height": fork.height, "hash": b.hash(fork.height, fork.branch), "branchlen": fork.branchlen,
                         "status": "valid-fork"})
        return sorted(tips, key=lambda tip: (-tip["height"], tip["status"] != "active"))

    # ---- mempool

    def _mempool_entries(self, v: View) -> list[tuple[int, float, int]]:
        """(entry id, entry time (simulated s), entry height) of the mempool in ``v``."""
        tl = self.node.timeline
        ids = tl.mempool(v.t)
        out = list(zip(ids.tolist(), tl.e_enter[ids].tolist(), tl.e_height[ids].tolist(), strict=True))
        if v.reorg is not None:
            r = v.reorg
            conflict = tl.conflict_entry
            out += [(conflict[i] if tl.replaced(i, v.t) else i, r.t_start, r.first_height - 1)
                    for i in r.dropped.tolist()]
        return out

    def _entry(self, e: int, entered: float, height: int) -> dict[str, Any]:
        node = self.node
        tl = node.timeline
        vsize = int(tl.e_vsize[e])
        fee = btc(int(tl.e_fee[e]))
        i = int(tl.e_tx[e])
        return {
            "vsize": vsize, "weight": int(node.chain.tx["weight"][i]), "time": GENESIS_EPOCH + math.floor(entered),
            "height": height, "descendantcount": 1, "descendantsize": vsize, "ancestorcount": 1,
            "ancestorsize": vsize, "wtxid": node.txs.wtxid(e),
            "fees": {"base": fee, "modified": fee, "ancestor": fee, "descendant": fee},
            "depends": [], "spentby": [], "bip125-replaceable": bool(e >= tl.n or node.chain.tx["rbf"][i]),
            "unbroadcast": False,
        }

    def getrawmempool(self, v: View, verbose: Any = None, mempool_sequence: Any = None) -> Any:
        verbose = verbose is not None and _bool(verbose)
        sequence = mempool_sequence is not None and _bool(mempool_sequence)
        if verbose and sequence:
            raise RPCFault(-8, "Verbose results cannot contain mempool sequence values.")
        entries = self._mempool_entries(v)
        txid = self.node.txs.txid
        if verbose:
            return {txid(e): self._entry(e, t, h) for e, t, h in entries}
        txids = [txid(e) for e, _, _ in entries]
        if sequence:
            return {"txids": txids, "mempool_sequence": self.node.mempool_sequence(v)}
        return txids

    def getmempoolentry(self, v: View, txid: Any) -> dict[str, Any]:
        wanted = _hash(txid, "parameter 1")
        e = self.node.txs.entry_of(wanted)
        if e is None or self.node.locate(e, v) != "mempool":
            raise RPCFault(-5, "Transaction not in mempool")
        r = v.reorg
        tl = self.node.timeline
        slot = tl.slot_of(e)
        if r is not None and slot is not None and r.dropped_mask[slot]:
            return self._entry(e, r.t_start, r.first_height - 1)
        return self._entry(e, float(tl.e_enter[e]), int(tl.e_height[e]))

    def getmempoolinfo(self, v: View) -> dict[str, Any]:
        tl = self.node.timeline
        ids = np.array([e for e, _, _ in self._mempool_entries(v)], dtype=np.int64)
        vbytes = int(tl.e_vsize[ids].sum())
        fee = int(tl.e_fee[ids].sum())
        flood = self.node.flood
        n_flood = self.node.flood_count(v.t, vbytes)  # an injected flood's transactions (counted, not listed)
        if flood is not None and n_flood:
            vbytes += n_flood * FLOOD_TX_VSIZE
            fee += n_flood * flood.fee_tx
        return {
            "loaded": True, "size": len(ids) + n_flood, "bytes": vbytes, "usage": USAGE_PER_VBYTE * vbytes,
            "total_fee": btc(fee), "maxmempool": self.node.config.maxmempool_bytes,
            "mempoolminfee": round(self.node.mempool_min_fee(v.t) / 100_000, 8),
            "minrelaytxfee": MIN_RELAY_SAT_VB / 100_000, "incrementalrelayfee": INCREMENTAL_SAT_VB / 100_000,
            "unbroadcastcount": 0, "fullrbf": False,
        }

    def getrawtransaction(self, v: View, txid: Any, verbosity: Any = None, blockhash: Any = None) -> Any:
        node = self.node
        wanted = _hash(txid, "parameter 1")
        level = _verbosity(verbosity, 0)
        in_block = None
        if blockhash is not None:
            in_block = node.blocks.lookup(_hash(blockhash, "parameter 3"), v)
            if in_block is None:
                raise RPCFault(-5, "Block hash not found")
        e = node.txs.entry_of(wanted)
        where = node.locate(e, v) if e is not None else node.coinbase_block(wanted, v)
        if in_block is not None:
            if where != in_block and not (e is not None and node.in_block(e, in_block, v.t)):
                raise RPCFault(-5, "No such transaction found in the provided block. Use gettransaction for "
                                   "wallet transactions.")
            where = in_block
        if where is None:
            raise RPCFault(-5, NOT_FOUND_TX)
        if where == "mempool":
            assert e is not None
            if level <= 0:
                return node.txs.hex(e)
            detail = 3 if level >= 2 and node.config.mempool_tx_details else 1
            return node.txs.tx(e, detail, v.tip)
        height, _ = where
        if e is None:  # a coinbase
            doc = node.coinbase_doc(where, v.t)
            if level <= 0:
                return doc["hex"]
        else:
            if level <= 0:
                return node.txs.hex(e)
            doc = node.txs.tx(e, 3 if level >= 2 else 1, height)
        active = node.blocks.active(height, v) == where
        out: dict[str, Any] = {"in_active_chain": active} if in_block else {}
        out.update(doc)
        out["blockhash"] = node.blocks.hash(*where)
        if active:
            t = node.blocks.time(height)
            out.update(confirmations=v.tip - height + 1, time=t, blocktime=t)
        else:
            out["confirmations"] = 0
        return out

    # ---- fees, UTXO set, network, control

    def estimatesmartfee(self, v: View, conf_target: Any, estimate_mode: Any = None) -> dict[str, Any]:
        k = _int(conf_target)
        mode = "conservative" if estimate_mode is None else _str(estimate_mode).lower()
        if not 1 <= k <= 1008:
            raise RPCFault(-8, "Invalid conf_target, must be between 1 and 1008")
        if mode not in ("unset", "economical", "conservative"):
            raise RPCFault(-8, 'Invalid estimate_mode parameter, must be one of: "unset", "economical", '
                               '"conservative"')
        est = self.node.estimator(v.nb)
        rate = est.estimate(k, conservative=mode == "conservative")
        if rate is None:
            return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
        rate = max(rate, self.node.mempool_min_fee(v.t), MIN_RELAY_SAT_VB)
        return {"feerate": round(rate / 100_000, 8), "blocks": min(max(k, 2), est.max_usable_target)}

    def gettxoutsetinfo(self, v: View, hash_type: Any = None, hash_or_height: Any = None,
                        use_index: Any = None) -> dict[str, Any]:
        kind = "hash_serialized_3" if hash_type is None else _str(hash_type)
        if kind not in ("hash_serialized_3", "muhash", "none"):
            raise RPCFault(-8, f"'{kind}' is not a valid hash_type")
        if hash_or_height is not None:
            raise RPCFault(-8, "Querying specific block heights requires coinstatsindex")
        b = self.node.blocks
        growth, txs = b.utxo_counts(v)
        txouts = TXOUTS_AT_START + growth
        best = b.hash(*b.tip(v))
        out: dict[str, Any] = {"height": v.tip, "bestblock": best, "txouts": txouts, "bogosize": 75 * txouts}
        if kind != "none":
            out[kind] = hex_id(f"anya-fl simnode utxo {kind} {best}")
        out.update(transactions=TRANSACTIONS_AT_START + txs, disk_size=64 * txouts,
                   total_amount=btc(SUPPLY_AT_START_SAT + SUBSIDY_SAT * (v.tip - START_HEIGHT)))
        return out

    def gettxout(self, v: View, txid: Any, n: Any, include_mempool: Any = None) -> dict[str, Any] | None:
        node = self.node
        wanted = _hash(txid, "txid")
        k = _int(n)
        if not 0 <= k <= 0xFFFFFFFF:
            raise RPCFault(-1, "JSON integer out of range")
        mempool = include_mempool is None or _bool(include_mempool)
        best = node.blocks.hash(*node.blocks.tip(v))

        def reply(confirmations: int, out: dict[str, Any], coinbase: bool) -> dict[str, Any]:
            return {"bestblock": best, "confirmations": confirmations, "value": out["value"],
                    "scriptPubKey": out["scriptPubKey"], "coinbase": coinbase}

        e = node.txs.entry_of(wanted)
        if e is not None:  # an output of a simulated transaction (never spent by the simulator)
            where = node.locate(e, v)
            if where is None or (where == "mempool" and not mempool):
                return None
            height = v.tip if where == "mempool" else where[0]
            vout = node.txs.tx(e, 1, height)["vout"]
            if k >= len(vout) or vout[k]["scriptPubKey"]["type"] == "nulldata":  # unspendable: not a UTXO
                return None
            return reply(0 if where == "mempool" else v.tip - height + 1, vout[k], False)
        key = node.coinbase_block(wanted, v)
        if key is not None:  # output 0: the reward; output 1: the witness commitment (unspendable)
            if k != 0:
                return None
            return reply(v.tip - key[0] + 1, node.coinbase_doc(key, v.t)["vout"][0], True)
        hit = node.txs.spender_of(wanted, k)
        if hit is None:
            return None
        i, j = hit
        for spender in node.spenders(i):
            where = node.locate(spender, v)
            if where is not None and (where != "mempool" or mempool):
                return None
        value, script = node.txs.prevout_output(i, j)
        prev_height = max(0, v.tip - int(node.chain.tx["input_age"][i]))  # as the spender renders its prevout
        return reply(v.tip - prev_height + 1, {"value": value, "scriptPubKey": script}, False)

    def gettxspendingprevout(self, v: View, outputs: Any) -> list[dict[str, Any]]:
        if not isinstance(outputs, list):
            raise _type_error(outputs, "array")
        if not outputs:
            raise RPCFault(-8, "Invalid parameter, outputs are missing")
        prevouts = []
        for o in outputs:
            if not isinstance(o, dict):
                raise _type_error(o, "object")
            for name, kind in (("txid", "string"), ("vout", "number")):  # RPCTypeCheckObj, strict
                if o.get(name) is None:
                    raise RPCFault(-3, f"Missing {name}")
                if _jtype(o[name]) != kind:
                    raise RPCFault(-3, f"JSON value of type {_jtype(o[name])} for field {name} is not of expected "
                                       f"type {kind}")
            for name in o:
                if name not in ("txid", "vout"):
                    raise RPCFault(-3, f"Unexpected key {name}")
            txid = _hash(o["txid"], "txid")
            vout = _int(o["vout"])
            if vout < 0:
                raise RPCFault(-8, "Invalid parameter, vout cannot be negative")
            prevouts.append((txid, vout))
        node = self.node
        result = []
        for txid, vout in prevouts:
            item: dict[str, Any] = {"txid": txid, "vout": vout}
            hit = node.txs.spender_of(txid, vout)
            if hit is not None:
                spender = next((e for e in node.spenders(hit[0]) if node.locate(e, v) == "mempool"), None)
                if spender is not None:
                    item["spendingtxid"] = node.txs.txid(spender)
            result.append(item)
        return result

    def getnetworkinfo(self, v: View) -> dict[str, Any]:
        return network_info(*self.node.network.counts(v.t))

    def getconnectioncount(self, v: View) -> int:
        return sum(self.node.network.counts(v.t))

    def getpeerinfo(self, v: View) -> list[dict[str, Any]]:
        node = self.node
        tip_time = node.blocks.time(v.tip)
        synced = node.true_tip(v.t)  # peers have the true chain, even while the node is partitioned
        s = node.network.saturation(v.t)  # a degraded relay: pings grow, high-bandwidth peers go
        hb = relay.hb_peers(s)
        return [peer_info(replace(p, ping_s=relay.ping(p.ping_s, s)) if s and p.connection_type != "inbound" else p,
                          v.t, v.tip, tip_time, node.start_height, synced=synced,
                          addr=node.network.addr_extra(p, v.t), hb_to=None if not s else p.id < hb)
                for p in node.peers_at(v.t)]

    def uptime(self, v: View) -> int:
        return int(v.t - self.node.t_start)

