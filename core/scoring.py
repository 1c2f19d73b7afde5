"""Task metrics with numpy only, shared by training, the federation server and reports.

* Ranking metrics (``pr_auc``, ``roc_auc``) match scikit-learn's ``average_precision_score`` and
  ``roc_auc_score`` exactly, ties included: every distinct score is one threshold, and a threshold
  takes all rows with ``score >= threshold``.
* Threshold metrics (``best_f1_threshold``, ``f1_at``, ``recall_at_fpr``) use the same convention.
* ``fraud_metrics``, ``anomaly_metrics`` and ``fee_metrics`` bundle them per task.

Degenerate input (empty or mismatched arrays, non-binary labels, NaN or infinite scores, a single
class where a ranking metric needs both) raises ``ValueError`` whose message starts with the name of
the offending argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # anything np.asarray accepts

# The main metric of each task: the one per-round tables and plots lead with.
PRIMARY_METRIC = {"fraud": "pr_auc", "fee": "hit_rate", "anomaly": "roc_auc", "network": "pr_auc",
                  "liquidity": "log_loss"}
PROBABILITY_EPS = 1e-6  # log-loss clips probabilities to [eps, 1 - eps]
PROBABILITY_LOSSES = ("log_loss", "brier", "ece")  # probability_metrics' lower-is-better metrics
CALIBRATION_BINS = 10


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------



def _vector(values: ArrayLike, name: str) -> np.ndarray:
    """``values`` as a non-empty 1-D array, else ValueError naming ``name``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    return arr


def _finite(values: ArrayLike, name: str, n: int | None = None, ref: str = "y_true") -> np.ndarray:
    """``values`` as a finite float64 vector (of length ``n`` when given)."""
    arr = _vector(values, name)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if n is not None and arr.size != n:
        raise ValueError(f"{name}: length {arr.size} does not match the length of {ref} ({n})")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: element {i} is {arr[i]!r}; all values must be finite (no NaN or inf)")
    return arr


def _labels(y_true: ArrayLike, name: str = "y_true") -> np.ndarray:
    """Binary labels (0/1 or bool) as a bool vector."""
    arr = _vector(y_true, name)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected 0/1 or bool labels, got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: labels must be 0 or 1, element {i} is {arr[i]!r}")
    return arr == 1


def _labels_scores(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    s = _finite(score, "score", y.size)
    return y, s


def _require_both_classes(y: np.ndarray, metric: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive" if n_pos else "negative"
        raise ValueError(f"y_true: {metric} needs both classes, got only {only} rows ({y.size})")


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, true positives, false positives) at each distinct score."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return s_sorted[last], tps, fps


# ---------------------------------------------------------------------------------------------
# ranking metrics
# ---------------------------------------------------------------------------------------------


def pr_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Average precision, step-wise, as ``sklearn.metrics.average_precision_score``."""
    y, s = _labels_scores(y_true, score)
    _require_both_classes(y, "pr_auc")
    _, tps, fps = _curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties), as ``roc_auc_score``."""
    y, s = _labels_scores(y_true, score)
    _require_both_classes(y, "roc_auc")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average 1-based rank of each tie group
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s_sorted.size]
    group_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    n_pos = float(y.sum())
    n_neg = float(y.size) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------
# threshold metrics
# ---------------------------------------------------------------------------------------------


def best_f1_threshold(y_true: ArrayLike, score: ArrayLike) -> float:
    """Score threshold (one of the scores) maximizing F1 for ``score >= threshold``; the highest on ties.

    Choose it on validation data, then report ``f1_at`` on test data.
    """
    y, s = _labels_scores(y_true, score)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError(f"y_true: best_f1_threshold needs at least one positive row, got {y.size} negatives")
    thresholds, tps, fps = _curve(y, s)
    f1 = 2.0 * tps / (tps + fps + n_pos)
    return float(thresholds[int(np.argmax(f1))])


def f1_at(y_true: ArrayLike, score: ArrayLike, threshold: float) -> float:
    """F1 when predicting positive for ``score >= threshold`` (0.0 when there is nothing to find or flag)."""
    y, s = _labels_scores(y_true, score)
    if np.isnan(threshold):
        raise ValueError("threshold: is NaN")
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    denom = int(pred.sum()) + int(y.sum())  # 2tp + fp + fn
    return 2.0 * tp / denom if denom else 0.0


