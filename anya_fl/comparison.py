"""Why federate: the federated model against centralized and local-only training, same budget and data.

* centralized: one model on the union of every node's training rows (what the coordinator could do if
  nodes shipped their data), DP at the same epsilon, with the centralized recipe of `anya-fl baseline`
  (the task's epochs, batch size and learning rate).
* local-only: each node trains alone on its own rows at the same epsilon with the same recipe; we
  report every node and the mean.
All are scored on the coordinator's held-out test set, exactly as the federated model is each round.

When the run trained the fee task, the comparison also holds the fee three-way table under
``FEE_ESTIMATORS``: the final global fee model against the Core-style and mempool.space-style
estimators on the same replay of the run's chain (:func:`fee_estimators`), on the held-out fee test rows.

The fits are independent and seeded, so they run in a pool of worker processes (one per core, each
with one torch thread): the result does not depend on the core count or on which worker ran a fit.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.simulation_report import COMPARISON_METRICS, FEE_ESTIMATORS
from core.data.datasets import load_dataset
from core.errors import DatasetError
from core.fedconfig import FederationConfig

PRIMARY = COMPARISON_METRICS


def _fit(task: str, train_dir: str, held_out_dir: str, run_config: dict[str, Any], seed: int) -> dict[str, float]:
    """One baseline fit (in a worker process): the task's recipe on ``train_dir``'s rows, scored on the held-out set."""
    from models.tasks import train_recipe
    from models.training import DPConfig, single_torch_thread

    cfg = FederationConfig.from_run_config(run_config)
    train_rows = load_dataset(Path(train_dir))[0][task]
    held_out = load_dataset(Path(held_out_dir))[0][task]
    dp = (DPConfig(target_epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm, accountant=cfg.accountant)
          if cfg.dp else None)
    with single_torch_thread():
        metrics, result = train_recipe(task, train_rows, held_out, model_seed=cfg.seed, seed=seed, dp=dp)
    return {**metrics, "epsilon": result.epsilon or 0.0}


def _workers(jobs: int) -> int:
    return max(1, min(jobs, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def compare(run_dir: Path, metrics: dict[str, Any], progress=None) -> dict[str, Any]:
    """The comparison table's data (also written to ``comparison.json``): one block per task, and the fee
    three-way table under ``FEE_ESTIMATORS`` when the run trained the fee task."""
    cfg = FederationConfig.from_run_config(metrics["config"])
    data_dir = Path(cfg.data_dir)
    held_out_dir = str(data_dir / "coordinator")
    profiles = json.loads((run_dir / "run.json").read_text()).get("profiles", [])
    sizes = [load_dataset(data_dir / f"node-{i}")[0] for i in range(cfg.nodes)]
    # (task, node or None for centralized, train dir, seed); centralized fits are the longest: first
    jobs: list[tuple[str, int | None, str, int]] = [(t, None, held_out_dir, cfg.seed) for t in cfg.task_list]
    jobs += [(t, i, str(data_dir / f"node-{i}"), cfg.seed + 1 + i) for t in cfg.task_list for i in range(cfg.nodes)
             if sizes[i][t].size("train") > 0]
    del sizes
    job = progress.add_task("baselines: centralized and local-only", total=len(jobs)) if progress else None
    results: dict[tuple[str, int | None], dict[str, float]] = {}
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ProcessPoolExecutor(max_workers=_workers(len(jobs)), mp_context=context) as pool:
        pending: dict[Future, tuple[str, int | None]] = {
            pool.submit(_fit, task, train_dir, held_out_dir, metrics["config"], seed): (task, node)
            for task, node, train_dir, seed in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()
                if progress:
                    progress.advance(job)
    out: dict[str, Any] = {}
    for task in cfg.task_list:
        fed = {m: metrics["history"][-1]["global"][task][m] for m in PRIMARY[task]}
        fed["epsilon"] = max((n.get(f"{task}.epsilon", 0.0) for h in metrics["history"] for n in h["nodes"].values()),
                             default=0.0)
        central = results[(task, None)]
        local = [{"node": i, "profile": profiles[i] if i < len(profiles) else "", **results[(task, i)]}
                 for i in range(cfg.nodes) if (task, i) in results]
        mean = {m: sum(r[m] for r in local) / len(local) for m in [*PRIMARY[task], "epsilon"]} if local else {}
        out[task] = {"federated": fed, "centralized": {m: central[m] for m in [*PRIMARY[task], "epsilon"]},
                     "local_only_mean": mean, "local_only": local}
    if "fee" in cfg.task_list:
        job = progress.add_task("fee estimators: replaying the chain", total=1) if progress else None
        out[FEE_ESTIMATORS] = fee_estimators(run_dir, cfg)
        if progress:
            progress.advance(job)
    return out


def federated_fee_name(cfg: FederationConfig) -> str:
    """How the fee tables name a run's federated fee model, e.g. "federated model (DP ε 8)"."""
    return f"federated model (DP ε {cfg.epsilon:g})" if cfg.dp else "federated model (no DP)"


