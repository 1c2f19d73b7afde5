"""Privacy budget rules: how much a run and a round may spend, and the one exception family for a spent budget.

``choose_sigma`` turns a run's target (cumulative ε, including a resumed history) into a noise
multiplier, or refuses with :class:`BudgetExhausted` when the target is already spent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import AnyaError, ConfigError
from models.privacy.accounting import EPS_REL_TOL, History, epsilon, extend, solve_sigma

if TYPE_CHECKING:
    from models.training import DPConfig


class PrivacyBudgetError(AnyaError):
    """A privacy budget that does not allow the requested training (the message says whose and how much)."""


class BudgetExhausted(PrivacyBudgetError):
    """The privacy budget (target_epsilon) is already spent by the resumed accountant history."""

    def __init__(self, target_epsilon: float, spent_epsilon: float, detail: str = "") -> None:
        self.target_epsilon = target_epsilon
        self.spent_epsilon = spent_epsilon
        msg = f"target_epsilon: budget {target_epsilon:g} exhausted, epsilon already spent {spent_epsilon:.4g}"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class LifetimeBudgetExceeded(PrivacyBudgetError):
    """A node whose next round would pass its lifetime privacy budget (summed over its runs)."""


def round_targets(spent: dict[str, float], epsilon: float, rounds: int) -> dict[str, float]:
    """Each task's cumulative ε target after the coming round: an equal share of the run's ε per round."""
    share = epsilon / rounds
    return {task: min(epsilon, s + share) for task, s in spent.items()}


def run_budget_spent(spent: float, target: float) -> bool:
    """Whether ``spent`` uses up ``target``: a run that aimed at the target stops within the search's tolerance."""
    return spent >= (1.0 - EPS_REL_TOL) * target


def warm_start(history: History, q: float) -> float:
    """Where the noise search starts: a node's noise falls smoothly from round to round, so the last
    two rounds' multipliers (at the same sampling rate) extrapolate to near the answer."""
    if not history:
        return 1.0
    last = history[-1][0]
    if len(history) >= 2 and history[-2][1] == history[-1][1] == q:
        return min(max(last * last / history[-2][0], 0.5 * last), last)
    return last


def choose_sigma(dp: DPConfig, history: History, q: float, steps: int) -> float:
    """Noise multiplier for this run: given directly, or solved so the cumulative epsilon meets the target."""
    if dp.accountant == "gdp" and history and dp.noise_multiplier is None:
        sigma = history[-1][0]  # gdp cannot compose different noise levels: keep the recorded one
    elif dp.noise_multiplier is not None:
        sigma = float(dp.noise_multiplier)
    else:
        sigma = None
    if dp.accountant == "gdp" and history and (history[-1][0] != sigma or history[-1][1] != q):
        raise ConfigError(
            "accountant",
            f"gdp needs a constant noise multiplier and sample rate across resumed runs "
            f"(recorded {history[-1][0]:g}, {history[-1][1]:g}; now {sigma}, {q:g}); use prv or rdp",
        )
    if dp.target_epsilon is None:
        assert sigma is not None
        return sigma
    target = float(dp.target_epsilon)
    spent = epsilon(dp.accountant, history, dp.delta)
    if run_budget_spent(spent, target):
        raise BudgetExhausted(target, spent)
    if sigma is not None:  # gdp resume: noise is fixed, only check that this run fits
        after = epsilon(dp.accountant, extend(history, sigma, q, steps), dp.delta)
        if after > target:
            raise BudgetExhausted(target, spent, f"{steps} more steps would reach {after:.4g}")
        return sigma

    def f(s: float) -> float:
        return epsilon(dp.accountant, extend(history, s, q, steps), dp.delta)

    start = warm_start(history, q)
    if dp.accountant == "prv":
        # RDP's epsilon is a looser bound than PRV's and ~20x cheaper: its sigma starts the PRV search
        # close to (just above) the answer. Only a hint: RDP may rate a resumed history above the target.
        if epsilon("rdp", history, dp.delta) < target:
            try:
                start, _ = solve_sigma(lambda s: epsilon("rdp", extend(history, s, q, steps), dp.delta), target, start)
            except ConfigError:
                pass
    try:
        sigma, _ = solve_sigma(f, target, start)
    except ConfigError:
        if history:  # what is left after the resumed history is below the accountant's resolution
            raise BudgetExhausted(target, spent, "the rest cannot be spent at any noise level") from None
        raise
    return sigma
