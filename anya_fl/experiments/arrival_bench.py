"""`anya-fl bench network` (slow arrival): the slow-arrival forecast against the simulated node's truth.

Per seed (``SEEDS``) one simulated node (manual clock, a chain of about 30 simulated hours) is watched a poll per simulated minute
through the real RPC path. Its link saturates three times (``degraded_relay``, ``WINDOW_S`` each, ``GAP_S``
apart, the first after ``GAP_S``): pings grow, high-bandwidth peers go, and blocks arrive later the more the link
is saturated and the more of a block the node's mempool lacked (which it cannot see in advance). The watch's
forecaster learns online from the blocks it has timed so far (``arrival_forecast``); the forecast scored for a
block is the one the watch made at the poll before the block's announcement, with the model it had then.

Scored on the blocks announced from the third window's start (the first two are what it learns from), against
the truth (a block is slow when it joined the node's chain ``SLOW_BLOCK_S`` or more after it was mined), beside
two baselines that need no model: *persistence* (the next block is slow if the last timed block was) and the
``propagation`` detector's condition (3 of the last 6 timed blocks slow) at the same poll. Also how often the
label the node learns from (its observed delay, from the first announcement, to within a poll) agrees with the
truth, and by how many minutes the forecast's first warning precedes the first truly slow block's arrival in the
test window (negative: after it), and the same for the propagation rule; the seeds' test blocks are pooled,
the leads averaged. Keys: ``network.slow_arrival.{roc_auc, pr_auc, precision, recall,
persistence_roc_auc, persistence_precision, persistence_recall, rule_precision, rule_recall, label_agreement,
lead_minutes, rule_lead_minutes}``.
"""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anya_fl.experiments.network_bench import POLL_S, _node, _watch
from anya_fl.simnode import GENESIS_EPOCH
from core.bitcoin.network.arrival_forecast import SLOW_ARRIVAL_P
from core.bitcoin.network.propagation import RECENT_BLOCKS, SLOW_BLOCK_S, SLOW_BLOCKS
from core.scoring import pr_auc, roc_auc

TRANSACTIONS = 300_000  # a chain of about 32 simulated hours (seed 0)
WINDOW_S = 6 * 3600.0
GAP_S = 2 * 3600.0
WINDOWS = 3
SEEDS = (0, 1, 2)


