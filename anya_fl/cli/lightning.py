"""`anya-fl lightning collect|report`: a routing node's channel history on the node, and its health report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from anya_fl.console import console, err_console, table

lightning_app = typer.Typer(help="Lightning routing nodes (LND or Core Lightning, read-only): channel history and "
                                 "health. Nothing leaves the node.", no_args_is_help=True)

LndUrl = Annotated[str | None, typer.Option(help="LND's REST URL, e.g. https://127.0.0.1:8080.")]
TlsCert = Annotated[Path | None, typer.Option(help="LND's tls.cert (the only certificate trusted for --lnd-url).")]
Macaroon = Annotated[Path | None, typer.Option(help="An LND macaroon file; readonly.macaroon is enough.")]
ClnSocket = Annotated[Path | None, typer.Option(help="Core Lightning's JSON-RPC socket (<lightning-dir>/<network>/"
                                                     "lightning-rpc).")]
StateDir = Annotated[Path, typer.Option(help="Where the channel history is kept (lightning.sqlite).")]


def lightning_source(lnd_url: str | None, tls_cert: Path | None, macaroon: Path | None,
                     cln_socket: Path | None) -> Any:
    """The node the flags name: LND over REST or Core Lightning over its socket (exactly one)."""
    from core.errors import ConfigError

    if bool(lnd_url) == bool(cln_socket):
        raise ConfigError("lnd-url", "give either --lnd-url (with --tls-cert and --macaroon) or --cln-socket")
    if cln_socket is not None:
        from core.lightning.cln import CLNClient, CLNConfig

        return CLNClient(CLNConfig(socket_path=cln_socket))
    for name, value in (("tls-cert", tls_cert), ("macaroon", macaroon)):
        if value is None:
            raise ConfigError(name, "missing: LND over REST needs --tls-cert and --macaroon")
        if not value.is_file():
            raise ConfigError(name, f"{value} is not a file")
    from core.lightning.lnd import LNDClient, LNDConfig

    assert tls_cert is not None and macaroon is not None and lnd_url is not None
    return LNDClient(LNDConfig(url=lnd_url, tls_cert=tls_cert, macaroon=macaroon))


def collect_once(source: Any, state_dir: Path, now: float, failures: list[Any] | None = None,
                 lookback_s: float = 7 * 86_400.0) -> tuple[int, int]:
    """One poll into ``state_dir``'s store: every channel's snapshot, the forwards since the last one stored (or
    ``lookback_s`` on a new store) and ``failures`` heard meanwhile (LND keeps no history of failed forwards: they
    come from its HTLC event stream while we listen). Returns (channels, new forwards)."""
    from core.lightning.store import LightningStore, lightning_store_path

    with LightningStore(lightning_store_path(state_dir)) as store:
        last = store.last_forward_time()
        since = now - lookback_s if last is None else last
        height = source.info().block_height
        channels = source.channels()
        forwards = source.forwards(since, now + 1.0)
        return store.record(now, channels, [*forwards, *(failures or [])], block_height=height)


@lightning_app.command("collect")
def collect(
    state_dir: StateDir = Path("runs/lightning"),
    lnd_url: LndUrl = None,
    tls_cert: TlsCert = None,
    macaroon: Macaroon = None,
    cln_socket: ClnSocket = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 60.0,
    once: Annotated[bool, typer.Option(help="Poll once and exit.")] = False,
    metrics_port: Annotated[int, typer.Option(help="Serve the channel figures on http://127.0.0.1:PORT/metrics "
                                                   "(Prometheus; 0: off).")] = 0,
) -> None:
    """Poll the node's channels and forwards into STATE_DIR/lightning.sqlite (Ctrl-C stops).

    LND keeps settled forwards only; its failed ones are heard on its HTLC event stream between polls, so a
    failure while the collector was stopped is not seen. Core Lightning keeps both."""
    from core.errors import ConfigError

    if not interval > 0:
        raise ConfigError("interval", f"{interval} must be > 0 seconds")
    if not 0 <= metrics_port <= 65535:
        raise ConfigError("metrics-port", f"{metrics_port} must be a port 1-65535 (0: off)")
    source = lightning_source(lnd_url, tls_cert, macaroon, cln_socket)
    info = source.info()
    server = metrics_server(state_dir, metrics_port) if metrics_port and not once else None
    try:
        _collect_loop(source, info, state_dir, interval, once)
    finally:
        if server is not None:
            server.stop()


def metrics_server(state_dir: Path, port: int) -> Any:
    """/metrics with the channel figures (``core.lightning.metrics``) on 127.0.0.1:``port``, in a thread."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from core.health.http import BackgroundServer
    from core.lightning.metrics import ChannelCollector, store_rows

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChannelCollector(store_rows(state_dir)))
    app = FastAPI(title="anya-fl lightning metrics", version="1")

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    server = BackgroundServer(app, "127.0.0.1", port).start()
    console.print(f"channel metrics: http://127.0.0.1:{server.port}/metrics")
    return server


def _collect_loop(source: Any, info: Any, state_dir: Path, interval: float, once: bool) -> None:
    from core.errors import AnyaError

    console.print(f"{escape(info.alias)} ({info.implementation} {escape(info.version)}), block {info.block_height}")
    listens = info.implementation == "lnd"  # between polls, listen to LND's HTLC events for failed forwards
    failures: list[Any] = []
    while True:
        try:
            channels, added = collect_once(source, state_dir, time.time(), failures)
            failures = []
            console.print(f"{time.strftime('%H:%M:%S')} {channels} channels, {added} new forwards")
        except AnyaError as exc:  # a node that stops answering: say so and try again at the next poll
            if once:
                raise
            err_console.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
        if once:
            return
        if listens:
            try:
                failures = source.htlc_events(interval)
            except AnyaError as exc:
                err_console.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
                time.sleep(interval)
        else:
            time.sleep(interval)


@lightning_app.command("report")
def report(
    state_dir: StateDir = Path("runs/lightning"),
    out: Annotated[Path | None, typer.Option(help="Directory for channels.png and channels.html (default: "
                                                  "STATE_DIR/report).")] = None,
    days: Annotated[float, typer.Option(help="Forwards over this many days before the newest snapshot.")] = 7.0,
) -> None:
    """Channel health from the collected history: tables, a PNG and an HTML page."""
    from anya_fl.lightning_report import SHORT_COLUMNS, finding_rows, table_rows, write_report
    from core.errors import ConfigError

    if not 0 < days <= 365:
        raise ConfigError("days", f"{days} must be in (0, 365]")
    result = write_report(state_dir, out or state_dir / "report", days)
    console.print(table(f"channels ({len(result.rows)}; forwards over {days:g} days; the page has the peers)",
                        SHORT_COLUMNS, table_rows(result.rows, short=True), keep_first=True))
    findings = finding_rows(result.rows)
    if findings:
        console.print(table("findings", ["channel", "kind", "why"], findings, keep_first=True))
    console.print(f"wrote {result.png} and {result.html}")
