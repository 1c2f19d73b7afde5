"""Task datasets cut from a chain: time splits, node partitions, and the on-disk format.

* ``task_arrays`` turns a chain (or a node's share of it) into (x, y) arrays per task and split.
* Splits are by time, as in the Elliptic study: train on earlier blocks, validate and test on later
  ones. Fee labels whose look-ahead window crosses a split boundary are dropped (no leakage).
* ``partition_nodes`` gives each simulated node a non-IID share: transactions are dealt to nodes by
  the node's profile (exchange, merchant, hobbyist, miner), so category mix and illicit rate differ.
* ``save_dataset`` / ``load_dataset`` store task arrays in a directory with a schema version, so a
  node can be pointed at its data directory.
* ``held_out_shortfall`` says why a chain is too short to evaluate on; ``smallest_usable_chain`` finds
  the next size that is long enough for a seed (the error for a too-small chain names it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.bitcoin.features import CHAIN_TASKS, SCHEMA_VERSION, TASK_SCHEMAS, anomaly_rows, fee_rows
from core.data.categories import PROFILE_ORDER, affinity_matrix
from core.data.chain import Chain, ChainConfig, simulate_chain
from core.errors import ConfigError, DatasetError
from core.seeding import categorical, stream
from core.storage import atomic_write_json, atomic_write_npz

SPLITS = ("train", "val", "test")
FEE_TARGETS = (1, 2, 3, 6, 12)
DEFAULT_SPLIT = (0.6, 0.2, 0.2)
MIN_SPLIT_ROWS = 20  # rows each task needs in each split of the coordinator's held-out set
CHAIN_SIZE_STEP = 5_000  # granularity of the smallest usable chain size named in the error
CHAIN_SIZE_TRIES = 40  # sizes tried above the requested one before giving up
MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"


@dataclass
class TaskSplits:
    """x/y arrays of one task for train, val and test (y is the label; k for fee rows is in x)."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    index: dict[str, np.ndarray] | None = None  # chain transaction (fraud, anomaly) or snapshot (fee) index

    def size(self, split: str) -> int:
        return len(self.y[split])


def split_times(chain: Chain, fractions: tuple[float, float, float] = DEFAULT_SPLIT) -> tuple[float, float]:
    """Boundary times (train|val, val|test) at block times by cumulative transaction share."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError("split", f"{fractions} must be three positive fractions summing to 1")
    arrival = chain.tx["arrival_time"]
    q1, q2 = np.quantile(arrival, [fractions[0], fractions[0] + fractions[1]])
    bt = chain.block_time
    t1 = bt[min(int(np.searchsorted(bt, q1)), len(bt) - 1)]
    t2 = bt[min(int(np.searchsorted(bt, q2)), len(bt) - 1)]
    return float(t1), float(t2)


def task_arrays(
    chain: Chain,
    tx_index: np.ndarray | None = None,
    snapshot_index: np.ndarray | None = None,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    targets: tuple[int, ...] = FEE_TARGETS,
) -> dict[str, TaskSplits]:
    """x/y per task and split for the given transactions and snapshots (all when None)."""
    t1, t2 = split_times(chain, fractions)
    txi = np.arange(chain.n_transactions) if tx_index is None else np.asarray(tx_index)
    t_tx = chain.tx["arrival_time"][txi]
    tx_split = np.where(t_tx < t1, 0, np.where(t_tx < t2, 1, 2))

    snap_of_tx = chain.tx_snapshot()[txi]
    fraud_x = chain.tx_rows[txi]
    anomaly_x = anomaly_rows(chain.tx_rows[txi], chain.snapshot_rows[snap_of_tx])

    s_idx, k, y_fee = chain.fee_labels(targets)
    if snapshot_index is not None:
        keep = np.isin(s_idx, snapshot_index)
        s_idx, k, y_fee = s_idx[keep], k[keep], y_fee[keep]
    t_snap = chain.snapshot_time[s_idx]
    t_end = chain.label_block_end(s_idx, k)
    fee_split = np.where(t_end < t1, 0, np.where((t_snap >= t1) & (t_end < t2), 1, np.where(t_snap >= t2, 2, -1)))
    fee_x = fee_rows(chain.snapshot_rows[s_idx], k)

    out: dict[str, TaskSplits] = {}
    for task, x, y, split, index in (
        ("fraud", fraud_x, chain.tx["illicit"][txi].astype(np.float32), tx_split, txi),
        ("anomaly", anomaly_x, chain.tx["anomaly"][txi].astype(np.float32), tx_split, txi),
        ("fee", fee_x, y_fee, fee_split, s_idx),
    ):
        out[task] = TaskSplits(
            x={s: np.ascontiguousarray(x[split == i], dtype=np.float32) for i, s in enumerate(SPLITS)},
            y={s: np.ascontiguousarray(y[split == i], dtype=np.float32) for i, s in enumerate(SPLITS)},
            index={s: index[split == i] for i, s in enumerate(SPLITS)},
        )
    return out


@dataclass
class NodeShard:
    """One simulated node's share of the chain."""

    node_id: int
    profile: str
    tx_index: np.ndarray
    snapshot_index: np.ndarray


