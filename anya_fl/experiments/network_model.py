"""The federated network-attack model against each node's local-only one, on scenarios a node never saw.

A real federation (``anya-fl simulate --tasks network``: Flower, DP-SGD, the run's robust strategy, signed
ONNX in the run's registry) trains the ``network`` task on nodes that each saw two of the five scenarios in
their own telemetry (``network_data.own_kinds``). Each node also trains a local-only model on the same rows
with the same budget (epochs = rounds x local epochs, the same DP epsilon). Both are scored, per node, on
held-out episodes (chains no node trained on) of the scenarios that node never saw, plus a clean episode:

* ``unseen_recall``: attack minutes flagged (attack probability >= 0.5, the classifier's own boundary: a
  threshold tuned on the node's validation split would be tuned to the scenarios it saw; the federated model
  is the one served from the run's registry through the inference engine);
* ``unseen_episodes``: unseen scenarios with at least one flagged attack minute;
* ``false_alarm_rate``: clean minutes flagged (the clean episode and the minutes before each attack);
* ``pr_auc`` on those rows (threshold-free).

``by_kind``: the federated model at probability 0.5 on each scenario's held-out episode (attack minutes
flagged, minutes to the first flag), for the table beside the rule detectors. ``clean_week``: the served model
inside the watch (as `anya-fl watch --registry`) over the benchmark's clean simulated week: alerts above INFO
(every detector's, the model's included) and the model's highest score.

Keys (``anya-fl bench network``): ``network.model.<federated|local>.<metric>``, means over nodes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.experiments.local_only import local_only_model
from anya_fl.experiments.network_bench import run_clean_week
from anya_fl.experiments.network_data import MODEL_KINDS, POLL_S, held_out_network_data, own_kinds
from core import scoring
from core.data.datasets import load_dataset
from core.fedconfig import FederationConfig

ROUNDS = 5
NODES = 5
THRESHOLD = 0.5


def _node_scores(score: Callable[[np.ndarray], np.ndarray], threshold: float, held_out: dict[str, Any],
                 unseen: list[str]) -> dict[str, float]:
    episodes = [held_out["clean"], *(held_out[k] for k in unseen)]
    per_episode = [score(e.x) for e in episodes]
    caught = [bool((s[e.y == 1] >= threshold).any()) for s, e in zip(per_episode[1:], episodes[1:], strict=True)]
    s, y = np.concatenate(per_episode), np.concatenate([e.y for e in episodes])
    flagged = s >= threshold
    return {"unseen_recall": float(flagged[y == 1].mean()), "false_alarm_rate": float(flagged[y == 0].mean()),
            "unseen_episodes": float(np.mean(caught)), "pr_auc": scoring.pr_auc(y, s)}


def _kind_scores(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """The federated model at probability 0.5 on one held-out episode: attack minutes flagged, minutes from
    the start to the first flag (polls are a simulated minute apart), clean minutes flagged before it."""
    flagged = p >= THRESHOLD
    attack = np.flatnonzero(y == 1)
    hits = attack[flagged[attack]]
    return {"recall": float(flagged[attack].mean()) if len(attack) else None,
            "minutes_to_detect": float(hits[0] - attack[0] + 1) * POLL_S / 60 if len(hits) else None,
            "false_alarm_rate": float(flagged[y == 0].mean()) if (y == 0).any() else None}


def run_network_model(seed: int = 0, nodes: int = NODES, rounds: int = ROUNDS, dp: bool = True,
                      strategy: str | None = None, work: Path | None = None,
                      on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the federation and the local-only baselines; per-node and mean scores on unseen scenarios."""
    from anya_fl.simulation import check_finished, prepare_run, run_flower
    from core.security.signing import load_public_key
    from core.serving.inference.engine import InferenceEngine
    from core.serving.registry import ModelRegistry
    step = on_step or (lambda _msg: None)
    cfg = FederationConfig(nodes=nodes, min_nodes=nodes, rounds=rounds, tasks="network", seed=seed, dp=dp)
    if strategy:
        cfg = replace(cfg, strategy=strategy)
    cfg = cfg.validate()
    with tempfile.TemporaryDirectory(prefix="anya-fl-network-model-") as tmp:
        run_dir = (work or Path(tmp)) / "run"
        step("watching simulated nodes under attack (each node's telemetry)")
        cfg = prepare_run(cfg, run_dir)
        privacy = f"DP eps {cfg.epsilon:g}" if dp else "no DP"
        step(f"federating the network task ({nodes} nodes, {rounds} rounds, {cfg.strategy}, {privacy})")
        metrics = check_finished(run_dir, run_flower(run_dir))
        engine = InferenceEngine()
        registry = ModelRegistry(run_dir / "registry", trusted_keys=[load_public_key(run_dir / "keys" /
                                                                                     "model-signing.pub")])
        engine.load_from_registry(registry, "network@production")
        federated = lambda x: engine.predict_batch("network", x)  # noqa: E731 - the served model
        step("held-out episodes and local-only models")
        held_out = held_out_network_data(seed + 7)  # chains no node and not the coordinator saw
        per_node: list[dict[str, Any]] = []
        for i in range(nodes):
            own = own_kinds(i, nodes)
            data = load_dataset(run_dir / "data" / f"node-{i}")[0]["network"]
            local = local_only_model("network", data, cfg, seed=seed + 1 + i)
            unseen = [k for k in MODEL_KINDS if k not in own]
            row: dict[str, Any] = {"node": i, "own": list(own), "unseen": unseen}
            for name, score in (("federated", federated), ("local", local)):
                row[name] = _node_scores(score, THRESHOLD, held_out, unseen)
            per_node.append(row)
        by_kind = {k: _kind_scores(federated(held_out[k].x), held_out[k].y) for k in (*MODEL_KINDS, "clean")}
        step("a clean simulated week with the federated model in the watch")
        week = run_clean_week(seed=seed, model=lambda v: float(engine.predict_batch("network", v[None, :])[0]))
    means = {name: {m: float(np.mean([r[name][m] for r in per_node])) for m in per_node[0][name]}
             for name in ("federated", "local")}
    return {"config": {"nodes": nodes, "rounds": rounds, "strategy": cfg.strategy, "dp": dp,
                       "epsilon": cfg.epsilon if dp else None, "local_epochs": cfg.local_epochs, "seed": seed},
            "per_node": per_node, "mean": means, "by_kind": by_kind, "clean_week": week,
            "coordinator_pr_auc": metrics["history"][-1]["global"].get("network", {}).get("pr_auc")}


def model_metrics(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark keys, in `anya-fl bench --json`'s shape."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in result["mean"].items():
        for metric, value in m.items():
            higher = metric != "false_alarm_rate"
            out[f"network.model.{name}.{metric}"] = {"value": value, "unit": "", "higher_is_better": higher}
    week = result["clean_week"]
    out["network.model.clean_week.false_alarms"] = {"value": float(week["false_alarms"]), "unit": "alerts",
                                                    "target": 0.0}
    out["network.model.clean_week.max_score"] = {"value": week["model_max_score"], "unit": "",
                                                 "target": THRESHOLD}
    return out
