"""The payer's estimates of P(a hop forwards an amount), and how good they are against the simulator's truth.

* ``uniform_prior``: probabilistic pathfinding's (Pickhardt and Richter): a balance uniform on [0, c], so
  P(a) = (c + 1 - a) / (c + 1).
* ``bimodal_prior``: LND's bimodal estimator without observations (routing/probability_bimodal.go): a balance
  density proportional to exp(-x / s) + exp(-(c - x) / s), most channels being nearly empty on one side, with
  LND's default scale s = 300,000 sat; P(a) is that density's mass above a.

``score`` gives the log-loss, the Brier score and the calibration (expected calibration error over 10 bins) of
an estimator on hops whose outcome the simulator knows; ``success_rate`` plays the same workload with a payer
that routes by each estimator (``model_estimator``: a liquidity model as one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from anya_fl.simln.network import Estimator, Hop, SimLN, SimLNConfig, uniform_prior
from core.lightning.liquidity import BIMODAL_SCALE_SAT, features
from core.scoring import probability_metrics


def bimodal_prior(hop: Hop, amount_sat: int, scale_sat: float = BIMODAL_SCALE_SAT) -> float:
    """P(balance >= amount) under LND's bimodal density on [0, c]."""
    c, a = float(hop.capacity_sat), float(amount_sat)
    if a <= 0:
        return 1.0
    if a >= c:
        return 0.0
    s = scale_sat
    total = 2.0 * -math.expm1(-c / s)  # the density's mass on [0, c], times s
    above = (math.exp(-a / s) - math.exp(-c / s)) + -math.expm1(-(c - a) / s)
    return min(1.0, max(0.0, above / total))


ESTIMATORS: dict[str, Estimator] = {"uniform": uniform_prior, "bimodal": bimodal_prior}


@dataclass(frozen=True)
class Scores:
    log_loss: float
    brier: float
    ece: float  # expected calibration error, 10 equal-width bins
    n: int
    positive_rate: float


def score(p: Sequence[float], y: Sequence[bool]) -> Scores:
    """How well probabilities ``p`` predict outcomes ``y`` (``core.scoring.probability_metrics``)."""
    m = probability_metrics(np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64))
    return Scores(m["log_loss"], m["brier"], m["ece"], len(p), m["positive_rate"])


def model_estimator(predict: Callable[[np.ndarray], np.ndarray]) -> Callable[[SimLN], Estimator]:
    """A liquidity model as a payer's estimator on ``net``: each hop's LIQUIDITY_SCHEMA row (the channel as its
    gossip shows it now, and the amount) through ``predict`` (rows -> P(forwards))."""
    from anya_fl.simln.liquidity_data import direction, tip

    def make(net: SimLN) -> Estimator:
        def estimate(hop: Hop, amount_sat: int) -> float:
            row = features(direction(net.channels[hop.channel], hop.src), amount_sat, tip(net))
            return float(predict(row[None, :])[0])
        return estimate
    return make


def success_rate(config: SimLNConfig, make_estimator: Callable[[SimLN], Estimator], hours: float) -> dict[str, float]:
    """The same network and workload, the payer routing by ``make_estimator(net)``: payments that succeeded, mean
    attempts."""
    net = SimLN(config)
    net.estimator = make_estimator(net)
    payments = net.advance(hours * 3600)
    done = [p for p in payments if p.attempts > 0]
    return {"payments": float(len(payments)), "success_rate": sum(p.succeeded for p in payments) / len(payments),
            "mean_attempts": float(np.mean([p.attempts for p in done])) if done else 0.0}
