"""Flower ClientApp: local DP training and evaluation of the run's tasks on the node's own data.

One train message carries all three models in one ArrayRecord (task-prefixed keys), so a round costs
one message per node. Each node spends its DP budget in equal shares per round; the accountant states
live in a file in the node's data directory, so epsilon keeps accumulating across rounds, restarts
and resumed runs. A node whose budget is spent declines with an error reply that says why.

Before training, the node consults its AgentChecker (:class:`core.health.node_health.NodeHealth`: dataset,
resources and, with ``bitcoin-rpc-*`` in the node config, Bitcoin Core's sync, connections, mempool and
fee view); below the run's ``min-stage`` it declines and names the failing components. Every reply
carries the node's stage, readiness and resource figures (``health.*`` metrics).

This is the ClientApp nodes deploy (``[tool.flwr.app.components]``): it trains honestly or not at all. The
settings of attack simulation (``attack`` or ``malicious`` in the run config, a ``malicious`` key in the
node config) are refused with an error reply naming the setting. :func:`train_reply` and
:func:`evaluate_reply` do the work; experiments that change what a node trains on or sends (the attack
ClientApp of ``anya_fl.experiments``) call them with hooks, from outside this package.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from core.errors import AnyaError, ConfigError
from core.fedconfig import DECLINE_ERROR_CODE, FederationConfig
from core.health.node_health import HealthSettings, NodeHealth
from fl_client.node_data import NodeData, load_node_data, node_data_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

app = ClientApp()

# Settings only simulations honour (anya_fl.experiments); the deployed ClientApp refuses them.
SIMULATION_ONLY_RUN_CONFIG = ("attack", "malicious")
SIMULATION_ONLY_NODE_CONFIG = ("malicious",)
_NOT_DEPLOYED = "attack simulation is not part of the deployed ClientApp"

# (task, training targets, the node's seed this round) -> the targets to train on
LabelTransform = Callable[[str, "np.ndarray", int], "np.ndarray"]


@dataclasses.dataclass(frozen=True)
class LocalUpdate:
    """What a node's training produced in one round, handed to an ``update_transform`` before the reply.

    ``retrain(task, rows)`` trains a fresh copy of that task's global model on the given rows of the
    node's training data (the same targets and recipe, without DP) and returns its packed weights.
    """

    global_weights: Mapping[str, torch.Tensor]  # the round's global models, packed ("fraud.body.0.weight", ...)
    weights: Mapping[str, torch.Tensor]  # the node's trained models, packed the same way
    seed: int  # the node's training seed this round
    rows: Mapping[str, int]  # training rows per task
    retrain: Callable[[str, np.ndarray], dict[str, torch.Tensor]]


# a LocalUpdate -> the weights to reply with (same keys, shapes and dtypes)
UpdateTransform = Callable[[LocalUpdate], Mapping[str, "torch.Tensor"]]


def _node_seed(cfg: FederationConfig, data_dir: Path, server_round: int) -> int:
    """Seed of a node's training in a round: from the run seed, the node's dataset name and the round
    (not the full path, so the same seed gives the same models wherever the run directory is)."""
    return (cfg.seed * 1_000_003 + zlib.crc32(data_dir.name.encode()) + server_round * 7919) % (2**31)


def declines_with_reason(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A user-facing error (bad config, missing data, spent budget) becomes an error reply saying why."""

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except AnyaError as exc:
            return Message(Error(code=DECLINE_ERROR_CODE, reason=str(exc)), reply_to=msg)

    return wrapped


def refuse_simulation_settings(context: Context) -> None:
    """Raise ConfigError, naming the setting, when the run or node config asks for attack simulation."""
    for key in SIMULATION_ONLY_NODE_CONFIG:
        if key in context.node_config:
            raise ConfigError(key, f"{_NOT_DEPLOYED}; remove {key!r} from this node's node config")
    for key in SIMULATION_ONLY_RUN_CONFIG:
        value: Any = context.run_config.get(key)
        if value:  # the run config's defaults are "" and 0.0
            raise ConfigError(key, f"{_NOT_DEPLOYED}; this run sets {key} = {value!r} (only `anya-fl simulate "
                                   "--attack` and `anya-fl bench robustness` simulate attacks)")


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


def _setup(msg: Message, cfg: FederationConfig, data_dir: Path) -> tuple[NodeData, dict]:
    """The node's data and the global models from the message."""
    from models.params import unpack_into
    from models.tasks import build_model

    data = load_node_data(data_dir)
    models = {t: build_model(t, seed=cfg.seed) for t in cfg.task_list}
    unpack_into(models, msg.content["arrays"].to_torch_state_dict())
    return data, models


@app.train()
@declines_with_reason
def train(msg: Message, context: Context) -> Message:
    """Train every task for ``local-epochs`` with DP; reply with the new weights and the metrics."""
    refuse_simulation_settings(context)
    return train_reply(msg, context)


