"""Plots, tables and a self-contained HTML report for one federated run (``<run_dir>/metrics.json``).

Reads only the metrics dict the coordinator writes, its rounds as :class:`~fl_server.round_record.RoundRecord`
(and, optionally, a federated / centralized / local-only comparison dict, with the fee three-way table
under ``FEE_ESTIMATORS``), so it needs neither torch nor Flower. Every optional key may be missing: what
is absent is skipped, never guessed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from anya_fl.report_html import CSS as _CSS
from anya_fl.report_html import esc as _e
from anya_fl.report_html import figure as _figure
from anya_fl.report_html import fmt as _fmt
from anya_fl.report_html import html_table as _table
from anya_fl.report_html import img as _img
from anya_fl.report_html import pyplot as _pyplot
from anya_fl.report_html import save_png as _save
from core.health.agent_checker import SystemStage
from core.scoring import PRIMARY_METRIC, PROBABILITY_LOSSES
from core.storage import atomic_write_bytes
from fl_server.round_record import RoundRecord, history_from_dicts

PRIMARY = PRIMARY_METRIC

# Metrics of the comparison table, per task; lower is better for overpayment and the pinball loss.
COMPARISON_METRICS: dict[str, list[str]] = {
    "fraud": ["pr_auc"],
    "fee": ["pinball_loss", "hit_rate", "median_overpay_sat_vb"],
    "anomaly": ["roc_auc"],
    "network": ["pr_auc"],
    "liquidity": ["log_loss", "ece"],
}
COMPARISON_COLUMNS = [
    "task",
    "metric",
    "federated",
    "centralized",
    "local-only mean",
    "federated − local-only",
    "federated vs centralized (relative %)",
    "epsilon",
]
_VARIANT_NAMES = {"federated": "federated", "centralized": "centralized", "local_only_mean": "local-only"}
# Key of the comparison dict holding the fee three-way table (final global fee model vs Core-style vs
# mempool.space-style, ``anya_fl.fee_comparison.compare_fee_estimators``'s dict); every other key is a task.
FEE_ESTIMATORS = "fee_estimators"


# ----------------------------------------------------------------------------- small helpers


def _num(v: Any) -> float | None:
    """``v`` as a finite float, or None (bools, strings, NaN and inf are not metrics)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _history(metrics: dict) -> list[RoundRecord]:
    """The rounds of ``metrics``, sorted by round number."""
    raw = metrics.get("history")
    return sorted(history_from_dicts(raw if isinstance(raw, list) else []), key=lambda r: r.round)


def _rounds(history: Sequence[RoundRecord]) -> list[int]:
    return [r.round or i + 1 for i, r in enumerate(history)]


def run_tasks(metrics: dict) -> list[str]:
    """The run's tasks: config "tasks" (comma separated string or list), else those in the history."""
    raw = (metrics.get("config") or {}).get("tasks")
    if isinstance(raw, str):
        tasks = [t.strip() for t in raw.split(",") if t.strip()]
    elif isinstance(raw, list | tuple):
        tasks = [str(t).strip() for t in raw if str(t).strip()]
    else:
        tasks = []
    if tasks:
        return list(dict.fromkeys(tasks))
    seen: dict[str, None] = {}
    for r in _history(metrics):
        for t in r.global_metrics:
            seen[t] = None
    return list(seen)


