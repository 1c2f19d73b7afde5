"""Per-task aggregation: each task's model is aggregated over the nodes that trained it.

A node without data for a task (fraud without operator labels) sends the global weights back for it, with
``<task>.trained`` = 0 in its metrics. Counted as an update, those weights are a vote for the stale model:
they pull a FedAvg mean toward it and move a median. So the round loop groups the tasks by the set of
nodes that trained them and aggregates each group over those nodes only, with the run's own strategy:

- every node trained every task (the usual round): one call of the strategy, exactly as before;
- FedAdam (a server optimizer with state per parameter): each group is averaged (FedAvg) over its
  trainers, then the optimizer takes one step from the merged average, so its state stays whole;
- central DP (Flower's server-side clipping wrappers): one call over every node, declined tasks
  included as zero updates. The wrappers clip each node's whole update once and add noise for that
  sensitivity; aggregating per group would clip a node once per group and break that bound;
- a group with fewer trainers than the robust rule needs (Krum and Multi-Krum 2f+3, Bulyan 4f+3) keeps
  the global weights for its tasks this round, and the round record says so;
- a task no node trained keeps the global weights.

Screening (:mod:`fl_server.screening`) judges each task over its trainers too, and the metrics are
aggregated over the nodes that trained each task (:func:`fl_server.strategies.aggregate_metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.fedopt import FedOpt

from core.fedconfig import FederationConfig


def task_of(key: str) -> str:
    """The task a packed parameter belongs to (``fraud.net.0.weight`` -> ``fraud``)."""
    return key.split(".", 1)[0]


def trained(metrics: Mapping[str, Any], task: str) -> bool:
    """Whether a node's reply metrics say it trained ``task`` (``<task>.trained`` absent or > 0)."""
    try:
        return float(metrics.get(f"{task}.trained", 1.0)) > 0
    except (TypeError, ValueError):
        return False


def reply_metrics(m: Message) -> Mapping[str, Any]:
    """The metric record of a reply (empty when it has none)."""
    return next(iter(m.content.metric_records.values()), {})


class _TaskUpdate:
    """One node's update restricted to some tasks, as a strategy reads a reply: ``content``, ``metadata``,
    ``has_error()``. Flower's strategies read only these of a reply, and a real :class:`Message` cannot be
    made outside a run's task context (Flower 1.42 needs its TaskIdentity). The arrays are a fresh record:
    FedMedian and FedTrimmedAvg pop arrays out of the replies they aggregate."""

    def __init__(self, m: Message, keys: Sequence[str], metrics: Mapping[str, Any] | None = None) -> None:
        arrays = next(iter(m.content.array_records.values()))
        self.metadata = m.metadata
        self.content = RecordDict({"arrays": ArrayRecord({k: arrays[k] for k in keys}),
                                   "metrics": MetricRecord(dict(metrics if metrics is not None else reply_metrics(m)))})

    def has_error(self) -> bool:
        return False


def min_group(cfg: FederationConfig) -> int:
    """The fewest updates the run's strategy can aggregate robustly."""
    f = cfg.byzantine
    return {"krum": 2 * f + 3, "multikrum": 2 * f + 3, "bulyan": 4 * f + 3}.get(cfg.strategy, 1)


def aggregate_by_task(strategy: Any, rnd: int, replies: list[Message], global_arrays: ArrayRecord,
                      cfg: FederationConfig) -> tuple[ArrayRecord | None, MetricRecord | None, dict[str, str]]:
    """The new global arrays and train metrics of a round, and, per task not aggregated over every kept
    node, how it was aggregated instead (for the round record)."""
    kept = [m for m in replies if not m.has_error()]
    tasks = list(dict.fromkeys(task_of(k) for k in global_arrays.keys()))
    trainers = {t: tuple(i for i, m in enumerate(kept) if trained(reply_metrics(m), t)) for t in tasks}
    everyone = tuple(range(len(kept)))
    if not kept or all(trainers[t] == everyone for t in tasks) or cfg.central_dp:
        arrays, metrics = strategy.aggregate_train(rnd, replies)
        notes = {} if cfg.central_dp == "" else {
            t: f"trained by {len(trainers[t])} of {len(kept)} nodes; central DP aggregates every node's whole "
               "update (the others count as zero updates)" for t in tasks if kept and trainers[t] != everyone}
        return arrays, metrics, notes

    weight_key = getattr(strategy, "weighted_by_key", "num-examples")
    metrics = strategy.train_metrics_aggr_fn([m.content for m in kept], weight_key)
    keys_of = {t: [k for k in global_arrays.keys() if task_of(k) == t] for t in tasks}
    groups: dict[tuple[int, ...], list[str]] = {}
    for t in tasks:
        groups.setdefault(trainers[t], []).append(t)
    merged = {k: global_arrays[k] for k in global_arrays.keys()}
    notes: dict[str, str] = {}
    optimizer = isinstance(strategy, FedOpt)
    for members, group_tasks in groups.items():
        keys = [k for t in group_tasks for k in keys_of[t]]
        if not members:
            notes.update({t: "no node trained it: the global model is kept" for t in group_tasks})
            continue
        if len(members) < min_group(cfg):
            notes.update({t: f"trained by {len(members)} of {len(kept)} nodes, fewer than {cfg.strategy} needs "
                             f"({min_group(cfg)}): the global model is kept this round" for t in group_tasks})
            continue
        views = [_TaskUpdate(kept[i], keys) for i in members]
        if optimizer:  # average now, one optimizer step below
            out, _ = FedAvg.aggregate_train(strategy, rnd, views)  # type: ignore[arg-type]
        else:
            out, _ = strategy.aggregate_train(rnd, views)
        if out is None:
            notes.update({t: "the strategy returned no aggregate: the global model is kept" for t in group_tasks})
            continue
        merged.update({k: out[k] for k in keys})
        if members != everyone:
            notes.update({t: f"aggregated over the {len(members)} of {len(kept)} nodes that trained it"
                          for t in group_tasks})
    if optimizer:
        step, _ = strategy.aggregate_train(rnd, [_TaskUpdate(_Merged(merged), list(merged), {weight_key: 1.0})])
        return step, metrics, notes
    return ArrayRecord(merged), metrics, notes


class _Merged:
    """The merged per-task average, shaped as a reply for :class:`_TaskUpdate` (content and metadata only)."""

    def __init__(self, arrays: Mapping[str, Any]) -> None:
        self.content = RecordDict({"arrays": ArrayRecord(dict(arrays))})
        self.metadata = None
