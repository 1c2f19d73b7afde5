"""`anya-fl lightning report`: channel health as tables, one PNG and one self-contained HTML page.

Reads the node's own history (``core.lightning.store``: balance snapshots and forwards, written by `anya-fl
lightning collect`) and computes the figures of ``core.lightning.health``. Nothing is sent anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anya_fl.report_html import CSS, esc, figure, html_table, img, save_png
from core.lightning.health import DEPLETED, ChannelHealth, store_report
from core.storage import atomic_write_bytes

COLUMNS = ["channel", "peer", "capacity (sat)", "ours", "out settled", "out failed: balance", "out failed: other",
           "in", "out success", "fees (sat)", "fee (ppm)", "uptime", "trend (per day)", "depleted in (days)"]


@dataclass
class LightningReport:
    """What `lightning report` computed: the rows, the window and when, and the files it wrote."""

    rows: list[ChannelHealth]
    snapshot_time: float | None
    window_days: float
    png: Path | None = None
    html: Path | None = None


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.0f} %"


# the console's table: the main figures under short titles (the HTML page has them all, and the peers)
SHORT_COLUMNS = ["channel", "sat", "ours", "out ok", "fail: bal", "fail: other", "fees sat", "ppm", "up", "trend/d",
                 "empty in d"]


def table_rows(rows: Sequence[ChannelHealth], short: bool = False) -> list[list[Any]]:
    """One row per channel under COLUMNS (``short``: under SHORT_COLUMNS)."""
    out = []
    for r in rows:
        row = [r.channel_id, r.peer[:12] + "…", r.capacity_sat, _pct(r.ratio), r.out_settled, r.out_failed_balance,
               r.out_failed_other, r.in_forwards, _pct(r.out_success), round(r.fee_msat / 1000, 3), r.fee_rate_ppm,
               _pct(r.uptime), None if r.trend_per_day is None else f"{100 * r.trend_per_day:+.1f} pts",
               None if r.days_to_depleted is None else round(r.days_to_depleted, 1)]
        out.append([row[0], *row[2:7], *row[9:]] if short else row)
    return out


def finding_rows(rows: Sequence[ChannelHealth]) -> list[list[str]]:
    return [[f.channel_id, f.kind, f.message] for r in rows for f in r.findings]


def build_report(state_dir: Path, days: float = 7.0) -> LightningReport:
    """The figures from the store in ``state_dir`` over the last ``days`` before its newest snapshot."""
    rows, when = store_report(state_dir, days)
    return LightningReport(rows, when, days)


def write_png(report: LightningReport, path: Path) -> Path:
    """Three panels per channel: our balance share, the outgoing forwards' outcomes, the fees earned."""
    rows = report.rows
    names = [r.channel_id for r in rows] or ["(no channel)"]
    height = max(3.0, 0.32 * len(names) + 1.6)
    fig, axes = figure(3, figsize=(15, height))
    ax = axes[0][0]
    ratios = [r.ratio for r in rows] or [0.0]
    colors = ["#c0392b" if v < DEPLETED or v > 1 - DEPLETED else "#f7931a" for v in ratios]
    ax.barh(names, ratios, color=colors)
    ax.axvline(DEPLETED, color="#888", lw=0.8, ls="--")
    ax.axvline(1 - DEPLETED, color="#888", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_title(f"our share of the balance (red: under {DEPLETED:.0%} or over {1 - DEPLETED:.0%})", wrap=True)
    ax.invert_yaxis()
    ax = axes[0][1]
    left = [0.0] * len(rows)
    for label, key, color in (("settled", "out_settled", "#27ae60"), ("failed: balance", "out_failed_balance",
                                                                      "#c0392b"),
                              ("failed: other", "out_failed_other", "#95a5a6")):
        values = [float(getattr(r, key)) for r in rows]
        if rows:
            ax.barh(names, values, left=left, color=color, label=label)
            left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_title("outgoing forwards", wrap=True)
    if rows:
        ax.legend(loc="lower right", fontsize=8)
    ax.invert_yaxis()
    ax.set_yticklabels([])
    ax = axes[0][2]
    ax.barh(names, [r.fee_msat / 1000 for r in rows] or [0.0], color="#2980b9")
    ax.set_title(f"fees earned (sat, {report.window_days:g} days)", wrap=True)
    ax.invert_yaxis()
    ax.set_yticklabels([])
    return save_png(fig, path)


def write_html(report: LightningReport, png: Path | None, path: Path, title: str = "Channel health") -> Path:
    when = "no snapshot yet" if report.snapshot_time is None else \
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(report.snapshot_time))
    findings = finding_rows(report.rows)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(title)}</title><style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f'<p class="note">{len(report.rows)} channels; the newest snapshot {esc(when)}; forwards over the '
             f"{report.window_days:g} days before it. Everything on this page stays on the node.</p>",
             "<h2>Findings</h2>",
             html_table(["channel", "kind", "why"], findings, raw=True, text_cols=3) if findings
             else '<p class="note">None.</p>',
             "<h2>Channels</h2>", html_table(COLUMNS, table_rows(report.rows), text_cols=2)]
    if png is not None:
        parts += ["<h2>Figures</h2>", img(png)]
    parts.append("</body></html>")
    return atomic_write_bytes(path, "\n".join(parts).encode())


def write_report(state_dir: Path, out_dir: Path, days: float = 7.0) -> LightningReport:
    """Compute the report and write ``channels.png`` and ``channels.html`` into ``out_dir``."""
    report = build_report(state_dir, days)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.png = write_png(report, out_dir / "channels.png")
    report.html = write_html(report, report.png, out_dir / "channels.html")
    return report
