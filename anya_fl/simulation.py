"""`anya-fl simulate`: the whole federation on one machine with Flower's Simulation Engine (Ray).

The command prepares a run directory (config, the simulated chain dealt to non-IID nodes, the
coordinator's held-out set), then runs Flower in a child process (``anya_fl.simulation_runner``) and
follows its progress from the run directory, so a killed run can be resumed with ``--resume``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.data.chain import ChainConfig, simulate_chain
from core.data.datasets import partition_nodes, save_dataset, task_arrays
from core.errors import AnyaError, ConfigError, DatasetError
from core.fedconfig import FederationConfig
from core.storage import atomic_write_json

RUN_FILE = "run.json"


def flower_env(run_dir: Path) -> dict[str, str]:
    """Environment for Flower processes: telemetry and update checks off, FLWR_HOME under the run."""
    env = dict(os.environ)
    env.setdefault("FLWR_HOME", str((run_dir / "flwr-home").resolve()))
    env.update({
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": "1",  # one simulated node per core: no thread oversubscription
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "RAY_DEDUP_LOGS": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH", "")])),
    })
    return env


def project_root() -> Path:
    """The directory holding pyproject.toml (the Flower App manifest)."""
    return Path(__file__).resolve().parent.parent


def prepare_run(cfg: FederationConfig, run_dir: Path) -> FederationConfig:
    """Create the run directory with its config and data; return the config bound to it."""
    if (run_dir / RUN_FILE).exists():
        raise ConfigError("run-dir", f"{run_dir} already holds a run; use --resume {run_dir} or another directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    data_dir = run_dir / "data"
    cfg = replace(cfg, run_dir=str(run_dir.resolve()), data_dir=str(data_dir.resolve()), run_name=run_dir.name).validate()
    chain = simulate_chain(ChainConfig(n_transactions=cfg.transactions, seed=cfg.seed))
    info = {"seed": cfg.seed, "transactions": cfg.transactions}
    save_dataset(data_dir / "coordinator", task_arrays(chain), {**info, "role": "coordinator"})
    shards = partition_nodes(chain, cfg.nodes, cfg.seed)
    for shard in shards:
        save_dataset(data_dir / f"node-{shard.node_id}", task_arrays(chain, shard.tx_index, shard.snapshot_index),
                     {**info, "node_id": shard.node_id, "profile": shard.profile})
    atomic_write_json(run_dir / RUN_FILE, {"config": cfg.to_run_config(),
                                           "profiles": [s.profile for s in shards]})
    return cfg


def load_run(run_dir: Path) -> FederationConfig:
    """The config of an existing run directory (for --resume)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise DatasetError(f"--resume: {run_dir} is not a run directory (no {RUN_FILE})")
    return FederationConfig.from_run_config(json.loads(path.read_text())["config"]).validate()


def run_flower(run_dir: Path, on_progress=None, poll_s: float = 0.5) -> int:
    """Run the simulation in a child process; call ``on_progress(progress_dict)`` while it runs."""
    log = (run_dir / "simulation.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.simulation_runner", str(run_dir)],
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
    """The run's metrics, or a clear error pointing at the log when Flower failed."""
    metrics = run_dir / "metrics.json"
    if rc != 0 or not metrics.is_file():
        tail = (run_dir / "simulation.log").read_text(errors="replace").strip().splitlines()[-15:]
        raise AnyaError(f"the simulation stopped (exit code {rc}); see {run_dir / 'simulation.log'}:\n" + "\n".join(tail))
    return json.loads(metrics.read_text())
