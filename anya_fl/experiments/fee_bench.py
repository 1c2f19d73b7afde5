"""The fee-estimator benchmark: the federated fee model against Core-style and mempool.space-style estimators.

``anya-fl bench fee`` runs, per seed, a whole federation of the fee task (DP-SGD at ε on every node, the
default strategy with screening; the real ServerApp round loop and the deployed ClientApp, in process
through :class:`~anya_fl.experiments.local_grid.LocalGrid`, as the robustness table does) on a simulated
chain dealt to non-IID nodes, then scores the final global fee model, Core-style buckets and
mempool.space-style recommended fees on the same replay of that chain, on the coordinator's held-out fee
test rows (:func:`anya_fl.comparison.fee_estimators`, the table every simulation report carries).

Figures are aggregated over seeds as the mean of each seed's figure (hit rate and median overpayment per
estimator and k, per congestion phase, per Core confidence level). The goal: the federated model hits at
least ``HIT_GOAL`` of rows at every k, with a lower median overpayment than both estimators at that k
(judged on the means over seeds; each seed's verdict is kept too).

Defaults: the simulation's (``FederationConfig``: 200,000 transactions, 10 nodes, 8 rounds, 5 local epochs,
ε 8), so the bench's seed-0 table is the one a default ``anya-fl simulate`` report shows; about 2,200 fee
test rows and 350 training rows per node; one seed took about 30 s on 2 busy cores (3 seeds: 2 minutes).
"""

from __future__ import annotations

import logging
import math
import operator
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from core.data.replay import CORE, MEMPOOL_SPACE
from core.errors import ConfigError
from core.fedconfig import FederationConfig

_FED = FederationConfig()
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_TRANSACTIONS = _FED.transactions
DEFAULT_NODES = _FED.nodes
DEFAULT_ROUNDS = _FED.rounds
DEFAULT_EPSILON = _FED.epsilon
HIT_GOAL = 0.90
SHORT_NAMES = ("federated", "core", "mempool")  # metric names: fee.<short>.<figure>


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2); ConfigError("seeds", ...) for anything but distinct integers >= 0."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError("seeds", f"{text!r} is not a comma-separated list of integers (RNG seeds >= 0)") from None
    return _check_seeds(seeds)


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    try:
        if any(isinstance(s, bool) for s in seeds):
            raise TypeError
        out = tuple(operator.index(s) for s in seeds)
    except TypeError:
        raise ConfigError("seeds", f"{list(seeds)!r}: each must be an integer >= 0") from None
    if not out:
        raise ConfigError("seeds", "name at least one seed")
    if any(s < 0 for s in out):
        raise ConfigError("seeds", f"{list(out)}: each must be an integer >= 0")
    if len(set(out)) != len(out):
        raise ConfigError("seeds", f"{list(out)}: a seed is repeated")
    return out


def bench_config(seed: int, transactions: int, nodes: int, rounds: int, epsilon: float,
                 root: Path) -> FederationConfig:
    """One seed's federation: fee only, DP at ``epsilon``, otherwise the simulation's defaults (strategy with
    screening, local epochs, min nodes), no model export.

    ``min_stage`` is "unavailable" as in the robustness table: the nodes share one process, so their
    health figures (RSS, CPU) are the process's, not a node's.
    """
    return FederationConfig(rounds=rounds, nodes=nodes, min_nodes=min(_FED.min_nodes, nodes), dp=True, epsilon=epsilon,
                            seed=seed, tasks="fee", transactions=transactions, run_name=f"fee-bench-{seed}",
                            run_dir=str((root / "run").resolve()), data_dir=str((root / "data").resolve()),
                            export_models=False, min_stage="unavailable").validate()


