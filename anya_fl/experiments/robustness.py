"""The robustness evidence table: every strategy against every attack at several shares of malicious nodes.

``anya-fl bench robustness`` runs, for each (strategy, attack, malicious share), a whole federation with the
real ServerApp round loop and the attack ClientApp (in process, :mod:`anya_fl.experiments.local_grid`) on the same
simulated chain and seed, and records each task's primary metric of the final global model on the
coordinator's held-out set, plus what screening flagged. The clean run (0 % malicious) is run once per
strategy. Output: ``robustness.json``, ``robustness.png`` (heat maps of the drop from the clean run).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.data.datasets import write_federation_data
from core.fedconfig import ATTACKS, FederationConfig
from core.scoring import PRIMARY_METRIC
from core.storage import atomic_write_bytes, atomic_write_json

DEFAULT_STRATEGY = "screened-median"  # chosen from the table (README, "Robustness")
STRATEGIES = ("fedavg", "krum", "multikrum", "bulyan", "median", "trimmed-mean", "screened-fedavg", "screened-median")
# What the table scores per task. Fee uses its pinball loss (lower is better), not the hit rate: a poisoned
# fee model that overpays wildly still "hits" every target (hit rate 1.0 under every attack, measured).
METRIC = {"fraud": PRIMARY_METRIC["fraud"], "fee": "pinball_loss", "anomaly": PRIMARY_METRIC["anomaly"]}
LOWER_IS_BETTER = {"fraud": False, "fee": True, "anomaly": False}


def _drop(task: str, clean: float, value: float) -> float:
    """How much worse ``value`` is than ``clean`` (positive = worse), whichever way the metric points."""
    return value - clean if LOWER_IS_BETTER[task] else clean - value


@dataclass(frozen=True)
class RobustnessConfig:
    """The robustness grid's settings (`anya-fl bench robustness`).

    Deliberately not FederationConfig's defaults: the grid runs dozens of federations, so it uses a
    smaller chain, 5 rounds, one task and no DP (DP noise would hide what an attack does to the model);
    ``nodes``, ``local_epochs`` and ``seed`` are the federation's. Each federation it runs is a
    FederationConfig built from these.
    """

    nodes: int = 10
    rounds: int = 5
    local_epochs: int = 5
    transactions: int = 40_000
    tasks: str = "fraud"
    dp: bool = False
    seed: int = 0
    fractions: tuple[float, ...] = (0.1, 0.2, 0.3)
    attacks: tuple[str, ...] = ATTACKS
    strategies: tuple[str, ...] = STRATEGIES


def strategy_config(base: FederationConfig, name: str, malicious_nodes: int) -> FederationConfig:
    """A named strategy of the table as a FederationConfig (screened-* = screening + a Flower strategy).

    Krum, MultiKrum and Bulyan are told how many nodes may be malicious (capped by what the node count
    allows: n >= 2f + 3, resp. 4f + 3).
    """
    screened = name.startswith("screened-")
    strategy = name.removeprefix("screened-")
    f = 0
    if strategy in ("krum", "multikrum"):
        f = min(malicious_nodes, (base.nodes - 3) // 2)
    elif strategy == "bulyan":
        f = min(malicious_nodes, (base.nodes - 3) // 4)
    return replace(base, strategy=strategy, screening=screened, byzantine=f)


def run_table(cfg: RobustnessConfig, out_dir: Path, on_run: Callable[[str, dict], None] | None = None) -> dict:
    """Run the grid; write robustness.json and robustness.png under ``out_dir``; return the table."""
    import torch

    from anya_fl.experiments.attack_app import app as client_app
    from anya_fl.experiments.local_grid import FIRST_NODE_ID, LocalGrid
    from anya_fl.experiments.poisoning import malicious_partitions
    from fl_server.app import run_federation

    torch.set_num_threads(1)  # the server side (held-out evaluation) too: see fl_client.app._torch_threads
    for name in ("flwr", "anya_fl.server"):
        logging.getLogger(name).setLevel(logging.ERROR)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = out_dir / "data"
    tasks = tuple(t.strip() for t in cfg.tasks.split(",") if t.strip())
    if not (data_dir / "coordinator").exists():
        write_federation_data(data_dir, cfg.transactions, cfg.seed, cfg.nodes, tasks)
    base = FederationConfig(rounds=cfg.rounds, nodes=cfg.nodes, min_nodes=cfg.nodes // 2, local_epochs=cfg.local_epochs,
                            dp=cfg.dp, seed=cfg.seed, tasks=",".join(tasks), transactions=cfg.transactions,
                            data_dir=str(data_dir.resolve()), export_models=False, min_stage="unavailable")
    runs: list[dict[str, Any]] = []
    grid_points = [(s, "", 0.0) for s in cfg.strategies] + [
        (s, a, f) for a in cfg.attacks for f in cfg.fractions for s in cfg.strategies]
    for strategy, attack, fraction in grid_points:
        m = int(round(fraction * cfg.nodes))
        name = f"{strategy}-{attack or 'clean'}-{int(round(100 * fraction))}"
        run_cfg = replace(strategy_config(base, strategy, m), attack=attack, malicious=fraction,
                          run_name=name, run_dir=str((out_dir / "runs" / name).resolve())).validate()
        t0 = time.perf_counter()
        history = run_federation(LocalGrid(client_app, cfg.nodes, run_cfg.to_run_config()), run_cfg)
        last = history[-1]
        bad_nodes = {str(FIRST_NODE_ID + p) for p in malicious_partitions(cfg.nodes, fraction, cfg.seed)} if attack else set()
        flagged = [{*h.flagged, *h.rejected} for h in history]
        row = {"strategy": strategy, "attack": attack or "none", "malicious": fraction, "seconds":
               time.perf_counter() - t0,
               "metrics": {t: float(last.global_metrics[t][METRIC[t]]) for t in tasks},
               "flags_true": sum(len(f & bad_nodes) for f in flagged),
               "flags_false": sum(len(f - bad_nodes) for f in flagged),
               "excluded": sorted({node for h in history for node in h.excluded})}
        runs.append(row)
        if on_run is not None:
            on_run(name, row)
    table = {"config": {**asdict(cfg), "fractions": list(cfg.fractions), "attacks": list(cfg.attacks),
                        "strategies": list(cfg.strategies)},
             "primary_metric": {t: METRIC[t] for t in tasks},
             "lower_is_better": {t: LOWER_IS_BETTER[t] for t in tasks}, "runs": runs,
             "default_strategy": DEFAULT_STRATEGY}
    table["summary"] = summarize(table)
    atomic_write_json(out_dir / "robustness.json", table)
    plot_table(table, out_dir / "robustness.png")
    return table


def _clean(table: dict, strategy: str, task: str) -> float:
    return next(r["metrics"][task] for r in table["runs"] if r["strategy"] == strategy and r["attack"] == "none")


def summarize(table: dict) -> dict[str, Any]:
    """Per strategy and task: the clean metric, the worst drop under any attack and where it happened."""
    out: dict[str, Any] = {}
    for strategy in table["config"]["strategies"]:
        for task in table["primary_metric"]:
            clean = _clean(table, strategy, task)
            rows = [r for r in table["runs"] if r["strategy"] == strategy and r["attack"] != "none"]
            worst = max(rows, key=lambda r: _drop(task, clean, r["metrics"][task]), default=None)
            out[f"{strategy}/{task}"] = {
                "clean": clean,
                "worst_drop": None if worst is None else _drop(task, clean, worst["metrics"][task]),
                "worst_at": None if worst is None else f"{worst['attack']} {100 * worst['malicious']:.0f} %",
            }
    return out


def plot_table(table: dict, path: Path) -> Path:
    """Heat maps (one per task): rows strategies, columns attack x share; colour = drop from the clean run."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    strategies = table["config"]["strategies"]
    cols = [(a, f) for a in table["config"]["attacks"] for f in table["config"]["fractions"]]
    tasks = list(table["primary_metric"])
    fig, axes = plt.subplots(len(tasks), 1, figsize=(1.0 + 0.62 * len(cols), 1.2 + 0.5 * len(strategies) * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        grid = np.full((len(strategies), len(cols)), math.nan)
        for i, s in enumerate(strategies):
            clean = _clean(table, s, task)
            for j, (a, f) in enumerate(cols):
                r = next((r for r in table["runs"] if r["strategy"] == s and r["attack"] == a
                          and abs(r["malicious"] - f) < 1e-9), None)
                if r is not None:
                    grid[i, j] = _drop(task, clean, r["metrics"][task])
        im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=max(0.05, float(np.nanmax(grid)) if np.isfinite(grid).any() else 1))
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(strategies)), strategies, fontsize=7)
        ax.set_xticks(range(len(cols)), [f"{a}\n{100 * f:.0f}%" for a, f in cols], fontsize=6)
        ax.set_title(f"{task}: how much worse {table['primary_metric'][task]} is than each strategy's clean run",
                     fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
