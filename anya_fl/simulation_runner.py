"""Child process of `anya-fl simulate`: runs Flower's Simulation Engine for one run directory.

Usage: ``python -m anya_fl.simulation_runner RUN_DIR``. Flower's public ``run_simulation`` passes an
empty run config, so this uses the same internal entry point as the ``flwr-simulation`` process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(run_dir: Path) -> int:
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from anya_fl.simulation import load_run, project_root

    cfg = load_run(run_dir)
    app_dir = project_root()
    override = cfg.to_run_config()
    run = Run.create_empty(run_id=1)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = override
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    ctx = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                  run_config=get_fused_config_from_dir(app_dir, override))
    cpus = max(1, os.cpu_count() or 1)
    _run_simulation(
        num_supernodes=cfg.nodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr="fl_server.app:app",
        client_app_attr="fl_client.app:app",
        backend_name="ray",
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": True}},
        app_dir=str(app_dir),
        run=run,
        server_app_context=ctx,
        is_app=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
