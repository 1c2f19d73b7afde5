"""The `anya-fl` command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.console import anya_home, console, err_console, progress, table
from anya_fl.models_cli import DEFAULT_REGISTRY, models_app
from anya_fl.security_cli import DEFAULT_AUDIT_LOG, DEFAULT_STORE, audit_app, token_app
from core.bitcoin.features import TASKS
from core.errors import AnyaError
from core.fedconfig import FederationConfig

_FED = FederationConfig()  # the one source of the federation defaults: the options below read theirs from it

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


@app.command()
def baseline(
    transactions: Annotated[int, typer.Option(help="Transactions in the simulated chain.")] = 400_000,
    seed: Annotated[int, typer.Option(help="Seed for the chain and every model.")] = 0,
    epsilons: Annotated[str, typer.Option(help="DP budgets to train at (comma-separated).")] = "1,3,8",
    delta: Annotated[float, typer.Option(help="DP delta.")] = 1e-5,
    tasks: Annotated[str, typer.Option(help="Tasks (comma-separated): fraud, fee, anomaly.")] = "fraud,fee,anomaly",
    out: Annotated[Path, typer.Option(help="Directory for baseline.json and baseline.png.")] = Path("runs/baseline"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Train each task centrally (non-private and DP) next to reference baselines; print the quality table."""
    from anya_fl.baseline import BaselineConfig, run_baseline, table_rows, write_report

    cfg = BaselineConfig(
        n_transactions=transactions, seed=seed, epsilons=_parse_floats(epsilons, "epsilons"), delta=delta,
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()), device=device,
    ).validate()
    with progress() as prog:
        report = run_baseline(cfg, prog)
    for task, rows in report["tasks"].items():
        cols, body = table_rows(task, rows)
        console.print(table(f"{task} — test split ({report['rows']['test'][task]:,} rows)", cols, body))
    console.print(table("targets", ["target", "measured", "met"], [[t["target"], t["measured"], t["met"]] for t in report["targets"]]))
    paths = write_report(report, out)
    console.print(f"wrote {paths['json']} and {paths['png']} ({report['seconds']:.0f} s)")


