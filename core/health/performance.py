"""The node's performance monitor: latency histograms, resource samples, targets, tunable knobs.

:class:`PerformanceMonitor` is fed from hot paths (:meth:`~PerformanceMonitor.record` costs about one
microsecond), answers ``stats``/``report`` for the HTTP ``/metrics`` endpoint and the CLI, checks
:class:`Target` limits, and tunes integer knobs (batch size, threads) with a small hysteresis controller.
Knob changes are configuration changes: every ``autosave_every``-th is snapshotted through
:class:`core.health.autosave.AutoSaver` (knobs, change-log tail, targets, per-operation histograms), and a monitor
built with the same ``autosave_path`` restores them.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil

from core.errors import AnyaError, ConfigError
from core.health.autosave import DEFAULT_EVERY, AutoSaver

# --- histogram layout -------------------------------------------------------------------------------------
PER_DECADE = 8
LOWEST_S = 1e-6
HIGHEST_S = 100.0
_DECADES = 8  # 1e-6 .. 1e2
# _BOUNDS[i] = 10 ** (i / 8 - 6); bucket 0 holds [0, 1 us], bucket k (1..64) holds (_BOUNDS[k-1], _BOUNDS[k]],
# bucket 65 holds everything above 100 s. bisect_left(_BOUNDS, x) is exactly that bucket index.
_BOUNDS: list[float] = [10.0 ** (i / PER_DECADE - 6) for i in range(_DECADES * PER_DECADE + 1)]
N_BUCKETS = len(_BOUNDS) + 1
BUCKET_RATIO = 10.0 ** (1.0 / PER_DECADE)  # ~1.334: the relative error bound of percentile()
_INF = math.inf

STAT_KEYS = ("count", "items", "p50_ms", "p95_ms", "p99_ms", "mean_ms", "max_ms", "throughput_per_s")
RESOURCE_KEYS = ("cpu_percent", "system_cpu_percent", "rss_mb", "memory_percent", "memory_available_mb",
                 "net_sent_bytes", "net_recv_bytes", "net_sent_per_s", "net_recv_per_s",
                 "disk_percent", "disk_free_gb")
CHANGE_LOG_SIZE = 200   # knob changes kept in memory
SNAPSHOT_CHANGES = 50   # change-log tail kept in snapshots and reports
GROW_FRACTION = 0.5     # optimize(): grow the batch only when p95 < GROW_FRACTION * target
CPU_LOW_FRACTION = 0.5  # optimize(): add a thread only when CPU < CPU_LOW_FRACTION * cpu target
_MB = 1024.0 ** 2
_GB = 1024.0 ** 3


class LatencyHistogram:
    """Latencies in fixed log-spaced buckets: 8 per decade from 1 us to 100 s, plus under/overflow.

    ``percentile(p)`` finds the bucket holding the nearest-rank sample and interpolates log-linearly inside
    it, clamped to the observed [min, max]. Since estimate and true value share one bucket, the estimate is
    within a factor ``BUCKET_RATIO = 10 ** (1/8) ~ 1.334`` of the true percentile (relative error <= 33.4 %,
    typically about half that) for values in [1 us, 100 s]; outside that range it is only clamped to
    [min, max]. ``sum``, ``min``, ``max`` and ``count`` are exact.
    """

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * N_BUCKETS
        self.count = 0
        self.total = 0.0   # seconds
        self.min = _INF
        self.max = 0.0

    def add(self, seconds: float) -> None:
        """Record one latency in seconds (caller guarantees finite and >= 0)."""
        self.counts[bisect_left(_BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def mean(self) -> float | None:
        """Exact mean in seconds (None when empty)."""
        return self.total / self.count if self.count else None

    def percentile(self, p: float) -> float | None:
        """Estimated ``p``-th percentile (0..100) in seconds, None when empty; see the class doc for the error."""
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile {p!r} must be within [0, 100]")
        n = self.count
        if n == 0:
            return None
        if p == 0.0:
            return self.min
        if p == 100.0:
            return self.max
        rank = max(1, math.ceil(p * n / 100.0))
        cum = 0
        for k, c in enumerate(self.counts):
            if c and cum + c >= rank:
                lo = max(_BOUNDS[k - 1] if k > 0 else 0.0, self.min)
                hi = min(_BOUNDS[k] if k < len(_BOUNDS) else _INF, self.max)
                frac = (rank - cum - 0.5) / c
                value = lo * (hi / lo) ** frac if lo > 0.0 else lo + (hi - lo) * frac
                return min(max(value, self.min), self.max)
            cum += c
        return self.max  # unreachable while counts and count agree

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        h = LatencyHistogram()
        h.counts = list(self.counts)
        h.count, h.total, h.min, h.max = self.count, self.total, self.min, self.max
        return h

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The records added after ``earlier`` (a copy of this histogram taken before); min/max from buckets."""
        h = LatencyHistogram()
        h.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        h.count = self.count - earlier.count
        h.total = max(0.0, self.total - earlier.total)
        used = [k for k, c in enumerate(h.counts) if c]
        if used:
            h.min = max(self.min, _BOUNDS[used[0] - 1] if used[0] > 0 else 0.0)
            h.max = min(self.max, _BOUNDS[used[-1]] if used[-1] < len(_BOUNDS) else _INF)
        return h

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (layout, sparse [bucket, count] pairs, exact count/sum/min/max)."""
        return {"per_decade": PER_DECADE, "lowest_s": LOWEST_S, "highest_s": HIGHEST_S,
                "buckets": [[k, c] for k, c in enumerate(self.counts) if c], "count": self.count,
                "sum_s": self.total, "min_s": self.min if self.count else None,
                "max_s": self.max if self.count else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyHistogram:
        """Inverse of :meth:`to_dict`; ValueError when the layout differs or the counts disagree."""
        if (d["per_decade"], d["lowest_s"], d["highest_s"]) != (PER_DECADE, LOWEST_S, HIGHEST_S):
            raise ValueError("histogram layout differs from this version's")
        h = cls()
        for k, c in d["buckets"]:
            if not (0 <= int(k) < N_BUCKETS) or int(c) < 0:
                raise ValueError(f"bad histogram bucket [{k}, {c}]")
            h.counts[int(k)] = int(c)
        h.count = int(d["count"])
        if h.count != sum(h.counts):
            raise ValueError("histogram count does not match its buckets")
        h.total = float(d["sum_s"])
        if h.count:
            h.min, h.max = float(d["min_s"]), float(d["max_s"])
        return h


@dataclass(frozen=True)
class Target:
    """A limit on one metric: ``"<operation>.<stat>"`` (stat in STAT_KEYS) or a resource key (RESOURCE_KEYS).

    ``kind="max"``: the value must be <= limit; ``kind="min"``: >= limit.
    """

    metric: str
    limit: float
    kind: Literal["max", "min"] = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not _valid_metric(self.metric):
            raise ConfigError("target", f"unknown metric {self.metric!r}: use '<operation>.<stat>' with stat one "
                                        f"of {', '.join(STAT_KEYS)}, or one of {', '.join(RESOURCE_KEYS)}")
        if self.kind not in ("max", "min"):
            raise ConfigError("target", f"{self.metric}: kind {self.kind!r} must be 'max' or 'min'")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int | float) or not math.isfinite(self.limit):
            raise ConfigError("target", f"{self.metric}: limit {self.limit!r} must be a finite number")


def _valid_metric(metric: str) -> bool:
    if metric in RESOURCE_KEYS:
        return True
    op, _, stat = metric.rpartition(".")
    return bool(op) and stat in STAT_KEYS


class _Op:
    """Per-operation state: histogram, items, and this process's throughput window."""

    __slots__ = ("hist", "items", "win_items", "win_start", "last")

    def __init__(self) -> None:
        self.hist = LatencyHistogram()
        self.items = 0
        self.win_items = 0
        self.win_start = _INF  # clock time the first recorded operation of this process began
        self.last = -_INF      # clock time of the latest record


