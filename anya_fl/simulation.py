"""`anya-fl simulate`: the whole federation on one machine with Flower's Simulation Engine (Ray).

The command prepares a run directory (config, the simulated chain dealt to non-IID nodes, the
coordinator's held-out set), then runs Flower in a child process (``anya_fl.flwr_compat.simulation_runner``) and
follows its progress from the run directory, so a killed run can be resumed with ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from anya_fl.deployment import flower_process_env, project_root, recorded_failure
from core.data.datasets import write_federation_data
from core.errors import AnyaError, ConfigError, DatasetError
from core.fedconfig import FederationConfig
from core.security.signing import generate_signing_key
from core.storage import atomic_write_json

RUN_FILE = "run.json"


@dataclass(frozen=True)
class SimulationResources:
    """Where the virtual nodes run: a private local Ray (default) or an existing Ray cluster, and each node's share.

    Simulation-only (not part of the run config Flower sends to nodes); kept in ``run.json`` so a
    resumed run uses the same.
    """

    ray_address: str = ""  # "" = start a private local Ray; else attach, e.g. "10.0.0.5:6379" or "auto"
    node_cpus: float = 1.0  # CPUs Ray reserves per virtual node (nodes running at once = cluster CPUs / this)
    node_gpus: float = 0.0  # GPUs per virtual node (fractions share one); training uses the GPU Ray assigns

    def validate(self) -> SimulationResources:
        if not self.node_cpus > 0:
            raise ConfigError("node-cpus", f"{self.node_cpus} must be > 0")
        if not self.node_gpus >= 0:
            raise ConfigError("node-gpus", f"{self.node_gpus} must be >= 0")
        if any(c.isspace() for c in self.ray_address):
            raise ConfigError("ray-address", f"{self.ray_address!r} must be HOST:PORT, ray://HOST:PORT or auto")
        return self


def flower_env(run_dir: Path) -> dict[str, str]:
    """Environment of the simulation process: Flower's (FLWR_HOME under the run unless set) plus one
    thread per simulated node, so that nodes sharing the cores do not oversubscribe them."""
    env = flower_process_env(Path(os.environ.get("FLWR_HOME") or run_dir / "flwr-home"), task_poll_s=None)
    env.update({
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH", "")])),
    })
    return env


def prepare_run(cfg: FederationConfig, run_dir: Path, resources: SimulationResources | None = None,
                on_network_episode: Callable[[], None] | None = None) -> FederationConfig:
    """Create the run directory with its config and data; return the config bound to it.

    With the network task, each node's telemetry comes from simulated nodes watched under attack
    (``anya_fl.experiments.network_data``); ``on_network_episode`` is called after each watched episode. With the
    liquidity task, node i is router i of a simulated Lightning network (``anya_fl.simln.liquidity_data``)."""
    if (run_dir / RUN_FILE).exists():
        raise ConfigError("run-dir", f"{run_dir} already holds a run; use --resume {run_dir} or another directory")
    data_dir = run_dir / "data"
    key = run_dir / "keys" / "model-signing.key"  # the simulation signs and promotes its own models
    cfg = replace(cfg, run_dir=str(run_dir.resolve()), data_dir=str(data_dir.resolve()), run_name=run_dir.name,
                  registry_dir=str((run_dir / "registry").resolve()), signing_key=str(key.resolve()),
                  audit_log=str((run_dir / "audit.jsonl").resolve()), promote=True).validate()
    profiles = write_federation_data(data_dir, cfg.transactions, cfg.seed, cfg.nodes, cfg.task_list)
    if "network" in cfg.task_list:
        from anya_fl.experiments.network_data import add_network_data

        add_network_data(data_dir, cfg.seed, cfg.nodes, on_network_episode)
    if "liquidity" in cfg.task_list:
        from anya_fl.simln.liquidity_data import LiquiditySim, add_liquidity_data

        add_liquidity_data(data_dir, LiquiditySim(seed=cfg.seed, nodes=cfg.nodes))
    if not key.exists():
        generate_signing_key(key, key.with_suffix(".pub"))
    atomic_write_json(run_dir / RUN_FILE, {"config": cfg.to_run_config(), "profiles": profiles,
                                           "resources": asdict((resources or SimulationResources()).validate())})
    return cfg


def load_run(run_dir: Path) -> FederationConfig:
    """The config of an existing run directory (for --resume)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise DatasetError(f"--resume: {run_dir} is not a run directory (no {RUN_FILE})")
    return FederationConfig.from_run_config(json.loads(path.read_text())["config"]).validate()


def load_resources(run_dir: Path) -> SimulationResources:
    """The run's Ray settings (defaults for run directories written before they existed)."""
    doc = json.loads((run_dir / RUN_FILE).read_text()).get("resources") or {}
    return SimulationResources(**{k: v for k, v in doc.items() if k in SimulationResources.__dataclass_fields__})


def run_flower(run_dir: Path, on_progress=None, poll_s: float = 0.5) -> int:
    """Run the simulation in a child process; call ``on_progress(progress_dict)`` while it runs."""
    log = (run_dir / "simulation.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.flwr_compat.simulation_runner", str(run_dir)],
                            stdout=log, stderr=subprocess.STDOUT, env=flower_env(run_dir),
                            start_new_session=True)
    (run_dir / "runner.pid").write_text(f"{proc.pid}\n")
    try:
        last = None
        while proc.poll() is None:
            time.sleep(poll_s)
            p = run_dir / "progress.json"
            if on_progress and p.is_file():
                try:
                    state = json.loads(p.read_text())
                except json.JSONDecodeError:
                    continue
                if state != last:
                    on_progress(state)
                    last = state
        return proc.returncode
    except BaseException:
        # stop what we started (the runner and its Ray workers share its process group)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        raise
    finally:
        log.close()


def check_finished(run_dir: Path, rc: int) -> dict:
    """The run's metrics, or a clear error: the ServerApp's own one-line reason when it recorded one
    (``progress.json`` phase "failed", written after this attempt started), else the log's tail."""
    metrics = run_dir / "metrics.json"
    if rc != 0 or not metrics.is_file():
        try:
            progress = json.loads((run_dir / "progress.json").read_text())
            started = (run_dir / "runner.pid").stat().st_mtime  # run_flower writes it when the attempt starts
        except (OSError, json.JSONDecodeError):
            progress, started = {}, float("inf")
        if (why := recorded_failure(progress, started)) is not None:
            raise AnyaError(f"the simulation failed: {why} (log: {run_dir / 'simulation.log'})")
        tail = (run_dir / "simulation.log").read_text(errors="replace").strip().splitlines()[-15:]
        raise AnyaError(f"the simulation stopped (exit code {rc}); see {run_dir / 'simulation.log'}:\n" + "\n".join(tail))
    return json.loads(metrics.read_text())