def train_reply(msg: Message, context: Context, *, label_transform: LabelTransform | None = None,
                update_transform: UpdateTransform | None = None) -> Message:
    """The node's reply to a train message: its models trained on its data, and the metrics.

    ``label_transform`` replaces each task's training targets before training; ``update_transform``
    replaces the trained weights before the reply (see :class:`LocalUpdate`). The deployed ClientApp
    passes neither.
    """
    from models.params import pack, unpack_into
    from models.privacy.accounting import epsilon_spent
    from models.privacy.budget import BudgetExhausted, round_targets, run_budget_spent
    from models.privacy.ledger import AccountantLedger, check_lifetime_budget
    from models.tasks import build_model, targets, task_spec
    from models.training import DPConfig, TrainConfig
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

    metrics: dict[str, float] = {"num-examples": float(_examples(data, cfg, "train")),
                                 "partition-id": float(context.node_config.get("partition-id", -1))}
    declined: dict[str, str] = {}
    spent = {t: epsilon_spent(ledger.get(t), cfg.delta) for t in cfg.task_list} if cfg.dp else {}
    planned = round_targets(spent, cfg.epsilon, cfg.rounds)
    if cfg.dp:
        budget = float(context.node_config.get("lifetime-epsilon", cfg.lifetime_epsilon))
        check_lifetime_budget(ledger, planned, budget, lambda state: epsilon_spent(state, cfg.delta))
    global_w = pack(models)
    trained_on: dict[str, tuple] = {}  # task -> (x, y, TrainConfig): what LocalUpdate.retrain reuses
    for task in cfg.task_list:
        if task not in data:  # e.g. fraud on a collector node without operator labels: the global model goes back
            declined[task] = data.unavailable.get(task, "no data for this task")
            # every reply carries the same metric keys (Flower aggregates only those); aggregate_metrics
            # leaves a task's figures of the nodes that did not train it out (``<task>.trained`` = 0)
            metrics.update({f"{task}.trained": 0.0, f"{task}.rows": 0.0, f"{task}.loss": 0.0, f"{task}.epsilon": 0.0,
                            f"{task}.seconds": 0.0})
            continue
        spec = task_spec(task)
        split = data[task]
        x, y = split.x["train"], targets(task, split, "train")
        if label_transform is not None:
            y = label_transform(task, y, seed)
        dp = None
        if cfg.dp:
            if run_budget_spent(spent[task], cfg.epsilon):
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
        trained_on[task] = (x, y, tc)
        metrics[f"{task}.loss"] = float(result.train_loss)
        metrics[f"{task}.epsilon"] = float(result.epsilon or 0.0)
        metrics[f"{task}.seconds"] = time.perf_counter() - t0
        metrics[f"{task}.rows"] = float(len(x))
        metrics[f"{task}.trained"] = 1.0
    if update_transform is not None:
        def retrain(task: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
            x, y, tc = trained_on[task]
            model = build_model(task, seed=cfg.seed)
            unpack_into({task: model}, {k: v for k, v in global_w.items() if k.startswith(f"{task}.")})
            train_model(model, task_spec(task).loss, x[rows], y[rows], dataclasses.replace(tc, dp=None))
            return pack({task: model})

        update = LocalUpdate(global_weights=global_w, weights=pack(models), seed=seed,
                             rows={t: len(x) for t, (x, _, _) in trained_on.items()}, retrain=retrain)
        unpack_into(models, dict(update_transform(update)))
    ledger.save()
    # fraud and anomaly both learn from the node's transactions: their budgets add up (basic composition)
    metrics["epsilon-transactions"] = metrics.get("fraud.epsilon", 0.0) + metrics.get("anomaly.epsilon", 0.0)
    metrics["delta"] = cfg.delta if cfg.dp else 0.0
    health.monitor.record("train", time.perf_counter() - t_start, items=int(metrics["num-examples"]))
    metrics.update(health.reply_metrics())
    content = RecordDict({"arrays": ArrayRecord(pack(models)), "metrics": MetricRecord(metrics)})
    if declined:
        content["declined-tasks"] = ConfigRecord(declined)  # the reasons, for the coordinator's report
    return Message(content, reply_to=msg)


def _examples(data: NodeData, cfg: FederationConfig, split: str) -> int:
    """Rows a reply stands for (the strategies' weight): the node's transactions (fraud's, else anomaly's
    rows, which are the same transactions), else its fee snapshots, else its telemetry vectors, else its channel rows."""
    for task in ("fraud", "anomaly", "fee", "network", "liquidity"):
        if task in cfg.task_list and task in data:
            return data[task].size(split)
    return 0


@app.evaluate()
@declines_with_reason
def evaluate(msg: Message, context: Context) -> Message:
    """Score the global models on the node's local test split (losses and the fee hit rate)."""
    refuse_simulation_settings(context)
    return evaluate_reply(msg, context)


def evaluate_reply(msg: Message, context: Context) -> Message:
    """The node's reply to an evaluate message: the global models' metrics on its local test split."""
    import torch

    from models.tasks import infer, targets, task_spec

    _torch_threads(context)
    cfg, data_dir = _run_settings(context)
    data, models = _setup(msg, cfg, data_dir)
    health = node_health(context, cfg, data_dir)
    health.refresh()
    metrics: dict[str, float] = {"num-examples": float(_examples(data, cfg, "test")), **health.reply_metrics()}
    for task, model in models.items():
        metrics[f"{task}.trained"] = float(task in data)  # same keys in every reply (see train_reply)
        if task not in data:
            metrics[f"{task}.loss"] = 0.0
            if task == "fee":
                metrics["fee.hit-rate-uncalibrated"] = 0.0
            continue
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
