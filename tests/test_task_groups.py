"""Per-task aggregation: a node that did not train a task (it sent the global weights back) is no vote for it."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from core.fedconfig import FederationConfig
from fl_server.screening import ScreeningConfig, ScreeningState, screen
from fl_server.strategies import build_strategy
from fl_server.task_groups import aggregate_by_task

NODES = 5


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1  # what Flower's runtime sets


def _reply(node: int, arrays: dict[str, np.ndarray], metrics: dict[str, float]) -> Message:
    req = Message(RecordDict({}), dst_node_id=node, message_type="train")
    req.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=req)


@pytest.fixture()
def global_w() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"fraud.w": rng.normal(size=(6, 3)).astype(np.float32), "fee.w": rng.normal(size=(4, 2)).astype(np.float32)}


def _round(global_w: dict[str, np.ndarray], decliners: set[int], seed: int = 1):
    """Replies of NODES nodes; those in ``decliners`` did not train fraud and send its global weights back."""
    rng = np.random.default_rng(seed)
    replies, updates = [], []
    for i in range(NODES):
        new = {k: (v + 0.05 + 0.02 * rng.normal(size=v.shape)).astype(np.float32) for k, v in global_w.items()}
        declined = i in decliners
        if declined:
            new["fraud.w"] = global_w["fraud.w"].copy()
        metrics = {"num-examples": 100.0 + 10 * i, "fraud.trained": 0.0 if declined else 1.0, "fee.trained": 1.0,
                   "fraud.rows": 0.0 if declined else 50.0, "fee.rows": 70.0}
        replies.append(_reply(100 + i, new, metrics))
        updates.append(new)
    return replies, updates


def _aggregate(cfg: FederationConfig, global_w, replies):
    strategy = build_strategy(cfg)
    arrays = ArrayRecord({k: Array(v) for k, v in global_w.items()})
    if cfg.strategy == "fedadam":
        list(strategy.configure_train(1, arrays, ConfigRecord({}), _Grid()))  # FedAdam keeps the arrays it sent
    out, metrics, notes = aggregate_by_task(strategy, 1, replies, arrays, cfg)
    return {k: v.numpy() for k, v in out.items()} if out is not None else None, metrics, notes


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [100 + i for i in range(NODES)]


@pytest.mark.parametrize("strategy", ["fedavg", "median", "trimmed-mean"])
def test_a_task_is_aggregated_over_the_nodes_that_trained_it(global_w, strategy) -> None:
    cfg = FederationConfig(nodes=NODES, min_nodes=2, strategy=strategy).validate()
    replies, updates = _round(global_w, decliners={3, 4})
    out, metrics, notes = _aggregate(cfg, global_w, replies)
    trainers = [0, 1, 2]
    weights = np.array([100.0 + 10 * i for i in trainers])
    fraud = np.stack([updates[i]["fraud.w"] for i in trainers])
    fee = np.stack([u["fee.w"] for u in updates])
    if strategy == "fedavg":
        want_fraud = np.tensordot(weights / weights.sum(), fraud, axes=1)
        all_w = np.array([100.0 + 10 * i for i in range(NODES)])
        want_fee = np.tensordot(all_w / all_w.sum(), fee, axes=1)
    elif strategy == "median":
        want_fraud, want_fee = np.median(fraud, axis=0), np.median(fee, axis=0)
    else:  # trimmed mean, beta 0.2: nothing trimmed of 3 (their mean); one of 5 cut at each end
        want_fraud = fraud.mean(axis=0)
        want_fee = np.sort(fee, axis=0)[1:-1].mean(axis=0)
    np.testing.assert_allclose(out["fraud.w"], want_fraud, rtol=1e-5, atol=1e-6)
    if want_fee is not None:
        np.testing.assert_allclose(out["fee.w"], want_fee, rtol=1e-5, atol=1e-6)
    # the stale weights were no vote: the fraud model moved as far as its trainers moved it
    assert np.abs(out["fraud.w"] - global_w["fraud.w"]).mean() > 0.04
    assert notes == {"fraud": "aggregated over the 3 of 5 nodes that trained it"}
    assert metrics["fraud.rows"] == pytest.approx(50.0) and metrics["fee.rows"] == pytest.approx(70.0)


def test_every_node_trained_everything_is_one_strategy_call(global_w) -> None:
    cfg = FederationConfig(nodes=NODES, min_nodes=2, strategy="median").validate()
    replies, updates = _round(global_w, decliners=set())
    out, _, notes = _aggregate(cfg, global_w, replies)
    assert notes == {}
    for k in global_w:
        np.testing.assert_allclose(out[k], np.median(np.stack([u[k] for u in updates]), axis=0), rtol=1e-6)


def test_krum_keeps_the_global_model_when_too_few_trained(global_w) -> None:
    cfg = FederationConfig(nodes=NODES, min_nodes=2, strategy="krum", byzantine=1).validate()
    replies, updates = _round(global_w, decliners={3, 4})
    out, _, notes = _aggregate(cfg, global_w, replies)
    np.testing.assert_array_equal(out["fraud.w"], global_w["fraud.w"])
    assert "fewer than krum needs (5)" in notes["fraud"]
    assert any(np.allclose(out["fee.w"], u["fee.w"]) for u in updates)  # Krum picked one node's fee update


def test_fedadam_steps_once_from_the_per_task_average(global_w) -> None:
    cfg = FederationConfig(nodes=NODES, min_nodes=2, strategy="fedadam", server_lr=0.1).validate()
    replies, updates = _round(global_w, decliners={4})
    out, _, notes = _aggregate(cfg, global_w, replies)
    # first Adam step: m = (1 - b1) * delta, v = (1 - b2) * delta^2 -> every coordinate moves in delta's sign
    w = np.array([100.0 + 10 * i for i in range(4)])
    delta = np.tensordot(w / w.sum(), np.stack([updates[i]["fraud.w"] for i in range(4)]), axes=1) - global_w["fraud.w"]
    moved = out["fraud.w"] - global_w["fraud.w"]
    assert np.all(np.sign(moved) == np.sign(delta))
    assert set(out) == set(global_w) and "fraud" in notes


def test_no_trainer_keeps_the_global_model(global_w) -> None:
    cfg = FederationConfig(nodes=NODES, min_nodes=2, strategy="fedavg").validate()
    replies, _ = _round(global_w, decliners=set(range(NODES)))
    out, metrics, notes = _aggregate(cfg, global_w, replies)
    np.testing.assert_array_equal(out["fraud.w"], global_w["fraud.w"])
    assert notes["fraud"].startswith("no node trained it") and "fraud.rows" not in metrics


def test_screening_judges_a_task_over_its_trainers(global_w) -> None:
    """Two decliners' zero updates would make the median fraud update zero (nothing to judge against),
    and a trainer that flips the fraud update would pass; judged over the trainers, it is flagged."""
    replies, updates = _round(global_w, decliners={3, 4})
    flipped = {**updates[2], "fraud.w": 2 * global_w["fraud.w"] - updates[2]["fraud.w"]}
    metrics = dict(next(iter(replies[2].content.metric_records.values())))
    replies[2] = _reply(102, flipped, metrics)
    kept, events = screen(replies, global_w, ScreeningConfig(), ScreeningState())
    flagged = [e for e in events if e.kind == "flagged"]
    assert [e.node for e in flagged] == ["102"] and "fraud: cosine" in flagged[0].reason
    assert len(kept) == NODES - 1  # the decliners are kept: their fee updates count
