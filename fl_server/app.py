"""Flower ServerApp: one run trains all three tasks, round by round, with checkpoints and resume.

The round loop uses the chosen Flower strategy's own ``configure_train`` / ``aggregate_train`` /
``configure_evaluate`` / ``aggregate_evaluate`` (Flower's ``Strategy.start`` always starts at round
1; our loop can start at any round, which is what resume needs). After every round the coordinator
evaluates the global models on its held-out set and writes a checkpoint atomically.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from core.data.datasets import load_dataset, write_federation_data
from core.errors import ConfigError
from core.fedconfig import DECLINE_ERROR_CODE, FederationConfig
from core.security.audit import NODE_EXCLUDED, AuditLog
from core.storage import atomic_write_json
from fl_server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weights_digest
from fl_server.prompt_grid import PromptGrid
from fl_server.publish import publish_final_models
from fl_server.screening import ScreeningConfig, ScreeningState, screen
from fl_server.strategies import STATEFUL_ATTRS, build_strategy
from models.params import full_state, load_full_state, pack, unpack_into
from models.tasks import build_model, evaluate_held_out

log = logging.getLogger("anya_fl.server")

app = ServerApp()


def _strategy_state(strategy: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for attr in STATEFUL_ATTRS:
        value = getattr(strategy, attr, None)
        if isinstance(value, dict):
            out.update({f"{attr}.{k}": np.asarray(v) for k, v in value.items()})
    return out


def _restore_strategy(strategy: Any, state: dict[str, np.ndarray]) -> None:
    for attr in STATEFUL_ATTRS:
        prefix = f"{attr}."
        value = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if value:
            setattr(strategy, attr, value)


def _progress(run_dir: Path, **fields: Any) -> None:
    atomic_write_json(run_dir / "progress.json", {**fields, "updated": time.time()})


def _reply_order(m: Message) -> tuple[float, int]:
    """Aggregate in a fixed order (by partition, then node id), not arrival order: sums are order-sensitive."""
    if not m.has_error():
        rec = next(iter(m.content.metric_records.values()), {})
        return float(rec.get("partition-id", float("inf"))), int(m.metadata.src_node_id)
    return float("inf"), int(m.metadata.src_node_id)


def _node_rows(replies: list[Message]) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Per-node metrics of successful replies, and the nodes that declined or failed (with why)."""
    ok: dict[str, dict[str, float]] = {}
    failed: list[dict[str, Any]] = []
    for m in replies:
        node = str(m.metadata.src_node_id)
        if m.has_error():
            failed.append({"node": node, "code": int(m.error.code), "reason": str(m.error.reason)})
        else:
            rec = next(iter(m.content.metric_records.values()))
            ok[node] = {k: float(v) for k, v in rec.items()}
    return ok, failed


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FederationConfig.from_run_config(context.run_config).validate()
    run_federation(PromptGrid(grid), cfg)