def _natural_key(text: str) -> list[int | str]:
    """Sort key that puts node-2 before node-10 (digits compare as numbers)."""
    return [int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", text))]


def _series(history: Sequence[RoundRecord], block: Callable[[RoundRecord], Mapping[str, Any]], key: str,
            task: str | None = None) -> list[float]:
    """``block(rec)[key]`` (or ``block(rec)[task][key]``) per round; NaN where missing."""
    out = []
    for rec in history:
        src: Any = block(rec)
        if task is not None:
            src = src.get(task) or {}
        v = _num(src.get(key)) if isinstance(src, Mapping) else None
        out.append(math.nan if v is None else v)
    return out


def _global(rec: RoundRecord) -> Mapping[str, Any]:
    return rec.global_metrics


def _train(rec: RoundRecord) -> Mapping[str, Any]:
    return rec.train


def _federated_eval(rec: RoundRecord) -> Mapping[str, Any]:
    return rec.federated_eval


def _has_data(values: Iterable[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _node_epsilons(rec: RoundRecord, key: str) -> list[float]:
    """``key`` (e.g. "fraud.epsilon") of every node that replied in round ``rec``."""
    vals = []
    for m in rec.replied.values():
        v = _num(m.get(key))
        if v is not None:
            vals.append(v)
    return vals


def _max_epsilon(rec: RoundRecord, key: str) -> float | None:
    """Worst-case epsilon of one round: the aggregated train value, else the max over node replies."""
    agg = _num(rec.train.get(key))
    nodes = _node_epsilons(rec, key)
    candidates = [v for v in [agg, *nodes] if v is not None]
    return max(candidates) if candidates else None


def _unit_group(metric: str) -> tuple[int, str]:
    """Which panel (and y label) a global metric belongs to."""
    if "sat_vb" in metric:
        return 1, "overpayment (sat/vB, lower is better)"
    if "ratio" in metric:
        return 2, "overpay ratio (predicted / required fee rate)"
    if metric == "pinball_loss":
        return 3, "pinball loss of log fee rate (lower is better)"
    if metric in PROBABILITY_LOSSES:
        return 4, "log-loss, Brier score, calibration error (lower is better)"
    return 0, "rate or score (0 to 1)"





# ----------------------------------------------------------------------------- plots


def _round_axis(ax, rounds: Sequence[int]) -> None:
    """Integer round ticks; a single round still gets a visible range."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
    if len(rounds) <= 20:
        ax.set_xticks(list(rounds))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.grid(True, alpha=0.3)


def _plot_task(history: Sequence[RoundRecord], rounds: list[int], task: str):
    names: dict[str, None] = {}
    for rec in history:
        block = rec.global_metrics.get(task) or {}
        names.update({k: None for k, v in block.items() if _num(v) is not None})
    series = {m: _series(history, _global, m, task) for m in names}
    series = {m: s for m, s in series.items() if _has_data(s)}
    if not series:
        return None
    groups: dict[int, tuple[str, list[str]]] = {}
    for m in series:
        idx, label = _unit_group(m)
        groups.setdefault(idx, (label, []))[1].append(m)
    fig, axes = _figure(len(groups), figsize=(5.6 * len(groups), 5.0))
    for ax, idx in zip(axes[0], sorted(groups), strict=True):
        label, members = groups[idx]
        for m in members:
            ax.plot(rounds, series[m], marker="o", label=m + (" (primary)" if m == PRIMARY.get(task) else ""))
        _round_axis(ax, rounds)
        ax.set_ylabel(label)
        # below the axes: with five rates in [0, 1] no corner of the plot is free of lines
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.suptitle(f"{task}: global model per round, coordinator's held-out test set", wrap=True)
    return fig


def _composes(tasks: Sequence[str]) -> bool:
    """Whether the run's tasks share the node's transactions (fraud and anomaly: their budgets add up)."""
    return bool({"fraud", "anomaly"} & set(tasks))


def _plot_epsilon(history: Sequence[RoundRecord], rounds: list[int], tasks: list[str], config: dict):
    fig, axes = _figure(figsize=(10.0, 4.6))
    ax = axes[0][0]
    drawn = False
    keys = [(f"{t}.epsilon", t) for t in tasks]
    if _composes(tasks):
        keys.append(("epsilon-transactions", "transactions (fraud + anomaly, composed)"))
    markers = "os^Dv"
    for i, (key, label) in enumerate(keys):
        worst = [_max_epsilon(rec, key) for rec in history]
        worst_f = [math.nan if v is None else v for v in worst]
        if not _has_data(worst_f):
            continue
        drawn = True
        color = f"C{i}"
        style = ":" if key == "epsilon-transactions" else "-"
        # Tasks usually spend the same budget per round, so their lines overlap: distinct markers keep them apart.
        ax.plot(rounds, worst_f, style, marker=markers[i % len(markers)], markersize=8 - 1.5 * (i % 3),
                color=color, label=label)
        spread = [_node_epsilons(rec, key) for rec in history]
        lo = [min(v) if v else math.nan for v in spread]
        hi = [max(v) if v else math.nan for v in spread]
        if _has_data(lo):
            if len(rounds) > 1:
                ax.fill_between(rounds, lo, hi, color=color, alpha=0.15)
            else:
                ax.vlines(rounds, lo, hi, color=color, alpha=0.5, linewidth=6)
    if not drawn:
        _pyplot().close(fig)
        return None
    budget = _num(config.get("epsilon"))
    if budget is not None:
        ax.axhline(budget, color="black", linestyle="--", linewidth=1, label=f"budget per task: ε = {budget:g}")
    delta = _num(config.get("delta"))
    _round_axis(ax, rounds)
    ax.set_ylabel("ε spent, cumulative per node" + (f" (δ = {delta:g})" if delta is not None else ""))
    ax.set_ylim(bottom=0)
    ax.set_title("Privacy spent per round: max over nodes (line), min–max over nodes (band)", wrap=True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def _plot_nodes(history: Sequence[RoundRecord], rounds: list[int]):
    from matplotlib.ticker import MaxNLocator

    if not any(r.sampled or r.replied or r.failed for r in history):
        return None  # no node counts recorded
    replied = [float(len(r.replied)) for r in history]
    missing = [float(r.missing) for r in history]
    failed = [float(len(r.failed)) for r in history]
    sampled = [float(r.sampled) for r in history]
    bars = [("replied", replied, "#2ca02c"), ("failed (error reply)", failed, "#d62728"),
            ("missing (no reply in time)", missing, "#7f7f7f")]
    fig, axes = _figure(figsize=(7.5, 4.2))
    ax = axes[0][0]
    width = 0.8 / len(bars)
    for i, (name, vals, color) in enumerate(bars):
        xs = [r + (i - (len(bars) - 1) / 2) * width for r in rounds]
        ax.bar(xs, vals, width=width, color=color, label=name)
    ax.plot(rounds, sampled, "k_", markersize=18, mew=2, label="sampled")
    _round_axis(ax, rounds)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    top = max([v for _, vals, _ in bars for v in vals] + sampled + [1.0])
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel("nodes (count)")
    ax.set_title("Training replies per round: replied / failed / missing", wrap=True)
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    return fig


def _plot_loss(history: Sequence[RoundRecord], rounds: list[int], tasks: list[str]):
    panels = []
    for t in tasks:
        train = _series(history, _train, f"{t}.loss")
        fed = _series(history, _federated_eval, f"{t}.loss")
        if _has_data(train) or _has_data(fed):
            panels.append((t, train, fed))
    if not panels:
        return None
    fig, axes = _figure(len(panels), figsize=(4.8 * len(panels), 4.6))
    for ax, (task, train, fed) in zip(axes[0], panels, strict=True):
        if _has_data(train):
            ax.plot(rounds, train, "-", marker="o", label="train (weighted mean over nodes)")
        if _has_data(fed):
            ax.plot(rounds, fed, "--", marker="s", label="federated eval (nodes' local test data)")
        _round_axis(ax, rounds)
        ax.set_ylabel(f"{task} loss (lower is better)")
        ax.set_title(task, wrap=True)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Loss per round (the training objective)", wrap=True)
    return fig


def figures(metrics: dict) -> Iterator[tuple[str, Any]]:
    """The run's matplotlib figures, ``(file name, Figure)``, one at a time; figures without data are skipped.

    ``global_<task>.png`` for every task with global metrics, ``epsilon.png``, ``nodes.png`` and ``loss.png``.
    The caller saves and closes each (:func:`plot_rounds`).
    """
    history = _history(metrics)
    if not history:
        return
    rounds = _rounds(history)
    tasks = run_tasks(metrics)
    config = metrics.get("config") or {}
    builders = [(f"global_{t}.png", lambda t=t: _plot_task(history, rounds, t)) for t in tasks]
    builders += [("epsilon.png", lambda: _plot_epsilon(history, rounds, tasks, config)),
                 ("nodes.png", lambda: _plot_nodes(history, rounds)),
                 ("loss.png", lambda: _plot_loss(history, rounds, tasks))]
    for name, build in builders:
        fig = build()
        if fig is not None:
            yield name, fig


def plot_rounds(metrics: dict, out_dir: Path) -> list[Path]:
    """Per-round PNG figures (:func:`figures`) in ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    written = []
    for name, fig in figures(metrics):
        out_dir.mkdir(parents=True, exist_ok=True)
        written.append(_save(fig, out_dir / name))
    return written


# ----------------------------------------------------------------------------- tables


def _metric_label(metric: str) -> str:
    if metric.startswith("median_overpay_sat_vb"):
        return f"{metric} (sat/vB, lower is better)"
    if "overpay" in metric or "loss" in metric or metric in PROBABILITY_LOSSES:
        return f"{metric} (lower is better)"
    return f"{metric} (higher is better)"


def _local_mean(block: dict, metric: str) -> float | None:
    """The local-only mean of ``metric``: given, else the mean over the per-node local-only rows."""
    v = _num((block.get("local_only_mean") or {}).get(metric))
    if v is not None:
        return v
    vals = [_num(r.get(metric)) for r in block.get("local_only") or [] if isinstance(r, dict)]
    vals_f = [x for x in vals if x is not None]
    return sum(vals_f) / len(vals_f) if vals_f else None


def _epsilon_cell(block: dict) -> float | str | None:
    """One epsilon when every variant used the same (or only one says); else each variant's, as text."""
    eps: dict[str, Any] = {}
    for key, name in _VARIANT_NAMES.items():
        sub = block.get(key)
        if isinstance(sub, dict) and "epsilon" in sub:
            eps[name] = sub["epsilon"]
    values = {(_num(v) if v is not None else None) for v in eps.values()}
    if not eps:
        return None
    if len(values) == 1:
        return next(iter(values))
    return ", ".join(f"{n} {'non-private' if v is None else _fmt(float(v))}" for n, v in eps.items())


def comparison_rows(comparison: dict) -> list[list]:
    """Rows of the federated / centralized / local-only table, columns as in ``COMPARISON_COLUMNS``.

    Numbers stay numbers (None where unknown); the relative column is in percent,
    ``100 * (federated - centralized) / |centralized|`` (e.g. -3.2 means 3.2 % below centralized).
    Fee gets two rows: hit_rate and median_overpay_sat_vb (lower is better, said in the label).
    """
    rows: list[list] = []
    for task, block in comparison.items():
        if task == FEE_ESTIMATORS or not isinstance(block, dict):
            continue
        fed_block = block.get("federated") or {}
        metrics = COMPARISON_METRICS.get(task) or [k for k, v in fed_block.items() if k != "epsilon" and _num(v) is not None]
        eps = _epsilon_cell(block)
        for metric in metrics:
            fed = _num(fed_block.get(metric))
            cen = _num((block.get("centralized") or {}).get(metric))
            loc = _local_mean(block, metric)
            if fed is None and cen is None and loc is None:
                continue
            minus_local = fed - loc if fed is not None and loc is not None else None
            rel = 100.0 * (fed - cen) / abs(cen) if fed is not None and cen not in (None, 0.0) else None
            rows.append([task, _metric_label(metric), fed, cen, loc, minus_local, rel, eps])
    return rows


def format_comparison_rows(rows: list[list]) -> list[list[str]]:
    """``comparison_rows`` as display text (relative column as e.g. "-3.2 %")."""
    out = []
    for row in rows:
        cells = [_fmt(v) for v in row]
        rel = row[6]
        cells[6] = "–" if rel is None else f"{rel:+.1f} %"
        if row[5] is not None:
            cells[5] = f"{row[5]:+.4g}"
        out.append(cells)
    return out


def summarize(metrics: dict, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Headline numbers of a run.

    ``rounds``, ``final_round``, ``final_global`` (the last round's global metrics per task),
    ``total_seconds``, ``max_epsilon`` (per task, over rounds and nodes), ``max_epsilon_transactions``,
    ``failed_replies`` and ``missing_replies`` (summed over rounds), and ``node_names`` (Flower node id
    -> the name the report shows, :func:`node_names`; ``names`` when given).
    """
    history = _history(metrics)
    tasks = run_tasks(metrics)
    final_global: dict[str, dict[str, float]] = {}
    for task in tasks:
        for rec in reversed(history):
            block = rec.global_metrics.get(task)
            if block:
                final_global[task] = {k: float(v) for k, v in block.items() if _num(v) is not None}
                break

    def worst(key: str) -> float | None:
        vals = [v for v in (_max_epsilon(rec, key) for rec in history) if v is not None]
        return max(vals) if vals else None

    max_eps = {t: e for t in tasks if (e := worst(f"{t}.epsilon")) is not None}
    return {
        "rounds": len(history),
        "final_round": _rounds(history)[-1] if history else None,
        "final_global": final_global,
        "total_seconds": float(sum(_num(r.seconds) or 0.0 for r in history)),
        "max_epsilon": max_eps,
        "max_epsilon_transactions": worst("epsilon-transactions") if _composes(tasks) else None,
        "failed_replies": sum(len(r.failed) for r in history),
        "missing_replies": sum(r.missing for r in history),
        "node_names": dict(node_names(metrics) if names is None else names),
    }


def node_names(metrics: dict, key_names: Mapping[str, str] | None = None,
               profiles: Sequence[str] = ()) -> dict[str, str]:
    """The name an operator reads for every node id in ``metrics`` (replies, failures, screening events).

    The one place nodes are named; the console tables, ``report.html`` and ``summary.json`` all use it.
    Deployment: ``key_names`` (node id -> registered key file name, e.g. ``node-0`` for
    ``pki/nodes/node-0.pub``; :func:`core.security.pki.node_key_names`), the coordinator's own record, which a
    node cannot choose. Simulation: ``node-<partition> (<profile>)`` from the partition id Flower's
    Simulation Engine gives each node and the run's ``profiles``. Otherwise Flower's numeric node id.
    """
    key_names = key_names or {}
    history = _history(metrics)
    ids: dict[str, None] = {}
    partition: dict[str, int] = {}
    for rec in history:
        for node, m in rec.replied.items():
            ids[node] = None
            pid = _num(m.get("partition-id"))
            if pid is not None and pid >= 0 and pid == int(pid):
                partition[node] = int(pid)
        for event in [*rec.failed, *rec.screening]:
            ids[event.node] = None
    names = {}
    for node in ids:
        if node in key_names:
            names[node] = str(key_names[node])
        elif node in partition:
            pid = partition[node]
            names[node] = f"node-{pid}" + (f" ({profiles[pid]})" if pid < len(profiles) else "")
        else:
            names[node] = node
    return names


def _tasks_trained(tasks: Sequence[str], m: Mapping[str, float], declined: Mapping[str, str]) -> str:
    """"all", or the tasks a node trained and why it left the others (e.g. fraud without operator labels)."""
    trained = [t for t in tasks if t not in declined and float(m.get(f"{t}.trained", 1.0)) > 0]
    if len(trained) == len(tasks):
        return "all"
    left = [f"{t}: {declined.get(t, 'not trained')}" for t in tasks if t not in trained]
    return f"{', '.join(trained) or 'none'} ({'; '.join(left)})"


def node_epsilon_rows(metrics: dict, names: Mapping[str, str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Each node's cumulative epsilon at its latest reply (the last round it replied in), by name.

    ``names``: :func:`node_names` (default: computed from ``metrics`` alone). Rows are sorted by name.
    """
    history = _history(metrics)
    tasks = run_tasks(metrics)
    names = node_names(metrics) if names is None else names
    latest: dict[str, tuple[int, dict, dict[str, str]]] = {}
    for rnd, rec in zip(_rounds(history), history, strict=True):
        for node, m in rec.replied.items():
            latest[node] = (rnd, m, rec.tasks_declined.get(node, {}))
    composed = _composes(tasks)
    cols = ["node", "round of latest reply", *[f"{t} ε" for t in tasks],
            *(["transactions ε (fraud + anomaly)"] if composed else []), "tasks trained"]
    rows = []
    for node, (rnd, m, declined) in latest.items():
        rows.append([names.get(node, node), rnd, *[_num(m.get(f"{t}.epsilon")) for t in tasks],
                     *([_num(m.get("epsilon-transactions"))] if composed else []), _tasks_trained(tasks, m, declined)])
    return cols, sorted(rows, key=lambda r: _natural_key(r[0]))


# ----------------------------------------------------------------------------- HTML

def node_health_rows(history: Sequence[RoundRecord]) -> tuple[list[str], list[list[Any]]]:
    """Per round: nodes by stage, lowest readiness, declined nodes, largest RSS and least free memory."""
    cols = ["round", "stages of nodes that trained", "lowest readiness", "declined", "max RSS (MB)",
            "min free memory (MB)"]
    rows = []
    for rnd, rec in zip(_rounds(history), history, strict=True):
        nodes = [m for m in rec.replied.values() if "health.stage" in m]
        declined = len(rec.declined)
        if not nodes and not declined:
            continue
        counts: dict[str, int] = {}
        for m in nodes:
            stage = int(m["health.stage"])
            name = SystemStage(stage).label if stage in SystemStage._value2member_map_ else "?"
            counts[name] = counts.get(name, 0) + 1
        vals = {key: [v for m in nodes if (v := _num(m.get(key))) is not None]
                for key in ("health.readiness", "health.rss-mb", "health.memory-available-mb")}
        rows.append([rnd, ", ".join(f"{n} {k}" for k, n in counts.items()) or "–",
                     min(vals["health.readiness"], default=None), declined, max(vals["health.rss-mb"], default=None),
                     min(vals["health.memory-available-mb"], default=None)])
    return cols, rows


def _node_label(names: Mapping[str, str], node: Any) -> str:
    return "?" if node is None else names.get(str(node), str(node))


def _config_value(v: Any) -> Any:
    if isinstance(v, dict | list | tuple):
        return str(v)
    return v


def fee_estimator_rows(records: Sequence[Mapping[str, Any]], row_keys: Sequence[str],
                       targets: Sequence[int]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of one fee table: per group (``row_keys``), a hit-rate row and an overpayment row,
    one column per k and one for all k (records as ``compare_fee_estimators`` writes them)."""
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for r in records:
        if isinstance(r, Mapping):
            groups.setdefault(tuple(r.get(key) for key in row_keys), {})[str(r.get("k"))] = r
    cols = [*row_keys, "metric", "rows", *(f"k={k}" for k in targets), "all k"]
    rows: list[list[Any]] = []
    for key, by_k in groups.items():
        label = [f"{v:.0%}" if isinstance(v, float) else v for v in key]
        total = by_k.get("all", {}).get("rows")
        for metric, name in (("hit_rate", "hit rate"), ("median_overpay_sat_vb", "median overpay (sat/vB)")):
            cells = [_num(by_k[str(k)].get(metric)) if str(k) in by_k else None for k in [*targets, "all"]]
            rows.append([*(label if name == "hit rate" else [""] * len(label)), name,
                         total if name == "hit rate" else "", *cells])
    return cols, rows


def fee_estimator_html(result: Mapping[str, Any]) -> list[str]:
    """The report's fee section: overall, per congestion phase, and Core-style per confidence level."""
    targets = [int(k) for k in result.get("targets") or []]
    model = result.get("federated_estimator") or "the federated model"
    phases = "; ".join(f"{_e(p)}: {_e(d)}" for p, d in (result.get("phase_definition") or {}).items()
                       if p != "block_vsize")
    fallback = _num((result.get("fallback_share") or {}).get("Core-style buckets"))
    parts = ["<h2>Fee estimators on the same replay</h2>",
             f'<p class="note">{_e(model)} (the final global fee model'
             + (f", round {_e(result['round'])}" if result.get("round") is not None else "")
             + ") against Core-style buckets (<code>estimatesmartfee</code>) and mempool.space-style recommended "
             f"fees, on the coordinator's {_e(_fmt(result.get('rows')))} held-out fee test rows. A row is a hit when "
             "the estimate is at least the lowest rate that entered one of the next k blocks; overpayment is "
             "estimate − required on hits and 0 on misses, as its median."
             + (f" Core-style had no estimate (fallback fee) on {_e(f'{fallback:.1%}')} of rows." if fallback is not None
                else "") + "</p>"]
    for title, key, row_keys, text_cols in (("Per confirmation target", "overall", ["estimator"], 2),
                                            ("Per congestion phase", "by_phase", ["phase", "estimator"], 3),
                                            ("Core-style estimaterawfee per confidence level (shortest horizon "
                                             "tracking k)", "core_confidence", ["confidence"], 2)):
        records = result.get(key) or []
        if not records:
            continue
        cols, rows = fee_estimator_rows(records, row_keys, targets)
        n = len(row_keys) + 2  # labels, metric and rows columns; then one figure per k
        text = [[*(_fmt(v) if v is None or isinstance(v, int) else str(v) for v in row[:n]),
                 *("–" if v is None else f"{v:.3f}" if row[n - 2] == "hit rate" else f"{v:.2f}" for v in row[n:])]
                for row in rows]
        if key == "core_confidence":  # what share of rows each level answered with the fallback fee
            share = {f"{r['confidence']:.0%}": _num(r.get("fallback_share")) for r in records
                     if isinstance(r, Mapping) and r.get("k") == "all" and isinstance(r.get("confidence"), float)}
            cols.append("fallback share")
            text = [[*row, "" if row[1] != "hit rate" or share.get(row[0]) is None else f"{share[row[0]]:.1%}"]
                    for row in text]
        parts.append(f"<h3>{_e(title)}</h3>")
        if key == "by_phase" and phases:
            parts.append(f'<p class="note">{phases}.</p>')
        parts.append(_table(cols, text, raw=True, text_cols=text_cols))
    return parts


def write_html_report(metrics: dict, comparison: dict | None, plots: list[Path], out_path: Path, title: str,
                      names: Mapping[str, str] | None = None) -> Path:
    """One self-contained HTML page (PNG figures inline as base64, no scripts, no external resources).

    Results first (summary, comparison, figures), then the per-round and per-node details, and the run
    configuration last, collapsed. ``names``: how nodes are named (:func:`node_names`; default: from
    ``metrics`` alone).
    """
    history = _history(metrics)
    tasks = run_tasks(metrics)
    config = metrics.get("config") or {}
    names = node_names(metrics) if names is None else names
    summary = summarize(metrics, names)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
    ]

    # Summary.
    srows: list[list[Any]] = [
        ["rounds completed", summary["rounds"]],
        ["total seconds", summary["total_seconds"]],
        ["failed replies (all rounds)", summary["failed_replies"]],
        ["missing replies (all rounds)", summary["missing_replies"]],
    ]
    for t, eps in summary["max_epsilon"].items():
        srows.append([f"max ε spent, {t}", eps])
    if summary["max_epsilon_transactions"] is not None:
        srows.append(["max ε spent, transactions (fraud + anomaly)", summary["max_epsilon_transactions"]])
    for t, block in summary["final_global"].items():
        metric = PRIMARY.get(t)
        if metric in block:
            srows.append([f"final {t} {metric} (global model, held-out test)", block[metric]])
    parts += ["<h2>Summary</h2>", _table(["", "value"], srows)]

    # Comparison.
    if comparison:
        rows = comparison_rows(comparison)
        parts.append("<h2>Federated vs centralized vs local-only</h2>")
        if rows:
            parts.append(_table(COMPARISON_COLUMNS, format_comparison_rows(rows), raw=True, text_cols=2))
            parts.append('<p class="note">Relative difference = 100 × (federated − centralized) / |centralized|. '
                         "For overpayment a negative difference is an improvement.</p>")
        else:
            parts.append('<p class="note">No comparable metrics.</p>')

    # Fee: the federated fee model against the reference estimators on the same replay.
    fee = (comparison or {}).get(FEE_ESTIMATORS)
    if isinstance(fee, dict):
        parts += fee_estimator_html(fee)

    # Figures.
    if plots:
        parts.append("<h2>Figures</h2>")
        parts += [_img(p) for p in plots]

    # Local-only baselines, per node (the details behind the comparison's local-only mean).
    local_tables = []
    for task, block in (comparison or {}).items():
        if task == FEE_ESTIMATORS:
            continue
        local = [r for r in (block.get("local_only") or []) if isinstance(r, dict)] if isinstance(block, dict) else []
        if local:
            cols = list(dict.fromkeys(k for r in local for k in r))
            local_tables += [f"<h3>{_e(task)}</h3>", _table(cols, [[_config_value(r.get(c)) for c in cols] for r in local])]
    if local_tables:
        parts += ["<h2>Local-only models, per node</h2>", *local_tables]

    # Per round.
    if history:
        cols = ["round", *[f"{t} {PRIMARY.get(t, '')}".strip() for t in tasks],
                "nodes sampled", "nodes replied", "nodes failed", "nodes missing", "updates rejected",
                "updates flagged", "updates aggregated", "round seconds", "train seconds"]
        rrows = []
        for rnd, rec in zip(_rounds(history), history, strict=True):
            prim = [_num((rec.global_metrics.get(t) or {}).get(PRIMARY[t])) if t in PRIMARY else None for t in tasks]
            rrows.append([rnd, *prim, rec.sampled, len(rec.replied), len(rec.failed), rec.missing, len(rec.rejected),
                          len(rec.flagged), len(rec.kept), _num(rec.seconds), _num(rec.train_seconds)])
        parts += ["<h2>Per round</h2>",
                  '<p class="note">Primary metrics of the global models on the coordinator\'s held-out test set.</p>',
                  _table(cols, rrows)]

    # Epsilon per node.
    ecols, erows = node_epsilon_rows(metrics, names)
    parts.append("<h2>Privacy spent per node</h2>")
    if erows:
        parts.append('<p class="note">Cumulative ε of each node at its latest reply'
                     + (f" (δ = {_e(_fmt(_num(config.get('delta'))))})" if _num(config.get("delta")) is not None else "")
                     + (f"; budget per task ε = {_e(_fmt(_num(config.get('epsilon'))))}" if _num(config.get("epsilon")) is not None else "")
                     + ".</p>")
        parts.append(_table(ecols, erows))
    else:
        parts.append('<p class="note">No node replies recorded.</p>')

    # Node health (AgentChecker stage and resources in every reply).
    hcols, hrows = node_health_rows(history)
    parts.append("<h2>Node health per round</h2>")
    if hrows:
        parts.append('<p class="note">From the <code>health.*</code> figures each node\'s train reply carries '
                     "(AgentChecker stage and readiness, psutil resources); declined: nodes below the run's "
                     f"min-stage ({_e(config.get('min-stage', 'production'))}), which did not train.</p>")
        parts.append(_table(hcols, hrows))
    else:
        parts.append('<p class="note">No health figures recorded.</p>')

    # Update screening (rejected, flagged, clipped, excluded updates).
    parts.append("<h2>Update screening</h2>")
    events = [(rnd, e) for rnd, rec in zip(_rounds(history), history, strict=True) for e in rec.screening]
    if events:
        parts.append(_table(["round", "node", "event", "reason"],
                            [[rnd, _node_label(names, e.node), e.kind, e.reason] for rnd, e in events], text_cols=4))
    else:
        parts.append('<p class="note">No update was rejected, flagged, clipped or excluded'
                     + ("" if config.get("screening", True) else " (screening was off; malformed updates are "
                        "still rejected)") + ".</p>")

    # Failures.
    parts.append("<h2>Node failures</h2>")
    fails = [(rnd, f) for rnd, rec in zip(_rounds(history), history, strict=True) for f in rec.failed]
    if fails:
        items = []
        for rnd in dict.fromkeys(r for r, _ in fails):
            lis = "".join(
                f"<li>node <code>{_e(_node_label(names, f.node))}</code>"
                + (f" (code {_e(f.code)})" if f.code is not None else "")
                + f": {_e(f.reason)}</li>"
                for r, f in fails if r == rnd)
            items.append(f"<li>round {_e(rnd)}<ul>{lis}</ul></li>")
        parts.append(f"<ul>{''.join(items)}</ul>")
    else:
        parts.append('<p class="note">No node failures.</p>')

    # Run configuration, collapsed: it is long and rarely what a reader opens the report for.
    if config:
        parts += [f"<details><summary>Run configuration ({len(config)} settings)</summary>",
                  _table(["key", "value"], [[str(k), _config_value(v)] for k, v in config.items()]), "</details>"]
    parts.append("</body></html>")
    return atomic_write_bytes(Path(out_path), ("\n".join(parts) + "\n").encode("utf-8"))


def finish_report(run_dir: Path, metrics: dict, compare: bool, key_names: dict[str, str] | None = None,
                  kind: str = "simulation") -> None:
    """Print the run's tables and write plots, report.html and summary.json.

    ``key_names``: Flower node id -> registered key name (deployment; see ``anya_fl.cli.coordinator``).
    The simulation's centralized and local-only baselines run first when ``compare``.
    """
    from anya_fl.console import console, progress, table
    from core.bitcoin.features import TASKS
    from core.storage import atomic_write_json

    comparison = None
    if compare:
        from anya_fl.comparison import compare as run_compare

        with progress() as prog:
            comparison = run_compare(run_dir, metrics, prog)
        atomic_write_json(run_dir / "comparison.json", comparison)
    hist = history_from_dicts(metrics["history"])
    tasks = [t for t in TASKS if t in hist[-1].global_metrics]
    primary = PRIMARY_METRIC
    rows = [[h.round, *[h.global_metrics[t][primary[t]] for t in tasks], len(h.replied), len(h.failed),
             round(h.seconds, 1)] for h in hist]
    console.print(table("global models on the coordinator's held-out set, per round",
                        ["round", *[f"{t} {primary[t]}" for t in tasks], "nodes ok", "declined", "seconds"], rows))
    if comparison:
        eps = max((v["federated"].get("epsilon", 0.0) for t, v in comparison.items() if t != FEE_ESTIMATORS),
                  default=0.0)
        rows = [[r[0], r[1].replace(" (higher is better)", " ↑").replace(" (lower is better)", " ↓")
                 .replace(" (sat/vB, lower is better)", " sat/vB ↓"), *r[2:6],
                 f"{r[6]:+.1f} %" if isinstance(r[6], float) else "-"] for r in comparison_rows(comparison)]
        console.print(table(f"federated vs centralized vs local-only (DP, epsilon <= {eps:.2f} each, same test set)",
                            ["task", "metric", "federated", "centralized", "local-only mean", "fed - local",
                             "fed vs central"], rows))
        if isinstance(comparison.get(FEE_ESTIMATORS), dict):
            from anya_fl.fee_comparison import render_tables

            fee = comparison[FEE_ESTIMATORS]
            console.print(f"fee: the final global fee model (round {fee.get('round', '?')}) against the reference "
                          "estimators, same replay, coordinator's held-out fee test rows")
            for t in render_tables(fee):
                console.print(t)
    profiles = json.loads((run_dir / "run.json").read_text()).get("profiles", []) if (run_dir / "run.json").is_file() else []
    names = node_names(metrics, key_names, profiles)
    console.print(table("epsilon spent per node (whole run)", *node_epsilon_rows(metrics, names)))
    plots = plot_rounds(metrics, run_dir / "plots")
    html = write_html_report(metrics, comparison, plots, run_dir / "report.html", title=f"anya-fl {kind} {run_dir.name}",
                             names=names)
    summary = summarize(metrics, names)
    atomic_write_json(run_dir / "summary.json", summary)
    console.print(f"wrote {run_dir / 'metrics.json'}, {len(plots)} plots in {run_dir / 'plots'}, and {html}")
