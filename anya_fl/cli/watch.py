"""`anya-fl watch` (network watch: telemetry, rule detectors, alerts) and `anya-fl alerts show|rules`."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from anya_fl.cli.node import RpcCookie, RpcUrl, RpcUser
from anya_fl.console import console, err_console, table

WEBHOOK_SECRET_ENV = "ANYA_FL_WEBHOOK_SECRET"
StateDir = Annotated[Path, typer.Option(help="Where the alert state, history, webhook outbox and detectors' "
                                             "memory live.")]
DEFAULT_STATE = Path(".anya-fl/watch")

alerts_app = typer.Typer(help="Alerts of the network watch: recent ones, and Prometheus alerting rules.",
                         no_args_is_help=True)
watch_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
WATCHLIST = "watchlist.json"


@watch_app.callback()
def watch(
    ctx: typer.Context,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    state_dir: StateDir = DEFAULT_STATE,
    interval: Annotated[float, typer.Option(help="Seconds between polls (peer-observer polls every 10 s).")] = 10.0,
    jsonl: Annotated[Path | None, typer.Option(help="Append every alert to this JSONL file.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="POST every alert here (JSON; HMAC-SHA256 of the body in "
                                                         "X-Anya-Signature, the secret from "
                                                         "ANYA_FL_WEBHOOK_SECRET).")] = None,
    cooldown: Annotated[float, typer.Option(help="Seconds a resolved condition stays quiet.")] = 3600.0,
    once: Annotated[bool, typer.Option(help="Poll once, print the telemetry and findings, and exit.")] = False,
    bitcoind_pid: Annotated[int | None, typer.Option(help="bitcoind's PID: its memory joins the telemetry.")] = None,
    datadir: Annotated[Path | None, typer.Option(help="Core's data directory: its disk's free space joins the "
                                                      "telemetry (default: --state-dir's disk).")] = None,
    registry: Annotated[Path | None, typer.Option(help="A model registry holding network@production (a run's "
                                                       "RUN_DIR/registry): its P(attack) joins the detectors.")] = None,
    trust: Annotated[list[Path] | None, typer.Option(help="Public key(s) whose model signatures are accepted "
                                                          "(the coordinator's model-signing.pub).")] = None,
) -> None:
    """Watch this node's P2P side: eclipse risk, partition and stale tip, forks, inbound floods, addr spam,
    a full mempool, disk and CPU, and the payments on the watch list (`anya-fl watch add TXID`: replaced or
    double-spent); alerts to the console, a JSONL file and a signed webhook.

    Credentials: --rpc-cookie, or --rpc-user with the password in ANYA_FL_RPC_PASSWORD. Ctrl-C stops.
    """
    if ctx.invoked_subcommand is not None:
        return
    from core.bitcoin.rpc import operator_rpc_config
    from core.errors import ConfigError

    if not rpc_url:
        raise ConfigError("rpc-url", "missing: Bitcoin Core's JSON-RPC URL, e.g. http://127.0.0.1:8332")
    if not interval > 0:
        raise ConfigError("interval", f"{interval} must be > 0 seconds")
    watcher, webhook = build_watch(operator_rpc_config(rpc_url, rpc_cookie, rpc_user), state_dir, jsonl=jsonl,
                                   webhook_url=webhook_url, cooldown=cooldown, bitcoind_pid=bitcoind_pid,
                                   datadir=datadir, model=network_model(registry, trust) if registry else None)
    if once:
        res = watcher.poll_once()
        rows = [[k, f"{v:g}"] for k, v in res.sample.as_dict().items()]
        console.print(table("telemetry", ["feature", "value"], rows))
        console.print(table("findings", ["detector", "key", "state", "message"],
                            [[f.detector, f.key, f.severity.name if f.active else "ok", f.message]
                             for f in res.findings]))
        for p in res.sample.problems:
            err_console.print(f"[yellow]{escape(p)}[/yellow]", soft_wrap=True)
        if webhook is not None:
            webhook.flush()
        return
    stop = threading.Event()
    console.print(f"watching {rpc_url} every {interval:g} s; alerts in {state_dir} (Ctrl-C stops)")
    while not stop.is_set():
        watcher.poll_once()
        if webhook is not None:
            webhook.flush()
        stop.wait(interval)


def network_model(registry: Path, trust: list[Path] | None) -> Any:
    """The signed ``network@production`` model of ``registry`` as a scorer: telemetry vector -> P(attack)
    (onnxruntime; the registry checks its hash and its signature against ``trust``)."""
    from core.errors import ConfigError
    from core.security.signing import load_public_key
    from core.serving.inference.engine import InferenceEngine
    from core.serving.registry import ModelRegistry

    if not (registry / "index.sqlite").is_file():
        raise ConfigError("registry", f"{registry} is not a registry directory (a simulation writes RUN_DIR/registry)")
    if not trust:
        raise ConfigError("trust", "missing: the public key the network model must be signed with "
                                   "(the coordinator's model-signing.pub)")
    engine = InferenceEngine()
    engine.load_from_registry(ModelRegistry(registry, trusted_keys=[load_public_key(p) for p in trust]),
                              "network@production")
    return lambda vector: float(engine.predict_batch("network", vector[None, :])[0])


def build_watch(rpc_config: Any, state_dir: Path, *, jsonl: Path | None = None, webhook_url: str | None = None,
                cooldown: float = 3600.0, bitcoind_pid: int | None = None, datadir: Path | None = None,
                model: Any = None) -> Any:
    """The network watch with its alert engine and sinks (the console, and the optional JSONL file and
    signed webhook) and its telemetry history (``<state_dir>/telemetry.sqlite``: the network task's rows);
    returns (watch, webhook sink or None). Used by `anya-fl watch` and `anya-fl node`."""
    from core.alerts import AlertEngine, JsonlSink, WebhookSink
    from core.bitcoin.network.telemetry_store import TelemetryStore, telemetry_store_path
    from core.bitcoin.network.watch import NetworkWatch
    from core.bitcoin.network.watchlist import WatchList
    from core.bitcoin.rpc import BitcoinRPC
    from core.errors import ConfigError

    state_dir.mkdir(parents=True, exist_ok=True)
    sinks: list[Any] = [_ConsoleSink()]
    if jsonl is not None:
        sinks.append(JsonlSink(jsonl))
    webhook = None
    if webhook_url:
        secret = os.environ.get(WEBHOOK_SECRET_ENV)
        if not secret:
            raise ConfigError("webhook-url", f"the HMAC secret comes from {WEBHOOK_SECRET_ENV}, which is not set")
        webhook = WebhookSink(webhook_url, secret.encode(), outbox_dir=state_dir / "outbox")
        sinks.append(webhook)
    engine = AlertEngine(state_dir / "alerts.json", sinks, cooldown_s=cooldown)
    disk = datadir or state_dir
    watcher = NetworkWatch(BitcoinRPC(rpc_config), engine, state_path=state_dir / "detectors.json",
                           resources=lambda: node_resources(bitcoind_pid, disk),
                           watchlist=WatchList(state_dir / WATCHLIST),
                           telemetry=TelemetryStore(telemetry_store_path(state_dir)), model=model)
    return watcher, webhook


def node_resources(pid: int | None, disk: Path) -> dict[str, float]:
    """The machine's CPU use and free memory, bitcoind's memory (when its PID is given) and the free space of
    Core's disk."""
    import psutil

    out = {"cpu_percent": psutil.cpu_percent(None), "disk_free_gb": psutil.disk_usage(str(disk)).free / 2**30,
           "memory_available_mb": psutil.virtual_memory().available / 2**20}  # for the -dbcache advice
    if pid:
        try:
            out["memory_rss_mb"] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            pass  # bitcoind gone or not ours to read: memory stays unknown (0)
    return out


class _ConsoleSink:
    """Alerts on the terminal, coloured by severity."""

    def deliver(self, alert: Any) -> None:
        colour = {"INFO": "cyan", "WARNING": "yellow", "CRITICAL": "red"}[alert.severity.name]
        console.print(f"[{colour}]{alert.severity.name}[/{colour}] {escape(alert.detector)}/{escape(alert.key)}: "
                      f"{escape(alert.title)} — {escape(alert.message)}", soft_wrap=True, highlight=False)


@watch_app.command("add")
def watch_add(
    item: Annotated[str, typer.Argument(help="A txid (64 hex) or an address to watch.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Watch a payment: an alert when it is replaced, double-spent or leaves the mempool unconfirmed."""
    from core.bitcoin.network.watchlist import WatchList

    state_dir.mkdir(parents=True, exist_ok=True)
    added = WatchList(state_dir / WATCHLIST).add(item)
    console.print(f"watching {escape(added)} (checked at every poll of `anya-fl watch --state-dir {state_dir}`)")


@watch_app.command("remove")
def watch_remove(
    item: Annotated[str, typer.Argument(help="A txid or address on the watch list.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Stop watching a payment."""
    from core.bitcoin.network.watchlist import WatchList
    from core.errors import ConfigError

    if not WatchList(state_dir / WATCHLIST).remove(item):
        raise ConfigError("watch", f"{item!r} is not on the watch list in {state_dir}")
    console.print(f"no longer watching {escape(item)}")


@watch_app.command("list")
def watch_list(state_dir: StateDir = DEFAULT_STATE) -> None:
    """The watched payments."""
    from core.bitcoin.network.watchlist import WatchList

    wl = WatchList(state_dir / WATCHLIST)
    console.print(table("watch list", ["item", "kind"], [[i, wl.kind(i)] for i in wl.items()]))


incident_app = typer.Typer(help="Incidents the operator marks as attacks: the network task's labels on this node "
                                "(minutes outside them count as normal).", no_args_is_help=True)
watch_app.add_typer(incident_app, name="incident")


def parse_time(text: str, field: str) -> float:
    """UNIX seconds, or ISO 8601 with a UTC offset (2026-12-03T08:00:00Z); else ConfigError naming ``field``."""
    from datetime import datetime

    from core.errors import ConfigError

    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(field, f"{text!r} is neither UNIX seconds nor an ISO 8601 time with an offset "
                                 "(e.g. 2026-12-03T08:00:00Z)") from None
    if when.tzinfo is None:
        raise ConfigError(field, f"{text} has no UTC offset; add Z or +HH:MM")
    return when.timestamp()


@incident_app.command("add")
def incident_add(
    start: Annotated[str, typer.Option(help="When it began: ISO 8601 with an offset, or UNIX seconds.")],
    end: Annotated[str, typer.Option(help="When it ended (after --start).")],
    kind: Annotated[str, typer.Option(help="What it was, e.g. eclipse, inbound-flood, partition.")],
    note: Annotated[str, typer.Option(help="Free text kept with it.")] = "",
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Mark a span as under attack (`anya-fl node`: --state-dir DATA_DIR/watch); the network task trains on
    the watch's telemetry with these labels, and a node with none declines that task."""
    from core.bitcoin.network.telemetry_store import TelemetryStore, telemetry_store_path

    with TelemetryStore(telemetry_store_path(state_dir)) as st:
        n = st.add_incident(parse_time(start, "start"), parse_time(end, "end"), kind, note)
    console.print(f"incident {n} marked ({escape(kind)}); it labels the telemetry in {state_dir}")


@incident_app.command("list")
def incident_list(state_dir: StateDir = DEFAULT_STATE) -> None:
    """The marked incidents, and how many recorded minutes each labels."""
    from datetime import UTC, datetime

    from core.bitcoin.network.telemetry_store import TelemetryStore, telemetry_store_path

    with TelemetryStore(telemetry_store_path(state_dir), readonly=True) as st:
        t, _ = st.rows()
        rows = [[i["id"], datetime.fromtimestamp(i["start"], UTC).isoformat(timespec="seconds"),
                 datetime.fromtimestamp(i["end"], UTC).isoformat(timespec="seconds"), i["kind"],
                 int(((t >= i["start"]) & (t < i["end"])).sum()), i["note"]] for i in st.incidents()]
    console.print(table(f"incidents ({len(t)} recorded telemetry rows)",
                        ["id", "start (UTC)", "end (UTC)", "kind", "rows", "note"], rows))


@incident_app.command("remove")
def incident_remove(
    incident_id: Annotated[int, typer.Argument(help="The id `anya-fl watch incident list` shows.")],
    state_dir: StateDir = DEFAULT_STATE,
) -> None:
    """Unmark an incident."""
    from core.bitcoin.network.telemetry_store import TelemetryStore, telemetry_store_path
    from core.errors import ConfigError

    with TelemetryStore(telemetry_store_path(state_dir)) as st:
        if not st.remove_incident(incident_id):
            raise ConfigError("incident", f"no incident {incident_id} in {state_dir}")
    console.print(f"incident {incident_id} removed")


@alerts_app.command("show")
def alerts_show(
    state_dir: StateDir = DEFAULT_STATE,
    last: Annotated[int, typer.Option(help="How many recent alerts.")] = 20,
) -> None:
    """The most recent alerts of the watch whose state is in --state-dir."""
    from datetime import UTC, datetime

    from core.alerts import AlertEngine
    from core.errors import ConfigError

    if not (state_dir / "alerts.json").is_file():
        raise ConfigError("state-dir", f"{state_dir} holds no alert state (run `anya-fl watch` first)")
    engine = AlertEngine(state_dir / "alerts.json", [])
    rows = [[datetime.fromtimestamp(a.time, UTC).isoformat(timespec="seconds"), a.severity.name, a.detector,
             a.key, a.title, a.message] for a in engine.recent(last)]
    console.print(table("alerts", ["time (UTC)", "severity", "detector", "key", "title", "message"], rows))


@alerts_app.command("rules")
def alerts_rules(
    out: Annotated[Path | None, typer.Option(help="Write the rules here (else print them).")] = None,
) -> None:
    """Prometheus alerting rules for Alertmanager, one per detector (on `anya_fl_alert_active`)."""
    from core.alerts import alertmanager_rules
    from core.bitcoin.network.detectors import DETECTOR_RULES
    from core.storage import atomic_write_bytes

    text = alertmanager_rules(DETECTOR_RULES)
    if out is None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    else:
        atomic_write_bytes(out, text.encode())
        console.print(f"wrote {len(DETECTOR_RULES)} rules to {out}")
