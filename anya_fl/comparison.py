"""Why federate: the federated model against centralized and local-only training, same budget and data.

* centralized: one model on the union of every node's training rows (what the coordinator could do if
  nodes shipped their data), DP at the same epsilon, with the centralized recipe of `anya-fl baseline`
  (the task's epochs, batch size and learning rate).
* local-only: each node trains alone on its own rows at the same epsilon with the same recipe; we
  report every node and the mean.
All are scored on the coordinator's held-out test set, exactly as the federated model is each round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.data.datasets import TaskSplits, load_dataset
from core.fedconfig import FederationConfig
from models.tasks import train_recipe
from models.training import DPConfig

PRIMARY = {"fraud": ["pr_auc"], "fee": ["pinball_loss", "hit_rate", "median_overpay_sat_vb"], "anomaly": ["roc_auc"]}


def _fit(task: str, train_rows: TaskSplits, held_out: TaskSplits, cfg: FederationConfig, seed: int) -> dict[str, float]:
    dp = (DPConfig(target_epsilon=cfg.epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm, accountant=cfg.accountant)
          if cfg.dp else None)
    metrics, result = train_recipe(task, train_rows, held_out, model_seed=cfg.seed, seed=seed, dp=dp)
    return {**metrics, "epsilon": result.epsilon or 0.0}


def compare(run_dir: Path, metrics: dict[str, Any], progress=None) -> dict[str, Any]:
    """The comparison table's data (also written to ``comparison.json``)."""
    cfg = FederationConfig.from_run_config(metrics["config"])
    data_dir = Path(cfg.data_dir)
    held_out, _ = load_dataset(data_dir / "coordinator")
    profiles = json.loads((run_dir / "run.json").read_text()).get("profiles", [])
    nodes = [load_dataset(data_dir / f"node-{i}")[0] for i in range(cfg.nodes)]
    final = metrics["history"][-1]
    job = progress.add_task("baselines", total=len(cfg.task_list) * (1 + len(nodes))) if progress else None
    out: dict[str, Any] = {}
    for task in cfg.task_list:
        fed = {m: final["global"][task][m] for m in PRIMARY[task]}
        fed["epsilon"] = max((n.get(f"{task}.epsilon", 0.0) for h in metrics["history"] for n in h["nodes"].values()),
                             default=0.0)
        if progress:
            progress.update(job, description=f"{task}: centralized")
        central = _fit(task, held_out[task], held_out[task], cfg, cfg.seed)
        if progress:
            progress.advance(job)
        local = []
        for i, node in enumerate(nodes):
            if progress:
                progress.update(job, description=f"{task}: local-only node {i}")
            if node[task].size("train") == 0:
                continue
            row = _fit(task, node[task], held_out[task], cfg, cfg.seed + 1 + i)
            local.append({"node": i, "profile": profiles[i] if i < len(profiles) else "", **row})
            if progress:
                progress.advance(job)
        mean = {m: sum(r[m] for r in local) / len(local) for m in [*PRIMARY[task], "epsilon"]} if local else {}
        out[task] = {"federated": fed, "centralized": {m: central[m] for m in [*PRIMARY[task], "epsilon"]},
                     "local_only_mean": mean, "local_only": local}
    return out
