"""A node's health, composed once for every role: its AgentChecker, PerformanceMonitor and probes.

The same :class:`NodeHealth` gates training in the ClientApp, answers ``/readyz`` on the node's health
endpoint and prints ``anya-fl check``. Components:

- ``data``: the node's dataset directory; readiness = share of tasks with training rows.
- ``resources``: free memory and disk (psutil, through the PerformanceMonitor); 1 when both are above
  their floors, else the smaller ratio to its floor.
- ``bitcoin.*`` (only with an RPC connection): Bitcoin Core's connection, chain sync, mempool, fee view
  and, optionally, UTXO set growth (:mod:`core.bitcoin.probes`). Sync carries the most weight: a node in
  initial block download is Unavailable and does not train.

Every probe reply is an input of its component (``record_input``, failed when the RPC call failed) and
sets its readiness (``update``). State persists through the one auto-save mechanism under
``<data-dir>/health/``.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.bitcoin.probes import NodeProbes
from core.bitcoin.rpc import BitcoinRPC, RPCConfig, operator_rpc_config
from core.collector.store import store_path
from core.errors import AnyaError, ConfigError
from core.health.agent_checker import AgentChecker, Assessment, SystemStage
from core.health.performance import PerformanceMonitor
from core.lightning.liquidity_splits import node_lightning_path

WEIGHTS = {"data": 2.0, "resources": 1.0, "bitcoin.sync": 3.0, "bitcoin.connection": 1.0,
           "bitcoin.mempool": 1.0, "bitcoin.fees": 0.5, "bitcoin.utxo": 0.5}


@dataclass(frozen=True)
class HealthSettings:
    """What a node's health is made of (from the node config or CLI flags)."""

    data_dir: Path | None = None
    rpc: RPCConfig | None = None
    min_stage: SystemStage = SystemStage.PRODUCTION
    state_dir: Path | None = None  # where the checker and monitor snapshots live (None: memory only)
    utxo_interval_s: float | None = None
    min_free_memory_mb: float = 512.0
    min_free_disk_gb: float = 1.0

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any], data_dir: Path | None,
                         min_stage: str | SystemStage = SystemStage.PRODUCTION) -> HealthSettings:
        """Settings from a Flower node config (``bitcoin-rpc-*`` keys) and the node's data directory."""
        rpc = None
        if node_config.get("bitcoin-rpc-url"):
            timeout = node_config.get("bitcoin-rpc-timeout", 10.0)
            try:
                timeout = float(timeout)
            except (TypeError, ValueError):
                raise ConfigError("bitcoin-rpc-timeout", f"{timeout!r} is not a number of seconds") from None
            # the password: bitcoin-rpc-password where a node config carries one, else ANYA_FL_RPC_PASSWORD
            rpc = operator_rpc_config(str(node_config["bitcoin-rpc-url"]), _opt_str(node_config.get("bitcoin-rpc-cookie")),
                                      _opt_str(node_config.get("bitcoin-rpc-user")), timeout_s=timeout,
                                      password=_opt_str(node_config.get("bitcoin-rpc-password")))
        # snapshots beside the node's dataset; none for a directory that does not exist (it fails "data")
        state_dir = Path(data_dir) / "health" if data_dir is not None and Path(data_dir).is_dir() else None
        return cls(data_dir=Path(data_dir) if data_dir is not None else None, rpc=rpc,
                   min_stage=SystemStage.parse(min_stage), state_dir=state_dir)


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _store_readiness(d: Path) -> tuple[float, str, dict[str, float]]:
    """A node with stores: ready once its collector store has something to train on (fee labels, or transactions
    for the anomaly model; fraud needs operator labels, and a node without them trains the other tasks), or, for
    the network and liquidity tasks alone, its watch's labelled telemetry or its Lightning history."""
    from core.collector.store import CollectorStore

    figures: dict[str, float] = {}
    if store_path(d).is_file():
        try:
            with CollectorStore(store_path(d), readonly=True) as st:
                counts = st.counts()
        except (AnyaError, OSError, sqlite3.Error) as exc:
            return 0.0, f"collector store in {d} is unreadable ({exc})", {}
        figures = {f"collector_{k}": float(v) for k, v in counts.items()}
        if counts["transactions"] or counts["fee_labels"]:
            reason = "" if counts["operator_labels"] else "fraud: no operator labels (the node trains fee and anomaly)"
            return 1.0, reason, figures
    from core.bitcoin.network.telemetry_store import network_splits, node_telemetry_path
    from core.lightning.liquidity_splits import node_lightning_path, trainable

    alone = []
    try:  # the watch's telemetry with the operator's incidents; the Lightning store's snapshots
        if network_splits(node_telemetry_path(d))[0] is not None:
            alone.append("network")
        if trainable(node_lightning_path(d))[0]:
            alone.append("liquidity")
    except (AnyaError, OSError, sqlite3.Error):
        pass
    chain = "the collector store has no transactions yet" if store_path(d).is_file() else "no collector store"
    if alone:
        return 1.0, f"only the {' and '.join(alone)} task{'s' if len(alone) > 1 else ''}: {chain}", figures
    return 0.0, f"no training data yet ({chain}; no labelled telemetry or Lightning history)", figures


