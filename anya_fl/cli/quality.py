"""`anya-fl baseline` and `anya-fl data`: the centralized quality report and simulated datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anya_fl.cli.app import _parse_floats
from anya_fl.console import console, progress, table


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
