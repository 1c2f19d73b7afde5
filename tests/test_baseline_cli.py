"""The quality report and the command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from anya_fl.baseline import BaselineConfig, check_targets, markdown_tables, run_baseline, write_report
from core.data.datasets import load_dataset
from core.errors import ConfigError


def anya(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anya_fl.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report():
    return run_baseline(BaselineConfig(n_transactions=60_000, seed=1, epsilons=(8.0,)))


@pytest.mark.slow
def test_report_has_every_variant_and_reference(report) -> None:
    models = {t: [r["model"] for r in rows] for t, rows in report["tasks"].items()}
    assert {"gradient-boosted trees", "logistic regression", "MLP"} <= set(models["fraud"])
    assert "Core-style buckets" in models["fee"] and "IsolationForest" in models["anomaly"]
    for rows in report["tasks"].values():
        dp = [r for r in rows if r.get("private")]
        assert len(dp) == 1 and dp[0]["accountant"] == "prv"
        assert 0.97 * 8.0 <= dp[0]["epsilon"] <= 8.0
    fraud = {r["model"]: r for r in report["tasks"]["fraud"] if not r.get("private")}
    assert fraud["MLP"]["pr_auc"] > 3 * report["chain"]["illicit_share"]  # far above the chance level


@pytest.mark.slow
def test_targets_are_judged_from_the_numbers(report) -> None:
    targets = check_targets(report)
    assert len(targets) == 5
    assert all(isinstance(t["met"], bool) and t["measured"] for t in targets)
    # flip the numbers: the verdict must follow them
    worse = json.loads(json.dumps(report))
    for r in worse["tasks"]["anomaly"]:
        if r["model"] == "autoencoder":
            r["roc_auc"] = 0.1
    assert not all(t["met"] for t in check_targets(worse) if "anomaly" in t["target"])


@pytest.mark.slow
def test_report_files(report, tmp_path) -> None:
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["tasks"].keys() == report["tasks"].keys()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown_tables(report)
    assert md.count("| model |") == 3 and "Core-style buckets" in md


def test_bad_baseline_settings() -> None:
    with pytest.raises(ConfigError, match="epsilon"):
        BaselineConfig(epsilons=(0.0,)).validate()
    with pytest.raises(ConfigError, match="delta"):
        BaselineConfig(delta=2.0).validate()


def test_cli_help_lists_commands() -> None:
    proc = anya("--help")
    assert proc.returncode == 0
    for cmd in ("baseline", "data", "bench"):
        assert cmd in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["baseline", "--epsilons", "1,-3"], "epsilon"),
        (["baseline", "--epsilons", "one"], "epsilons: 'one' is not a comma-separated list"),
        (["baseline", "--tasks", "price"], "task: unknown task 'price'"),
        (["data", "/tmp/x", "--transactions", "10"], "chain.n_transactions"),
        (["bench", "no.such.benchmark"], "no benchmark matches"),
    ],
)
def test_cli_errors_name_the_setting_without_traceback(args, message, monkeypatch, capsys) -> None:
    """In process, through the real entry point (`anya_fl.cli.main`): no process boundary is under test here."""
    from anya_fl.cli import main

    monkeypatch.setattr(sys, "argv", ["anya-fl", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, out + err
    assert message in err
    assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1


def test_cli_data_writes_node_datasets(tmp_path) -> None:
    proc = anya("data", str(tmp_path / "fed"), "--transactions", "20000", "--nodes", "3", "--seed", "4")
    assert proc.returncode == 0, proc.stderr
    rates = []
    for j in range(3):
        data, manifest = load_dataset(tmp_path / "fed" / f"node-{j}")
        assert manifest["info"]["node_id"] == j
        rates.append(float(data["fraud"].y["train"].mean()))
    assert len(set(rates)) == 3


def test_cli_bench_list() -> None:
    proc = anya("bench", "--list")
    assert proc.returncode == 0 and "chain.simulate.1m_tx.s" in proc.stdout