def recall_at_fpr(y_true: ArrayLike, score: ArrayLike, fpr: float = 0.01) -> float:
    """Highest recall over thresholds ``score >= t`` whose false-positive rate is <= ``fpr``.

    Thresholds are the distinct scores (ties are never split) plus "flag nothing" (recall 0).
    """
    y, s = _labels_scores(y_true, score)
    _require_both_classes(y, "recall_at_fpr")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr: must be in [0, 1], got {fpr!r}")
    _, tps, fps = _curve(y, s)
    ok = fps / fps[-1] <= fpr  # fps / n_neg; non-decreasing, so ok is a prefix
    return float(tps[ok].max() / tps[-1]) if ok.any() else 0.0


# ---------------------------------------------------------------------------------------------
# per-task bundles
# ---------------------------------------------------------------------------------------------


def fraud_metrics(y_true: ArrayLike, score: ArrayLike, threshold: float) -> dict[str, float]:
    """Fraud task: pr_auc, roc_auc, f1 at ``threshold``, recall_at_1pct_fpr, positive_rate.

    ``positive_rate`` is the share of positive labels in ``y_true`` (the chance level of pr_auc).
    """
    y, s = _labels_scores(y_true, score)
    return {
        "pr_auc": pr_auc(y, s),
        "roc_auc": roc_auc(y, s),
        "f1": f1_at(y, s, threshold),
        "recall_at_1pct_fpr": recall_at_fpr(y, s, 0.01),
        "positive_rate": float(y.mean()),
    }


def anomaly_metrics(y_true: ArrayLike, score: ArrayLike) -> dict[str, float]:
    """Anomaly task (higher score = more anomalous): roc_auc and pr_auc."""
    y, s = _labels_scores(y_true, score)
    return {"roc_auc": roc_auc(y, s), "pr_auc": pr_auc(y, s)}


def probability_metrics(y_true: ArrayLike, probability: ArrayLike) -> dict[str, float]:
    """A probability estimate (liquidity: P(a channel forwards)): log_loss, brier, ece (expected calibration error
    over ``CALIBRATION_BINS`` equal-width bins), roc_auc (when both outcomes occur) and positive_rate."""
    y, p = _labels_scores(y_true, probability)
    if ((p < 0) | (p > 1)).any():
        i = int(np.argmax((p < 0) | (p > 1)))
        raise ValueError(f"probability: must be in [0, 1], element {i} is {p[i]!r}")
    pc = np.clip(p.astype(np.float64), PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    bins = np.minimum((pc * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    ece = sum(abs(pc[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean()
              for b in range(CALIBRATION_BINS) if (bins == b).any())
    out = {"log_loss": float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
           "brier": float(np.mean((pc - y) ** 2)), "ece": float(ece), "positive_rate": float(y.mean())}
    if 0 < y.sum() < y.size:
        out["roc_auc"] = roc_auc(y, p)
    return out


def fee_metrics(predicted_rate: ArrayLike, required_rate: ArrayLike, conf_target: ArrayLike) -> dict[str, float]:
    """Fee task, all rates in sat/vB.

    A row is a hit when ``predicted >= required``: a tx paying the predicted rate would have confirmed
    within ``conf_target`` blocks. Returns hit_rate, median_overpay_sat_vb (median of
    ``max(pred - required, 0)`` over all rows), median_overpay_ratio (median of ``pred / required``)
    and, for each distinct target k, ``hit_rate_k{k}`` and ``median_overpay_sat_vb_k{k}``.
    ``conf_target`` may be one int for all rows.
    """
    pred = _finite(predicted_rate, "predicted_rate")
    n = pred.size
    req = _finite(required_rate, "required_rate", n, ref="predicted_rate")
    if (req <= 0).any():
        i = int(np.argmax(req <= 0))
        raise ValueError(f"required_rate: must be > 0 sat/vB, element {i} is {req[i]!r}")
    target = np.asarray(conf_target)
    if target.ndim == 0:
        target = np.full(n, target)
    target = _finite(target, "conf_target", n, ref="predicted_rate")
    if (target != np.round(target)).any() or (target < 1).any():
        i = int(np.argmax((target != np.round(target)) | (target < 1)))
        raise ValueError(f"conf_target: must be integers >= 1, element {i} is {target[i]!r}")
    k_all = target.astype(np.int64)

    hit = pred >= req
    overpay = np.maximum(pred - req, 0.0)
    out = {
        "hit_rate": float(hit.mean()),
        "median_overpay_sat_vb": float(np.median(overpay)),
        "median_overpay_ratio": float(np.median(pred / req)),
    }
    for k in np.unique(k_all).tolist():
        rows = k_all == k
        out[f"hit_rate_k{k}"] = float(hit[rows].mean())
        out[f"median_overpay_sat_vb_k{k}"] = float(np.median(overpay[rows]))
    return out
