"""core.scoring against scikit-learn (random data with ties) and hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from core.scoring import (
    anomaly_metrics,
    best_f1_threshold,
    f1_at,
    fee_metrics,
    fraud_metrics,
    pr_auc,
    recall_at_fpr,
    roc_auc,
)

# (label, score) pairs; scores on a coarse grid so ties are frequent
rows = st.lists(st.tuples(st.booleans(), st.integers(-3, 6)), min_size=2, max_size=60).filter(
    lambda r: 0 < sum(lab for lab, _ in r) < len(r)
)


def _split(r: list[tuple[bool, int]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([lab for lab, _ in r], dtype=np.int64)
    s = np.array([v for _, v in r], dtype=np.float64) / 4.0
    return y, s


def _sk_recall_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    return float(t[f <= fpr].max())


def _brute_best_f1(y: np.ndarray, s: np.ndarray) -> float:
    """Best F1 over every distinct threshold, by direct counting (sklearn's f1_score is too slow here)."""
    y = y.astype(bool)
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        best = max(best, 2 * tp / (pred.sum() + y.sum()))
    return float(best)


@settings(max_examples=150, deadline=None)
@given(rows)
def test_matches_sklearn_with_ties(r: list[tuple[bool, int]]) -> None:
    y, s = _split(r)
    assert pr_auc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    f, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for fpr in (0.0, 0.01, 0.1, 0.25, 0.5, 1.0):
        assert recall_at_fpr(y, s, fpr) == pytest.approx(tpr[f <= fpr].max(), abs=1e-12)
    t = best_f1_threshold(y, s)
    assert t in set(s.tolist())
    assert f1_at(y, s, t) == pytest.approx(_brute_best_f1(y, s), abs=1e-12)
    assert f1_at(y, s, t) == pytest.approx(f1_score(y, s >= t), abs=1e-12)
    assert _brute_best_f1(y, s) == pytest.approx(max(f1_score(y, s >= u) for u in np.unique(s)), abs=1e-12)


def test_matches_sklearn_seeded_large() -> None:
    rng = np.random.default_rng(7)
    for i in range(20):
        n = int(rng.integers(50, 3000))
        y = rng.random(n) < rng.uniform(0.01, 0.5)
        y[rng.integers(n)] = True
        y[rng.integers(n)] = False
        # continuous for half the runs, heavily tied for the rest
        s = rng.normal(size=n) + y * rng.uniform(0, 2)
        if i % 2:
            s = np.round(s, 1)
        assert pr_auc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-10)
        assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-10)
        assert recall_at_fpr(y, s) == pytest.approx(_sk_recall_at_fpr(y, s, 0.01), abs=1e-12)
        t = best_f1_threshold(y, s)
        assert f1_at(y, s, t) == pytest.approx(_brute_best_f1(y, s), abs=1e-12)
        thr = float(np.quantile(s, 0.9))
        assert f1_at(y, s, thr) == pytest.approx(f1_score(y, s >= thr), abs=1e-12)


def test_accepts_lists_bools_and_float_labels() -> None:
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0
    assert pr_auc(np.array([0.0, 1.0, 1.0]), [1, 2, 2]) == 1.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_recall_at_fpr_hand_checked() -> None:
    # 4 positives, 10 negatives; descending: P(0.9) N(0.8) P(0.7) P,N tie at 0.6, P(0.5), then negatives
    y = [1, 0, 1, 1, 0, 1] + [0] * 8
    s = [0.9, 0.8, 0.7, 0.6, 0.6, 0.5] + [0.4, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02]
    assert recall_at_fpr(y, s, 0.0) == 0.25  # only the top positive before any negative
    assert recall_at_fpr(y, s, 0.05) == 0.25  # one negative is already 10 % fpr
    assert recall_at_fpr(y, s, 0.1) == 0.5  # threshold 0.7: 2 TP, 1 FP
    # threshold 0.6 takes the tied negative too: 3 TP, 2 FP (fpr 0.2) -- the tie is never split
    assert recall_at_fpr(y, s, 0.15) == 0.5
    assert recall_at_fpr(y, s, 0.2) == 1.0  # threshold 0.5 still has 2 FP
    assert recall_at_fpr(y, s, 1.0) == 1.0


def test_recall_at_fpr_exact_boundary() -> None:
    # 29 false positives out of 100 negatives is exactly fpr 0.29 (29 <= 0.29 * 100 fails in float)
    y = np.r_[np.ones(10, bool), np.zeros(100, bool)]
    s = np.r_[np.full(10, 0.5), np.full(29, 0.9), np.arange(71) / 1000.0]
    assert recall_at_fpr(y, s, 0.29) == 1.0
    assert recall_at_fpr(y, s, 0.28) == 0.0


