"""Centralized quality report: each task non-private and with DP, next to reference baselines.

All variants train on the same simulated chain and are scored on the same later-in-time test split.
References: a tree ensemble and logistic regression (fraud), IsolationForest (anomaly), and a
Bitcoin-Core-style bucket estimator and mempool.space-style recommended fees (the five levels, and
the median of projected block k), replayed over the same chain (fee).
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core import scoring
from core.bitcoin.features import CHAIN_TASKS, TASK_SCHEMAS
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import FEE_TARGETS, TaskSplits, task_arrays
from core.data.replay import BLOCK_MEDIAN, CORE, MEMPOOL_SPACE, bucket_estimates, projected_block_estimates
from core.errors import ConfigError
from core.storage import atomic_write_json
from models.privacy.accounting import REPORT_ACCOUNTANT
from models.tasks import evaluate_outputs, task_spec, train_recipe
from models.training import DPConfig

# metrics shown per task, in order, with their column headings
TABLE_METRICS: dict[str, dict[str, str]] = {
    "fraud": {"pr_auc": "PR-AUC", "f1": "F1", "recall_at_1pct_fpr": "recall@1%FPR", "roc_auc": "ROC-AUC"},
    "fee": {**{f"hit_rate_k{k}": f"hit k={k}" for k in FEE_TARGETS}, "hit_rate": "hit all k",
            "median_overpay_sat_vb": "overpay sat/vB"},  # per-k overpayment: baseline.json, `fee_comparison`
    "anomaly": {"roc_auc": "ROC-AUC", "pr_auc": "PR-AUC"},
}


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of `anya-fl baseline`."""

    n_transactions: int = 400_000
    seed: int = 0
    epsilons: tuple[float, ...] = (1.0, 3.0, 8.0)
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    tasks: tuple[str, ...] = CHAIN_TASKS
    device: str = "auto"
    accountant: str = REPORT_ACCOUNTANT  # a one-off centralized report: the tightest accountant (PRV)

    def validate(self) -> BaselineConfig:
        if any(e <= 0 for e in self.epsilons):
            raise ConfigError("epsilon", f"{self.epsilons} must all be positive")
        if not 0 < self.delta < 1:
            raise ConfigError("delta", f"{self.delta} must be in (0, 1)")
        for t in self.tasks:
            task_spec(t)
        return self


def _train_variant(task: str, data: TaskSplits, cfg: BaselineConfig, epsilon: float | None) -> dict[str, Any]:
    dp = (DPConfig(target_epsilon=epsilon, delta=cfg.delta, max_grad_norm=cfg.max_grad_norm, accountant=cfg.accountant)
          if epsilon else None)
    metrics, result = train_recipe(task, data, data, model_seed=cfg.seed, seed=cfg.seed, dp=dp, device=cfg.device)
    return {
        "model": "MLP" if task != "anomaly" else "autoencoder",
        "private": epsilon is not None,
        "target_epsilon": epsilon,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "accountant": result.accountant,
        "noise_multiplier": result.noise_multiplier,
        "train_seconds": result.seconds,
        **metrics,
    }


def _references(task: str, data: TaskSplits, cfg: BaselineConfig, chain) -> list[dict[str, Any]]:
    from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
    from sklearn.linear_model import LogisticRegression

    schema = TASK_SCHEMAS[task]
    rows: list[dict[str, Any]] = []
    x_tr, x_va, x_te = data.x["train"], data.x["val"], data.x["test"]
    if task == "fraud":
        for name, est in (
            ("gradient-boosted trees", HistGradientBoostingClassifier(random_state=cfg.seed)),
            ("logistic regression", LogisticRegression(max_iter=2000)),
        ):
            t0 = time.perf_counter()
            est.fit(schema.normalize(x_tr), data.y["train"])
            p_va = est.predict_proba(schema.normalize(x_va))[:, 1]
            p_te = est.predict_proba(schema.normalize(x_te))[:, 1]
            thr = scoring.best_f1_threshold(data.y["val"], p_va)
            rows.append({"model": name, "private": False, "train_seconds": time.perf_counter() - t0,
                         **evaluate_outputs("fraud", p_te, x_te, data.y["test"], thr)})
    elif task == "anomaly":
        t0 = time.perf_counter()
        iso = IsolationForest(random_state=cfg.seed, n_estimators=200).fit(schema.normalize(x_tr))
        score = -iso.score_samples(schema.normalize(x_te))
        rows.append({"model": "IsolationForest", "private": False, "train_seconds": time.perf_counter() - t0,
                     **evaluate_outputs("anomaly", score, x_te, data.y["test"])})
    else:
        t0 = time.perf_counter()
        k = x_te[:, schema.index("conf_target_blocks")].astype(int)
        est, fallback = bucket_estimates(chain, data.index["test"], k)
        rows.append({"model": CORE, "private": False, "fallback_share": fallback,
                     "train_seconds": time.perf_counter() - t0, **evaluate_outputs("fee", est, x_te, data.y["test"])})
        t0 = time.perf_counter()
        projected = projected_block_estimates(chain, data.index["test"], k)
        seconds = time.perf_counter() - t0
        for name in (MEMPOOL_SPACE, BLOCK_MEDIAN):
            rows.append({"model": name, "private": False, "train_seconds": seconds,
                         **evaluate_outputs("fee", projected[name], x_te, data.y["test"])})
    return rows


