"""The `anya-fl` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.console import console, err_console, progress, table
from core.errors import AnyaError

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
    nodes: Annotated[int, typer.Option(help="Simulated nodes (Flower SuperNodes).")] = 10,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 5,
    strategy: Annotated[str, typer.Option(help="fedavg, fedprox, fedadam, krum, multikrum, bulyan, median, trimmed-mean.")] = "fedavg",
    epsilon: Annotated[float, typer.Option(help="DP budget per node and task for the whole run.")] = 8.0,
    dp: Annotated[bool, typer.Option("--dp/--no-dp", help="Train with DP-SGD (Opacus).")] = True,
    seed: Annotated[int, typer.Option(help="Seed for the chain, the partition and every model.")] = 0,
    transactions: Annotated[int, typer.Option(help="Transactions in the simulated chain.")] = 200_000,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 5,
    min_nodes: Annotated[int, typer.Option(help="Nodes that must take part in each round.")] = 2,
    fraction_train: Annotated[float, typer.Option(help="Share of nodes sampled for training each round.")] = 1.0,
    byzantine: Annotated[int, typer.Option(help="Malicious nodes assumed by krum, multikrum and bulyan.")] = 0,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/sim-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory from its last round.")] = None,
    compare: Annotated[bool, typer.Option("--compare/--no-compare", help="Also train centralized and local-only baselines.")] = True,
) -> None:
    """Run a whole federation on this machine (Flower Simulation Engine) and write the report."""
    import time as _time

    from anya_fl.simulation import check_finished, load_run, prepare_run, run_flower
    from core.fedconfig import FederationConfig

    if resume is not None:
        cfg = load_run(resume)
        target = resume
        console.print(f"resuming {target} ({cfg.strategy}, {cfg.nodes} nodes, {cfg.rounds} rounds)")
    else:
        cfg = FederationConfig(
            nodes=nodes, rounds=rounds, strategy=strategy, epsilon=epsilon, dp=dp, seed=seed, transactions=transactions,
            local_epochs=local_epochs, min_nodes=min_nodes, fraction_train=fraction_train, byzantine=byzantine,
        ).validate()
        target = run_dir or Path("runs") / _time.strftime("sim-%Y%m%d-%H%M%S")
        with console.status(f"simulating a {transactions:,}-transaction chain and dealing it to {nodes} nodes"):
            cfg = prepare_run(cfg, target)
    t0 = _time.perf_counter()
    with progress() as prog:
        job = prog.add_task("starting Flower (Ray)", total=cfg.rounds)

        def show(state: dict) -> None:
            done = state["round"] - (0 if state["phase"] == "done" else 1)
            prog.update(job, completed=done, description=f"round {state['round']}/{cfg.rounds}: {state['phase']}")

        rc = run_flower(target, show)
    metrics = check_finished(target, rc)
    console.print(f"federation finished in {_time.perf_counter() - t0:.0f} s")
    _report(target, metrics, compare)


def _report(run_dir: Path, metrics: dict, compare: bool) -> None:
    from anya_fl.simulation_report import comparison_rows, plot_rounds, summarize, write_html_report
    from core.storage import atomic_write_json

    comparison = None
    if compare:
        from anya_fl.comparison import compare as run_compare

        with progress() as prog:
            comparison = run_compare(run_dir, metrics, prog)
        atomic_write_json(run_dir / "comparison.json", comparison)
    hist = metrics["history"]
    tasks = [t for t in ("fraud", "fee", "anomaly") if t in hist[-1]["global"]]
    primary = {"fraud": "pr_auc", "fee": "hit_rate", "anomaly": "roc_auc"}
    rows = [[h["round"], *[h["global"][t][primary[t]] for t in tasks], h["nodes_replied"], len(h["nodes_failed"]),
             round(h["seconds"], 1)] for h in hist]
    console.print(table("global models on the coordinator's held-out set, per round",
                        ["round", *[f"{t} {primary[t]}" for t in tasks], "nodes ok", "declined", "seconds"], rows))
    if comparison:
        console.print(table("federated vs centralized vs local-only (same epsilon, same test set)",
                            ["task", "metric", "federated", "centralized", "local-only mean", "fed - local",
                             "fed vs central", "epsilon"], comparison_rows(comparison)))
    last = hist[-1]["nodes"]
    console.print(table("epsilon spent per node (whole run)", ["node", *[f"{t}" for t in tasks], "transactions (fraud+anomaly)"],
                        [[n, *[m.get(f"{t}.epsilon", 0.0) for t in tasks], m.get("epsilon-transactions", 0.0)]
                         for n, m in last.items()]))
    plots = plot_rounds(metrics, run_dir / "plots")
    html = write_html_report(metrics, comparison, plots, run_dir / "report.html", title=f"anya-fl simulation {run_dir.name}")
    summary = summarize(metrics)
    atomic_write_json(run_dir / "summary.json", summary)
    console.print(f"wrote {run_dir / 'metrics.json'}, {len(plots)} plots in {run_dir / 'plots'}, and {html}")


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
) -> None:
    """Run named benchmarks; print ours next to the seed's figure and the target."""
    from anya_fl.bench import BENCHMARKS, run_benchmarks

    if list_only:
        console.print(table("benchmarks", ["name", "unit", "seed", "target"],
                            [[b.name, b.unit, b.seed, b.target] for b in BENCHMARKS.values()]))
        return
    results = run_benchmarks(names or [])
    rows = []
    for name, r in results.items():
        b = BENCHMARKS[name]
        ratio = (r["value"] / b.seed if b.higher_is_better else b.seed / r["value"]) if b.seed and r["value"] else None
        met = None if b.target is None else (r["value"] >= b.target if b.higher_is_better else r["value"] <= b.target)
        rows.append([name, r["value"], b.unit, b.seed, ratio, b.target, met])
    console.print(table("anya-fl bench", ["benchmark", "ours", "unit", "seed", "x better", "target", "met"], rows))
    if json_out:
        from core.storage import atomic_write_json

        atomic_write_json(json_out, results)
        console.print(f"wrote {json_out}")


def main() -> None:
    """Entry point: user errors print one line, never a traceback."""
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
