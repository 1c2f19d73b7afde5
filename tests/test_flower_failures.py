"""A ServerApp that fails on our own error, under real Flower: one line naming the setting, no traceback.

One insecure loopback SuperLink (free port, temporary FLWR_HOME, stopped by PID) and no SuperNodes: both
runs fail in the ServerApp before any node is asked for anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from anya_fl import deployment as dep
from core.errors import AnyaError
from core.fedconfig import FederationConfig

pytestmark = pytest.mark.slow  # real Flower processes / model training: seconds to a minute each


@pytest.fixture(scope="module")
def superlink(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("flower")
    flwr_home, port = root / "flwr-home", dep.free_port()
    link = dep.start_superlink("127.0.0.1", port, flwr_home, root / "superlink.log", insecure=True, warn=lambda _: None)
    try:
        dep.wait_for_port("127.0.0.1", port, proc=link)
        dep.write_connection(flwr_home, "test", f"127.0.0.1:{port}", insecure=True)
        yield flwr_home, "test"
    finally:
        dep.stop_process(link)


def test_flwr_run_with_too_small_a_chain_fails_in_one_line(superlink, tmp_path) -> None:
    flwr_home, connection = superlink
    run_dir = tmp_path / "run"
    cfg = FederationConfig(transactions=20_000, rounds=1, nodes=2, run_dir=str(run_dir), data_dir=str(run_dir / "data"))
    run_config = dep.write_run_config(cfg, tmp_path / "run-config.toml")
    res = dep.flwr_cli(["run", str(dep.project_root()), connection, "--run-config", str(run_config), "--stream"],
                       flwr_home, timeout=300)
    out = res.stdout + res.stderr
    assert "error: transactions: 20,000 transactions leave only 0 fraud rows in the val split" in out, out[-3000:]
    assert "the smallest size above 20,000 that works with seed 0 is 40,000" in out
    assert "Traceback" not in out and "ConfigError" not in out, out[-3000:]
    # Flower 1.42: `flwr run --stream` exits 0 although the run failed (the README says so); the run's
    # status and progress.json are where a caller sees the failure
    assert res.returncode == 0
    run_id = re.search(r"Successfully started run (\d+)", out).group(1)
    ls = dep.flwr_cli(["ls", connection, "--run-id", run_id, "--format", "json"], flwr_home)
    run = json.loads(ls.stdout[ls.stdout.find("{"):])["runs"][0]
    assert run["status"] == "finished:failed"
    assert "transactions: 20,000 transactions leave only 0 fraud rows" in run["status-details"]
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["phase"] == "failed" and progress["setting"] == "transactions"
    assert progress["error"].startswith("transactions: 20,000 transactions leave only 0 fraud rows")
    assert not (run_dir / "data").exists(), "the chain was refused before any dataset was written"


def test_launch_run_surfaces_the_serverapps_one_line_reason(superlink, tmp_path) -> None:
    flwr_home, connection = superlink
    held_out = tmp_path / "data" / "coordinator"  # exists (launch_run checks that) but is of another schema
    held_out.mkdir(parents=True)
    (held_out / "manifest.json").write_text(json.dumps({"schema_version": -1, "tasks": {}}))
    (held_out / "arrays.npz").write_bytes(b"")
    cfg = FederationConfig(rounds=1, nodes=2, run_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"))
    log = tmp_path / "flwr-run.log"
    with pytest.raises(AnyaError) as caught:
        dep.launch_run(flwr_home, connection, cfg, log_file=log, timeout=300)
    message = str(caught.value)
    assert message.startswith(f"the run failed: {held_out / 'manifest.json'}: schema_version -1, this build reads ")
    assert "\n" not in message, "one line, not the log's tail"
    assert "Traceback" not in log.read_text()


def test_progress_records_the_failure_of_this_run_only(tmp_path) -> None:
    from anya_fl.simulation import check_finished
    from fl_server.app import _record_failure

    (tmp_path / "simulation.log").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    (tmp_path / "progress.json").write_text(json.dumps({"round": 3, "rounds": 8, "phase": "train", "updated": 1.0}))
    (tmp_path / "runner.pid").write_text("1\n")  # the attempt started after that progress was written
    with pytest.raises(AnyaError, match="(?s)the simulation stopped \\(exit code 1\\); see .*RuntimeError: boom"):
        check_finished(tmp_path, 1)

    _record_failure(str(tmp_path), RuntimeError("boom\nmore"), 8, started=0.0)
    progress = json.loads((tmp_path / "progress.json").read_text())
    assert progress["phase"] == "failed" and progress["error"] == "RuntimeError: boom" and progress["round"] == 3
    with pytest.raises(AnyaError) as caught:
        check_finished(tmp_path, 1)
    assert str(caught.value) == f"the simulation failed: RuntimeError: boom (log: {tmp_path / 'simulation.log'})"

    from core.errors import ConfigError

    _record_failure(str(tmp_path), ConfigError("rounds", "0 must be at least 1"), 8, started=float("inf"))
    progress = json.loads((tmp_path / "progress.json").read_text())  # an earlier run's round is not carried over
    assert progress["round"] == 0 and progress["rounds"] == 8 and progress["setting"] == "rounds"
    assert progress["error"] == "rounds: 0 must be at least 1"
