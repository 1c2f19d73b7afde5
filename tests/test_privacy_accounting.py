"""models.privacy: accounting as pure functions over an Opacus history, and the budget rules."""

from __future__ import annotations

import pytest
from opacus.accountants import RDPAccountant

from core.errors import AnyaError, ConfigError
from models.privacy import accounting as acc
from models.privacy.budget import BudgetExhausted, PrivacyBudgetError, run_budget_spent


def test_extend_merges_like_opacus_and_state_round_trips() -> None:
    h = acc.extend([], 1.1, 0.01, 100)
    h = acc.extend(h, 1.1, 0.01, 50)  # same mechanism: one entry
    h = acc.extend(h, 2.0, 0.01, 10)
    assert h == [(1.1, 0.01, 150), (2.0, 0.01, 10)]
    state = acc.dump_history(h, "rdp")
    assert acc.load_history(state, "rdp") == h
    with pytest.raises(ConfigError, match="accountant_state: recorded by the 'rdp' accountant"):
        acc.load_history(state, "prv")
    with pytest.raises(ConfigError, match="accountant_state: history entries must be"):
        acc.load_history({"mechanism": "rdp", "history": [[0.0, 0.5, 1]]}, "rdp")


def test_epsilon_is_a_fresh_opacus_accountants() -> None:
    h = [(1.1, 0.01, 150), (2.0, 0.02, 40)]
    fresh = RDPAccountant()
    fresh.history = list(h)
    assert acc.epsilon("rdp", h, 1e-5) == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-12)
    assert acc.epsilon("rdp", [], 1e-5) == 0.0
    assert acc.epsilon_spent(acc.dump_history(h, "rdp"), 1e-5) == acc.epsilon("rdp", h, 1e-5)


def test_budget_rules_and_one_error_family() -> None:
    assert run_budget_spent(7.97, 8.0) and not run_budget_spent(7.9, 8.0)  # within the search's 0.5 % tolerance
    err = BudgetExhausted(8.0, 8.0, "task fraud")
    assert isinstance(err, PrivacyBudgetError) and isinstance(err, AnyaError)
    assert str(err) == "target_epsilon: budget 8 exhausted, epsilon already spent 8 (task fraud)"


@pytest.mark.parametrize(("n", "batch"), [(1_800, 256), (3_000, 256), (7_500, 256), (12_000, 64), (5_000, 512)])
def test_noise_search_meets_every_round_target(n: int, batch: int) -> None:
    """A node's per-round targets (8 equal shares of ε = 8): each round's noise lands in the accepted window,
    warm-started from the last rounds (a small secant step is not mistaken for "more noise no longer helps")."""
    from models.privacy import accounting
    from models.privacy.budget import choose_sigma
    from models.training import DPConfig

    q = batch / n
    steps = 5 * max(1, round(1 / q))
    history: accounting.History = []
    for r in range(8):
        target = 8.0 * (r + 1) / 8
        sigma = choose_sigma(DPConfig(target_epsilon=target, accountant="rdp"), history, q, steps)
        history = accounting.extend(history, sigma, q, steps)
        eps = accounting.epsilon("rdp", history, 1e-5)
        assert (1 - accounting.EPS_REL_TOL) * target <= eps <= target, (r, eps)
