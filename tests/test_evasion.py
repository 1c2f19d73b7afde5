"""Evasion: valid-feature adversarial inputs against the fraud model (FGSM / PGD within a per-column budget).

Measured numbers quoted in comments come from the functions as called here, on 2 shared CPU cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from anya_fl.experiments.evasion import (
    HELD_FIXED,
    adversarial_examples,
    adversarial_flip_rate,
    attack_budget,
    perturbation_size,
    run_adversarial_check,
    train_standard_fraud,
    valid_range_violations,
)
from core import scoring
from core.bitcoin.features import TASK_SCHEMAS
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import task_arrays
from core.errors import ConfigError
from models.tasks import infer
from models.training import single_torch_thread

pytestmark = pytest.mark.slow  # real Flower processes / model training: seconds to a minute each

SCHEMA = TASK_SCHEMAS["fraud"]
FIXED = np.isin(SCHEMA.names, HELD_FIXED)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # as the run_* checks do: these small models run several times faster on one thread of a busy machine
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def fraud():
    """The standard non-private fraud recipe on a 60k chain, its validation best-F1 threshold and test rows."""
    data = task_arrays(simulate_chain(ChainConfig(n_transactions=60_000, seed=0)))["fraud"]
    model, _ = train_standard_fraud(data, seed=0)
    threshold = scoring.best_f1_threshold(data.y["val"], infer(model, data.x["val"]))
    return model, threshold, data.x["test"][:3000]


def _width(space: str) -> np.ndarray:
    """Typical-range widths computed here from the schema, independently of the module."""
    def t(v: float, c) -> float:
        return math.log(v + c.log_offset) if space == "schema" and c.log_offset is not None else v

    return np.array([t(c.typical[1], c) - t(c.typical[0], c) for c in SCHEMA.columns])


def _delta(x: np.ndarray, x_adv: np.ndarray, space: str) -> np.ndarray:
    """|x_adv - x| per cell in raw units or after the schema's log transform of the log columns."""
    a, b = x.astype(np.float64), x_adv.astype(np.float64)
    if space == "schema":
        for j, c in enumerate(SCHEMA.columns):
            if c.log_offset is not None:
                a[:, j], b[:, j] = np.log(a[:, j] + c.log_offset), np.log(b[:, j] + c.log_offset)
    return np.abs(b - a)


@pytest.mark.parametrize("space", ["schema", "raw"])
@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_perturbation_is_valid_and_within_budget(fraud, method, space) -> None:
    model, threshold, x = fraud
    # rows at the edges of the valid ranges, so that the valid-range clip is exercised
    edge = x[:200].copy()
    edge[:, SCHEMA.index("frac_p2wpkh")] = 1.0
    edge[:, SCHEMA.index("round_output_frac")] = 0.0
    edge[:, SCHEMA.index("min_output_btc")] = 0.0
    edge[:, SCHEMA.index("fee_rate")] = 0.0
    rows = np.concatenate([x, edge])
    for eps_frac in (0.02, 0.1, 1.0):
        x_adv = adversarial_examples(model, rows, method=method, eps_frac=eps_frac, threshold=threshold,
                                     space=space)
        assert x_adv.dtype == np.float32 and x_adv.shape == rows.shape
        assert valid_range_violations(x_adv) == 0
        SCHEMA.validate(x_adv)  # raises on any cell outside its valid range
        delta = _delta(rows, x_adv, space)
        budget = eps_frac * _width(space)
        assert (delta <= budget + 1e-6).all()
        np.testing.assert_allclose(delta, perturbation_size(rows, x_adv, space), rtol=1e-9, atol=1e-12)
        assert (x_adv[:, FIXED] == rows[:, FIXED]).all()  # counts and flags are held fixed
        # the attack uses its budget: some cell of every perturbed column moves by (nearly) all of it
        used = delta[:, ~FIXED].max(axis=0) / budget[~FIXED]
        assert used.min() > 0.99
    # at eps_frac 1.0 the valid-range clip bound some edge cells: on a valid bound with budget left over
    lo, hi = (np.array([c.valid[i] for c in SCHEMA.columns], dtype=np.float32) for i in (0, 1))
    on_bound = (x_adv[-200:] == lo) | (x_adv[-200:] == hi)
    assert (on_bound & (delta[-200:] < 0.99 * budget))[:, ~FIXED].any()


