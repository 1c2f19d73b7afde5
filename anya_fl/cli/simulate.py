"""`anya-fl simulate`: a whole federation as a simulation (Flower Simulation Engine on Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anya_fl.cli.app import _FED, _round_display
from anya_fl.console import console, progress
from core.fedconfig import FederationConfig


def simulate(
    nodes: Annotated[int, typer.Option(help="Simulated nodes (Flower SuperNodes).")] = _FED.nodes,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = _FED.rounds,
    tasks: Annotated[str, typer.Option(help="Tasks (comma-separated): fraud, fee, anomaly, network, liquidity. "
                                            "network learns attacks from node telemetry watched on simulated nodes "
                                            "(about 1.3 s per watched episode, 10 per node); liquidity learns "
                                            "channel balances from a simulated Lightning network's routers (node i "
                                            "is router i).")] = _FED.tasks,
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
            nodes=nodes, rounds=rounds, tasks=tasks, strategy=strategy, epsilon=epsilon, dp=dp, seed=seed, transactions=transactions,
            local_epochs=local_epochs, min_nodes=min_nodes, fraction_train=fraction_train, byzantine=byzantine,
            attack=attack, malicious=malicious, screening=screening, central_dp=central_dp, central_noise=central_noise,
            central_clip=central_clip, lifetime_epsilon=lifetime_epsilon, fraction_evaluate=fraction_evaluate,
        ).validate()
        resources = SimulationResources(ray_address=ray_address, node_cpus=node_cpus, node_gpus=node_gpus).validate()
        target = run_dir or Path("runs") / _time.strftime("sim-%Y%m%d-%H%M%S")
        what = f"simulating a {transactions:,}-transaction chain and dealing it to {nodes} nodes"
        if "network" in cfg.task_list:
            from anya_fl.experiments.network_data import episodes_total

            with progress() as prog:
                bar = prog.add_task(what + ", then watching simulated nodes under attack (network task)",
                                    total=episodes_total(cfg.nodes))
                cfg = prepare_run(cfg, target, resources, on_network_episode=lambda: prog.advance(bar))
        else:
            with console.status(what):
                cfg = prepare_run(cfg, target, resources)
    t0 = _time.perf_counter()
    with progress() as prog:
        rc = run_flower(target, _round_display(prog, "starting Flower (Ray)", cfg.rounds))
    metrics = check_finished(target, rc)
    console.print(f"federation finished in {_time.perf_counter() - t0:.0f} s")
    from anya_fl.simulation_report import finish_report  # not at import: `anya-fl serve` loads no fl_server

    finish_report(target, metrics, compare)
