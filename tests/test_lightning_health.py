"""Channel health figures and findings from a node's own channels, forwards and balance history."""

from __future__ import annotations

import pytest

from core.lightning.health import DEPLETED, channel_health, days_to_depleted, trend
from core.lightning.model import FAILED, LOCAL_FAILED, OPEN, PENDING_OPEN, SETTLED, Channel, ChannelPolicy, Forward

DAY = 86_400


def _channel(cid: str | None, local: int, ppm: int, *, state: str = OPEN, uptime: int = 30 * DAY) -> Channel:
    return Channel(channel_id=cid, channel_point=f"{'ab' * 32}:0", peer="02" + "11" * 32, state=state, active=True,
                   capacity_sat=1_000_000, local_msat=local * 1000, remote_msat=(1_000_000 - local) * 1000,
                   uptime_s=uptime, lifetime_s=30 * DAY, local_policy=ChannelPolicy(1000, ppm))


def _fwd(t: float, inc: str, out: str | None, outcome: str, failure: str | None = None, fee: int = 0) -> Forward:
    return Forward(t, t + 1, inc, out, 100_000 + fee, 100_000, fee, outcome, failure)


def test_figures_and_findings_per_channel() -> None:
    channels = [_channel("1x1x0", 100_000, 50), _channel("1x2x0", 500_000, 100), _channel("1x3x0", 900_000, 900),
                _channel("1x4x0", 500_000, 100, uptime=20 * DAY), _channel(None, 0, 100, state=PENDING_OPEN)]
    forwards = [_fwd(1, "1x2x0", "1x1x0", SETTLED, fee=60), _fwd(2, "1x2x0", "1x1x0", SETTLED, fee=60),
                _fwd(3, "1x2x0", "1x1x0", LOCAL_FAILED, "temporary_channel_failure"),
                _fwd(4, "1x4x0", "1x1x0", FAILED), _fwd(5, "1x4x0", None, LOCAL_FAILED, "unknown_next_peer")]
    history = {"1x1x0": [(0.0, 0.5), (DAY, 0.3), (2 * DAY, 0.1)]}
    rows = {r.channel_id: r for r in channel_health(channels, forwards, history)}
    assert set(rows) == {"1x1x0", "1x2x0", "1x3x0", "1x4x0"}  # a pending channel has no id yet
    a = rows["1x1x0"]
    assert (a.out_settled, a.out_failed_balance, a.out_failed_other, a.fee_msat) == (2, 1, 1, 120)
    assert a.out_success == pytest.approx(2 / 3) and a.ratio == pytest.approx(0.1)
    assert a.trend_per_day == pytest.approx(-0.2) and a.days_to_depleted == 0.0
    assert {f.kind for f in a.findings} == {"rebalance", "fee"}  # depleted with failures; draining at 50 < 100 ppm
    assert rows["1x2x0"].in_forwards == 3 and rows["1x2x0"].findings == []
    assert [f.kind for f in rows["1x3x0"].findings] == ["rebalance", "idle", "fee"]  # full, unused, dear
    assert [f.kind for f in rows["1x4x0"].findings] == ["uptime"] and rows["1x4x0"].uptime == pytest.approx(2 / 3)


def test_trend_and_forecast_edges() -> None:
    assert trend([]) is None and trend([(5.0, 0.4), (5.0, 0.6)]) is None
    assert trend([(0.0, 0.2), (DAY, 0.4)]) == pytest.approx(0.2)
    assert days_to_depleted(0.5, -0.1) == pytest.approx((0.5 - DEPLETED) / 0.1)
    assert days_to_depleted(0.5, 0.1) == pytest.approx((1 - DEPLETED - 0.5) / 0.1)
    assert days_to_depleted(0.5, 0.0) is None and days_to_depleted(0.5, None) is None


def test_the_store_keeps_snapshots_and_each_forward_once(tmp_path) -> None:
    from core.errors import DatasetError
    from core.lightning.store import LightningStore

    path = tmp_path / "lightning.sqlite"
    with pytest.raises(DatasetError, match="lightning collect"):
        LightningStore(path, readonly=True)
    f = _fwd(10.0, "1x2x0", None, LOCAL_FAILED, "unknown_next_peer")
    with LightningStore(path) as store:
        assert store.record(0.0, [_channel("1x1x0", 500_000, 10)], [f]) == (1, 1)
        assert store.record(DAY, [_channel("1x1x0", 300_000, 10), _channel(None, 0, 1)], [f]) == (1, 0)
    with LightningStore(path, readonly=True) as store:
        assert store.history(0.0) == {"1x1x0": [(0.0, 0.5), (DAY, 0.3)]}
        assert store.forwards(0.0, 20.0) == [f] and store.last_forward_time() == 10.0
        when, (latest,) = store.latest()
        assert when == DAY and latest.channel_id == "1x1x0" and latest.local_msat == 300_000_000
        assert (latest.local_policy.fee_rate_ppm, latest.uptime_s, latest.peer) == (10, 30 * DAY, "02" + "11" * 32)
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatasetError, match="not a readable SQLite"):
        LightningStore(tmp_path / "other.sqlite")


def test_a_simulated_routers_report_renders_in_a_browser(tmp_path) -> None:
    """A router of the simulated network, polled hourly into its store: the report's HTML holds every channel and
    finding and its PNG; where Chromium is installed, scripts/screenshot renders the page (not a blank image)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    import matplotlib.image

    from anya_fl.lightning_report import write_report
    from anya_fl.simln.network import SimLN, SimLNConfig
    from core.lightning.store import LightningStore

    net = SimLN(SimLNConfig(seed=1, nodes=12, payments_per_hour=300))
    router = net.router(max(range(12), key=lambda i: len(net.by_node[i])))
    with LightningStore(tmp_path / "lightning.sqlite") as store:
        last = 0.0
        for _ in range(12):
            net.advance(3600)
            now = net.epoch + net.now
            store.record(now, router.channels(), router.forwards(last, now))
            last = now
    report = write_report(tmp_path, tmp_path / "report")
    page = report.html.read_text()
    assert len(report.rows) == len(router.channels()) >= 3
    assert all(r.channel_id in page for r in report.rows) and report.png.stat().st_size > 10_000
    assert sum(r.out_settled for r in report.rows) > 0 and "<script" not in page
    for f in (f for r in report.rows for f in r.findings):
        assert f.message.replace("'", "&#x27;") in page
    if shutil.which("chromium") is None:
        pytest.skip("no chromium on this machine (apt-get install chromium); the page and PNG were checked")
    shot = tmp_path / "shot.png"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([str(root / "scripts" / "screenshot"), str(report.html), str(shot), "1200x900"], check=True,
                   timeout=60, env={**os.environ, "HOME": str(tmp_path)}, capture_output=True)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (900, 1200) and pixels.std() > 0.05  # text and tables, not a blank page