def test_best_f1_threshold_hand_checked() -> None:
    y = [1, 1, 0, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.2, 0.1]
    # t=0.8: tp2 fp0 fn1 -> 0.8 ; t=0.6: tp3 fp1 -> 6/7 ; best is 0.6
    assert best_f1_threshold(y, s) == 0.6
    assert f1_at(y, s, 0.6) == pytest.approx(6 / 7)
    assert f1_at(y, s, 0.8) == pytest.approx(0.8)
    assert f1_at(y, s, 2.0) == 0.0
    assert f1_at([0, 0], [0.1, 0.2], 0.5) == 0.0  # nothing to find, nothing flagged
    assert best_f1_threshold([1, 1], [0.3, 0.4]) == 0.3  # all positive: flag everything


def test_fraud_and_anomaly_bundles() -> None:
    y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.3, 0.05])
    m = fraud_metrics(y, s, threshold=0.35)
    assert set(m) == {"pr_auc", "roc_auc", "f1", "recall_at_1pct_fpr", "positive_rate"}
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["f1"] == pytest.approx(f1_score(y, s >= 0.35))
    assert m["recall_at_1pct_fpr"] == pytest.approx(2 / 3)
    assert m["positive_rate"] == pytest.approx(3 / 8)
    assert all(isinstance(v, float) for v in m.values())
    a = anomaly_metrics(y, s)
    assert a == {"roc_auc": m["roc_auc"], "pr_auc": m["pr_auc"]}


def test_fee_metrics_hand_checked() -> None:
    pred = [10.0, 5.0, 20.0, 3.0, 8.0]
    req = [8.0, 6.0, 10.0, 3.0, 2.0]
    k = [1, 1, 6, 6, 6]
    m = fee_metrics(pred, req, k)
    # hits: T F T T T ; overpay: 2 0 10 0 6 ; ratio: 1.25 .833 2 1 4
    assert m["hit_rate"] == pytest.approx(0.8)
    assert m["median_overpay_sat_vb"] == pytest.approx(2.0)
    assert m["median_overpay_ratio"] == pytest.approx(1.25)
    assert m["hit_rate_k1"] == pytest.approx(0.5)
    assert m["median_overpay_sat_vb_k1"] == pytest.approx(1.0)
    assert m["hit_rate_k6"] == pytest.approx(1.0)
    assert m["median_overpay_sat_vb_k6"] == pytest.approx(6.0)
    assert set(m) == {
        "hit_rate",
        "median_overpay_sat_vb",
        "median_overpay_ratio",
        "hit_rate_k1",
        "median_overpay_sat_vb_k1",
        "hit_rate_k6",
        "median_overpay_sat_vb_k6",
    }
    # one target for all rows; numpy int targets give plain int keys
    m2 = fee_metrics(np.array(pred), np.array(req), np.int32(3))
    assert m2["hit_rate_k3"] == m["hit_rate"]
    assert fee_metrics([1.0], [1.0], np.array([2.0]))["hit_rate_k2"] == 1.0


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: pr_auc([1, 1, 1], [0.1, 0.2, 0.3]), "y_true"),
        (lambda: roc_auc([0, 0], [0.1, 0.2]), "y_true"),
        (lambda: recall_at_fpr([0, 0], [0.1, 0.2]), "y_true"),
        (lambda: anomaly_metrics([1, 1], [0.1, 0.2]), "y_true"),
        (lambda: fraud_metrics([0, 0], [0.1, 0.2], 0.5), "y_true"),
        (lambda: pr_auc([], []), "y_true"),
        (lambda: roc_auc([0, 1, 2], [0.1, 0.2, 0.3]), "y_true"),
        (lambda: roc_auc(["a", "b"], [0.1, 0.2]), "y_true"),
        (lambda: roc_auc([[0, 1]], [[0.1, 0.2]]), "y_true"),
        (lambda: pr_auc([0, 1], [0.1, 0.2, 0.3]), "score"),
        (lambda: roc_auc([0, 1], [0.1, math.nan]), "score"),
        (lambda: pr_auc([0, 1], [0.1, math.inf]), "score"),
        (lambda: f1_at([0, 1], [0.1, 0.2], math.nan), "threshold"),
        (lambda: f1_at([0, 1], [0.1], 0.5), "score"),
        (lambda: best_f1_threshold([0, 0], [0.1, 0.2]), "y_true"),
        (lambda: best_f1_threshold([0, 1], [0.1, math.nan]), "score"),
        (lambda: recall_at_fpr([0, 1], [0.1, 0.2], fpr=1.5), "fpr"),
        (lambda: fee_metrics([], [], []), "predicted_rate"),
        (lambda: fee_metrics([1.0, 2.0], [1.0], [1, 2]), "required_rate"),
        (lambda: fee_metrics([1.0], [1.0], [1, 2]), "conf_target"),
        (lambda: fee_metrics([1.0], [0.0], [1]), "required_rate"),
        (lambda: fee_metrics([math.nan], [1.0], [1]), "predicted_rate"),
        (lambda: fee_metrics([1.0], [1.0], [0]), "conf_target"),
        (lambda: fee_metrics([1.0], [1.0], [1.5]), "conf_target"),
    ],
)
def test_errors_name_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()