@app.command()
def simulate(
    nodes: Annotated[int, typer.Option(help="Simulated nodes (Flower SuperNodes).")] = _FED.nodes,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = _FED.rounds,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedadam, krum, multikrum, bulyan, median, trimmed-mean "
                                               "(default median, with --screening: chosen by `anya-fl bench "
                                               "robustness`).")] = _FED.strategy,
    epsilon: Annotated[float, typer.Option(help="DP budget per node and task for the whole run.")] = _FED.epsilon,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="Train with DP-SGD (Opacus).")] = _FED.dp,
    seed: Annotated[int, typer.Option(help="Seed for the chain, the partition and every model.")] = _FED.seed,
    transactions: Annotated[int, typer.Option(help="Transactions in the simulated chain. The splits are by time, so "
                                                   "a short chain is refused; 40,000 works with seed 0 (a quick trial), and the error "
                                                   "names the smallest larger size, in steps of 5,000, that works for the seed.")] = _FED.transactions,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = _FED.local_epochs,
    min_nodes: Annotated[int, typer.Option(help="Nodes that must take part in each round.")] = _FED.min_nodes,
    fraction_train: Annotated[float, typer.Option(help="Share of nodes sampled for training each round.")] = _FED.fraction_train,
    byzantine: Annotated[int, typer.Option(help="Malicious nodes assumed by krum, multikrum and bulyan.")] = _FED.byzantine,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/sim-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory from its last round.")] = None,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="Also train centralized and local-only baselines.")] = True,
    attack: Annotated[str, typer.Option(help="Poisoning experiment: sign-flip, scaling, gaussian, label-flip, alie.")] = _FED.attack,
    malicious: Annotated[float, typer.Option(help="Share of nodes that attack (with --attack).")] = _FED.malicious,
    screening: Annotated[bool, typer.Option(help="Server-side update screening: reject malformed, flag, clip, exclude.")]
    = _FED.screening,
    central_dp: Annotated[str, typer.Option(help="Server-side user-level DP: fixed or adaptive clipping.")] = _FED.central_dp,
    central_noise: Annotated[float, typer.Option(help="Central DP noise multiplier.")] = _FED.central_noise,
    central_clip: Annotated[float, typer.Option(help="Central DP clipping norm (initial one for adaptive).")] = _FED.central_clip,
    lifetime_epsilon: Annotated[float, typer.Option(help="Each node's epsilon budget per task over all runs (0: none).")]
    = _FED.lifetime_epsilon,
    fraction_evaluate: Annotated[float, typer.Option(help="Share of nodes sampled for federated evaluation each "
                                                          "round.")] = _FED.fraction_evaluate,
    ray_address: Annotated[str, typer.Option(help="Attach to a running Ray cluster (HOST:PORT, ray://HOST:PORT or "
                                                  "auto) instead of starting a private local Ray.")] = "",
    node_cpus: Annotated[float, typer.Option(help="CPUs Ray reserves per virtual node.")] = 1.0,
    node_gpus: Annotated[float, typer.Option(help="GPUs per virtual node (fractions share a GPU); training "
                                                  "uses the GPU Ray assigns.")] = 0.0,
) -> None:
    """Run a whole federation as a simulation (Flower Simulation Engine on Ray) and write the report.

    By default Ray runs privately on this machine, one CPU per virtual node; --ray-address attaches to
    a Ray cluster so that thousands of virtual nodes run across its machines.
    """
    import time as _time

    from anya_fl.simulation import SimulationResources, check_finished, load_run, prepare_run, run_flower

    if resume is not None:
        cfg = load_run(resume)
        target = resume
        console.print(f"resuming {target} ({cfg.strategy}, {cfg.nodes} nodes, {cfg.rounds} rounds)")
    else:
        cfg = FederationConfig(
            nodes=nodes, rounds=rounds, strategy=strategy, epsilon=epsilon, dp=dp, seed=seed, transactions=transactions,
            local_epochs=local_epochs, min_nodes=min_nodes, fraction_train=fraction_train, byzantine=byzantine,
            attack=attack, malicious=malicious, screening=screening, central_dp=central_dp, central_noise=central_noise,
            central_clip=central_clip, lifetime_epsilon=lifetime_epsilon, fraction_evaluate=fraction_evaluate,
        ).validate()
        resources = SimulationResources(ray_address=ray_address, node_cpus=node_cpus, node_gpus=node_gpus).validate()
        target = run_dir or Path("runs") / _time.strftime("sim-%Y%m%d-%H%M%S")
        with console.status(f"simulating a {transactions:,}-transaction chain and dealing it to {nodes} nodes"):
            cfg = prepare_run(cfg, target, resources)
    t0 = _time.perf_counter()
    with progress() as prog:
        rc = run_flower(target, _round_display(prog, "starting Flower (Ray)", cfg.rounds))
    metrics = check_finished(target, rc)
    console.print(f"federation finished in {_time.perf_counter() - t0:.0f} s")
    _report(target, metrics, compare)


def _round_display(prog, first: str, rounds: int):
    """A progress bar over rounds, fed the ServerApp's progress.json states."""
    job = prog.add_task(first, total=rounds)

    def show(state: dict) -> None:
        done = state["round"] - (0 if state["phase"] == "done" else 1)
        prog.update(job, completed=done, description=f"round {state['round']}/{rounds}: {state['phase']}")

    return show


