"""What ``anya-fl collect status`` reports: rows per task, label coverage, time span, tip, size, skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.collector.datasets import task_splits_from_store
from core.collector.follower import STATE_FILE
from core.collector.store import CollectorStore, store_path
from core.errors import DatasetError

__all__ = ["collector_status"]


def _file_mb(path: Path) -> float:
    total = 0
    for p in (path, path.with_name(path.name + "-wal")):
        if p.is_file():
            total += p.stat().st_size
    return round(total / 2**20, 3)


def _saved_state(directory: Path) -> dict[str, Any] | None:
    """The follower's last auto-saved state (core.health.autosave format), or None."""
    p = directory / STATE_FILE
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("state"), dict):
        return None
    return {**doc["state"], "saved_at": doc.get("taken_at"), "events": doc.get("events")}


def collector_status(data_dir: str | Path) -> dict[str, Any]:
    """The status document of the store under ``data_dir`` (read-only: safe while the collector runs)."""
    path = store_path(data_dir)
    if not path.is_file():
        raise DatasetError(f"no collector store at {path}: run `anya-fl collect --data-dir {data_dir}` first")
    _, summary = task_splits_from_store(path)
    with CollectorStore(path, readonly=True) as st:
        counts = st.counts()
        tip = st.tip()
        skipped = st.skipped()
        span = st.db.execute("SELECT min(t), max(t) FROM (SELECT time AS t FROM blocks WHERE connected = 1 "
                             "UNION ALL SELECT time FROM snapshots)").fetchone()
        doc = {
            "store": str(path),
            "store_mb": _file_mb(path),
            "data_mb": round(st.used_bytes() / 2**20, 3),
            "tip_height": tip[0] if tip else None,
            "tip_hash": tip[1] if tip else None,
            "time_span": list(span) if span[0] is not None else None,
            "counts": counts,
            "mempool_sequence": st.get_meta("mempool_sequence"),
            "pruned_total": st.get_meta("pruned_total", {}),
            "last_prune": st.get_meta("last_prune"),
        }
    by_kind: dict[str, int] = {}
    for s in skipped:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0) + s["count"]
    doc["skipped"] = {"total": sum(by_kind.values()), "by_kind": by_kind, "recent": skipped[-10:]}
    doc["tasks"] = {"rows": summary["rows"], "label_coverage": summary["label_coverage"],
                    "unavailable": summary["unavailable"], "boundaries": summary.get("boundaries")}
    doc["collector"] = _saved_state(path.parent)
    return doc
