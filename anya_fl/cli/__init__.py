"""The `anya-fl` command: one module per command group; :func:`main` is the console script."""

from __future__ import annotations

import signal
import sys

from rich.markup import escape

from anya_fl.cli import bench, collect, coordinator, lightning, node, quality, serve, simln, simnode, simulate, watch
from anya_fl.cli.app import app
from anya_fl.cli.models import models_app
from anya_fl.cli.security import audit_app, token_app
from anya_fl.console import err_console
from core.errors import AnyaError

# `anya-fl --help` lists the commands in this order (roles first, then tools), then the groups
app.command()(simulate.simulate)
app.add_typer(coordinator.coordinator_app, name="coordinator")
app.command()(node.node)
app.command()(node.check)
app.command()(simnode.simnode)
app.command()(simln.simln)
app.command()(serve.serve)
app.add_typer(models_app, name="models")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.command()(quality.baseline)
app.command()(quality.data)
app.command()(bench.bench)
app.add_typer(collect.collect_app, name="collect")
app.add_typer(watch.watch_app, name="watch")
app.add_typer(watch.alerts_app, name="alerts")
app.add_typer(lightning.lightning_app, name="lightning")

__all__ = ["app", "main"]


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run `finally` blocks: the processes we started are stopped by PID


def main() -> None:
    """Entry point: user errors print one line, never a traceback; SIGTERM stops what we started."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        app()
    except AnyaError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