def _report(run_dir: Path, metrics: dict, compare: bool, key_names: dict[str, str] | None = None,
            kind: str = "simulation") -> None:
    """Print the run's tables and write plots, report.html and summary.json.

    ``key_names``: Flower node id -> registered key name (deployment; :func:`_registered_node_names`).
    """
    from anya_fl.simulation_report import (
        comparison_rows,
        node_epsilon_rows,
        node_names,
        plot_rounds,
        summarize,
        write_html_report,
    )
    from core.storage import atomic_write_json

    comparison = None
    if compare:
        from anya_fl.comparison import compare as run_compare

        with progress() as prog:
            comparison = run_compare(run_dir, metrics, prog)
        atomic_write_json(run_dir / "comparison.json", comparison)
    from fl_server.round_record import history_from_dicts

    hist = history_from_dicts(metrics["history"])
    tasks = [t for t in TASKS if t in hist[-1].global_metrics]
    from core.scoring import PRIMARY_METRIC as primary

    rows = [[h.round, *[h.global_metrics[t][primary[t]] for t in tasks], len(h.replied), len(h.failed),
             round(h.seconds, 1)] for h in hist]
    console.print(table("global models on the coordinator's held-out set, per round",
                        ["round", *[f"{t} {primary[t]}" for t in tasks], "nodes ok", "declined", "seconds"], rows))
    if comparison:
        eps = max(v["federated"].get("epsilon", 0.0) for v in comparison.values())
        rows = [[r[0], r[1].replace(" (higher is better)", " ↑").replace(" (lower is better)", " ↓")
                 .replace(" (sat/vB, lower is better)", " sat/vB ↓"), *r[2:6],
                 f"{r[6]:+.1f} %" if isinstance(r[6], float) else "-"] for r in comparison_rows(comparison)]
        console.print(table(f"federated vs centralized vs local-only (DP, epsilon <= {eps:.2f} each, same test set)",
                            ["task", "metric", "federated", "centralized", "local-only mean", "fed - local",
                             "fed vs central"], rows))
    profiles = json.loads((run_dir / "run.json").read_text()).get("profiles", []) if (run_dir / "run.json").is_file() else []
    names = node_names(metrics, key_names, profiles)
    console.print(table("epsilon spent per node (whole run)", *node_epsilon_rows(metrics, names)))
    plots = plot_rounds(metrics, run_dir / "plots")
    html = write_html_report(metrics, comparison, plots, run_dir / "report.html", title=f"anya-fl {kind} {run_dir.name}",
                             names=names)
    summary = summarize(metrics, names)
    atomic_write_json(run_dir / "summary.json", summary)
    console.print(f"wrote {run_dir / 'metrics.json'}, {len(plots)} plots in {run_dir / 'plots'}, and {html}")


coordinator_app = typer.Typer(help="The coordinator: PKI, the Flower SuperLink, launching runs.", no_args_is_help=True)
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(models_app, name="models")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")


def _flwr_home(role: str) -> Path:
    import os

    return Path(os.environ.get("FLWR_HOME") or anya_home() / f"flwr-home-{role}")


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
    cfg = FederationConfig(nodes=nodes, rounds=rounds, strategy=strategy, screening=screening, min_nodes=min_nodes, epsilon=epsilon,
                           local_epochs=local_epochs, seed=seed, run_dir=str(run_dir.resolve()),
                           data_dir=str(data_dir.resolve()), run_name=run_dir.name,
                           registry_dir=str(registry.expanduser().resolve()) if signing_key else "",
                           signing_key=str(signing_key.resolve()) if signing_key else "",
                           audit_log=str(DEFAULT_AUDIT_LOG)).validate()
    if signing_key is None:
        err_console.print(f"[yellow]{escape(key_note)}[/yellow]", soft_wrap=True)
    else:
        console.print(escape(key_note), soft_wrap=True)
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
    _report(run_dir, metrics, compare=False, key_names=key_names, kind="deployment")


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


RpcUrl = Annotated[str | None, typer.Option(help="Bitcoin Core JSON-RPC URL, e.g. http://127.0.0.1:8332.")]
RpcCookie = Annotated[Path | None, typer.Option(help="Bitcoin Core's .cookie file (or --rpc-user and "
                                                     "ANYA_FL_RPC_PASSWORD).")]
RpcUser = Annotated[str | None, typer.Option(help="rpcuser (the password comes from ANYA_FL_RPC_PASSWORD).")]


@app.command()
def node(
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, HOST:PORT.")],
    data_dir: Annotated[Path, typer.Option(help="This node's dataset directory (from `anya-fl data`).")],
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
) -> None:
    """Join a federation: run a Flower SuperNode that trains on this node's data (it never leaves).

    With --rpc-url the node also probes its Bitcoin Core (sync, peers, mempool, fees) and declines to
    train below the run's min-stage. Health: http://HOST:PORT/healthz, /readyz, /metrics.
    """
    from anya_fl.deployment import start_supernode, stop_process
    from core.errors import ConfigError
    from core.health.http import BackgroundServer, health_app, probe_loop
    from fl_client.node_data import load_node_data

    if not insecure and (ca is None or node_key is None):
        raise ConfigError("ca/node-key", "both --ca and --node-key are required unless --insecure")
    if not probe_interval > 0:
        raise ConfigError("probe-interval", f"{probe_interval} must be > 0 seconds")
    load_node_data(data_dir)  # fail now, with a clear message, rather than inside the first round
    if lifetime_epsilon < 0:
        raise ConfigError("lifetime-epsilon", f"{lifetime_epsilon} must be >= 0")
    rpc_config = {**_node_rpc_config(rpc_url, rpc_cookie, rpc_user),
                  **({"lifetime-epsilon": lifetime_epsilon} if lifetime_epsilon else {})}
    health = _node_health(data_dir, rpc_url, rpc_cookie, rpc_user, min_stage)
    home = _flwr_home("node")
    home.mkdir(parents=True, exist_ok=True)
    proc = start_supernode(superlink, home, home / "supernode.log", data_dir=data_dir.resolve(), root_certificates=ca,
                           private_key=node_key, insecure=insecure, node_config=rpc_config,
                           warn=lambda m: err_console.print(f"[yellow]{escape(m)}[/yellow]", soft_wrap=True))
    loop = probe_loop(health, probe_interval).start()
    server = None
    try:
        if health_port:
            server = BackgroundServer(health_app(health), health_host, health_port).start()
            console.print(f"health endpoint: http://{health_host}:{server.port}/readyz (/healthz, /metrics)")
        console.print(f"SuperNode running (pid {proc.pid}, log {home / 'supernode.log'}); Ctrl-C stops it")
        proc.wait()
    finally:
        if server is not None:
            server.stop()
        loop.stop()
        health.close()
        stop_process(proc)


