"""Realistic rows of every task from one call, for benchmarks, export checks and serving tests that need rows, not
a fair evaluation: a simulated chain's (fraud, fee, anomaly), telemetry of simulated nodes under attack (network)
and the channels of a simulated Lightning network (liquidity)."""

from __future__ import annotations

from core.data.chain import Chain
from core.data.datasets import TaskSplits, task_arrays


def sample_task_arrays(chain: Chain, seed: int = 3) -> dict[str, TaskSplits]:
    """Every task's splits: ``chain``'s, and the network and liquidity samples of ``seed`` (cached per process)."""
    from anya_fl.experiments.network_data import sample_network_splits
    from anya_fl.simln.liquidity_data import sample_liquidity_splits

    return {**task_arrays(chain), "network": sample_network_splits(seed), "liquidity": sample_liquidity_splits(seed)}
