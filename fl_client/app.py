"""Flower ClientApp: local DP training and evaluation of the three tasks on the node's own data.

One train message carries all three models in one ArrayRecord (task-prefixed keys), so a round costs
one message per node. Each node spends its DP budget in equal shares per round; the accountant states
live in a file in the node's data directory, so epsilon keeps accumulating across rounds, restarts
and resumed runs. A node whose budget is spent declines with an error reply that says why.

Before training, the node consults its AgentChecker (:class:`core.node_health.NodeHealth`: dataset,
resources and, with ``bitcoin-rpc-*`` in the node config, Bitcoin Core's sync, connections, mempool and
fee view); below the run's ``min-stage`` it declines and names the failing components. Every reply
carries the node's stage, readiness and resource figures (``health.*`` metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from core.errors import AnyaError
from core.fedconfig import DECLINE_ERROR_CODE, FederationConfig
from core.node_health import HealthSettings, NodeHealth
from fl_client.node_data import load_node_data, node_data_dir
from fl_client.privacy_ledger import AccountantLedger, check_lifetime_budget

app = ClientApp()


def _node_seed(cfg: FederationConfig, data_dir: Path, server_round: int) -> int:
    """Seed of a node's training in a round: from the run seed, the node's dataset name and the round
    (not the full path, so the same seed gives the same models wherever the run directory is)."""
    return (cfg.seed * 1_000_003 + zlib.crc32(data_dir.name.encode()) + server_round * 7919) % (2**31)


def _declines_with_reason(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A user-facing error (bad config, missing data, spent budget) becomes an error reply saying why."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except AnyaError as exc:
            return Message(Error(code=DECLINE_ERROR_CODE, reason=str(exc)), reply_to=msg)

    return wrapped


def _torch_threads(context: Context) -> None:
    """One intra-op thread unless the node config says otherwise (``torch-threads``).

    The models are small MLPs: on a busy node (several SuperNodes, or a node that also serves), torch's
    default of one thread per core spins against the other processes; measured on 2 loaded cores, one
    training step took 126 ms with 2 threads and 0.9 ms with 1.
    """
    import torch

    torch.set_num_threads(max(1, int(context.node_config.get("torch-threads", 1))))


def node_health(context: Context, cfg: FederationConfig, data_dir: Path) -> NodeHealth:
    """The node's health (state under ``<data-dir>/health``), refreshed by the caller."""
    return NodeHealth(HealthSettings.from_node_config(context.node_config, data_dir, cfg.min_stage))


def _run_settings(context: Context) -> tuple[FederationConfig, Path]:
    """The run's settings and this node's dataset directory."""
    cfg = FederationConfig.from_run_config(context.run_config).validate()
    return cfg, node_data_dir(context.node_config, cfg.data_dir)


def _setup(msg: Message, cfg: FederationConfig, data_dir: Path) -> tuple[dict, dict]:
    """The node's data and the global models from the message."""
    from models.params import unpack_into
    from models.tasks import build_model

    data = load_node_data(data_dir)
    models = {t: build_model(t, seed=cfg.seed) for t in cfg.task_list}
    unpack_into(models, msg.content["arrays"].to_torch_state_dict())
    return data, models


