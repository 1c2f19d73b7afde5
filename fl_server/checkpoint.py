"""Round checkpoints: global models, round, strategy state and metrics history, written atomically.

Layout: ``<run-dir>/checkpoints/round-0003/{models.npz,strategy.npz,state.json}`` and the pointer
``<run-dir>/checkpoints/LATEST``, rewritten atomically only after the round directory is complete, so
a crash at any moment leaves the previous complete round as the one to resume from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import DatasetError
from core.storage import atomic_write_bytes, atomic_write_json, atomic_write_npz
from fl_server.round_record import RoundRecord, history_from_dicts, history_to_dicts

LATEST = "LATEST"


@dataclass
class Checkpoint:
    """The state after a completed round."""

    round: int
    models: dict[str, np.ndarray]  # task-prefixed full state dicts (parameters and buffers)
    strategy: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. "m_t.<key>" for FedAdam
    history: list[RoundRecord] = field(default_factory=list)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write the round's directory, then point LATEST at it."""
    root = run_dir / "checkpoints"
    d = root / f"round-{ckpt.round:04d}"
    atomic_write_npz(d / "models.npz", ckpt.models)
    atomic_write_npz(d / "strategy.npz", ckpt.strategy)
    atomic_write_json(d / "state.json", {"round": ckpt.round, "history": history_to_dicts(ckpt.history)})
    atomic_write_bytes(root / LATEST, (d.name + "\n").encode())
    return d


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The latest complete checkpoint of a run, or None when the run has none yet."""
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    d = run_dir / "checkpoints" / pointer.read_text().strip()
    try:
        state = json.loads((d / "state.json").read_text())
        with np.load(d / "models.npz") as z:
            models = {k: z[k] for k in z.files}
        with np.load(d / "strategy.npz") as z:
            strategy = {k: z[k] for k in z.files}
        rnd, history = int(state["round"]), history_from_dicts(state["history"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{d}: checkpoint unreadable ({exc})") from None
    return Checkpoint(round=rnd, models=models, strategy=strategy, history=history)


def weights_digest(state: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict, in key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(state[key])
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
