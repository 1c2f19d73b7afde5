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


# ---------------------------------------------------------------------------------------------- node health
# The seed quotes 5-10 ms per AgentChecker input (1,000+ per second) and 1-5 ms per monitor record
# (2,000+ per second); "seed" below is the better end of each range. Targets: 1,000x better.

def _p50_us(call: Callable[[], None], n: int = 200_000) -> float:
    """Median wall time of one call in microseconds (perf_counter_ns around each call, after a warm-up)."""
    for _ in range(10_000):
        call()
    pc = time.perf_counter_ns
    lat = []
    append = lat.append
    for _ in range(n):
        t = pc()
        call()
        append(pc() - t)
    lat.sort()
    return lat[n // 2] / 1000.0


def _per_s(call: Callable[[], None], n: int = 500_000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return n / (time.perf_counter() - t0)


def _checker(path: str | None = None):
    from core.agent_checker import AgentChecker

    c = AgentChecker(autosave_path=path)
    c.register("inference", readiness=1.0)
    return c


_INPUT = {"rows": 1.0, "ms": 0.05}


@benchmark("agent_checker.record_input.p50_us", "us", seed=5000.0, target=5.0)
def _checker_p50() -> float:
    """Median time of one record_input (in-memory snapshot every 20th input), one thread."""
    c = _checker()
    return _p50_us(lambda: c.record_input("inference", _INPUT))


@benchmark("agent_checker.record_input.per_s", "inputs/s", seed=1000.0, target=200_000.0, higher_is_better=True)
def _checker_per_s() -> float:
    """record_input calls per second on one thread (in-memory snapshot every 20th input)."""
    c = _checker()
    return _per_s(lambda: c.record_input("inference", _INPUT))


@benchmark("agent_checker.record_input.durable.per_s", "inputs/s", seed=1000.0, higher_is_better=True)
def _checker_durable_per_s() -> float:
    """record_input per second with durable auto-save (every 20th input written: temp file, fsync, rename)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        c = _checker(f"{d}/checker.json")
        return _per_s(lambda: c.record_input("inference", _INPUT), n=20_000)


@benchmark("agent_checker.threads8.lost_inputs", "inputs", target=0.0)
def _checker_threads() -> float:
    """8 threads x 100,000 record_input calls: inputs missing from the final count (must be 0)."""
    import threading

    from core.agent_checker import AgentChecker

    c = AgentChecker()
    for i in range(8):
        c.register(f"c{i}", readiness=1.0)

    def work(name: str) -> None:
        for _ in range(100_000):
            c.record_input(name)

    threads = [threading.Thread(target=work, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_component = [comp["inputs"] for comp in c.report()["components"]]
    return float(8 * 100_000 - c.inputs + sum(abs(100_000 - n) for n in per_component))


@benchmark("performance_monitor.record.p50_us", "us", seed=1000.0, target=5.0)
def _monitor_p50() -> float:
    """Median time of one PerformanceMonitor.record (histogram + counters), one thread."""
    from core.performance import PerformanceMonitor

    m = PerformanceMonitor()
    return _p50_us(lambda: m.record("predict", 0.0004))


@benchmark("performance_monitor.record.per_s", "records/s", seed=2000.0, target=200_000.0, higher_is_better=True)
def _monitor_per_s() -> float:
    """PerformanceMonitor.record calls per second on one thread."""
    from core.performance import PerformanceMonitor

    m = PerformanceMonitor()
    return _per_s(lambda: m.record("predict", 0.0004))