def final_global_model(run_dir: Path, task: str) -> tuple[Any, int]:
    """(model, round): the run's final global model of ``task``, from its latest checkpoint.

    The checkpoint holds parameters and buffers as the coordinator evaluated them after the round, so a
    fee model carries the calibration offsets set on the held-out validation rows.
    """
    from fl_server.checkpoint import load_checkpoint
    from models.params import load_full_state
    from models.tasks import build_model

    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise DatasetError(f"{run_dir}: no checkpoint, so no final global {task} model (did a round complete?)")
    if not any(k.startswith(f"{task}.") for k in ckpt.models):
        raise DatasetError(f"{run_dir}: the round-{ckpt.round} checkpoint holds no {task} model")
    model = build_model(task)
    load_full_state({task: model}, ckpt.models)
    return model, ckpt.round


def fee_estimators(run_dir: Path, cfg: FederationConfig) -> dict[str, Any]:
    """The fee three-way table of a run: its final global fee model, Core-style buckets and mempool.space-style
    fees on the coordinator's held-out fee test rows (:func:`anya_fl.fee_comparison.compare_fee_estimators`).

    The chain is rebuilt from the run's config exactly as the run's data was (``write_federation_data``),
    and its fee test rows are checked against the coordinator's stored ones. Adds ``federated_estimator``
    (the model's name in the table), ``round`` (of the checkpoint), ``seed`` and ``transactions``.
    """
    from anya_fl.fee_comparison import compare_fee_estimators
    from core.bitcoin.features import TASK_SCHEMAS
    from core.data.chain import ChainConfig, simulate_chain
    from core.data.datasets import task_arrays
    from models.tasks import infer

    chain = simulate_chain(ChainConfig(n_transactions=cfg.transactions, seed=cfg.seed))
    fee = task_arrays(chain)["fee"]
    x, y = fee.x["test"], fee.y["test"]
    stored = load_dataset(Path(cfg.data_dir) / "coordinator")[0]["fee"]
    if not (np.array_equal(stored.x["test"], x) and np.array_equal(stored.y["test"], y)):
        raise DatasetError(f"{cfg.data_dir}/coordinator: its fee test rows differ from those of the chain rebuilt from "
                           f"the run's config ({cfg.transactions:,} transactions, seed {cfg.seed}); was the data "
                           "written by another build?")
    model, rnd = final_global_model(run_dir, "fee")
    name = federated_fee_name(cfg)
    k = x[:, TASK_SCHEMAS["fee"].index("conf_target_blocks")].astype(np.int64)
    result = compare_fee_estimators(chain, fee.index["test"], k, y, predictions={name: infer(model, x)},
                                    variants=False)
    return {**result, "federated_estimator": name, "round": rnd, "seed": cfg.seed, "transactions": cfg.transactions}
