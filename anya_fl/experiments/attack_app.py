"""The attack ClientApp: the honest ClientApp, with a seeded share of the nodes poisoning what they send.

Simulations with ``--attack`` run this app instead of the deployed one (:func:`anya_fl.experiments.clientapp_ref`),
and so does the robustness table (through :class:`anya_fl.experiments.local_grid.LocalGrid`). An honest
node here answers exactly as ``fl_client.app`` does; a malicious one (:func:`poisoning.is_malicious`)
runs the same training (:func:`fl_client.app.train_reply`) with hooks from :mod:`poisoning`: flipped labels
(``label-flip``), or a replaced update (``sign-flip``, ``scaling``, ``gaussian``, ``alie``). Evaluation is
the honest one for every node.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from anya_fl.experiments import poisoning
from core.fedconfig import FederationConfig
from fl_client.app import LocalUpdate, declines_with_reason, evaluate_reply, train_reply

app = ClientApp()

UPDATE_ATTACKS = ("sign-flip", "scaling", "gaussian", "alie")  # those that replace the trained weights


@app.train()
@declines_with_reason
def train(msg: Message, context: Context) -> Message:
    """Honest training, poisoned on the nodes that attack in this run."""
    cfg = FederationConfig.from_run_config(context.run_config).validate()
    if not poisoning.is_malicious(context.node_config, cfg.attack, cfg.malicious, cfg.nodes, cfg.seed):
        return train_reply(msg, context)
    if cfg.attack == "label-flip":
        return train_reply(msg, context, label_transform=poisoning.poison_labels)
    if cfg.attack in UPDATE_ATTACKS:
        attackers = len(poisoning.malicious_partitions(cfg.nodes, cfg.malicious, cfg.seed))
        z = poisoning.alie_z(cfg.nodes, attackers)
        return train_reply(msg, context, update_transform=lambda update: poisoned_update(cfg.attack, update, z))
    return train_reply(msg, context)  # FederationConfig.validate admits only the attacks above


@app.evaluate()
@declines_with_reason
def evaluate(msg: Message, context: Context) -> Message:
    """The honest evaluation (attackers poison what they train, not what they report)."""
    return evaluate_reply(msg, context)


def poisoned_update(attack: str, update: LocalUpdate, z: float) -> dict[str, torch.Tensor]:
    """The weights a malicious node sends instead of its trained ones.

    For ``alie``, per task with at least ALIE_SHARDS training rows, the node trains ALIE_SHARDS extra
    models on disjoint shards of its rows to estimate the spread of honest updates.
    """
    shard_updates: list[dict[str, torch.Tensor]] = [{} for _ in range(poisoning.ALIE_SHARDS)]
    if attack == "alie":
        for task, rows in update.rows.items():
            if rows < poisoning.ALIE_SHARDS:
                continue
            task_w = _task_weights(update.global_weights, task)
            shards = poisoning.alie_shard_updates(lambda index, task=task: update.retrain(task, index), rows, task_w,
                                                  update.seed)
            for i, upd in enumerate(shards):
                shard_updates[i].update(upd)
    return poisoning.poison_update(attack, update.global_weights, update.weights, seed=update.seed,
                                   shard_updates=[u for u in shard_updates if u], z=z)


def _task_weights(weights: Mapping[str, torch.Tensor], task: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if k.startswith(f"{task}.")}
