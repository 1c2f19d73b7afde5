"""A node's privacy ledgers: its DP accountant states per run, in files in its data directory.

``<data-dir>/privacy/<run-name>.json`` holds one accountant state per task (survives restarts and
resumes); :func:`check_lifetime_budget` sums the node's runs against its lifetime budget.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import DatasetError
from core.storage import atomic_write_json
from models.privacy.budget import LifetimeBudgetExceeded


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

    def other_runs(self) -> list[AccountantLedger]:
        """The ledgers of this node's other runs (same directory)."""
        return [AccountantLedger(self.path.parent.parent, p.stem) for p in sorted(self.path.parent.glob("*.json"))
                if p != self.path and not p.name.startswith(".")]


def check_lifetime_budget(ledger: AccountantLedger, planned: dict[str, float], budget: float,
                          spent_of: Callable[[dict | None], float]) -> None:
    """Refuse (:class:`LifetimeBudgetExceeded`) when a task's epsilon over the node's lifetime would pass ``budget``.

    Lifetime epsilon is the sum over the node's runs (basic composition across runs): what the other
    runs' ledgers in ``<data-dir>/privacy/`` spent plus ``planned[task]``, this run's total after the
    coming round. ``budget`` <= 0 means no lifetime limit.
    """
    if budget <= 0:
        return
    others = ledger.other_runs()
    for task, this_run in planned.items():
        before = sum(spent_of(o.get(task)) for o in others)
        if before + this_run > budget + 1e-9:
            raise LifetimeBudgetExceeded(f"privacy budget: task {task} would reach a lifetime epsilon of {before + this_run:.2f} "
                              f"over this node's budget of {budget:g} ({before:.2f} spent in {len(others)} earlier "
                              f"run(s), {this_run:.2f} in this run after the coming round); the node declines to train")
