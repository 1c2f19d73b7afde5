"""Replay a simulated chain block by block through the Core-style bucket fee estimator."""

from __future__ import annotations

import numpy as np

from core.bitcoin.fee_estimator import BucketFeeEstimator
from core.data.chain import START_HEIGHT, Chain

FALLBACK_FEE_SAT_VB = 20.0  # Bitcoin Core's historical -fallbackfee (0.0002 BTC/kvB) when it has no estimate


def bucket_estimates(chain: Chain, snapshot_index: np.ndarray, conf_target: np.ndarray) -> tuple[np.ndarray, float]:
    """Estimator answers for (snapshot, k) requests, each with the blocks mined before that snapshot.

    Returns the estimates (sat/vB) and the share of requests that needed the fallback fee.
    """
    snapshot_index = np.asarray(snapshot_index)
    conf_target = np.asarray(conf_target)
    est = BucketFeeEstimator()
    tx = chain.tx
    fee_rate = tx["fee_sat"] / tx["vsize"]
    entry = tx["entry_height"]
    confirm = tx["confirm_height"]
    arrival = tx["arrival_time"]
    by_confirm = np.argsort(np.where(confirm < 0, np.iinfo(np.int64).max, confirm), kind="stable")
    confirm_sorted = confirm[by_confirm]
    in_mp = np.zeros(chain.n_transactions, dtype=bool)

    req_time = chain.snapshot_time[snapshot_index]
    order = np.argsort(req_time, kind="stable")
    out = np.full(len(snapshot_index), np.nan)
    fallback = 0
    r = 0
    lo = ptr = 0

    def answer_until(t: float) -> None:
        nonlocal r, fallback
        while r < len(order) and req_time[order[r]] < t:
            i = order[r]
            v = est.estimate(int(conf_target[i]))
            if v is None:
                v = FALLBACK_FEE_SAT_VB
                fallback += 1
            out[i] = v
            r += 1

    for b, t_block in enumerate(chain.block_time):
        answer_until(t_block)
        h = START_HEIGHT + 1 + b
        end = int(np.searchsorted(arrival, t_block, side="right"))
        in_mp[ptr:end] = True
        ptr = end
        a, z = np.searchsorted(confirm_sorted, [h, h + 1])
        done = by_confirm[a:z]
        in_mp[done] = False
        while lo < ptr and not in_mp[lo]:
            lo += 1
        waiting = lo + np.flatnonzero(in_mp[lo:ptr])
        est.process_block(h, entry[done], fee_rate[done], entry[waiting], fee_rate[waiting])
    answer_until(np.inf)
    return out.astype(np.float32), fallback / max(len(out), 1)
