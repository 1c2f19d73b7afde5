"""Flower ServerApp: one run trains its tasks (fraud, fee and anomaly by default; network and liquidity on
request), round by round, with checkpoints and resume.

The round loop uses the chosen Flower strategy's own ``configure_train`` / ``aggregate_train`` /
``configure_evaluate`` / ``aggregate_evaluate`` (Flower's ``Strategy.start`` always starts at round
1; our loop can start at any round, which is what resume needs). After every round the coordinator
evaluates the global models on its held-out set and writes a checkpoint atomically.

A run that fails on our own error (:class:`~core.errors.AnyaError`: a bad setting, a missing or
foreign dataset) ends as one line, ``error: <setting>: <problem>``, in the run's log instead of a
traceback; ``progress.json`` says ``"phase": "failed"`` with that line, and Flower marks the run
``finished:failed`` with the line in its status details (``flwr ls``). ``flwr run`` itself still exits
0 (Flower 1.42): callers read the status or ``progress.json``.
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
from core.errors import AnyaError, ConfigError, DatasetError
from core.fedconfig import FederationConfig
from core.security.audit import NODE_EXCLUDED, AuditLog
from core.storage import atomic_write_json
from fl_server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, weights_digest
from fl_server.prompt_grid import PromptGrid
from fl_server.publish import publish_final_models
from fl_server.round_record import NodeFailure, RoundRecord, history_to_dicts
from fl_server.screening import ScreeningConfig, ScreeningState, screen
from fl_server.strategies import STATEFUL_ATTRS, build_strategy
from fl_server.task_groups import aggregate_by_task
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


def _node_rows(replies: list[Message], tasks: tuple[str, ...]
               ) -> tuple[dict[str, dict[str, float]], list[NodeFailure], dict[str, dict[str, str]]]:
    """Per-node metrics of the replies that carry an update, the nodes that declined or failed (with why),
    and the tasks a node left untrained with its reason (known task names only, reasons cut to 200 characters:
    a node's words go into the coordinator's report)."""
    ok: dict[str, dict[str, float]] = {}
    failed: list[NodeFailure] = []
    declined: dict[str, dict[str, str]] = {}
    for m in replies:
        node = str(m.metadata.src_node_id)
        if m.has_error():
            failed.append(NodeFailure(node, int(m.error.code), str(m.error.reason)))
        else:
            rec = next(iter(m.content.metric_records.values()))
            ok[node] = {k: float(v) for k, v in rec.items()}
            why = m.content.config_records.get("declined-tasks")
            if why is not None:
                declined[node] = {t: str(why[t])[:200] for t in tasks if t in why}
    return ok, failed, declined


class _EligibleNodes:
    """The round loop's view of ``grid``: the nodes screening excluded are not there to be sampled.

    Flower's strategies sample from ``grid.get_node_ids()`` (train and evaluate) and wait while fewer
    than min-nodes are there; everything else is ``grid``'s own, whatever kind of Grid it is
    (deployment, simulation, in process).
    """

    def __init__(self, grid: Grid, excluded: set[int], cfg: FederationConfig) -> None:
        self._grid = grid
        self._excluded = excluded  # the screening state's own set: a node excluded in a round is gone from the next
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        connected = list(self._grid.get_node_ids())
        eligible = [n for n in connected if n not in self._excluded]
        if len(eligible) < self._cfg.min_nodes and len(connected) >= self._cfg.nodes:
            # every node of the federation is there: Flower would wait for more for ever
            raise AnyaError(f"screening excluded {len(connected) - len(eligible)} of the {len(connected)} nodes; "
                            f"the {len(eligible)} left are fewer than min-nodes ({self._cfg.min_nodes})")
        return eligible


class _OneLineErrors(logging.Filter):
    """Turns Flower's log record of an escaping :class:`AnyaError` into ``error: <message>``, without traceback.

    Flower 1.42 logs an exception that leaves the ServerApp on its ``flwr`` logger with ``exc_info``
    ("ServerApp raised an exception" in a deployment's flwr-serverapp, "Simulation raised an
    exception" under the Simulation Engine), then sets the run to ``finished:failed`` with
    ``str(exception)`` in its details. Our errors are meant for users, so the record keeps only the
    message; any other exception keeps its traceback (it is a bug). Should Flower log it differently,
    the only loss is that the traceback shows again (tests/test_flower_failures.py checks it does not).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AnyaError):
            record.msg, record.args = "error: %s", (exc,)
            record.exc_info, record.exc_text = None, None
        return True


def _show_our_errors_as_one_line() -> None:
    flower_logger = logging.getLogger("flwr")
    if not any(type(f).__name__ == _OneLineErrors.__name__ for f in flower_logger.filters):
        flower_logger.addFilter(_OneLineErrors())


def failure_line(err: BaseException) -> str:
    """The one line that says why a run failed: our own message, else the exception's type and first line."""
    if isinstance(err, AnyaError):
        return str(err)
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0]}" if first else type(err).__name__


def _record_failure(run_dir: str, err: BaseException, rounds: Any, started: float) -> None:
    """``progress.json`` phase "failed" with the error line and the round this run got to, if there is a run dir."""
    if not run_dir:
        return
    path = Path(run_dir) / "progress.json"
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        previous = {}
    if not isinstance(previous, dict) or previous.get("updated", 0) < started:
        previous = {}  # an earlier run's progress says nothing about this one
    try:
        _progress(Path(run_dir), round=int(previous.get("round", 0)), rounds=previous.get("rounds", rounds),
                  phase="failed", error=failure_line(err), setting=getattr(err, "setting", None))
    except OSError as exc:  # e.g. a run-dir that cannot be written: the run's status still says why
        log.warning("could not write %s: %s", path, exc)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _show_our_errors_as_one_line()
    started = time.time()
    run_dir = str(context.run_config.get("run-dir", "") or "")
    try:
        cfg = FederationConfig.from_run_config(context.run_config).validate()
        run_federation(PromptGrid(grid), cfg)
    except Exception as err:
        _record_failure(run_dir, err, context.run_config.get("rounds"), started)
        raise  # Flower marks the run failed, with str(err) in its details


