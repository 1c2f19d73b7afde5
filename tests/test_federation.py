"""The federation on Flower: simulation end to end, kill and resume, config errors before any round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.bitcoin.features import CHAIN_TASKS
from core.errors import ConfigError, DatasetError
from core.fedconfig import FederationConfig
from fl_client.node_data import load_node_data, node_data_dir
from fl_server.checkpoint import load_checkpoint, weights_digest

SMALL = ["--nodes", "3", "--rounds", "4", "--transactions", "40000", "--local-epochs", "1", "--no-compare"]


def anya(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anya_fl.cli", *args], capture_output=True, text=True, env=env, **kw)


def _flwr_env(root: Path) -> dict:
    return {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0"}


@pytest.fixture()
def env(tmp_path) -> dict:
    return _flwr_env(tmp_path)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _simulate_killed_after_round_two(run: Path, env: dict) -> None:
    """`simulate` (SMALL) in ``run``, killed (the CLI's and the runner's process groups) as soon as round 2's
    checkpoint is written."""
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.cli", "simulate", *SMALL, "--run-dir", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    latest = run / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if latest.is_file() and latest.read_text().strip() >= "round-0002":
                break
            time.sleep(0.1)
        assert latest.is_file() and latest.read_text().strip() >= "round-0002", "the run never reached round 2"
    finally:
        runner = run / "runner.pid"
        if runner.is_file():
            _kill_group(int(runner.read_text()))
        _kill_group(proc.pid)
        proc.wait(timeout=30)


def _round_models(run: Path, rnd: int) -> dict[str, np.ndarray]:
    """The global models a run's checkpoint of round ``rnd`` holds (every round keeps its directory)."""
    with np.load(run / "checkpoints" / f"round-{rnd:04d}" / "models.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> tuple[Path, dict]:
    """One SMALL simulation killed after round 2, shared: test_kill_after_round_two_then_resume resumes it, and
    test_same_seed_same_models_wherever_the_run_lives compares its round checkpoints with another run's (a
    resume adds the later rounds and leaves the checkpoints of rounds 1 and 2 as they were)."""
    root = tmp_path_factory.mktemp("killed")
    env = _flwr_env(root)
    _simulate_killed_after_round_two(root / "run", env)
    return root / "run", env


@pytest.mark.slow
def test_kill_after_round_two_then_resume(killed_run) -> None:
    run, env = killed_run
    killed_at = load_checkpoint(run)
    assert killed_at is not None and 2 <= killed_at.round < 4
    saved = dict(killed_at.models)

    done = anya(["simulate", "--resume", str(run), "--no-compare"], env, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [h["round"] for h in metrics["history"]] == [1, 2, 3, 4]
    resume = metrics["resumes"][0]
    assert resume["from_round"] == killed_at.round
    assert resume["weights_sha256"] == resume["saved_sha256"] == weights_digest(saved)
    # the same shape as an uninterrupted run: every round has the same record keys
    assert len({tuple(sorted(h)) for h in metrics["history"]}) == 1
    # epsilon kept accumulating across the kill (ledger in each node's data directory)
    eps = [max(n["fraud.epsilon"] for n in h["nodes"].values()) for h in metrics["history"]]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False)) and eps[-1] <= 8.0 + 1e-6
    assert (run / "report.html").is_file() and list((run / "plots").glob("*.png"))
    # every reply carries the node's health; healthy simulated nodes all trained
    for h in metrics["history"]:
        assert h["nodes_declined"] == 0
        assert all(n["health.stage"] == 3.0 and n["health.readiness"] == 1.0 for n in h["nodes"].values())
    assert "Node health per round" in (run / "report.html").read_text()
    # the final global models were exported to ONNX, signed into the run's registry and promoted
    from core.security.signing import load_public_key
    from core.serving.registry import ModelRegistry

    reg = ModelRegistry(run / "registry", trusted_keys=[load_public_key(run / "keys" / "model-signing.pub")])
    for task in CHAIN_TASKS:  # the run's tasks (the default)
        version, data = reg.load(f"{task}@production")
        assert version.round == 4 and version.epsilon is not None and version.epsilon <= 8.0 + 1e-6
        assert metrics["published"][task]["version"] == version.ref and (run / "models" / f"{task}.onnx").is_file()