@app.train()
@_declines_with_reason
def train(msg: Message, context: Context) -> Message:
    """Train every task for ``local-epochs`` with DP; reply with the new weights and the metrics."""
    from fl_client import attacks
    from models.params import pack, unpack_into
    from models.tasks import build_model, targets, task_spec
    from models.training import BudgetExhausted, DPConfig, TrainConfig, epsilon_spent
    from models.training import train as train_model

    cfg, data_dir = _run_settings(context)
    _torch_threads(context)
    health = node_health(context, cfg, data_dir)
    allowed, why = health.gate()
    if not allowed:
        return Message(Error(code=DECLINE_ERROR_CODE, reason=f"node health: {why}"), reply_to=msg)
    data, models = _setup(msg, cfg, data_dir)
    server_round = int(msg.content["config"]["server-round"])
    t_start = time.perf_counter()
    seed = _node_seed(cfg, data_dir, server_round)
    ledger = AccountantLedger(data_dir, cfg.run_name)

    metrics: dict[str, float] = {"num-examples": float(data["fraud"].size("train") if "fraud" in data else 0),
                                 "partition-id": float(context.node_config.get("partition-id", -1))}
    share = cfg.epsilon / cfg.rounds
    spent = {t: epsilon_spent(ledger.get(t), cfg.delta) for t in cfg.task_list} if cfg.dp else {}
    planned = {t: min(cfg.epsilon, s + share) for t, s in spent.items()}
    if cfg.dp:
        budget = float(context.node_config.get("lifetime-epsilon", cfg.lifetime_epsilon))
        check_lifetime_budget(ledger, planned, budget, lambda state: epsilon_spent(state, cfg.delta))
    malicious = attacks.is_malicious(context.node_config, cfg.attack, cfg.malicious, cfg.nodes, cfg.seed)
    global_w = pack(models)
    shard_updates: list[dict] = [{} for _ in range(attacks.ALIE_SHARDS)]
    for task in cfg.task_list:
        spec = task_spec(task)
        split = data[task]
        x, y = split.x["train"], targets(task, split, "train")
        if malicious and cfg.attack == "label-flip":
            y = attacks.poison_labels(task, y, seed)
        dp = None
        if cfg.dp:
            if spent[task] >= 0.995 * cfg.epsilon:
                raise BudgetExhausted(cfg.epsilon, spent[task], f"task {task}: the node's budget for this run is spent")
            dp = DPConfig(target_epsilon=planned[task], delta=cfg.delta, max_grad_norm=cfg.max_grad_norm,
                          accountant=cfg.accountant)
        tc = TrainConfig(
            epochs=cfg.local_epochs, batch_size=spec.batch_size, lr=spec.lr, seed=seed, device="auto", dp=dp,
            proximal_mu=cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0,
        )
        t0 = time.perf_counter()
        result = train_model(models[task], spec.loss, x, y, tc, accountant_state=ledger.get(task))
        ledger.record(task, result.accountant_state)
        metrics[f"{task}.loss"] = float(result.train_loss)
        metrics[f"{task}.epsilon"] = float(result.epsilon or 0.0)
        metrics[f"{task}.seconds"] = time.perf_counter() - t0
        metrics[f"{task}.rows"] = float(len(x))
        if malicious and cfg.attack == "alie" and len(x) >= attacks.ALIE_SHARDS:
            def train_shard(index, task=task, spec=spec, x=x, y=y, tc=tc):
                m = build_model(task, seed=cfg.seed)
                unpack_into({task: m}, {k: v for k, v in global_w.items() if k.startswith(f"{task}.")})
                train_model(m, spec.loss, x[index], y[index], dataclasses.replace(tc, dp=None))
                return pack({task: m})

            task_w = {k: v for k, v in global_w.items() if k.startswith(f"{task}.")}
            for i, upd in enumerate(attacks.alie_shard_updates(train_shard, len(x), task_w, seed)):
                shard_updates[i].update(upd)
    if malicious and cfg.attack in ("sign-flip", "scaling", "gaussian", "alie"):
        z = attacks.alie_z(cfg.nodes, len(attacks.malicious_partitions(cfg.nodes, cfg.malicious, cfg.seed)))
        poisoned = attacks.poison_update(cfg.attack, global_w, pack(models), seed=seed,
                                         shard_updates=[u for u in shard_updates if u], z=z)
        unpack_into(models, poisoned)
    ledger.save()
    # fraud and anomaly both learn from the node's transactions: their budgets add up (basic composition)
    metrics["epsilon-transactions"] = metrics.get("fraud.epsilon", 0.0) + metrics.get("anomaly.epsilon", 0.0)
    metrics["delta"] = cfg.delta if cfg.dp else 0.0
    health.monitor.record("train", time.perf_counter() - t_start, items=int(metrics["num-examples"]))
    metrics.update(health.reply_metrics())
    content = RecordDict({"arrays": ArrayRecord(pack(models)), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=msg)


@app.evaluate()
@_declines_with_reason
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global models on the node's local test split (losses and the fee hit rate)."""
    import torch

    from models.tasks import infer, targets, task_spec

    _torch_threads(context)
    cfg, data_dir = _run_settings(context)
    data, models = _setup(msg, cfg, data_dir)
    health = node_health(context, cfg, data_dir)
    health.refresh()
    metrics: dict[str, float] = {"num-examples": float(data["fraud"].size("test") if "fraud" in data else 0),
                                 **health.reply_metrics()}
    for task, model in models.items():
        split = data[task]
        x, y = split.x["test"], targets(task, split, "test")
        with torch.no_grad():
            model.eval()
            out = model(torch.from_numpy(x))
            loss = float(task_spec(task).loss(out, torch.from_numpy(y))) if len(x) else 0.0
        metrics[f"{task}.loss"] = loss
        if task == "fee":
            pred = infer(model, x)
            metrics["fee.hit-rate-uncalibrated"] = float((pred >= split.y["test"]).mean()) if len(x) else 0.0
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
