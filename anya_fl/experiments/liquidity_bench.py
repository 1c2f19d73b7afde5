"""The federated liquidity model against the payer's priors and each router's local-only model, on the simulated
Lightning network (``anya-fl bench liquidity``).

A real federation (``anya-fl simulate --tasks liquidity``: Flower, DP-SGD, the run's robust strategy, signed ONNX in
the run's registry) trains the ``liquidity`` task: node i is router i of a simulated network and learns from its
own channels' balances. Every estimator is then asked the same questions, about the channels of a network no node
is in (the coordinator's test set, seed + ``TEST_SEED_OFFSET``), and scored against the simulator's truth:

* ``uniform``: probabilistic pathfinding's prior, (c + 1 - a) / (c + 1);
* ``bimodal``: LND's bimodal estimator (scale 300,000 sat), without observations;
* ``federated``: the served model (the run's registry, through the inference engine);
* ``local``: each node's model trained on its own rows alone with the same budget (epochs = rounds x local
  epochs, the same DP epsilon); the mean over nodes, and the median node's model for routing.

Metrics: log-loss, Brier score, expected calibration error (10 bins), ROC-AUC. Then the payment success rate:
the same network and workload (the test network, ``SUCCESS_HOURS`` simulated hours) played once per estimator, the
payer routing by it (``anya_fl.simln.estimators.success_rate``).

Keys (``anya-fl bench liquidity``): ``liquidity.<estimator>.<metric>``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.experiments.local_only import local_only_model
from anya_fl.simln.estimators import ESTIMATORS, model_estimator, success_rate
from anya_fl.simln.liquidity_data import TEST_SEED_OFFSET, LiquiditySim, held_out_liquidity_rows
from core import scoring
from core.data.datasets import load_dataset
from core.fedconfig import FederationConfig

NODES = 5
ROUNDS = 5
SUCCESS_HOURS = 12.0


def run_liquidity_bench(seed: int = 0, nodes: int = NODES, rounds: int = ROUNDS, dp: bool = True,
                        strategy: str | None = None, success_hours: float = SUCCESS_HOURS, work: Path | None = None,
                        on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Federate the liquidity task, train the local-only models; score every estimator and route by each."""
    from anya_fl.simulation import check_finished, prepare_run, run_flower
    from core.security.signing import load_public_key
    from core.serving.inference.engine import InferenceEngine
    from core.serving.registry import ModelRegistry

    step = on_step or (lambda _msg: None)
    # screening may exclude a router whose channels differ from the rest (an honest outlier); the run goes on
    cfg = FederationConfig(nodes=nodes, min_nodes=max(2, nodes // 2), rounds=rounds, tasks="liquidity", seed=seed,
                           dp=dp)
    if strategy:
        cfg = replace(cfg, strategy=strategy)
    cfg = cfg.validate()
    sim = LiquiditySim(seed=seed, nodes=nodes)
    with tempfile.TemporaryDirectory(prefix="anya-fl-liquidity-") as tmp:
        run_dir = (work or Path(tmp)) / "run"
        step(f"simulating a Lightning network of {sim.config().nodes} routers ({sim.hours:g} h of snapshots)")
        cfg = prepare_run(cfg, run_dir)
        privacy = f"DP eps {cfg.epsilon:g}" if dp else "no DP"
        step(f"federating the liquidity task ({nodes} nodes, {rounds} rounds, {cfg.strategy}, {privacy})")
        metrics = check_finished(run_dir, run_flower(run_dir))
        engine = InferenceEngine()
        registry = ModelRegistry(run_dir / "registry",
                                 trusted_keys=[load_public_key(run_dir / "keys" / "model-signing.pub")])
        engine.load_from_registry(registry, "liquidity@production")
        served = lambda x: engine.predict_batch("liquidity", x)  # noqa: E731 - the served model
        step("local-only models")
        locals_: list[Callable[[np.ndarray], np.ndarray]] = []
        rows_per_node: list[int] = []
        for i in range(nodes):
            data = load_dataset(run_dir / "data" / f"node-{i}")[0]["liquidity"]
            locals_.append(local_only_model("liquidity", data, cfg, seed=seed + 1 + i))
            rows_per_node.append(int(data.size("train")))
        step("scoring every estimator on the held-out network's questions")
        held = held_out_liquidity_rows(sim, TEST_SEED_OFFSET)
        x, y = held.arrays()
        scores: dict[str, dict[str, float]] = {}
        for name, prior in ESTIMATORS.items():
            scores[name] = scoring.probability_metrics(y, np.array([prior(h, a) for h, a in held.hops]))
        scores["federated"] = scoring.probability_metrics(y, served(x))
        per_local = [scoring.probability_metrics(y, f(x)) for f in locals_]
        scores["local"] = {m: float(np.mean([p[m] for p in per_local])) for m in per_local[0]}
        median_node = int(np.argsort([p["log_loss"] for p in per_local])[len(per_local) // 2])
        routing = {**{n: (lambda _net, prior=prior: prior) for n, prior in ESTIMATORS.items()},
                   "federated": model_estimator(served), "local": model_estimator(locals_[median_node])}
        success: dict[str, dict[str, float]] = {}
        for name, make in routing.items():
            step(f"routing {success_hours:g} simulated hours of payments by the {name} estimator")
            success[name] = success_rate(sim.config(sim.seed + TEST_SEED_OFFSET), make, success_hours)
    return {"config": {"nodes": nodes, "rounds": rounds, "strategy": cfg.strategy, "dp": dp,
                       "epsilon": cfg.epsilon if dp else None, "local_epochs": cfg.local_epochs, "seed": seed,
                       "routers": sim.config().nodes, "hours": sim.hours, "success_hours": success_hours},
            "questions": len(y), "positive_rate": float(y.mean()), "rows_per_node": rows_per_node,
            "scores": scores, "local_per_node": per_local, "local_routing_node": median_node, "success": success,
            "coordinator": metrics["history"][-1]["global"].get("liquidity", {})}


def liquidity_metrics(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark keys, in `anya-fl bench --json`'s shape."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in result["scores"].items():
        for metric in ("log_loss", "brier", "ece", "roc_auc"):
            if metric in m:
                out[f"liquidity.{name}.{metric}"] = {"value": m[metric], "unit": "",
                                                     "higher_is_better": metric not in scoring.PROBABILITY_LOSSES}
    for name, s in result["success"].items():
        out[f"liquidity.{name}.payment_success"] = {"value": s["success_rate"], "unit": "", "higher_is_better": True}
        out[f"liquidity.{name}.mean_attempts"] = {"value": s["mean_attempts"], "unit": "attempts",
                                                  "higher_is_better": False}
    return out
