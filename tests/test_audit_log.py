"""The hash-chained audit log: append, verify, tampering found at the right record, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.synchronize
import threading
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.security.audit import GENESIS, PUBLISH, AuditError, AuditLog, record_hash
from core.security.signing import canonical_json


def _filled(tmp_path: Path, n: int = 50) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("tester", PUBLISH, f"fraud@{i}", {"i": i, "note": f"record number {i}"})
    return log


def _lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def _write(log: AuditLog, lines: list[bytes]) -> None:
    log.path.write_bytes(b"".join(lines))


def test_append_and_verify(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    res = log.verify()
    assert (res.ok, res.records, res.first_bad, res.problem) == (True, 50, None, "")
    recs = [json.loads(line) for line in _lines(log)]
    assert [r["seq"] for r in recs] == list(range(50))
    assert recs[0]["prev"] == GENESIS
    assert all(recs[i]["prev"] == recs[i - 1]["hash"] for i in range(1, 50))
    assert all(r["hash"] == record_hash(r) for r in recs)
    assert res.head == recs[-1]["hash"]
    assert recs[3]["at"].endswith("Z") and recs[3]["details"] == {"i": 3, "note": "record number 3"}
    assert log.path.stat().st_mode & 0o777 == 0o600
    # a second instance (another process's view) chains on from the file
    rec = AuditLog(log.path).append("other", PUBLISH, "x")
    assert rec["seq"] == 50 and rec["prev"] == recs[-1]["hash"]
    assert log.append("tester", PUBLISH, "y")["seq"] == 51  # the first instance sees the file grew
    assert log.verify().ok and log.verify().records == 52


def test_empty_and_bad_input(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "none.jsonl")
    assert log.verify().ok and log.verify().records == 0
    with pytest.raises(ConfigError, match="details"):
        log.append("a", PUBLISH, "t", {"x": float("nan")})
    with pytest.raises(ConfigError, match="actor"):
        log.append("", PUBLISH, "t")


def test_flipped_byte_in_details(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    lines = _lines(log)
    lines[17] = lines[17].replace(b"record number 17", b"record numbeR 17")
    _write(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad == 17 and "hash mismatch" in res.problem and res.records == 17


def test_deleted_middle_record(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    lines = _lines(log)
    del lines[25]
    _write(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad == 25 and "seq out of order" in res.problem


def test_swapped_records(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    lines = _lines(log)
    lines[10], lines[30] = lines[30], lines[10]
    _write(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad == 10 and "seq out of order" in res.problem


def test_inserted_forged_record(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    lines = _lines(log)
    forged = {"seq": 20, "at": "2020-01-01T00:00:00.000000Z", "actor": "mallory", "action": PUBLISH,
              "target": "fraud@999", "details": {}, "prev": "f" * 64}
    forged["hash"] = record_hash(forged)
    lines.insert(20, canonical_json(forged) + b"\n")
    _write(log, lines)
    res = log.verify()
    assert not res.ok and res.first_bad == 20 and "prev does not match record 19" in res.problem


def test_truncated_last_line(tmp_path: Path) -> None:
    log = _filled(tmp_path)
    data = log.path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    log.path.write_bytes(data[: last + (len(data) - last) // 2])
    res = log.verify()
    assert not res.ok and res.first_bad == 49 and "not JSON" in res.problem and res.records == 49
    with pytest.raises(AuditError, match="incomplete"):
        AuditLog(log.path).append("a", PUBLISH, "t")
    log.path.write_bytes(data[:-1])  # only the final newline missing
    res = log.verify()
    assert not res.ok and res.first_bad == 49 and "truncated" in res.problem


def _append_many(path: str, who: str, n: int, start: multiprocessing.synchronize.Barrier) -> None:
    log = AuditLog(path)
    start.wait(30)
    for i in range(n):
        log.append(who, PUBLISH, f"t{i}", {"i": i})


def test_concurrent_appends_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    per = 40
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)  # both processes and this one: the threads start once the processes are ready
    procs = [ctx.Process(target=_append_many, args=(str(path), f"proc{i}", per, start)) for i in range(2)]
    for p in procs:
        p.start()
    start.wait(30)
    shared = AuditLog(path)  # one instance shared by the threads (exercises the in-memory tail cache)

    def worker(k: int) -> None:
        for i in range(per):
            shared.append(f"thread{k}", PUBLISH, f"t{i}", {"i": i})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    res = AuditLog(path).verify()
    assert res.ok, res.problem
    assert res.records == 6 * per
    actors = [json.loads(line)["actor"] for line in path.read_bytes().splitlines()]
    assert {a: actors.count(a) for a in set(actors)} == {f"thread{k}": per for k in range(4)} | {
        f"proc{i}": per for i in range(2)}
