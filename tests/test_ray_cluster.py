"""`anya-fl simulate --ray-address` attaches to a Ray cluster instead of starting a private Ray.

The test starts its own Ray head on loopback (its own temp dir, a free GCS port, in a new session),
runs a two-node simulation against it, finds the virtual nodes' actors in the head's own worker logs,
and stops the head by its process group id.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from anya_fl import deployment as dep
from anya_fl.flwr_compat.simulation_runner import ray_backend_config
from anya_fl.simulation import SimulationResources
from core.errors import ConfigError


def test_backend_config_attaches_or_starts_locally() -> None:
    local = ray_backend_config("", 1.0, 0.0, 2)
    assert local["init_args"]["num_cpus"] == 2 and "address" not in local["init_args"]
    assert local["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    attached = ray_backend_config("10.0.0.5:6379", 2.0, 0.5, 2)
    assert attached["init_args"]["address"] == "10.0.0.5:6379" and "num_cpus" not in attached["init_args"]
    assert attached["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    with pytest.raises(ConfigError, match="node-cpus: 0.0 must be > 0"):
        SimulationResources(node_cpus=0.0).validate()
    with pytest.raises(ConfigError, match="node-gpus"):
        SimulationResources(node_gpus=-1.0).validate()


@pytest.mark.slow
def test_simulation_attaches_to_a_ray_head_it_did_not_start(tmp_path: Path) -> None:
    ray_bin = Path(sys.executable).with_name("ray")
    port = dep.free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--temp-dir", str(temp), "--include-dashboard=false", "--node-ip-address", "127.0.0.1",
                             "--disable-usage-stats"], stdout=(tmp_path / "head.log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dep.wait_for_port("127.0.0.1", port, timeout=90, proc=head)
        env = dict(os.environ, ANYA_FL_HOME=str(tmp_path / "home"))
        run_dir = tmp_path / "run"
        # one task (fee, the quickest to train): what is checked is where the virtual nodes ran, not what they trained
        res = subprocess.run([sys.executable, "-m", "anya_fl.cli", "simulate", "--nodes", "2", "--rounds", "1",
                              "--tasks", "fee", "--local-epochs", "1", "--transactions", "40000", "--no-compare",
                              "--ray-address", f"127.0.0.1:{port}", "--run-dir", str(run_dir)],
                             capture_output=True, text=True, timeout=400, env=env, cwd=dep.project_root())
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert (run_dir / "metrics.json").is_file()
        assert f"'address': '127.0.0.1:{port}'" in (run_dir / "simulation.log").read_text()
        # the virtual nodes ran as actors of the head's cluster: its own worker logs name them
        deadline = time.monotonic() + 30
        found: list[Path] = []
        while not found and time.monotonic() < deadline:
            found = [p for p in temp.glob("session_*/logs/worker-*.out") if "ClientAppActor" in p.read_text(errors="replace")]
            time.sleep(0.5)
        assert found, "no ClientAppActor ran on the Ray head's cluster"
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)  # the head and the processes it started share its session
        except ProcessLookupError:
            pass
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)
