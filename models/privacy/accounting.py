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

ACCOUNTANTS = ("prv", "rdp", "gdp")
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

    f is epsilon as a decreasing function of sigma. Brackets from `start`, then interpolates in
    log-log space (safeguarded false position), which converges in a handful of accountant calls.
    """
    hi = max(min(start, SIGMA_MAX), SIGMA_MIN)
    f_hi = f(hi)
    while f_hi > target:
        f_prev = f_hi
        hi = min(hi * 2.0, SIGMA_MAX)
        f_hi = f(hi)
        # more noise no longer helps (a resumed history's own epsilon, or the accountant's resolution)
        if f_hi > target and (hi >= SIGMA_MAX or f_hi > 0.999 * f_prev):
            raise ConfigError("target_epsilon", f"{target:g} is too small to reach with any noise multiplier")
    if f_hi >= (1.0 - EPS_REL_TOL) * target:
        return hi, f_hi
    lo, f_lo = hi, f_hi
    while f_lo <= target:
        if lo <= SIGMA_MIN:
            return lo, f_lo  # even the least noise we allow stays under the target
        hi, f_hi = lo, f_lo
        lo = max(lo / 1.25, SIGMA_MIN)
        f_lo = f(lo)
    # invariant: lo < hi, f(lo) > target >= f(hi)
    for _ in range(60):
        if f_hi >= (1.0 - EPS_REL_TOL) * target or hi / lo - 1.0 < 1e-9:
            break
        t = 0.5
        if math.isfinite(f_lo) and f_lo > 0 and f_hi > 0:
            a, b = math.log(f_lo / target), math.log(f_hi / target)
            t = min(max(a / (a - b), 0.05), 0.95)
        mid = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
        f_mid = f(mid)
        if f_mid > target:
            lo, f_lo = mid, f_mid
        else:
            hi, f_hi = mid, f_mid
    return hi, f_hi
