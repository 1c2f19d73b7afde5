"""The network watch loop: Bitcoin Core's RPC -> a telemetry sample -> the rule detectors -> the alert engine.

One ``poll_once`` reads getpeerinfo, getnetworkinfo, getchaintips, getmempoolinfo and getblockchaininfo; a
reply that fails (the node unreachable, an RPC error, a malformed reply) is passed on as missing, so the
telemetry of the others is still computed and the failure is one of the sample's problems. With a reply
missing the detectors do not run (they would read its features as zeros: "no connections"); the ``rpc``
condition says what failed instead, and every other condition stays as it was. Each complete poll also
feeds the trend forecasts (``forecast``: when the disk or the mempool will cross its threshold) and the
slow-arrival forecast (``arrival_forecast``: will the next block arrive late over this peer mix). The detectors'
memory is saved beside the engine's state (atomically), so a restarted watcher keeps counting how long a
condition has held.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.alerts import Alert, AlertEngine, Finding, Severity
from core.bitcoin.network.arrival_forecast import ArrivalForecaster, context
from core.bitcoin.network.detectors import MODEL_THRESHOLD, NetworkDetectors, dbcache_advice, model_finding
from core.bitcoin.network.forecast import Forecast, TrendForecaster
from core.bitcoin.network.propagation import BlockArrival, PropagationTracker
from core.bitcoin.network.telemetry import TelemetrySample, telemetry_sample
from core.bitcoin.network.telemetry_store import TelemetryStore
from core.bitcoin.network.watchlist import WatchList, check_watchlist
from core.bitcoin.rpc import BitcoinRPC, RPCError
from core.storage import atomic_write_json

_CALLS = {"peers": "getpeerinfo", "network": "getnetworkinfo", "chaintips": "getchaintips",
          "mempool": "getmempoolinfo", "blockchain": "getblockchaininfo"}


def node_time(peers: Any) -> float:
    """The node's clock as its getpeerinfo shows it (newest lastsend/lastrecv), else this machine's."""
    times = [float(p[k]) for p in peers or [] if isinstance(p, Mapping) for k in ("lastsend", "lastrecv")
             if isinstance(p.get(k), int | float) and not isinstance(p.get(k), bool)] if isinstance(peers, list) else []
    return max(times) if times else time.time()


@dataclass
class WatchResult:
    """One poll: the sample, every finding, and the alerts the engine sent."""

    sample: TelemetrySample
    findings: list[Finding]
    alerts: list[Alert]
    arrivals: list[BlockArrival] = field(default_factory=list)  # blocks timed from announcement to arrival


class NetworkWatch:
    """Polls one node and feeds the alert engine.

    ``now`` is the clock of the samples (UNIX seconds). By default it is the node's own: the newest
    ``lastsend``/``lastrecv`` among its peers (Core pings every peer every 2 minutes, so that is within
    seconds of the node's clock, and a skewed clock on the watcher's machine does not age the tip), else
    this machine's clock."""

    def __init__(self, rpc: BitcoinRPC, engine: AlertEngine, *, state_path: Path | None = None,
                 now: Callable[[], float] | None = None,
                 resources: Callable[[], Mapping[str, Any]] | None = None, watchlist: WatchList | None = None,
                 telemetry: TelemetryStore | None = None,
                 model: Callable[[np.ndarray], float] | None = None) -> None:
        self.rpc, self.engine, self.now, self.resources = rpc, engine, now, resources
        self.telemetry = telemetry  # where complete samples are kept (the network task's rows on this node)
        self.model = model  # the network-attack model: a telemetry vector -> P(attack)
        self.model_above = 0  # consecutive polls at or above its threshold
        self.watchlist = watchlist
        self.state_path = Path(state_path) if state_path is not None else None
        self.detectors = NetworkDetectors()
        self.forecaster = TrendForecaster()
        self.forecasts: list[Forecast] = []
        self.propagation = PropagationTracker()
        self.arrival_forecast = ArrivalForecaster()  # refitted from the tracker's history (saved with it)
        if self.state_path is not None and self.state_path.is_file():
            try:
                state = json.loads(self.state_path.read_text())
                self.detectors = NetworkDetectors.from_dict(state.get("detectors", {}))
                self.forecaster = TrendForecaster.from_dict(state.get("forecast", {}))
                self.propagation = PropagationTracker.from_dict(state.get("propagation", {}))
            except (OSError, ValueError, AttributeError, TypeError):
                # memory only: conditions start counting again, trends start again
                self.detectors, self.forecaster = NetworkDetectors(), TrendForecaster()
                self.propagation = PropagationTracker()
        self.previous: TelemetrySample | None = None

    def poll_once(self) -> WatchResult:
        replies: dict[str, Any] = {}
        failures: list[str] = []
        for name, method in _CALLS.items():
            try:
                replies[name] = self.rpc.call(method)
            except RPCError as exc:
                replies[name] = None
                failures.append(f"{method}: {exc}")
        now = self.now() if self.now is not None else node_time(replies["peers"])
        if self.previous is not None and now <= self.previous.time:
            now = self.previous.time + 1e-3  # never backwards: rates need elapsed time
        resources = self.resources() if self.resources else None
        sample = telemetry_sample(**replies, now=now, previous=self.previous, resources=resources)
        sample.problems[:0] = failures
        arrivals = self.propagation.observe(now, replies["peers"], replies["blockchain"],
                                            None if failures or self.previous is None else context(sample.vector))
        if failures:  # the detectors would read missing replies as zeros: their conditions stay as they were
            severity = Severity.CRITICAL if len(failures) == len(_CALLS) else Severity.WARNING
            findings = [Finding("rpc", "replies", severity, "Bitcoin Core does not answer"
                                if severity == Severity.CRITICAL else "Bitcoin Core answers only in part",
                                "; ".join(failures)[:500], float(len(failures)))]
        else:
            findings = [Finding("rpc", "replies", Severity.INFO, "Bitcoin Core answers", "", 0.0, active=False),
                        *self.detectors.evaluate(sample, rates_known=self.previous is not None)]
            behind = self.propagation.behind
            self.forecasts = self.forecaster.observe(sample, {} if behind is None else {"blocks_behind": float(behind)})
            findings += self.forecaster.findings(self.forecasts)
            findings += self.propagation.findings()
            self.arrival_forecast.update(self.propagation.history)
            findings.append(self.arrival_forecast.finding(sample.vector))
            findings.append(dbcache_advice(replies["blockchain"], resources))
            if self.model is not None and self.previous is not None:  # the model learned complete rows
                try:
                    score = float(self.model(sample.vector))
                except Exception as exc:  # noqa: BLE001 - a model that cannot score must not stop the watch
                    findings.append(Finding("network-model", "score", Severity.WARNING, "the network model cannot "
                                            "score this telemetry", f"{type(exc).__name__}: {exc}"[:300], 1.0))
                else:
                    self.model_above = self.model_above + 1 if score >= MODEL_THRESHOLD else 0
                    findings.append(model_finding(score, self.model_above))
            if self.telemetry is not None and self.previous is not None:  # rates known: a complete row
                try:
                    self.telemetry.append(sample.time, sample.vector)
                except sqlite3.Error as exc:  # a full or locked disk must not stop the watch
                    findings.append(Finding("rpc", "telemetry-store", Severity.WARNING, "telemetry not recorded",
                                            str(exc)[:300], 1.0))
        if self.watchlist is not None:  # the operator's payments: replaced or double-spent (its own RPC errors)
            findings += check_watchlist(self.rpc, self.watchlist)
        alerts = self.engine.submit(findings)
        if self.state_path is not None:
            atomic_write_json(self.state_path, {"detectors": self.detectors.to_dict(),
                                                "forecast": self.forecaster.to_dict(),
                                                "propagation": self.propagation.to_dict()})
        self.previous = sample
        return WatchResult(sample, findings, alerts, arrivals)


def watch_readiness(watch: NetworkWatch) -> tuple[float, str]:
    """The network watch as one AgentChecker component: 0 with a CRITICAL condition active, 0.5 with a
    WARNING one (or a component forecast to fail within 24 h), 1 otherwise; with the reason."""
    from core.bitcoin.network.forecast import readiness

    active = [c for c in watch.engine.conditions() if c.alerted and c.severity >= Severity.WARNING]
    worst = max(active, key=lambda c: c.severity, default=None)
    ready, why = readiness(watch.forecasts)
    if worst is not None:
        level = 0.0 if worst.severity >= Severity.CRITICAL else 0.5
        if level <= ready:
            ready, why = level, f"{worst.detector}/{worst.key}: {worst.title}"
    return ready, why
