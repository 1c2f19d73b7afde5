"""`anya-fl bench network`: the network watch's rule detectors against the simulated node's P2P scenarios.

Per scenario a fresh simulated node (manual clock) is watched a poll per simulated minute: 10 minutes clean,
then the scenario starts, and the watch runs until its detector raises (or three simulated hours pass). The
node's own truth says when the scenario started, so the time to detect is measured, not assumed. The
double spend replaces a payment on the watch list (``anya-fl watch add``) with a conflicting transaction; the RBF
replacement replaces it with the payer's fee bump (the same outputs, a smaller change), which must be reported
as a WARNING and never as CRITICAL: that scenario is watched on until the fee bump confirms, and any
``double-spend`` alert above its ceiling (``CEILING``) makes it undetected. The mempool flood fills the default
300 MB mempool with 1 sat/vB transactions. Slow propagation holds every block mined in a 2-hour window back
``SLOW_DELAY_S`` (its header arrives at once): the ``propagation`` detector must warn within two polls of the third
such block's arrival, and each block the watch timed (``WatchResult.arrivals``) is scored against the node's truth
(that scenario is watched on until the window ends): the measured delay must be within one poll of the true one.
A clean week: a simulated node whose chain spans a week, polled every 10 simulated minutes; every alert above INFO
is a false alarm. Keys: ``network.<scenario>.detected`` (1/0), ``network.<scenario>.minutes_to_detect``,
``network.<scenario>.within_stated`` (1/0), ``network.slow_propagation.delay_error_s`` (the mean absolute error of
the measured delays), ``network.clean_week.false_alarms``, ``network.clean_week.info``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from anya_fl.simnode import GENESIS_EPOCH, SimNode, SimNodeConfig
from anya_fl.simnode.config import MB, USAGE_PER_VBYTE
from core.alerts import Alert, AlertEngine, Severity
from core.bitcoin.network.detectors import CHAIN_SYNC_TIMEOUT_S, SUSTAINED_S
from core.bitcoin.network.forecast import MIN_SPAN_S
from core.bitcoin.network.propagation import BlockArrival
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
SLOW_DELAY_S = 150.0  # slow propagation: each block joins the node's chain 2.5 minutes after it is mined, not a
# whole number of polls (a multiple of the poll would be measured exactly and hide the poll's granularity)
SLOW_WINDOW_S = 7200.0  # ... for 2 hours (at about 8 simulated minutes a block, the third one is well inside)

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
    # blocks held back SLOW_DELAY_S (>= SLOW_BLOCK_S + a poll, so every one is timed as slow): the detector needs 3
    # slow blocks, so it can warn once the third block mined in the window has arrived (the node's truth says when)
    "slow_propagation": ("propagation", Severity.WARNING,
                         lambda n, t: n.inject_slow_propagation(t, delay_s=SLOW_DELAY_S, duration_s=SLOW_WINDOW_S),
                         2 * POLL_S, "the third block mined in the window arrives"),
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


def _window_blocks(node: SimNode, kind: str) -> list[dict[str, Any]]:
    """The truth's blocks of the first ``kind`` event (slow propagation: height, mined, arrived), else []."""
    return next((e["blocks"] for e in node.truth.network_events(detail=True) if e["kind"] == kind), [])


def _noticeable(name: str, node: SimNode, t0: float) -> float:
    """The first moment the node could notice scenario ``name`` started at ``t0`` (its stated time counts from it)."""
    if name == "partition":  # the first block the node misses
        return min((float(t) for t in node.chain.block_time if t > t0), default=t0)
    if name == "slow_propagation":  # the third block mined in the window arrives
        blocks = _window_blocks(node, name)
        return blocks[2]["arrived"] if len(blocks) >= 3 else float("inf")
    return t0


