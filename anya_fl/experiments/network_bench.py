"""`anya-fl bench network`: the network watch's rule detectors against the simulated node's P2P scenarios.

Per scenario a fresh simulated node (manual clock) is watched a poll per simulated minute: 10 minutes clean,
then the scenario starts, and the watch runs until its detector raises (or three simulated hours pass). The
node's own truth says when the scenario started, so the time to detect is measured, not assumed. The
double spend replaces a payment on the watch list (``anya-fl watch add``) with a conflicting transaction; the RBF
replacement replaces it with the payer's fee bump (the same outputs, a smaller change), which must be reported
as a WARNING and never as CRITICAL: that scenario is watched on until the fee bump confirms, and any
``double-spend`` alert above its ceiling (``CEILING``) makes it undetected. The mempool flood fills the default
300 MB mempool with 1 sat/vB transactions. A clean week: a simulated node whose chain spans a week, polled every 10
simulated minutes; every alert above INFO is a false alarm. Keys: ``network.<scenario>.detected`` (1/0), ``network.<scenario>.minutes_to_detect``,
``network.<scenario>.within_stated`` (1/0), ``network.clean_week.false_alarms``, ``network.clean_week.info``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anya_fl.simnode import GENESIS_EPOCH, SimNode, SimNodeConfig
from anya_fl.simnode.config import MB, USAGE_PER_VBYTE
from core.alerts import Alert, AlertEngine, Severity
from core.bitcoin.network.detectors import CHAIN_SYNC_TIMEOUT_S, SUSTAINED_S
from core.bitcoin.network.forecast import MIN_SPAN_S
from core.bitcoin.network.watch import NetworkWatch
from core.bitcoin.network.watchlist import WatchList
from core.bitcoin.rpc import BitcoinRPC, RPCConfig

POLL_S = 60.0
WARMUP_S = 600.0
LIMIT_S = 3 * 3600.0
WEEK_S = 7 * 24 * 3600.0
WEEK_POLL_S = 600.0
WEEK_TRANSACTIONS = 2_000_000  # about 18 simulated hours per 200,000 transactions: a week and some
FLOOD_VB_PER_S = 50_000.0  # the mempool flood's arrivals (SimNode.inject_mempool_flood's default)
FLOOD_MAXMEMPOOL_MB = 300.0  # the bench nodes' -maxmempool (Core's default)

# scenario -> (detector, severity it must reach, how it starts, the stated time to detect in seconds after
# the moment the node could first notice it, and that moment)
Start = Callable[[SimNode, float], None]
SCENARIOS: dict[str, tuple[str, Severity, Start, float, str]] = {
    "eclipse": ("eclipse", Severity.WARNING, lambda n, t: n.inject_eclipse(t), POLL_S, "the start"),
    "inbound_flood": ("inbound-flood", Severity.WARNING, lambda n, t: n.inject_inbound_flood(t), POLL_S,
                      "the start"),
    "addr_spam": ("addr-spam", Severity.WARNING, lambda n, t: n.inject_addr_spam(t), SUSTAINED_S + 2 * POLL_S,
                  "the start"),
    "partition": ("partition", Severity.CRITICAL, lambda n, t: n.inject_partition(t, duration_s=5400.0),
                  CHAIN_SYNC_TIMEOUT_S + 2 * POLL_S, "the first block the node misses"),
    "stale_fork": ("fork", Severity.WARNING, lambda n, t: n.inject_stale_fork(t), POLL_S, "the start"),
    # the watched payment (the mempool's first transaction, on the watch list) replaced by a conflicting one
    "double_spend": ("double-spend", Severity.CRITICAL, lambda n, t: None, POLL_S, "the start"),
    # the same payment fee-bumped by the payer: a WARNING at the first poll, never CRITICAL (CEILING)
    "rbf_replacement": ("double-spend", Severity.WARNING, lambda n, t: None, POLL_S, "the start"),
    # FLOOD_VB_PER_S of 1 sat/vB transactions: 90 % of the default 300 MB maxmempool (at the simulator's 3 bytes of
    # usage per vbyte) is reached within 0.9 x maxmempool / (3 x the rate) = 30 min whatever else is in the mempool
    "mempool_flood": ("mempool-full", Severity.WARNING,
                      lambda n, t: n.inject_mempool_flood(t, vbytes_per_s=FLOOD_VB_PER_S, duration_s=7200.0),
                      0.9 * FLOOD_MAXMEMPOOL_MB * MB / (USAGE_PER_VBYTE * FLOOD_VB_PER_S) + 2 * POLL_S,
                      "the start"),
    # the node's disk (the watch's resources) losing 5 GB an hour from 40 GB free: the forecast warns a day
    # ahead once it has two hours of points (the watch started 10 minutes before the disk began to fill)
    "disk_filling": ("forecast", Severity.WARNING, lambda n, t: None, MIN_SPAN_S - WARMUP_S + 2 * POLL_S,
                     "the start"),
}
DISK_START_GB, DISK_FILL_GB_PER_S = 40.0, 5.0 / 3600
# scenario -> the highest severity its detector may reach; above it the scenario counts as not detected
CEILING: dict[str, Severity] = {"rbf_replacement": Severity.WARNING}
# scenarios replacing the watched payment, and how
REPLACE: dict[str, Callable[[SimNode, str, float], str]] = {
    "double_spend": lambda n, txid, t: n.inject_double_spend(txid, t),
    "rbf_replacement": lambda n, txid, t: n.inject_rbf_bump(txid, t),
}


def _watch(node: SimNode, state: Path) -> NetworkWatch:
    rpc = BitcoinRPC(RPCConfig(url=node.url, user="bench", password="bench", retries=0, timeout_s=30))
    clock = lambda: GENESIS_EPOCH + node.now()  # noqa: E731 - the simulated node's clock
    return NetworkWatch(rpc, AlertEngine(state / "alerts.json", [], now=clock), state_path=state / "detectors.json",
                        now=clock)


def _node(seed: int, transactions: int) -> SimNode:
    return SimNode(SimNodeConfig(seed=seed, transactions=transactions, speed=0.0, rpcuser="bench",
                                 rpcpassword="bench", start_block=2, maxmempool_mb=FLOOD_MAXMEMPOOL_MB)).start(port=0)


def run_scenario(name: str, seed: int = 0) -> dict[str, Any]:
    """One scenario on a fresh node: detected, minutes from the start, whether within the stated time."""
    detector, severity, start, stated_s, since = SCENARIOS[name]
    node = _node(seed, 20_000)
    try:
        with tempfile.TemporaryDirectory(prefix="anya-fl-network-") as d:
            watch = _watch(node, Path(d))
            fill_from: list[float] = []
            if name == "disk_filling":  # the resources the watch reads: a disk that starts filling at t0
                watch.resources = lambda: {"disk_free_gb": DISK_START_GB - DISK_FILL_GB_PER_S * max(
                    0.0, node.now() - fill_from[0]) if fill_from else DISK_START_GB}
            watch.poll_once()
            early = []
            for _ in range(int(WARMUP_S // POLL_S)):
                node.advance(POLL_S)
                early += [a for a in watch.poll_once().alerts if a.severity > Severity.INFO]
            t0 = node.now() + 1.0
            fill_from.append(t0)
            if name in REPLACE:
                txid = watch.rpc.call("getrawmempool")[0]
                watch.watchlist = WatchList(Path(d) / "watchlist.json")
                watch.watchlist.add(txid)
                watch.poll_once()  # seen pending first, as a merchant's payment would be
                REPLACE[name](node, txid, t0)
            else:
                start(node, t0)
            ceiling = CEILING.get(name)
            first = None
            over: list[Alert] = []  # the detector's alerts above the scenario's ceiling
            while first is None and node.now() < t0 + LIMIT_S:
                node.advance(POLL_S)
                alerts = [a for a in watch.poll_once().alerts if a.detector == detector and not a.resolved]
                over += [a for a in alerts if ceiling is not None and a.severity > ceiling]
                first = next((a for a in alerts if a.severity >= severity), None)
            if ceiling is not None:  # watched on until the replacement confirms (and the watch list says so)
                height = next((e["height"] for e in node.truth.network_events(detail=True)
                               if e["kind"] == name), None)
                b = None if height is None else height - node.blocks.first
                until = t0 + LIMIT_S if b is None or b >= node.chain.n_blocks else \
                    min(float(node.chain.block_time[b]) + 2 * POLL_S, t0 + LIMIT_S)
                while node.now() < until:
                    node.advance(POLL_S)
                    over += [a for a in watch.poll_once().alerts if a.detector == detector and not a.resolved
                             and a.severity > ceiling]
            noticeable = t0
            if name == "partition":
                noticeable = min((float(t) for t in node.chain.block_time if t > t0), default=t0)
            seconds = None if first is None else first.time - (GENESIS_EPOCH + t0)
            after = None if first is None else first.time - (GENESIS_EPOCH + noticeable)
            detected = first is not None and not over
            return {"detected": detected, "minutes_to_detect": None if seconds is None else seconds / 60,
                    "within_stated": detected and after is not None and after <= stated_s,
                    "stated_minutes": stated_s / 60, "stated_from": since, "alerts_before": len(early),
                    "above_ceiling": [f"{a.severity.name}: {a.title}" for a in over],
                    "events": node.truth.network_events()}
    finally:
        node.stop()


def run_clean_week(seed: int = 0, transactions: int = WEEK_TRANSACTIONS,
                   step: Callable[[float], None] | None = None) -> dict[str, Any]:
    """A week of a clean node, polled every 10 simulated minutes: alerts above INFO and INFO ones."""
    node = _node(seed, transactions)
    try:
        span = float(node.chain.block_time[-1]) - node.now() - 3600.0  # stop an hour before the chain's last block
        with tempfile.TemporaryDirectory(prefix="anya-fl-network-") as d:
            watch = _watch(node, Path(d))
            alerts = list(watch.poll_once().alerts)
            polls = int(min(span, WEEK_S) // WEEK_POLL_S)
            for i in range(polls):
                node.advance(WEEK_POLL_S)
                alerts += watch.poll_once().alerts
                if step is not None:
                    step((i + 1) / polls)
        raised = [a for a in alerts if not a.resolved]
        return {"simulated_days": polls * WEEK_POLL_S / 86400, "false_alarms": sum(a.severity > Severity.INFO
                                                                                   for a in raised),
                "info": sum(a.severity == Severity.INFO for a in raised),
                "by_detector": sorted({f"{a.detector}:{a.severity.name}" for a in raised})}
    finally:
        node.stop()


def bench_metrics(scenarios: dict[str, dict[str, Any]], week: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark keys, in `anya-fl bench --json`'s shape."""
    out: dict[str, dict[str, Any]] = {}
    for name, r in scenarios.items():
        out[f"network.{name}.detected"] = {"value": float(r["detected"]), "unit": "", "target": 1.0}
        out[f"network.{name}.minutes_to_detect"] = {"value": r["minutes_to_detect"], "unit": "min",
                                                    "target": r["stated_minutes"]}
        out[f"network.{name}.within_stated"] = {"value": float(r["within_stated"]), "unit": "", "target": 1.0}
    out["network.clean_week.false_alarms"] = {"value": float(week["false_alarms"]), "unit": "alerts",
                                              "target": 0.0}
    out["network.clean_week.info"] = {"value": float(week["info"]), "unit": "alerts", "target": None}
    return out
