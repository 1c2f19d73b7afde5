"""Node health end to end: the HTTP endpoint on a real server, the ClientApp's gate, bench figures."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from bitcoind_stub import FakeBitcoind
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from core.bitcoin.rpc import RPCConfig
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import partition_nodes, save_dataset, task_arrays
from core.fedconfig import DECLINE_ERROR_CODE, FederationConfig
from core.health.agent_checker import SystemStage
from core.health.http import BackgroundServer, health_app
from core.health.node_health import HealthSettings, NodeHealth


def _get(client: httpx.Client, path: str) -> httpx.Response:
    return client.get(path, timeout=30)


def test_readyz_flips_to_503_when_a_component_fails_and_back(tmp_path) -> None:
    node = FakeBitcoind().start()
    health = NodeHealth(HealthSettings(rpc=RPCConfig(url=node.url, user="alice", password="secret", retries=0,
                                                     timeout_s=2.0), state_dir=tmp_path / "health"))
    server = BackgroundServer(health_app(health, refresh=health.refresh)).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert _get(client, "/healthz").json() == {"status": "alive"}
            ok = _get(client, "/readyz")
            assert ok.status_code == 200 and ok.json()["stage"] == "Release"

            node.state = "ibd"
            r = _get(client, "/readyz")
            assert r.status_code == 503
            failing = {f["component"]: f["reason"] for f in r.json()["failing"]}
            assert list(failing) == ["bitcoin.sync"] and "initial block download" in failing["bitcoin.sync"]
            node.state = "synced"
            assert _get(client, "/readyz").status_code == 200

            port = node.port
            node.stop()  # Bitcoin Core goes down
            r = _get(client, "/readyz")
            assert r.status_code == 503 and r.json()["stage"] == "Unavailable"
            assert all("connection refused" in f["reason"] for f in r.json()["failing"])
            assert _get(client, "/healthz").status_code == 200  # alive, just not ready
            node.start(port)  # and comes back
            back = _get(client, "/readyz")
            assert back.status_code == 200, back.json()

            text = _get(client, "/metrics").text
            assert "anya_fl_stage 2.0" in text  # Production: the outage still weighs on the recent-error share
            assert 'anya_fl_component_readiness{component="bitcoin.sync"} 0.95' in text  # one failed input of ~20
            assert 'anya_fl_component_errors_total{component="bitcoin.connection"} 1.0' in text
            assert 'anya_fl_operation_total{operation="probe.bitcoin"}' in text
            assert 'anya_fl_resource{name="rss_mb"}' in text
    finally:
        server.stop()
        node.stop()
    assert (tmp_path / "health" / "agent-checker.json").is_file()  # stage changes were snapshotted


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory) -> Path:
    chain = simulate_chain(ChainConfig(n_transactions=20_000, seed=3))
    shard = partition_nodes(chain, 2, 3)[0]
    d = tmp_path_factory.mktemp("node") / "node-0"
    save_dataset(d, task_arrays(chain, shard.tx_index, shard.snapshot_index), {"node_id": 0})
    return d


def _train_message(cfg: FederationConfig) -> Message:
    from models.params import pack
    from models.tasks import build_model

    models = {t: build_model(t, seed=cfg.seed) for t in cfg.task_list}
    content = RecordDict({"arrays": ArrayRecord(pack(models)), "config": ConfigRecord({"server-round": 1})})
    return Message(content, dst_node_id=1, message_type="train")


def test_odd_replies_and_failing_probe_rounds_never_leave_a_stale_verdict(tmp_path) -> None:
    """A NaN in a reply is a malformed reply; a probe round that raises marks the node not ready and the loop goes on."""
    import threading

    from core.bitcoin.probes import NodeProbes
    from core.bitcoin.rpc import BitcoinRPC
    from core.health.http import Periodic, probe_loop

    node = FakeBitcoind().start()
    try:
        node.state = "nan"
        sync = {r.component: r for r in NodeProbes(BitcoinRPC(RPCConfig(
            url=node.url, user="alice", password="secret", retries=0))).probe_all()}["bitcoin.sync"]
        assert sync.error and sync.readiness == 0.0 and "NaN is not JSON" in sync.reason
        health = NodeHealth(HealthSettings(rpc=RPCConfig(url=node.url, user="alice", password="secret", retries=0),
                                           state_dir=tmp_path / "health"))
        node.state = "synced"
        assert health.refresh().stage == SystemStage.RELEASE
        calls: list[int] = []
        done = threading.Event()

        def refresh_then_fail() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug in a probe")
            done.set()

        loop = probe_loop(health, interval_s=0.01)
        loop.fn = refresh_then_fail
        loop.start()
        assert done.wait(30), "the probe loop stopped after a failing round"
        loop.stop()
        assert loop.failures == 1 and len(calls) >= 2
        a = health.checker.evaluate()
        assert a.stage == SystemStage.UNAVAILABLE
        assert "the last probe round failed (RuntimeError: a bug in a probe)" in health.checker.allows(
            SystemStage.PRODUCTION)[1]
        assert isinstance(loop, Periodic)
    finally:
        node.stop()


def test_client_declines_below_min_stage_and_replies_carry_health(node_dir) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.app import app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what Flower's runtime sets

    cfg = FederationConfig(rounds=2, local_epochs=1, tasks="fraud", run_name="gate")
    with FakeBitcoind() as node:
        node_config = {"data-dir": str(node_dir), "bitcoin-rpc-url": node.url, "bitcoin-rpc-user": "alice",
                       "bitcoin-rpc-password": "secret"}
        node.state = "ibd"
        ctx = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=cfg.to_run_config())
        reply = app(_train_message(cfg), ctx)
        assert reply.has_error() and reply.error.code == DECLINE_ERROR_CODE
        assert reply.error.reason.startswith("node health: stage Development") and "below Production" in reply.error.reason
        assert "bitcoin.sync 0 % (initial block download" in reply.error.reason
        assert not (node_dir / "privacy" / "gate.json").exists()  # declined before spending any budget

        node.state = "synced"
        reply = app(_train_message(cfg), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        m = reply.content["metrics"]
        assert m["health.stage"] == float(SystemStage.RELEASE) and m["health.readiness"] == pytest.approx(1.0)
        assert m["health.rss-mb"] > 0 and np.isfinite(m["health.memory-available-mb"])
        # an operator can lower the bar for a node still syncing: min-stage is a run setting
        node.state = "ibd"
        low = FederationConfig(rounds=2, local_epochs=1, tasks="fraud", run_name="gate", min_stage="unavailable")
        ctx_low = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                          run_config=low.to_run_config())
        assert not app(_train_message(low), ctx_low).has_error()


def test_bench_writes_health_figures_as_json(tmp_path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "anya_fl.cli", "bench", "agent_checker.threads8",
                           "performance_monitor.record.p50_us", "--json", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    res = json.loads(out.read_text())
    assert res["agent_checker.threads8.lost_inputs"]["value"] == 0.0
    p50 = res["performance_monitor.record.p50_us"]
    assert p50["unit"] == "us" and p50["reference"] == 1000.0 and p50["value"] > 0


def test_check_writes_its_report_as_json_to_a_path(tmp_path) -> None:
    """`--json PATH` means the same in every command that writes JSON (`check`, `bench`)."""
    import json

    from typer.testing import CliRunner

    from anya_fl.cli import app

    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["check", "--json", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["min_stage"] == "Production"
    assert {c["name"] for c in doc["components"]} >= {"resources"}
    res = CliRunner().invoke(app, ["check", "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.output)["passed"] is True
