"""The network watch against the simulated node's P2P scenarios (manual clock): each scenario raises its
detector's alert within a stated time, a clean run raises nothing above INFO, an unreachable node is one
alert (not "no connections"), and a restarted watcher neither re-raises nor forgets how long a condition held."""

from __future__ import annotations

import pytest

from anya_fl.simnode import GENESIS_EPOCH, SimNode, SimNodeConfig
from core.alerts import AlertEngine, Severity
from core.bitcoin.network.detectors import CHAIN_SYNC_TIMEOUT_S, SUSTAINED_S, NetworkDetectors
from core.bitcoin.network.watch import NetworkWatch
from core.bitcoin.rpc import BitcoinRPC, RPCConfig

STEP_S = 60.0


def _node(**kw) -> SimNode:
    cfg = {"seed": 7, "transactions": 20_000, "speed": 0.0, "rpcuser": "u", "rpcpassword": "p", "start_block": 2}
    return SimNode(SimNodeConfig(**{**cfg, **kw})).start(port=0)


def _watch(node: SimNode, tmp_path, url: str | None = None) -> NetworkWatch:
    rpc = BitcoinRPC(RPCConfig(url=url or node.url, user="u", password="p", retries=0, timeout_s=5))
    clock = lambda: GENESIS_EPOCH + node.now()  # noqa: E731 - the node's simulated clock
    engine = AlertEngine(tmp_path / "alerts.json", [], now=clock)
    return NetworkWatch(rpc, engine, state_path=tmp_path / "detectors.json", now=clock)


