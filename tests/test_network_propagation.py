"""Block propagation from one node's view: announcement (peers' headers) to arrival (our chain), per block."""

from __future__ import annotations

import json

import numpy as np

from core.alerts import Severity
from core.bitcoin.network.arrival_forecast import FEATURES, ArrivalForecaster, fit
from core.bitcoin.network.propagation import MAX_PENDING, SLOW_BLOCK_S, BlockArrival, PropagationTracker, heights
from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA


def _poll(tr: PropagationTracker, now: float, peer_headers: list, ours: int, headers: int | None = None):
    peers = [{"id": i, "synced_headers": h} for i, h in enumerate(peer_headers)]
    chain = {"blocks": ours, "headers": ours if headers is None else headers}
    return tr.observe(now, peers, chain)


def test_each_block_is_timed_from_its_first_announcement_to_its_arrival() -> None:
    tr = PropagationTracker()
    assert _poll(tr, 0.0, [100, 99], 100) == []  # announced before the watch began: not timed
    assert _poll(tr, 5.0, [101, 100, 100], 100) == [] and tr.pending == {}  # one peer's word is not enough
    assert _poll(tr, 10.0, [101, 101, 100], 100) == []
    got = _poll(tr, 20.0, [101, 101], 101)
    assert [(a.height, a.delay_s) for a in got] == [(101, 10.0)]
    got = _poll(tr, 30.0, [101], 102, headers=102)  # our own header chain announces too; both in one poll: 0
    assert [(a.height, a.delay_s) for a in got] == [(102, 0.0)]
    assert _poll(tr, 40.0, [105], 103) and sorted(tr.pending) == [104, 105]  # two blocks behind
    got = _poll(tr, 100.0, [105], 105)
    assert [(a.height, a.delay_s) for a in got] == [(104, 60.0), (105, 60.0)]
    assert [f.active for f in tr.findings()] == [False]  # two slow blocks: not yet
    _poll(tr, 110.0, [106], 105)
    _poll(tr, 170.0, [106], 106)
    (finding,) = tr.findings()
    assert finding.active and finding.severity == Severity.WARNING and finding.detector == "propagation"
    assert "3 of the last 6 blocks" in finding.message and finding.value == SLOW_BLOCK_S


def test_restarts_keep_the_timers_and_bad_state_starts_afresh() -> None:
    tr = PropagationTracker()
    _poll(tr, 0.0, [100], 100)
    _poll(tr, 10.0, [101], 100)
    again = PropagationTracker.from_dict(json.loads(json.dumps(tr.to_dict())))
    # 102 was announced while the watch was stopped: when is unknown, so it is not timed
    assert [(a.height, a.delay_s) for a in _poll(again, 75.0, [102], 101)] == [(101, 65.0)]
    assert _poll(again, 85.0, [102], 102) == [] and again.pending == {}
    for bad in (None, [], {"pending": {"x": 1}}, {"recent": [[1, 2]]}, {"last_announced": "high"}):
        fresh = PropagationTracker.from_dict(bad)
        assert fresh.pending == {} and fresh.recent == [] and fresh.last_announced is None


def test_malformed_replies_time_nothing_and_never_raise() -> None:
    tr = PropagationTracker()
    _poll(tr, 0.0, [100], 100)
    for peers, chain in ((None, {"blocks": 101}), ([{"synced_headers": True}], {"blocks": "101"}),
                         ("peers", None), ([{"synced_headers": -5}, 7], {"blocks": 100, "headers": 1.5})):
        assert tr.observe(20.0, peers, chain) == []
    assert heights([{"synced_headers": 2**40}], {"blocks": 5}) == (None, 5)  # beyond any height: ignored
    _poll(tr, 30.0, [100 + 10**7 - 1], 100)  # a peer claiming millions of blocks: bounded memory
    assert len(tr.pending) == MAX_PENDING
    assert tr.observe(float("nan"), [{"synced_headers": 200}], {"blocks": 200}) == []


