"""Child process of `anya-fl simulate`: runs Flower's Simulation Engine for one run directory.

Usage: ``python -m anya_fl.flwr_compat.simulation_runner RUN_DIR``. Flower's public ``run_simulation``
passes an empty run config, so this uses the same internal entry point as the ``flwr-simulation``
process (``_run_simulation``, pinned to flwr 1.42). Ray: a private local instance with one CPU per
virtual node by default, or an existing cluster (``ray_address``) with the run's per-node CPUs and GPUs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from anya_fl.flwr_compat import require_pinned_flwr

require_pinned_flwr(__name__)


def ray_backend_config(ray_address: str, node_cpus: float, node_gpus: float, local_cpus: int) -> dict[str, Any]:
    """Flower's Ray backend config: per-node resources, and ``ray.init`` arguments (attach, or start locally).

    Ray refuses ``num_cpus`` when it attaches to a running cluster: the cluster's own resources apply.
    """
    init: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": True}
    if ray_address:
        init["address"] = ray_address
    else:
        init["num_cpus"] = local_cpus  # GPUs: Ray detects this machine's own
    return {"client_resources": {"num_cpus": node_cpus, "num_gpus": node_gpus}, "init_args": init}


def main(run_dir: Path) -> int:
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.telemetry import EventType

    from anya_fl.experiments import clientapp_ref
    from anya_fl.flwr_compat.task_identity import set_task_identity
    from anya_fl.simulation import load_resources, load_run, project_root

    cfg = load_run(run_dir)
    app_dir = project_root()
    override = cfg.to_run_config()
    run = Run.create_empty(run_id=1)
    run.primary_task_id = 1
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = override
    set_task_identity(run.run_id)
    ctx = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                  run_config=get_fused_config_from_dir(app_dir, override))
    res = load_resources(run_dir)
    _run_simulation(
        num_supernodes=cfg.nodes,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        server_app_attr="fl_server.app:app",
        client_app_attr=clientapp_ref(cfg.attack),
        backend_name="ray",
        backend_config=ray_backend_config(res.ray_address, res.node_cpus, res.node_gpus,
                                          max(1, os.cpu_count() or 1)),
        app_dir=str(app_dir),
        run=run,
        server_app_context=ctx,
        is_app=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
