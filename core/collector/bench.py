"""Measurements for ``anya-fl bench collector``: ingest rate and memory of the follower against any Core-compatible
node (a SimNode in the bench). The caller starts the node and passes its RPC client; with a manual-clock
node it also passes ``advance`` (e.g. ``SimNode.advance``) so each poll finds new blocks and transactions.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.bitcoin.rpc import BitcoinRPC, RPCConfig
from core.collector.follower import Collector, CollectorSettings
from core.collector.store import CollectorStore

__all__ = ["SyntheticMempoolNode", "measure_ingest", "measure_mempool_rss", "measure_mempool_rss_synthetic"]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    """This process's peak RSS: Linux's VmHWM (its own address space: a spawned child does not inherit its
    parent's peak, which ru_maxrss keeps across fork and exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure_ingest(rpc: BitcoinRPC, data_dir: str | Path, *, advance: Callable[[float], None] | None = None,
                   step_s: float = 60.0, polls: int = 100, settings: CollectorSettings | None = None) -> dict[str, Any]:
    """Poll ``polls`` times (advancing the node's clock ``step_s`` before each poll when ``advance`` is given)
    and report transactions stored per second of polling (``tx_per_s``; the clock advances are not counted)."""
    rss0 = _rss_mb()
    with CollectorStore.open(data_dir) as store, Collector(rpc, store, settings) as collector:
        busy = 0.0
        states: dict[str, int] = {}
        for i in range(polls):
            if advance is not None and i:
                advance(step_s)
            t0 = time.perf_counter()
            res = collector.poll_once()
            busy += time.perf_counter() - t0
            states[res.state] = states.get(res.state, 0) + 1
        t = collector.totals
        txs = t["txs_from_mempool"] + t["txs_from_blocks"]
        return {
            "tx_per_s": txs / busy if busy > 0 else 0.0, "transactions": txs, "mempool_transactions":
            t["txs_from_mempool"], "blocks": t["blocks_connected"], "polls": polls, "seconds": busy,
            "polls_by_state": states, "rss_mb": _rss_mb(), "rss_delta_mb": _rss_mb() - rss0,
            "peak_rss_mb": _peak_rss_mb(), "store_mb": store.used_bytes() / 2**20,
        }


def measure_mempool_rss(rpc: BitcoinRPC, data_dir: str | Path, settings: CollectorSettings | None = None,
                        ) -> dict[str, Any]:
    """Catch up once with the node's whole mempool (one ``sync``) and report this process's memory: ``rss_mb``
    after, ``rss_delta_mb`` over what it was before, ``peak_rss_mb`` (the node's memory too when it runs in
    this process: start it in another process for the collector's own figure)."""
    rss0 = _rss_mb()
    with CollectorStore.open(data_dir) as store, Collector(rpc, store, settings) as collector:
        t0 = time.perf_counter()
        res = collector.sync()
        seconds = time.perf_counter() - t0
        return {"state": res.state, "mempool_transactions": len(collector.view), "seconds": seconds,
                "tx_per_s": collector.totals["txs_from_mempool"] / seconds if seconds > 0 else 0.0,
                "rss_mb": _rss_mb(), "rss_delta_mb": _rss_mb() - rss0, "peak_rss_mb": _peak_rss_mb(),
                "store_mb": store.used_bytes() / 2**20}


class SyntheticMempoolNode(BitcoinRPC):
    """An in-process stand-in for Bitcoin Core holding one block and a mempool of ``size`` transactions, in
    Core's reply shapes (no network): for the collector's memory at a mempool size no simulated chain reaches."""

    def __init__(self, size: int, height: int = 850_000) -> None:
        super().__init__(RPCConfig(url="http://127.0.0.1:8332", user="bench", password="bench"))
        self.size = size
        self.height = height
        self.tip = hashlib.sha256(f"synthetic block {height}".encode()).hexdigest()
        self.txids = [hashlib.sha256(f"synthetic tx {i}".encode()).hexdigest() for i in range(size)]
        self.index = {t: i for i, t in enumerate(self.txids)}

    def _entry(self, i: int) -> dict[str, Any]:
        vsize = 141 + i % 300
        fee = (1 + i % 97) * vsize
        return {"vsize": vsize, "weight": 4 * vsize, "time": 1_700_000_000 + i // 10, "height": self.height,
                "fees": {"base": fee / 1e8, "modified": fee / 1e8, "ancestor": fee / 1e8, "descendant": fee / 1e8},
                "depends": [], "spentby": [], "bip125-replaceable": bool(i % 2)}

    def _tx(self, i: int) -> dict[str, Any]:
        e = self._entry(i)
        out = 10_000 + i
        return {"txid": self.txids[i], "hash": self.txids[i], "version": 2, "size": e["vsize"], "vsize": e["vsize"],
                "weight": e["weight"], "locktime": 0,
                "vin": [{"txid": hashlib.sha256(f"prev {i}".encode()).hexdigest(), "vout": 0, "sequence": 0xFFFFFFFD,
                         "prevout": {"generated": False, "height": self.height - 1 - i % 5000,
                                     "value": (out + round(e["fees"]["base"] * 1e8)) / 1e8,
                                     "scriptPubKey": {"type": "witness_v0_keyhash"}}}],
                "vout": [{"value": out / 1e8, "n": 0, "scriptPubKey": {"type": "witness_v0_keyhash"}}],
                "fee": e["fees"]["base"]}

    def call(self, method: str, *params: Any) -> Any:
        block = {"hash": self.tip, "height": self.height, "previousblockhash": "00" * 32, "time": 1_700_000_000,
                 "mediantime": 1_699_999_000, "weight": 1_000, "nTx": 1,
                 "tx": [{"txid": "11" * 32, "vin": [{"coinbase": "03", "sequence": 0xFFFFFFFF}],
                         "vout": [{"value": 3.125, "n": 0, "scriptPubKey": {"type": "witness_v0_keyhash"}}]}]}
        replies: dict[str, Callable[[], Any]] = {
            "getblockchaininfo": lambda: {"chain": "main", "blocks": self.height, "headers": self.height,
                                          "bestblockhash": self.tip, "verificationprogress": 1.0,
                                          "initialblockdownload": False, "time": 1_700_000_000},
            "getblockcount": lambda: self.height,
            "getbestblockhash": lambda: self.tip,
            "getblockhash": lambda: self.tip,
            "getblock": lambda: block,
            "getblockstats": lambda: {"txs": 1},
            "getnetworkinfo": lambda: {"version": 270000, "connections": 10, "networkactive": True},
            "getmempoolinfo": lambda: {"loaded": True, "size": self.size, "bytes": 0, "usage": 0,
                                       "maxmempool": 300_000_000, "mempoolminfee": 0.00001, "minrelaytxfee": 0.00001},
            "getrawmempool": lambda: ({"txids": self.txids, "mempool_sequence": self.size} if params[:2] == (False, True)
                                      else {t: self._entry(i) for i, t in enumerate(self.txids)}),
            "getmempoolentry": lambda: self._entry(self.index[params[0]]),
            "getrawtransaction": lambda: self._tx(self.index[params[0]]),
        }
        return replies[method]()


def measure_mempool_rss_synthetic(data_dir: str | Path, size: int = 300_000) -> dict[str, Any]:
    """:func:`measure_mempool_rss` against a :class:`SyntheticMempoolNode` of ``size`` transactions (the node's
    txid list is allocated before the baseline, so ``rss_delta_mb`` is the collector's own)."""
    node = SyntheticMempoolNode(size)
    return {**measure_mempool_rss(node, data_dir), "synthetic_mempool": size}
