"""Block propagation from one node's view: announcement (peers' headers) to arrival (our chain), per block."""

from __future__ import annotations

import json

from core.alerts import Severity
from core.bitcoin.network.propagation import MAX_PENDING, SLOW_BLOCK_S, PropagationTracker, heights


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
