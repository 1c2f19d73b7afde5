"""Publishing a run's global models: ONNX export, then a signed registry version per task.

After the last round the ServerApp exports every task's global model (``models.export``) to
``<run-dir>/models/<task>.onnx`` and, with a registry and the coordinator's signing key in the run
config, publishes each as a new signed version (candidate; a simulation promotes its own to production).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from core.fedconfig import FederationConfig
from core.security.audit import AuditLog
from core.security.signing import load_private_key
from core.serving.registry import ModelRegistry
from core.storage import atomic_write_bytes
from fl_server.round_record import RoundRecord
from models.export import export_onnx


def _next_version(registry: ModelRegistry, task: str) -> int:
    return max((v.version for v in registry.versions(task)), default=0) + 1


def publish_final_models(cfg: FederationConfig, models: dict[str, nn.Module], history: list[RoundRecord]) -> dict:
    """Export (and publish) the final global models; returns {task: {"onnx": path, "version": ref | None}}."""
    last = history[-1] if history else RoundRecord(round=0)
    registry = None
    if cfg.registry_dir and cfg.signing_key:
        registry = ModelRegistry(Path(cfg.registry_dir), signing_key=load_private_key(Path(cfg.signing_key)),
                                 audit=AuditLog(Path(cfg.audit_log)) if cfg.audit_log else None,
                                 actor=f"coordinator:{cfg.run_name}")
    out: dict[str, dict[str, Any]] = {}
    for task, model in models.items():
        eps = last.train.get(f"{task}.epsilon")
        metrics = {k: float(v) for k, v in last.global_metrics.get(task, {}).items() if isinstance(v, int | float)}
        meta = {"run": cfg.run_name, "round": last.round, "epsilon": eps if cfg.dp else None,
                "delta": cfg.delta if cfg.dp else None, "strategy": cfg.strategy}
        if registry is not None:
            meta["version"] = _next_version(registry, task)
        data = export_onnx(task, model, meta)
        path = atomic_write_bytes(Path(cfg.run_dir) / "models" / f"{task}.onnx", data)
        ref = None
        if registry is not None:
            version = registry.publish(task, data, run=cfg.run_name, round=meta["round"], metrics=metrics,
                                       epsilon=meta["epsilon"], delta=meta["delta"])
            if cfg.promote:
                registry.promote(version.ref, "production")
            ref = version.ref
        out[task] = {"onnx": str(path), "version": ref}
    return out
