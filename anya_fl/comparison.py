"""Why federate: the federated model against centralized and local-only training, same budget and data.

* centralized: one model on the union of every node's training rows (what the coordinator could do if
  nodes shipped their data), DP at the same epsilon, with the centralized recipe of `anya-fl baseline`
  (the task's epochs, batch size and learning rate).
* local-only: each node trains alone on its own rows at the same epsilon with the same recipe; we
  report every node and the mean.
All are scored on the coordinator's held-out test set, exactly as the federated model is each round.

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

from core.data.datasets import load_dataset
from core.fedconfig import FederationConfig

PRIMARY = {"fraud": ["pr_auc"], "fee": ["pinball_loss", "hit_rate", "median_overpay_sat_vb"], "anomaly": ["roc_auc"]}


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
    """The comparison table's data (also written to ``comparison.json``)."""
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
    return out