def partition_nodes(chain: Chain, num_nodes: int, seed: int = 0, snapshot_share: float = 0.6) -> list[NodeShard]:
    """Deal transactions to nodes by profile affinity (non-IID); each node sees a share of snapshots."""
    if num_nodes < 1:
        raise ConfigError("num_nodes", f"{num_nodes} must be at least 1")
    if not 0 < snapshot_share <= 1:
        raise ConfigError("snapshot_share", f"{snapshot_share} must be in (0, 1]")
    rng = stream(seed, "partition")
    profiles = [PROFILE_ORDER[i % len(PROFILE_ORDER)] for i in range(num_nodes)]
    aff = affinity_matrix(profiles)
    node_of_tx = categorical(rng, aff, chain.tx["category"])
    n_snap = len(chain.snapshot_time)
    shards = []
    for j in range(num_nodes):
        snaps = np.sort(rng.choice(n_snap, size=max(1, int(round(snapshot_share * n_snap))), replace=False))
        shards.append(NodeShard(j, profiles[j], np.flatnonzero(node_of_tx == j), snaps))
    return shards


def save_dataset(directory: str | Path, data: dict[str, TaskSplits], info: dict | None = None) -> Path:
    """Write task arrays and a manifest (schema version, columns, sizes) atomically."""
    d = Path(directory)
    arrays = {f"{t}.{part}.{s}": getattr(data[t], part)[s] for t in data for part in ("x", "y") for s in SPLITS}
    atomic_write_npz(d / ARRAYS, arrays)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "tasks": {t: {"columns": TASK_SCHEMAS[t].names, "rows": {s: data[t].size(s) for s in SPLITS}} for t in data},
        "info": info or {},
    }
    atomic_write_json(d / MANIFEST, manifest)
    return d


def load_dataset(directory: str | Path) -> tuple[dict[str, TaskSplits], dict]:
    """Read a dataset directory; refuse a missing file, another schema version or other columns."""
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"data directory {d} does not exist")
    mpath = d / MANIFEST
    if not mpath.is_file() or not (d / ARRAYS).is_file():
        raise DatasetError(f"data directory {d} lacks {MANIFEST} or {ARRAYS}; create it with `anya-fl data`")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{mpath}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{mpath}: schema_version {manifest.get('schema_version')!r}, this build reads {SCHEMA_VERSION}")
    out: dict[str, TaskSplits] = {}
    with np.load(d / ARRAYS) as z:
        for task, meta in manifest.get("tasks", {}).items():
            if task not in TASK_SCHEMAS or meta.get("columns") != TASK_SCHEMAS[task].names:
                raise DatasetError(f"{mpath}: task {task!r} has columns that do not match this build's schema")
            out[task] = TaskSplits(
                x={s: z[f"{task}.x.{s}"] for s in SPLITS},
                y={s: z[f"{task}.y.{s}"] for s in SPLITS},
            )
    return out, manifest


