"""What the membership-inference and evasion checks share: a simulated chain's fraud rows and the DP settings
of their private models."""

from __future__ import annotations

from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import TaskSplits, task_arrays
from core.errors import ConfigError

DP_DELTA = 1e-5
DP_MAX_GRAD_NORM = 1.0


def fraud_splits(n_transactions: int, seed: int) -> TaskSplits:
    """Fraud rows of a simulated chain; refuses a chain too short to put both labels in every split."""
    data = task_arrays(simulate_chain(ChainConfig(n_transactions=n_transactions, seed=seed)))["fraud"]
    for split, y in data.y.items():
        if y.sum() == 0 or y.sum() == len(y):
            raise ConfigError("n_transactions", f"{n_transactions:,} transactions leave the {split} split "
                              f"{len(y)} rows, {int(y.sum())} illicit; simulate more")
    return data
