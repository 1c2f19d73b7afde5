"""Replay a simulated chain in time order through the reference fee estimators.

One mechanism walks the chain (:class:`ChainMempool`, :func:`walk_chain`): transactions enter the
mempool when they arrive and leave when a block confirms them, blocks in height order, and each fee
request (a snapshot time) is answered with exactly the blocks mined up to that time and the mempool
as it stands then. Two estimators are fed from it:

* ``bucket_estimates``: the Bitcoin-Core-style bucket estimator (``core.bitcoin.fee_estimator``), fed
  after every block with that block's transactions and the mempool left.
* ``projected_block_estimates``: mempool.space-style recommendations (``core.bitcoin.fee_recommend``)
  from the mempool at each request's snapshot time; the mempool minimum fee is the chain's min relay
  fee (the simulated mempool never fills up, so nothing is purged).

``replay_fee_estimates`` runs both, plus Core-style ``estimaterawfee`` answers at chosen success
thresholds, in one walk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from core.bitcoin.fee_estimator import BucketFeeEstimator
from core.bitcoin.fee_recommend import (
    N_PROJECTED_BLOCKS,
    estimate_for_target,
    projected_block_fee,
    projected_blocks_sorted,
    recommend_from_blocks,
)
from core.data.chain import START_HEIGHT, Chain
from core.errors import ConfigError

FALLBACK_FEE_SAT_VB = 20.0  # Bitcoin Core's historical -fallbackfee (0.0002 BTC/kvB) when it has no estimate
CORE = "Core-style buckets"
MEMPOOL_SPACE = "mempool.space-style"  # /api/v1/fees/recommended (whole sat/vB), level by target
MEMPOOL_SPACE_PRECISE = "mempool.space-style precise"  # /api/v1/fees/precise (0.001 sat/vB)
BLOCK_MEDIAN = "projected block k median"  # median fee of projected block k
PROJECTED_ESTIMATORS = (MEMPOOL_SPACE, MEMPOOL_SPACE_PRECISE, BLOCK_MEDIAN)
HORIZON_REACH = (("short", 12), ("medium", 48), ("long", 1008))  # blocks each Core horizon tracks


class ChainMempool:
    """The chain's mempool, walked forward one block at a time (indices are arrival order)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._arrival = chain.tx["arrival_time"]
        confirm = chain.tx["confirm_height"]
        self._by_confirm = np.argsort(np.where(confirm < 0, np.iinfo(np.int64).max, confirm), kind="stable")
        self._confirm_sorted = confirm[self._by_confirm]
        self._in = np.zeros(chain.n_transactions, dtype=bool)
        self._ptr = 0  # transactions [0, ptr) arrived by the last mined block
        self._lo = 0  # transactions before lo have all left
        self.blocks_mined = 0

    @property
    def height(self) -> int:
        """Height of the last mined block (START_HEIGHT before the first)."""
        return START_HEIGHT + self.blocks_mined

    def mine_next(self) -> np.ndarray:
        """Mine the next block: arrivals up to its time enter, its transactions leave; returns those."""
        b = self.blocks_mined
        h = START_HEIGHT + 1 + b
        end = int(np.searchsorted(self._arrival, self.chain.block_time[b], side="right"))
        self._in[self._ptr:end] = True
        self._ptr = end
        a, z = np.searchsorted(self._confirm_sorted, [h, h + 1])
        done = self._by_confirm[a:z]
        self._in[done] = False
        while self._lo < self._ptr and not self._in[self._lo]:
            self._lo += 1
        self.blocks_mined += 1
        return done

    def members(self, t: float | None = None) -> np.ndarray:
        """Transactions in the mempool (ascending): left after the last mined block, plus arrivals up to ``t``.

        ``t`` must lie between the last mined block's time and the next one's.
        """
        waiting = self._lo + np.flatnonzero(self._in[self._lo:self._ptr])
        if t is None:
            return waiting
        end = int(np.searchsorted(self._arrival, t, side="right"))
        return np.concatenate((waiting, np.arange(self._ptr, end))) if end > self._ptr else waiting


