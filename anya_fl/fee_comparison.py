"""Three-way fee comparison on one replay: a fee model, Core-style buckets and mempool.space-style fees.

Every estimator answers the same (snapshot, k, required rate) rows; the chain is replayed once
(``core.data.replay.replay_fee_estimates``). Metrics come from ``core.scoring.fee_metrics``: a row is a
hit when the estimate >= the required rate (the lowest rate that entered one of the next k blocks);
overpayment is estimate - required on hits and 0 on misses, reported as its median over the rows.

Breakdowns:

* per confirmation target k (the rows' own targets, ``FEE_TARGETS`` for task rows);
* per congestion phase of the snapshot's mempool, in blocks of capacity (``block_weight_limit / 4``
  vB): clear < 1 block, busy 1-3 blocks, congested > 3 blocks;
* per node profile, when the caller passes one profile per row;
* Core-style ``estimaterawfee`` at 50 / 80 / 95 % success (shortest horizon tracking k), so operators
  see what each confidence level buys in hits and what it costs in overpayment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rich.table import Table

from anya_fl.console import fmt
from core import scoring
from core.bitcoin.features import MEMPOOL_SCHEMA, TASK_SCHEMAS
from core.data.chain import Chain
from core.data.datasets import task_arrays
from core.data.replay import (
    BLOCK_MEDIAN,
    CORE,
    MEMPOOL_SPACE,
    MEMPOOL_SPACE_PRECISE,
    core_horizon,
    replay_fee_estimates,
)
from core.errors import ConfigError

PHASES = ("clear", "busy", "congested")
PHASE_DEFINITION = {
    "clear": "mempool < 1 block of capacity",
    "busy": "mempool 1 to 3 blocks of capacity",
    "congested": "mempool > 3 blocks of capacity",
}
CONFIDENCES = (0.5, 0.8, 0.95)
REFERENCES = (CORE, MEMPOOL_SPACE)
VARIANTS = (MEMPOOL_SPACE_PRECISE, BLOCK_MEDIAN)


def congestion_phase(mempool_vsize: Any, block_vsize: float) -> np.ndarray:
    """Phase per row: clear (< 1 block), busy (1-3 blocks), congested (> 3 blocks)."""
    blocks = np.asarray(mempool_vsize, dtype=np.float64) / float(block_vsize)
    return np.where(blocks < 1.0, PHASES[0], np.where(blocks <= 3.0, PHASES[1], PHASES[2]))


def fee_test_rows(chain: Chain) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(snapshot index, k, required rate) of the chain's fee test split (``task_arrays``' rows)."""
    fee = task_arrays(chain)["fee"]
    k = fee.x["test"][:, TASK_SCHEMAS["fee"].index("conf_target_blocks")].astype(np.int64)
    return fee.index["test"], k, fee.y["test"]


def _rows(chain: Chain, snapshot_index: Any, conf_target: Any, required_rate: Any) -> tuple[np.ndarray, ...]:
    s = np.asarray(snapshot_index)
    k = np.asarray(conf_target)
    y = np.asarray(required_rate)
    for name, arr in (("snapshot_index", s), ("conf_target", k), ("required_rate", y)):
        if arr.ndim != 1 or arr.size == 0:
            raise ConfigError(name, f"expected a non-empty 1-D array, got shape {tuple(arr.shape)}")
        if arr.size != s.size:
            raise ConfigError(name, f"length {arr.size} does not match snapshot_index's length {s.size}")
    if y.dtype.kind not in "iuf" or not (np.isfinite(y) & (y > 0)).all():
        raise ConfigError("required_rate", "must be finite rates > 0 sat/vB")
    if k.dtype.kind == "f" and (np.isfinite(k) & (k == np.round(k))).all():
        k = k.astype(np.int64)
    if k.dtype.kind not in "iu" or k.min() < 1:
        raise ConfigError("conf_target", "must be integers >= 1 block")
    if s.dtype.kind not in "iu" or s.min() < 0 or s.max() >= len(chain.snapshot_time):
        raise ConfigError("snapshot_index", f"must be integers in [0, {len(chain.snapshot_time)})")
    return s.astype(np.int64), k.astype(np.int64), y.astype(np.float64)


