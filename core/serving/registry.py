"""A versioned, signed model store: every model a node may run is a numbered, Ed25519-signed version.

Layout of a registry directory::

    index.sqlite                          one row per version (WAL, synchronous=FULL)
    objects/<sha256[:2]>/<sha256>.onnx    the model files, content-addressed, written atomically

Each version's metadata ``{task, version, sha256, size, run, round, metrics, epsilon, delta, parent, created_at,
key_id}`` is signed as canonical JSON (``core.security.signing``) when it is published. Loading a version re-checks the file
(present, size, sha256) and the signature against the trusted keys, so a tampered file, a truncated copy or an
edited index row is refused. Stages (candidate, production, retired) and evaluations are not signed: they change
after publication. ``export_bundle``/``import_bundle`` ship a signed version to a node, whose registry keeps the
coordinator's version numbers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import numbers
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core.bitcoin.features import TASKS
from core.errors import AnyaError, ConfigError
from core.security.audit import PROMOTE, PUBLISH, RETIRE, AuditLog
from core.security.signing import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    SignatureError,
    canonical_json,
    key_id,
    sign,
    verify,
)
from core.storage import atomic_write_bytes, atomic_write_json

STAGES = ("candidate", "production", "retired")
SIGNED_FIELDS = ("task", "version", "sha256", "size", "run", "round", "metrics", "epsilon", "delta", "parent",
                 "created_at", "key_id")
BUNDLE_FORMAT = "anya-fl-model-bundle"
BUNDLE_FORMAT_VERSION = 1
INDEX = "index.sqlite"
OBJECTS = "objects"
_SCHEMA_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    task TEXT NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    run TEXT NOT NULL,
    round INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    epsilon REAL,
    delta REAL,
    parent INTEGER,
    created_at TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'candidate' CHECK (stage IN ('candidate', 'production', 'retired')),
    promoted_at TEXT,
    evaluations TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (task, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_production_per_task ON versions(task) WHERE stage = 'production';
"""


class ModelNotFound(AnyaError):
    """A reference to a task, version or stage the registry does not hold."""


class ModelIntegrityError(AnyaError):
    """A version whose file or metadata does not match what was signed, or whose signer is not trusted."""