def run_fee_bench(seeds: Sequence[int] = DEFAULT_SEEDS, transactions: int = DEFAULT_TRANSACTIONS,
                  nodes: int = DEFAULT_NODES, rounds: int = DEFAULT_ROUNDS, epsilon: float = DEFAULT_EPSILON,
                  progress: Any = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); return its JSON-able result.

    ``progress``: a rich Progress to show the work on. ``out_dir``: where each seed's data and run
    directory go (``seed-<s>/{data,run}``, kept); default a temporary directory, removed at the end.
    Keys: ``config``, ``estimators`` and ``keys`` (short name -> estimator), ``seeds`` (per seed: its
    comparison dict, the server's own final fee metrics, ε spent, seconds), ``mean`` (the comparison
    schema, each figure the mean over seeds, with ``*_per_seed`` lists), ``goal`` and ``metrics``.
    """
    seeds = _check_seeds(list(seeds))
    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="anya-fee-bench-") as tmp:
            return run_fee_bench(seeds, transactions, nodes, rounds, epsilon, progress, Path(tmp))
    out_dir = Path(out_dir)
    configs = {s: bench_config(s, transactions, nodes, rounds, epsilon, out_dir / f"seed-{s}") for s in seeds}
    for s in seeds:
        if (out_dir / f"seed-{s}").exists():
            raise ConfigError("out", f"{out_dir / f'seed-{s}'} already exists; choose an empty directory")

    from core.data.datasets import write_federation_data

    bar = progress.add_task("fee bench", total=len(seeds) * (2 * rounds + 2)) if progress else None

    def step(description: str, advance: int = 1) -> None:
        if progress:
            progress.update(bar, advance=advance, description=description)

    # every seed's data first: a chain too short for a seed fails before any federation runs
    for s in seeds:
        step(f"seed {s}: simulating the chain, dealing it to {nodes} nodes", 0)
        write_federation_data(configs[s].data_dir, transactions, s, nodes, ("fee",))
        step(f"seed {s}: data written")
    runs = [_run_seed(configs[s], lambda what, s=s: step(f"seed {s}: {what}")) for s in seeds]
    first = runs[0]["comparison"]
    fed = first["federated_estimator"]
    keys = dict(zip(SHORT_NAMES, (fed, CORE, MEMPOOL_SPACE), strict=True))
    mean = mean_comparison([r["comparison"] for r in runs])
    result: dict[str, Any] = {
        "config": {"seeds": list(seeds), "transactions": transactions, "nodes": nodes, "rounds": rounds,
                   "epsilon": epsilon, "strategy": configs[seeds[0]].strategy,
                   "screening": configs[seeds[0]].screening, "local_epochs": configs[seeds[0]].local_epochs,
                   "min_nodes": configs[seeds[0]].min_nodes},
        "estimators": list(keys.values()),
        "keys": keys,
        "seeds": runs,
        "mean": mean,
        "goal": {**goal(mean, keys), "per_seed": {str(r["seed"]): goal(r["comparison"], keys)["met"] for r in runs}},
    }
    result["metrics"] = bench_metrics(result)
    return result


def _run_seed(cfg: FederationConfig, step: Callable[[str], None]) -> dict[str, Any]:
    """One seed: the federation, then the three-way table of its final global fee model."""
    import torch
    from flwr.app import Message

    from anya_fl.comparison import fee_estimators
    from anya_fl.experiments.local_grid import LocalGrid
    from fl_client.app import app as client_app
    from fl_server.app import run_federation

    class ProgressGrid(LocalGrid):
        """LocalGrid that reports each batch of messages answered (train and evaluate, each round)."""

        def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
            ids = super().push_messages(messages)
            step("federation")
            return ids

    t0 = time.perf_counter()
    loggers = {name: logging.getLogger(name) for name in ("flwr", "anya_fl.server")}
    levels = {name: lg.level for name, lg in loggers.items()}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the server side (held-out evaluation) too, as the nodes
        for lg in loggers.values():
            lg.setLevel(logging.ERROR)
        history = run_federation(ProgressGrid(client_app, cfg.nodes, cfg.to_run_config()), cfg)
    finally:
        torch.set_num_threads(threads)
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
    step("replaying the chain through the reference estimators")
    comparison = fee_estimators(Path(cfg.run_dir), cfg)
    server = history[-1].global_metrics.get("fee", {})
    spent = [v for h in history for m in h.replied.values() if (v := m.get("fee.epsilon")) is not None]
    return {"seed": cfg.seed, "seconds": time.perf_counter() - t0, "run_dir": cfg.run_dir,
            "rounds_completed": len(history), "nodes_last_round": len(history[-1].replied),
            "epsilon_spent": float(max(spent, default=0.0)),
            "server_metrics": {m: float(server[m]) for m in ("hit_rate", "median_overpay_sat_vb", "pinball_loss")
                               if m in server},
            "comparison": comparison}


# ------------------------------------------------------------------------------------------------ aggregation

_GROUPS = {"overall": ("estimator",), "by_phase": ("phase", "estimator"), "core_confidence": ("confidence", "horizon")}
_MEANS = ("hit_rate", "median_overpay_sat_vb", "median_fee_sat_vb", "fallback_share")


def mean_comparison(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds' ``compare_fee_estimators`` dicts as one in the same schema (``render_tables`` draws it).

    Per record (estimator / phase / confidence, and k): each figure is the mean over the seeds that have
    it, with the per-seed values in ``<figure>_per_seed`` and the seeds in ``seeds``; ``rows`` is summed.
    """
    if not results:
        raise ConfigError("results", "no comparison to aggregate")
    out: dict[str, Any] = {
        "rows": sum(r["rows"] for r in results),
        "targets": sorted({int(k) for r in results for k in r["targets"]}),
        "estimators": list(results[0]["estimators"]),
        "phase_definition": results[0]["phase_definition"],
        "phase_rows": {p: sum(r["phase_rows"].get(p, 0) for r in results) for p in results[0]["phase_rows"]},
        "fallback_share": {name: _mean([r["fallback_share"][name] for r in results])
                           for name in results[0]["fallback_share"]},
        "by_profile": [],
        "seeds": [r.get("seed") for r in results],
        "federated_estimator": results[0].get("federated_estimator"),
    }
    for part, keys in _GROUPS.items():
        groups: dict[tuple, list[tuple[Any, dict[str, Any]]]] = {}
        for r in results:
            for rec in r[part]:
                groups.setdefault((*(rec[k] for k in keys), str(rec["k"])), []).append((r.get("seed"), rec))
        records = []
        for members in groups.values():
            rec = {k: v for k, v in members[0][1].items() if k not in _MEANS and k != "rows"}
            rec["rows"] = sum(m["rows"] for _, m in members)
            rec["seeds"] = [s for s, _ in members]
            for figure in _MEANS:
                if figure in members[0][1]:
                    values = [float(m[figure]) for _, m in members]
                    rec[figure] = _mean(values)
                    rec[f"{figure}_per_seed"] = values
            records.append(rec)
        out[part] = records
    return out


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def _cell(result: dict[str, Any], estimator: str, k: int | str) -> dict[str, Any] | None:
    return next((r for r in result["overall"] if r["estimator"] == estimator and str(r["k"]) == str(k)), None)