def walk_chain(mempool: ChainMempool, request_time: np.ndarray) -> Iterator[tuple[str, np.ndarray, float]]:
    """Walk the whole chain in time order.

    Yields ``("block", confirmed, block_time)`` right after each block is mined and ``("request", rows,
    t)`` for each group of requests sharing time ``t`` (``rows``: positions in ``request_time``), before
    any block mined after ``t``: a block at the very time of a request counts as mined before it, as in
    ``Chain.fee_labels``.
    """
    request_time = np.asarray(request_time, dtype=np.float64)
    order = np.argsort(request_time, kind="stable")
    sorted_time = request_time[order]
    r = 0

    def requests_before(limit: float) -> Iterator[tuple[str, np.ndarray, float]]:
        nonlocal r
        stop = int(np.searchsorted(sorted_time, limit, side="left")) if np.isfinite(limit) else len(order)
        while r < stop:
            g = int(np.searchsorted(sorted_time, sorted_time[r], side="right"))
            yield "request", order[r:g], float(sorted_time[r])
            r = g

    for t_block in mempool.chain.block_time[mempool.blocks_mined:]:
        yield from requests_before(float(t_block))
        done = mempool.mine_next()
        yield "block", done, float(t_block)
    yield from requests_before(np.inf)


def _requests(chain: Chain, snapshot_index: Any, conf_target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (snapshot index, k) request arrays."""
    s = np.asarray(snapshot_index)
    k = np.asarray(conf_target)
    for name, arr in (("snapshot_index", s), ("conf_target", k)):
        if arr.ndim != 1:
            raise ConfigError(name, f"expected a 1-D array, got shape {tuple(arr.shape)}")
        if arr.size and arr.dtype.kind not in "iu":
            raise ConfigError(name, f"expected integers, got dtype {arr.dtype}")
    if k.size != s.size:
        raise ConfigError("conf_target", f"length {k.size} does not match snapshot_index's length {s.size}")
    n_snap = len(chain.snapshot_time)
    if s.size and (s.min() < 0 or s.max() >= n_snap):
        raise ConfigError("snapshot_index", f"must be in [0, {n_snap}), got values {s.min()}..{s.max()}")
    if k.size and k.min() < 1:
        raise ConfigError("conf_target", f"must be >= 1 block, got {k.min()}")
    return s.astype(np.int64), k.astype(np.int64)


def core_horizon(k: int) -> str:
    """The shortest Core horizon tracking target k (the one ``estimateCombinedFee`` reads)."""
    for name, reach in HORIZON_REACH:
        if k <= reach:
            return name
    raise ConfigError("conf_target", f"must be at most {HORIZON_REACH[-1][1]} blocks, got {k}")


def replay_fee_estimates(
    chain: Chain,
    snapshot_index: Any,
    conf_target: Any,
    *,
    core: bool = True,
    core_thresholds: tuple[float, ...] = (),
    projected: bool = True,
) -> dict[str, np.ndarray]:
    """Every reference estimator's answer (sat/vB) per (snapshot, k) request, in one walk of the chain.

    Keys: ``CORE`` (``estimatesmartfee``) and ``CORE + " fallback"`` (bool: no estimate, answered with
    ``FALLBACK_FEE_SAT_VB``) when ``core``; ``f"{CORE} raw {thr}"`` and its ``" fallback"`` per threshold
    (``estimaterawfee`` on the shortest horizon tracking k); ``PROJECTED_ESTIMATORS`` when ``projected``.
    """
    s_idx, k_all = _requests(chain, snapshot_index, conf_target)
    for thr in core_thresholds:
        if not 0.0 < thr <= 1.0:
            raise ConfigError("core_thresholds", f"each must be in (0, 1], got {thr!r}")
    n = s_idx.size
    tx = chain.tx
    fee_rate = tx["fee_sat"] / tx["vsize"]
    vsize = tx["vsize"].astype(np.float64)
    entry = tx["entry_height"]
    feed_core = core or bool(core_thresholds)
    est = BucketFeeEstimator() if feed_core else None
    if est is not None and n and k_all.max() > est.max_confirms:
        raise ConfigError("conf_target", f"Core's estimator tracks at most {est.max_confirms} blocks, got {k_all.max()}")
    out: dict[str, np.ndarray] = {}
    core_keys = ([CORE] if core else []) + [f"{CORE} raw {thr:g}" for thr in core_thresholds]
    for key in core_keys:
        out[key] = np.full(n, np.nan)
        out[key + " fallback"] = np.zeros(n, dtype=bool)
    if projected:
        for key in PROJECTED_ESTIMATORS:
            out[key] = np.full(n, np.nan)
    block_vsize = chain.config.block_weight_limit / 4
    min_fee = float(chain.config.min_relay_sat_vb)
    n_blocks = max(N_PROJECTED_BLOCKS, int(k_all.max()) + 1 if n else 0)  # block k is never the stacked last one

    mempool = ChainMempool(chain)
    for kind, rows, t in walk_chain(mempool, chain.snapshot_time[s_idx]):
        if kind == "block":
            if est is not None:
                waiting = mempool.members()
                est.process_block(mempool.height, entry[rows], fee_rate[rows], entry[waiting], fee_rate[waiting])
            continue
        for i in rows.tolist():
            k = int(k_all[i])
            answers = []
            if core:
                answers.append((CORE, est.estimate(k)))
            answers.extend((f"{CORE} raw {thr:g}", est.estimate_raw(k, thr, core_horizon(k))) for thr in core_thresholds)
            for key, v in answers:
                if v is None:
                    v = FALLBACK_FEE_SAT_VB
                    out[key + " fallback"][i] = True
                out[key][i] = v
        if projected:
            members = mempool.members(t)
            rates = fee_rate[members]
            order = np.argsort(-rates, kind="stable")
            blocks = projected_blocks_sorted(rates[order], vsize[members][order], block_vsize, n_blocks)
            rec = recommend_from_blocks(blocks, min_fee, "whole", block_vsize)
            precise = recommend_from_blocks(blocks, min_fee, "precise", block_vsize)
            for i in rows.tolist():
                k = int(k_all[i])
                out[MEMPOOL_SPACE][i] = estimate_for_target(rec, k)
                out[MEMPOOL_SPACE_PRECISE][i] = estimate_for_target(precise, k)
                out[BLOCK_MEDIAN][i] = projected_block_fee(blocks, k, min_fee)
    return out


def bucket_estimates(chain: Chain, snapshot_index: np.ndarray, conf_target: np.ndarray) -> tuple[np.ndarray, float]:
    """Core-style estimator answers for (snapshot, k) requests, each with the blocks mined before that snapshot.

    Returns the estimates (sat/vB) and the share of requests that needed the fallback fee.
    """
    out = replay_fee_estimates(chain, snapshot_index, conf_target, projected=False)
    fallback = out[CORE + " fallback"]
    return out[CORE].astype(np.float32), float(fallback.sum()) / max(fallback.size, 1)


def projected_block_estimates(chain: Chain, snapshot_index: Any, conf_target: Any) -> dict[str, np.ndarray]:
    """mempool.space-style answers (sat/vB) per (snapshot, k) request from each snapshot's mempool.

    Keys: ``MEMPOOL_SPACE`` (``/fees/recommended``, level by target: 1 fastest, 2-3 half-hour, 4-6 hour,
    more economy), ``MEMPOOL_SPACE_PRECISE`` (``/fees/precise``, same mapping) and ``BLOCK_MEDIAN``
    (median fee of projected block k).
    """
    return replay_fee_estimates(chain, snapshot_index, conf_target, core=False)
