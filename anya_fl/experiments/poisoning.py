"""Attack simulation: what a poisoning node does to the update it sends (for robustness experiments).

A malicious node runs the honest ClientApp's training (:func:`fl_client.app.train_reply`); the attack
ClientApp (:mod:`anya_fl.experiments.attack_app`) hands it these functions as hooks, which change only its
training labels or the weights it replies with. The server sees an ordinary reply. Attacks (``attack`` in
the run config):

- ``sign-flip``: sends the global model minus its honest update (the update reversed).
- ``scaling``: sends the global model plus 10x its honest update.
- ``gaussian``: sends the global model plus N(0, 1) noise on every weight (an update unrelated to the data).
- ``label-flip``: trains honestly on flipped labels: fraud classes swapped, fee targets shuffled across
  rows (the mapping from mempool state to fee broken); the anomaly autoencoder has no labels and is
  unaffected.
- ``alie`` ("a little is enough", Baruch et al. 2019): sends mean - z * std of benign updates,
  coordinate-wise, with z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - m for n nodes and m attackers.
  A node cannot see other nodes' updates, so the mean is its own honest update and the std is
  estimated from ``ALIE_SHARDS`` updates trained on disjoint shards of its data (an approximation of
  the colluding attackers' estimate; it costs the attacker extra training).

Which nodes are malicious: a seeded choice of ``round(malicious * nodes)`` partitions, or ``malicious =
true`` in a simulated node's config. The deployed ClientApp refuses both settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from statistics import NormalDist
from typing import Any

import numpy as np
import torch

from core.fedconfig import ATTACKS

__all__ = ["ATTACKS", "alie_shard_updates", "alie_z", "is_malicious", "malicious_partitions", "poison_labels",
           "poison_update"]

SCALE = 10.0
NOISE_STD = 1.0
ALIE_SHARDS = 4


def malicious_partitions(nodes: int, fraction: float, seed: int) -> set[int]:
    """The partition ids that attack: a seeded choice of round(fraction * nodes) of them."""
    m = int(round(fraction * nodes))
    rng = np.random.default_rng(seed * 7_777 + 101)
    return {int(p) for p in rng.permutation(nodes)[:m]}


def is_malicious(node_config: Mapping[str, Any], attack: str, fraction: float, nodes: int, seed: int) -> bool:
    """Whether this node attacks in this run."""
    if not attack:
        return False
    flag = node_config.get("malicious")
    if flag is not None:
        return str(flag).lower() in ("1", "true", "yes")
    pid = node_config.get("partition-id")
    return pid is not None and int(pid) in malicious_partitions(nodes, fraction, seed)


def poison_labels(task: str, y: np.ndarray, seed: int) -> np.ndarray:
    """Label flipping: fraud classes swapped; fee targets shuffled; anomaly targets unchanged."""
    if task == "fraud":
        return (1.0 - y).astype(y.dtype)
    if task == "fee":
        return np.random.default_rng(seed).permutation(y)
    return y


def alie_z(nodes: int, attackers: int) -> float:
    """Baruch et al.'s z_max for n nodes of which m attack (at least 0.1 so the shift is never zero)."""
    s = math.floor(nodes / 2 + 1) - attackers
    p = (nodes - s) / nodes
    return max(0.1, NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6)))


def poison_update(attack: str, global_w: Mapping[str, torch.Tensor], honest_w: Mapping[str, torch.Tensor], *,
                  seed: int, shard_updates: list[Mapping[str, torch.Tensor]] | None = None,
                  z: float = 1.0) -> dict[str, torch.Tensor]:
    """The weights a malicious node sends instead of ``honest_w`` (same keys, shapes and dtype)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w0 in global_w.items():
        delta = honest_w[key] - w0
        if attack == "sign-flip":
            out[key] = w0 - delta
        elif attack == "scaling":
            out[key] = w0 + SCALE * delta
        elif attack == "gaussian":
            out[key] = w0 + NOISE_STD * torch.randn(w0.shape, generator=g, dtype=w0.dtype)
        elif attack == "alie":
            found = [s[key] for s in (shard_updates or []) if key in s]
            std = torch.stack(found).std(dim=0, unbiased=False) if len(found) > 1 else torch.zeros_like(delta)
            out[key] = w0 + delta - z * std
        else:  # label-flip poisons the data, not the update
            out[key] = honest_w[key]
    return out


def alie_shard_updates(train_shard: Callable[[np.ndarray], dict[str, torch.Tensor]], n_rows: int,
                       global_w: Mapping[str, torch.Tensor], seed: int) -> list[dict[str, torch.Tensor]]:
    """Updates trained on ALIE_SHARDS disjoint shards of the node's rows (``train_shard(index)`` -> weights)."""
    idx = np.random.default_rng(seed).permutation(n_rows)
    updates = []
    for part in np.array_split(idx, ALIE_SHARDS):
        if len(part) == 0:
            continue
        w = train_shard(np.sort(part))
        updates.append({k: w[k] - global_w[k] for k in global_w})
    return updates
