"""Privacy accounting as pure functions over an accountant history (no training, no state).

A history is Opacus' own: a list of ``(noise_multiplier, sample_rate, steps)`` entries. ``epsilon``
asks a fresh Opacus accountant (RDP computed exactly as Opacus' ``RDPAccountant`` does, each entry's
curve cached), ``extend`` merges steps the way Opacus does, ``solve_sigma`` finds the noise that meets
a target, and ``load_history`` / ``dump_history`` read and write the JSON state a node keeps.
The rules for spending (targets, per-round shares, lifetime budgets) are in :mod:`models.privacy.budget`.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from opacus.accountants import create_accountant

from core.errors import ConfigError
from core.fedconfig import ACCOUNTANTS, DEFAULT_ACCOUNTANT

__all__ = ["ACCOUNTANTS", "DEFAULT_ACCOUNTANT", "REPORT_ACCOUNTANT", "dump_history", "epsilon", "epsilon_spent",
           "extend", "load_history", "rdp_curve", "solve_sigma"]

REPORT_ACCOUNTANT = "prv"  # one-off centralized reports (baseline, membership inference, evasion): the tightest
SIGMA_MIN = 0.3  # below this PRV gets very slow (minutes) and the privacy is meaningless anyway
SIGMA_MAX = 1e6  # as opacus.accountants.utils.MAX_SIGMA
EPS_REL_TOL = 0.005  # target_epsilon search stops once epsilon is within 0.5 % below the target

History = list[tuple[float, float, int]]


def load_history(state: dict | None, accountant: str) -> History:
    """Parse an accountant_state dict (as returned in TrainResult) into an Opacus history list."""
    if state is None:
        return []
    if not isinstance(state, dict) or "history" not in state or "mechanism" not in state:
        raise ConfigError("accountant_state", "expected a dict with 'mechanism' and 'history' from a TrainResult")
    if state["mechanism"] != accountant:
        raise ConfigError(
            "accountant_state",
            f"recorded by the {state['mechanism']!r} accountant, cannot resume with accountant {accountant!r}",
        )
    history: History = []
    try:
        for sigma, q, steps in state["history"]:
            history.append((float(sigma), float(q), int(steps)))
    except (TypeError, ValueError) as exc:
        raise ConfigError("accountant_state", f"malformed history: {exc}") from exc
    if any(not (s > 0 and 0 < q <= 1 and k >= 1) for s, q, k in history):
        raise ConfigError("accountant_state", "history entries must be (noise_multiplier > 0, 0 < q <= 1, steps >= 1)")
    if accountant == "gdp" and len(history) > 1:
        raise ConfigError("accountant_state", "a gdp history holds a single (noise_multiplier, q, steps) entry")
    return history


def epsilon_spent(accountant_state: dict | None, delta: float) -> float:
    """Epsilon already spent according to a saved accountant state (0 for none)."""
    if accountant_state is None:
        return 0.0
    mechanism = str(accountant_state.get("mechanism", ""))
    return epsilon(mechanism, load_history(accountant_state, mechanism), delta)


def dump_history(history: History, accountant: str) -> dict[str, Any]:
    """JSON-serializable accountant state; same keys as Opacus' IAccountant.state_dict()."""
    return {"mechanism": accountant, "history": [[float(s), float(q), int(k)] for s, q, k in history]}


def extend(history: History, sigma: float, q: float, steps: int) -> History:
    """History after `steps` more steps at (sigma, q), merged the way Opacus accountants merge."""
    if history and history[-1][0] == sigma and history[-1][1] == q:
        return [*history[:-1], (sigma, q, history[-1][2] + steps)]
    return [*history, (sigma, q, steps)]


RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # = RDPAccountant.DEFAULT_ALPHAS


def epsilon(accountant: str, history: History, delta: float) -> float:
    """Epsilon of `history` at `delta` from a fresh Opacus accountant (0 for an empty history)."""
    return _epsilon_cached(accountant, tuple(history), delta) if history else 0.0


@functools.lru_cache(maxsize=1024)
def rdp_curve(sigma: float, q: float, steps: int) -> np.ndarray:
    """RDP of one history entry at Opacus' default orders (what RDPAccountant sums over its history)."""
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=RDP_ORDERS))


