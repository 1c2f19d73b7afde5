"""`anya-fl bench`: the benchmark registry, and the robustness table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anya_fl.cli.app import _parse_floats
from anya_fl.console import console, progress, table


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