CLASS_NAMES = {"fraud": ("licit", "illicit"), "anomaly": ("normal", "anomalous"), "network": ("normal", "attack"),
               "liquidity": ("fails", "forwards")}


def held_out_shortfall(held_out: dict[str, TaskSplits], tasks: tuple[str, ...] = CHAIN_TASKS) -> str:
    """Why ``held_out`` cannot score ``tasks`` ('' when it can).

    Each task needs :data:`MIN_SPLIT_ROWS` rows in every split, and fraud and anomaly need both
    classes in every split (the fraud threshold is chosen on val; PR-AUC and ROC-AUC need both).
    """
    for task in tasks:
        for split in SPLITS:
            rows = held_out[task].size(split)
            if rows < MIN_SPLIT_ROWS:
                return f"only {rows} {task} row{'' if rows == 1 else 's'} in the {split} split"
            if task in CLASS_NAMES:
                positives = int(np.count_nonzero(held_out[task].y[split]))
                for name, count in zip(CLASS_NAMES[task], (rows - positives, positives), strict=True):
                    if count == 0:
                        return f"no {name} {task} row in the {split} split"
    return ""


def _chain_shortfall(transactions: int, seed: int, tasks: tuple[str, ...]) -> tuple[str, Chain, dict[str, TaskSplits]]:
    chain = simulate_chain(ChainConfig(n_transactions=transactions, seed=seed))
    held_out = task_arrays(chain)
    return held_out_shortfall(held_out, tuple(t for t in tasks if t in CHAIN_TASKS)), chain, held_out


def smallest_usable_chain(above: int, seed: int, tasks: tuple[str, ...] = CHAIN_TASKS, step: int = CHAIN_SIZE_STEP,
                          tries: int = CHAIN_SIZE_TRIES) -> int | None:
    """The smallest multiple of ``step`` above ``above`` whose chain (for ``seed``) gives every task rows in
    every split; None when none of the next ``tries`` sizes does.

    Splits are by time and snap to block times, so whether a size works depends on where the seed's
    blocks fall: it is found by simulating each candidate (a 40,000-transaction chain takes well under
    a second), not by a formula. Usable sizes are not monotone for every seed, hence "above".
    """
    n = (above // step + 1) * step
    for _ in range(tries):
        if not _chain_shortfall(n, seed, tasks)[0]:
            return n
        n += step
    return None


def write_federation_data(data_dir: str | Path, transactions: int, seed: int, nodes: int,
                          tasks: tuple[str, ...] = CHAIN_TASKS) -> list[str]:
    """Simulate a chain and write ``coordinator`` (held-out set) and ``node-<i>`` datasets; return profiles.

    Refuses, before writing anything, a chain too short to give every task rows in every split, and
    names the smallest larger size that works for ``seed``.
    """
    d = Path(data_dir)
    problem, chain, held_out = _chain_shortfall(transactions, seed, tasks)
    if problem:
        usable = smallest_usable_chain(transactions, seed, tasks)
        hint = (f"the smallest size above {transactions:,} that works with seed {seed} is {usable:,} (tried in steps "
                f"of {CHAIN_SIZE_STEP:,})" if usable is not None else
                f"no size up to {transactions + CHAIN_SIZE_STEP * CHAIN_SIZE_TRIES:,} works with seed {seed}")
        arrival_blocks = int(np.searchsorted(chain.block_time, chain.tx["arrival_time"][-1]))
        raise ConfigError("transactions", f"{transactions:,} transactions leave {problem} (they arrive over "
                                          f"{arrival_blocks} blocks and the splits are by time); {hint}")
    info = {"seed": seed, "transactions": transactions}
    save_dataset(d / "coordinator", held_out, {**info, "role": "coordinator"})
    shards = partition_nodes(chain, nodes, seed)
    for shard in shards:
        save_dataset(d / f"node-{shard.node_id}", task_arrays(chain, shard.tx_index, shard.snapshot_index),
                     {**info, "node_id": shard.node_id, "profile": shard.profile})
    return [s.profile for s in shards]