@dataclass(frozen=True)
class ModelVersion:
    """One published model version; the fields in ``SIGNED_FIELDS`` are covered by ``signature``."""

    task: str
    version: int
    sha256: str
    size: int
    run: str
    round: int
    metrics: dict[str, float]
    epsilon: float | None
    delta: float | None
    parent: int | None
    created_at: str
    key_id: str
    signature: str
    stage: str = "candidate"
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    promoted_at: str | None = None

    @property
    def ref(self) -> str:
        """``task@version``."""
        return f"{self.task}@{self.version}"

    def signed_metadata(self) -> dict[str, Any]:
        """The dict whose canonical JSON the signature covers."""
        return {name: getattr(self, name) for name in SIGNED_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready."""
        return {**self.signed_metadata(), "signature": self.signature, "stage": self.stage,
                "promoted_at": self.promoted_at, "evaluations": self.evaluations}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def _check_task(task: Any, error: type[AnyaError] = ConfigError) -> str:
    if task not in TASKS:
        if error is ConfigError:
            raise ConfigError("task", f"{task!r} is not one of {', '.join(TASKS)}")
        raise error(f"unknown task {task!r} (tasks: {', '.join(TASKS)})")
    return task


def _check_metrics(metrics: Mapping[str, Any], setting: str = "metrics") -> dict[str, float]:
    """Metric names to finite floats; names the offending metric."""
    if not isinstance(metrics, Mapping):
        raise ConfigError(setting, f"must be a mapping of names to numbers, not {type(metrics).__name__}")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(setting, f"metric name {name!r} must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(setting, f"{name}={value!r} is not a number")
        if not math.isfinite(float(value)):
            raise ConfigError(setting, f"{name}={value!r} is not finite")
        out[name] = float(value)
    return out


def _optional_float(value: Any, setting: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(setting, f"{value!r} is not a finite number")
    return float(value)


class ModelRegistry:
    """A versioned, signed model store under ``root``; safe to use from several threads and processes."""

    def __init__(self, root: str | os.PathLike[str], *, signing_key: Ed25519PrivateKey | None = None,
                 trusted_keys: Iterable[Ed25519PublicKey] = (), audit: AuditLog | None = None,
                 actor: str = "registry") -> None:
        self.root = Path(root).expanduser()
        self.audit = audit  # publishes, promotions and retirements are appended to it
        self.actor = actor
        self.signing_key = signing_key
        self.trusted: dict[str, Ed25519PublicKey] = {key_id(k): k for k in trusted_keys}
        if signing_key is not None:
            self.trusted[key_id(signing_key)] = signing_key.public_key()
        self._lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / OBJECTS).mkdir(exist_ok=True)
        with self._lock, contextlib.closing(sqlite3.connect(self.root / INDEX, timeout=30,
                                                            isolation_level=None)) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_SCHEMA)
            found = con.execute("PRAGMA user_version").fetchone()[0]
            if found == 0:
                con.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif found != _SCHEMA_VERSION:
                raise ConfigError("registry", f"{self.root / INDEX} has schema version {found}, this anya-fl "
                                              f"reads version {_SCHEMA_VERSION}")

    # -- storage -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection for one operation; ``write`` holds the write lock (BEGIN IMMEDIATE) until it commits."""
        with self._lock:
            con = sqlite3.connect(self.root / INDEX, timeout=30, isolation_level=None)
            try:
                con.row_factory = sqlite3.Row
                con.execute("PRAGMA synchronous=FULL")
                if not write:
                    yield con
                    return
                con.execute("BEGIN IMMEDIATE")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()

    def object_path(self, sha256: str) -> Path:
        """Where the model file with this sha256 lives."""
        return self.root / OBJECTS / sha256[:2] / f"{sha256}.onnx"

    def _store_object(self, data: bytes, sha256: str) -> Path:
        """Write the model file atomically unless an intact copy is already there."""
        path = self.object_path(sha256)
        try:
            if path.stat().st_size == len(data) and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
                return path
        except FileNotFoundError:
            pass
        return atomic_write_bytes(path, data)

    @staticmethod
    def _row(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            task=row["task"], version=row["version"], sha256=row["sha256"], size=row["size"], run=row["run"],
            round=row["round"], metrics=json.loads(row["metrics"]), epsilon=row["epsilon"], delta=row["delta"],
            parent=row["parent"], created_at=row["created_at"], key_id=row["key_id"], signature=row["signature"],
            stage=row["stage"], evaluations=json.loads(row["evaluations"]), promoted_at=row["promoted_at"],
        )

    @staticmethod
    def _insert(con: sqlite3.Connection, v: ModelVersion) -> None:
        con.execute(
            "INSERT INTO versions (task, version, sha256, size, run, round, metrics, epsilon, delta, parent, "
            "created_at, key_id, signature, stage, promoted_at, evaluations) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (v.task, v.version, v.sha256, v.size, v.run, v.round, json.dumps(v.metrics, allow_nan=False), v.epsilon,
             v.delta, v.parent, v.created_at, v.key_id, v.signature, v.stage, v.promoted_at,
             json.dumps(v.evaluations, allow_nan=False)),
        )

    # -- publishing --------------------------------------------------------------------------------------------

    def publish(self, task: str, model_bytes: bytes, *, run: str, round: int, metrics: Mapping[str, float],
                epsilon: float | None = None, delta: float | None = None, parent: int | None = None) -> ModelVersion:
        """Store ``model_bytes`` as the next version of ``task``, signed, in stage "candidate"."""
        _check_task(task)
        if self.signing_key is None:
            raise ConfigError("key", "publishing a model needs the private model-signing key")
        if not isinstance(model_bytes, bytes | bytearray | memoryview) or len(model_bytes) == 0:
            raise ConfigError("model", "must be non-empty bytes")
        if not isinstance(run, str) or not run:
            raise ConfigError("run", f"{run!r} must be a non-empty string")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ConfigError("round", f"{round!r} must be an integer >= 0")
        clean_metrics = _check_metrics(metrics)
        epsilon, delta = _optional_float(epsilon, "epsilon"), _optional_float(delta, "delta")
        if parent is not None and (isinstance(parent, bool) or not isinstance(parent, int) or parent < 1):
            raise ConfigError("parent", f"{parent!r} must be a version number >= 1")
        data = bytes(model_bytes)
        sha = hashlib.sha256(data).hexdigest()
        self._store_object(data, sha)  # the file first: a crash never indexes a missing file
        kid = key_id(self.signing_key)
        with self._connect(write=True) as con:
            if parent is not None and con.execute("SELECT 1 FROM versions WHERE task=? AND version=?",
                                                  (task, parent)).fetchone() is None:
                raise ConfigError("parent", f"{task}@{parent} does not exist in the registry")
            version = con.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE task=?",
                                  (task,)).fetchone()[0]
            unsigned = ModelVersion(task=task, version=version, sha256=sha, size=len(data), run=run, round=round,
                                    metrics=clean_metrics, epsilon=epsilon, delta=delta, parent=parent,
                                    created_at=_now(), key_id=kid, signature="")
            signature = sign(self.signing_key, canonical_json(unsigned.signed_metadata())).hex()
            mv = replace(unsigned, signature=signature)
            self._insert(con, mv)
        if self.audit is not None:
            self.audit.append(self.actor, PUBLISH, mv.ref, {"sha256": sha, "run": run, "round": round})
        return mv

    # -- lookup ------------------------------------------------------------------------------------------------

    @staticmethod
    def _parse_ref(ref: str) -> tuple[str, str]:
        task, _, selector = str(ref).strip().partition("@")
        _check_task(task, ModelNotFound)
        selector = selector.strip() or "default"
        if selector not in ("production", "latest", "default") and not selector.isdigit():
            raise ConfigError("ref", f"{ref!r}: expected TASK, TASK@N, TASK@production or TASK@latest")
        return task, selector

    def _get(self, con: sqlite3.Connection, ref: str) -> ModelVersion:
        task, selector = self._parse_ref(ref)
        if selector.isdigit():
            row = con.execute("SELECT * FROM versions WHERE task=? AND version=?", (task, int(selector))).fetchone()
            if row is None:
                latest = con.execute("SELECT MAX(version) FROM versions WHERE task=?", (task,)).fetchone()[0]
                hint = f"latest is {task}@{latest}" if latest else f"the registry holds no {task} model"
                raise ModelNotFound(f"{task}@{int(selector)} does not exist ({hint}; registry {self.root})")
            return self._row(row)
        row = None
        if selector in ("production", "default"):
            row = con.execute("SELECT * FROM versions WHERE task=? AND stage='production'", (task,)).fetchone()
            if row is None and selector == "production":
                raise ModelNotFound(f"{task} has no production version; promote one with "
                                    f"`anya-fl models promote {task}@N` (registry {self.root})")
        if row is None:
            row = con.execute("SELECT * FROM versions WHERE task=? ORDER BY version DESC LIMIT 1", (task,)).fetchone()
            if row is None:
                raise ModelNotFound(f"the registry {self.root} holds no {task} model")
        return self._row(row)

    def get(self, ref: str) -> ModelVersion:
        """The version ``ref`` names: "task@N", "task@production", "task@latest", or "task" (production, else
        latest). Does not check the file or signature: use :meth:`load` for that."""
        with self._connect() as con:
            return self._get(con, ref)

    def versions(self, task: str | None = None) -> list[ModelVersion]:
        """Every version (of ``task``), ordered by task then version."""
        with self._connect() as con:
            if task is None:
                rows = con.execute("SELECT * FROM versions ORDER BY task, version").fetchall()
            else:
                rows = con.execute("SELECT * FROM versions WHERE task=? ORDER BY version",
                                   (_check_task(task),)).fetchall()
        return [self._row(r) for r in rows]

    # -- integrity ---------------------------------------------------------------------------------------------

    def _check_signature(self, mv: ModelVersion, where: str) -> None:
        """Refuse an unsigned version, an untrusted signer and a signature that does not match the metadata."""
        if not mv.signature:
            raise ModelIntegrityError(f"{where}: unsigned: the index holds no signature for it")
        public = self.trusted.get(mv.key_id)
        if public is None:
            trusted = ", ".join(sorted(self.trusted)) or "none"
            raise ModelIntegrityError(f"{where}: signed by unknown key {mv.key_id!r} (trusted keys: {trusted})")
        try:
            signature = bytes.fromhex(mv.signature)
            verify(public, canonical_json(mv.signed_metadata()), signature)
        except (ValueError, SignatureError):
            raise ModelIntegrityError(f"{where}: bad signature: the metadata does not match what key {mv.key_id} "
                                      f"signed (edited after signing?)") from None

    @staticmethod
    def _check_bytes(mv: ModelVersion, data: bytes, where: str) -> None:
        if len(data) != mv.size:
            state = "truncated" if len(data) < mv.size else "altered (longer than signed)"
            raise ModelIntegrityError(f"{where}: model file is {state}: {len(data)} bytes, signed size {mv.size}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != mv.sha256:
            raise ModelIntegrityError(f"{where}: model file is tampered: sha256 {actual[:16]}..., signed "
                                      f"{mv.sha256[:16]}...")

    def _read_verified(self, mv: ModelVersion) -> bytes:
        path = self.object_path(mv.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(f"{mv.ref}: model file {path} is missing") from None
        self._check_bytes(mv, data, mv.ref)
        self._check_signature(mv, mv.ref)
        return data

    def load(self, ref: str) -> tuple[ModelVersion, bytes]:
        """The version and its model bytes, after checking size, sha256 and the signature against trusted keys."""
        mv = self.get(ref)
        return mv, self._read_verified(mv)

    def verify(self, ref: str | None = None) -> list[tuple[str, bool, str]]:
        """Check every version (or the one ``ref`` names): ``[(ref, ok, problem)]``, problem "" when ok."""
        targets = [self.get(ref)] if ref is not None else self.versions()
        out: list[tuple[str, bool, str]] = []
        for mv in targets:
            try:
                self._read_verified(mv)
            except ModelIntegrityError as exc:
                out.append((mv.ref, False, str(exc).removeprefix(f"{mv.ref}: ")))
            else:
                out.append((mv.ref, True, ""))
        return out

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def promote(self, ref: str, stage: str = "production") -> ModelVersion:
        """Move a version to ``stage``; a new production version retires the previous one of its task.

        A version is promoted to production only if it passes :meth:`load`'s checks (file and signature).
        """
        if stage not in STAGES:
            raise ConfigError("stage", f"{stage!r} is not one of {', '.join(STAGES)}")
        now = _now()
        with self._connect(write=True) as con:
            mv = self._get(con, ref)
            if stage == "production":
                self._read_verified(mv)
            retired = []
            if stage == "production":
                retired = [r[0] for r in con.execute("SELECT version FROM versions WHERE task=? AND "
                                                     "stage='production' AND version<>?", (mv.task, mv.version))]
                con.execute("UPDATE versions SET stage='retired', promoted_at=? "
                            "WHERE task=? AND stage='production' AND version<>?", (now, mv.task, mv.version))
            if mv.stage != stage:
                con.execute("UPDATE versions SET stage=?, promoted_at=? WHERE task=? AND version=?",
                            (stage, now, mv.task, mv.version))
            out = self._get(con, mv.ref)
        if self.audit is not None:
            for v in retired:
                self.audit.append(self.actor, RETIRE, f"{mv.task}@{v}", {"replaced_by": mv.ref})
            self.audit.append(self.actor, RETIRE if stage == "retired" else PROMOTE, mv.ref, {"stage": stage})
        return out

    def add_evaluation(self, ref: str, dataset: str, metrics: Mapping[str, float]) -> ModelVersion:
        """Append ``{at, dataset, metrics}`` to the version's evaluations (not signed)."""
        if not isinstance(dataset, str) or not dataset:
            raise ConfigError("dataset", f"{dataset!r} must be a non-empty string")
        entry = {"at": _now(), "dataset": dataset, "metrics": _check_metrics(metrics)}
        with self._connect(write=True) as con:
            mv = self._get(con, ref)
            con.execute("UPDATE versions SET evaluations=? WHERE task=? AND version=?",
                        (json.dumps([*mv.evaluations, entry], allow_nan=False), mv.task, mv.version))
            return self._get(con, mv.ref)

    # -- bundles -----------------------------------------------------------------------------------------------

    def export_bundle(self, ref: str, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``<task>-v<N>.onnx`` and ``<task>-v<N>.json`` (signed metadata, signature, key id) into
        ``out_dir``; returns the JSON path. The version must pass :meth:`load`'s checks."""
        mv, data = self.load(ref)
        out = Path(out_dir).expanduser()
        stem = f"{mv.task}-v{mv.version}"
        atomic_write_bytes(out / f"{stem}.onnx", data)
        bundle = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_FORMAT_VERSION, "file": f"{stem}.onnx",
                  "metadata": mv.signed_metadata(), "signature": mv.signature, "key_id": mv.key_id}
        return atomic_write_json(out / f"{stem}.json", bundle)

    def import_bundle(self, json_path: str | os.PathLike[str]) -> ModelVersion:
        """Verify a bundle (file hash, signature by a trusted key) and store it under its original version.

        Importing the same version again is a no-op; another file or metadata under an existing version is
        refused.
        """
        path = Path(json_path).expanduser()
        where = f"bundle {path}"
        try:
            bundle = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError("bundle", f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelIntegrityError(f"{where}: not a model bundle ({exc})") from None
        mv = self._bundle_version(bundle, where)
        where = f"bundle {path} ({mv.ref})"
        model_path = path.parent / bundle["file"]
        try:
            data = model_path.read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(f"{where}: model file {model_path} is missing") from None
        self._check_bytes(mv, data, where)
        self._check_signature(mv, where)
        self._store_object(data, mv.sha256)  # the file first: a crash never indexes a missing file
        with self._connect(write=True) as con:
            row = con.execute("SELECT * FROM versions WHERE task=? AND version=?", (mv.task, mv.version)).fetchone()
            if row is not None:
                have = self._row(row)
                if have.sha256 != mv.sha256:
                    raise ModelIntegrityError(f"{where}: refused: {mv.ref} already exists with a different file "
                                              f"(sha256 {have.sha256[:16]}..., bundle {mv.sha256[:16]}...)")
                if have.signed_metadata() != mv.signed_metadata() or have.signature != mv.signature:
                    raise ModelIntegrityError(f"{where}: refused: {mv.ref} already exists with other signed "
                                              f"metadata")
                return have
            self._insert(con, mv)
            return self._get(con, mv.ref)

    @staticmethod
    def _bundle_version(bundle: Any, where: str) -> ModelVersion:
        """The bundle's version (stage candidate), after checking its structure; not yet verified."""
        if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
            raise ModelIntegrityError(f"{where}: not a model bundle (format is not {BUNDLE_FORMAT!r})")
        if bundle.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ModelIntegrityError(f"{where}: bundle format version {bundle.get('format_version')!r}, this "
                                      f"anya-fl reads {BUNDLE_FORMAT_VERSION}")
        meta, file = bundle.get("metadata"), bundle.get("file")
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise ModelIntegrityError(f"{where}: 'file' must name a file beside the bundle, got {file!r}")
        if not isinstance(meta, dict) or set(meta) != set(SIGNED_FIELDS):
            got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise ModelIntegrityError(f"{where}: metadata must have exactly the fields {', '.join(SIGNED_FIELDS)}; "
                                      f"got {got}")
        signature, kid = bundle.get("signature"), bundle.get("key_id")
        if not isinstance(signature, str) or not isinstance(kid, str):
            raise ModelIntegrityError(f"{where}: signature and key_id must be strings")
        if kid != meta["key_id"]:
            raise ModelIntegrityError(f"{where}: key_id {kid!r} differs from the signed key_id {meta['key_id']!r}")
        try:
            _check_task(meta["task"])
            for name in ("version", "size", "round"):
                value = meta[name]
                if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "version" else 0):
                    raise ConfigError(name, f"{value!r} is not a valid {name}")
            if meta["parent"] is not None and (isinstance(meta["parent"], bool) or not isinstance(meta["parent"], int)):
                raise ConfigError("parent", f"{meta['parent']!r} is not a version number")
            if not isinstance(meta["sha256"], str) or not _SHA256.fullmatch(meta["sha256"]):
                raise ConfigError("sha256", f"{meta['sha256']!r} is not a sha256 hex digest")
            for name in ("run", "created_at", "key_id"):
                if not isinstance(meta[name], str):
                    raise ConfigError(name, f"{meta[name]!r} is not a string")
            _check_metrics(meta["metrics"])
            _optional_float(meta["epsilon"], "epsilon")
            _optional_float(meta["delta"], "delta")
        except ConfigError as exc:
            raise ModelIntegrityError(f"{where}: invalid metadata: {exc}") from None
        # publish signs floats; an int here would not survive the index unchanged (REAL columns, JSON text)
        floats = [*meta["metrics"].values(), *(v for v in (meta["epsilon"], meta["delta"]) if v is not None)]
        if not all(isinstance(v, float) for v in floats):
            raise ModelIntegrityError(f"{where}: invalid metadata: metrics, epsilon and delta must be floats")
        return ModelVersion(**meta, signature=signature)
