"""Named random streams: one seed, independent generators per purpose."""

from __future__ import annotations

import zlib

import numpy as np


def stream(seed: int, purpose: str) -> np.random.Generator:
    """A generator determined by (seed, purpose); different purposes never share draws."""
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])


def categorical(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Sample one class per row from the probability table rows ``probs[rows]``."""
    k = probs.shape[1]
    cum = np.cumsum(probs / probs.sum(axis=1, keepdims=True), axis=1)
    cum[:, -1] = 1.0
    flat = (cum + np.arange(len(probs))[:, None]).ravel()  # row r's thresholds shifted into [r, r + 1]
    u = rng.random(len(rows))
    return np.minimum(np.searchsorted(flat, u + rows, side="right") - rows * k, k - 1)