def run_federation(grid: Grid, cfg: FederationConfig) -> list[RoundRecord]:
    """Run (or resume) the rounds of ``cfg`` on ``grid``; return every round's record (resumed ones included).

    Nodes that screening excluded are never sampled again in this run, whatever the grid.
    """
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
    if missing := [t for t in tasks if t not in held_out]:
        raise DatasetError(f"data-dir: the coordinator's held-out set ({Path(cfg.data_dir) / 'coordinator'}) has no "
                           f"{', '.join(missing)} rows; the network and liquidity tasks' come from `anya-fl simulate --tasks "
                           "...,network,liquidity` (telemetry of simulated nodes under attack, channels of a "
                           "simulated Lightning network) or `anya-fl coordinator run --tasks`")
    models = {t: build_model(t, seed=cfg.seed) for t in tasks}
    strategy = build_strategy(cfg)
    ckpt = load_checkpoint(run_dir)
    history: list[RoundRecord] = []
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
    screen_cfg = ScreeningConfig.of(cfg)
    screen_state = ScreeningState.from_history(history)
    nodes_to_sample = _EligibleNodes(grid, screen_state.excluded, cfg)

    for rnd in range(start, cfg.rounds + 1):
        t0 = time.perf_counter()
        _progress(run_dir, round=rnd, rounds=cfg.rounds, phase="train")
        random.seed(cfg.seed * 7919 + rnd)  # Flower samples nodes with the `random` module
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord({}), nodes_to_sample))
        raw = sorted(grid.send_and_receive(messages=messages, timeout=cfg.round_timeout), key=_reply_order)
        replied, failed, tasks_declined = _node_rows(raw, cfg.task_list)
        global_np = {k: v.numpy() for k, v in arrays.items()}
        to_aggregate, screened = screen(raw, global_np, screen_cfg, screen_state)
        for e in screened:
            if e.kind in ("rejected", "flagged", "excluded"):
                log.warning("round %d: node %s %s: %s", rnd, e.node, e.kind, e.reason)
            if e.kind == "excluded" and cfg.audit_log:
                AuditLog(Path(cfg.audit_log)).append(f"coordinator:{cfg.run_name}", NODE_EXCLUDED, f"node {e.node}",
                                                     {"run": cfg.run_name, "round": rnd, "reason": e.reason})
        for f in failed:
            if f.declined:
                log.warning("round %d: node %s declined: %s", rnd, f.node, f.reason)
        kept = [m for m in to_aggregate if not m.has_error()]
        task_aggregation: dict[str, str] = {}
        if kept:  # each task over the nodes that trained it (fl_server.task_groups)
            aggregated, train_metrics, task_aggregation = aggregate_by_task(strategy, rnd, to_aggregate, arrays, cfg)
            for task, how in task_aggregation.items():
                log.info("round %d: %s %s", rnd, task, how)
        else:  # every update was rejected or flagged: the global model stays as it is this round
            aggregated, train_metrics = None, None
        if aggregated is not None:
            arrays = aggregated
            unpack_into(models, aggregated.to_torch_state_dict())
        train_seconds = time.perf_counter() - t0

        _progress(run_dir, round=rnd, rounds=cfg.rounds, phase="evaluate")
        central = {t: evaluate_held_out(t, m, held_out[t]) for t, m in models.items()}
        eval_replies = list(grid.send_and_receive(
            messages=strategy.configure_evaluate(rnd, arrays, ConfigRecord({}), nodes_to_sample),
            timeout=cfg.round_timeout))
        federated = strategy.aggregate_evaluate(rnd, eval_replies)

        kept_nodes = [str(m.metadata.src_node_id) for m in kept]
        history.append(RoundRecord(
            round=rnd,
            sampled=len(messages),
            replied=replied,
            failed=failed,
            tasks_declined=tasks_declined,
            task_aggregation=task_aggregation,
            missing=len(messages) - len(raw),  # no reply at all: screened-out replies are not missing
            rejected=[e.node for e in screened if e.kind == "rejected"],
            flagged=[e.node for e in screened if e.kind == "flagged"],
            kept=kept_nodes,
            screening=screened,
            train=dict(train_metrics) if train_metrics is not None else {},
            global_metrics=central,
            federated_eval=dict(federated) if federated is not None else {},
            seconds=time.perf_counter() - t0,
            train_seconds=train_seconds,
        ))
        save_checkpoint(run_dir, Checkpoint(round=rnd, models=full_state(models),
                                            strategy=_strategy_state(strategy), history=history))
        atomic_write_json(metrics_path, {"config": cfg.to_run_config(), "history": history_to_dicts(history),
                                         "resumes": resumes})
    _progress(run_dir, round=cfg.rounds, rounds=cfg.rounds, phase="publish")
    published = publish_final_models(cfg, models, history) if cfg.export_models else {}
    atomic_write_json(metrics_path, {"config": cfg.to_run_config(), "history": history_to_dicts(history),
                                     "resumes": resumes, "published": published})
    _progress(run_dir, round=cfg.rounds, rounds=cfg.rounds, phase="done")
    return history