def goal(result: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """Whether the federated model hits >= HIT_GOAL at every k with less median overpayment than both
    reference estimators; ``misses``: one line per k and condition that fails."""
    fed, misses = keys["federated"], []
    for k in result["targets"]:
        ours = _cell(result, fed, k)
        if ours is None:
            continue
        if ours["hit_rate"] < HIT_GOAL:
            misses.append(f"k={k}: hit rate {ours['hit_rate']:.3f} < {HIT_GOAL:.2f}")
        for short in ("core", "mempool"):
            other = _cell(result, keys[short], k)
            if other is not None and not ours["median_overpay_sat_vb"] < other["median_overpay_sat_vb"]:
                misses.append(f"k={k}: median overpayment {ours['median_overpay_sat_vb']:.2f} sat/vB, not below "
                              f"{keys[short]} ({other['median_overpay_sat_vb']:.2f} sat/vB)")
    return {"hit_goal": HIT_GOAL, "met": not misses, "misses": misses}


def bench_metrics(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures in the bench JSON format (``{"name": {"value", "unit", "reference", "target"}}``).

    Per estimator (``fee.<federated|core|mempool>``): ``hit_min`` (lowest mean hit rate over k),
    ``overpay_median`` (mean over seeds of the median overpayment over all k), and ``hit.k<k>`` /
    ``overpay.k<k>``; each carries ``per_seed``. ``fee.goal_met``: 1 when the goal holds, else 0.
    """
    mean, out = result["mean"], {}
    for short, name in result["keys"].items():
        cells = {str(k): _cell(mean, name, k) for k in [*mean["targets"], "all"]}
        per_k = [c for k, c in cells.items() if k != "all" and c is not None]
        low = min(per_k, key=lambda c: c["hit_rate"])
        seeds_low = [min(vals) for vals in zip(*(c["hit_rate_per_seed"] for c in per_k), strict=True)] \
            if len({len(c["hit_rate_per_seed"]) for c in per_k}) == 1 else []
        target = HIT_GOAL if short == "federated" else None
        out[f"fee.{short}.hit_min"] = _metric(low["hit_rate"], "share", target, seeds_low)
        out[f"fee.{short}.overpay_median"] = _metric(cells["all"]["median_overpay_sat_vb"], "sat/vB", None,
                                                     cells["all"]["median_overpay_sat_vb_per_seed"])
        for c in per_k:
            out[f"fee.{short}.hit.k{c['k']}"] = _metric(c["hit_rate"], "share", target, c["hit_rate_per_seed"])
            out[f"fee.{short}.overpay.k{c['k']}"] = _metric(c["median_overpay_sat_vb"], "sat/vB", None,
                                                            c["median_overpay_sat_vb_per_seed"])
    out["fee.goal_met"] = _metric(1.0 if result["goal"]["met"] else 0.0, "bool", 1.0,
                                  [1.0 if v else 0.0 for v in result["goal"]["per_seed"].values()])
    return out


def _metric(value: float, unit: str, target: float | None, per_seed: Sequence[float]) -> dict[str, Any]:
    return {"value": float(value), "unit": unit, "reference": None, "target": target,
            "per_seed": [float(v) for v in per_seed]}


# ------------------------------------------------------------------------------------------------- rendering


def render_bench(result: dict[str, Any]) -> list[Any]:
    """Rich renderables: the mean tables (per k, per phase, Core per confidence), per seed, and the goal."""
    from rich.table import Table

    from anya_fl.fee_comparison import render_tables

    cfg = result["config"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    head = (f"fee bench: {cfg['transactions']:,} transactions, {cfg['nodes']} nodes, {cfg['rounds']} rounds, "
            f"DP ε {cfg['epsilon']:g}, {'screened ' if cfg['screening'] else ''}{cfg['strategy']}; "
            f"figures are the mean over seeds {seeds} (rows: all seeds together)")
    out: list[Any] = [head, *render_tables(result["mean"])]
    per_seed = Table(title="per seed: lowest hit rate over k, median overpayment over all k (sat/vB)",
                     title_justify="left")
    per_seed.add_column("seed", justify="left")
    per_seed.add_column("rows", justify="right")
    for short in SHORT_NAMES:
        per_seed.add_column(f"{short} hit min", justify="right")
        per_seed.add_column(f"{short} overpay", justify="right")
    per_seed.add_column("server hit rate", justify="right")
    per_seed.add_column("ε spent", justify="right")
    per_seed.add_column("goal", justify="left")
    for run in result["seeds"]:
        comp = run["comparison"]
        cells = []
        for short in SHORT_NAMES:
            name = result["keys"][short]
            hits = [c["hit_rate"] for c in comp["overall"] if c["estimator"] == name and c["k"] != "all"]
            cells += [f"{min(hits):.3f}", f"{_cell(comp, name, 'all')['median_overpay_sat_vb']:.2f}"]
        server = run["server_metrics"].get("hit_rate")
        cells += ["-" if server is None else f"{server:.3f}", f"{run['epsilon_spent']:.2f}",
                  "met" if result["goal"]["per_seed"][str(run["seed"])] else "missed"]
        per_seed.add_row(str(run["seed"]), f"{comp['rows']:,}", *cells)
    out.append(per_seed)
    g = result["goal"]
    if g["met"]:
        out.append(f"goal met: the federated model hits >= {g['hit_goal']:.0%} at every k and overpays less than "
                   f"both {CORE} and {MEMPOOL_SPACE} (means over seeds)")
    else:
        out.append(f"goal missed (>= {g['hit_goal']:.0%} hit at every k, less median overpayment than both "
                   "estimators; means over seeds):")
        out += [f"  - {m}" for m in g["misses"]]
    return out

