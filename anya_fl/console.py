"""Shared terminal output: one rich console, progress bars, and tables from rows of dicts."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def _width() -> int | None:
    """Terminal width, or 120 columns when output goes to a file or pipe (rich would use 80)."""
    return None if sys.stdout.isatty() else 120


console = Console(width=_width())
err_console = Console(stderr=True)


def progress() -> Progress:
    """A progress display for long work (transient: it disappears when done)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def fmt(value: Any) -> str:
    """Compact human formatting for table cells."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], keep_first: bool = False) -> Table:
    """A rich table; numbers right-aligned; ``keep_first``: the first column (an id) is never wrapped or cut."""
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        if i == 0 and keep_first:
            t.add_column(c, justify="left", no_wrap=True, min_width=max((len(fmt(r[0])) for r in rows), default=0))
        else:
            t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def anya_home() -> Path:
    """The user's anya-fl directory (registry, tokens, audit log, FLWR_HOMEs): $ANYA_FL_HOME or ~/.anya-fl."""
    return Path(os.environ.get("ANYA_FL_HOME") or "~/.anya-fl").expanduser()