@pytest.mark.slow
def test_same_seed_same_models_wherever_the_run_lives(killed_run, tmp_path, env) -> None:
    """A second run of the same settings in another directory (another run name, another FLWR_HOME), also
    stopped after round 2: its global models after rounds 1 and 2 are bit-identical to the first run's."""
    run, _ = killed_run
    other = tmp_path / "elsewhere" / "b"
    _simulate_killed_after_round_two(other, env)
    for rnd in (1, 2):
        mine, theirs = _round_models(other, rnd), _round_models(run, rnd)
        assert mine and weights_digest(mine) == weights_digest(theirs), f"round {rnd}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "fedmagic"], "strategy: 'fedmagic' is not a strategy"),
        (["--nodes", "3", "--min-nodes", "5"], "min-nodes: 5 is more than the 3 nodes"),
        (["--epsilon", "-1"], "epsilon: -1.0 must be a positive number"),
        (["--strategy", "bulyan", "--nodes", "5", "--byzantine", "1"], "byzantine: bulyan needs at least 4*byzantine+3"),
    ],
)
def test_config_errors_stop_before_any_round(args, message, tmp_path, env) -> None:
    run = tmp_path / "run"
    proc = anya(["simulate", *args, "--run-dir", str(run)], env, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not run.exists()


def test_too_small_a_chain_is_refused_before_any_round(tmp_path, env) -> None:
    proc = anya(["simulate", "--transactions", "3000", "--run-dir", str(tmp_path / "run")], env, timeout=120)
    assert proc.returncode == 2 and "transactions: 3,000 transactions leave only" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_resume_of_a_directory_that_is_no_run(tmp_path, env) -> None:
    proc = anya(["simulate", "--resume", str(tmp_path)], env, timeout=120)
    assert proc.returncode == 2 and "is not a run directory" in proc.stderr


def test_missing_node_data_directory_is_named(tmp_path) -> None:
    with pytest.raises(DatasetError, match="data-dir: .* is not a dataset directory"):
        load_node_data(node_data_dir({"data-dir": str(tmp_path / "nope")}, ""))
    with pytest.raises(DatasetError, match="data-dir: no data directory"):
        node_data_dir({}, "")
    assert node_data_dir({"partition-id": 3}, "/d") == Path("/d/node-3")


def test_run_config_round_trip_and_type_errors() -> None:
    cfg = FederationConfig(strategy="median", rounds=3, epsilon=2.5, dp=False)
    assert FederationConfig.from_run_config(cfg.to_run_config()) == cfg
    with pytest.raises(ConfigError, match="rounds: 'many' is not a valid int"):
        FederationConfig.from_run_config({"rounds": "many"})
    with pytest.raises(ConfigError, match="rounds: 2.5 is not a valid int"):
        FederationConfig.from_run_config({"rounds": 2.5})


@pytest.mark.parametrize("name", ["../../home/op/.bashrc", "/etc/x", "a/b", ".hidden", "", "x" * 65, "run name"])
def test_run_name_from_a_coordinator_cannot_be_a_path(name: str) -> None:
    """run-name names the privacy ledger on every node (<data-dir>/privacy/<run-name>.json)."""
    with pytest.raises(ConfigError, match="run-name: .* must be 1-64 letters"):
        FederationConfig.from_run_config({"run-name": name}).validate()
    FederationConfig.from_run_config({"run-name": "sim-20261202-184000.v2"}).validate()


def test_pyproject_is_a_flower_app_with_valid_defaults() -> None:
    import tomllib

    root = Path(__file__).resolve().parent.parent
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fl_server.app:app", "clientapp": "fl_client.app:app"}
    cfg = FederationConfig.from_run_config(app["config"]).validate()
    assert set(cfg.to_run_config()) == set(app["config"])
    assert np.isclose(cfg.epsilon, 8.0)


# ---- one source of defaults: FederationConfig; the CLI and the Flower App manifest are checked value by value

DEPLOYMENT_DEFAULTS = {"nodes": 3}  # `coordinator run`: a deployment expects 3 nodes, not the simulation's 10


def _cli_defaults(*path: str) -> dict[str, object]:
    import typer

    from anya_fl.cli import app as cli_app

    cmd = typer.main.get_command(cli_app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.name: p.default for p in cmd.params}


@pytest.mark.parametrize("command", [("simulate",), ("coordinator", "run")])
def test_cli_option_defaults_are_federation_config_defaults(command) -> None:
    from dataclasses import fields

    defaults = FederationConfig()
    names = {f.name for f in fields(FederationConfig)}
    options = {k: v for k, v in _cli_defaults(*command).items() if k in names and k not in ("run_dir", "data_dir", "signing_key")}
    # run-dir, data-dir and signing-key are paths the CLI resolves (FederationConfig holds them as strings)
    assert len(options) >= 8, options  # the command really exposes federation settings
    expected = {k: DEPLOYMENT_DEFAULTS.get(k, getattr(defaults, k)) if command[0] == "coordinator"
                else getattr(defaults, k) for k in options}
    assert options == expected


def test_pyproject_run_config_values_are_federation_config_defaults() -> None:
    import tomllib

    root = Path(__file__).resolve().parent.parent
    manifest = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    defaults = FederationConfig().to_run_config()
    paths = {"run-dir", "data-dir"}  # `flwr run .` needs places to write: runs/flwr, not the CLI's run directories
    assert {k: v for k, v in manifest.items() if k not in paths} == {k: v for k, v in defaults.items() if k not in paths}
    assert manifest["run-dir"] and manifest["data-dir"].startswith(manifest["run-dir"])


def test_dp_training_default_accountant_is_the_federation_default() -> None:
    """One default accountant for every DP training; the one-off reports name theirs (PRV) explicitly."""
    from anya_fl.baseline import BaselineConfig
    from models.privacy.accounting import REPORT_ACCOUNTANT
    from models.training import DPConfig

    assert DPConfig().accountant == FederationConfig().accountant == "rdp"
    assert BaselineConfig().accountant == REPORT_ACCOUNTANT == "prv"
