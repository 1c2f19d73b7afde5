"""A forecast of slow block arrival from the node's peer mix, learned from the node's own timed blocks.

What it learns from: each block the propagation tracker timed (first announcement among our peers -> arrival,
to within a poll), paired with the telemetry of the poll before its announcement: the peer mix the block came
through (``FEATURES``: high-bandwidth compact block peers, pings, the mempool's state). A block is *slow* when
its observed delay is ``SLOW_BLOCK_S`` or more, the ``propagation`` detector's line.

What one node cannot observe: when a block was mined, so the label is the delay from the first announcement our
peers made, not from mining, and it is known only to within a poll (a block that took 20 s can show 0 or one
poll). Nor can it see how much of a block its mempool lacked before the block came. The simulated node knows
all three; ``anya-fl bench network`` scores the forecast against its truth (``network.slow_arrival.*``).

The model: logistic regression on the standardized features (the minimum fee in log scale), L2-penalized, fitted by
Newton's method (deterministic: no seed needed), once the history holds ``MIN_BLOCKS`` timed blocks of which at
least ``MIN_EACH`` were slow and ``MIN_EACH`` were not; refitted every ``REFIT_BLOCKS`` new blocks. A node
that never had a slow block has nothing to learn from and gets no forecast (the finding says so).

Finding ``slow-arrival``/``next-block``: WARNING while P(the next block is slow) >= ``SLOW_ARRIVAL_P``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.alerts import Finding, Severity
from core.bitcoin.network.propagation import SLOW_BLOCK_S, BlockArrival
from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA

FEATURES = ("bip152_hb_to", "ping_p50_ms", "ping_p90_ms", "minping_p50_ms", "mempool_usage_ratio",
            "mempool_min_fee_sat_vb")
_LOG = ("mempool_min_fee_sat_vb",)  # read as log1p (it spans 1 to thousands of sat/vB)
_INDEX = tuple(TELEMETRY_SCHEMA.names.index(f) for f in FEATURES)
MIN_BLOCKS = 24  # four hours of blocks
MIN_EACH = 3
REFIT_BLOCKS = 6
L2 = 1.0  # on standardized features: a ridge that keeps a few dozen blocks from fitting noise
SLOW_ARRIVAL_P = 0.5


def context(vector: np.ndarray) -> tuple[float, ...]:
    """The forecast's features from one telemetry vector (what the tracker keeps per announced block)."""
    return tuple(float(vector[i]) for i in _INDEX)


def _design(rows: Sequence[Sequence[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    for j, name in enumerate(FEATURES):
        if name in _LOG:
            x[:, j] = np.log1p(np.maximum(x[:, j], 0.0))
    return x


@dataclass(frozen=True)
class SlowArrivalModel:
    """P(slow) = sigmoid(((x - mean) / scale) . weights + bias); ``blocks``/``slow``: what it was fitted on."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    blocks: int
    slow: int

    def predict(self, rows: Sequence[Sequence[float]]) -> np.ndarray:
        z = (_design(rows) - self.mean) / self.scale @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def fit(history: Sequence[BlockArrival]) -> SlowArrivalModel | str:
    """The model from timed blocks that carry a context, else why there is none."""
    rows = [a for a in history if a.context is not None and len(a.context) == len(FEATURES)]
    y = np.array([a.delay_s >= SLOW_BLOCK_S for a in rows], dtype=np.float64)
    slow = int(y.sum())
    if len(rows) < MIN_BLOCKS or slow < MIN_EACH or len(rows) - slow < MIN_EACH:
        return (f"{len(rows)} timed blocks, {slow} slow: a forecast needs {MIN_BLOCKS} with at least {MIN_EACH} "
                f"slow and {MIN_EACH} not")
    x = _design([a.context for a in rows])  # type: ignore[misc]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(rows), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], L2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -50, 50)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return SlowArrivalModel(mean, scale, w[:-1], float(w[-1]), len(rows), slow)


class ArrivalForecaster:
    """Refits on the tracker's history as it grows and turns the current peer mix into a finding."""

    def __init__(self) -> None:
        self.model: SlowArrivalModel | None = None
        self.reason = "no timed blocks yet"
        self.fitted_at = -REFIT_BLOCKS  # history length at the last fit

    def update(self, history: Sequence[BlockArrival]) -> None:
        if len(history) - self.fitted_at < REFIT_BLOCKS and len(history) >= self.fitted_at:
            return
        self.fitted_at = len(history)
        result = fit(history)
        self.model, self.reason = (None, result) if isinstance(result, str) else (result, "")

    def probability(self, vector: np.ndarray) -> float | None:
        return None if self.model is None else float(self.model.predict([context(vector)])[0])

    def finding(self, vector: np.ndarray) -> Finding:
        p = self.probability(vector)
        if p is None or not math.isfinite(p):
            return Finding("slow-arrival", "next-block", Severity.INFO, "no slow-arrival forecast yet",
                           self.reason, 0.0, active=False)
        assert self.model is not None
        c = dict(zip(FEATURES, context(vector), strict=True))
        active = p >= SLOW_ARRIVAL_P
        return Finding("slow-arrival", "next-block", Severity.WARNING if active else Severity.INFO,
                       "the next block is likely to arrive late over this peer mix",
                       f"P(slow) {p:.2f} from {self.model.blocks} timed blocks ({self.model.slow} slow): ping p50 "
                       f"{c['ping_p50_ms']:.0f} ms, {c['bip152_hb_to']:.0f} high-bandwidth peers, mempool "
                       f"{100 * c['mempool_usage_ratio']:.0f} % full", p, active=active)
