"""A node's DP accountant states, kept in a file in its data directory (survives restarts and resumes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import DatasetError
from core.storage import atomic_write_json


class AccountantLedger:
    """Accountant state per task for one run, at ``<data-dir>/privacy/<run-name>.json``."""

    def __init__(self, data_dir: Path, run_name: str) -> None:
        self.path = data_dir / "privacy" / f"{run_name}.json"
        self.states: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.states = json.loads(self.path.read_text())
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{self.path}: privacy ledger is not valid JSON ({exc.msg}); refusing to "
                                   "train without knowing the budget already spent") from None

    def get(self, task: str) -> dict | None:
        return self.states.get(task)

    def record(self, task: str, state: dict | None) -> None:
        if state is not None:
            self.states[task] = state

    def save(self) -> None:
        atomic_write_json(self.path, self.states)
