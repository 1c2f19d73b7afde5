"""Predictive component management: when will a component cross its threshold, at the current trend?

A least-squares line through the last ``window_s`` (6 h; at least 2 h of points) of telemetry per tracked
quantity gives the time left until it crosses its threshold (disk below 1 GB free; the mempool at 100 % of
``maxmempool``, forecast once it is half full: below that its saw-tooth between blocks is no trend; sync
falling behind: the blocks between the best announced header and our chain (``propagation.heights``) reaching
6, an hour of blocks, forecast once the node is 2 or more behind). Findings
(detector ``forecast``): WARNING when the crossing is under 24 hours away, INFO under 7 days, nothing
otherwise or without a trend toward it. ``readiness`` turns the forecasts into an AgentChecker component
(1 without a crossing within 24 hours, 0.5 within it, 0 within an hour), so a node's stage drops before
the component fails rather than after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from core.alerts import Finding, Severity
from core.bitcoin.network.telemetry import TelemetrySample
from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA

WINDOW_S = 6 * 3600.0
MIN_SPAN_S = 2 * 3600.0  # a trend needs two hours of points: the mempool saw-tooths between blocks
MIN_POINTS = 6
POINT_EVERY_S = 60.0
# quantity -> (component, threshold, direction of failure: -1 falls to it, +1 rises to it, unit, forecast from)
TRACKED: dict[str, tuple[str, float, int, str, float]] = {
    "disk_free_gb": ("disk", 1.0, -1, "GB free", float("inf")),
    "mempool_usage_ratio": ("mempool", 1.0, +1, "of maxmempool", 0.5),  # only once it is half full
    "blocks_behind": ("sync", 6.0, +1, "blocks behind the best header", 2.0),  # not a telemetry feature: extra
}


@dataclass(frozen=True)
class Forecast:
    """One quantity's trend: ``eta_s`` seconds until it crosses its threshold (None: not heading there)."""

    component: str
    quantity: str
    current: float
    threshold: float
    slope_per_h: float
    eta_s: float | None


@dataclass
class TrendForecaster:
    """The recent (time, value) points per tracked quantity; ``observe`` adds a sample and forecasts."""

    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    window_s: float = WINDOW_S

    def observe(self, sample: TelemetrySample, extra: Mapping[str, float] | None = None) -> list[Forecast]:
        """Add the sample's tracked values (``extra`` holds those the telemetry vector lacks, e.g.
        ``blocks_behind``; a quantity with no value this time is skipped) and forecast each."""
        out = []
        for quantity, (component, threshold, direction, _, start) in TRACKED.items():
            if extra is not None and quantity in extra:
                value = float(extra[quantity])
            elif quantity in TELEMETRY_SCHEMA.names:
                value = sample.value(quantity)
            else:
                continue
            if quantity == "disk_free_gb" and value <= 0:  # not measured
                continue
            pts = [p for p in self.points.get(quantity, []) if p[0] > sample.time - self.window_s]
            if not pts or sample.time - pts[-1][0] >= POINT_EVERY_S:  # at most a point a minute (6 h: 360)
                pts.append((sample.time, value))
            self.points[quantity] = pts
            if len(pts) < MIN_POINTS or pts[-1][0] - pts[0][0] < MIN_SPAN_S or value * direction < start * direction:
                continue
            t = np.array([p[0] for p in pts]) - pts[0][0]
            v = np.array([p[1] for p in pts])
            slope = float(np.polyfit(t, v, 1)[0])  # per second
            gap = threshold - value
            heading = slope * direction > 0 and gap * direction >= 0
            eta = gap / slope if heading else None
            out.append(Forecast(component, quantity, value, threshold, slope * 3600, eta))
        return out

    def findings(self, forecasts: list[Forecast]) -> list[Finding]:
        out = []
        for f in forecasts:
            unit = TRACKED[f.quantity][3]
            eta_h = None if f.eta_s is None else f.eta_s / 3600
            severity = None if eta_h is None else Severity.WARNING if eta_h < 24 else Severity.INFO if eta_h < 168 else None
            message = (f"{f.quantity} {f.current:.3g} {unit}, trend {f.slope_per_h:+.3g}/h"
                       + ("" if eta_h is None else f": {f.threshold:g} {unit} in about {eta_h:.1f} h"))
            out.append(Finding("forecast", f.component, severity or Severity.INFO,
                               f"{f.component} will cross its threshold", message, eta_h, active=severity is not None))
        return out

    def to_dict(self) -> dict[str, list[list[float]]]:
        return {q: [list(p) for p in pts] for q, pts in self.points.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, list[list[float]]]) -> TrendForecaster:
        points = {str(q): [(float(p[0]), float(p[1])) for p in pts if isinstance(p, list | tuple) and len(p) == 2]
                  for q, pts in d.items() if q in TRACKED and isinstance(pts, list)}
        return cls(points=points)


def readiness(forecasts: list[Forecast]) -> tuple[float, str]:
    """An AgentChecker component's readiness from the forecasts, with the reason when it is below 1."""
    soonest = min((f for f in forecasts if f.eta_s is not None), key=lambda f: f.eta_s, default=None)
    if soonest is None or soonest.eta_s >= 24 * 3600:
        return 1.0, ""
    why = f"{soonest.component}: {soonest.quantity} reaches {soonest.threshold:g} in {soonest.eta_s / 3600:.1f} h"
    return (0.0 if soonest.eta_s < 3600 else 0.5), why
