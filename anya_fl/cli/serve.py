"""`anya-fl serve`: the prediction API over the signed registry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.cli.models import DEFAULT_REGISTRY
from anya_fl.cli.node import RpcCookie, RpcUrl, RpcUser, _node_health
from anya_fl.cli.security import DEFAULT_AUDIT_LOG, DEFAULT_STORE
from anya_fl.console import console, err_console, table


def serve(
    registry: Annotated[Path, typer.Option(help="The model registry (production versions are served).")]
    = DEFAULT_REGISTRY,
    trust: Annotated[list[Path] | None, typer.Option(help="Public key(s) whose signatures are accepted "
                                                          "(the coordinator's model-signing.pub).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    provider: Annotated[str | None, typer.Option(help="Execution provider: cuda, rocm, tensorrt, openvino, coreml, "
                                                      "cpu (default: the best available).")] = None,
    threads: Annotated[int, typer.Option(help="onnxruntime intra-op threads per session (0: its default).")] = 1,
    quantize: Annotated[bool, typer.Option(help="Dynamic int8, kept only within --max-quant-error on the "
                                                "validation rows of --data-dir.")] = False,
    max_quant_error: Annotated[float, typer.Option(help="Largest output change int8 may cause.")] = 0.01,
    max_rows: Annotated[int, typer.Option(help="Most rows in one request (more: 413).")] = 4096,
    sync_interval: Annotated[float, typer.Option(help="Seconds between checks for newly promoted versions.")] = 5.0,
    data_dir: Annotated[Path | None, typer.Option(help="This node's dataset directory (health; quantization "
                                                       "validation rows).")] = None,
    rpc_url: RpcUrl = None,
    rpc_cookie: RpcCookie = None,
    rpc_user: RpcUser = None,
    min_stage: Annotated[str, typer.Option(help="Stage /readyz requires.")] = "production",
    auth: Annotated[bool, typer.Option(help="Require API tokens (`anya-fl token create`); --no-auth only for "
                                            "local trials.")] = True,
    tokens: Annotated[Path, typer.Option(help="The token store (hashes only).")] = DEFAULT_STORE,
    audit_log: Annotated[Path, typer.Option(help="Refused requests are appended here.")] = DEFAULT_AUDIT_LOG,
) -> None:
    """Serve the production models over HTTP: /v1/{task}/predict, /v1/models, /healthz, /readyz, /metrics.

    Requests need `Authorization: Bearer <token>` with a role allowed to do what they ask (operator:
    predict, list, metrics; viewer: list, metrics); /healthz, /readyz and the OpenAPI schema are open.
    """
    import uvicorn

    from core.errors import ConfigError
    from core.health.http import probe_loop
    from core.security.signing import load_public_key
    from core.serving.api import FastPredict, RegistryWatcher, ServeLimits, build_app, serving_health
    from core.serving.inference.engine import EngineSettings, InferenceEngine
    from core.serving.registry import ModelRegistry

    if max_rows < 1:
        raise ConfigError("max-rows", f"{max_rows} must be at least 1")
    if not sync_interval > 0:
        raise ConfigError("sync-interval", f"{sync_interval} must be > 0 seconds")
    root = registry.expanduser()
    if not root.is_dir():
        raise ConfigError("registry", f"{root} is not a registry directory (a simulation writes RUN_DIR/registry)")
    reg = ModelRegistry(root, trusted_keys=[load_public_key(p) for p in trust or []])
    validation = None
    if quantize and data_dir is not None:
        from core.data.datasets import load_dataset

        validation = {t: s.x["val"] for t, s in load_dataset(data_dir)[0].items()}
    health = serving_health(_node_health(data_dir, rpc_url, rpc_cookie, rpc_user, min_stage))
    engine = InferenceEngine(EngineSettings(provider=provider, intra_threads=threads, quantize=quantize,
                                            max_quant_error=max_quant_error), monitor=health.monitor)
    watcher = RegistryWatcher(engine, reg, health, sync_interval, validation=validation)
    for change in watcher.sync_once():
        (err_console if change.startswith("!") else console).print(escape(change if change.startswith("!")
                                                                          else f"loaded {change}"), soft_wrap=True)
    health.refresh()
    rows = [[t, i["version"], i["providers"][0], i["quantization"] or "float32", f"{i['load_ms']:.1f}"]
            for t, i in engine.models().items()]
    console.print(table("serving", ["task", "version", "provider", "weights", "load ms"], rows))
    loop = probe_loop(health, 15.0).start()
    watcher.start()
    asgi = FastPredict(build_app(engine, health, registry=reg, limits=ServeLimits(max_rows=max_rows)))
    if auth:
        from core.security.audit import AuditLog
        from core.security.tokens import TokenAuth, TokenStore

        store = TokenStore(tokens.expanduser())
        if not any(not r.revoked for r in store.list()):
            watcher.stop()
            loop.stop()
            raise ConfigError("tokens", f"no active API token in {tokens}: create one with `anya-fl token create "
                                        "--role operator --name my-client`, or run with --no-auth (local trials)")
        asgi = TokenAuth(asgi, store, audit=AuditLog(audit_log.expanduser()))
    else:
        err_console.print("[yellow]WARNING: --no-auth: every client that reaches the port may predict and read "
                          "metrics. Use only on loopback.[/yellow]")
    console.print(f"listening on http://{host}:{port} (OpenAPI: /docs, /openapi.json)")
    try:
        uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    finally:
        watcher.stop()
        loop.stop()
        health.close()
