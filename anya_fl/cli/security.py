"""`anya-fl token` (create, list, revoke API tokens) and `anya-fl audit` (verify, show the audit log)."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.console import anya_home, console, err_console, table
from core.errors import ConfigError
from core.security.audit import TOKEN_CREATE, TOKEN_REVOKE, AuditLog
from core.security.tokens import RIGHTS, TokenStore

DEFAULT_STORE = anya_home() / "tokens.json"
DEFAULT_AUDIT_LOG = anya_home() / "audit.jsonl"

token_app = typer.Typer(help="API tokens: create one per client with a role, list them, revoke them.",
                        no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log: verify its chain, show its last records.",
                        no_args_is_help=True)

StoreOpt = Annotated[Path, typer.Option("--tokens", help="Token store (JSON, mode 0600).")]
LogOpt = Annotated[Path, typer.Option("--audit-log", help="Audit log (JSONL).")]


def _actor() -> str:
    """Who runs the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@token_app.command()
def create(
    role: Annotated[str, typer.Option("--role", help=f"One of {', '.join(RIGHTS)}.")],
    name: Annotated[str, typer.Option("--name", help="Who or what uses the token (e.g. node-3, grafana).")],
    store: StoreOpt = DEFAULT_STORE,
    log: LogOpt = DEFAULT_AUDIT_LOG,
) -> None:
    """Create a token; prints it once on stdout (only its salted hash is stored)."""
    token, rec = TokenStore(store.expanduser()).create(role, name)
    AuditLog(log.expanduser()).append(_actor(), TOKEN_CREATE, rec.id, {"name": rec.name, "role": rec.role})
    err_console.print(f"[bold yellow]token {rec.id} ({escape(rec.name)}, role {rec.role}) is shown only once: "
                      "store it now, it cannot be recovered[/]")
    console.print(token, markup=False, highlight=False, soft_wrap=True)


@token_app.command("list")
def list_(store: StoreOpt = DEFAULT_STORE) -> None:
    """List tokens (ids, names, roles; never secrets)."""
    records = TokenStore(store.expanduser()).list()
    if not records:
        console.print(f"no tokens in {escape(str(store.expanduser()))}")
        return
    rows = [[r.id, escape(r.name), r.role, r.created_at, r.revoked, r.revoked_at] for r in records]
    console.print(table("API tokens", ["id", "name", "role", "created (UTC)", "revoked", "revoked at"], rows))


@token_app.command()
def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (see `anya-fl token list`).")],
    store: StoreOpt = DEFAULT_STORE,
    log: LogOpt = DEFAULT_AUDIT_LOG,
) -> None:
    """Revoke a token; servers refuse it from their next request on."""
    rec = TokenStore(store.expanduser()).revoke(token_id)
    AuditLog(log.expanduser()).append(_actor(), TOKEN_REVOKE, rec.id, {"name": rec.name, "role": rec.role})
    console.print(f"revoked token {rec.id} ({escape(rec.name)}, role {rec.role})")


def _existing_log(log: Path) -> AuditLog:
    path = log.expanduser()
    if not path.is_file():
        raise ConfigError("log", f"no audit log at {path} (give --log PATH)")
    return AuditLog(path)


@audit_app.command()
def verify(log: LogOpt = DEFAULT_AUDIT_LOG) -> None:
    """Check the hash chain; exits 1 naming the first bad record."""
    audit = _existing_log(log)
    res = audit.verify()
    rows = [["log", str(audit.path)], ["status", "ok" if res.ok else "BAD"], ["good records", res.records],
            ["first bad record", res.first_bad], ["problem", res.problem or "-"], ["head hash", res.head]]
    console.print(table("audit log", ["field", "value"], rows))
    if not res.ok:
        err_console.print(f"[bold red]audit log is damaged at record {res.first_bad}: {escape(res.problem)}[/]")
        raise typer.Exit(1)


@audit_app.command()
def show(
    tail: Annotated[int, typer.Option("--tail", min=1, help="How many of the last records.")] = 20,
    log: LogOpt = DEFAULT_AUDIT_LOG,
) -> None:
    """Show the last records (not verified: run `anya-fl audit verify`)."""
    rows = []
    for line, rec in _existing_log(log).tail(tail):
        if rec is None:
            rows.append([line, "-", "-", "(not JSON)", "-", "-"])
            continue
        details = json.dumps(rec.get("details"), sort_keys=True, separators=(",", ":"))
        rows.append([rec.get("seq"), str(rec.get("at", ""))[:19], escape(str(rec.get("actor"))),
                     escape(str(rec.get("action"))), escape(str(rec.get("target"))), escape(details)])
    console.print(table(f"audit log (last {tail})", ["seq", "at (UTC)", "actor", "action", "target", "details"],
                        rows))
