"""`anya-fl coordinator init|start|run`: the PKI, the loopback SuperLink behind the Fleet gateway, runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.cli.app import _FED, _flwr_home, _round_display
from anya_fl.cli.models import DEFAULT_REGISTRY
from anya_fl.cli.security import DEFAULT_AUDIT_LOG
from anya_fl.console import console, err_console, progress
from core.errors import AnyaError
from core.fedconfig import FederationConfig

coordinator_app = typer.Typer(help="The coordinator: PKI, the Flower SuperLink, launching runs.", no_args_is_help=True)


@coordinator_app.command("init")
def coordinator_init(
    pki_dir: Annotated[Path, typer.Argument(help="Directory for the CA, the server certificate and node keys.")],
    nodes: Annotated[int, typer.Option(help="Node key pairs to create.")] = 3,
    host: Annotated[list[str] | None, typer.Option(help="Host name or IP of the SuperLink (repeatable).")] = None,
) -> None:
    """Create the CA, the SuperLink's TLS certificate and one SuperNode key pair per node."""
    from core.security.pki import init_pki

    pki = init_pki(pki_dir, nodes, host or None)
    console.print(f"wrote the CA and server certificate for {', '.join(pki['hosts'])} in {pki_dir}")
    for n in pki["nodes"]:
        console.print(f"  {n['name']}: give the operator {pki['ca_cert']} and {n['key']} (private, over a secure channel)")
    console.print(f"`anya-fl coordinator start {pki_dir}` registers every key in {pki_dir / 'nodes'} with the SuperLink.")


