"""Channel health: per channel, from its state now, its balance over time and the HTLCs the node forwarded.

Figures per channel (``ChannelHealth``): our balance ratio; outgoing forwards settled and failed here for lack of
balance or an offline peer (the channel as the way out: the forward's ``out_channel``), incoming forwards; fee
revenue (the fee of a settled forward is credited to its outgoing channel, as LND's and CLN's reports do);
uptime (uptime / lifetime, where the implementation gives them); the balance trend (least-squares slope of the
ratio over the snapshots, per day) and the days until the ratio reaches ``DEPLETED`` or ``1 - DEPLETED`` at that
trend.

Findings (the rules and their thresholds, stated here; in the spirit of charge-lnd's and lndmanage's):

* ``rebalance``: ratio below ``DEPLETED`` with outgoing failures for lack of balance in the window, or above
  ``1 - DEPLETED`` (nothing can come in: the peer's side is empty);
* ``idle``: no forward in or out over the window, on a channel open for at least ``IDLE_AGE_S``;
* ``fee``: draining (at the trend, depleted within ``DRAIN_DAYS``) while charging less than the node's median
  proportional fee (raise it), or full on our side with no outgoing forward while charging more than the median
  (lower it);
* ``uptime``: the peer connected less than ``UPTIME_MIN`` of the channel's life.

Everything here is the node's own view and stays on the node.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.lightning.model import FAILED, LOCAL_FAILED, OPEN, SETTLED, Channel, Forward

DEPLETED = 0.2
IDLE_AGE_S = 7 * 86_400
DRAIN_DAYS = 3.0
UPTIME_MIN = 0.9
BALANCE_FAILURES = ("temporary_channel_failure", "insufficient_balance", "INSUFFICIENT_BALANCE")


@dataclass(frozen=True)
class LightningFinding:
    """One advice for one channel: ``kind`` (rebalance, idle, fee, uptime) and why."""

    channel_id: str
    kind: str
    message: str


@dataclass
class ChannelHealth:
    channel_id: str
    peer: str
    state: str
    active: bool
    capacity_sat: int
    ratio: float
    fee_rate_ppm: int | None
    out_settled: int = 0
    out_settled_msat: int = 0
    out_failed_balance: int = 0  # failed here: not enough balance to send out on it
    out_failed_other: int = 0  # failed here for another reason, or failed downstream
    in_forwards: int = 0
    fee_msat: int = 0
    uptime: float | None = None
    trend_per_day: float | None = None  # change of the ratio per day (least squares over the snapshots)
    days_to_depleted: float | None = None  # at the trend, until the ratio reaches DEPLETED or 1 - DEPLETED
    findings: list[LightningFinding] = field(default_factory=list)

    @property
    def out_success(self) -> float | None:
        """Settled / (settled + failed here for lack of balance); None without such forwards."""
        tried = self.out_settled + self.out_failed_balance
        return self.out_settled / tried if tried else None


def trend(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of (time s, ratio) points, per day; None with fewer than 2 times."""
    if len({t for t, _ in points}) < 2:
        return None
    t = np.array([p[0] for p in points]) / 86_400.0
    r = np.array([p[1] for p in points])
    return float(np.polyfit(t - t.mean(), r, 1)[0])


def days_to_depleted(ratio: float, per_day: float | None) -> float | None:
    """Days until the ratio reaches DEPLETED (falling) or 1 - DEPLETED (rising) at ``per_day``; 0 if there."""
    if per_day is None or per_day == 0 or not math.isfinite(per_day):
        return None
    target = DEPLETED if per_day < 0 else 1 - DEPLETED
    days = (target - ratio) / per_day
    return max(0.0, days)


