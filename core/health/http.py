"""The node's health endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (Prometheus), on FastAPI + uvicorn.

:func:`health_router` holds the three routes; :func:`health_app` is the node's small standalone app and
``anya-fl serve`` mounts the same router beside its prediction API. ``/metrics`` is rendered at each
scrape from the checker's and the monitor's reports by one collector (no second copy of the state).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from core.health.agent_checker import SystemStage
from core.health.node_health import NodeHealth

PREFIX = "anya_fl"


class HealthCollector:
    """Prometheus collector over a :class:`NodeHealth` (read at scrape time)."""

    def __init__(self, health: NodeHealth) -> None:
        self.health = health

    def collect(self) -> Iterator[Metric]:
        rep = self.health.checker.report()
        stage = GaugeMetricFamily(f"{PREFIX}_stage", "AgentChecker system stage (0 Unavailable .. 3 Release)")
        stage.add_metric([], float(SystemStage[rep["stage"].upper()]))
        yield stage
        yield GaugeMetricFamily(f"{PREFIX}_readiness", "Overall weighted readiness (0..1)", value=rep["readiness"])
        ready = GaugeMetricFamily(f"{PREFIX}_component_readiness", "Effective readiness per component",
                                  labels=["component"])
        inputs = CounterMetricFamily(f"{PREFIX}_component_inputs", "Inputs recorded per component",
                                     labels=["component"])
        errors = CounterMetricFamily(f"{PREFIX}_component_errors", "Failed inputs per component",
                                     labels=["component"])
        for c in rep["components"]:
            ready.add_metric([c["name"]], c["readiness"])
            inputs.add_metric([c["name"]], c["inputs"])
            errors.add_metric([c["name"]], c["errors"])
        yield from (ready, inputs, errors)
        mon = self.health.monitor.report()
        saves = CounterMetricFamily(f"{PREFIX}_autosave_snapshots", "Auto-save snapshots taken", labels=["owner"])
        writes = CounterMetricFamily(f"{PREFIX}_autosave_writes", "Auto-save snapshots written to disk",
                                     labels=["owner"])
        for owner, info in (("agent_checker", rep["autosave"]), ("performance_monitor", mon["autosave"])):
            saves.add_metric([owner], info["saves"])
            writes.add_metric([owner], info["writes"])
        yield from (saves, writes)
        res = GaugeMetricFamily(f"{PREFIX}_resource", "Latest resource sample (psutil)", labels=["name"])
        for key, value in (mon.get("resources") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                res.add_metric([key], float(value))
        yield res
        lat = GaugeMetricFamily(f"{PREFIX}_operation_latency_seconds", "Operation latency percentiles",
                                labels=["operation", "quantile"])
        count = CounterMetricFamily(f"{PREFIX}_operation", "Operations recorded", labels=["operation"])
        for op, st in mon["operations"].items():
            count.add_metric([op], st["count"])
            for q in ("p50", "p95", "p99"):
                v = st.get(f"{q}_ms")
                if v is not None:
                    lat.add_metric([op, f"0.{q[1:]}"], v / 1000.0)
        yield from (lat, count)


def health_router(health: NodeHealth, *, refresh: Callable[[], Any] | None = None,
                  collectors: Iterable[Any] = ()) -> APIRouter:
    """``/healthz`` (alive), ``/readyz`` (200 at or above the minimum stage, else 503 naming the failing
    components) and ``/metrics``. ``refresh`` (optional) re-probes before answering ``/readyz``;
    ``collectors`` join the one registry (the network watch's ``core.alerts.AlertCollector``)."""
    router = APIRouter(tags=["health"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HealthCollector(health))
    for collector in collectors:
        registry.register(collector)

    @router.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz", summary="Readiness: stage at or above the minimum (else 503)")
    def readyz() -> JSONResponse:
        if refresh is not None:
            refresh()
        a = health.checker.evaluate()
        need = health.settings.min_stage
        body: dict[str, Any] = {"stage": a.stage.label, "readiness": round(a.readiness, 4),
                                "min_stage": need.label, "ready": a.stage >= need}
        if a.stage < need:
            body["failing"] = [{"component": c.name, "readiness": round(c.readiness, 4), "reason": c.reason}
                               for c in a.failing(need, health.checker.thresholds)]
        return JSONResponse(body, status_code=200 if a.stage >= need else 503)

    @router.get("/metrics", summary="Prometheus exposition", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return router


def health_app(health: NodeHealth, *, refresh: Callable[[], Any] | None = None,
               collectors: Iterable[Any] = ()) -> FastAPI:
    """The node's standalone health endpoint."""
    app = FastAPI(title="anya-fl node health", version="1")
    app.include_router(health_router(health, refresh=refresh, collectors=collectors))
    return app


class BackgroundServer:
    """A uvicorn server in a daemon thread (the node's health endpoint); ``stop()`` shuts it down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="anya-fl-http", daemon=True)

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start (port in use?)")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


log = logging.getLogger(__name__)


class Periodic:
    """Call ``fn`` every ``interval_s`` seconds in a daemon thread (first call at once unless ``delay_first``)."""

    def __init__(self, fn: Callable[[], Any], interval_s: float, name: str, *, delay_first: bool = False,
                 on_error: Callable[[BaseException], Any] | None = None) -> None:
        self.fn = fn
        self.on_error = on_error
        self.interval_s = interval_s
        self.delay_first = delay_first
        self._stop = threading.Event()
        self.failures = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        if self.delay_first and self._stop.wait(self.interval_s):
            return
        while not self._stop.is_set():
            try:
                self.fn()
            except Exception as exc:  # noqa: BLE001 - one bad round (a bug, an odd reply) must not end the loop
                self.failures += 1
                log.exception("%s: this round failed; the next one runs in %g s", self.thread.name, self.interval_s)
                if self.on_error is not None:
                    self.on_error(exc)
            self._stop.wait(self.interval_s)

    def start(self) -> Periodic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)


def probe_loop(health: NodeHealth, interval_s: float = 15.0) -> Periodic:
    """Refresh a NodeHealth every ``interval_s`` seconds (the node's probes)."""
    return Periodic(health.refresh, interval_s, "anya-fl-probes", on_error=health.probe_round_failed)