def _node_rpc_config(rpc_url: str | None, rpc_cookie: Path | None, rpc_user: str | None) -> dict[str, str]:
    """Node-config keys for Bitcoin Core RPC (the password never goes on a command line)."""
    import os

    if not rpc_url:
        return {}
    out = {"bitcoin-rpc-url": rpc_url}
    if rpc_cookie is not None:
        out["bitcoin-rpc-cookie"] = str(rpc_cookie.resolve())
    if rpc_user:
        out["bitcoin-rpc-user"] = rpc_user
        out["bitcoin-rpc-password"] = os.environ.get("ANYA_FL_RPC_PASSWORD", "")
    return out


def _node_health(data_dir: Path | None, rpc_url: str | None, rpc_cookie: Path | None, rpc_user: str | None,
                 min_stage: str):
    from core.health.node_health import HealthSettings, NodeHealth

    if data_dir is not None and not data_dir.is_dir():
        from core.errors import ConfigError

        raise ConfigError("data-dir", f"{data_dir} is not a directory")
    cfg = _node_rpc_config(rpc_url, rpc_cookie, rpc_user)
    return NodeHealth(HealthSettings.from_node_config(cfg, data_dir.resolve() if data_dir else None, min_stage))


@app.command()
def serve(
    registry: Annotated[Path, typer.Option(help="The model registry (production versions are served).")]
    = DEFAULT_REGISTRY,
    trust: Annotated[list[Path] | None, typer.Option(help="Public key(s) whose signatures are accepted "
                                                          "(the coordinator's model-signing.pub).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    provider: Annotated[str | None, typer.Option(help="Execution provider: cuda, rocm, tensorrt, openvino, coreml, "
                                                      "cpu (default: the best available).")] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per session (0: its default).")] = 1,
    quantize: Annotated[bool, typer.Option(help="Dynamic int8, kept only within --max-quant-error on the "
                                                "validation rows of --data-dir.")] = False,
    max_quant_error: Annotated[float, typer.Option(help="Largest output change int8 may cause.")] = 0.01,
    max_rows: Annotated[int, typer.Option(help="Most rows in one request (more: 413).")] = 4096,
    sync_interval: Annotated[float, typer.Option(help="Seconds between checks for newly promoted versions.")] = 5.0,
    data_dir: Annotated[Path | None, typer.Option(help="This node's dataset directory (health; quantization "
                                                       "validation rows).")] = None,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    min_stage: Annotated[str, typer.Option(help="Stage /readyz requires.")] = "production",
    auth: Annotated[bool, typer.Option(help="Require API tokens (`anya-fl token create`); --no-auth only for "
                                            "local trials.")] = True,
    tokens: Annotated[Path, typer.Option(help="The token store (hashes only).")] = DEFAULT_STORE,
    audit_log: Annotated[Path, typer.Option(help="Refused requests are appended here.")] = DEFAULT_AUDIT_LOG,
) -> None:
    """Serve the production models over HTTP: /v1/{task}/predict, /v1/models, /healthz, /readyz, /metrics.

    Requests need `Authorization: Bearer <token>` with a role allowed to do what they ask (operator:
    predict, list, metrics; viewer: list, metrics); /healthz, /readyz and the OpenAPI schema are open.
    """
    import uvicorn

    from core.errors import ConfigError
    from core.health.http import probe_loop
    from core.security.signing import load_public_key
    from core.serving.api import FastPredict, RegistryWatcher, ServeLimits, build_app, serving_health
    from core.serving.inference.engine import EngineSettings, InferenceEngine
    from core.serving.registry import ModelRegistry

    if max_rows < 1:
        raise ConfigError("max-rows", f"{max_rows} must be at least 1")
    if not sync_interval > 0:
        raise ConfigError("sync-interval", f"{sync_interval} must be > 0 seconds")
    root = registry.expanduser()
    if not root.is_dir():
        raise ConfigError("registry", f"{root} is not a registry directory (a simulation writes RUN_DIR/registry)")
    reg = ModelRegistry(root, trusted_keys=[load_public_key(p) for p in trust or []])
    validation = None
    if quantize and data_dir is not None:
        from core.data.datasets import load_dataset

        validation = {t: s.x["val"] for t, s in load_dataset(data_dir)[0].items()}
    health = serving_health(_node_health(data_dir, rpc_url, rpc_cookie, rpc_user, min_stage))
    engine = InferenceEngine(EngineSettings(provider=provider, intra_threads=threads, quantize=quantize,
                                            max_quant_error=max_quant_error), monitor=health.monitor)
    watcher = RegistryWatcher(engine, reg, health, sync_interval, validation=validation)
    for change in watcher.sync_once():
        (err_console if change.startswith("!") else console).print(escape(change if change.startswith("!")
                                                                          else f"loaded {change}"), soft_wrap=True)
    health.refresh()
    rows = [[t, i["version"], i["providers"][0], i["quantization"] or "float32", f"{i['load_ms']:.1f}"]
            for t, i in engine.models().items()]
    console.print(table("serving", ["task", "version", "provider", "weights", "load ms"], rows))
    loop = probe_loop(health, 15.0).start()
    watcher.start()
    asgi = FastPredict(build_app(engine, health, registry=reg, limits=ServeLimits(max_rows=max_rows)))
    if auth:
        from core.security.audit import AuditLog
        from core.security.tokens import TokenAuth, TokenStore

        store = TokenStore(tokens.expanduser())
        if not any(not r.revoked for r in store.list()):
            watcher.stop()
            loop.stop()
            raise ConfigError("tokens", f"no active API token in {tokens}: create one with `anya-fl token create "
                                        "--role operator --name my-client`, or run with --no-auth (local trials)")
        asgi = TokenAuth(asgi, store, audit=AuditLog(audit_log.expanduser()))
    else:
        err_console.print("[yellow]WARNING: --no-auth: every client that reaches the port may predict and read "
                          "metrics. Use only on loopback.[/yellow]")
    console.print(f"listening on http://{host}:{port} (OpenAPI: /docs, /openapi.json)")
    try:
        uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    finally:
        watcher.stop()
        loop.stop()
        health.close()


