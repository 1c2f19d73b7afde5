"""Training on collected data: two simulated Core nodes -> two collectors -> a federation (in process, the
real ClientApp and round loop) whose nodes train only on their collector stores. The node without operator
labels trains fee and anomaly and says why it left fraud; the report shows which node trained what."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anya_fl.experiments.local_grid import LocalGrid
from anya_fl.simnode import SimNode, SimNodeConfig
from anya_fl.simulation_report import node_epsilon_rows
from core.bitcoin.rpc import BitcoinRPC, RPCConfig
from core.collector.follower import Collector, CollectorSettings
from core.collector.labels import read_operator_labels
from core.collector.store import CollectorStore
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import save_dataset, task_arrays
from core.errors import DatasetError
from core.fedconfig import FederationConfig
from core.health.node_health import HealthSettings, NodeHealth
from fl_client.app import app as client_app
from fl_client.node_data import load_node_data
from fl_server.app import run_federation
from fl_server.round_record import history_to_dicts

pytestmark = pytest.mark.slow

NODES = [dict(seed=3, profile="exchange"), dict(seed=4, profile="merchant")]
COMMON = dict(transactions=3_000, speed=0.0, rpcuser="u", rpcpassword="p", start_block=2, block_weight_limit=400_000)
SETTINGS = CollectorSettings(block_max_weight=400_000, fetch_workers=2)


def _collect(node: SimNode, data_dir: Path, labels: Path | None, steps: int = 50, step_s: float = 150.0) -> None:
    store = CollectorStore.open(data_dir)
    if labels is not None:
        read = read_operator_labels(labels)
        store.import_operator_labels(read.labels, str(labels), read.skipped)
    collector = Collector(BitcoinRPC(RPCConfig(url=node.url, user="u", password="p", retries=0, timeout_s=10)),
                          store, SETTINGS)
    try:
        for _ in range(steps + 1):
            assert collector.poll_once().state == "ok"
            node.advance(step_s)
    finally:
        collector.close()
        store.close()


def test_nodes_train_only_on_collected_data(tmp_path) -> None:
    root = tmp_path / "data"
    for i, spec in enumerate(NODES):
        node = SimNode(SimNodeConfig(**COMMON, **spec)).start(port=0)
        try:
            labels = None
            if i == 0:  # only the first operator has case records
                labels = tmp_path / "labels.csv"
                assert node.write_labels(labels, share=0.8, seed=1) > 0
            _collect(node, root / f"node-{i}", labels)
        finally:
            node.stop()
    # the coordinator evaluates on its own held-out set (a simulated chain)
    save_dataset(root / "coordinator", task_arrays(simulate_chain(ChainConfig(n_transactions=20_000, seed=2))),
                 {"role": "coordinator"})

    labeled, unlabeled = load_node_data(root / "node-0"), load_node_data(root / "node-1")
    assert labeled.source == unlabeled.source == "collector"
    assert set(labeled.splits) == {"fraud", "fee", "anomaly"}
    assert set(unlabeled.splits) == {"fee", "anomaly"} and "operator labels" in unlabeled.unavailable["fraud"]
    with pytest.raises(DatasetError, match="fraud: this node has no fraud data .*operator labels"):
        unlabeled["fraud"]
    # health: a collector node without labels is ready (it trains the other tasks), and says why
    health = NodeHealth(HealthSettings.from_node_config({}, root / "node-1", "production"))
    health.refresh()
    data = next(c for c in health.checker.report()["components"] if c["name"] == "data")
    assert data["readiness"] == 1.0 and "no operator labels" in data["reason"]
    health.close()

    cfg = FederationConfig(nodes=2, rounds=2, local_epochs=1, min_nodes=2, dp=True, epsilon=8.0,
                           run_dir=str(tmp_path / "run"), data_dir=str(root), export_models=False,
                           min_stage="unavailable", screening=False).validate()
    history = run_federation(LocalGrid(client_app, cfg.nodes, cfg.to_run_config()), cfg)
    assert len(history) == 2
    last = history[-1]
    assert len(last.replied) == 2 and not last.failed
    by_partition = {int(m["partition-id"]): (node, m) for node, m in last.replied.items()}
    node0, m0 = by_partition[0]
    node1, m1 = by_partition[1]
    assert m0["fraud.trained"] == m0["fee.trained"] == m0["anomaly.trained"] == 1.0
    assert m1["fraud.trained"] == 0.0 and m1["fee.trained"] == m1["anomaly.trained"] == 1.0
    assert m1["fee.rows"] == unlabeled["fee"].size("train") and m0["fraud.rows"] == labeled["fraud"].size("train")
    assert "fraud" in last.tasks_declined[node1] and node0 not in last.tasks_declined
    assert 0 < m1["fee.epsilon"] <= 8.0 and m1["fraud.epsilon"] == 0.0
    assert last.train["fraud.rows"] == m0["fraud.rows"]  # aggregated over the node that trained fraud only
    for task in ("fraud", "fee", "anomaly"):
        assert all(np.isfinite(v) for v in last.global_metrics[task].values())
    cols, rows = node_epsilon_rows({"config": cfg.to_run_config(), "history": history_to_dicts(history)})
    trained = dict(zip([r[0] for r in rows], [r[cols.index("tasks trained")] for r in rows], strict=True))
    assert sorted(trained.values()) == ["all", "fee, anomaly (fraud: no operator labels (anya-fl collect --labels FILE))"]
