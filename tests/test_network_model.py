"""The network task: telemetry episodes labelled by the simulated node's truth, and what a node sends.

The must-show comparison (the federated model against local-only ones on scenarios a node never saw) is a
benchmark (``anya-fl bench network``), not a test: it trains a federation of five nodes.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from anya_fl.experiments.network_data import MODEL_KINDS, episode_seed, node_network_data, own_kinds, run_episode
from core.bitcoin.network.telemetry import TELEMETRY_SCHEMA
from core.bitcoin.rpc import BitcoinRPC, RPCConfig
from core.data.datasets import SPLITS, TaskSplits, save_dataset
from core.fedconfig import FederationConfig


def test_episode_labels_follow_the_simulated_nodes_truth_and_repeat_with_the_seed() -> None:
    a = run_episode("eclipse", seed=3, clean_polls=5, attack_polls=6)
    assert a.x.shape == (11, TELEMETRY_SCHEMA.width) and a.x.dtype == np.float32
    assert a.y.tolist() == [0.0] * 5 + [1.0] * 6  # the eclipse starts a second after the fifth poll
    assert TELEMETRY_SCHEMA.check(a.x) == []  # every vector within its valid ranges
    # the eclipse shows in the features the rules read too: one netgroup holds the outbound peers
    share = a.x[:, TELEMETRY_SCHEMA.index("outbound_top_netgroup_share")]
    assert share[5:].min() == 1.0 > share[:5].max()
    b = run_episode("eclipse", seed=3, clean_polls=5, attack_polls=6)
    np.testing.assert_array_equal(a.x, b.x)
    clean = run_episode("clean", seed=3, clean_polls=5)
    assert clean.y.sum() == 0 and len(clean.y) == 5
    with pytest.raises(ValueError, match="kind 'meteor'"):
        run_episode("meteor", seed=3)


def test_every_scenario_is_seen_by_some_node_and_missed_by_others() -> None:
    seen = [set(own_kinds(i, 5)) for i in range(5)]
    assert set().union(*seen) == set(MODEL_KINDS)
    assert all(len(s) == 2 and len(set(MODEL_KINDS) - s) == 3 for s in seen)
    assert episode_seed(0, 1, "train", "eclipse", 2) != episode_seed(0, 2, "train", "eclipse", 2)


def _addresses(url: str) -> set[str]:
    rpc = BitcoinRPC(RPCConfig(url=url, user="sim", password="sim", retries=0, timeout_s=30))
    return {p["addr"] for p in rpc.call("getpeerinfo")}


def _needles(addr: str) -> list[bytes]:
    """What would betray ``addr`` in a serialized message: its text, its host, and its packed bytes."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    out = [addr.encode(), host.encode()]
    try:
        ip = ipaddress.ip_address(host)
        out.append(ip.packed)
        out.append(str(ip.exploded).encode())
    except ValueError:  # onion, i2p: their names are the text
        pass
    return out