def run_slow_arrival(seeds: tuple[int, ...] = SEEDS, step: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Each seed's node watched through its three degraded-relay windows; the test blocks of all pooled."""
    rows: list[tuple[Any, ...]] = []
    leads: list[float | None] = []
    rule_leads: list[float | None] = []
    for i, seed in enumerate(seeds):
        r, lead, rule_lead = _one_node(seed, None if step is None else lambda f, i=i: step((i + f) / len(seeds)))
        rows += r
        leads.append(lead)
        rule_leads.append(rule_lead)
    return score(rows) | {"seeds": list(seeds), "leads_minutes": leads, "rule_leads_minutes": rule_leads,
                          "lead_minutes": _mean(leads), "rule_lead_minutes": _mean(rule_leads)}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _one_node(seed: int, step: Callable[[float], None] | None) -> tuple[list[tuple[Any, ...]], float | None,
                                                                         float | None]:
    """(test rows, the forecast's lead, the propagation rule's lead) of one node (leads in minutes before the
    first truly slow arrival of the third window; None if it never warned there)."""
    node = _node(seed, TRANSACTIONS)
    try:
        t0 = node.now()
        starts = [t0 + GAP_S + k * (WINDOW_S + GAP_S) for k in range(WINDOWS)]
        for s in starts:
            node.inject_degraded_relay(s, duration_s=WINDOW_S)
        end = min(starts[-1] + WINDOW_S + GAP_S / 2, float(node.chain.block_time[-1]) - 600.0)
        polls: list[float] = []  # poll times (node seconds)
        forecast: list[float | None] = []  # the forecast P(slow) made at each poll
        persistence: list[float | None] = []  # 1 if the last timed block was slow
        rule: list[float] = []  # the propagation detector's condition
        first_warning: float | None = None
        first_rule: float | None = None
        with tempfile.TemporaryDirectory(prefix="anya-fl-arrival-") as d:
            watch = _watch(node, Path(d))
            total = int((end - node.now()) // POLL_S)
            for i in range(total):
                node.advance(POLL_S)
                result = watch.poll_once()
                t = node.now()
                p = watch.arrival_forecast.probability(result.sample.vector)
                recent = watch.propagation.recent
                polls.append(t)
                forecast.append(p)
                persistence.append(float(recent[-1].delay_s >= SLOW_BLOCK_S) if recent else None)
                rule.append(float(sum(a.delay_s >= SLOW_BLOCK_S for a in recent[-RECENT_BLOCKS:]) >= SLOW_BLOCKS))
                if first_warning is None and t >= starts[-1] and p is not None and p >= SLOW_ARRIVAL_P:
                    first_warning = t
                if first_rule is None and t >= starts[-1] and rule[-1]:
                    first_rule = t
                if step is not None:
                    step((i + 1) / total)
            history = list(watch.propagation.history)
        truth = {b["height"]: b for e in node.truth.network_events(detail=True) if e["kind"] == "degraded_relay"
                 for b in e["blocks"]}
    finally:
        node.stop()
    rows = []
    for a in history:  # every block timed with a context; its forecast was made at the poll before its announcement
        k = bisect.bisect_left(polls, a.announced - GENESIS_EPOCH) - 1
        if k < 0 or a.announced - GENESIS_EPOCH < starts[-1]:
            continue
        b = truth.get(a.height)
        true_delay = 0.0 if b is None else b["arrived"] - b["mined"]
        rows.append((forecast[k], persistence[k], rule[k], true_delay >= SLOW_BLOCK_S, a.delay_s >= SLOW_BLOCK_S,
                     a.height))
    slow = sorted(b["arrived"] for b in truth.values()
                  if b["mined"] >= starts[-1] and b["arrived"] - b["mined"] >= SLOW_BLOCK_S)

    def lead(warned: float | None) -> float | None:
        return None if warned is None or not slow else (slow[0] - warned) / 60

    return rows, lead(first_warning), lead(first_rule)


def _precision_recall(pred: np.ndarray, y: np.ndarray) -> tuple[float | None, float | None]:
    tp = float((pred & y).sum())
    return (tp / pred.sum() if pred.sum() else None), (tp / y.sum() if y.sum() else None)


def score(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The figures from (forecast, persistence, rule, truly slow, observed slow, height) per test block."""
    scored = [r for r in rows if r[0] is not None and r[1] is not None]
    y = np.array([r[3] for r in scored], dtype=bool)
    p = np.array([r[0] for r in scored], dtype=np.float64)
    last = np.array([r[1] for r in scored], dtype=np.float64)
    rule = np.array([r[2] for r in scored], dtype=bool)
    both = len(set(y.tolist())) == 2
    precision, recall = _precision_recall(p >= SLOW_ARRIVAL_P, y)
    pers_precision, pers_recall = _precision_recall(last >= 0.5, y)
    return {"blocks": len(scored), "slow": int(y.sum()), "unscored": len(rows) - len(scored),
            "roc_auc": roc_auc(y, p) if both else None, "pr_auc": pr_auc(y, p) if both else None,
            "precision": precision, "recall": recall,
            "persistence_roc_auc": roc_auc(y, last) if both else None,
            "persistence_precision": pers_precision, "persistence_recall": pers_recall,
            "rule_precision": _precision_recall(rule, y)[0], "rule_recall": _precision_recall(rule, y)[1],
            "label_agreement": float(np.mean([r[3] == r[4] for r in rows])) if rows else None}


def arrival_metrics(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The benchmark keys, in `anya-fl bench --json`'s shape (targets: the persistence baseline's figure)."""
    def key(name: str, unit: str = "", target: Any = None) -> tuple[str, dict[str, Any]]:
        return f"network.slow_arrival.{name}", {"value": r[name], "unit": unit, "target": target}

    return dict([key("roc_auc", target=r["persistence_roc_auc"]), key("pr_auc"),
                 key("precision", target=r["persistence_precision"]), key("recall", target=r["persistence_recall"]),
                 key("persistence_roc_auc"), key("persistence_precision"), key("persistence_recall"),
                 key("rule_precision"), key("rule_recall"), key("label_agreement"),
                 key("lead_minutes", "min", r["rule_lead_minutes"]), key("rule_lead_minutes", "min")])