def run_baseline(cfg: BaselineConfig, progress=None) -> dict[str, Any]:
    """Simulate, train every variant, and return the report (no files written)."""
    cfg = cfg.validate()
    t0 = time.perf_counter()
    chain = simulate_chain(ChainConfig(n_transactions=cfg.n_transactions, seed=cfg.seed))
    data = task_arrays(chain)
    steps = len(cfg.tasks) * (2 + len(cfg.epsilons))
    job = progress.add_task("baseline", total=steps) if progress else None

    def tick(desc: str) -> None:
        if progress:
            progress.update(job, advance=1, description=desc)

    report: dict[str, Any] = {
        "config": asdict(cfg),
        "chain": {
            "transactions": chain.n_transactions,
            "blocks": chain.n_blocks,
            "illicit_share": float(chain.tx["illicit"].mean()),
            "anomaly_share": float(chain.tx["anomaly"].mean()),
            "simulate_seconds": time.perf_counter() - t0,
        },
        "rows": {split: {t: data[t].size(split) for t in cfg.tasks} for split in ("train", "val", "test")},
        "tasks": {},
    }
    for task in cfg.tasks:
        rows = []
        if progress:
            progress.update(job, description=f"{task}: references")
        rows.extend(_references(task, data[task], cfg, chain))
        tick(f"{task}: non-private")
        rows.append(_train_variant(task, data[task], cfg, None))
        tick(f"{task}: DP")
        for eps in cfg.epsilons:
            rows.append(_train_variant(task, data[task], cfg, eps))
            tick(f"{task}: DP eps {eps:g}")
        report["tasks"][task] = rows
    report["targets"] = check_targets(report)
    report["seconds"] = time.perf_counter() - t0
    return report


def _find(rows: list[dict], model_prefix: str, eps: float | None = None) -> dict | None:
    for r in rows:
        if r["model"].startswith(model_prefix) and r.get("target_epsilon") == eps:
            return r
    return None


