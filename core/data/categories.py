"""Transaction categories of the simulated chain: who sends what, and how it looks.

Each category fixes the distributions of one kind of transaction (inputs, outputs, values, script
types, fee urgency, RBF, input age). Legitimate and illicit categories deliberately overlap (coinjoins
look like mixers, consolidations like fan-ins of stolen funds, and some illicit payments copy ordinary
ones), so no single feature separates the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# script class order follows core.bitcoin.features.SCRIPT_CLASSES: p2pkh p2sh p2wpkh p2wsh p2tr other
# input script kinds: p2pkh, p2sh-p2wpkh, p2wpkh, p2tr; (non-witness bytes, witness units) per input
INPUT_KINDS = ("p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2tr")
INPUT_NONWITNESS_BYTES = np.array([148, 64, 41, 41])
INPUT_WITNESS_WU = np.array([0, 108, 108, 66])
OUTPUT_BYTES = np.array([34, 32, 31, 43, 43, 43])  # per script class, value + length + script


@dataclass(frozen=True)
class Category:
    """Distribution parameters of one transaction category."""

    name: str
    illicit: bool
    share: float  # share of all transactions
    n_in: tuple[float, float, int]  # lognormal (median, sigma), cap
    n_out: tuple[float, float, int]
    value_btc: tuple[float, float]  # lognormal (median BTC, sigma) per output
    out_scripts: tuple[float, ...]  # probabilities over the 6 script classes
    in_kinds: tuple[float, ...]  # probabilities over INPUT_KINDS
    urgency: tuple[float, float]  # lognormal (median multiple of the market fee rate, sigma)
    rbf: float
    locktime: float
    input_age: tuple[float, float]  # lognormal (median blocks, sigma)
    round_share: float  # share of outputs rounded to 0.001 BTC multiples
    shape: str = "plain"  # plain | change | equal | peel | dust | single


LEGIT: tuple[Category, ...] = (
    Category("payment", False, 0.43, (1.3, 0.5, 8), (2, 0.0, 2), (0.02, 1.6), (0.10, 0.10, 0.45, 0.03, 0.30, 0.02),
             (0.08, 0.12, 0.55, 0.25), (1.0, 0.45), 0.35, 0.55, (400, 1.8), 0.35, "change"),
    Category("merchant", False, 0.12, (1.2, 0.4, 6), (2, 0.0, 2), (0.004, 1.2), (0.05, 0.15, 0.60, 0.05, 0.15, 0.0),
             (0.05, 0.10, 0.70, 0.15), (1.1, 0.35), 0.20, 0.50, (150, 1.5), 0.05, "change"),
    Category("withdrawal_batch", False, 0.08, (2.0, 0.6, 20), (12, 0.9, 400), (0.01, 1.7), (0.10, 0.20, 0.45, 0.05, 0.18, 0.02),
             (0.0, 0.2, 0.7, 0.1), (1.2, 0.30), 0.60, 0.20, (20, 1.2), 0.40),
    Category("consolidation", False, 0.06, (15, 0.9, 600), (1, 0.0, 1), (0.8, 1.5), (0.05, 0.15, 0.55, 0.15, 0.10, 0.0),
             (0.10, 0.20, 0.55, 0.15), (0.45, 0.40), 0.40, 0.30, (800, 1.6), 0.05),
    Category("coinjoin", False, 0.04, (12, 0.5, 150), (14, 0.5, 200), (0.05, 1.0), (0.0, 0.0, 0.85, 0.0, 0.15, 0.0),
             (0.0, 0.0, 0.85, 0.15), (0.9, 0.30), 0.10, 0.10, (300, 1.5), 0.0, "equal"),
    Category("miner_payout", False, 0.03, (1, 0.0, 1), (40, 0.8, 500), (0.003, 1.3), (0.15, 0.25, 0.45, 0.05, 0.10, 0.0),
             (0.0, 0.0, 0.8, 0.2), (0.6, 0.30), 0.05, 0.05, (110, 0.3), 0.05),
    Category("self_transfer", False, 0.20, (1.5, 0.6, 12), (1, 0.0, 1), (0.05, 1.8), (0.02, 0.03, 0.45, 0.05, 0.43, 0.02),
             (0.05, 0.10, 0.45, 0.40), (0.8, 0.50), 0.45, 0.55, (2000, 1.7), 0.10),
)

ILLICIT: tuple[Category, ...] = (
    Category("peel_chain", True, 0.011, (1, 0.0, 1), (2, 0.0, 2), (0.3, 1.4), (0.30, 0.10, 0.50, 0.02, 0.08, 0.0),
             (0.30, 0.15, 0.50, 0.05), (1.4, 0.45), 0.15, 0.30, (3, 1.0), 0.05, "peel"),
    Category("dust_attack", True, 0.004, (1.3, 0.3, 3), (60, 0.7, 600), (0.000006, 0.35), (0.30, 0.15, 0.40, 0.05, 0.10, 0.0),
             (0.2, 0.2, 0.5, 0.1), (0.9, 0.35), 0.10, 0.20, (40, 1.5), 0.0, "dust"),
    Category("stolen_fan_in", True, 0.008, (8, 0.7, 120), (1, 0.0, 1), (2.0, 1.2), (0.25, 0.20, 0.45, 0.05, 0.05, 0.0),
             (0.20, 0.20, 0.50, 0.10), (1.5, 0.45), 0.10, 0.35, (8, 1.3), 0.10),
    Category("mixer", True, 0.005, (4, 0.6, 60), (10, 0.6, 120), (0.1, 0.8), (0.10, 0.10, 0.70, 0.0, 0.10, 0.0),
             (0.05, 0.10, 0.75, 0.10), (1.1, 0.40), 0.20, 0.20, (30, 1.5), 0.60, "equal"),
    # camouflaged: illicit funds moved by an ordinary-looking payment (caps the achievable recall)
    Category("camouflaged", True, 0.006, (1.3, 0.5, 8), (2, 0.0, 2), (0.05, 1.5), (0.12, 0.12, 0.45, 0.03, 0.26, 0.02),
             (0.10, 0.12, 0.53, 0.25), (1.15, 0.45), 0.30, 0.45, (60, 1.8), 0.20, "change"),
)

CATEGORIES: tuple[Category, ...] = LEGIT + ILLICIT
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)


def category_shares() -> np.ndarray:
    """Sampling probabilities over CATEGORIES (normalized)."""
    s = np.array([c.share for c in CATEGORIES], dtype=np.float64)
    return s / s.sum()


# Node profiles: affinity of a node of each kind for each category (non-IID partitions, label skew)
PROFILES: dict[str, dict[str, float]] = {
    "exchange": {"withdrawal_batch": 6.0, "consolidation": 4.0, "stolen_fan_in": 4.0, "mixer": 2.0, "payment": 1.0,
                 "peel_chain": 2.0},
    "miner": {"miner_payout": 10.0, "consolidation": 2.0, "self_transfer": 1.5, "dust_attack": 1.5},
    "merchant": {"merchant": 6.0, "payment": 1.5, "camouflaged": 2.0, "peel_chain": 1.5},
    "hobbyist": {"self_transfer": 3.0, "payment": 2.0, "coinjoin": 3.0, "dust_attack": 2.0},
}
PROFILE_ORDER: tuple[str, ...] = ("exchange", "merchant", "hobbyist", "miner")


def affinity_matrix(profiles: list[str]) -> np.ndarray:
    """(categories, nodes) sampling weights; categories a profile does not name get weight 1."""
    out = np.ones((len(CATEGORIES), len(profiles)))
    for j, p in enumerate(profiles):
        for name, w in PROFILES[p].items():
            out[CATEGORY_NAMES.index(name), j] = w
    return out
