"""Health probes: Bitcoin Core RPC replies -> per-component readiness (0..1) with a one-line reason.

``NodeProbes.probe_all`` checks, in order: ``bitcoin.connection`` (getnetworkinfo), ``bitcoin.sync``
(getblockchaininfo), ``bitcoin.mempool`` (getmempoolinfo), ``bitcoin.fees`` (estimatesmartfee 6) and, when
enabled, ``bitcoin.utxo`` (gettxoutsetinfo, rate-limited because it scans the UTXO set). A failed call gives
its component readiness 0 and ``error=True``; once the node proves unreachable (connection refused, auth
refused, timeout) the remaining components fail with the same reason instead of waiting on their own calls.

``recent_chain_rows`` reads the last blocks and the mempool and turns them into feature rows through the
project's one parser (``core.bitcoin.parsing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.bitcoin.features import MEMPOOL_SCHEMA, SATS_PER_BTC, TX_SCHEMA
from core.bitcoin.parsing import parse_block, parse_mempool
from core.bitcoin.rpc import BitcoinRPC, RPCAuthError, RPCConnectionError, RPCError, RPCTimeoutError
from core.errors import ConfigError, FeatureError

__all__ = ["COMPONENTS", "FEE_CONF_TARGET", "NodeProbes", "ProbeResult", "recent_chain_rows"]

COMPONENTS = ("bitcoin.connection", "bitcoin.sync", "bitcoin.mempool", "bitcoin.fees", "bitcoin.utxo")
FEE_CONF_TARGET = 6
SYNCED_PROGRESS = 0.9999  # verificationprogress at or above this counts as fully verified
MAX_HEADER_LAG = 2  # blocks behind the best header that still count as in sync
MEMPOOL_FULL = 0.95  # usage / maxmempool above this is reported as nearly full
# failures that say the node itself is unreachable: the remaining calls of a probe round would fail alike
_NODE_DOWN = (RPCConnectionError, RPCAuthError, RPCTimeoutError)


@dataclass(frozen=True)
class ProbeResult:
    """Readiness of one component: 1.0 ready, 0.0 not; ``reason`` is "" when fully ready."""

    component: str
    readiness: float
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: bool = False  # True when the RPC call failed


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _failed(component: str, exc: RPCError) -> ProbeResult:
    return ProbeResult(component, 0.0, _one_line(str(exc)), {}, error=True)


class NodeProbes:
    """Probe a Bitcoin Core node's components through ``rpc``; ``clock`` rate-limits the UTXO probe."""

    def __init__(
        self,
        rpc: BitcoinRPC,
        *,
        utxo_interval_s: float | None = None,
        min_connections: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if utxo_interval_s is not None and not utxo_interval_s >= 0:
            raise ConfigError("probes.utxo_interval_s", f"{utxo_interval_s!r} must be >= 0 seconds or None")
        if isinstance(min_connections, bool) or not isinstance(min_connections, int) or min_connections < 1:
            raise ConfigError("probes.min_connections", f"{min_connections!r} must be an integer >= 1")
        self.rpc = rpc
        self.utxo_interval_s = utxo_interval_s
        self.min_connections = min_connections
        self.clock = clock
        self._utxo_last: ProbeResult | None = None
        self._utxo_called_at: float | None = None
        self._utxo_prev: tuple[int, int] | None = None  # (height, txouts) of the last successful reply
        self._utxo_growth = 0.0

    def probe_all(self) -> list[ProbeResult]:
        """One ProbeResult per component, in ``COMPONENTS`` order (``bitcoin.utxo`` only when enabled)."""
        probes: list[tuple[str, Callable[[], ProbeResult]]] = [
            ("bitcoin.connection", self.probe_connection),
            ("bitcoin.sync", self.probe_sync),
            ("bitcoin.mempool", self.probe_mempool),
            ("bitcoin.fees", self.probe_fees),
        ]
        if self.utxo_interval_s is not None:
            probes.append(("bitcoin.utxo", self.probe_utxo))
        results: list[ProbeResult] = []
        down: RPCError | None = None
        for component, probe in probes:
            if down is not None:
                results.append(_failed(component, down))
                continue
            try:
                results.append(probe())
            except _NODE_DOWN as exc:
                down = exc
                results.append(_failed(component, exc))
            except RPCError as exc:
                results.append(_failed(component, exc))
        return results

    # ---- one probe per component (each raises RPCError; probe_all turns it into a failed result)

    def probe_connection(self) -> ProbeResult:
        """Peers: 0 without network activity or peers, else connections / min_connections (capped at 1)."""
        info = self.rpc.getnetworkinfo()
        conns = info["connections"]
        metrics = {"connections": float(conns), "version": float(info["version"])}
        for key in ("connections_in", "connections_out"):
            if key in info:
                metrics[key] = float(info[key])
        if not info["networkactive"]:
            return ProbeResult("bitcoin.connection", 0.0, "network activity is disabled (networkactive false)",
                               metrics)
        if conns == 0:
            return ProbeResult("bitcoin.connection", 0.0, "no peer connections", metrics)
        readiness = min(1.0, conns / self.min_connections)
        reason = "" if readiness >= 1.0 else f"{conns} peer connections, fewer than {self.min_connections}"
        return ProbeResult("bitcoin.connection", readiness, reason, metrics)

    def probe_sync(self) -> ProbeResult:
        """Chain sync: 0 during IBD, 0.5 when blocks lag headers, else verificationprogress (1 when ~done)."""
        info = self.rpc.getblockchaininfo()
        blocks, headers = info["blocks"], info["headers"]
        progress = float(info["verificationprogress"])
        ibd = info["initialblockdownload"]
        metrics = {"blocks": float(blocks), "headers": float(headers), "verificationprogress": progress,
                   "initialblockdownload": float(ibd)}
        if ibd:
            reason = (f"initial block download: {progress * 100:.1f} % verified, "
                      f"block {blocks} of {headers} headers")
            return ProbeResult("bitcoin.sync", 0.0, reason, metrics)
        if headers - blocks > MAX_HEADER_LAG:
            reason = f"{headers - blocks} blocks behind the best header (block {blocks} of {headers} headers)"
            return ProbeResult("bitcoin.sync", 0.5, reason, metrics)
        if progress >= SYNCED_PROGRESS:
            return ProbeResult("bitcoin.sync", 1.0, "", metrics)
        readiness = min(max(progress, 0.0), 1.0)
        return ProbeResult("bitcoin.sync", readiness, f"verification progress {progress * 100:.2f} %", metrics)

    def probe_mempool(self) -> ProbeResult:
        """Mempool: 0 until loaded, else 1; a mempool over 95 % of maxmempool is named but not held against the node.

        Anyone can fill every node's mempool by broadcasting transactions (and the default 300 MB one is
        full for weeks at a time on mainnet): that is the network's state, not this node's fault.
        """
        info = self.rpc.getmempoolinfo()
        usage, cap = info["usage"], info["maxmempool"]
        metrics = {"size": float(info["size"]), "bytes": float(info["bytes"]), "usage": float(usage),
                   "maxmempool": float(cap), "mempoolminfee": float(info["mempoolminfee"])}
        if not info["loaded"]:
            return ProbeResult("bitcoin.mempool", 0.0, "mempool not loaded yet", metrics)
        if cap > 0 and usage / cap > MEMPOOL_FULL:
            reason = f"mempool {usage / cap * 100:.0f} % full (usage {usage:,} of maxmempool {cap:,} bytes)"
            return ProbeResult("bitcoin.mempool", 1.0, reason, metrics)
        return ProbeResult("bitcoin.mempool", 1.0, "", metrics)

    def probe_fees(self) -> ProbeResult:
        """Fee estimation: 1 with a feerate for 6 blocks, 0.5 when Core has no estimate yet."""
        reply = self.rpc.estimatesmartfee(FEE_CONF_TARGET)
        metrics = {"blocks": float(reply["blocks"])}
        if "feerate" in reply:
            metrics["feerate_sat_vb"] = float(reply["feerate"]) * SATS_PER_BTC / 1000
            return ProbeResult("bitcoin.fees", 1.0, "", metrics)
        errors = "; ".join(reply.get("errors", [])) or "no fee estimate"
        return ProbeResult("bitcoin.fees", 0.5, _one_line(f"no fee estimate for {FEE_CONF_TARGET} blocks: {errors}"),
                           metrics)

    def probe_utxo(self) -> ProbeResult:
        """UTXO set: gettxoutsetinfo at most once per ``utxo_interval_s``; the last result in between."""
        now = self.clock()
        interval = self.utxo_interval_s or 0.0
        if self._utxo_last is not None and self._utxo_called_at is not None and now - self._utxo_called_at < interval:
            return self._utxo_last
        self._utxo_called_at = now
        try:
            info = self.rpc.gettxoutsetinfo()
        except RPCError as exc:
            self._utxo_last = _failed("bitcoin.utxo", exc)
            raise
        height, txouts = info["height"], info["txouts"]
        if self._utxo_prev is not None and height > self._utxo_prev[0]:
            self._utxo_growth = (txouts - self._utxo_prev[1]) / (height - self._utxo_prev[0])
        self._utxo_prev = (height, txouts)
        metrics = {"txouts": float(txouts), "total_amount": float(info["total_amount"]), "height": float(height),
                   "txouts_growth_per_block": float(self._utxo_growth)}
        self._utxo_last = ProbeResult("bitcoin.utxo", 1.0, "", metrics)
        return self._utxo_last


def recent_chain_rows(rpc: BitcoinRPC, blocks: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(TX_SCHEMA rows of the last ``blocks`` blocks' non-coinbase transactions, one MEMPOOL_SCHEMA row).

    Reads getblockcount, getblockhash and getblock <hash> 2 per block, getmempoolinfo (for the min relay fee)
    and getrawmempool true, and parses them with ``parse_block`` / ``parse_mempool``. Shapes: (n, 22) and
    (1, 12), float32. A reply that does not fit the schema raises FeatureError naming the block or mempool.
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise ConfigError("blocks", f"{blocks!r} must be an integer >= 1")
    tip = rpc.getblockcount()
    parts = [np.empty((0, TX_SCHEMA.width), dtype=np.float32)]
    for height in range(max(0, tip - blocks + 1), tip + 1):
        block = rpc.getblock(rpc.getblockhash(height), 2)
        try:
            parts.append(parse_block(block))
        except FeatureError as exc:
            raise FeatureError(f"block[{height}].{exc.field}", exc.problem) from exc
    info = rpc.getmempoolinfo()
    entries = rpc.getrawmempool(True)
    try:
        mempool = parse_mempool(entries, info)
    except FeatureError as exc:
        raise FeatureError(f"mempool.{exc.field}", exc.problem) from exc
    return np.concatenate(parts), mempool.reshape(1, MEMPOOL_SCHEMA.width)
