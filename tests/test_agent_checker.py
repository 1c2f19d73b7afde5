"""AgentChecker and the one auto-save mechanism: stages, readiness, events, thread safety, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.errors import AnyaError, ConfigError
from core.health.agent_checker import AgentChecker, StageThresholds, SystemStage
from core.health.autosave import AutoSaver

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_stages_follow_weighted_readiness_and_thresholds() -> None:
    c = AgentChecker()
    c.register("sync", 3.0)
    c.register("mempool", 1.0)
    assert c.stage() is SystemStage.UNAVAILABLE
    c.update("sync", 1.0)
    assert c.readiness() == pytest.approx(0.75)
    assert c.stage() is SystemStage.DEVELOPMENT
    c.update("mempool", 0.8)
    assert c.readiness() == pytest.approx(0.95)
    assert c.stage() is SystemStage.PRODUCTION
    c.update("mempool", 1.0)
    assert c.stage() is SystemStage.RELEASE
    c.update("sync", 0.0, "initial block download")
    assert c.stage() is SystemStage.UNAVAILABLE
    ok, reason = c.allows(SystemStage.PRODUCTION)
    assert not ok and "sync 0 %" in reason and "initial block download" in reason and "mempool" not in reason


def test_thresholds_are_configurable_and_validated() -> None:
    c = AgentChecker(thresholds=StageThresholds(0.5, 0.7, 0.8))
    c.register("a", readiness=0.75)
    assert c.stage() is SystemStage.PRODUCTION
    with pytest.raises(ConfigError, match="must increase"):
        StageThresholds(0.9, 0.6, 0.99).validate()
    with pytest.raises(ConfigError, match="thresholds.release"):
        StageThresholds(0.6, 0.9, 1.5).validate()
    with pytest.raises(ConfigError, match="min-stage"):
        SystemStage.parse("prod")
    assert SystemStage.parse("Production") is SystemStage.PRODUCTION
    with pytest.raises(ConfigError, match="weight of x"):
        c.register("x", weight=0)
    with pytest.raises(ConfigError, match="readiness of a"):
        c.update("a", 1.2)
    with pytest.raises(ConfigError, match="'nope' is not registered"):
        c.record_input("nope")
    with pytest.raises(ConfigError, match="autosave-every"):
        AgentChecker(autosave_every=0)


def test_input_errors_and_staleness_lower_readiness() -> None:
    clock = FakeClock()
    c = AgentChecker(clock=clock)
    c.register("rpc", readiness=1.0, max_staleness_s=60)
    for _ in range(40):
        c.record_input("rpc", {"ms": 3.0})
    assert c.readiness("rpc") == pytest.approx(1.0)
    for _ in range(20):
        c.record_input("rpc", error=True)
    r = c.readiness("rpc")
    assert 0.3 < r < 0.4  # 1 - (1 - 0.95**20)
    rep = c.report()["components"][0]
    assert rep["errors"] == 20 and rep["inputs"] == 60 and "recent inputs failed" in rep["reason"]
    clock.t += 61
    a = c.evaluate()
    assert a.components[0].stale and a.components[0].readiness == 0 and "no input for 61 s" in a.components[0].reason


def test_stage_transitions_are_events() -> None:
    c = AgentChecker()
    c.register("sync")
    seen: list[tuple[SystemStage, SystemStage]] = []
    c.subscribe(lambda old, new, a: seen.append((old, new)))
    c.update("sync", 0.95)
    c.update("sync", 0.96)  # same stage: no event
    c.update("sync", 1.0)
    c.update("sync", 0.1)
    assert seen == [(SystemStage.UNAVAILABLE, SystemStage.PRODUCTION), (SystemStage.PRODUCTION, SystemStage.RELEASE),
                    (SystemStage.RELEASE, SystemStage.UNAVAILABLE)]


def test_every_20th_input_is_snapshotted_and_restored(tmp_path) -> None:
    path = tmp_path / "checker.json"
    c = AgentChecker(autosave_path=path)
    c.register("inference", readiness=1.0)
    c.evaluate()  # stage change: a forced snapshot
    first = json.loads(path.read_text())
    for _ in range(19):
        c.record_input("inference")
    assert json.loads(path.read_text())["seq"] == first["seq"]
    c.record_input("inference")
    doc = json.loads(path.read_text())
    assert doc["events"] == 20 and doc["state"]["components"]["inference"]["inputs"] == 20
    for _ in range(5):
        c.record_input("inference")
    c2 = AgentChecker(autosave_path=path)  # a restart: resumes from the last snapshot
    c2.register("inference", readiness=1.0)
    assert c2.inputs == 20 and c2.report()["components"][0]["inputs"] == 20
    c2.record_input("inference")
    assert c2.inputs == 21
    path.write_text("{torn")
    with pytest.raises(AnyaError, match="not a readable agent-checker snapshot"):
        AgentChecker(autosave_path=path)


def test_autosaver_every_n_and_newest_wins(tmp_path) -> None:
    state = {"v": 0}
    s = AutoSaver(lambda: dict(state), every=3, path=tmp_path / "s.json")
    snaps = []
    for i in range(1, 8):
        state["v"] = i
        snaps.append(s.tick())
    assert [x is not None for x in snaps] == [False, False, True, False, False, True, False]
    s.flush(snaps[5])
    s.flush(snaps[2])  # older: must not overwrite the newer file
    assert json.loads((tmp_path / "s.json").read_text())["state"]["v"] == 6
    assert s.info()["writes"] == 1 and s.info()["saves"] == 2


def test_eight_threads_lose_no_input_and_snapshots_are_consistent(tmp_path) -> None:
    path = tmp_path / "c.json"
    c = AgentChecker(autosave_path=path, autosave_every=20_000)
    names = [f"c{i}" for i in range(8)]
    for n in names:
        c.register(n, readiness=1.0)
    per_thread = 100_000
    snapshots = []
    c.subscribe(lambda *a: None)

    def work(name: str) -> None:
        for _ in range(per_thread):
            c.record_input(name)

    threads = [threading.Thread(target=work, args=(n,)) for n in names]
    for t in threads:
        t.start()
    stop = time.monotonic() + 60
    while any(t.is_alive() for t in threads) and time.monotonic() < stop:
        if path.exists():
            snapshots.append(json.loads(path.read_text()))
        time.sleep(0.01)
    for t in threads:
        t.join()
    rep = c.report()
    assert c.inputs == 8 * per_thread
    assert all(comp["inputs"] == per_thread for comp in rep["components"])
    snapshots.append(json.loads(path.read_text()))
    for snap in snapshots:  # a snapshot's total equals the sum of its components: never torn
        comps = snap["state"]["components"]
        assert snap["state"]["inputs"] == sum(v["inputs"] for v in comps.values()) == snap["events"]
    assert snapshots[-1]["events"] == 8 * per_thread


CHILD = r"""
import sys
from core.health.agent_checker import AgentChecker
c = AgentChecker(autosave_path=sys.argv[1], autosave_every=20)
c.register("inputs", readiness=1.0)
print("start", c.inputs, flush=True)
if sys.argv[2] == "acked":
    for line in sys.stdin:
        c.record_input("inputs")
        print("ok", c.inputs, flush=True)
else:
    while True:
        c.record_input("inputs")
"""


def _child(path: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), mode], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_sigkill_mid_stream_resumes_from_last_snapshot(tmp_path) -> None:
    path = tmp_path / "checker.json"
    proc = _child(path, "acked")
    try:
        assert proc.stdout.readline().split() == ["start", "0"]
        for i in range(137):
            proc.stdin.write("x\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["ok", str(i + 1)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    restarted = _child(path, "acked")
    try:
        start = restarted.stdout.readline().split()
    finally:
        restarted.kill()
        restarted.wait(timeout=10)
    assert start == ["start", "120"]  # the 6th snapshot; 17 inputs lost, fewer than N = 20


def test_sigkill_during_free_running_writes_never_tears_the_snapshot(tmp_path) -> None:
    path = tmp_path / "checker.json"
    for delay in (0.3, 0.7):
        proc = _child(path, "free")
        try:
            proc.stdout.readline()
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        doc = json.loads(path.read_text())  # always a whole snapshot
        assert doc["events"] % 20 == 0 and doc["events"] == doc["state"]["components"]["inputs"]["inputs"] > 0
    AgentChecker(autosave_path=path)  # a restart removes temp files an interrupted write left behind
    assert not list(tmp_path.glob(".*.tmp"))
