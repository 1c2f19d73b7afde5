"""The fee-estimator benchmark (`anya-fl bench fee`) and the fee three-way table in the simulation report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from anya_fl.comparison import fee_estimators, final_global_model
from anya_fl.experiments.fee_bench import (
    HIT_GOAL,
    SHORT_NAMES,
    bench_config,
    goal,
    mean_comparison,
    parse_seeds,
    render_bench,
    run_fee_bench,
)
from anya_fl.simulation_report import FEE_ESTIMATORS, comparison_rows, write_html_report
from core.bitcoin.features import TASK_SCHEMAS
from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import FEE_TARGETS, task_arrays
from core.data.replay import CORE, MEMPOOL_SPACE
from core.errors import ConfigError, DatasetError
from core.fedconfig import FederationConfig
from models.tasks import infer

TX = 40_000  # the smallest chain that gives seed 0 fee rows in every split (steps of 5,000)
SEED = 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict:
    """One seed, 2 nodes, 1 round on a 40,000-transaction chain (a few seconds); run dirs kept."""
    out = tmp_path_factory.mktemp("fee-bench")
    return run_fee_bench(seeds=(SEED,), transactions=TX, nodes=2, rounds=1, out_dir=out)


def _cell(result: dict, estimator: str, k) -> dict:
    return next(r for r in result["overall"] if r["estimator"] == estimator and str(r["k"]) == str(k))


def test_bench_has_finite_figures_for_every_estimator_and_k(bench) -> None:
    keys = bench["keys"]
    assert list(keys) == list(SHORT_NAMES)
    assert keys["federated"] == "federated model (DP ε 8)" and keys["core"] == CORE and keys["mempool"] == MEMPOOL_SPACE
    assert bench["estimators"] == list(keys.values())
    assert bench["mean"]["targets"] == list(FEE_TARGETS)
    assert [r["seed"] for r in bench["seeds"]] == [SEED]
    for result in (bench["mean"], bench["seeds"][0]["comparison"]):
        for name in keys.values():
            for k in [*FEE_TARGETS, "all"]:
                cell = _cell(result, name, k)
                assert 0.0 <= cell["hit_rate"] <= 1.0 and math.isfinite(cell["median_overpay_sat_vb"]), (name, k)
                assert cell["median_overpay_sat_vb"] >= 0.0 and cell["rows"] > 0
        assert {r["confidence"] for r in result["core_confidence"]} == {0.5, 0.8, 0.95}
        assert {r["phase"] for r in result["by_phase"]} <= {"clear", "busy", "congested"}
    for short in SHORT_NAMES:
        for figure in ("hit_min", "overpay_median", *(f"hit.k{k}" for k in FEE_TARGETS)):
            metric = bench["metrics"][f"fee.{short}.{figure}"]
            assert math.isfinite(metric["value"]) and set(metric) >= {"value", "unit", "reference", "target"}
            assert len(metric["per_seed"]) == 1
    assert bench["metrics"]["fee.federated.hit_min"]["target"] == HIT_GOAL
    assert bench["metrics"]["fee.goal_met"]["value"] == (1.0 if bench["goal"]["met"] else 0.0)
    assert bench["goal"]["met"] == (not bench["goal"]["misses"])
    seed = bench["seeds"][0]
    assert seed["rounds_completed"] == 1 and 0 < seed["epsilon_spent"] <= 8.0 + 1e-6
    json.dumps(bench)  # JSON-able as a whole


def test_federated_hit_rate_equals_a_direct_recomputation(bench) -> None:
    """From the run's final checkpoint, the rebuilt chain's test rows and ``pred >= required``: the same figures."""
    run = bench["seeds"][0]
    model, rnd = final_global_model(Path(run["run_dir"]), "fee")
    assert rnd == 1
    fee = task_arrays(simulate_chain(ChainConfig(n_transactions=TX, seed=SEED)))["fee"]
    x, y = fee.x["test"], fee.y["test"]
    pred = infer(model, x).astype(np.float64)
    hit = pred >= y
    k = x[:, TASK_SCHEMAS["fee"].index("conf_target_blocks")].astype(int)
    name = bench["keys"]["federated"]
    assert _cell(bench["mean"], name, "all")["hit_rate"] == pytest.approx(hit.mean(), abs=1e-12)
    assert _cell(bench["mean"], name, "all")["median_overpay_sat_vb"] == pytest.approx(
        np.median(np.where(hit, pred - y, 0.0)), abs=1e-9)
    for kk in FEE_TARGETS:
        assert _cell(bench["mean"], name, kk)["hit_rate"] == pytest.approx(hit[k == kk].mean(), abs=1e-12)
    lowest = min(hit[k == kk].mean() for kk in FEE_TARGETS)
    assert bench["metrics"]["fee.federated.hit_min"]["value"] == pytest.approx(lowest, abs=1e-12)
    # and the coordinator's own evaluation of that round's global model says the same
    assert run["server_metrics"]["hit_rate"] == pytest.approx(hit.mean(), abs=1e-6)


def test_mean_over_seeds_and_the_goal() -> None:
    def result(seed: int, fed: tuple[float, float], core: tuple[float, float], mempool: tuple[float, float]) -> dict:
        overall = [{"estimator": name, "k": k, "rows": 10, "hit_rate": h, "median_overpay_sat_vb": o,
                    "median_fee_sat_vb": 5.0}
                   for name, (h, o) in (("fed", fed), (CORE, core), (MEMPOOL_SPACE, mempool)) for k in (1, "all")]
        return {"seed": seed, "rows": 10, "targets": [1], "estimators": ["fed", CORE, MEMPOOL_SPACE],
                "phase_definition": {}, "phase_rows": {"clear": 10}, "fallback_share": {CORE: 0.0},
                "overall": overall, "by_phase": [], "core_confidence": [], "by_profile": []}

    mean = mean_comparison([result(0, (1.0, 1.0), (1.0, 3.0), (0.8, 2.0)), result(1, (0.9, 2.0), (1.0, 3.0), (0.8, 2.5))])
    fed = _cell(mean, "fed", 1)
    assert fed["hit_rate"] == pytest.approx(0.95) and fed["hit_rate_per_seed"] == [1.0, 0.9]
    assert fed["median_overpay_sat_vb"] == pytest.approx(1.5) and fed["rows"] == 20 and fed["seeds"] == [0, 1]
    keys = {"federated": "fed", "core": CORE, "mempool": MEMPOOL_SPACE}
    assert goal(mean, keys) == {"hit_goal": HIT_GOAL, "met": True, "misses": []}
    worse = mean_comparison([result(0, (0.85, 2.4), (1.0, 3.0), (0.8, 2.0))])
    misses = goal(worse, keys)["misses"]
    assert not goal(worse, keys)["met"] and len(misses) == 2
    assert misses[0].startswith("k=1: hit rate 0.850 < 0.90") and MEMPOOL_SPACE in misses[1]


def test_rendered_bench_names_every_estimator(bench) -> None:
    from rich.console import Console

    console = Console(record=True, width=200)
    for renderable in render_bench(bench):
        console.print(renderable)
    text = console.export_text()
    for needle in (bench["keys"]["federated"], CORE, MEMPOOL_SPACE, "by congestion phase", "per confidence level",
                   "per seed", "goal"):
        assert needle in text


def test_report_section_renders(bench, tmp_path, monkeypatch, capsys) -> None:
    """The fee table in comparison.json, the console and report.html; the task rows are unchanged by it."""
    import anya_fl.comparison
    from anya_fl.simulation_report import finish_report

    run_dir = Path(bench["seeds"][0]["run_dir"])
    fee = bench["seeds"][0]["comparison"]
    task_block = {"federated": {"pinball_loss": 0.1, "hit_rate": 0.9, "median_overpay_sat_vb": 2.0, "epsilon": 8.0},
                  "centralized": {"pinball_loss": 0.1, "hit_rate": 0.9, "median_overpay_sat_vb": 2.0, "epsilon": 8.0},
                  "local_only_mean": {}, "local_only": []}
    comparison = {"fee": task_block, FEE_ESTIMATORS: fee}
    assert comparison_rows(comparison) == comparison_rows({"fee": task_block})
    html = write_html_report({"config": {"tasks": "fee"}}, comparison, [], tmp_path / "report.html", "t").read_text()
    section = html[html.index("<h2>Fee estimators on the same replay</h2>"):]
    for needle in (bench["keys"]["federated"], CORE, MEMPOOL_SPACE, "<th>k=12</th>", "Per congestion phase",
                   "Core-style estimaterawfee per confidence level", "hit rate", "median overpay (sat/vB)",
                   "<th>fallback share</th>"):
        assert needle in section, needle
    assert "<h3>fee_estimators</h3>" not in html  # not taken for a task's local-only table

    monkeypatch.setattr(anya_fl.comparison, "compare", lambda run_dir, metrics, progress: comparison)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    finish_report(run_dir, metrics, compare=True)
    out = capsys.readouterr().out
    assert "federated vs centralized vs local-only" in out and "fee estimators on" in out
    assert bench["keys"]["federated"] in out and MEMPOOL_SPACE in out
    saved = json.loads((run_dir / "comparison.json").read_text())
    assert saved[FEE_ESTIMATORS]["estimators"] == bench["estimators"] and set(saved["fee"]) == set(task_block)
    assert "Fee estimators on the same replay" in (run_dir / "report.html").read_text()


def test_fee_estimators_refuses_data_of_another_chain(bench) -> None:
    run = bench["seeds"][0]
    cfg = bench_config(SEED, TX, 2, 1, 8.0, Path(run["run_dir"]).parent)
    with pytest.raises(DatasetError, match="differ from those of the chain rebuilt"):
        fee_estimators(Path(run["run_dir"]), replace(cfg, seed=SEED + 1))


@pytest.mark.parametrize("text", ["0,x", "1.5", "-1", "2,2", ",", ""])
def test_bad_seeds_are_one_line_config_errors(text) -> None:
    from anya_fl.cli import app

    with pytest.raises(ConfigError):
        parse_seeds(text)
    res = CliRunner().invoke(app, ["bench", "fee", "--seeds", text])
    assert isinstance(res.exception, ConfigError), res.output
    assert res.exception.setting == "seeds" and "\n" not in str(res.exception)


def test_bad_bench_settings_fail_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match="rounds"):
        run_fee_bench(seeds=(0,), transactions=TX, nodes=2, rounds=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="transactions"):
        run_fee_bench(seeds=(0,), transactions=20_000, nodes=2, rounds=1, out_dir=tmp_path)
    (tmp_path / "seed-0").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        run_fee_bench(seeds=(0,), transactions=TX, nodes=2, rounds=1, out_dir=tmp_path)


def test_simulation_comparison_carries_the_fee_table(bench) -> None:
    """`compare()` on a finished run: the task blocks as before, plus the fee three-way table."""
    from anya_fl.comparison import compare

    run_dir = Path(bench["seeds"][0]["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({"config": metrics["config"], "profiles": []}))
    out = compare(run_dir, metrics)
    assert set(out) == {"fee", FEE_ESTIMATORS}
    assert set(out["fee"]) == {"federated", "centralized", "local_only_mean", "local_only"}
    assert out[FEE_ESTIMATORS]["overall"] == bench["seeds"][0]["comparison"]["overall"]
    assert out[FEE_ESTIMATORS]["federated_estimator"] == "federated model (DP ε 8)"
    assert FederationConfig.from_run_config(metrics["config"]).task_list == ("fee",)