def _predictions(predictions: Mapping[str, Any] | None, n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, values in (predictions or {}).items():
        if not isinstance(name, str) or not name or name in REFERENCES + VARIANTS:
            raise ConfigError("predictions", f"model name {name!r} must be a new, non-empty string")
        arr = np.asarray(values)
        if arr.shape != (n,) or arr.dtype.kind not in "iuf" or not np.isfinite(arr).all():
            raise ConfigError(f"predictions[{name}]", f"must be {n} finite rates (sat/vB), got shape {arr.shape}")
        out[name] = arr.astype(np.float64)
    return out


def _confidences(confidences: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(c) for c in confidences)
    if any(not 0.0 < c < 1.0 for c in out):
        raise ConfigError("confidences", f"{confidences!r}: each must be in (0, 1)")
    return out


def _cells(pred: np.ndarray, req: np.ndarray, k: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """One record per k present in ``rows`` and one for all k: rows, hit rate, median overpay, median fee."""
    if not rows.any():
        return []
    m = scoring.fee_metrics(pred[rows], req[rows], k[rows])
    out = [{"k": "all", "rows": int(rows.sum()), "hit_rate": m["hit_rate"],
            "median_overpay_sat_vb": m["median_overpay_sat_vb"], "median_fee_sat_vb": float(np.median(pred[rows]))}]
    for kk in np.unique(k[rows]).tolist():
        sel = rows & (k == kk)
        out.append({"k": int(kk), "rows": int(sel.sum()), "hit_rate": m[f"hit_rate_k{kk}"],
                    "median_overpay_sat_vb": m[f"median_overpay_sat_vb_k{kk}"],
                    "median_fee_sat_vb": float(np.median(pred[sel]))})
    return out


def compare_fee_estimators(
    chain: Chain,
    snapshot_index: Any,
    conf_target: Any,
    required_rate: Any,
    *,
    predictions: Mapping[str, Any] | None = None,
    profiles: Sequence[str] | None = None,
    confidences: Sequence[float] = CONFIDENCES,
    variants: bool = True,
) -> dict[str, Any]:
    """The comparison as a JSON-able dict (see the module docstring); ``predictions``: model name -> rate per row.

    ``variants`` adds mempool.space's ``/fees/precise`` levels and the "projected block k median" estimator.
    """
    s, k, y = _rows(chain, snapshot_index, conf_target, required_rate)
    n = s.size
    models = _predictions(predictions, n)
    conf = _confidences(confidences)
    if profiles is not None:
        prof = np.asarray([str(p) for p in profiles])
        if prof.shape != (n,):
            raise ConfigError("profiles", f"expected one profile per row ({n}), got {len(profiles)}")
    est = replay_fee_estimates(chain, s, k, core_thresholds=conf)
    names = [*models, *REFERENCES, *(VARIANTS if variants else ())]
    answers = {**models, **{name: est[name] for name in names if name not in models}}

    vbytes = chain.snapshot_rows[s, MEMPOOL_SCHEMA.index("mempool_vbytes")]
    block_vsize = chain.config.block_weight_limit / 4
    phase = congestion_phase(vbytes, block_vsize)
    everything = np.ones(n, dtype=bool)
    result: dict[str, Any] = {
        "rows": n,
        "targets": sorted(set(k.tolist())),
        "estimators": names,
        "phase_definition": {**PHASE_DEFINITION, "block_vsize": block_vsize},
        "phase_rows": {p: int((phase == p).sum()) for p in PHASES},
        "fallback_share": {CORE: float(est[CORE + " fallback"].mean())},
        "overall": [{"estimator": name, **c} for name in names for c in _cells(answers[name], y, k, everything)],
        "by_phase": [{"estimator": name, "phase": p, **c} for p in PHASES for name in names
                     for c in _cells(answers[name], y, k, phase == p)],
        "by_profile": [],
        "core_confidence": [],
    }
    if profiles is not None:
        result["by_profile"] = [{"estimator": name, "profile": p, **c} for p in sorted(set(prof.tolist()))
                                for name in names for c in _cells(answers[name], y, k, prof == p)]
    for c in conf:
        key = f"{CORE} raw {c:g}"
        fallback = est[key + " fallback"]
        for cell in _cells(est[key], y, k, everything):
            sel = everything if cell["k"] == "all" else (k == cell["k"])
            horizon = "shortest tracking k" if cell["k"] == "all" else core_horizon(cell["k"])
            result["core_confidence"].append({"confidence": c, "horizon": horizon, **cell,
                                              "fallback_share": float(fallback[sel].mean())})
    return result


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------


def _grid(title: str, records: list[dict[str, Any]], row_keys: list[str], targets: list[int],
          extra: dict[tuple, Any] | None = None) -> Table:
    """Two lines per group (hit rate, median overpayment) with one column per k; ``extra``: a last column."""
    t = Table(title=title, title_justify="left")
    for i, c in enumerate([*row_keys, "metric", "rows", *(f"k={k}" for k in targets), "all k"]):
        t.add_column(c, justify="left" if i <= len(row_keys) else "right", no_wrap=i < len(row_keys))
    if extra is not None:
        t.add_column(extra["title"], justify="right")
    index: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in records:
        index.setdefault(tuple(r[key] for key in row_keys), {})[str(r["k"])] = r
    for key, by_k in index.items():
        label = [fmt(v) if not isinstance(v, float) else f"{v:.0%}" for v in key]
        for j, (metric, name, digits) in enumerate((("hit_rate", "hit rate", 3), ("median_overpay_sat_vb", "overpay", 2))):
            cells = [f"{by_k[str(k)][metric]:.{digits}f}" if str(k) in by_k else "-" for k in [*targets, "all"]]
            more = [f"{extra['values'][key]:.3f}" if j == 0 else ""] if extra is not None else []
            t.add_row(*(label if j == 0 else [""] * len(label)), name, fmt(by_k["all"]["rows"]) if j == 0 else "",
                      *cells, *more, end_section=j == 1)
    return t


def render_tables(result: dict[str, Any]) -> list[Table]:
    """Rich tables: overall, per phase, per profile (when given), Core-style per confidence level."""
    targets = result["targets"]
    unit = "overpay = median overpayment, sat/vB"
    phases = "; ".join(f"{p}: {d}" for p, d in result["phase_definition"].items() if p in PHASES)
    tables = [
        _grid(f"fee estimators on {result['rows']:,} rows ({unit})", result["overall"], ["estimator"], targets),
        _grid(f"by congestion phase ({phases})", result["by_phase"], ["phase", "estimator"], targets),
    ]
    if result["by_profile"]:
        tables.append(_grid("by node profile", result["by_profile"], ["profile", "estimator"], targets))
    fallback = {(r["confidence"],): r["fallback_share"] for r in result["core_confidence"] if r["k"] == "all"}
    tables.append(_grid("Core-style estimaterawfee per confidence level (shortest horizon tracking k)",
                        result["core_confidence"], ["confidence"], targets, {"title": "fallback", "values": fallback}))
    return tables
