"""Tuning advice that needs more than the telemetry vector: -dbcache during an initial block download."""

from __future__ import annotations

from core.alerts import Severity
from core.bitcoin.network.detectors import DBCACHE_ADVICE_FREE_MB, dbcache_advice


def test_dbcache_advice_only_during_a_sync_with_memory_to_spare() -> None:
    ibd = {"initialblockdownload": True, "verificationprogress": 0.4213}
    f = dbcache_advice(ibd, {"memory_available_mb": 12_000.0})
    assert f.active and f.severity == Severity.INFO and (f.detector, f.key) == ("tuning", "dbcache")
    assert "42.1 % verified" in f.message and "-dbcache=5888" in f.message and "default 450 MiB" in f.message
    assert not dbcache_advice(ibd, {"memory_available_mb": DBCACHE_ADVICE_FREE_MB - 1.0}).active
    assert not dbcache_advice({**ibd, "initialblockdownload": False}, {"memory_available_mb": 12_000.0}).active
    for blockchain, resources in ((None, None), ("x", {"memory_available_mb": "lots"}),
                                  ({"initialblockdownload": "yes"}, {"memory_available_mb": float("inf")}),
                                  (ibd, {"memory_available_mb": True})):
        assert not dbcache_advice(blockchain, resources).active  # malformed: no advice, no exception
    huge = dbcache_advice(ibd, {"memory_available_mb": 1e6})
    assert "-dbcache=16384" in huge.message  # capped