def channel_health(channels: Iterable[Channel], forwards: Iterable[Forward],
                   history: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                   window_s: float = 7 * 86_400) -> list[ChannelHealth]:
    """Per open or pending channel with a short channel id, its figures and findings. ``history``: channel id ->
    (time, ratio) snapshots; ``forwards``: those of the window (``window_s`` long)."""
    rows: dict[str, ChannelHealth] = {}
    for c in channels:
        if c.channel_id is None:
            continue
        rows[c.channel_id] = ChannelHealth(
            c.channel_id, c.peer, c.state, c.active, c.capacity_sat, c.balance_ratio,
            None if c.local_policy is None else c.local_policy.fee_rate_ppm,
            uptime=c.uptime_s / c.lifetime_s if c.uptime_s is not None and c.lifetime_s else None)
    lifetimes = {c.channel_id: c.lifetime_s for c in channels if c.channel_id}
    for f in forwards:
        if f.in_channel in rows:
            rows[f.in_channel].in_forwards += 1
        out = rows.get(f.out_channel) if f.out_channel else None
        if out is None:
            continue
        if f.outcome == SETTLED:
            out.out_settled += 1
            out.out_settled_msat += f.out_msat or 0
            out.fee_msat += f.fee_msat
        elif f.outcome == LOCAL_FAILED and f.failure in BALANCE_FAILURES:
            out.out_failed_balance += 1
        elif f.outcome in (LOCAL_FAILED, FAILED):
            out.out_failed_other += 1
    fees = [r.fee_rate_ppm for r in rows.values() if r.fee_rate_ppm is not None]
    median_fee = float(np.median(fees)) if fees else None
    for cid, r in rows.items():
        r.trend_per_day = trend((history or {}).get(cid, ()))
        r.days_to_depleted = days_to_depleted(r.ratio, r.trend_per_day)
        r.findings = _findings(r, lifetimes.get(cid), window_s, median_fee)
    return sorted(rows.values(), key=lambda r: r.channel_id)


def _findings(r: ChannelHealth, lifetime_s: int | None, window_s: float,
              median_fee: float | None) -> list[LightningFinding]:
    out = []
    pct = f"{100 * r.ratio:.0f} %"
    if r.state == OPEN and r.ratio < DEPLETED and r.out_failed_balance:
        out.append(LightningFinding(r.channel_id, "rebalance", f"our side holds {pct}; {r.out_failed_balance} "
                                    "forwards failed here for lack of balance"))
    elif r.state == OPEN and r.ratio > 1 - DEPLETED:
        out.append(LightningFinding(r.channel_id, "rebalance", f"our side holds {pct}: little can come in"))
    if r.state == OPEN and not (r.in_forwards or r.out_settled or r.out_failed_balance or r.out_failed_other) \
            and (lifetime_s is None or lifetime_s >= IDLE_AGE_S):
        out.append(LightningFinding(r.channel_id, "idle", f"no forward in or out over {window_s / 86_400:.0f} days"))
    if median_fee is not None and r.fee_rate_ppm is not None and r.state == OPEN:
        draining = r.trend_per_day is not None and r.trend_per_day < 0 and r.days_to_depleted is not None \
            and r.days_to_depleted <= DRAIN_DAYS
        if draining and r.fee_rate_ppm < median_fee:
            when = "depleted already" if r.days_to_depleted == 0 else f"depleted in {r.days_to_depleted:.1f} days"
            out.append(LightningFinding(r.channel_id, "fee", f"draining ({when}) at {r.fee_rate_ppm} ppm, below this "
                                        f"node's median {median_fee:.0f}: raise it"))
        elif r.ratio > 1 - DEPLETED and not r.out_settled and r.fee_rate_ppm > median_fee:
            out.append(LightningFinding(r.channel_id, "fee", f"full on our side with nothing sent out at "
                                        f"{r.fee_rate_ppm} ppm, above this node's median {median_fee:.0f}: lower it"))
    if r.uptime is not None and r.uptime < UPTIME_MIN:
        out.append(LightningFinding(r.channel_id, "uptime", f"the peer was connected {100 * r.uptime:.0f} % of "
                                    "the channel's life"))
    return out


def store_report(state_dir: Path, days: float = 7.0) -> tuple[list[ChannelHealth], float | None]:
    """The rows from the store in ``state_dir`` over the ``days`` before its newest snapshot (or forward), and that
    snapshot's time (None before the first one)."""
    from core.lightning.store import LightningStore, lightning_store_path

    with LightningStore(lightning_store_path(state_dir), readonly=True) as store:
        when, channels = store.latest()
        end = max(when or 0.0, store.last_forward_time() or 0.0) or time.time()
        start = end - days * 86_400.0
        rows = channel_health(channels, store.forwards(start, end + 1.0), store.history(start), days * 86_400.0)
    return rows, when