@app.command()
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


@app.command()
def data(
    out: Annotated[Path, typer.Argument(help="Directory to write (one sub-directory per node with --nodes).")],
    transactions: Annotated[int, typer.Option(help="Transactions in the simulated chain.")] = 200_000,
    seed: Annotated[int, typer.Option(help="Seed of the chain and the partition.")] = 0,
    nodes: Annotated[int, typer.Option(help="Split into this many non-IID node datasets (0: one central dataset).")] = 0,
) -> None:
    """Simulate a chain and write task datasets (a node points its --data-dir at one of them)."""
    from core.data.chain import ChainConfig, simulate_chain
    from core.data.datasets import partition_nodes, save_dataset, task_arrays

    chain = simulate_chain(ChainConfig(n_transactions=transactions, seed=seed))
    info = {"seed": seed, "transactions": transactions}
    if nodes <= 0:
        save_dataset(out, task_arrays(chain), info)
        console.print(f"wrote {out}")
        return
    for shard in partition_nodes(chain, nodes, seed):
        d = out / f"node-{shard.node_id}"
        save_dataset(d, task_arrays(chain, shard.tx_index, shard.snapshot_index),
                     {**info, "node_id": shard.node_id, "profile": shard.profile})
        console.print(f"wrote {d} ({shard.profile})")


