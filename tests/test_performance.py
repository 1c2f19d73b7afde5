"""core.health.performance: histogram accuracy, hot-path validation, threads, targets, optimizer, auto-save, psutil."""

from __future__ import annotations

import json
import math
import random
import threading

import psutil
import pytest

from core.errors import ConfigError
from core.health.performance import (
    BUCKET_RATIO,
    RESOURCE_KEYS,
    STAT_KEYS,
    LatencyHistogram,
    PerformanceMonitor,
    Target,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _nearest_rank(sorted_values: list[float], p: float) -> float:
    return sorted_values[max(1, math.ceil(p * len(sorted_values) / 100)) - 1]


@pytest.mark.parametrize("dist", ["loguniform", "uniform", "lognormal"])
def test_percentiles_within_one_bucket(dist: str) -> None:
    rng = random.Random(7)
    gen = {"loguniform": lambda: 10 ** rng.uniform(-5, 0),
           "uniform": lambda: rng.uniform(0.001, 0.2),
           "lognormal": lambda: rng.lognormvariate(math.log(0.01), 1.0)}[dist]
    values = [gen() for _ in range(20_000)]
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    values.sort()
    assert h.count == len(values)
    assert h.min == values[0] and h.max == values[-1]
    assert h.mean() == pytest.approx(sum(values) / len(values))
    for p in (1, 10, 25, 50, 75, 90, 95, 99, 99.9):
        est, true = h.percentile(p), _nearest_rank(values, p)
        assert true / BUCKET_RATIO <= est <= true * BUCKET_RATIO, (p, est, true)
    assert h.percentile(0) == values[0] and h.percentile(100) == values[-1]


def test_percentile_clamps_and_extremes() -> None:
    h = LatencyHistogram()
    assert h.percentile(50) is None
    for v in (0.0, 5e-7, 250.0):  # underflow, underflow, overflow buckets
        h.add(v)
    assert 0.0 <= h.percentile(50) <= 1e-6
    assert h.percentile(99) <= 250.0
    h2 = LatencyHistogram()
    for _ in range(10):
        h2.add(0.0421)
    assert h2.percentile(50) == pytest.approx(0.0421)  # clamped to [min, max] = one value
    with pytest.raises(ValueError):
        h.percentile(101)


def test_histogram_round_trip() -> None:
    h = LatencyHistogram()
    for v in (1e-5, 0.003, 0.003, 2.5, 300.0):
        h.add(v)
    d = json.loads(json.dumps(h.to_dict()))
    h2 = LatencyHistogram.from_dict(d)
    assert h2.counts == h.counts and h2.count == 5 and (h2.min, h2.max) == (1e-5, 300.0)
    assert h2.total == pytest.approx(h.total)
    d["count"] = 6
    with pytest.raises(ValueError):
        LatencyHistogram.from_dict(d)


@pytest.mark.parametrize("bad", [math.nan, -0.001, math.inf, -math.inf])
def test_record_rejects_bad_seconds(bad: float) -> None:
    m = PerformanceMonitor()
    with pytest.raises(ValueError, match="predict") as err:
        m.record("predict", bad)
    assert repr(bad) in str(err.value)
    assert m.stats("predict")["count"] == 0
    with pytest.raises(ValueError, match="items"):
        m.record("predict", 0.1, items=-1)


def test_stats_and_throughput_with_fake_clock() -> None:
    clock = FakeClock()
    m = PerformanceMonitor(clock=clock)
    assert m.stats("predict") == {"count": 0, "items": 0, **{k: None for k in STAT_KEYS[2:]}}
    # 100 records of 10 ms, one every 10 ms, 8 items each: 800 items over 1.0 s
    for _ in range(100):
        clock.t += 0.010
        m.record("predict", 0.010, items=8)
    s = m.stats("predict")
    assert set(s) == set(STAT_KEYS)
    assert s["count"] == 100 and s["items"] == 800
    assert s["p50_ms"] == pytest.approx(10.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["mean_ms"] == pytest.approx(10.0)
    assert s["throughput_per_s"] == pytest.approx(800.0)
    with m.time("load", items=3):
        clock.t += 0.5
    assert m.stats("load")["p50_ms"] == pytest.approx(500.0) and m.stats("load")["items"] == 3
    with pytest.raises(RuntimeError), m.time("load"):
        raise RuntimeError("boom")
    assert m.stats("load")["count"] == 1  # a failed block is not timed
    assert m.operations() == ["load", "predict"]


def test_concurrent_records_lose_nothing() -> None:
    m = PerformanceMonitor()
    n_threads, per_thread = 8, 50_000
    barrier = threading.Barrier(n_threads)

    def work(i: int) -> None:
        op = f"op{i % 2}"
        barrier.wait()
        for j in range(per_thread):
            m.record(op, (j % 100) * 1e-4, items=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for op in ("op0", "op1"):
        s = m.stats(op)
        assert s["count"] == n_threads // 2 * per_thread
        assert s["items"] == 2 * s["count"]
    assert sum(m.report()["operations"][op]["count"] for op in m.operations()) == n_threads * per_thread


def test_targets_flip_and_validation() -> None:
    m = PerformanceMonitor()
    m.add_target(Target("predict.p95_ms", 50.0, "max"))
    m.add_target(Target("predict.count", 10, "min"))
    assert [r["ok"] for r in m.check_targets()] == [None, False]  # no latency yet; a count of 0 is data
    for _ in range(20):
        m.record("predict", 0.010)
    res = {r["metric"]: r for r in m.check_targets()}
    assert res["predict.p95_ms"]["ok"] is True and res["predict.count"]["ok"] is True
    assert res["predict.p95_ms"]["value"] == pytest.approx(10.0)
    for _ in range(200):
        m.record("predict", 0.200)
    res = {r["metric"]: r for r in m.check_targets()}
    assert res["predict.p95_ms"]["ok"] is False and res["predict.p95_ms"]["value"] > 50
    assert set(res["predict.p95_ms"]) == {"metric", "value", "limit", "kind", "ok"}

    m.add_target(Target("rss_mb", 1e9, "max"))
    assert {r["metric"]: r["ok"] for r in m.check_targets()}["rss_mb"] is None
    m.sample_resources()
    assert {r["metric"]: r["ok"] for r in m.check_targets()}["rss_mb"] is True

    for bad in (("predict.p42_ms", 1.0, "max"), ("nonsense", 1.0, "max"), (".p95_ms", 1.0, "max"),
                ("predict.p95_ms", math.nan, "max"), ("predict.p95_ms", 1.0, "avg"), ("cpu_percent", True, "max")):
        with pytest.raises(ConfigError) as err:
            Target(*bad)
        assert err.value.setting == "target"
        assert str(err.value).startswith("target: ")


def _feed(m: PerformanceMonitor, seconds: float, n: int = 20) -> None:
    for _ in range(n):
        m.record("predict", seconds)


def test_optimizer_batch_hysteresis_and_bounds() -> None:
    m = PerformanceMonitor()
    m.add_knob("inference.batch_size", 32, 1, 128)
    m.add_knob("inference.threads", 2, 1, 4)
    assert m.optimize("predict", 100.0) == []  # no data
    _feed(m, 0.200)  # p95 200 ms > 100 ms -> halve
    changes = m.optimize("predict", 100.0)
    assert [(c["knob"], c["old"], c["new"]) for c in changes] == [("inference.batch_size", 32, 16)]
    assert m.optimize("predict", 100.0) == []  # no new records: nothing to judge, no repeat halving
    _feed(m, 0.070)  # in the band [50, 100] ms -> keep
    assert m.optimize("predict", 100.0) == [] and m.knob("inference.batch_size") == 16
    _feed(m, 0.010)  # far under -> double
    assert [c["new"] for c in m.optimize("predict", 100.0)] == [32]
    _feed(m, 0.3, n=5)
    assert m.optimize("predict", 100.0) == []  # fewer than min_samples new records: wait
    _feed(m, 0.3, n=5)
    assert [c["new"] for c in m.optimize("predict", 100.0)] == [16]

    # a steady input drives the batch monotonically to a bound and stays there
    seen = []
    for _ in range(12):
        _feed(m, 0.001)
        m.optimize("predict", 100.0)
        seen.append(m.knob("inference.batch_size"))
    assert seen == sorted(seen) and seen[-1] == 128 and seen[-4:] == [128] * 4
    seen = []
    for _ in range(12):
        _feed(m, 5.0)
        m.optimize("predict", 100.0)
        seen.append(m.knob("inference.batch_size"))
    assert seen == sorted(seen, reverse=True) and seen[-1] == 1 and seen[-4:] == [1] * 4
    assert m.knob("inference.threads") == 2  # untouched without a CPU target


def test_optimizer_latency_proportional_to_batch_settles() -> None:
    m = PerformanceMonitor()
    m.add_knob("inference.batch_size", 1, 1, 1024)
    history = []
    for _ in range(30):
        _feed(m, 0.0009 * m.knob("inference.batch_size"))  # 0.9 ms per item
        m.optimize("predict", 100.0)
        history.append(m.knob("inference.batch_size"))
    assert history[-10:] == [history[-1]] * 10  # settled, no oscillation
    assert 0.5 * 100 <= 0.9 * history[-1] <= 100


def test_optimizer_threads_with_cpu_target(monkeypatch: pytest.MonkeyPatch) -> None:
    m = PerformanceMonitor()
    m.add_knob("inference.batch_size", 1, 1, 8)
    m.add_knob("inference.threads", 2, 1, 3)
    cpu = {"v": 10.0}
    monkeypatch.setattr(m, "sample_resources", lambda: {"cpu_percent": cpu["v"]})
    for _ in range(3):  # low CPU, latency over target: one thread more each time, up to hi
        _feed(m, 0.5)
        m.optimize("predict", 100.0, cpu_target_percent=80.0)
    assert m.knob("inference.threads") == 3 and m.knob("inference.batch_size") == 1
    cpu["v"] = 95.0
    for _ in range(4):
        _feed(m, 0.5)
        m.optimize("predict", 100.0, cpu_target_percent=80.0)
    assert m.knob("inference.threads") == 1
    cpu["v"] = 60.0  # between 0.5 x and 1 x the CPU target: keep
    _feed(m, 0.5)
    assert m.optimize("predict", 100.0, cpu_target_percent=80.0) == []


def test_knob_validation_and_clamping() -> None:
    m = PerformanceMonitor()
    assert m.add_knob("inference.batch_size", 8, 1, 64) == 8
    with pytest.raises(ConfigError) as err:
        m.knob("inference.nope")
    assert err.value.setting == "inference.nope"
    with pytest.raises(ConfigError):
        m.add_knob("x", 100, 1, 10)
    with pytest.raises(ConfigError):
        m.set_knob("inference.batch_size", 2.5, "float")  # type: ignore[arg-type]
    assert m.set_knob("inference.batch_size", 1000, "too big")["new"] == 64
    assert m.set_knob("inference.batch_size", 64, "same") is None  # no change, not logged
    assert m.set_knob("inference.batch_size", -5, "too small")["new"] == 1
    assert [c["new"] for c in m.changes()] == [64, 1]
    with pytest.raises(ConfigError) as err:
        m.optimize("predict", 0.0)
    assert err.value.setting == "p95-target-ms"


def test_autosave_every_20th_change_and_restore(tmp_path) -> None:
    path = tmp_path / "perf.json"
    m = PerformanceMonitor(autosave_path=path)
    m.add_knob("inference.batch_size", 1, 1, 1000)
    m.add_knob("inference.threads", 2, 1, 8)
    m.add_target(Target("predict.p95_ms", 50.0))
    for _ in range(7):
        m.record("predict", 0.02, items=3)
    m.record("load", 0.5)
    for v in range(2, 21):  # 19 changes
        m.set_knob("inference.batch_size", v, f"step {v}")
    assert not path.exists()
    m.set_knob("inference.batch_size", 21, "step 21")  # 20th change
    assert path.exists()
    doc = json.loads(path.read_text())
    assert doc["state"]["knobs"]["inference.batch_size"]["value"] == 21
    assert m.report()["autosave"]["writes"] == 1
    for v in range(22, 41):  # 19 more: the file still holds the 20th
        m.set_knob("inference.batch_size", v, f"step {v}")
    assert json.loads(path.read_text())["state"]["knobs"]["inference.batch_size"]["value"] == 21
    m.set_knob("inference.batch_size", 41, "step 41")  # 40th
    assert json.loads(path.read_text())["state"]["knobs"]["inference.batch_size"]["value"] == 41

    m2 = PerformanceMonitor(autosave_path=path)
    assert m2.knob("inference.batch_size") == 41 and m2.knob("inference.threads") == 2
    assert m2.add_knob("inference.batch_size", 4, 1, 1000) == 41  # restored value wins over the default
    assert m2.stats("predict")["count"] == 7 and m2.stats("predict")["items"] == 21
    assert m2.stats("load")["count"] == 1
    assert m2.stats("predict")["p50_ms"] == pytest.approx(20.0)
    assert [t["metric"] for t in m2.check_targets()] == ["predict.p95_ms"]
    assert m2.changes()[-1]["new"] == 41
    assert m2.report()["autosave"]["events"] == 40
    for v in range(42, 61):  # counting resumes: 19 more changes do not save, the 20th does
        m2.set_knob("inference.batch_size", v, "again")
    assert json.loads(path.read_text())["state"]["knobs"]["inference.batch_size"]["value"] == 41
    m2.set_knob("inference.batch_size", 61, "again")
    assert json.loads(path.read_text())["state"]["knobs"]["inference.batch_size"]["value"] == 61


def test_sample_resources_keys_and_values(tmp_path) -> None:
    m = PerformanceMonitor(disk_path=tmp_path)
    sum(i * i for i in range(200_000))  # some CPU for the process
    s = m.sample_resources()
    assert set(RESOURCE_KEYS) <= set(s) and {"sampled_at", "cpu_count"} <= set(s)
    ncpu = psutil.cpu_count() or 1
    assert 0 <= s["cpu_percent"] <= 100 * ncpu
    assert 0 <= s["system_cpu_percent"] <= 100
    assert s["rss_mb"] > 0 and 0 <= s["memory_percent"] <= 100 and s["memory_available_mb"] > 0
    assert 0 <= s["disk_percent"] <= 100 and s["disk_free_gb"] >= 0
    assert s["net_sent_bytes"] >= 0 and s["net_recv_bytes"] >= 0
    assert s["net_sent_per_s"] >= 0 and s["net_recv_per_s"] >= 0
    s2 = m.sample_resources()
    assert s2["net_sent_bytes"] >= s["net_sent_bytes"]
    assert m.report()["resources"]["rss_mb"] == s2["rss_mb"]
    with pytest.raises(ConfigError) as err:
        PerformanceMonitor(disk_path=tmp_path / "missing")
    assert err.value.setting == "disk-path"


def test_report_shape() -> None:
    m = PerformanceMonitor()
    m.add_knob("inference.batch_size", 8, 1, 64)
    m.record("predict", 0.01)
    r = m.report()
    assert set(r) == {"operations", "resources", "targets", "knobs", "changes", "autosave"}
    assert r["operations"]["predict"]["count"] == 1 and r["resources"] is None
    assert r["knobs"] == {"inference.batch_size": {"value": 8, "lo": 1, "hi": 64}}
    json.dumps(r)  # JSON-ready