@coordinator_app.command("start")
def coordinator_start(
    pki_dir: Annotated[Path | None, typer.Argument(help="PKI directory from `coordinator init` (omit with --insecure).")] = None,
    host: Annotated[str, typer.Option(help="Address the nodes connect to (the Fleet gateway listens here).")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port of the Fleet gateway, the only port nodes need.")] = 9092,
    control_port: Annotated[int, typer.Option(help="Port of the SuperLink itself, on 127.0.0.1 only (Control and "
                                                   "Runtime APIs; `coordinator run` uses it).")] = 9093,
    insecure: Annotated[bool, typer.Option(help="No TLS, no node authentication (local trials only).")] = False,
    name: Annotated[str, typer.Option(help="Connection name written to FLWR_HOME/config.toml.")] = "anya",
) -> None:
    """Run the Flower SuperLink on loopback and the Fleet gateway in front of it, in the foreground.

    Nodes reach only the Fleet API (register-node and run submission are not reachable from the
    network); `anya-fl coordinator run` on this machine talks to the SuperLink on 127.0.0.1.
    TLS and SuperNode authentication by default.
    """
    from anya_fl.deployment import (
        register_node,
        start_fleet_gateway,
        start_superlink,
        stop_process,
        wait_for_port,
        write_connection,
    )
    from core.errors import ConfigError

    if not insecure and pki_dir is None:
        raise ConfigError("pki-dir", "is required unless --insecure; create one with `anya-fl coordinator init DIR`")
    if control_port == port:
        raise ConfigError("control-port", f"{control_port} must differ from --port (the gateway's)")
    home = _flwr_home("coordinator")
    home.mkdir(parents=True, exist_ok=True)
    started = []
    try:
        link = start_superlink("127.0.0.1", control_port, home, home / "superlink.log", pki_dir=pki_dir,
                               insecure=insecure, database=home / "superlink-state.db",
                               warn=lambda m: err_console.print(f"[yellow]{escape(m)}[/yellow]", soft_wrap=True))
        started.append(link)
        gate = start_fleet_gateway(host, port, f"127.0.0.1:{control_port}", home / "fleet-gateway.log",
                                   pki_dir=pki_dir, insecure=insecure)
        started.append(gate)
        wait_for_port(host, port, proc=gate)
        write_connection(home, name, f"127.0.0.1:{control_port}", insecure=insecure,
                         root_certificates=None if insecure else pki_dir / "ca.pem", default=True)
        if not insecure:
            for pub in sorted((pki_dir / "nodes").glob("*.pub")):
                register_node(home, name, pub, superlink=link)
                console.print(f"registered {pub.name}")
        console.print(f"Fleet gateway on {host}:{port} (pid {gate.pid}, log {home / 'fleet-gateway.log'}): the only "
                      f"port nodes need")
        console.print(f"SuperLink on 127.0.0.1:{control_port} (pid {link.pid}, log {home / 'superlink.log'}); "
                      "Ctrl-C stops both")
        while link.poll() is None and gate.poll() is None:
            try:
                link.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        dead = link if link.poll() is not None else gate
        raise AnyaError(f"{'the SuperLink' if dead is link else 'the Fleet gateway'} exited (code {dead.returncode}); "
                        "see its log")
    finally:
        for proc in reversed(started):
            stop_process(proc)


@coordinator_app.command("run")
def coordinator_run(
    run_dir: Annotated[Path, typer.Option(help="Where checkpoints, metrics and the report go.")] = Path("runs/coordinator"),
    data_dir: Annotated[Path, typer.Option(help="Holds the coordinator's held-out set (<data-dir>/coordinator).")] = Path("runs/coordinator/data"),
    name: Annotated[str, typer.Option(help="Connection name in FLWR_HOME/config.toml.")] = "anya",
    nodes: Annotated[int, typer.Option(help="Nodes expected in the federation (a deployment's default: "
                                            "3, not the simulation's 10).")] = 3,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = _FED.rounds,
    tasks: Annotated[str, typer.Option(help="Tasks (comma-separated): fraud, fee, anomaly, network, liquidity. Each "
                                            "node trains network on its watch's telemetry and incidents (`anya-fl "
                                            "watch incident add`), liquidity on its Lightning store (`anya-fl "
                                            "lightning collect --state-dir DATA_DIR/lightning`); the coordinator's "
                                            "held-out sets for them are simulated (network: about 1.3 s per "
                                            "episode, 12).")] = _FED.tasks,
    strategy: Annotated[str, typer.Option(help="Aggregation strategy (default median, with screening).")] = _FED.strategy,
    screening: Annotated[bool, typer.Option(help="Server-side update screening (reject, flag, clip, exclude).")]
    = _FED.screening,
    min_nodes: Annotated[int, typer.Option(help="Nodes that must take part in each round.")] = _FED.min_nodes,
    epsilon: Annotated[float, typer.Option(help="DP budget per node and task for the whole run.")] = _FED.epsilon,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = _FED.local_epochs,
    seed: Annotated[int, typer.Option(help="Seed of the models and of the simulated held-out set.")] = _FED.seed,
    wait_nodes: Annotated[float, typer.Option(help="Seconds to wait for min-nodes SuperNodes before giving up.")] = 300.0,
    signing_key: Annotated[Path | None, typer.Option(help="The coordinator's model-signing key (default: "
                                                          "PKI_DIR/model-signing.key when it exists); without one "
                                                          "the final models are exported unsigned to RUN_DIR/models "
                                                          "only.")] = None,
    registry: Annotated[Path, typer.Option(help="Registry the final models are published to (as candidates).")]
    = DEFAULT_REGISTRY,
    pki_dir: Annotated[Path | None, typer.Option(help="The PKI from `coordinator init` (default: ./pki when it "
                                                      "exists): its model-signing key, and its nodes/*.pub to name "
                                                      "nodes in the report.")] = None,
) -> None:
    """Launch a federated run on the running SuperLink and wait for it; then write the report."""
    from anya_fl.deployment import launch_run, prepare_coordinator_data, wait_for_nodes

    pki_dir, signing_key, key_note = coordinator_run_keys(pki_dir, signing_key)
    cfg = FederationConfig(nodes=nodes, rounds=rounds, tasks=tasks, strategy=strategy, screening=screening, min_nodes=min_nodes, epsilon=epsilon,
                           local_epochs=local_epochs, seed=seed, run_dir=str(run_dir.resolve()),
                           data_dir=str(data_dir.resolve()), run_name=run_dir.name,
                           registry_dir=str(registry.expanduser().resolve()) if signing_key else "",
                           signing_key=str(signing_key.resolve()) if signing_key else "",
                           audit_log=str(DEFAULT_AUDIT_LOG)).validate()
    if signing_key is None:
        err_console.print(f"[yellow]{escape(key_note)}[/yellow]", soft_wrap=True)
    else:
        console.print(escape(key_note), soft_wrap=True)
    if {"network", "liquidity"} & set(cfg.task_list):
        with console.status("the coordinator's held-out network and liquidity sets (simulated nodes watched under "
                            "attack, simulated Lightning networks)"):
            prepare_coordinator_data(Path(cfg.data_dir), cfg.transactions, cfg.seed, cfg.task_list)
    else:
        prepare_coordinator_data(Path(cfg.data_dir), cfg.transactions, cfg.seed)
    with console.status(f"waiting for {cfg.min_nodes} SuperNodes to come online (up to {wait_nodes:.0f} s)"):
        online = wait_for_nodes(_flwr_home("coordinator"), name, cfg.min_nodes, timeout=wait_nodes)
    key_names = _registered_node_names(pki_dir, name)
    console.print(f"{len(online)} SuperNodes online: "
                  + ", ".join(sorted(key_names.get(str(n.get("node-id")), str(n.get("node-id"))) for n in online)))
    with progress() as prog:
        metrics = launch_run(_flwr_home("coordinator"), name, cfg, log_file=run_dir / "flwr-run.log",
                             on_progress=_round_display(prog, "waiting for the run", cfg.rounds))
    if any(str(n) not in key_names for h in metrics.get("history", []) for n in h.get("nodes", {})):
        key_names = _registered_node_names(pki_dir, name) or key_names  # a node registered during the run
    from anya_fl.simulation_report import finish_report  # not at import: `anya-fl serve` loads no fl_server

    finish_report(run_dir, metrics, compare=False, key_names=key_names, kind="deployment")


DEFAULT_PKI_DIR = Path("pki")  # `anya-fl coordinator init pki`, as the README runs it


def coordinator_run_keys(pki_dir: Path | None, signing_key: Path | None) -> tuple[Path | None, Path | None, str]:
    """The PKI directory and model-signing key `coordinator run` uses, and a line that says which key.

    An explicit ``--pki-dir`` or ``--signing-key`` must exist. Otherwise the PKI is ./pki when it is a
    directory, and the key its ``model-signing.key`` (written by `coordinator init`) when that exists;
    no key at all means unsigned models (the line is then the warning). Returns (pki_dir or None,
    signing_key or None, line).
    """
    from core.errors import ConfigError
    from core.security.pki import SIGNING_KEY

    if pki_dir is not None and not pki_dir.is_dir():
        raise ConfigError("pki-dir", f"{pki_dir} is not a directory (`anya-fl coordinator init DIR` writes one)")
    if signing_key is not None and not signing_key.is_file():
        raise ConfigError("signing-key", f"{signing_key} is not a file (coordinator init writes pki/model-signing.key)")
    if pki_dir is None and DEFAULT_PKI_DIR.is_dir():
        pki_dir = DEFAULT_PKI_DIR
    if signing_key is not None:
        return pki_dir, signing_key, f"signing the final models with {signing_key}"
    if pki_dir is not None and (pki_dir / SIGNING_KEY).is_file():
        key = pki_dir / SIGNING_KEY
        return pki_dir, key, f"signing the final models with {key} (the PKI's key; --signing-key chooses another)"
    where = pki_dir / SIGNING_KEY if pki_dir is not None else DEFAULT_PKI_DIR / SIGNING_KEY
    return pki_dir, None, (f"no --signing-key and no {where}: the final models are exported to RUN_DIR/models "
                           "unsigned and not published to a registry")


def _registered_node_names(pki_dir: Path | None, connection: str) -> dict[str, str]:
    """Flower node id -> name of the key it registered with (pki/nodes/node-0.pub -> node-0); {} when unknown.

    From the SuperLink's own record of each node's public key, so a node cannot choose its name.
    """
    from core.security.pki import NODES_DIR, node_key_names

    if pki_dir is None or not any((pki_dir / NODES_DIR).glob("*.pub")):
        return {}
    from anya_fl.flwr_compat.node_keys import list_node_keys

    try:
        return node_key_names(list_node_keys(_flwr_home("coordinator"), connection), pki_dir)
    except AnyaError as exc:
        err_console.print(f"[yellow]nodes are shown by their Flower node id: {escape(str(exc))}[/yellow]",
                          soft_wrap=True)
        return {}