def _run(node: SimNode, watch: NetworkWatch, seconds: float) -> list:
    alerts = []
    for _ in range(int(seconds // STEP_S)):
        node.advance(STEP_S)
        alerts += watch.poll_once().alerts
    return alerts


def _first(alerts: list, detector: str, at_least: Severity = Severity.WARNING):
    return next((a for a in alerts if a.detector == detector and a.severity >= at_least
                 and not a.title.startswith("resolved")), None)


@pytest.fixture()
def node():
    n = _node()
    yield n
    n.stop()


def test_a_clean_node_raises_nothing_above_info(node, tmp_path) -> None:
    watch = _watch(node, tmp_path)
    watch.poll_once()
    end = float(node.chain.block_time[-1]) - 1800  # the simulated chain's last block: after it, no more blocks
    alerts = _run(node, watch, end - node.now())
    assert node.now() > node.t_start + 4 * 3600  # hours of chain, ~25 blocks
    assert [a for a in alerts if a.severity > Severity.INFO] == []
    sample = watch.previous
    assert sample is not None and sample.problems == [] and sample.value("peers_total") == 10


@pytest.mark.parametrize("scenario, detector, severity, within_s", [
    ("eclipse", "eclipse", Severity.WARNING, STEP_S),
    ("inbound_flood", "inbound-flood", Severity.WARNING, STEP_S),
    ("addr_spam", "addr-spam", Severity.WARNING, SUSTAINED_S + 2 * STEP_S),
    ("stale_fork", "fork", Severity.WARNING, STEP_S),
])
def test_each_scenario_is_detected_in_time(node, tmp_path, scenario, detector, severity, within_s) -> None:
    watch = _watch(node, tmp_path)
    _run(node, watch, 600)
    assert [a for a in watch.engine.recent(100) if a.severity > Severity.INFO] == []
    start = node.now() + 1
    getattr(node, f"inject_{scenario}")(start)
    alerts = _run(node, watch, within_s + STEP_S)
    first = _first(alerts, detector, severity)
    assert first is not None, [(a.detector, a.severity.name, a.message) for a in alerts]
    assert first.time - (GENESIS_EPOCH + start) <= within_s
    assert [e["kind"] for e in node.truth.network_events()] == [scenario]


def test_partition_is_critical_after_core_chain_sync_timeout(node, tmp_path) -> None:
    watch = _watch(node, tmp_path)
    _run(node, watch, 600)
    start = node.now() + 1
    node.inject_partition(start, duration_s=5400)
    alerts = _run(node, watch, 5400 - 600)
    first = _first(alerts, "partition", Severity.CRITICAL)
    assert first is not None and "headers ahead of our tip" in first.message
    # peers get ahead at the first block after the partition starts; Core's CHAIN_SYNC_TIMEOUT later it is critical
    first_block = min(float(t) for t in node.chain.block_time if t > start)
    assert 0 <= first.time - (GENESIS_EPOCH + first_block) - CHAIN_SYNC_TIMEOUT_S <= 2 * STEP_S
    later = _run(node, watch, 600 + 4 * STEP_S)  # the partition ends; the node catches up; it resolves
    assert any(a.detector == "partition" and a.title.startswith("resolved") for a in later)


def test_unreachable_node_is_one_alert_and_nothing_else(node, tmp_path) -> None:
    watch = _watch(node, tmp_path, url="http://127.0.0.1:9")  # nothing listens on the discard port
    results = [watch.poll_once() for _ in range(5)]
    alerts = [a for r in results for a in r.alerts]
    assert [(a.detector, a.severity) for a in alerts] == [("rpc", Severity.CRITICAL)]
    assert "getpeerinfo" in alerts[0].message and results[-1].sample.problems


def test_a_restarted_watch_keeps_its_conditions_and_timers(node, tmp_path) -> None:
    watch = _watch(node, tmp_path)
    _run(node, watch, 300)
    node.inject_addr_spam(node.now() + 1)
    _run(node, watch, SUSTAINED_S / 2)
    held = dict(watch.detectors.since)
    assert "addr" in held
    again = _watch(node, tmp_path)  # a new process on the same state files
    assert again.detectors.since == held
    node.inject_inbound_flood(node.now() + 1)
    alerts = _run(node, again, SUSTAINED_S / 2 + 3 * STEP_S)
    assert _first(alerts, "addr-spam") is not None  # the 10 minutes counted across the restart
    flood = [a for a in alerts if a.detector == "inbound-flood" and not a.resolved]
    assert len(flood) == 1  # raised once, not re-raised at every poll (it resolves once the 115 slots are full)
    third = _watch(node, tmp_path)
    assert [a for a in _run(node, third, 3 * STEP_S) if a.detector in ("inbound-flood", "addr-spam")
            and not a.resolved] == []


def test_detector_thresholds_on_their_own() -> None:
    """The eclipse rule needs concentration: the simulated node's default peers (6 IPv4 in one /16, 2 IPv6,
    2 onion: 3 groups, 60 % in one) are not an eclipse; 8 of 8 in one /16 is."""
    import numpy as np

    from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA, TelemetrySample

    def sample(**values: float) -> TelemetrySample:
        v = np.zeros(TELEMETRY_SCHEMA.width, np.float32)
        base = {"network_active": 1, "connections": 10, "peers_outbound_full_relay": 8,
                "peers_block_relay_only": 2, "tip_age_s": 60}
        for k, x in {**base, **values}.items():
            v[TELEMETRY_SCHEMA.names.index(k)] = x
        return TelemetrySample(time=1e9, vector=v)

    d = NetworkDetectors()
    ecl = lambda s: next(f for f in d.evaluate(s) if f.key == "netgroups")  # noqa: E731
    assert not ecl(sample(outbound_netgroups=3, outbound_top_netgroup_share=0.6)).active
    assert ecl(sample(outbound_netgroups=1, outbound_top_netgroup_share=1.0)).severity == Severity.WARNING
    assert ecl(sample(outbound_netgroups=1, outbound_top_netgroup_share=1.0, tip_age_s=3600)).severity \
        == Severity.CRITICAL
    tip = lambda s: next(f for f in d.evaluate(s) if f.detector == "partition")  # noqa: E731
    assert not tip(sample(tip_age_s=60 * 60)).active  # P = 0.0025: nothing
    assert tip(sample(tip_age_s=80 * 60)).severity == Severity.INFO  # P < 1e-3
    assert tip(sample(tip_age_s=140 * 60)).severity == Severity.WARNING  # P < 1e-6
    assert tip(sample(network_active=0)).severity == Severity.CRITICAL


def test_watch_command_alerts_to_a_signed_webhook_and_alerts_show(node, tmp_path, monkeypatch) -> None:
    """`anya-fl watch --once` on an eclipsed node: the alert reaches a loopback webhook once, signed with the
    operator's secret; `anya-fl alerts show` lists it; `anya-fl alerts rules` has a rule per detector."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from typer.testing import CliRunner

    from anya_fl.cli import app
    from core.alerts import verify_signature
    from core.bitcoin.network.detectors import DETECTORS

    got: list[tuple[bytes, str]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((body, self.headers["X-Anya-Signature"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ANYA_FL_RPC_PASSWORD", "p")
    monkeypatch.setenv("ANYA_FL_WEBHOOK_SECRET", "s3cret")
    node.advance(600)
    node.inject_eclipse(node.now())
    args = ["watch", "--once", "--rpc-url", node.url, "--rpc-user", "u", "--state-dir", str(tmp_path / "w"),
            "--webhook-url", f"http://127.0.0.1:{server.server_address[1]}/hook"]
    try:
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        again = CliRunner().invoke(app, args)  # still eclipsed: no second alert
        assert again.exit_code == 0, again.output
    finally:
        server.shutdown()
    assert "outbound_netgroups" in first.output and "WARNING" in first.output
    assert len(got) == 1
    body, signature = got[0]
    assert verify_signature(body, signature, b"s3cret") and not verify_signature(body, signature, b"other")
    assert json.loads(body)["detector"] == "eclipse"
    shown = CliRunner().invoke(app, ["alerts", "show", "--state-dir", str(tmp_path / "w")])
    assert shown.exit_code == 0 and "eclipse" in shown.output
    rules = CliRunner().invoke(app, ["alerts", "rules"])
    assert all(f'detector: "{d}"' in rules.output for d in DETECTORS)
    missing = CliRunner().invoke(app, ["watch", "--once", "--rpc-url", node.url, "--rpc-user", "u",
                                       "--state-dir", str(tmp_path / "x"), "--webhook-url", "http://127.0.0.1:1/"],
                                 env={"ANYA_FL_WEBHOOK_SECRET": ""})
    assert missing.exit_code != 0 and "ANYA_FL_WEBHOOK_SECRET" in str(missing.exception)


def test_simnode_scenario_option() -> None:
    from anya_fl.cli.simnode import _scenarios
    from core.errors import ConfigError

    assert _scenarios(["eclipse@900", "partition@0"]) == [("eclipse", 900.0), ("partition", 0.0)]
    for bad in ("eclipse", "eclipse@-1", "eclipse@soon", "sybil@60", "eclipse@nan"):
        with pytest.raises(ConfigError, match="scenario: .*KIND@SECONDS"):
            _scenarios([bad])


def test_a_watched_payment_double_spent_is_one_critical_alert(node, tmp_path) -> None:
    """`anya-fl watch add TXID`, then the payment is replaced by a conflicting transaction: the watch raises
    one CRITICAL double-spend alert naming the conflict (the node's truth), not one per poll."""
    from typer.testing import CliRunner

    from anya_fl.cli import app
    from core.bitcoin.network.watchlist import WatchList

    node.advance(600)
    rpc = BitcoinRPC(RPCConfig(url=node.url, user="u", password="p", retries=0))
    txid = rpc.call("getrawmempool")[0]
    res = CliRunner().invoke(app, ["watch", "add", txid, "--state-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    watch = _watch(node, tmp_path)
    watch.watchlist = WatchList(tmp_path / "watchlist.json")
    assert not [a for a in _run(node, watch, 2 * STEP_S) if a.detector == "double-spend" and a.severity > Severity.INFO]
    conflict = node.inject_double_spend(txid, node.now() + 1)
    alerts = [a for a in _run(node, watch, 5 * STEP_S) if a.detector == "double-spend" and not a.resolved]
    assert [(a.severity, a.key) for a in alerts] == [(Severity.CRITICAL, f"watch:{txid}")]
    assert conflict in alerts[0].message


def test_watch_readiness_for_the_agent_checker(node, tmp_path) -> None:
    from core.bitcoin.network.watch import watch_readiness

    watch = _watch(node, tmp_path)
    _run(node, watch, 3 * STEP_S)
    assert watch_readiness(watch) == (1.0, "")
    node.inject_eclipse(node.now() + 1)
    _run(node, watch, 2 * STEP_S)
    ready, why = watch_readiness(watch)
    assert ready == 0.5 and why.startswith("eclipse/netgroups")


def test_tuning_advice_is_info() -> None:
    import numpy as np

    from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA, TelemetrySample

    def tuning(**values: float) -> dict[str, tuple[bool, Severity]]:
        v = np.zeros(TELEMETRY_SCHEMA.width, np.float32)
        for k, x in {"network_active": 1, "connections": 10, "mempool_min_fee_sat_vb": 1.0, **values}.items():
            v[TELEMETRY_SCHEMA.names.index(k)] = x
        found = NetworkDetectors().evaluate(TelemetrySample(time=1e9, vector=v))
        return {f.key: (f.active, f.severity) for f in found if f.detector == "tuning"}

    assert tuning() == {"maxmempool": (False, Severity.INFO), "maxconnections": (False, Severity.INFO)}
    assert tuning(mempool_min_fee_sat_vb=2.5)["maxmempool"] == (True, Severity.INFO)
    assert tuning(peers_inbound=115)["maxconnections"] == (True, Severity.INFO)


def test_detector_metrics_on_the_nodes_one_metrics_endpoint(node, tmp_path) -> None:
    """The watch's counters join the node's /metrics registry (one registry, a real HTTP server), and the
    eclipse condition reads 1 there while its alert is out."""
    import httpx

    from core.alerts import AlertCollector
    from core.health.http import BackgroundServer, health_app
    from core.health.node_health import HealthSettings, NodeHealth

    watch = _watch(node, tmp_path)
    _run(node, watch, 2 * STEP_S)
    node.inject_eclipse(node.now() + 1)
    _run(node, watch, 2 * STEP_S)
    health = NodeHealth(HealthSettings(state_dir=tmp_path / "health"))
    server = BackgroundServer(health_app(health, collectors=[AlertCollector(watch.engine)])).start()
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=30).text
    finally:
        server.stop()
        health.close()
    assert 'anya_fl_alert_active{detector="eclipse",key="netgroups"} 1.0' in text
    assert 'anya_fl_alerts_raised_total{detector="eclipse"} 2.0' in text  # concentration and churn
    assert "# TYPE anya_fl_stage gauge" in text  # the health metrics, in the same registry


def test_inv_flood_and_ping_growth_against_the_nodes_own_baseline() -> None:
    """Far above this node's usual level (learned from its own samples) for 10 minutes: a WARNING; the level is
    not dragged up by the flood itself; a restart keeps it."""
    import numpy as np

    from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA, TelemetrySample

    def sample(t: float, **values: float) -> TelemetrySample:
        v = np.zeros(TELEMETRY_SCHEMA.width, np.float32)
        for k, x in {"network_active": 1, "connections": 10, "mempool_min_fee_sat_vb": 1.0, **values}.items():
            v[TELEMETRY_SCHEMA.names.index(k)] = x
        return TelemetrySample(time=t, vector=v)

    def state(d: NetworkDetectors, t: float, **values: float) -> dict[str, Severity | None]:
        found = d.evaluate(sample(t, **values))
        return {f.detector: (f.severity if f.active else None) for f in found if f.detector in ("inv-flood", "ping")}

    d = NetworkDetectors()
    t = 1e9
    for _ in range(120):  # two hours of a normal node: 300 B/s of inv, p90 ping 200 ms
        t += 60
        assert state(d, t, bytes_recv_per_s_inv=300, ping_p90_ms=200) == {"inv-flood": None, "ping": None}
    base = dict(d.baseline)
    seen = []
    for _ in range(12):  # 100 kB/s of inv and 3 s pings
        t += 60
        seen.append(state(d, t, bytes_recv_per_s_inv=100_000, ping_p90_ms=3000))
    assert seen[8] == {"inv-flood": None, "ping": None}  # not yet 10 minutes
    assert seen[-1] == {"inv-flood": Severity.WARNING, "ping": Severity.WARNING}
    assert d.baseline == base  # the flood did not become the norm
    again = NetworkDetectors.from_dict(d.to_dict())
    assert again.baseline == d.baseline and again.since == d.since
    assert NetworkDetectors.from_dict({"addr": 5.0}).since == {"addr": 5.0}  # the first state format
    # busy but under the floors: 10x of a tiny baseline is not a flood
    quiet = NetworkDetectors()
    for i in range(30):
        found = state(quiet, 1e9 + 60 * i, bytes_recv_per_s_inv=10 if i < 5 else 5_000, ping_p90_ms=20 if i < 5 else 500)
    assert found == {"inv-flood": None, "ping": None}


def test_the_watch_learns_slow_arrival_from_what_it_timed_and_remembers_it(node, tmp_path) -> None:
    """Under a degraded relay each block the watch times carries the peer mix of the poll before its announcement
    (read through the RPC: pings growing with the link's saturation); the forecast says it has too few blocks to
    learn from, and a restarted watch keeps what it timed."""
    from core.bitcoin.network.arrival_forecast import FEATURES, MIN_BLOCKS

    start = node.now() + 60
    node.inject_degraded_relay(start, duration_s=3 * 3600)
    watch = _watch(node, tmp_path)
    pings = {}  # poll time -> ping p50 (ms) as the watch's telemetry read it
    for _ in range(int(3 * 3600 // STEP_S)):
        node.advance(STEP_S)
        result = watch.poll_once()
        pings[result.sample.time] = result.sample.value("ping_p50_ms")
    history = watch.propagation.history
    assert len(history) >= 5
    ping = FEATURES.index("ping_p50_ms")
    assert [a.context[ping] for a in history] == [pings[a.announced - STEP_S] for a in history]
    assert history[-1].context[ping] > history[0].context[ping] + 1000  # the link saturated: 2 s more at the end
    assert max(a.delay_s for a in history) > min(a.delay_s for a in history)
    (finding,) = [f for f in result.findings if f.detector == "slow-arrival"]
    assert not finding.active and f"needs {MIN_BLOCKS}" in finding.message
    again = _watch(node, tmp_path)
    assert again.propagation.history == history
