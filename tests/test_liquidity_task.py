"""The liquidity task: a node's rows from its own Lightning store (read through the real adapter), a simulation's
datasets, the coordinator's questions from networks no node is in, and what a node sends in a liquidity round.

The must-show comparison (the federated model against the uniform and bimodal priors and local-only models, by
log-loss, calibration and payment success) is a benchmark (``anya-fl bench liquidity``), not a test.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_to_proto

from anya_fl.simln.cln_server import CLNServer
from anya_fl.simln.liquidity_data import (
    VAL_SEED_OFFSET,
    LiquiditySim,
    add_liquidity_data,
    held_out_liquidity_rows,
    tip,
)
from anya_fl.simln.network import SimLN, SimLNConfig
from core.bitcoin.features import CHAIN_TASKS
from core.data.datasets import SPLITS, TaskSplits, load_dataset, save_dataset
from core.errors import DatasetError
from core.fedconfig import FederationConfig
from core.lightning.cln import CLNClient, CLNConfig
from core.lightning.liquidity import LIQUIDITY_SCHEMA, labelled_rows
from core.lightning.liquidity_splits import (
    MIN_SNAPSHOTS,
    SNAPSHOT_EVERY_S,
    liquidity_splits,
    node_lightning_path,
    thinned,
)
from core.lightning.store import LightningStore
from fl_client.node_data import load_node_data

SNAPSHOTS = MIN_SNAPSHOTS + 4


def _busiest_cln_router(net: SimLN) -> int:
    return max((i for i in range(net.config.nodes) if net.implementation[i] == "cln"), key=lambda i: len(net.by_node[i]))


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> dict:
    """A simulated router's node, read through the real Core Lightning adapter into ``<data-dir>/lightning``
    every minute for ``SNAPSHOTS`` quarter hours; what it saw (channel ids, peers, balances) is kept to look for."""
    data_dir = tmp_path_factory.mktemp("ln-node")
    net = SimLN(SimLNConfig(seed=5, nodes=12))
    net.advance(2 * 3600)
    router = _busiest_cln_router(net)
    seen: dict[str, set] = {"ids": set(), "peers": set(), "points": set(), "balances": set()}
    recorded: list[tuple[float, int, list]] = []
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        sock = Path(d) / "rpc"
        with CLNServer(net.router(router), sock), LightningStore(node_lightning_path(data_dir)) as store:
            client = CLNClient(CLNConfig(socket_path=sock))
            for _ in range(SNAPSHOTS * 3):  # a poll every 5 minutes: the store keeps them all, training thins them
                net.advance(300)
                channels, height = client.channels(), client.info().block_height
                store.record(net.epoch + net.now, channels, [], block_height=height)
                recorded.append((net.epoch + net.now, height, channels))
                for c in channels:
                    seen["ids"].add(c.channel_id)
                    seen["peers"].add(c.peer)
                    seen["points"].add(c.channel_point)
                    seen["balances"] |= {c.local_msat, c.remote_msat}
    return {"dir": data_dir, "net": net, "router": router, "seen": seen, "recorded": recorded}


def test_a_nodes_rows_are_its_thinned_snapshots_labelled_by_its_own_balances(collected) -> None:
    splits, why = liquidity_splits(node_lightning_path(collected["dir"]))
    assert why == "" and isinstance(splits, TaskSplits)
    kept = [collected["recorded"][i] for i in thinned([r[0] for r in collected["recorded"]])]
    assert len(kept) == SNAPSHOTS and all(b[0] - a[0] >= SNAPSHOT_EVERY_S for a, b in zip(kept, kept[1:], strict=False))
    want_x, want_y = [], []
    for t, height, channels in kept:  # the same labelling code, over what the adapter read
        x, y = labelled_rows(sorted(channels, key=lambda c: c.channel_id), height,
                             np.random.default_rng([int(t), int(height)]))
        want_x += x
        want_y += y
    got_x = np.concatenate([splits.x[s] for s in SPLITS])
    got_y = np.concatenate([splits.y[s] for s in SPLITS])
    assert np.array_equal(got_x, np.stack(want_x)) and np.array_equal(got_y, np.asarray(want_y, dtype=np.float32))
    assert all(len(splits.y[s]) > 0 for s in SPLITS) and 0 < got_y.mean() < 1
    assert got_x.shape[1] == LIQUIDITY_SCHEMA.width


def test_a_lightning_only_node_trains_liquidity_and_says_why_not_the_rest(collected) -> None:
    data = load_node_data(collected["dir"])
    assert "liquidity" in data and data.source == "collector"
    assert set(data.unavailable) == {*CHAIN_TASKS, "network"}
    assert "no collector store" in data.unavailable["fraud"]
    with pytest.raises(DatasetError, match="fee: this node has no fee data"):
        data["fee"]


def test_a_short_history_is_declined_with_the_reason(tmp_path) -> None:
    assert "no Lightning channel history" in liquidity_splits(tmp_path / "missing.sqlite")[1]
    net = SimLN(SimLNConfig(seed=2, nodes=8))
    with LightningStore(tmp_path / "lightning.sqlite") as store:
        for _ in range(MIN_SNAPSHOTS - 1):
            net.advance(SNAPSHOT_EVERY_S)
            store.record(net.epoch + net.now, net.router(0).channels(), [], block_height=tip(net))
    splits, why = liquidity_splits(tmp_path / "lightning.sqlite")
    assert splits is None and f"{MIN_SNAPSHOTS - 1} snapshot(s)" in why and f"{MIN_SNAPSHOTS} needed" in why


def test_a_simulations_nodes_are_routers_and_the_coordinator_asks_about_other_networks(tmp_path) -> None:
    sim = LiquiditySim(seed=4, nodes=3, hours=4.0)
    for i in range(sim.nodes):
        save_dataset(tmp_path / f"node-{i}", {})
    save_dataset(tmp_path / "coordinator", {})
    add_liquidity_data(tmp_path, sim)
    sizes = []
    for i in range(sim.nodes):
        data, manifest = load_dataset(tmp_path / f"node-{i}")
        liq = data["liquidity"]
        sizes.append(sum(liq.size(s) for s in SPLITS))
        assert manifest["info"]["liquidity_router"] == i and all(liq.size(s) > 0 for s in SPLITS)
    net = SimLN(sim.config())
    # rows per snapshot: each own channel, both directions, four amounts
    assert sizes == [len(net.by_node[i]) * 2 * 4 * int(sim.hours * 3600 // sim.every_s) for i in range(sim.nodes)]
    held = load_dataset(tmp_path / "coordinator")[0]["liquidity"]
    val = held_out_liquidity_rows(sim, VAL_SEED_OFFSET)
    assert np.array_equal(held.x["val"], val.arrays()[0]) and not np.array_equal(held.x["val"][:50],
                                                                                  held.x["test"][:50])
    capacities = {c.capacity_sat for c in net.channels}  # another network: other capacities
    test_caps = {round(10 ** v) for v in held.x["test"][:, LIQUIDITY_SCHEMA.index("log_capacity_sat")]}
    assert len(test_caps & capacities) <= len(test_caps) // 10
    again = tmp_path / "again"
    for i in range(sim.nodes):
        save_dataset(again / f"node-{i}", {})
    save_dataset(again / "coordinator", {})
    add_liquidity_data(again, sim)
    a, b = load_dataset(tmp_path / "node-1")[0]["liquidity"], load_dataset(again / "node-1")[0]["liquidity"]
    assert all(np.array_equal(a.x[s], b.x[s]) and np.array_equal(a.y[s], b.y[s]) for s in SPLITS)


def _needles(seen: dict[str, set]) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for cid in seen["ids"]:
        block, tx, vout = (int(p) for p in cid.split("x"))
        out += [(cid, cid.encode()), (cid, str(block << 40 | tx << 16 | vout).encode())]  # as LND's numeric id too
    for peer in seen["peers"]:
        out += [(peer, peer.encode()), (peer, bytes.fromhex(peer))]
    for point in seen["points"]:
        txid = point.split(":")[0]
        out += [(point, txid.encode()), (point, bytes.fromhex(txid)), (point, bytes.fromhex(txid)[::-1])]
    for msat in seen["balances"]:
        if msat >= 1_000_000:  # small round numbers (0, a few sat) are any message's bytes
            out += [(f"{msat} msat", str(msat).encode()), (f"{msat} msat", str(msat // 1000).encode()),
                    (f"{msat} msat", struct.pack("<q", msat)), (f"{msat} msat", struct.pack("<d", float(msat))),
                    (f"{msat} msat", struct.pack("<d", msat / 1000.0))]
    return out


def test_no_channel_id_peer_key_or_balance_leaves_the_node_in_a_liquidity_round(collected, tmp_path) -> None:
    """A node's train and evaluate replies in a liquidity round (its whole outgoing traffic, serialized as Flower
    sends it) hold none of its channels' ids, funding outpoints, peers' keys or balances, in text or binary."""
    from flwr.supercore.task_identity import TaskIdentity

    from fl_client.app import app
    from models.params import pack
    from models.tasks import build_model

    seen = collected["seen"]
    assert len(seen["ids"]) >= 3 and len(seen["peers"]) >= 3 and len(seen["balances"]) >= 6
    cfg = FederationConfig(rounds=1, local_epochs=1, tasks="liquidity", run_name="leak", data_dir=str(tmp_path))
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 5, 1
    ctx = Context(run_id=1, node_id=5, node_config={"data-dir": str(collected["dir"])}, state=RecordDict(),
                  run_config=cfg.to_run_config())
    replies = []
    for kind in ("train", "evaluate"):
        msg = Message(RecordDict({"arrays": ArrayRecord(pack({"liquidity": build_model("liquidity", 0)})),
                                  "config": ConfigRecord({"server-round": 1})}), dst_node_id=5, message_type=kind)
        reply = app(msg, ctx)
        assert not reply.has_error(), reply.error.reason
        replies.append(message_to_proto(reply).SerializeToString())
    assert b"liquidity.epsilon" in replies[0] and b"liquidity" in replies[1]  # the inspection reads the real payload
    needles = _needles(seen)
    assert len(needles) > 30
    for wire in replies:
        for what, needle in needles:
            assert needle not in wire, f"{what} ({needle!r}) in a reply"


def test_the_untrained_liquidity_model_is_lnds_bimodal_estimator_and_exports_so() -> None:
    """The model starts as the bimodal prior (its correction's last layer is zero), in torch and in ONNX."""
    from anya_fl.simln.estimators import bimodal_prior
    from anya_fl.simln.liquidity_data import LiquidityRows, held_out_rows
    from core.serving.inference.engine import InferenceEngine
    from models.export import export_onnx
    from models.tasks import build_model, infer

    net = SimLN(SimLNConfig(seed=6, nodes=10))
    net.advance(3600)
    rows = LiquidityRows()
    held_out_rows(net, np.random.default_rng(3), 300, rows)
    x, _ = rows.arrays()
    want = np.array([bimodal_prior(h, a) for h, a in rows.hops])
    model = build_model("liquidity", seed=1)
    assert np.abs(infer(model, x) - want).max() < 1e-4
    engine = InferenceEngine()
    engine.load("liquidity", export_onnx("liquidity", model, {"version": 1}))
    assert np.abs(engine.predict_batch("liquidity", x) - want).max() < 1e-4
    assert want.min() < 0.5 < want.max()  # amounts across the range, not only near-certain ones