@app.command()
def bench(
    names: Annotated[list[str] | None, typer.Argument(help="Benchmarks or prefixes to run (default: all).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON to this file.")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List benchmarks and exit.")] = False,
    out: Annotated[Path, typer.Option(help="robustness: output directory.")] = Path("runs/robustness"),
    tasks: Annotated[str, typer.Option(help="robustness: tasks (comma-separated).")] = "fraud",
    rounds: Annotated[int, typer.Option(help="robustness: rounds per federation.")] = 5,
    local_epochs: Annotated[int, typer.Option(help="robustness: local epochs per round.")] = 5,
    strategies: Annotated[str | None, typer.Option(help="robustness: strategies (default: all).")] = None,
    attacks: Annotated[str | None, typer.Option(help="robustness: attacks (default: all).")] = None,
    fractions: Annotated[str, typer.Option(help="robustness: malicious shares.")] = "0.1,0.2,0.3",
    dp: Annotated[bool, typer.Option(help="robustness: DP-SGD on the nodes.")] = False,
) -> None:
    """Run named benchmarks; print ours next to the seed's figure and the target.

    `anya-fl bench robustness` runs the robustness evidence table instead (every strategy against every
    attack and malicious share; writes OUT/robustness.json and OUT/robustness.png).
    """
    if names == ["robustness"]:
        _robustness(out, tasks, rounds, local_epochs, strategies, attacks, fractions, dp)
        return
    from anya_fl.bench import BENCHMARKS, run_benchmarks

    if list_only:
        console.print(table("benchmarks", ["name", "unit", "seed project's figure", "target"],
                            [[b.name, b.unit, b.reference, b.target] for b in BENCHMARKS.values()]))
        return
    results = run_benchmarks(names or [])
    rows = []
    for name, r in results.items():
        b = BENCHMARKS[name]
        ratio = (r["value"] / b.reference if b.higher_is_better else b.reference / r["value"]) if b.reference and r["value"] else None
        met = None if b.target is None else (r["value"] >= b.target if b.higher_is_better else r["value"] <= b.target)
        rows.append([name, r["value"], b.unit, b.reference, ratio, b.target, met])
    console.print(table("anya-fl bench", ["benchmark", "ours", "unit", "seed project's figure", "x better", "target",
                                          "met"], rows))
    if json_out:
        from core.storage import atomic_write_json

        atomic_write_json(json_out, results)
        console.print(f"wrote {json_out}")


def _robustness(out: Path, tasks: str, rounds: int, local_epochs: int, strategies: str | None, attacks: str | None,
                fractions: str, dp: bool) -> None:
    from anya_fl.experiments.robustness import STRATEGIES, RobustnessConfig, run_table
    from core.errors import ConfigError
    from core.fedconfig import ATTACKS

    strat = tuple(s.strip() for s in strategies.split(",")) if strategies else STRATEGIES
    atk = tuple(a.strip() for a in attacks.split(",")) if attacks else ATTACKS
    for name, chosen, allowed in (("strategies", strat, STRATEGIES), ("attacks", atk, ATTACKS)):
        bad = [c for c in chosen if c not in allowed]
        if bad:
            raise ConfigError(name, f"{bad} not known; choose from {', '.join(allowed)}")
    fr = _parse_floats(fractions, "fractions")
    if any(not 0 < f < 0.5 for f in fr):
        raise ConfigError("fractions", f"{fr}: each share must be in (0, 0.5)")
    cfg = RobustnessConfig(tasks=tasks, rounds=rounds, local_epochs=local_epochs, strategies=strat, attacks=atk,
                           fractions=fr, dp=dp)
    total = len(strat) * (1 + len(atk) * len(fr))
    with progress() as prog:
        bar = prog.add_task("robustness table", total=total)
        result = run_table(cfg, out, on_run=lambda name, row: prog.update(bar, advance=1, description=name))
    for task in result["primary_metric"]:
        def metric(s: str, a: str, f: float, task: str = task) -> float:
            return next(r["metrics"][task] for r in result["runs"] if r["strategy"] == s and r["attack"] == a
                        and abs(r["malicious"] - f) < 1e-9)

        rows = [["clean", *(metric(s, "none", 0.0) for s in strat)]]
        rows += [[f"{a} {100 * f:.0f}%", *(metric(s, a, f) for s in strat)] for a in atk for f in fr]
        console.print(table(f"{task}: {result['primary_metric'][task]} of the final global model", ["attack", *strat],
                            rows))
    console.print(f"wrote {out / 'robustness.json'} and {out / 'robustness.png'}")


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



if __name__ == "__main__":
    main()