class _Timer:
    __slots__ = ("_mon", "_op", "_items", "_t0")

    def __init__(self, mon: PerformanceMonitor, op: str, items: int) -> None:
        self._mon, self._op, self._items = mon, op, items

    def __enter__(self) -> _Timer:
        self._t0 = self._mon._clock()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._mon.record(self._op, max(0.0, self._mon._clock() - self._t0), items=self._items)


class PerformanceMonitor:
    """Latency/throughput per operation, resource samples, targets and auto-saved tunable knobs.

    Thread-safe with one lock. ``clock`` (seconds, monotonic) times :meth:`time` blocks and stamps records
    for throughput. With ``autosave_path`` the last snapshot's knobs, targets, change log and histograms
    are restored on construction (a restored knob keeps its value when :meth:`add_knob` defines it again).
    """

    def __init__(self, *, autosave_every: int = DEFAULT_EVERY, autosave_path: str | Path | None = None,
                 clock: Callable[[], float] = time.perf_counter, disk_path: str | Path = ".") -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._ops: dict[str, _Op] = {}
        self._targets: dict[tuple[str, str], Target] = {}
        self._knobs: dict[str, list[int]] = {}   # name -> [value, lo, hi]
        self._changes: deque[dict[str, Any]] = deque(maxlen=CHANGE_LOG_SIZE)
        self._opt_seen: dict[str, LatencyHistogram] = {}  # optimize(): histogram at its last decision
        self._disk_path = Path(disk_path)
        if not self._disk_path.exists():
            raise ConfigError("disk-path", f"{self._disk_path} does not exist")
        self._latest: dict[str, Any] | None = None
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)  # prime: the first sample then covers the time since construction
        psutil.cpu_percent(None)
        self._prev_net = (time.monotonic(), *_net_totals())
        self._saver = AutoSaver(self._state_locked, every=autosave_every, path=autosave_path, name="performance")
        snap = self._saver.restore()
        if snap is not None:
            try:
                self._load_state(snap.state)
            except (KeyError, TypeError, ValueError) as exc:
                raise AnyaError(f"autosave: {autosave_path} holds an unusable performance state ({exc}); "
                                "move it away to start fresh") from exc

    # --- hot path -------------------------------------------------------------------------------------------
    def record(self, operation: str, seconds: float, *, items: int = 1) -> None:
        """Record one ``operation`` that took ``seconds`` and handled ``items``; ValueError on bad values."""
        if not 0.0 <= seconds < _INF or items < 0:
            raise ValueError(f"record({operation!r}): seconds must be finite and >= 0 and items >= 0, "
                             f"got seconds={seconds!r}, items={items!r}")
        k = bisect_left(_BOUNDS, seconds)
        now = self._clock()
        with self._lock:
            op = self._ops.get(operation)
            if op is None:
                op = self._ops[operation] = _Op()
            # LatencyHistogram.add, inlined: this runs on every request
            h = op.hist
            h.counts[k] += 1
            h.count += 1
            h.total += seconds
            if seconds < h.min:
                h.min = seconds
            if seconds > h.max:
                h.max = seconds
            op.items += items
            op.win_items += items
            if now - seconds < op.win_start:
                op.win_start = now - seconds
            if now > op.last:
                op.last = now

    def time(self, operation: str, items: int = 1) -> _Timer:
        """Context manager recording the block's elapsed ``clock`` time (not recorded when the block raises)."""
        return _Timer(self, operation, items)

    # --- statistics -----------------------------------------------------------------------------------------
    def operations(self) -> list[str]:
        """Names of the operations recorded so far (sorted)."""
        with self._lock:
            return sorted(self._ops)

    def stats(self, operation: str) -> dict[str, Any]:
        """count, items, p50/p95/p99/mean/max in ms, throughput_per_s; values None when there is no data.

        ``throughput_per_s`` = items recorded in this process / (time of the last record - start of the
        first recorded operation, i.e. its record time minus its duration): the average rate over the
        span the operation has been active, not a sliding window.
        """
        with self._lock:
            return self._stats_locked(operation)

    def _stats_locked(self, operation: str) -> dict[str, Any]:
        op = self._ops.get(operation)
        if op is None or op.hist.count == 0:
            return {"count": 0, "items": op.items if op else 0, **{k: None for k in STAT_KEYS[2:]}}
        h = op.hist
        span = op.last - op.win_start
        return {"count": h.count, "items": op.items,
                "p50_ms": _ms(h.percentile(50)), "p95_ms": _ms(h.percentile(95)), "p99_ms": _ms(h.percentile(99)),
                "mean_ms": _ms(h.mean()), "max_ms": h.max * 1e3,
                "throughput_per_s": op.win_items / span if op.win_items and span > 0 else None}

    # --- resources ------------------------------------------------------------------------------------------
    def sample_resources(self) -> dict[str, Any]:
        """Sample psutil now and keep it as the latest sample; returns RESOURCE_KEYS + sampled_at, cpu_count.

        cpu_percent (this process, up to 100 x cores) and system_cpu_percent cover the time since the
        previous sample (or construction); net_*_bytes are system totals, net_*_per_s the rates since the
        previous sample; disk_* describe the file system of ``disk_path``. MB/GB are 2**20/2**30 bytes.
        """
        proc_cpu = self._proc.cpu_percent(None)
        sys_cpu = psutil.cpu_percent(None)
        rss = self._proc.memory_info().rss
        vm = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self._disk_path))
        now, sent, recv = time.monotonic(), *_net_totals()
        with self._lock:
            t0, sent0, recv0 = self._prev_net
            dt = now - t0
            self._prev_net = (now, sent, recv)
            sample = {"cpu_percent": proc_cpu, "system_cpu_percent": sys_cpu, "rss_mb": rss / _MB,
                      "memory_percent": vm.percent, "memory_available_mb": vm.available / _MB,
                      "net_sent_bytes": sent, "net_recv_bytes": recv,
                      "net_sent_per_s": max(0, sent - sent0) / dt if dt > 0 else 0.0,
                      "net_recv_per_s": max(0, recv - recv0) / dt if dt > 0 else 0.0,
                      "disk_percent": disk.percent, "disk_free_gb": disk.free / _GB,
                      "sampled_at": time.time(), "cpu_count": psutil.cpu_count() or 1}
            self._latest = sample
            return dict(sample)

    def latest_resources(self) -> dict[str, Any] | None:
        """The latest :meth:`sample_resources` result (None before the first)."""
        with self._lock:
            return dict(self._latest) if self._latest else None

    # --- targets --------------------------------------------------------------------------------------------
    def add_target(self, target: Target) -> None:
        """Add (or replace, per metric and kind) a target; ConfigError("target", ...) when malformed."""
        if not isinstance(target, Target):
            raise ConfigError("target", f"{target!r} is not a Target")
        with self._lock:
            self._targets[(target.metric, target.kind)] = target

    def check_targets(self) -> list[dict[str, Any]]:
        """Each target with its current value and ``ok`` (None when there is no data yet).

        Operation metrics use the current stats; resource metrics use the latest sample (no new sample).
        """
        with self._lock:
            return self._check_locked()

    def _check_locked(self) -> list[dict[str, Any]]:
        out = []
        for t in self._targets.values():
            if t.metric in RESOURCE_KEYS:
                value = self._latest.get(t.metric) if self._latest else None
            else:
                op, _, stat = t.metric.rpartition(".")
                value = self._stats_locked(op)[stat]
            ok = None if value is None else (value <= t.limit if t.kind == "max" else value >= t.limit)
            out.append({"metric": t.metric, "value": value, "limit": t.limit, "kind": t.kind, "ok": ok})
        return out

    # --- knobs ----------------------------------------------------------------------------------------------
    def add_knob(self, name: str, value: int, lo: int, hi: int) -> int:
        """Define an integer knob in [lo, hi]; returns its effective value.

        ``value`` is the initial value of a new knob. A knob that already exists (restored from a snapshot
        or added before) keeps its current value, clamped to the new bounds; that is not counted as a change.
        """
        for what, v in (("value", value), ("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(name, f"{what} {v!r} must be a whole number")
        if not lo <= value <= hi:
            raise ConfigError(name, f"value {value} must be within [lo={lo}, hi={hi}]")
        with self._lock:
            current = self._knobs.get(name)
            eff = value if current is None else min(max(current[0], lo), hi)
            self._knobs[name] = [eff, lo, hi]
            return eff

    def knob(self, name: str) -> int:
        """The knob's current value; ConfigError for an unknown knob."""
        with self._lock:
            return self._knob_locked(name)[0]

    def _knob_locked(self, name: str) -> list[int]:
        k = self._knobs.get(name)
        if k is None:
            raise ConfigError(name, f"unknown knob (known: {', '.join(sorted(self._knobs)) or 'none'})")
        return k

    def set_knob(self, name: str, value: int, reason: str) -> dict[str, Any] | None:
        """Set a knob (clamped to [lo, hi]); returns the logged change, or None when the value is unchanged.

        Each change counts as one configuration change for the auto-save (every Nth is snapshotted).
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"value {value!r} must be a whole number")
        with self._lock:
            change = self._set_locked(name, value, reason)
            snap = self._saver.tick() if change else None
        self._saver.flush(snap)
        return change

    def _set_locked(self, name: str, value: int, reason: str) -> dict[str, Any] | None:
        k = self._knob_locked(name)
        new = min(max(value, k[1]), k[2])
        if new == k[0]:
            return None
        change = {"knob": name, "old": k[0], "new": new, "reason": str(reason), "at": time.time()}
        k[0] = new
        self._changes.append(change)
        return change

    def changes(self) -> list[dict[str, Any]]:
        """The knob change log, oldest first (the last CHANGE_LOG_SIZE changes)."""
        with self._lock:
            return [dict(c) for c in self._changes]

    def optimize(self, latency_op: str, p95_target_ms: float, *, batch_knob: str = "inference.batch_size",
                 threads_knob: str = "inference.threads", cpu_target_percent: float | None = None,
                 min_samples: int = 10) -> list[dict[str, Any]]:
        """One step of a hysteresis controller; returns the knob changes made (empty when none).

        It looks only at ``latency_op`` records made since its previous decision (so earlier settings do
        not haunt the current p95); with fewer than ``min_samples`` new records it changes nothing and
        keeps accumulating. With p95 of those records:

        * p95 > target: halve the batch (not below lo);
        * p95 < 0.5 x target: double the batch (not above hi);
        * otherwise (the band [0.5, 1] x target): keep it.

        The band is as wide as the step (x2), so a steady input never oscillates: a constant latency moves
        the batch monotonically to a bound or holds it, and if latency scales with the batch, halving from
        p95 > T lands above 0.5 T (no regrowth) and doubling from p95 < 0.5 T lands below T (no shrink).
        With ``cpu_target_percent`` (a fresh :meth:`sample_resources`; process CPU, 100 per core):
        CPU > target -> threads - 1; CPU < 0.5 x target and p95 > target -> threads + 1; else keep.
        """
        if isinstance(p95_target_ms, bool) or not isinstance(p95_target_ms, int | float) \
                or not math.isfinite(p95_target_ms) or p95_target_ms <= 0:
            raise ConfigError("p95-target-ms", f"{p95_target_ms!r} must be a finite number > 0")
        if cpu_target_percent is not None and (not isinstance(cpu_target_percent, int | float)
                                               or not math.isfinite(cpu_target_percent) or cpu_target_percent <= 0):
            raise ConfigError("cpu-target-percent", f"{cpu_target_percent!r} must be a finite number > 0")
        cpu = self.sample_resources()["cpu_percent"] if cpu_target_percent is not None else None
        made: list[dict[str, Any]] = []
        with self._lock:
            batch = self._knob_locked(batch_knob)
            threads = self._knob_locked(threads_knob) if cpu_target_percent is not None else None
            op = self._ops.get(latency_op)
            if op is None:
                return []
            seen = self._opt_seen.get(latency_op)
            window = op.hist.since(seen) if seen is not None else op.hist.copy()
            if window.count < max(1, min_samples):
                return []
            self._opt_seen[latency_op] = op.hist.copy()
            p95_ms = window.percentile(95) * 1e3
            why = f"{latency_op} p95 {p95_ms:.3g} ms vs target {p95_target_ms:g} ms"
            if p95_ms > p95_target_ms:
                made.append(self._set_locked(batch_knob, batch[0] // 2, f"{why}: over, halve batch"))
            elif p95_ms < GROW_FRACTION * p95_target_ms:
                made.append(self._set_locked(batch_knob, batch[0] * 2, f"{why}: well under, double batch"))
            if threads is not None and cpu is not None and cpu_target_percent is not None:
                cwhy = f"process CPU {cpu:.3g}% vs target {cpu_target_percent:g}%"
                if cpu > cpu_target_percent:
                    made.append(self._set_locked(threads_knob, threads[0] - 1, f"{cwhy}: over, one thread less"))
                elif cpu < CPU_LOW_FRACTION * cpu_target_percent and p95_ms > p95_target_ms:
                    made.append(self._set_locked(threads_knob, threads[0] + 1,
                                                 f"{cwhy}: idle while {why}, one thread more"))
            made = [c for c in made if c is not None]
            snap = self._saver.tick(len(made)) if made else None
        self._saver.flush(snap)
        return made

    # --- reporting and persistence --------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Everything for /metrics and the CLI: operations' stats, latest resources, targets, knobs, autosave."""
        with self._lock:
            return {"operations": {name: self._stats_locked(name) for name in sorted(self._ops)},
                    "resources": dict(self._latest) if self._latest else None,
                    "targets": self._check_locked(),
                    "knobs": {n: {"value": v, "lo": lo, "hi": hi} for n, (v, lo, hi) in sorted(self._knobs.items())},
                    "changes": [dict(c) for c in list(self._changes)[-SNAPSHOT_CHANGES:]],
                    "autosave": self._saver.info()}

    def save(self) -> None:
        """Snapshot now through the auto-saver (for example at shutdown), regardless of the change count."""
        with self._lock:
            snap = self._saver.snapshot_now()
        self._saver.flush(snap)

    def _state_locked(self) -> dict[str, Any]:
        """The snapshot state (called by the AutoSaver with the lock held)."""
        return {"knobs": {n: {"value": v, "lo": lo, "hi": hi} for n, (v, lo, hi) in self._knobs.items()},
                "changes": [dict(c) for c in list(self._changes)[-SNAPSHOT_CHANGES:]],
                "targets": [{"metric": t.metric, "limit": t.limit, "kind": t.kind} for t in self._targets.values()],
                "operations": {n: {"items": op.items, "histogram": op.hist.to_dict()} for n, op in self._ops.items()}}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Restore a snapshot's state (construction only, so no lock is needed yet)."""
        for name, k in state.get("knobs", {}).items():
            value, lo, hi = int(k["value"]), int(k["lo"]), int(k["hi"])
            if not lo <= value <= hi:
                raise ValueError(f"knob {name}: {value} outside [{lo}, {hi}]")
            self._knobs[str(name)] = [value, lo, hi]
        self._changes.extend(dict(c) for c in state.get("changes", []))
        for t in state.get("targets", []):
            target = Target(str(t["metric"]), float(t["limit"]), t["kind"])
            self._targets[(target.metric, target.kind)] = target
        for name, o in state.get("operations", {}).items():
            op = _Op()
            op.hist = LatencyHistogram.from_dict(o["histogram"])
            op.items = int(o["items"])
            self._ops[str(name)] = op
            self._opt_seen[str(name)] = op.hist.copy()  # optimize() only judges records made under the new run


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _net_totals() -> tuple[int, int]:
    """System-wide bytes sent and received (0, 0 where the platform has no counters)."""
    try:
        c = psutil.net_io_counters()
    except (OSError, RuntimeError):
        return 0, 0
    return (c.bytes_sent, c.bytes_recv) if c is not None else (0, 0)