def _find_exact(rows: list[dict], model: str) -> dict | None:
    return next((r for r in rows if r["model"] == model), None)


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's quality targets, each with the measured numbers and met / missed."""
    out: list[dict[str, Any]] = []
    tasks = report["tasks"]
    if "fraud" in tasks:
        base, dp8 = _find(tasks["fraud"], "MLP"), _find(tasks["fraud"], "MLP", 8.0)
        if base and dp8:
            gap = (base["pr_auc"] - dp8["pr_auc"]) * 100
            out.append({"target": "fraud PR-AUC at eps 8 within 5 points of non-private",
                        "measured": f"{dp8['pr_auc']:.3f} vs {base['pr_auc']:.3f} ({gap:+.1f} points)", "met": gap <= 5})
    if "fee" in tasks:
        # references to beat on overpayment: Core-style and mempool.space-style (when the report has them)
        refs = [(short, r) for short, name in (("Core-style", CORE), ("mempool.space-style", MEMPOOL_SPACE))
                if (r := _find_exact(tasks["fee"], name))]
        names = " and ".join(short for short, _ in refs)
        for label, row in (("non-private", _find(tasks["fee"], "MLP")), ("DP eps 8", _find(tasks["fee"], "MLP", 8.0))):
            if row and refs:
                hits = [row[f"hit_rate_k{k}"] for k in (1, 3, 6)]
                ok = min(hits) >= 0.9 and all(row["median_overpay_sat_vb"] < r["median_overpay_sat_vb"] for _, r in refs)
                every_k = [k for k in FEE_TARGETS if f"hit_rate_k{k}" in row]
                out.append({"target": f"fee model ({label}) hit rate >= 90% at k=1,3,6 and less median overpayment than {names}",
                            "measured": "hit " + ", ".join(f"k={k} {row[f'hit_rate_k{k}']:.3f}" for k in every_k)
                            + f"; overpay {row['median_overpay_sat_vb']:.2f} vs "
                            + ", ".join(f"{short} {r['median_overpay_sat_vb']:.2f}" for short, r in refs) + " sat/vB",
                            "met": ok})
    if "anomaly" in tasks:
        iso = _find(tasks["anomaly"], "IsolationForest")
        for label, row in (("non-private", _find(tasks["anomaly"], "autoencoder")), ("DP eps 8", _find(tasks["anomaly"], "autoencoder", 8.0))):
            if iso and row:
                out.append({"target": f"anomaly autoencoder ({label}) ROC-AUC >= IsolationForest",
                            "measured": f"{row['roc_auc']:.3f} vs {iso['roc_auc']:.3f}", "met": row["roc_auc"] >= iso["roc_auc"]})
    return out


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """baseline.json and baseline.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": atomic_write_json(out_dir / "baseline.json", report), "png": out_dir / "baseline.png"}
    _plot(report, paths["png"])
    return paths


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.storage import atomic_write_bytes

    panels = [(t, m) for t in report["tasks"] for m in PLOT_METRICS[t]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (task, metric) in zip(axes[0], panels, strict=True):
        rows = report["tasks"][task]
        vals = [r[metric] for r in rows]
        colors = ["#888888" if not r["model"].startswith(("MLP", "autoencoder")) else
                  ("#1f77b4" if not r["private"] else "#ff7f0e") for r in rows]
        ax.barh(range(len(rows)), vals, color=colors)
        ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
        ax.invert_yaxis()
        top = 1.0 if metric != "median_overpay_sat_vb" else max(vals) * 1.15
        ax.set_xlim(0, top)
        ax.set_xlabel(TABLE_METRICS[task][metric] + (" (lower is better)" if metric.startswith("median_overpay") else ""))
        ax.set_title(task)
        for i, v in enumerate(vals):
            inside = v > 0.85 * top
            ax.text(v, i, f" {v:.3f} " if top <= 1 else f" {v:.2f} ", va="center", fontsize=8, ha="right" if inside else "left")
    fig.suptitle("anya-fl centralized quality (test split: later blocks); orange = DP, grey = reference")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


PLOT_METRICS = {"fraud": ["pr_auc"], "fee": ["hit_rate", "median_overpay_sat_vb"], "anomaly": ["roc_auc"]}


def _label(row: dict[str, Any]) -> str:
    if row.get("target_epsilon"):
        return f"{row['model']} DP eps {row['target_epsilon']:g}"
    if row["model"] in ("MLP", "autoencoder"):
        return f"{row['model']} non-private"
    return row["model"]


def table_rows(task: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows for the terminal and README tables."""
    metrics = TABLE_METRICS[task]
    cols = ["model", "epsilon", *metrics.values(), "train s"]
    out = []
    for r in rows:
        eps = r.get("epsilon")
        out.append([_label(r), eps if eps is not None else "inf", *[r.get(m) for m in metrics], round(r.get("train_seconds", 0.0), 1)])
    return cols, out


def markdown_tables(report: dict[str, Any]) -> str:
    """The report as Markdown tables (for the README)."""
    lines = []
    for task, rows in report["tasks"].items():
        cols, body = table_rows(task, rows)
        lines.append(f"**{task}** (test rows: {report['rows']['test'][task]:,})\n")
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in body:
            lines.append("| " + " | ".join(_md(v, c) for v, c in zip(r, cols, strict=True)) + " |")
        lines.append("")
    return "\n".join(lines)


def _md(v: Any, column: str) -> str:
    if isinstance(v, float):
        digits = {"train s": 1, "epsilon": 2}.get(column, 3)
        return f"{v:,.{digits}f}"
    return str(v)
