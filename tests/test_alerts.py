"""The alert engine (dedup, escalation, hysteresis, cooldown, persistence, history) and its sinks (JSONL,
log, signed webhook with a durable outbox against real loopback receivers, Prometheus text and rules)."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.alerts import (
    Alert,
    AlertEngine,
    Finding,
    JsonlSink,
    LogSink,
    Severity,
    WebhookSink,
    alert_id,
    alertmanager_rules,
    prometheus_text,
    verify_signature,
)
from core.errors import ConfigError

SECRET = b"s3cret-for-tests"


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def finding(active: bool = True, severity: Severity = Severity.WARNING, key: str = "eclipse",
            detector: str = "eclipse", value: float | None = 0.9) -> Finding:
    return Finding(detector=detector, key=key, severity=severity, title=f"{detector} suspected",
                   message="most peers share one /16", value=value, active=active)


def run(engine: AlertEngine, clock: FakeClock, *findings: Finding, dt: float = 60.0) -> list[Alert]:
    clock.advance(dt)
    return engine.submit(findings)


# ---- a real loopback receiver ------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1:<free port> that records each POST; ``statuses`` scripts the replies
    (popped per request; 200 when empty); ``redirect_to`` makes it answer 302."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, str]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body, self.path))
                    status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def ids(self) -> list[str]:
        return [h["x-anya-alert-id"] for h, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/hook"


# ---- engine rules ------------------------------------------------------------------------------------


def test_condition_active_for_ten_evaluations_raises_exactly_one_alert() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock)
    sent = [a for _ in range(10) for a in run(engine, clock, finding())]
    assert len(sent) == 1
    a = sent[0]
    assert (a.detector, a.key, a.severity) == ("eclipse", "eclipse", Severity.WARNING)
    assert a.id == alert_id("eclipse", "eclipse", a.started, "WARNING")
    assert a.started == a.time == 1_000_060.0
    assert engine.counters()["eclipse"].raised == 1
    assert engine.counters()["eclipse"].active == 1
    assert engine.recent(5) == [a]


def test_escalation_raises_a_new_alert_once_and_lower_severity_does_not() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock)
    first = run(engine, clock, finding(severity=Severity.WARNING))
    up = run(engine, clock, finding(severity=Severity.CRITICAL))
    again = run(engine, clock, finding(severity=Severity.CRITICAL))
    down = run(engine, clock, finding(severity=Severity.WARNING))
    up2 = run(engine, clock, finding(severity=Severity.CRITICAL))
    assert len(first) == 1 and len(up) == 1
    assert again == [] and down == [] and up2 == []
    assert up[0].severity is Severity.CRITICAL
    assert up[0].started == first[0].started and up[0].id != first[0].id
    assert engine.counters()["eclipse"].raised == 2


def test_hysteresis_clears_only_after_three_inactive_and_flapping_does_not_raise_twice() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock, clear_after=3)
    assert len(run(engine, clock, finding())) == 1
    # flapping: active / inactive / active / inactive / inactive / active -- never three inactive in a row
    for active in (False, True, False, False, True):
        assert run(engine, clock, finding(active=active)) == []
    assert engine.is_active("eclipse", "eclipse")
    assert run(engine, clock, finding(active=False)) == []
    assert run(engine, clock, finding(active=False)) == []
    assert engine.is_active("eclipse", "eclipse")
    resolved = run(engine, clock, finding(active=False, value=0.1))
    assert len(resolved) == 1
    r = resolved[0]
    assert r.severity is Severity.INFO and r.title == "resolved: eclipse suspected" and r.resolved
    assert r.value == 0.1
    assert not engine.is_active("eclipse", "eclipse")
    assert engine.counters()["eclipse"].raised == 1 and engine.counters()["eclipse"].active == 0
    # findings that do not mention the condition change nothing
    assert run(engine, clock, finding(key="other", active=False)) == []


def test_cooldown_suppresses_and_counts_then_raises_after_it_passes() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock, cooldown_s=3600, clear_after=1)
    run(engine, clock, finding())
    assert len(run(engine, clock, finding(active=False))) == 1  # resolved at t0
    # back inside the cooldown: suppressed, counted once per episode, not re-sent while it stays active
    assert run(engine, clock, finding(), dt=600) == []
    assert run(engine, clock, finding(), dt=600) == []
    assert engine.counters()["eclipse"].suppressed == 1
    assert engine.counters()["eclipse"].active == 0
    assert run(engine, clock, finding(active=False), dt=60) == []  # suppressed episode ends quietly
    assert run(engine, clock, finding(), dt=60) == []
    assert engine.counters()["eclipse"].suppressed == 2
    # still active when the cooldown ends: raised then
    late = run(engine, clock, finding(), dt=3600)
    assert len(late) == 1 and late[0].severity is Severity.WARNING
    assert engine.counters()["eclipse"].raised == 2


def test_higher_severity_breaks_through_the_cooldown() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock, cooldown_s=3600, clear_after=1)
    run(engine, clock, finding(severity=Severity.WARNING))
    run(engine, clock, finding(active=False))
    assert run(engine, clock, finding(severity=Severity.WARNING)) == []
    crit = run(engine, clock, finding(severity=Severity.CRITICAL))
    assert len(crit) == 1 and crit[0].severity is Severity.CRITICAL
    assert engine.counters()["eclipse"].suppressed == 1


def test_state_survives_restart_and_active_condition_is_not_reraised(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "alerts.json"
    e1 = AlertEngine(state, [], now=clock, cooldown_s=3600, clear_after=2)
    raised = run(e1, clock, finding())
    run(e1, clock, finding(key="flap"))
    run(e1, clock, finding(key="flap", active=False))
    run(e1, clock, finding(key="flap", active=False))  # resolved: cooldown running
    saved = json.loads(state.read_text())
    assert {c["key"] for c in saved["active"]} == {"eclipse"}
    assert [c["key"] for c in saved["cooldowns"]] == ["flap"]

    e2 = AlertEngine(state, [], now=clock, cooldown_s=3600, clear_after=2)
    assert e2.is_active("eclipse", "eclipse")
    assert run(e2, clock, finding()) == []                     # not re-raised after restart
    assert run(e2, clock, finding(key="flap")) == []           # cooldown survived the restart
    assert e2.counters()["eclipse"].raised == 2 and e2.counters()["eclipse"].suppressed == 1
    assert [a.id for a in e2.recent(10)][:1] == [raised[0].id]  # history restored from the JSONL file
    assert len(e2.recent(10)) == 3
    # the resolved notice after restart carries the original start time
    run(e2, clock, finding(active=False))
    res = run(e2, clock, finding(active=False))
    assert res[0].started == raised[0].started and res[0].resolved


def test_history_is_bounded_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    clock = FakeClock()
    state = tmp_path / "alerts.json"
    engine = AlertEngine(state, [], now=clock, history_limit=10)
    for i in range(25):
        run(engine, clock, finding(key=f"watch:{i:03d}"))
    assert engine.history_path is not None
    lines = engine.history_path.read_text().splitlines()
    assert len(lines) <= 10
    assert json.loads(lines[-1])["key"] == "watch:024"
    assert [a.key for a in engine.recent(3)] == ["watch:022", "watch:023", "watch:024"]
    with engine.history_path.open("ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"detector": "ecl')
    e2 = AlertEngine(state, [], now=clock, history_limit=10)
    assert e2.recent(1)[0].key == "watch:024"
    run(e2, clock, finding(key="watch:new"))
    assert json.loads(e2.history_path.read_text().splitlines()[-1])["key"] == "watch:new"


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="alert-clear-after"):
        AlertEngine(None, [], clear_after=0)
    with pytest.raises(ConfigError, match="alert-cooldown"):
        AlertEngine(None, [], cooldown_s=-1)
    with pytest.raises(ValueError, match="severity"):
        Finding("d", "k", "loud", "t")  # type: ignore[arg-type]


def test_a_broken_sink_does_not_stop_the_others(tmp_path: Path) -> None:
    class Broken:
        def deliver(self, alert: Alert) -> None:
            raise RuntimeError("boom")

    clock = FakeClock()
    out = tmp_path / "alerts.jsonl"
    engine = AlertEngine(None, [Broken(), JsonlSink(out)], now=clock)
    run(engine, clock, finding())
    assert engine.sink_errors == 1
    assert len(out.read_text().splitlines()) == 1


# ---- log and JSONL sinks --------------------------------------------------------------------------------


def test_jsonl_sink_writes_one_line_per_alert(tmp_path: Path) -> None:
    clock = FakeClock()
    out = tmp_path / "sub" / "alerts.jsonl"
    engine = AlertEngine(None, [JsonlSink(out)], now=clock, clear_after=1)
    sent = run(engine, clock, finding())
    sent += run(engine, clock, finding(severity=Severity.CRITICAL))
    sent += run(engine, clock, finding(active=False))
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    back = [Alert.from_dict(json.loads(line)) for line in lines]
    assert back == sent
    assert [json.loads(line)["severity"] for line in lines] == ["WARNING", "CRITICAL", "INFO"]


def test_log_sink_one_line_per_alert(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [LogSink()], now=clock)
    with caplog.at_level(logging.INFO, logger="anya_fl.alerts"):
        run(engine, clock, Finding("double-spend", "watch:ab\ncd", Severity.CRITICAL, "conflict", "two\nlines"))
    recs = [r for r in caplog.records if r.name == "anya_fl.alerts"]
    assert len(recs) == 1 and recs[0].levelno == logging.CRITICAL
    msg = recs[0].getMessage()
    assert "\n" not in msg and "watch:ab\\ncd" in msg and "two\\nlines" in msg


# ---- webhook ------------------------------------------------------------------------------------------


def test_webhook_receiver_gets_each_alert_once_with_a_valid_signature(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    sink = WebhookSink(receiver.url, SECRET, outbox_dir=tmp_path / "outbox", now=clock)
    engine = AlertEngine(None, [sink], now=clock, clear_after=1)
    sent = run(engine, clock, finding())
    sent += run(engine, clock, finding())
    sent += run(engine, clock, finding(severity=Severity.CRITICAL))
    sent += run(engine, clock, finding(active=False))
    assert len(sent) == 3
    assert sink.flush() == 0
    sink.deliver(sent[0])  # handing over an alert already delivered sends nothing
    assert receiver.ids() == [a.id for a in sent]
    for (headers, body, path), alert in zip(receiver.requests, sent, strict=True):
        assert path == "/hook"
        assert headers["content-type"] == "application/json"
        assert verify_signature(body, headers["x-anya-signature"], SECRET)
        assert not verify_signature(body, headers["x-anya-signature"], b"wrong-secret")
        assert not verify_signature(body + b" ", headers["x-anya-signature"], SECRET)
        assert Alert.from_dict(json.loads(body)) == alert
    assert not verify_signature(b"{}", "", SECRET)
    assert sink.pending() == []
    assert list((tmp_path / "outbox").iterdir()) == []


def test_webhook_receiver_down_keeps_everything_and_backs_off_then_new_sink_delivers(tmp_path: Path) -> None:
    clock = FakeClock(5000.0)
    outbox = tmp_path / "outbox"
    sink = WebhookSink(closed_port_url(), SECRET, outbox_dir=outbox, now=clock, timeout_s=2)
    engine = AlertEngine(None, [sink], now=clock)
    alerts = [a for i in range(3) for a in engine.submit([finding(key=f"watch:{i}")])]
    assert len(alerts) == 3
    pend = sink.pending()
    assert sorted(e.alert_id for e in pend) == sorted(a.id for a in alerts)
    assert {e.attempts for e in pend} == {1}
    assert {e.next_attempt for e in pend} == {5001.0}  # 1 s after the first failure

    clock.advance(0.5)
    assert sink.flush() == 0
    assert {e.attempts for e in sink.pending()} == {1}  # nothing due yet: not retried
    clock.t = 5001.0
    assert sink.flush() == 0
    assert {e.next_attempt for e in sink.pending()} == {5003.0}  # +2 s
    clock.t = 5003.0
    sink.flush()
    assert {e.next_attempt for e in sink.pending()} == {5007.0}  # +4 s
    assert {e.attempts for e in sink.pending()} == {3}
    assert sink.backoff_s(20) == 300.0  # capped at max_backoff_s
    assert all("Connection" in e.last_error or "refused" in e.last_error for e in sink.pending())

    r = Receiver()
    try:
        clock.t = 5007.0
        restarted = WebhookSink(r.url, SECRET, outbox_dir=outbox, now=clock)
        assert restarted.flush() == 3
        assert sorted(r.ids()) == sorted(a.id for a in alerts)
        assert restarted.flush() == 0
        clock.advance(1000)
        assert restarted.flush() == 0
        assert len(r.requests) == 3
        for headers, body, _ in r.requests:
            assert verify_signature(body, headers["x-anya-signature"], SECRET)
        assert restarted.pending() == []
    finally:
        r.close()


def test_webhook_500_is_retried_and_2xx_removes(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    sink = WebhookSink(receiver.url, SECRET, outbox_dir=tmp_path / "outbox", now=clock)
    engine = AlertEngine(None, [sink], now=clock)
    receiver.statuses = [500, 503]
    (a,) = run(engine, clock, finding())
    assert [e.last_error for e in sink.pending()] == ["HTTP 500"]
    clock.advance(1)
    assert sink.flush() == 0
    assert [(e.attempts, e.last_error) for e in sink.pending()] == [(2, "HTTP 503")]
    clock.advance(2)
    assert sink.flush() == 1
    assert sink.pending() == []
    assert receiver.ids() == [a.id, a.id, a.id]  # two refusals, one acceptance
    clock.advance(100)
    assert sink.flush() == 0 and len(receiver.requests) == 3


def test_webhook_does_not_follow_redirects(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    sink = WebhookSink(receiver.url, SECRET, outbox_dir=tmp_path / "outbox", now=clock)
    receiver.statuses = [302]
    sink.deliver(AlertEngine(None, [], now=clock).submit([finding()])[0])
    assert [path for _, _, path in receiver.requests] == ["/hook"]  # /elsewhere never asked
    (e,) = sink.pending()
    assert "HTTP 302" in e.last_error


def test_webhook_timeout_is_a_retried_failure(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (kernel backlog) and never answers
    try:
        clock = FakeClock()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        sink = WebhookSink(url, SECRET, outbox_dir=tmp_path / "outbox", now=clock, timeout_s=0.2)
        sink.deliver(AlertEngine(None, [], now=clock).submit([finding()])[0])
        (e,) = sink.pending()
        assert e.attempts == 1 and "timed out" in e.last_error.lower()
    finally:
        silent.close()


def test_webhook_drain_sleeps_until_due(tmp_path: Path, receiver: Receiver) -> None:
    clock = FakeClock()
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.advance(s)

    sink = WebhookSink(receiver.url, SECRET, outbox_dir=tmp_path / "outbox", now=clock, sleep=sleep)
    receiver.statuses = [500, 500, 500]
    sink.deliver(AlertEngine(None, [], now=clock).submit([finding()])[0])
    assert sink.drain(timeout_s=60)
    assert slept == [1.0, 2.0, 4.0]
    assert len(receiver.requests) == 4


@pytest.mark.parametrize("url", ["ftp://example.org/x", "file:///etc/passwd", "example.org/hook", "http:///nohost",
                                 "http://example.org:99999/x"])
def test_webhook_refuses_other_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as err:
        WebhookSink(url, SECRET, outbox_dir=tmp_path)
    assert err.value.setting == "webhook-url"


# ---- Prometheus -------------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z]+="(?:[^"\\]|\\.)*",?)+)\} (\S+)$')
LABEL = re.compile(r'([a-z]+)="((?:[^"\\]|\\.)*)"')


def _parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) anya_fl_\w+ ", line), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = tuple(LABEL.findall(m.group(2)))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def test_prometheus_text_counters_values_and_escaping() -> None:
    clock = FakeClock()
    engine = AlertEngine(None, [], now=clock, cooldown_s=3600, clear_after=1)
    odd = 'watch:a"b\\c\nd'
    run(engine, clock, finding(detector="eclipse", key="eclipse", value=0.75),
        finding(detector="double-spend", key=odd, value=2.0, severity=Severity.CRITICAL))
    run(engine, clock, finding(detector="eclipse", key="eclipse", value=0.1, active=False))
    run(engine, clock, finding(detector="eclipse", key="eclipse", value=0.8))  # suppressed
    text = prometheus_text(engine)
    assert text.endswith("\n")
    assert 'key="watch:a\\"b\\\\c\\nd"' in text
    samples = _parse(text)
    esc = 'watch:a\\"b\\\\c\\nd'
    assert samples[("anya_fl_alerts_raised_total", (("detector", "eclipse"),))] == 1
    assert samples[("anya_fl_alerts_suppressed_total", (("detector", "eclipse"),))] == 1
    assert samples[("anya_fl_alerts_raised_total", (("detector", "double-spend"),))] == 1
    assert samples[("anya_fl_alert_active", (("detector", "double-spend"), ("key", esc)))] == 1
    assert samples[("anya_fl_alert_active", (("detector", "eclipse"), ("key", "eclipse")))] == 0
    assert samples[("anya_fl_detector_value", (("detector", "eclipse"), ("key", "eclipse")))] == 0.8
    assert samples[("anya_fl_detector_value", (("detector", "double-spend"), ("key", esc)))] == 2.0
    assert "# TYPE anya_fl_alerts_raised_total counter" in text
    assert "# TYPE anya_fl_alert_active gauge" in text


def test_alertmanager_rules_has_one_rule_per_detector() -> None:
    rules = alertmanager_rules([("eclipse", "critical", "Possible eclipse attack"),
                                ("double-spend", "warning", 'Conflicting "spend" seen\nagain'),
                                ("partition", Severity.INFO, "Tip stalled")])
    assert rules.count("- alert: ") == 3
    assert 'expr: "anya_fl_alert_active{detector=\\"eclipse\\"} == 1"' in rules
    assert "- alert: AnyaFlDoubleSpend" in rules
    assert rules.count("for: 1m") == 3
    assert "severity: critical" in rules and "severity: warning" in rules and "severity: info" in rules
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load(rules)
    got = {r["labels"]["detector"]: r for r in doc["groups"][0]["rules"]}
    assert set(got) == {"eclipse", "double-spend", "partition"}
    assert got["double-spend"]["expr"] == 'anya_fl_alert_active{detector="double-spend"} == 1'
    assert got["double-spend"]["annotations"]["summary"] == 'Conflicting "spend" seen\nagain'
    assert got["eclipse"]["labels"]["severity"] == "critical" and got["eclipse"]["for"] == "1m"
    with pytest.raises(ConfigError, match="alert-rule-severity"):
        alertmanager_rules([("eclipse", "loud", "x")])
    with pytest.raises(ConfigError, match="appears twice"):
        alertmanager_rules([("eclipse", "info", "x"), ("eclipse", "info", "y")])