@pytest.mark.slow
def test_no_peer_address_leaves_the_node_in_any_reply(tmp_path) -> None:
    """A node's train and evaluate replies (its whole outgoing traffic in a round, serialized as Flower sends
    it) hold none of the peer addresses its Bitcoin Core reported while the telemetry was taken."""
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.app import app
    from models.params import pack
    from models.tasks import build_model

    seen: set[str] = set()
    # clean episodes and an inbound flood (its hundreds of attacker peers, onion and IPv6 among them): 7 episodes
    # instead of node 0's own 10 (its two kinds); every address any poll saw is looked for in the replies
    splits = node_network_data(0, 5, seed=11, kinds=("inbound_flood",), on_poll=lambda url: seen.update(_addresses(url)))
    assert len(seen) > 20 and any(a.endswith(".onion:8333") for a in seen) and any(a.startswith("[") for a in seen)
    save_dataset(tmp_path / "node-0", {"network": splits})
    cfg = FederationConfig(rounds=1, local_epochs=1, tasks="network", run_name="leak", data_dir=str(tmp_path))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1
    ctx = Context(run_id=1, node_id=5, node_config={"data-dir": str(tmp_path / "node-0")}, state=RecordDict(),
                  run_config=cfg.to_run_config())
    replies = []
    for kind in ("train", "evaluate"):
        msg = Message(RecordDict({"arrays": ArrayRecord(pack({"network": build_model("network", 0)})),
                                  "config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type=kind)
        reply = app(msg, ctx)
        assert not reply.has_error(), reply.error.reason
        replies.append(message_to_proto(reply).SerializeToString())
    assert replies[0] and b"network.epsilon" in replies[0]  # the inspection reads the real payload
    for wire in replies:
        for addr in seen:
            for needle in _needles(addr):
                assert needle not in wire, f"{addr} ({needle!r}) in a reply"


def test_a_node_with_only_clean_minutes_is_told_apart_from_one_with_attacks() -> None:
    """Splits keep every episode's rows together, and each split of a node holds both classes."""
    data = node_network_data(1, 5, seed=2, kinds=("partition",))
    assert isinstance(data, TaskSplits)
    for s in SPLITS:
        y = data.y[s]
        assert 0 < y.sum() < len(y), s


@pytest.mark.slow
def test_the_served_network_model_joins_the_watch_detectors(tmp_path) -> None:
    """A network model trained on watched episodes, signed into a registry, scores a live node's telemetry:
    quiet while the node is clean, a `network-model` WARNING after two polls of an eclipse."""
    from typer.testing import CliRunner

    from anya_fl.cli import app as cli
    from anya_fl.cli.watch import build_watch, network_model
    from anya_fl.experiments.network_data import sample_network_splits
    from core.bitcoin.rpc import RPCConfig
    from core.errors import ConfigError
    from core.security.signing import generate_signing_key, load_private_key
    from core.serving.registry import ModelRegistry
    from models.export import export_onnx
    from models.tasks import build_model, task_spec
    from models.training import TrainConfig, train
    from tests.simnode_fixtures import make_node

    data = sample_network_splits(3)
    model = build_model("network", 0)
    spec = task_spec("network")
    train(model, spec.loss, data.x["train"], data.y["train"], TrainConfig(epochs=30, batch_size=64, lr=spec.lr))
    generate_signing_key(tmp_path / "k.key", tmp_path / "k.pub")
    reg = ModelRegistry(tmp_path / "registry", signing_key=load_private_key(tmp_path / "k.key"))
    reg.promote(reg.publish("network", export_onnx("network", model, {"version": 1}), run="t", round=1,
                            metrics={}).ref, "production")
    with pytest.raises(ConfigError, match="trust: missing"):
        network_model(tmp_path / "registry", None)
    with pytest.raises(ConfigError, match="not a registry directory"):
        network_model(tmp_path, [tmp_path / "k.pub"])
    generate_signing_key(tmp_path / "other.key", tmp_path / "other.pub")
    refused = CliRunner().invoke(cli, ["watch", "--once", "--rpc-url", "http://127.0.0.1:1", "--rpc-user", "u",
                                       "--registry", str(tmp_path / "registry"), "--trust", str(tmp_path / "other.pub")],
                                 env={"ANYA_FL_RPC_PASSWORD": "p"})
    assert refused.exit_code != 0 and "signed by unknown key" in str(refused.exception)  # another key's model

    node = make_node().start()
    try:
        watch, _ = build_watch(RPCConfig(url=node.url, user="alice", password="s3cret", retries=0), tmp_path / "w",
                               model=network_model(tmp_path / "registry", [tmp_path / "k.pub"]))
        scored = []
        for i in range(8):
            if i == 4:
                node.inject_eclipse(node.now() + 1.0)
            node.advance(60.0)
            res = watch.poll_once()
            scored += [f for f in res.findings if f.detector == "network-model"]
    finally:
        node.stop()
    assert len(scored) == 7  # every poll with rates (not the first)
    assert [f.active for f in scored] == [False, False, False, False, True, True, True]
    assert all(f.value < 0.5 for f in scored[:3]) and all(f.value >= 0.5 for f in scored[3:])
    assert scored[-1].severity.name == "WARNING" and "for 4 polls in a row" in scored[-1].message


def test_a_deployments_coordinator_holds_out_network_episodes_once(tmp_path) -> None:
    """`coordinator run --tasks ...,network` adds the network task to the coordinator's held-out set, val and test
    from different chains, every scenario in each, and leaves it as it is on the next run."""
    from anya_fl.deployment import prepare_coordinator_data
    from core.bitcoin.features import TASKS
    from core.data.datasets import load_dataset

    target = prepare_coordinator_data(tmp_path, 60_000, 2)
    assert "network" not in load_dataset(target)[0]  # the chain tasks only by default
    episodes = []
    prepare_coordinator_data(tmp_path, 60_000, 2, TASKS, on_episode=lambda: episodes.append(1))
    data = load_dataset(target)[0]
    assert set(data) == set(TASKS) and len(episodes) == 2 * (1 + len(MODEL_KINDS))
    net = data["network"]
    assert not np.array_equal(net.x["val"], net.x["test"]) and np.array_equal(net.x["train"], net.x["val"])
    for s in SPLITS:
        assert 0 < net.y[s].sum() < len(net.y[s]) and net.x[s].shape[1] == TELEMETRY_SCHEMA.width
    written = (target / "manifest.json").stat().st_mtime_ns
    prepare_coordinator_data(tmp_path, 60_000, 2, TASKS)
    assert (target / "manifest.json").stat().st_mtime_ns == written
