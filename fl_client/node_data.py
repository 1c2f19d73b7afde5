"""Where a node's data comes from: the seam between the ClientApp and data sources.

Two sources, chosen by what the node's data directory holds:

* a dataset written by ``anya-fl data`` (``manifest.json``; deployment: the node's ``data-dir`` node
  config; simulation: ``<run data-dir>/node-<partition-id>``);
* the collector's store (``collector/store.sqlite``, written by ``anya-fl collect`` or by ``anya-fl node
  --rpc-url``): the node's own Bitcoin Core, split by time at every round, so a long-running node trains
  on fresh data. A task the store cannot supply (fraud without operator labels) is listed in
  :attr:`NodeData.unavailable` with the reason; the node trains the others. The network task comes from the
  watch's telemetry history (``<data-dir>/watch/telemetry.sqlite``) labelled by the operator's incidents
  (``anya-fl watch incident add``), the liquidity task from the Lightning store (``<data-dir>/lightning/
  lightning.sqlite``, written by ``anya-fl lightning collect``) labelled by the node's own balances. A
  Lightning-only node (no collector store) trains liquidity alone.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.collector.store import store_path
from core.data.datasets import TaskSplits, load_dataset
from core.errors import DatasetError


@dataclass(frozen=True)
class NodeData:
    """A node's task splits, and why it has none for the tasks it lacks."""

    splits: dict[str, TaskSplits]
    unavailable: dict[str, str] = field(default_factory=dict)
    source: str = "dataset"  # "dataset" | "collector"

    def __contains__(self, task: str) -> bool:
        return task in self.splits

    def __getitem__(self, task: str) -> TaskSplits:
        if task not in self.splits:
            raise DatasetError(f"{task}: this node has no {task} data "
                               f"({self.unavailable.get(task, 'not in its dataset')})")
        return self.splits[task]


def node_data_dir(node_config: Mapping[str, Any], run_data_dir: str) -> Path:
    """The node's dataset directory from its node config (deployment) or its partition (simulation)."""
    if node_config.get("data-dir"):
        return Path(str(node_config["data-dir"]))
    if "partition-id" in node_config and run_data_dir:
        return Path(run_data_dir) / f"node-{int(node_config['partition-id'])}"
    raise DatasetError("data-dir: no data directory: set the node config data-dir (deployment) or the run config "
                       "data-dir with a partition-id (simulation)")


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> NodeData:
    return NodeData(load_dataset(path)[0])


@functools.lru_cache(maxsize=4)
def _from_store(path: str, version: tuple[int, ...]) -> NodeData:
    from core.bitcoin.features import CHAIN_TASKS
    from core.bitcoin.network.telemetry_store import network_splits, node_telemetry_path
    from core.collector.datasets import task_splits_from_store
    from core.lightning.liquidity_splits import liquidity_splits, node_lightning_path

    if store_path(path).is_file():
        splits, summary = task_splits_from_store(path)
        unavailable = dict(summary.get("unavailable", {}))
    else:  # a Lightning-only node
        splits, unavailable = {}, {t: "no collector store (`anya-fl node --rpc-url` or `anya-fl collect` writes it)"
                                   for t in CHAIN_TASKS}
    for task, (rows, why) in (("network", network_splits(node_telemetry_path(path))),
                              ("liquidity", liquidity_splits(node_lightning_path(path)))):
        if rows is not None:
            splits[task] = rows
        else:
            unavailable[task] = why
    return NodeData(splits, unavailable, source="collector")


def _store_version(store: Path, *more: Path) -> tuple[int, ...]:
    """Changes whenever the collector or the watch writes (the databases or their write-ahead logs)."""
    out: list[int] = []
    for p in (x for s in (store, *more) for x in (s, s.with_name(s.name + "-wal"))):
        st = p.stat() if p.is_file() else None
        out += [st.st_mtime_ns, st.st_size] if st else [0, 0]
    return tuple(out)


def load_node_data(directory: Path) -> NodeData:
    """The node's task data: its dataset (cached while unchanged) or its collector store (re-read when it grows)."""
    manifest = directory / "manifest.json"
    if manifest.is_file():
        return _load(str(directory), manifest.stat().st_mtime)
    from core.bitcoin.network.telemetry_store import node_telemetry_path
    from core.lightning.liquidity_splits import node_lightning_path

    store, lightning = store_path(directory), node_lightning_path(directory)
    if store.is_file() or lightning.is_file():
        data = _from_store(str(directory), _store_version(store, node_telemetry_path(directory), lightning))
        if not data.splits:
            raise DatasetError(f"data-dir: the stores in {directory} have no training data yet "
                               f"({'; '.join(sorted(set(data.unavailable.values()))) or 'empty'})")
        return data
    raise DatasetError(f"data-dir: {directory} is not a dataset directory (no manifest.json) and holds no collector "
                       "store (collector/store.sqlite) or Lightning store (lightning/lightning.sqlite); write one "
                       "with `anya-fl data`, `anya-fl collect` or `anya-fl lightning collect`")
