"""`anya-fl node` and `anya-fl check`: join a federation, and probe this node once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.cli.app import _flwr_home
from anya_fl.console import console, err_console, table

RpcUrl = Annotated[str | None, typer.Option(help="Bitcoin Core JSON-RPC URL, e.g. http://127.0.0.1:8332.")]
RpcCookie = Annotated[Path | None, typer.Option(help="Bitcoin Core's .cookie file (or --rpc-user and "
                                                     "ANYA_FL_RPC_PASSWORD).")]
RpcUser = Annotated[str | None, typer.Option(help="rpcuser (the password comes from ANYA_FL_RPC_PASSWORD).")]
BlockMaxWeight = Annotated[int, typer.Option(help="The chain's block weight limit (fee labels judge how full a block "
                                                  "was): 4,000,000 on Bitcoin; a test chain's `anya-fl simnode "
                                                  "--block-weight`.")]


def node(
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, HOST:PORT.")],
    data_dir: Annotated[Path, typer.Option(help="This node's data: a dataset (`anya-fl data`) or, with --rpc-url, "
                                                "where its collector store lives (<data-dir>/collector/).")],
    ca: Annotated[Path | None, typer.Option(help="The coordinator's CA certificate (ca.pem).")] = None,
    node_key: Annotated[Path | None, typer.Option(help="This node's private authentication key (node-<i>.key).")] = None,
    insecure: Annotated[bool, typer.Option(help="No TLS, no authentication (local trials only).")] = False,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    health_host: Annotated[str, typer.Option(help="Address of the health endpoint.")] = "127.0.0.1",
    health_port: Annotated[int, typer.Option(help="Port of /healthz, /readyz, /metrics (0: off).")] = 9095,
    probe_interval: Annotated[float, typer.Option(help="Seconds between health probes.")] = 15.0,
    min_stage: Annotated[str, typer.Option(help="Stage /readyz requires (the run's min-stage gates training).")]
    = "production",
    lifetime_epsilon: Annotated[float, typer.Option(help="This node's privacy budget per task over all runs "
                                                         "(0: none); beyond it the node declines to train.")] = 0.0,
    collect: Annotated[bool, typer.Option(help="With --rpc-url: follow Bitcoin Core into <data-dir>/collector/ and "
                                               "train on it (as `anya-fl collect`).")] = True,
    collect_interval: Annotated[float, typer.Option(help="Seconds between collector polls.")] = 5.0,
    block_max_weight: BlockMaxWeight = 4_000_000,
    labels: Annotated[Path | None, typer.Option(help="With --rpc-url: the operator's fraud labels (as `anya-fl "
                                                     "collect --labels`), read into the store at start.")] = None,
    watch: Annotated[bool, typer.Option(help="With --rpc-url: run the network watch (as `anya-fl watch`; state "
                                             "and alerts in <data-dir>/watch/).")] = True,
    watch_interval: Annotated[float, typer.Option(help="Seconds between network-watch polls.")] = 10.0,
) -> None:
    """Join a federation: run a Flower SuperNode that trains on this node's data (it never leaves).

    With --rpc-url the node also probes its Bitcoin Core (sync, peers, mempool, fees), declines to train
    below the run's min-stage, and (unless --no-collect) collects its own training data from Core into
    <data-dir>/collector/store.sqlite; a dataset from `anya-fl data` in <data-dir> takes precedence.
    Health: http://HOST:PORT/healthz, /readyz, /metrics.
    """
    from anya_fl.deployment import start_supernode, stop_process
    from core.errors import ConfigError
    from core.health.http import BackgroundServer, health_app, probe_loop
    from fl_client.node_data import load_node_data

    if not insecure and (ca is None or node_key is None):
        raise ConfigError("ca/node-key", "both --ca and --node-key are required unless --insecure")
    if not probe_interval > 0:
        raise ConfigError("probe-interval", f"{probe_interval} must be > 0 seconds")
    collecting = bool(rpc_url) and collect and not (data_dir / "manifest.json").is_file()
    if collecting:
        data_dir.mkdir(parents=True, exist_ok=True)  # the collector's store goes there
    else:
        load_node_data(data_dir)  # fail now, with a clear message, rather than inside the first round
    if lifetime_epsilon < 0:
        raise ConfigError("lifetime-epsilon", f"{lifetime_epsilon} must be >= 0")
    rpc_config = {**_node_rpc_config(rpc_url, rpc_cookie, rpc_user),
                  **({"lifetime-epsilon": lifetime_epsilon} if lifetime_epsilon else {})}
    health = _node_health(data_dir, rpc_url, rpc_cookie, rpc_user, min_stage)
    home = _flwr_home("node")
    home.mkdir(parents=True, exist_ok=True)
    # the collector first: it creates the store the SuperNode's ClientApps read
    if labels is not None and not collecting:
        raise ConfigError("labels", "only with --rpc-url and collecting: labels go into the collector's store")
    collector = (_start_collector(data_dir, rpc_url, rpc_cookie, rpc_user, collect_interval, block_max_weight, labels)
                 if collecting else None)
    try:
        proc = start_supernode(superlink, home, home / "supernode.log", data_dir=data_dir.resolve(),
                               root_certificates=ca, private_key=node_key, insecure=insecure, node_config=rpc_config,
                               warn=lambda m: err_console.print(f"[yellow]{escape(m)}[/yellow]", soft_wrap=True))
    except BaseException:
        if collector is not None:
            collector.stop()
        health.close()
        raise
    watcher = None
    loop = probe_loop(health, probe_interval).start()
    server = None
    try:
        if rpc_url and watch:
            from anya_fl.cli.watch import build_watch
            from core.bitcoin.rpc import operator_rpc_config

            if not watch_interval > 0:
                raise ConfigError("watch-interval", f"{watch_interval} must be > 0 seconds")
            from core.bitcoin.network.telemetry_store import WATCH_DIR

            net_watch, _ = build_watch(operator_rpc_config(rpc_url, rpc_cookie, rpc_user), data_dir / WATCH_DIR,
                                       jsonl=data_dir / WATCH_DIR / "alerts.jsonl")
            health.checker.register("network", 1.0, readiness=1.0)  # the watch's conditions and forecasts
            watcher = _BackgroundWatch(net_watch, watch_interval, health.checker).start()
        if health_port:
            from core.alerts import AlertCollector

            extra = [AlertCollector(watcher.net_watch.engine)] if watcher is not None else []
            server = BackgroundServer(health_app(health, collectors=extra), health_host, health_port).start()
            console.print(f"health endpoint: http://{health_host}:{server.port}/readyz (/healthz, /metrics)")
        console.print(f"SuperNode running (pid {proc.pid}, log {home / 'supernode.log'}); Ctrl-C stops it")
        proc.wait()
    finally:
        if server is not None:
            server.stop()
        if collector is not None:
            collector.stop()
        if watcher is not None:
            watcher.stop()
        loop.stop()
        health.close()
        stop_process(proc)


def check(
    data_dir: Annotated[Path | None, typer.Option(help="The node's dataset directory.")] = None,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    min_stage: Annotated[str, typer.Option(help="Stage needed to pass: development, production or release.")]
    = "production",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON to this file ('-': print "
                                                                "it instead of the tables).")] = None,
) -> None:
    """Probe this node once and print its AgentChecker report; exit 1 below --min-stage."""
    from datetime import datetime

    health = _node_health(data_dir, rpc_url, rpc_cookie, rpc_user, min_stage)
    health.refresh()
    ok, why = health.checker.allows(health.settings.min_stage)
    rep = health.checker.report()
    health.close()
    doc = {**rep, "min_stage": health.settings.min_stage.label, "passed": ok}
    if json_out is not None and str(json_out) != "-":
        from core.storage import atomic_write_json

        atomic_write_json(json_out, doc)
    if json_out is not None and str(json_out) == "-":
        console.print_json(json.dumps(doc))
    else:
        rows = [[c["name"], f"{c['weight']:g}", f"{100 * c['readiness']:.1f} %", str(c["inputs"]), str(c["errors"]),
                 c["reason"] or "ok"] for c in rep["components"]]
        console.print(table("components", ["component", "weight", "readiness", "inputs", "errors", "reason"], rows))
        last = rep["autosave"]["last_saved_at"]
        saved = datetime.fromtimestamp(last).isoformat(timespec="seconds") if last else "never"
        console.print(table("node", ["stage", "readiness", "min stage", "last save", "state file"],
                            [[rep["stage"], f"{100 * rep['readiness']:.1f} %", health.settings.min_stage.label, saved,
                              rep["autosave"]["path"] or "(memory only)"]]))
        if not ok:
            err_console.print(f"[red]{escape(why)}[/red]", soft_wrap=True)
    if not ok:
        raise typer.Exit(1)


class _BackgroundWatch:
    """The network watch (``anya-fl watch``) polling in a thread beside the SuperNode."""

    def __init__(self, net_watch, interval: float, checker=None) -> None:
        import threading

        self.net_watch, self.interval, self.checker = net_watch, interval, checker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="network-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.net_watch.poll_once()
                if self.checker is not None:  # predictive component management: /readyz drops before a failure
                    from core.bitcoin.network.watch import watch_readiness

                    self.checker.update("network", *watch_readiness(self.net_watch))
            except Exception as exc:  # noqa: BLE001 - the node keeps serving; the watch tries again
                err_console.print(f"[red]network watch: {escape(str(exc))}[/red]", soft_wrap=True)
            self._stop.wait(self.interval)

    def start(self) -> _BackgroundWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class _BackgroundCollector:
    """The collector (``core.collector``) polling Core in a thread beside the SuperNode."""

    def __init__(self, collector, store, interval: float) -> None:
        import threading

        self.collector, self.store = collector, store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="collector", daemon=True)

    def _run(self, interval: float) -> None:
        try:
            self.collector.run(self._stop, interval)
        except Exception as exc:  # noqa: BLE001 - the node keeps serving; the failure is shown once
            err_console.print(f"[red]collector stopped: {escape(str(exc))}[/red]", soft_wrap=True)

    def start(self) -> _BackgroundCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.collector.close()
        self.store.close()


def _start_collector(data_dir: Path, rpc_url: str | None, rpc_cookie: Path | None, rpc_user: str | None,
                     interval: float, block_max_weight: int, labels: Path | None) -> _BackgroundCollector:
    from anya_fl.cli.collect import import_labels
    from core.bitcoin.rpc import BitcoinRPC, operator_rpc_config
    from core.collector.follower import Collector, CollectorSettings
    from core.collector.store import CollectorStore
    from core.errors import ConfigError

    if not interval > 0:
        raise ConfigError("collect-interval", f"{interval} must be > 0 seconds")
    assert rpc_url
    settings = CollectorSettings(block_max_weight=block_max_weight).validate()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = CollectorStore.open(data_dir)
    try:
        if labels is not None:
            import_labels(store, labels)
        collector = Collector(BitcoinRPC(operator_rpc_config(rpc_url, rpc_cookie, rpc_user)), store, settings)
    except BaseException:
        store.close()
        raise
    console.print(f"collecting from {rpc_url} into {store.path} (every {interval:g} s)")
    return _BackgroundCollector(collector, store, interval).start()


def _node_rpc_config(rpc_url: str | None, rpc_cookie: Path | None, rpc_user: str | None) -> dict[str, str]:
    """Node-config keys for Bitcoin Core RPC. No password: the SuperNode and its ClientApps read it from
    ANYA_FL_RPC_PASSWORD in the environment they inherit (a --node-config is on the command line)."""
    from core.bitcoin.rpc import operator_rpc_config

    if not rpc_url:
        return {}
    operator_rpc_config(rpc_url, rpc_cookie, rpc_user)  # fail now, naming the missing credential
    out = {"bitcoin-rpc-url": rpc_url}
    if rpc_cookie is not None:
        out["bitcoin-rpc-cookie"] = str(rpc_cookie.resolve())
    if rpc_user:
        out["bitcoin-rpc-user"] = rpc_user
    return out


def _node_health(data_dir: Path | None, rpc_url: str | None, rpc_cookie: Path | None, rpc_user: str | None,
                 min_stage: str):
    from core.health.node_health import HealthSettings, NodeHealth

    if data_dir is not None and not data_dir.is_dir():
        from core.errors import ConfigError

        raise ConfigError("data-dir", f"{data_dir} is not a directory")
    cfg = _node_rpc_config(rpc_url, rpc_cookie, rpc_user)
    return NodeHealth(HealthSettings.from_node_config(cfg, data_dir.resolve() if data_dir else None, min_stage))