def run_federation(grid: Grid, cfg: FederationConfig) -> list[dict[str, Any]]:
    """Run (or resume) the rounds of ``cfg``; return the metrics history."""
    if not cfg.run_dir:
        raise ConfigError("run-dir", "is empty: the coordinator needs a directory for checkpoints and metrics")
    if not cfg.data_dir:
        raise ConfigError("data-dir", "is empty: the coordinator needs its held-out dataset at <data-dir>/coordinator")
    run_dir = Path(cfg.run_dir)
    if not (Path(cfg.data_dir) / "coordinator").exists():
        # `flwr run .` without prepared data: simulate the chain and deal it to the simulated nodes first
        write_federation_data(cfg.data_dir, cfg.transactions, cfg.seed, cfg.nodes, cfg.task_list)
    held_out, _ = load_dataset(Path(cfg.data_dir) / "coordinator")
    tasks = cfg.task_list
    models = {t: build_model(t, seed=cfg.seed) for t in tasks}
    strategy = build_strategy(cfg)
    ckpt = load_checkpoint(run_dir)
    history: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    start = 1
    metrics_path = run_dir / "metrics.json"
    if ckpt is not None:
        load_full_state(models, ckpt.models)
        _restore_strategy(strategy, ckpt.strategy)
        history, start = ckpt.history, ckpt.round + 1
        if metrics_path.is_file():
            resumes = json.loads(metrics_path.read_text()).get("resumes", [])
        # the digest of the weights as restored into the models: equal to the saved one when bit-identical
        resumes.append({"from_round": ckpt.round, "weights_sha256": weights_digest(full_state(models)),
                        "saved_sha256": weights_digest(ckpt.models)})
    arrays = ArrayRecord(pack(models))
    screen_cfg = ScreeningConfig(cfg.screening, cfg.clip_factor, cfg.flag_norm, cfg.min_cosine, cfg.exclude_after)
    screen_state = ScreeningState.from_history(history)

    for rnd in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        _progress(run_dir, round=rnd, rounds=cfg.rounds, phase="train")
        random.seed(cfg.seed * 7919 + rnd)  # Flower samples nodes with the `random` module
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), grid))
        replies = sorted(grid.send_and_receive(messages=messages, timeout=cfg.round_timeout), key=_reply_order)
        nodes, failed = _node_rows(replies)
        global_np = {k: v.numpy() for k, v in arrays.items()}
        replies, screened = screen(replies, global_np, screen_cfg, screen_state)
        if isinstance(grid, PromptGrid):
            grid.excluded = set(screen_state.excluded)
        for e in screened:
            if e["kind"] in ("rejected", "flagged", "excluded"):
                log.warning("round %d: node %s %s: %s", rnd, e["node"], e["kind"], e["reason"])
            if e["kind"] == "excluded" and cfg.audit_log:
                AuditLog(Path(cfg.audit_log)).append(f"coordinator:{cfg.run_name}", NODE_EXCLUDED, f"node {e['node']}",
                                                     {"run": cfg.run_name, "round": rnd, "reason": e["reason"]})
        declined = [f for f in failed if f["code"] == DECLINE_ERROR_CODE]
        for f in declined:
            log.warning("round %d: node %s declined: %s", rnd, f["node"], f["reason"])
        if any(not m.has_error() for m in replies):
            aggregated, train_metrics = strategy.aggregate_train(rnd, replies)
        else:  # every update was rejected or flagged: the global model stays as it is this round
            aggregated, train_metrics = None, None
        if aggregated is not None:
            arrays = aggregated
            unpack_into(models, aggregated.to_torch_state_dict())
        train_seconds = time.perf_counter() - t0

        _progress(run_dir, round=rnd, rounds=cfg.rounds, phase="evaluate")
        central = {t: evaluate_held_out(t, m, held_out[t]) for t, m in models.items()}
        eval_replies = list(grid.send_and_receive(
            messages=strategy.configure_evaluate(rnd, arrays, ConfigRecord({}), grid), timeout=cfg.round_timeout))
        federated = strategy.aggregate_evaluate(rnd, eval_replies)

        record = {
            "round": rnd,
            "seconds": time.perf_counter() - t0,
            "train_seconds": train_seconds,
            "nodes_sampled": len(messages),
            "nodes_replied": len(nodes),
            "nodes_missing": len(messages) - len(replies),
            "nodes_failed": failed,
            "nodes_declined": len(declined),
            "screening": screened,
            "train": dict(train_metrics) if train_metrics is not None else {},
            "nodes": nodes,
            "global": central,
            "federated_eval": dict(federated) if federated is not None else {},
        }
        history.append(record)
        save_checkpoint(run_dir, Checkpoint(round=rnd, models=full_state(models),
                                            strategy=_strategy_state(strategy), history=history))
        atomic_write_json(metrics_path, {"config": cfg.to_run_config(), "history": history, "resumes": resumes})
    _progress(run_dir, round=cfg.rounds, rounds=cfg.rounds, phase="publish")
    published = publish_final_models(cfg, models, history) if cfg.export_models else {}
    atomic_write_json(metrics_path, {"config": cfg.to_run_config(), "history": history, "resumes": resumes,
                                     "published": published})
    _progress(run_dir, round=cfg.rounds, rounds=cfg.rounds, phase="done")
    return history
