"""Where a node's data comes from: the seam between the ClientApp and data sources.

Today: a dataset directory written by ``anya-fl data`` (deployment: the node's ``data-dir`` node
config; simulation: ``<run data-dir>/node-<partition-id>``). A Bitcoin Core source plugs in here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.data.datasets import TaskSplits, load_dataset
from core.errors import DatasetError


def node_data_dir(node_config: Mapping[str, Any], run_data_dir: str) -> Path:
    """The node's dataset directory from its node config (deployment) or its partition (simulation)."""
    if node_config.get("data-dir"):
        return Path(str(node_config["data-dir"]))
    if "partition-id" in node_config and run_data_dir:
        return Path(run_data_dir) / f"node-{int(node_config['partition-id'])}"
    raise DatasetError("data-dir: no data directory: set the node config data-dir (deployment) or the run config "
                       "data-dir with a partition-id (simulation)")


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> dict[str, TaskSplits]:
    return load_dataset(path)[0]


def load_node_data(directory: Path) -> dict[str, TaskSplits]:
    """The node's task datasets (cached per process while the files are unchanged)."""
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        raise DatasetError(f"data-dir: {directory} is not a dataset directory (no manifest.json); "
                           "write one with `anya-fl data`")
    return _load(str(directory), manifest.stat().st_mtime)
