"""The watch's telemetry history and the operator's incidents: the network task's rows on a real node."""

from __future__ import annotations

import numpy as np
import pytest
from simnode_fixtures import make_node, started_nodes

from anya_fl.simnode import GENESIS_EPOCH
from core.bitcoin.network.telemetry_schema import TELEMETRY_SCHEMA
from core.bitcoin.network.telemetry_store import TelemetryStore, network_splits, telemetry_store_path
from core.errors import ConfigError, DatasetError

W = TELEMETRY_SCHEMA.width


@pytest.fixture
def nodes():
    yield from started_nodes(make_node)


def test_rows_round_trip_in_time_order_and_old_rows_go(tmp_path) -> None:
    path = telemetry_store_path(tmp_path)
    with TelemetryStore(path) as st:
        for t in (300.0, 100.0, 200.0):
            st.append(t, np.full(W, t, np.float32))
        st.append(200.0, np.full(W, 7.0, np.float32))  # the same minute again replaces it
        t, x = st.rows()
        assert t.tolist() == [100.0, 200.0, 300.0] and x[:, 0].tolist() == [100.0, 7.0, 300.0]
        st.append(100.0 + 91 * 86400, np.zeros(W, np.float32))  # 90 days kept: the first three go
        assert st.rows()[0].tolist() == [100.0 + 91 * 86400]
        with pytest.raises(ValueError, match="shape"):
            st.append(1.0, np.zeros(W - 1))
    (tmp_path / "other.sqlite").write_bytes(b"not a database at all, just text" * 10)
    with pytest.raises(DatasetError, match="not a readable SQLite database"):
        TelemetryStore(tmp_path / "other.sqlite")
    with pytest.raises(DatasetError, match="the watch writes it"):
        TelemetryStore(tmp_path / "missing.sqlite", readonly=True)


def test_incidents_are_checked_field_by_field(tmp_path) -> None:
    with TelemetryStore(telemetry_store_path(tmp_path)) as st:
        for kw, field in ((dict(start=float("nan")), "start"), (dict(end=-1.0), "end"), (dict(end=50.0), "end"),
                          (dict(kind=""), "kind"), (dict(kind="x" * 65), "kind"), (dict(kind="a\x1b[31m"), "kind"),
                          (dict(note="\n"), "note"), (dict(start=True), "start")):
            args = dict(start=100.0, end=200.0, kind="eclipse") | kw
            with pytest.raises(ConfigError) as err:
                st.add_incident(**args)
            assert err.value.setting == field, (kw, err.value)
        first = st.add_incident(100.0, 200.0, "eclipse", "all outbound in one /16")
        assert st.incidents() == [{"id": first, "start": 100.0, "end": 200.0, "kind": "eclipse",
                                   "note": "all outbound in one /16"}]
        assert st.remove_incident(first) and not st.remove_incident(first) and st.incidents() == []


def test_network_splits_say_why_a_node_cannot_train_yet(tmp_path) -> None:
    path = telemetry_store_path(tmp_path)
    assert "no telemetry recorded yet" in network_splits(path)[1]
    with TelemetryStore(path) as st:
        for i in range(100):
            st.append(60.0 * i, np.full(W, i, np.float32))
        assert "no incident marked by the operator" in network_splits(path)[1]
        st.add_incident(60.0 * 90, 60.0 * 95, "partition")  # only in the test window
        assert "holds no marked incident" in network_splits(path)[1]
        st.add_incident(60.0 * 10, 60.0 * 20, "eclipse")
    splits, why = network_splits(path)
    assert why == "" and splits is not None
    assert [len(splits.y[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    assert np.flatnonzero(splits.y["train"]).tolist() == list(range(10, 20))  # [start, end): minute 20 is not
    assert np.flatnonzero(splits.y["test"]).tolist() == list(range(10, 15))  # rows 90..94
    assert splits.x["val"][0, 0] == 60.0  # by time: validation follows training


def test_a_watched_node_trains_the_network_task_on_its_own_telemetry(nodes, tmp_path, monkeypatch) -> None:
    """`anya-fl node`'s watch records every complete sample; the operator marks the eclipse with `anya-fl watch
    incident add`; the node's data then has the network task, and the ClientApp trains it."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from typer.testing import CliRunner

    from anya_fl.cli import app as cli
    from anya_fl.cli.watch import build_watch
    from core.bitcoin.network.telemetry_store import WATCH_DIR
    from core.bitcoin.rpc import RPCConfig
    from core.collector.store import CollectorStore
    from core.fedconfig import FederationConfig
    from fl_client.app import app
    from fl_client.node_data import load_node_data
    from models.params import pack
    from models.tasks import build_model

    node = nodes()
    data_dir = tmp_path / "data"
    state = data_dir / WATCH_DIR
    watch, _ = build_watch(RPCConfig(url=node.url, user="alice", password="s3cret", retries=0), state)
    for i in range(41):
        if i == 21:
            start = GENESIS_EPOCH + node.now() + 1.0
            node.inject_eclipse(node.now() + 1.0)
        node.advance(60.0)
        watch.poll_once()
    end = GENESIS_EPOCH + node.now() + 1.0
    assert len(TelemetryStore(telemetry_store_path(state), readonly=True).rows()[0]) == 40  # not the first poll
    runner = CliRunner()
    bad = runner.invoke(cli, ["watch", "incident", "add", "--state-dir", str(state), "--start", "yesterday",
                              "--end", str(end), "--kind", "eclipse"])
    assert bad.exit_code != 0 and bad.exception.setting == "start"
    naive = runner.invoke(cli, ["watch", "incident", "add", "--state-dir", str(state), "--start",
                                "2026-12-03T08:00:00", "--end", str(end), "--kind", "eclipse"])
    assert naive.exit_code != 0 and "no UTC offset" in str(naive.exception)
    added = runner.invoke(cli, ["watch", "incident", "add", "--state-dir", str(state), "--start", str(start),
                                "--end", str(end), "--kind", "eclipse"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(cli, ["watch", "incident", "list", "--state-dir", str(state)])
    assert listed.exit_code == 0 and "│ eclipse │   20 │" in listed.output, listed.output  # 20 minutes labelled

    CollectorStore.open(data_dir).close()  # the collector's store (empty here): `anya-fl node --rpc-url` has one
    data = load_node_data(data_dir)
    assert "network" in data and {"fraud", "fee", "anomaly"} <= set(data.unavailable)
    net = data["network"]
    assert net.y["train"].sum() == 4 and len(net.y["train"]) == 24 and net.y["test"].sum() == 8
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1
    cfg = FederationConfig(rounds=1, local_epochs=1, tasks="network", run_name="own", min_stage="development")
    ctx = Context(run_id=1, node_id=5, node_config={"data-dir": str(data_dir)}, state=RecordDict(),
                  run_config=cfg.to_run_config())
    msg = Message(RecordDict({"arrays": ArrayRecord(pack({"network": build_model("network", 0)})),
                              "config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type="train")
    reply = app(msg, ctx)
    assert not reply.has_error(), reply.error.reason
    m = reply.content["metrics"]
    assert m["network.trained"] == 1.0 and m["network.rows"] == 24.0 and 0 < m["network.epsilon"] <= 8.0