def test_a_resync_and_a_block_that_never_comes_are_not_propagation() -> None:
    tr = PropagationTracker()
    _poll(tr, 0.0, [100], 100)
    _poll(tr, 60.0, [110, 110], 100)  # partitioned: ten blocks announced, none arrives
    assert _poll(tr, 5400.0, [110, 110], 110) == [] and tr.recent == []  # caught up at once: not timed
    assert [f.active for f in tr.findings()] == [False]
    _poll(tr, 5460.0, [111, 111], 110)
    assert len(tr.pending) == 1 and _poll(tr, 5460.0 + 7201.0, [111, 111], 110) == [] and tr.pending == {}


def test_each_timed_block_keeps_the_peer_mix_of_the_poll_before_its_announcement() -> None:
    tr = PropagationTracker()
    tr.observe(0.0, [{"synced_headers": 100}], {"blocks": 100}, context=(1.0,))
    tr.observe(60.0, [{"synced_headers": 101}], {"blocks": 100}, context=(2.0,))  # announced: context of poll 0
    tr.observe(120.0, [{"synced_headers": 101}], {"blocks": 101}, context=None)  # a poll whose context is unknown
    tr.observe(180.0, [{"synced_headers": 102}], {"blocks": 101}, context=(4.0,))  # ... before 102's announcement
    got = tr.observe(240.0, [{"synced_headers": 102}], {"blocks": 102}, context=(4.0,))
    assert [(a.height, a.delay_s, a.context) for a in tr.history] == [(101, 60.0, (1.0,))]
    assert [a.context for a in got] == [None]  # timed, but with no context: not learned from
    again = PropagationTracker.from_dict(json.loads(json.dumps(tr.to_dict())))
    assert again.history == tr.history
    tr.observe(300.0, [{"synced_headers": 106}], {"blocks": 102}, context=(5.0,))
    tr.observe(360.0, [{"synced_headers": 106}], {"blocks": 106}, context=(5.0,))  # four at once: a resync
    assert len(tr.history) == 1 and tr.contexts == {}


def _arrivals(n: int, slow_above_ms: float) -> list[BlockArrival]:
    """n timed blocks whose ping p50 runs 20..2020 ms; slow (120 s) above ``slow_above_ms``, else 0 s."""
    out = []
    for i in range(n):
        ping = 20.0 + 2000.0 * i / (n - 1)
        ctx = dict.fromkeys(FEATURES, 0.0) | {"ping_p50_ms": ping, "ping_p90_ms": 1.5 * ping,
                                              "minping_p50_ms": 0.8 * ping, "bip152_hb_to": 3.0 if ping < 500 else 0.0}
        out.append(BlockArrival(1000 + i, 600.0 * i, 600.0 * i + (120.0 if ping > slow_above_ms else 0.0),
                                tuple(ctx[f] for f in FEATURES)))
    return out


def test_the_forecast_learns_slow_arrival_from_the_peer_mix_and_says_when_it_cannot() -> None:
    history = _arrivals(40, 1500.0)
    model = fit(history)
    assert not isinstance(model, str) and model.blocks == 40 and model.slow == 11
    p = model.predict([a.context for a in history])
    assert (p >= 0.5).tolist() == [a.delay_s >= SLOW_BLOCK_S for a in history] and np.all(np.diff(p) >= 0)
    assert p[-1] > 0.9 and p[0] < 0.01
    assert "24" in fit(history[:20]) and "0 slow" in fit(_arrivals(40, 1e9))  # too few; nothing slow to learn from
    forecaster = ArrivalForecaster()
    vector = np.zeros(TELEMETRY_SCHEMA.width)
    for name, value in zip(FEATURES, history[-2].context, strict=True):  # a peer mix like the slowest blocks'
        vector[TELEMETRY_SCHEMA.names.index(name)] = value
    forecaster.update(history[:20])
    quiet = forecaster.finding(vector)
    assert not quiet.active and quiet.severity == Severity.INFO and "needs 24" in forecaster.reason
    forecaster.update(history)
    finding = forecaster.finding(vector)
    assert finding.active and finding.severity == Severity.WARNING and finding.detector == "slow-arrival"
    assert "40 timed blocks (11 slow)" in finding.message and "ping p50 1969 ms, 0 high-bandwidth" in finding.message
    for name, value in zip(FEATURES, history[1].context, strict=True):  # ... like the fastest blocks'
        vector[TELEMETRY_SCHEMA.names.index(name)] = value
    assert not forecaster.finding(vector).active