@functools.lru_cache(maxsize=256)
def _epsilon_cached(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Memoized: the sigma search and the final report often ask for the same history (PRV costs ~0.1-1 s).

    RDP is computed exactly as Opacus' RDPAccountant does (sum of per-entry RDP curves, then the
    conversion to (epsilon, delta)), with each entry's curve cached: a federated node's history grows
    by one entry per round and the sigma search re-evaluates only the new entry.
    """
    if accountant == "rdp":
        from opacus.accountants.analysis import rdp as rdp_analysis

        total = sum(rdp_curve(s, q, k) for s, q, k in history)
        eps, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=total, delta=delta)
        return float(eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gdp "experimental", RDP alpha-range and PRV overflow warnings
        acc = create_accountant(accountant)
        acc.history = list(history)
        return float(acc.get_epsilon(delta=delta))


def solve_sigma(f: Callable[[float], float], target: float, start: float) -> tuple[float, float]:
    """Smallest-ish sigma with f(sigma) <= target, f(sigma) >= (1 - tol) * target where reachable.

    f is epsilon as a decreasing function of sigma, close to a power law (epsilon ~ sigma^-p). From
    `start` it steps by secants in log-log space aimed at the middle of the accepted window, until it
    lands there or brackets the answer; a bracket then closes by safeguarded false position. A warm
    `start` (the node's last noise multiplier) lands within the window in two or three accountant calls.
    """
    aim = (1.0 - EPS_REL_TOL / 2) * target

    def accepted(value: float) -> bool:
        return (1.0 - EPS_REL_TOL) * target <= value <= target

    s = max(min(start, SIGMA_MAX), SIGMA_MIN)
    fs = f(s)
    lo: tuple[float, float] | None = None  # (sigma, f) with f > target
    hi: tuple[float, float] | None = None  # (sigma, f) with f <= target
    prev: tuple[float, float] | None = None
    for _ in range(80):
        if accepted(fs):
            return s, fs
        if fs > target:
            lo = (s, fs)
            flat = (prev is not None and prev[0] < s and prev[1] > 0 and fs > 0
                    and -math.log(fs / prev[1]) < 0.01 * math.log(s / prev[0]))  # slope above -0.01 in log-log
            if s >= SIGMA_MAX or flat:
                # more noise no longer helps (a resumed history's own epsilon, or the accountant's resolution)
                raise ConfigError("target_epsilon", f"{target:g} is too small to reach with any noise multiplier")
        else:
            hi = (s, fs)
            if s <= SIGMA_MIN:
                return s, fs  # even the least noise we allow stays under the target
        secant = None  # the next sigma from the last two points, in log-log space
        if prev is not None and prev[1] > 0 and fs > 0 and prev[0] != s and math.isfinite(prev[1]) and math.isfinite(fs):
            p = -math.log(fs / prev[1]) / math.log(s / prev[0])
            if p > 0:
                secant = s * (fs / aim) ** (1.0 / min(max(p, 0.25), 8.0))
        if lo is not None and hi is not None:
            if hi[0] / lo[0] - 1.0 < 1e-9:
                break
            if secant is not None and lo[0] < secant < hi[0]:
                nxt = secant
            else:  # safeguarded false position on the bracket
                t = 0.5
                if math.isfinite(lo[1]) and lo[1] > 0 and hi[1] > 0:
                    a, b = math.log(lo[1] / aim), math.log(hi[1] / aim)
                    t = min(max(a / (a - b), 0.05), 0.95)
                nxt = math.exp(math.log(lo[0]) + t * (math.log(hi[0]) - math.log(lo[0])))
        elif secant is not None:
            nxt = s * min(max(secant / s, 0.25), 4.0)
        else:  # first step: epsilon falls roughly as sigma^-2 for the noise levels DP-SGD uses
            nxt = s * min(max((fs / aim) ** 0.5 if fs > 0 and math.isfinite(fs) else 2.0, 0.25), 4.0)
        prev = (s, fs)
        s = max(min(nxt, SIGMA_MAX), SIGMA_MIN)
        fs = f(s)
    if fs <= target:
        return s, fs
    if hi is None:
        raise ConfigError("target_epsilon", f"{target:g} is not reachable: the accountant did not converge")
    return hi
