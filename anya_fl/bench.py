"""`anya-fl bench`: the project's one benchmark registry.

Each benchmark has a name, a unit, the seed project's quoted figure where one exists, and our target.
Results are `{"name": {"value": x, "unit": "...", "seed": y}}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class Benchmark:
    name: str
    unit: str
    run: Callable[[], float]
    seed: float | None = None  # the seed project's quoted figure, if any
    target: float | None = None
    higher_is_better: bool = False


BENCHMARKS: dict[str, Benchmark] = {}


def benchmark(name: str, unit: str, *, seed: float | None = None, target: float | None = None,
              higher_is_better: bool = False) -> Callable[[Callable[[], float]], Callable[[], float]]:
    """Register a benchmark function returning one number."""

    def deco(fn: Callable[[], float]) -> Callable[[], float]:
        BENCHMARKS[name] = Benchmark(name, unit, fn, seed, target, higher_is_better)
        return fn

    return deco


def run_benchmarks(selection: list[str]) -> dict[str, dict]:
    """Run benchmarks whose names equal or start with one of ``selection`` (all when empty)."""
    chosen = [b for n, b in BENCHMARKS.items() if not selection or any(n == s or n.startswith(s) for s in selection)]
    if not chosen:
        raise ConfigError("names", f"no benchmark matches {selection}; see `anya-fl bench --list`")
    return {b.name: {"value": b.run(), "unit": b.unit, "seed": b.seed, "target": b.target} for b in chosen}


@benchmark("chain.simulate.1m_tx.s", "s", target=15.0)
def _simulate_million() -> float:
    """Wall time to simulate 1,000,000 transactions (features, blocks, snapshots) on one core."""
    import os

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from core.data.chain import ChainConfig, simulate_chain

    t0 = time.perf_counter()
    simulate_chain(ChainConfig(n_transactions=1_000_000, seed=1))
    return time.perf_counter() - t0