class NodeHealth:
    """The node's checker, monitor and probes; :meth:`refresh` runs every probe once."""

    def __init__(self, settings: HealthSettings, *, rpc: BitcoinRPC | None = None) -> None:
        self.settings = settings
        sd = settings.state_dir
        self.checker = AgentChecker(autosave_path=sd / "agent-checker.json" if sd else None)
        self.monitor = PerformanceMonitor(autosave_path=sd / "performance.json" if sd else None,
                                          disk_path=str(settings.data_dir or "."))
        self.probes: NodeProbes | None = None
        if rpc is None and settings.rpc is not None:
            rpc = BitcoinRPC(settings.rpc)
        if rpc is not None:
            self.probes = NodeProbes(rpc, utxo_interval_s=settings.utxo_interval_s)
        if settings.data_dir is not None:
            self.checker.register("data", WEIGHTS["data"])
        self.checker.register("resources", WEIGHTS["resources"])
        if self.probes is not None:
            names = ["bitcoin.connection", "bitcoin.sync", "bitcoin.mempool", "bitcoin.fees"]
            if settings.utxo_interval_s is not None:
                names.append("bitcoin.utxo")
            for name in names:
                self.checker.register(name, WEIGHTS[name])
        self.probed = (["data"] if settings.data_dir is not None else []) + ["resources"] + (
            names if self.probes is not None else [])

    def _data_readiness(self) -> tuple[float, str, dict[str, float]]:
        d = self.settings.data_dir
        assert d is not None
        manifest = d / "manifest.json"
        if not manifest.is_file() and (store_path(d).is_file() or node_lightning_path(d).is_file()):
            return _store_readiness(d)
        if not manifest.is_file():
            return 0.0, f"{d} is not a dataset directory (no manifest.json) and holds no collector or Lightning store", {}
        try:
            tasks = json.loads(manifest.read_text())["tasks"]
            rows = {t: int(v["rows"]["train"]) for t, v in tasks.items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return 0.0, f"{manifest} is unreadable ({exc})", {}
        empty = sorted(t for t, n in rows.items() if n <= 0)
        ready = 1.0 - len(empty) / len(rows) if rows else 0.0
        reason = f"no training rows for {', '.join(empty)}" if empty else ("" if rows else "no tasks")
        return ready, reason, {f"{t}_train_rows": float(n) for t, n in rows.items()}

    def _resource_readiness(self, res: Mapping[str, float]) -> tuple[float, str]:
        s = self.settings
        mem = float(res.get("memory_available_mb", math.inf))
        disk = float(res.get("disk_free_gb", math.inf))
        ratios = {"memory": mem / s.min_free_memory_mb, "disk": disk / s.min_free_disk_gb}
        worst = min(ratios, key=ratios.get)
        ready = max(0.0, min(1.0, ratios[worst]))
        if ready >= 1.0:
            return 1.0, ""
        have = f"{mem:.0f} MB free memory" if worst == "memory" else f"{disk:.1f} GB free disk"
        need = f"{s.min_free_memory_mb:.0f} MB" if worst == "memory" else f"{s.min_free_disk_gb:g} GB"
        return ready, f"{have}, below the {need} floor"

    def refresh(self) -> Assessment:
        """Run every probe once, feed the checker, and return its assessment."""
        if self.settings.data_dir is not None:
            ready, reason, m = self._data_readiness()
            self.checker.record_input("data", m, error=ready == 0.0)
            self.checker.update("data", ready, reason, m, evaluate=False)
        res = self.monitor.sample_resources()
        ready, reason = self._resource_readiness(res)
        self.checker.record_input("resources", res)
        self.checker.update("resources", ready, reason, res, evaluate=False)
        if self.probes is not None:
            t0 = time.perf_counter()
            results = self.probes.probe_all()
            self.monitor.record("probe.bitcoin", time.perf_counter() - t0)
            for r in results:
                self.checker.record_input(r.component, r.metrics, error=r.error)
                self.checker.update(r.component, r.readiness, r.reason, r.metrics, evaluate=False)
        return self.checker.evaluate()

    def probe_round_failed(self, exc: BaseException) -> None:
        """A probe round ended in an unexpected error: the probed components' state is unknown, so not ready."""
        reason = f"health unknown: the last probe round failed ({type(exc).__name__}: {exc})"[:300]
        for name in self.probed:
            self.checker.update(name, 0.0, reason, evaluate=False)

    def gate(self) -> tuple[bool, str]:
        """Whether the node may train now (refreshes first); when not, why."""
        self.refresh()
        return self.checker.allows(self.settings.min_stage)

    def reply_metrics(self) -> dict[str, float]:
        """Health figures every ClientApp reply carries (Flower metric values are numbers)."""
        a = self.checker.evaluate()
        res = self.monitor.latest_resources() or {}
        out = {"health.stage": float(int(a.stage)), "health.readiness": float(a.readiness)}
        for key, name in (("rss_mb", "health.rss-mb"), ("cpu_percent", "health.cpu-percent"),
                          ("memory_available_mb", "health.memory-available-mb"),
                          ("disk_free_gb", "health.disk-free-gb")):
            if key in res and math.isfinite(float(res[key])):
                out[name] = float(res[key])
        return out

    def close(self) -> None:
        """Write the latest state (shutdown)."""
        self.checker.save_now()
