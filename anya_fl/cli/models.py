"""`anya-fl models`: list, inspect, promote, verify, export and import signed model versions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from anya_fl.console import anya_home, console, table
from core.errors import ConfigError
from core.security.signing import load_private_key, load_public_key
from core.serving.registry import INDEX, STAGES, ModelRegistry, ModelVersion

DEFAULT_REGISTRY = anya_home() / "registry"

models_app = typer.Typer(
    help="The signed model registry: versions of each task's model, their stage, integrity and bundles for nodes.",
    no_args_is_help=True,
)

RegistryOpt = Annotated[Path, typer.Option("--registry", help="Registry directory.")]
KeyOpt = Annotated[Path | None, typer.Option("--signing-key", help="Private model-signing key (its public key is trusted).")]
TrustOpt = Annotated[list[Path] | None, typer.Option("--trust", help="Trusted public signing key (repeatable).")]


def _open(registry: Path, key: Path | None, trust: list[Path] | None, *, create: bool = False) -> ModelRegistry:
    """The registry at ``registry`` with the given keys; refuses a missing one unless ``create``."""
    root = registry.expanduser()
    if not create and not (root / INDEX).is_file():
        raise ConfigError("registry", f"no model registry at {root} (give --registry DIR)")
    import getpass

    from anya_fl.cli.security import DEFAULT_AUDIT_LOG
    from core.security.audit import AuditLog

    return ModelRegistry(root, signing_key=load_private_key(key.expanduser()) if key else None,
                         trusted_keys=[load_public_key(p.expanduser()) for p in trust or ()],
                         audit=AuditLog(DEFAULT_AUDIT_LOG), actor=getpass.getuser())


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())) or "-"


def _row(v: ModelVersion) -> list:
    return [v.ref, v.stage, v.run, v.round, _metrics(v.metrics), v.epsilon, v.parent, v.sha256[:12], v.key_id,
            v.created_at[:19]]


@models_app.command("list")
def list_(
    task: Annotated[str | None, typer.Option(help="Only this task (fraud, fee, anomaly).")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """List every version, by task then version."""
    versions = _open(registry, key, trust).versions(task)
    if not versions:
        console.print("no model versions" + (f" for {task}" if task else ""))
        return
    cols = ["version", "stage", "run", "round", "metrics", "epsilon", "parent", "sha256", "key", "created (UTC)"]
    console.print(table("model versions", cols, [_row(v) for v in versions]))


@models_app.command()
def show(
    ref: Annotated[str, typer.Argument(help="TASK@N, TASK@production, TASK@latest or TASK.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Show one version: its signed metadata, stage and evaluations."""
    v = _open(registry, key, trust).get(ref)
    fields = [(k, val) for k, val in v.to_dict().items() if k not in ("metrics", "evaluations")]
    fields += [(f"metric {k}", val) for k, val in sorted(v.metrics.items())]
    console.print(table(v.ref, ["field", "value"], fields))
    if v.evaluations:
        rows = [[e["at"][:19], e["dataset"], _metrics(e["metrics"])] for e in v.evaluations]
        console.print(table(f"{v.ref} evaluations", ["at (UTC)", "dataset", "metrics"], rows))


@models_app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="TASK@N to promote.")],
    stage: Annotated[str, typer.Option(help=f"Target stage: {', '.join(STAGES)}.")] = "production",
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Move a version to a stage; a new production version retires the previous one (checks it first)."""
    reg = _open(registry, key, trust)
    previous = [v.ref for v in reg.versions(reg.get(ref).task) if v.stage == "production"]
    v = reg.promote(ref, stage)
    retired = [r for r in previous if r != v.ref] if stage == "production" else []
    console.print(f"{v.ref} is now {v.stage}" + (f" ({', '.join(retired)} retired)" if retired else ""))


@models_app.command()
def verify(
    ref: Annotated[str | None, typer.Argument(help="One version (default: every version).")] = None,
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Check files (size, sha256) and signatures against the trusted keys; exit 1 if any version fails."""
    results = _open(registry, key, trust).verify(ref)
    if not results:
        console.print("no model versions")
        return
    console.print(table("integrity", ["version", "ok", "problem"], [[r, ok, escape(p) or "-"] for r, ok, p in results]))
    failed = sum(not ok for _, ok, _ in results)
    if failed:
        console.print(f"{failed} of {len(results)} versions failed verification")
        raise typer.Exit(1)
    console.print(f"all {len(results)} versions verified")


@models_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="The version to ship.")],
    out_dir: Annotated[Path, typer.Argument(help="Directory for <task>-v<N>.onnx and <task>-v<N>.json.")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Write a signed bundle (model file + signed metadata) for a node to import."""
    path = _open(registry, key, trust).export_bundle(ref, out_dir)
    console.print(f"wrote {path} and {path.with_suffix('.onnx')}")


@models_app.command("import")
def import_(
    bundle_json: Annotated[Path, typer.Argument(help="The bundle's .json file (its .onnx beside it).")],
    registry: RegistryOpt = DEFAULT_REGISTRY,
    key: KeyOpt = None,
    trust: TrustOpt = None,
) -> None:
    """Verify a bundle against the trusted keys and add it under its original version number."""
    v = _open(registry, key, trust, create=True).import_bundle(bundle_json)
    console.print(f"imported {v.ref} (sha256 {v.sha256[:12]}, signed by {v.key_id}, stage {v.stage})")