def test_zero_budget_flips_nothing(fraud) -> None:
    model, threshold, x = fraud
    for method in ("fgsm", "pgd"):
        assert (adversarial_examples(model, x, method=method, eps_frac=0.0, threshold=threshold) == x).all()
        out = adversarial_flip_rate(model, x, method=method, eps_frac=0.0, threshold=threshold)
        assert out["flip_rate"] == out["flip_rate_illicit"] == out["flip_rate_licit"] == 0.0
        assert out["mean_abs_prob_change"] == 0.0 and out["valid_range_violations"] == 0


@pytest.mark.parametrize("method", ["fgsm", "pgd"])
def test_flip_rate_grows_with_budget(fraud, method) -> None:
    model, threshold, x = fraud
    runs = [adversarial_flip_rate(model, x, method=method, eps_frac=f, threshold=threshold)
            for f in (0.0, 0.02, 0.05, 0.1)]
    assert len({(r["flagged_illicit_rows"], r["licit_rows"]) for r in runs}) == 1  # the same rows each time
    for key in ("flip_rate", "flip_rate_illicit", "flip_rate_licit", "mean_abs_prob_change"):
        values = [r[key] for r in runs]
        assert values == sorted(values), (key, values)
    # the gradient direction works: on these 3,000 rows (106 flagged) the flagged rows' evasion rate is
    # 0.14 / 0.28 / 0.55 at eps_frac 0.02 / 0.05 / 0.1 for both methods; 0.3 at 0.1 leaves room for noise
    assert runs[-1]["flip_rate_illicit"] > 0.3
    assert all(r["max_budget_use"] <= 1.0 for r in runs)


def test_attack_is_deterministic_and_subsamples_by_seed(fraud) -> None:
    model, threshold, x = fraud
    a = adversarial_flip_rate(model, x, method="pgd", eps_frac=0.05, threshold=threshold)
    b = adversarial_flip_rate(model, x, method="pgd", eps_frac=0.05, threshold=threshold)
    assert a == b
    s1 = adversarial_flip_rate(model, x, method="fgsm", eps_frac=0.05, threshold=threshold, n=500, seed=1)
    s1b = adversarial_flip_rate(model, x, method="fgsm", eps_frac=0.05, threshold=threshold, n=500, seed=1)
    s2 = adversarial_flip_rate(model, x, method="fgsm", eps_frac=0.05, threshold=threshold, n=500, seed=2)
    assert s1 == s1b and s1["rows"] == 500
    assert s1 != s2


def test_bad_arguments_are_refused(fraud) -> None:
    model, threshold, x = fraud
    with pytest.raises(ConfigError, match="n_transactions"):
        run_adversarial_check(n_transactions=20_000)  # no validation rows in so short a chain
    with pytest.raises(ConfigError, match="method"):
        adversarial_examples(model, x, method="cw")
    with pytest.raises(ConfigError, match="space"):
        attack_budget(0.05, "log")
    with pytest.raises(ConfigError, match="eps_frac"):
        attack_budget(-0.1)


def test_run_adversarial_check_small_is_deterministic() -> None:
    def run():
        report = run_adversarial_check(seed=0, epsilons=(8.0,), n_transactions=30_000, eps_fracs=(0.0, 0.05),
                                       methods=("fgsm",))
        report.pop("seconds")
        for row in report["models"]:
            row.pop("train_seconds")
        return report

    report = run()
    assert report == run()
    nonpriv, dp8 = report["models"]
    assert not nonpriv["private"] and dp8["private"] and dp8["epsilon"] <= 8.0
    for row in report["models"]:
        zero, five = row["attacks"]
        assert zero["flip_rate"] == 0.0 and five["flip_rate"] > 0.0
        assert zero["threshold"] == five["threshold"] == row["threshold"]
        assert five["rows"] == report["test_rows"] and five["valid_range_violations"] == 0
