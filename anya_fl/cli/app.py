"""The `anya-fl` Typer app and what its command groups share: federation defaults, list parsing, the
round progress display, the Flower home of each role."""

from __future__ import annotations

from pathlib import Path

import typer

from anya_fl.console import anya_home
from core.fedconfig import FederationConfig

_FED = FederationConfig()  # the one source of the federation defaults: the options read theirs from it

app = typer.Typer(
    name="anya-fl",
    help="Federated learning for Bitcoin node operators: DP-trained fraud, fee and anomaly models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _parse_floats(text: str, setting: str) -> tuple[float, ...]:
    from core.errors import ConfigError

    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(setting, f"{text!r} is not a comma-separated list of numbers") from None


def _round_display(prog, first: str, rounds: int):
    """A progress bar over rounds, fed the ServerApp's progress.json states."""
    job = prog.add_task(first, total=rounds)

    def show(state: dict) -> None:
        done = state["round"] - (0 if state["phase"] == "done" else 1)
        prog.update(job, completed=done, description=f"round {state['round']}/{rounds}: {state['phase']}")

    return show


def _flwr_home(role: str) -> Path:
    import os

    return Path(os.environ.get("FLWR_HOME") or anya_home() / f"flwr-home-{role}")
