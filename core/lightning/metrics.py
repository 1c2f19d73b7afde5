"""The channel report's figures as Prometheus metrics (read from the store at each scrape), for the operator's own
Prometheus: `anya-fl lightning collect --metrics-port`. Channel ids are labels: keep the port on loopback, or
behind the operator's own scraper, like every anya-fl metrics endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.lightning.health import ChannelHealth


class ChannelCollector:
    """A prometheus_client collector over ``rows()`` (the channel report's rows, computed at scrape time)."""

    def __init__(self, rows: Callable[[], list[ChannelHealth]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> Any:
            return GaugeMetricFamily(f"anya_fl_ln_channel_{name}", doc, labels=["channel", *(extra or [])])

        ratio = gauge("balance_ratio", "Our share of the channel's balance (0-1).")
        capacity = gauge("capacity_sat", "Channel capacity, satoshis.")
        forwards = gauge("out_forwards", "Outgoing forwards over the report window, by outcome.", ["outcome"])
        fees = gauge("fees_msat", "Fees earned over the report window (credited to the outgoing channel), msat.")
        uptime = gauge("uptime_ratio", "The peer's uptime over the channel's life (LND only).")
        trend = gauge("trend_per_day", "Change of our share per day (least squares over the snapshots).")
        empty = gauge("days_to_depleted", "Days until our share reaches 20 % or 80 % at the trend.")
        findings = gauge("finding", "1 per finding of the report: rebalance, idle, fee, uptime.", ["kind"])
        for r in self.rows():
            c = r.channel_id
            ratio.add_metric([c], r.ratio)
            capacity.add_metric([c], float(r.capacity_sat))
            for outcome, n in (("settled", r.out_settled), ("failed_balance", r.out_failed_balance),
                               ("failed_other", r.out_failed_other)):
                forwards.add_metric([c, outcome], float(n))
            fees.add_metric([c], float(r.fee_msat))
            for family, v in ((uptime, r.uptime), (trend, r.trend_per_day), (empty, r.days_to_depleted)):
                if v is not None:
                    family.add_metric([c], float(v))
            for f in r.findings:
                findings.add_metric([c, f.kind], 1.0)
        yield from (ratio, capacity, forwards, fees, uptime, trend, empty, findings)


def store_rows(state_dir: Path, days: float = 7.0) -> Callable[[], list[ChannelHealth]]:
    """The report's rows from the store in ``state_dir`` (none before the first snapshot)."""
    from core.errors import DatasetError
    from core.lightning.health import store_report

    def rows() -> list[ChannelHealth]:
        try:
            return store_report(state_dir, days)[0]
        except DatasetError:
            return []

    return rows
