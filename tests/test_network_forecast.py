"""Predictive component management: trend forecasts of the disk and the mempool, their findings, and the
AgentChecker readiness they give."""

from __future__ import annotations

import numpy as np
import pytest

from core.alerts import Severity
from core.bitcoin.network.forecast import TrendForecaster, readiness
from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA, TelemetrySample


def _sample(t: float, **values: float) -> TelemetrySample:
    v = np.zeros(TELEMETRY_SCHEMA.width, np.float32)
    for k, x in values.items():
        v[TELEMETRY_SCHEMA.names.index(k)] = x
    return TelemetrySample(time=t, vector=v)


def _run(series) -> tuple[TrendForecaster, list]:
    f, forecasts = TrendForecaster(), []
    for t, values in series:
        forecasts = f.observe(_sample(t, **values))
    return f, forecasts


def test_a_falling_disk_is_forecast_with_its_eta() -> None:
    # 100 GB free, falling 2 GB per hour, sampled each minute for 3 h: 1 GB in (94 - 1) / 2 = 46.5 h
    f, fc = _run([(60.0 * i, {"disk_free_gb": 100 - 2 * i / 60}) for i in range(181)])
    disk = next(x for x in fc if x.component == "disk")
    assert disk.slope_per_h == pytest.approx(-2.0, rel=1e-3)
    assert disk.eta_s / 3600 == pytest.approx(46.5, rel=1e-2)
    finding = next(x for x in f.findings(fc) if x.key == "disk")
    assert finding.active and finding.severity == Severity.INFO  # under a week, over a day
    assert readiness(fc) == (1.0, "")
    # ten times faster: under a day -> WARNING, and the component's readiness drops to 0.5
    f, fc = _run([(60.0 * i, {"disk_free_gb": 100 - 20 * i / 60}) for i in range(181)])
    assert next(x for x in f.findings(fc) if x.key == "disk").severity == Severity.WARNING
    ready, why = readiness(fc)
    assert ready == 0.5 and why == "disk: disk_free_gb reaches 1 in 2.0 h"  # 40 GB left at 20 GB/h


def test_no_trend_no_forecast_and_the_mempool_only_from_half_full() -> None:
    steady = [(60.0 * i, {"disk_free_gb": 50.0, "mempool_usage_ratio": 0.2 + 0.001 * i}) for i in range(181)]
    f, fc = _run(steady)
    assert [x.component for x in fc] == ["disk"] and fc[0].eta_s is None  # flat disk; mempool under half
    assert not any(x.active for x in f.findings(fc))
    filling = [(60.0 * i, {"mempool_usage_ratio": 0.5 + 0.1 * i / 60}) for i in range(181)]
    f, fc = _run(filling)
    mem = next(x for x in fc if x.component == "mempool")
    assert mem.eta_s / 3600 == pytest.approx(2.0, rel=1e-2)  # 0.8 now, +0.1/h
    assert next(x for x in f.findings(fc) if x.key == "mempool").severity == Severity.WARNING


def test_an_hour_of_points_is_no_trend_and_state_round_trips() -> None:
    f, fc = _run([(60.0 * i, {"disk_free_gb": 100 - 20 * i / 60}) for i in range(60)])
    assert fc == []  # under two hours of points
    again = TrendForecaster.from_dict(f.to_dict())
    assert again.points == f.points
    assert TrendForecaster.from_dict({"disk_free_gb": [[1, 2], "junk"], "unknown": [[1, 2]]}).points == \
        {"disk_free_gb": [(1.0, 2.0)]}


def test_a_node_falling_behind_is_forecast_from_the_blocks_between_header_and_chain() -> None:
    # behind by 2 blocks, then one more every 40 minutes (the chain grows faster than the node connects)
    f = TrendForecaster()
    fc = []
    for i in range(181):
        fc = f.observe(_sample(60.0 * i), {"blocks_behind": 2.0 + i / 40})
    sync = next(x for x in fc if x.component == "sync")
    assert sync.slope_per_h == pytest.approx(1.5, rel=1e-3)
    assert sync.current == 6.5 and sync.eta_s is None  # already past 6 (the partition rule's case): no eta
    # a node 3.5 behind and falling a block every 2 hours reaches 6 in 5 hours
    f, fc = TrendForecaster(), []
    for i in range(181):
        fc = f.observe(_sample(60.0 * i), {"blocks_behind": 2.0 + i / 120})
    sync = next(x for x in fc if x.component == "sync")
    assert sync.eta_s / 3600 == pytest.approx((6.0 - 3.5) / 0.5, rel=1e-2)  # 5 h
    finding = next(x for x in f.findings(fc) if x.key == "sync")
    assert finding.active and finding.severity == Severity.WARNING and "blocks behind" in finding.message
    # in sync (0 or 1 behind): no forecast, and no value at all (an RPC reply missing): nothing added
    f = TrendForecaster()
    for i in range(181):
        fc = f.observe(_sample(60.0 * i), {"blocks_behind": float(i % 2)})
    assert all(x.component != "sync" for x in fc)
    assert "blocks_behind" not in TrendForecaster().points
