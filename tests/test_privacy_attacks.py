"""Membership inference against the fraud model: an overfit model leaks its illicit members, DP closes the leak.

Measured numbers quoted in comments come from the functions as called here, on 2 shared CPU cores.
"""

from __future__ import annotations

import numpy as np
import pytest

from anya_fl.experiments.membership_inference import max_advantage, membership_inference, run_membership_check
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import task_arrays
from models.tasks import build_model
from models.training import single_torch_thread

pytestmark = pytest.mark.slow  # real Flower processes / model training: seconds to a minute each


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # as the run_* checks do: these small models run several times faster on one thread of a busy machine
    with single_torch_thread():
        yield


# ------------------------------------------------------------------------------ membership inference


@pytest.fixture(scope="module")
def membership():
    # the default check: 2,000 members, 200 epochs, non-private and DP at eps 1 and 8 (~18 s)
    return run_membership_check(seed=0)


def test_overfit_model_leaks_illicit_membership_and_dp_closes_it(membership) -> None:
    nonpriv, dp1, dp8 = membership["models"]
    assert (nonpriv["target_epsilon"], dp1["target_epsilon"], dp8["target_epsilon"]) == (None, 1.0, 8.0)
    assert dp1["epsilon"] <= 1.0 and dp8["epsilon"] <= 8.0
    # the non-private model memorized its 2,000 rows (final train loss 0.0012)
    assert nonpriv["train_loss"] < 0.01
    assert nonpriv["n_illicit_members"] == nonpriv["n_illicit_nonmembers"] == membership["members_illicit"] > 50

    # The leak is in the illicit rows: the overfit model gives its 67 illicit members a near-zero loss
    # (mean 0.02) and a share of the 67 illicit non-members a high one (mean 5.7). Measured attack AUC on
    # illicit rows 0.691 (0.656 and 0.640 at seeds 1 and 2); with 67 rows a side the AUC's standard error
    # is ~0.05, so 0.6 is a conservative bound that still means "clearly above chance".
    auc = nonpriv["attack_auc_illicit"]
    assert auc > 0.6
    # DP at eps 1: measured 0.490 (0.503, 0.497 at seeds 1 and 2): within 0.05 of chance, and its best
    # threshold's advantage falls from 0.49 to 0.06 (seeds 1, 2: 0.43 -> 0.09, 0.41 -> 0.07).
    assert abs(dp1["attack_auc_illicit"] - 0.5) < 0.05
    assert abs(dp1["attack_auc_illicit"] - 0.5) < abs(auc - 0.5)
    assert dp1["attack_advantage_illicit"] < 0.5 * nonpriv["attack_advantage_illicit"]
    # DP at eps 8 is weaker protection: measured 0.608 at seed 0 (0.502, 0.497 at seeds 1 and 2), so we
    # assert only that it is closer to chance than the non-private model, not a fixed bound.
    assert abs(dp8["attack_auc_illicit"] - 0.5) < abs(auc - 0.5)


def test_global_loss_threshold_sees_no_leak_on_easy_rows(membership) -> None:
    # Over all rows (3 % illicit) members and non-members are both mostly easy licit rows with a
    # near-zero loss, so one global threshold does not separate them even for the overfit model:
    # measured AUC 0.497 / 0.499 / 0.496 (non-private / eps 1 / eps 8; seeds 1 and 2 within 0.01 of 0.5).
    # The bound documents that finding (the README reports per-label numbers for this reason).
    for row in membership["models"]:
        assert abs(row["attack_auc"] - 0.5) < 0.03
        assert abs(row["attack_auc_licit"] - 0.5) < 0.03


def test_privacy_costs_utility(membership) -> None:
    # test PR-AUC measured 0.683 (non-private) > 0.571 (eps 8) > 0.260 (eps 1); same order at seeds 1, 2
    nonpriv, dp1, dp8 = membership["models"]
    assert nonpriv["test_pr_auc"] > dp8["test_pr_auc"] > dp1["test_pr_auc"]


def test_membership_check_is_deterministic() -> None:
    def run():
        report = run_membership_check(seed=5, n_train=300, epochs=5, epsilons=(1.0,))
        report.pop("seconds")
        for row in report["models"]:
            row.pop("train_seconds")
        return report

    assert run() == run()


def test_identical_member_and_nonmember_sets_give_chance() -> None:
    # the attack sees only losses: the same rows on both sides must score exactly 0.5 and advantage 0
    data = task_arrays(simulate_chain(ChainConfig(n_transactions=5_000, seed=1)))["fraud"]
    model = build_model("fraud", seed=1)
    x, y = data.x["train"], data.y["train"]
    out = membership_inference(model, x, y, x, y, n=len(x), seed=0)
    assert out["attack_auc"] == 0.5 and out["attack_advantage"] == 0.0
    assert out["n"] == len(x) and out["member_loss"] == out["nonmember_loss"]


def test_max_advantage_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    member = rng.random(300) < 0.5
    score = np.round(rng.normal(size=300) + 0.5 * member, 1)  # rounded: many ties
    brute = max(
        [0.0] + [np.mean(score[member] >= t) - np.mean(score[~member] >= t) for t in np.unique(score)]
    )
    assert max_advantage(member, score) == pytest.approx(brute, abs=1e-12)