def delay_errors(node: SimNode, timed: Iterable[BlockArrival]) -> list[float]:
    """|measured - true delay| (s) of each timed block: the true delay is the node's truth (arrived - mined) for a
    block mined in a slow-propagation window, else 0 (it arrives as it is mined)."""
    truth = {b["height"]: b["arrived"] - b["mined"] for b in _window_blocks(node, "slow_propagation")}
    return [abs(a.delay_s - truth.get(a.height, 0.0)) for a in timed]


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
            timed: list[BlockArrival] = []  # the blocks the watch timed from the scenario's start
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
                result = watch.poll_once()
                timed += result.arrivals
                alerts = [a for a in result.alerts if a.detector == detector and not a.resolved]
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
            if name == "slow_propagation":  # watched on until every block of the window has arrived, to score delays
                while node.now() < min(t0 + SLOW_WINDOW_S + 2 * POLL_S, t0 + LIMIT_S):
                    node.advance(POLL_S)
                    timed += watch.poll_once().arrivals
            noticeable = _noticeable(name, node, t0)
            seconds = None if first is None else first.time - (GENESIS_EPOCH + t0)
            after = None if first is None else first.time - (GENESIS_EPOCH + noticeable)
            detected = first is not None and not over
            delays: dict[str, Any] = {}
            if name == "slow_propagation":
                errors = delay_errors(node, timed)
                delays = {"delay_blocks": len(errors), "delay_error_s": sum(errors) / len(errors) if errors else None,
                          "delay_max_error_s": max(errors, default=None),
                          "delays_within_poll": bool(errors) and max(errors) <= POLL_S}
            return {**delays, "detected": detected, "minutes_to_detect": None if seconds is None else seconds / 60,
                    "within_stated": detected and after is not None and after <= stated_s,
                    "stated_minutes": stated_s / 60, "stated_from": since,
                    "noticeable_minutes": (noticeable - t0) / 60, "alerts_before": len(early),
                    "above_ceiling": [f"{a.severity.name}: {a.title}" for a in over],
                    "events": node.truth.network_events()}
    finally:
        node.stop()


def run_clean_week(seed: int = 0, transactions: int = WEEK_TRANSACTIONS,
                   step: Callable[[float], None] | None = None,
                   model: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """A week of a clean node, polled every 10 simulated minutes: alerts above INFO and INFO ones; with
    ``model`` (the network-attack model in the watch, as `anya-fl watch --registry`) also its highest score."""
    node = _node(seed, transactions)
    try:
        span = float(node.chain.block_time[-1]) - node.now() - 3600.0  # stop an hour before the chain's last block
        scores: list[float] = []
        with tempfile.TemporaryDirectory(prefix="anya-fl-network-") as d:
            watch = _watch(node, Path(d))
            watch.model = model
            alerts = list(watch.poll_once().alerts)
            polls = int(min(span, WEEK_S) // WEEK_POLL_S)
            for i in range(polls):
                node.advance(WEEK_POLL_S)
                result = watch.poll_once()
                alerts += result.alerts
                scores += [f.value for f in result.findings if f.detector == "network-model" and f.key == "attack"]
                if step is not None:
                    step((i + 1) / polls)
        raised = [a for a in alerts if not a.resolved]
        return {"simulated_days": polls * WEEK_POLL_S / 86400, "false_alarms": sum(a.severity > Severity.INFO
                                                                                   for a in raised),
                "info": sum(a.severity == Severity.INFO for a in raised),
                "by_detector": sorted({f"{a.detector}:{a.severity.name}" for a in raised}),
                "model_max_score": max(scores) if scores else None, "model_polls": len(scores)}
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
        if "delay_error_s" in r:  # a measured delay is known to within a poll
            out[f"network.{name}.delay_error_s"] = {"value": r["delay_error_s"], "unit": "s", "target": POLL_S}
    out["network.clean_week.false_alarms"] = {"value": float(week["false_alarms"]), "unit": "alerts",
                                              "target": 0.0}
    out["network.clean_week.info"] = {"value": float(week["info"]), "unit": "alerts", "target": None}
    return out
