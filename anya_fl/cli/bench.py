"""`anya-fl bench`: the benchmark registry, the robustness table and the fee-estimator benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anya_fl.cli.app import _FED, _parse_floats
from anya_fl.console import console, progress, table


def bench(
    names: Annotated[list[str] | None, typer.Argument(help="Benchmarks or prefixes to run (default: all).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results as JSON to this file.")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="List benchmarks and exit.")] = False,
    out: Annotated[Path, typer.Option(help="robustness: output directory.")] = Path("runs/robustness"),
    tasks: Annotated[str, typer.Option(help="robustness: tasks (comma-separated).")] = "fraud",
    rounds: Annotated[int | None, typer.Option(help="robustness, fee, network, liquidity: rounds per federation "
                                                    "(default: 5; "
                                                f"fee: the simulation's {_FED.rounds}).")] = None,
    local_epochs: Annotated[int, typer.Option(help="robustness: local epochs per round.")] = 5,
    strategies: Annotated[str | None, typer.Option(help="robustness: strategies (default: all).")] = None,
    attacks: Annotated[str | None, typer.Option(help="robustness: attacks (default: all).")] = None,
    fractions: Annotated[str, typer.Option(help="robustness: malicious shares.")] = "0.1,0.2,0.3",
    dp: Annotated[bool | None, typer.Option("--dp/--no-dp", help="robustness (default off), network and liquidity "
                                                               "(default on): "
                                                               "DP-SGD on the nodes.")] = None,
    model: Annotated[bool, typer.Option("--model/--no-model", help="network: also federate the network-attack "
                                                                   "model and compare it with local-only models "
                                                                   "(about 3 minutes).")] = True,
    seeds: Annotated[str, typer.Option(help="fee, liquidity: RNG seeds, one federation each (comma-separated).")
                     ] = "0,1,2",
    transactions: Annotated[int | None, typer.Option(help="fee: simulated chain size (default: the simulation's "
                                                          f"{_FED.transactions:,}).")] = None,
    nodes: Annotated[int | None, typer.Option(help=f"fee: nodes per federation (default: {_FED.nodes}; liquidity: "
                                                   "5).")] = None,
    epsilon: Annotated[float | None, typer.Option(help="fee: DP budget per node and run (default: "
                                                       f"{_FED.epsilon:g}).")] = None,
) -> None:
    """Run named benchmarks; print ours next to the seed's figure and the target.

    `anya-fl bench robustness` runs the robustness evidence table instead (every strategy against every
    attack and malicious share; writes OUT/robustness.json and OUT/robustness.png).

    `anya-fl bench network` runs the network watch against the simulated node's P2P scenarios and a clean
    simulated week (`network.<scenario>.detected`, `.minutes_to_detect`, `network.clean_week.false_alarms`),
    then federates the network-attack model (5 nodes, each seeing 2 of 5 scenarios) and scores it against each
    node's local-only model on the scenarios that node never saw (`network.model.<federated|local>.*`).

    `anya-fl bench liquidity` federates the liquidity model on a simulated Lightning network (per seed, node i is
    router i) and scores it against the uniform and bimodal priors and each node's local-only model on another
    network's channels (log-loss, Brier, calibration), then routes the same payments by each
    (`liquidity.<estimator>.<metric>`).

    `anya-fl bench fee` runs the fee-estimator benchmark: per seed a DP federation of the fee model, scored
    with the Core-style and mempool.space-style estimators on the same replay (`--json` writes its figures).
    """
    if names == ["robustness"]:
        _robustness(out, tasks, 5 if rounds is None else rounds, local_epochs, strategies, attacks, fractions,
                    bool(dp))
        return
    if names == ["fee"]:
        _fee(seeds, transactions, nodes, rounds, epsilon, json_out)
        return
    if names == ["network"]:
        _network(json_out, model, 5 if rounds is None else rounds, True if dp is None else dp)
        return
    if names == ["liquidity"]:
        _liquidity(json_out, seeds, nodes, rounds, True if dp is None else dp)
        return
    from anya_fl.bench import BENCHMARKS, run_benchmarks

    if list_only:
        console.print(table("benchmarks", ["name", "unit", "seed project's figure", "target"],
                            [[b.name, b.unit, b.reference, b.target] for b in BENCHMARKS.values()]))
        console.print("tables: `anya-fl bench robustness` (strategies x attacks), `anya-fl bench fee` (the federated "
                      "fee model vs Core-style vs mempool.space-style, per seed), `anya-fl bench network` (the "
                      "network watch against attack scenarios and a clean week), `anya-fl bench liquidity` (the "
                      "federated liquidity model vs the pathfinding priors and local-only models)")
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


def _network_model_tables(result: dict, scenarios: dict) -> None:
    c = result["config"]
    how = (f"{c['nodes']} nodes x {c['rounds']} rounds x {c['local_epochs']} local epochs, {c['strategy']}, "
           + (f"DP eps {c['epsilon']:g}" if c["dp"] else "no DP"))
    metrics = ["unseen_recall", "unseen_episodes", "false_alarm_rate", "pr_auc"]
    rows = [[r["node"], ", ".join(r["own"]), ", ".join(r["unseen"]),
             *[f"{r['federated'][m]:.3f} / {r['local'][m]:.3f}" for m in metrics]] for r in result["per_node"]]
    rows.append(["mean", "", "", *[f"{result['mean']['federated'][m]:.3f} / {result['mean']['local'][m]:.3f}"
                                   for m in metrics]])
    console.print(table(f"network-attack model on scenarios a node never saw: federated / local-only ({how})",
                        ["node", "own scenarios", "never saw", *metrics], rows))
    krows = []
    for kind, k in result["by_kind"].items():
        rule = scenarios.get(kind)
        krows.append([kind, "-" if rule is None else ("yes" if rule["detected"] else "no"),
                      "-" if rule is None or rule["minutes_to_detect"] is None else round(rule["minutes_to_detect"], 1),
                      "-" if k["recall"] is None else f"{k['recall']:.2f}",
                      "-" if k["minutes_to_detect"] is None else round(k["minutes_to_detect"], 1),
                      "-" if k["false_alarm_rate"] is None else f"{k['false_alarm_rate']:.3f}"])
    console.print(table("rules and the federated model per scenario (held-out episodes, model at p >= 0.5)",
                        ["scenario", "rules detected", "rules minutes", "model: attack minutes flagged",
                         "model minutes", "model: clean minutes flagged"], krows))
    week = result["clean_week"]
    top = week["model_max_score"]
    console.print(table("the clean simulated week with the federated model in the watch (a poll per 10 minutes)",
                        ["days", "alerts above INFO", "which", "model polls", "highest P(attack)"],
                        [[round(week["simulated_days"], 2), week["false_alarms"], ", ".join(week["by_detector"]) or "-",
                          week["model_polls"], "-" if top is None else f"{top:.3f}"]]))


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


def _fee(seeds: str, transactions: int | None, nodes: int | None, rounds: int | None, epsilon: float | None,
         json_out: Path | None) -> None:
    from anya_fl.experiments import fee_bench

    chosen = fee_bench.parse_seeds(seeds)
    settings = {"transactions": transactions, "nodes": nodes, "rounds": rounds, "epsilon": epsilon}
    with progress() as prog:
        result = fee_bench.run_fee_bench(chosen, progress=prog, **{k: v for k, v in settings.items() if v is not None})
    for renderable in fee_bench.render_bench(result):
        console.print(renderable)
    if json_out:
        from core.storage import atomic_write_json

        atomic_write_json(json_out, result["metrics"])
        console.print(f"wrote {json_out}")


def _arrival_table(r: dict) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [["forecast (this node's own timed blocks)", f(r["roc_auc"]), f(r["pr_auc"]), f(r["precision"]),
             f(r["recall"])],
            ["persistence (last block slow)", f(r["persistence_roc_auc"]), "-", f(r["persistence_precision"]),
             f(r["persistence_recall"])],
            ["propagation rule (3 of last 6 slow)", "-", "-", f(r["rule_precision"]), f(r["rule_recall"])]]
    console.print(table(f"slow block arrival, the next block: {r['blocks']} blocks of the third window on "
                        f"{len(r['seeds'])} nodes, {r['slow']} truly slow; the node's observed labels agree with the "
                        f"truth for {f(r['label_agreement'])}; first warning {f(r['lead_minutes'])} min (forecast) "
                        f"and {f(r['rule_lead_minutes'])} min (rule) before the first slow arrival",
                        ["predictor", "ROC-AUC", "PR-AUC", "precision", "recall"], rows))


def _network(json_out: Path | None, model: bool, rounds: int, dp: bool) -> None:
    from anya_fl.experiments import network_bench as nb

    scenarios: dict = {}
    with progress() as prog:
        bar = prog.add_task("network scenarios", total=len(nb.SCENARIOS))
        for name in nb.SCENARIOS:
            prog.update(bar, description=f"scenario {name}")
            scenarios[name] = nb.run_scenario(name)
            prog.update(bar, advance=1)
        week_bar = prog.add_task("a clean simulated week", total=1.0)
        week = nb.run_clean_week(step=lambda f: prog.update(week_bar, completed=f))
    rows = [[name, nb.SCENARIOS[name][0], "yes" if r["detected"] else "no",
             None if r["minutes_to_detect"] is None else round(r["minutes_to_detect"], 1),
             f"{r['stated_minutes']:g} min after {r['stated_from']}", "yes" if r["within_stated"] else "no"]
            for name, r in scenarios.items()]
    console.print(table("network watch: scenarios on the simulated node (a poll per simulated minute)",
                        ["scenario", "detector", "detected", "minutes from start", "stated time", "within"], rows))
    console.print(table("a clean simulated week (a poll per 10 simulated minutes)",
                        ["days", "alerts above INFO", "INFO alerts", "which"],
                        [[round(week["simulated_days"], 2), week["false_alarms"], week["info"],
                          ", ".join(week["by_detector"]) or "-"]]))
    from anya_fl.experiments import arrival_bench as ab

    with progress() as prog:
        arrival_bar = prog.add_task("slow-arrival forecast: degraded-relay windows", total=1.0)
        arrival = ab.run_slow_arrival(step=lambda f: prog.update(arrival_bar, completed=f))
    _arrival_table(arrival)
    figures = nb.bench_metrics(scenarios, week)
    figures.update(ab.arrival_metrics(arrival))
    if model:
        from anya_fl.experiments import network_model as nm

        with console.status("network-attack model") as status:
            result = nm.run_network_model(rounds=rounds, dp=dp, on_step=lambda m: status.update(m))
        _network_model_tables(result, scenarios)
        figures.update(nm.model_metrics(result))
    if json_out:
        from core.storage import atomic_write_json

        atomic_write_json(json_out, figures)
        console.print(f"wrote {json_out}")


def _liquidity(json_out: Path | None, seeds: str, nodes: int | None, rounds: int | None, dp: bool) -> None:
    import numpy as np

    from anya_fl.experiments import liquidity_bench as lb
    from core.errors import ConfigError

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError("seeds", f"{seeds!r} must be comma-separated integers") from None
    if not seed_list or any(s < 0 for s in seed_list):
        raise ConfigError("seeds", f"{seeds!r} must name at least one integer >= 0")
    results = []
    for seed in seed_list:
        with console.status(f"liquidity, seed {seed}") as status:
            results.append(lb.run_liquidity_bench(seed=seed, nodes=nodes or lb.NODES, rounds=rounds or lb.ROUNDS,
                                                  dp=dp, on_step=lambda m, s=seed: status.update(f"seed {s}: {m}")))
    c = results[0]["config"]
    how = (f"{c['nodes']} routers of {c['routers']} federated, {c['rounds']} rounds x {c['local_epochs']} local epochs, "
           f"{c['strategy']}, " + (f"DP eps {c['epsilon']:g}" if c["dp"] else "no DP"))
    names = list(results[0]["scores"])
    metrics = ["log_loss", "brier", "ece", "roc_auc"]
    rows = []
    for name in names:
        cells = []
        for m in metrics:
            vals = [r["scores"][name].get(m) for r in results]
            cells.append("-" if any(v is None for v in vals) else
                         f"{np.mean(vals):.3f}" + (f" ({', '.join(f'{v:.3f}' for v in vals)})" if len(vals) > 1 else ""))
        succ = [r["success"][name]["success_rate"] for r in results]
        att = [r["success"][name]["mean_attempts"] for r in results]
        rows.append([name, *cells, f"{np.mean(succ):.3f}" + (f" ({', '.join(f'{v:.3f}' for v in succ)})"
                                                             if len(succ) > 1 else ""), f"{np.mean(att):.2f}"])
    questions = sum(r["questions"] for r in results)
    console.print(table(f"liquidity: P(a channel forwards) on another network's channels ({questions:,} questions, "
                        f"seeds {', '.join(map(str, seed_list))}; {how}), and payments routed by each",
                        ["estimator", "log-loss", "Brier", "calibration error", "ROC-AUC", "payment success",
                         "attempts"], rows))
    figures: dict = {}
    for r in results:
        for key, v in lb.liquidity_metrics(r).items():
            figures.setdefault(key, {**v, "per_seed": []})["per_seed"].append(v["value"])
    for v in figures.values():
        v["value"] = float(np.mean(v["per_seed"]))
    if json_out:
        from core.storage import atomic_write_json

        atomic_write_json(json_out, {"figures": figures, "runs": results})
        console.print(f"wrote {json_out}")
