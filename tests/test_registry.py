"""The signed model registry: versions, stages, evaluations, every integrity refusal, bundles, threads, the CLI."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading

import pytest
from typer.testing import CliRunner

from anya_fl.cli.models import models_app
from core.errors import AnyaError, ConfigError
from core.security.signing import (
    CanonicalJsonError,
    Ed25519PrivateKey,
    KeyFileError,
    SignatureError,
    canonical_json,
    generate_signing_key,
    key_id,
    load_private_key,
    load_public_key,
    sign,
    verify,
)
from core.serving.registry import ModelIntegrityError, ModelNotFound, ModelRegistry

METRICS = {"auc": 0.91, "f1": 0.5}


def _pub(reg: ModelRegistry):
    return reg.signing_key.public_key()


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def reg(tmp_path, key) -> ModelRegistry:
    return ModelRegistry(tmp_path / "reg", signing_key=key)


def _publish(reg: ModelRegistry, task: str = "fraud", data: bytes = b"model-1", **kw):
    return reg.publish(task, data, run=kw.pop("run", "run-a"), round=kw.pop("round", 3),
                       metrics=kw.pop("metrics", METRICS), **kw)


def _sql(reg: ModelRegistry, statement: str, *args) -> None:
    con = sqlite3.connect(reg.root / "index.sqlite")
    with con:
        con.execute(statement, args)
    con.close()


# -- signing -----------------------------------------------------------------------------------------------------

def test_signing_keys_and_canonical_json(tmp_path) -> None:
    kid = generate_signing_key(tmp_path / "s.key", tmp_path / "s.pub")
    assert stat.S_IMODE((tmp_path / "s.key").stat().st_mode) == 0o600
    assert (tmp_path / "s.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "s.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(tmp_path / "s.key"), load_public_key(tmp_path / "s.pub")
    assert kid == key_id(public) == key_id(private) and len(kid) == 16
    before = (tmp_path / "s.key").read_bytes()
    with pytest.raises(KeyFileError, match=r"s\.key already exists"):
        generate_signing_key(tmp_path / "s.key", tmp_path / "other.pub")
    assert (tmp_path / "s.key").read_bytes() == before
    with pytest.raises(KeyFileError, match=r"missing\.pub: no such public key file"):
        load_public_key(tmp_path / "missing.pub")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(KeyFileError, match=r"junk\.key: not an unencrypted PEM Ed25519 private key"):
        load_private_key(tmp_path / "junk.key")
    with pytest.raises(KeyFileError, match=r"s\.key: not a PEM Ed25519 public key"):
        load_public_key(tmp_path / "s.key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "ec.key").write_bytes(ec_pem)
    with pytest.raises(KeyFileError, match=r"ec\.key: not an Ed25519 private key"):
        load_private_key(tmp_path / "ec.key")

    assert canonical_json({"b": 1, "a": [0.1, None, "é"]}) == '{"a":[0.1,null,"é"],"b":1}'.encode()
    with pytest.raises(CanonicalJsonError):
        canonical_json({"x": float("nan")})
    payload = canonical_json({"v": 1})
    sig = sign(private, payload)
    verify(public, payload, sig)
    with pytest.raises(SignatureError):
        verify(public, canonical_json({"v": 2}), sig)
    assert issubclass(SignatureError, AnyaError)


# -- publish, lookup, stages, evaluations ---------------------------------------------------------------------------

def test_publish_get_load_round_trip(reg) -> None:
    v = _publish(reg, data=b"\x00onnx", epsilon=8, delta=1e-5)
    assert (v.task, v.version, v.stage, v.size, v.ref) == ("fraud", 1, "candidate", 5, "fraud@1")
    assert v.epsilon == 8.0 and v.delta == 1e-5 and v.parent is None and v.key_id == key_id(reg.signing_key)
    assert v.created_at.endswith("+00:00") and v.evaluations == []
    assert reg.object_path(v.sha256) == reg.root / "objects" / v.sha256[:2] / f"{v.sha256}.onnx"
    got, data = reg.load("fraud@1")
    assert got == v and data == b"\x00onnx"
    # versions count per task; parent must exist
    assert _publish(reg, data=b"m2", parent=1).version == 2
    assert _publish(reg, "fee", b"fee1").version == 1
    assert [x.ref for x in reg.versions()] == ["fee@1", "fraud@1", "fraud@2"]
    assert [x.ref for x in reg.versions("fraud")] == ["fraud@1", "fraud@2"]
    with pytest.raises(ConfigError, match="parent: fraud@9 does not exist"):
        _publish(reg, parent=9)
    with pytest.raises(ConfigError, match="task: 'weather' is not one of"):
        _publish(reg, "weather")
    with pytest.raises(ConfigError, match="metrics: auc=nan is not finite"):
        _publish(reg, metrics={"auc": float("nan")})
    with pytest.raises(ConfigError, match="metrics: auc='x' is not a number"):
        _publish(reg, metrics={"auc": "x"})
    with pytest.raises(ConfigError, match="key: publishing a model needs"):
        _publish(ModelRegistry(reg.root))
    with sqlite3.connect(reg.root / "index.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_refs_stages_and_evaluations(reg) -> None:
    for i in range(3):
        _publish(reg, data=f"m{i}".encode())
    assert reg.get("fraud").version == 3  # no production: latest
    assert reg.get("fraud@latest").version == 3
    with pytest.raises(ModelNotFound, match="fraud has no production version"):
        reg.get("fraud@production")
    with pytest.raises(ModelNotFound, match=r"fraud@7 does not exist \(latest is fraud@3"):
        reg.get("fraud@7")
    with pytest.raises(ModelNotFound, match="holds no fee model"):
        reg.get("fee")
    with pytest.raises(ModelNotFound, match="unknown task 'weather'"):
        reg.get("weather@1")
    with pytest.raises(ConfigError, match="ref: 'fraud@newest'"):
        reg.get("fraud@newest")

    v1 = reg.promote("fraud@1")
    assert v1.stage == "production" and v1.promoted_at
    assert reg.get("fraud").version == 1 and reg.get("fraud@production").version == 1
    v2 = reg.promote("fraud@2", "production")
    assert v2.stage == "production"
    assert reg.get("fraud@1").stage == "retired"
    assert [v.stage for v in reg.versions("fraud")] == ["retired", "production", "candidate"]
    assert reg.get("fraud").version == 2
    with pytest.raises(ConfigError, match="stage: 'live' is not one of"):
        reg.promote("fraud@3", "live")
    # the partial unique index backs the rule up
    with pytest.raises(sqlite3.IntegrityError):
        _sql(reg, "UPDATE versions SET stage='production' WHERE task='fraud' AND version=3")
    assert reg.promote("fraud@1", "candidate").stage == "candidate"

    reg.add_evaluation("fraud@2", "holdout-2024", {"auc": 0.93})
    v = reg.add_evaluation("fraud@production", "node-3", {"auc": 0.88, "f1": 0.4})
    assert [(e["dataset"], e["metrics"]) for e in v.evaluations] == [
        ("holdout-2024", {"auc": 0.93}), ("node-3", {"auc": 0.88, "f1": 0.4})]
    assert all(e["at"].endswith("+00:00") for e in v.evaluations)
    reg.load("fraud@2")  # evaluations and stage are not signed


# -- integrity refusals ---------------------------------------------------------------------------------------------

def test_each_integrity_refusal_has_its_own_message(tmp_path, reg) -> None:
    data = b"0123456789abcdef"
    for i in range(6):
        _publish(reg, data=data + bytes([i]))

    path = reg.object_path(reg.get("fraud@1").sha256)
    blob = bytearray(path.read_bytes())
    blob[3] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match=r"fraud@1: model file is tampered: sha256"):
        reg.load("fraud@1")

    path = reg.object_path(reg.get("fraud@2").sha256)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ModelIntegrityError, match=r"fraud@2: model file is truncated: 13 bytes, signed size 17"):
        reg.load("fraud@2")

    reg.object_path(reg.get("fraud@3").sha256).unlink()
    with pytest.raises(ModelIntegrityError, match=r"fraud@3: model file .*\.onnx is missing"):
        reg.load("fraud@3")

    _sql(reg, "UPDATE versions SET signature='' WHERE task='fraud' AND version=4")
    with pytest.raises(ModelIntegrityError, match="fraud@4: unsigned"):
        reg.load("fraud@4")

    _sql(reg, "UPDATE versions SET metrics=? WHERE task='fraud' AND version=5", json.dumps({"auc": 0.99, "f1": 0.5}))
    with pytest.raises(ModelIntegrityError, match="fraud@5: bad signature: the metadata does not match"):
        reg.load("fraud@5")

    other = ModelRegistry(reg.root, signing_key=Ed25519PrivateKey.generate())
    with pytest.raises(ModelIntegrityError, match=f"fraud@6: signed by unknown key '{key_id(reg.signing_key)}'"):
        other.load("fraud@6")
    reg.load("fraud@6")
    # a version signed by another key, in the same registry
    _publish(other, data=b"by-other")
    with pytest.raises(ModelIntegrityError, match=f"fraud@7: signed by unknown key '{key_id(other.signing_key)}'"):
        reg.load("fraud@7")
    assert ModelRegistry(reg.root, trusted_keys=[_pub(reg), _pub(other)]).load("fraud@7")[1] == b"by-other"

    results = reg.verify()
    assert [(r, ok) for r, ok, _ in results] == [(f"fraud@{i}", i == 6) for i in range(1, 8)]
    problems = [p for _, _, p in results]
    for needle, p in zip(["tampered", "truncated", "missing", "unsigned", "bad signature", "", "unknown key"],
                         problems, strict=True):
        assert needle in p, (needle, p)
    assert reg.verify("fraud@6") == [("fraud@6", True, "")]
    with pytest.raises(ModelIntegrityError, match="tampered"):
        reg.promote("fraud@1")  # never promote a version that fails its checks
    with pytest.raises(ModelIntegrityError, match="truncated"):
        reg.export_bundle("fraud@2", tmp_path / "out")


# -- bundles --------------------------------------------------------------------------------------------------------

def test_export_import_bundle(tmp_path, reg) -> None:
    _publish(reg, data=b"first", epsilon=3.0, delta=1e-5)
    v2 = _publish(reg, data=b"second", parent=1, metrics={"auc": 0.1 + 0.2})
    bundle = reg.export_bundle("fraud@2", tmp_path / "out")
    assert bundle == tmp_path / "out" / "fraud-v2.json"
    assert (tmp_path / "out" / "fraud-v2.onnx").read_bytes() == b"second"
    doc = json.loads(bundle.read_text())
    assert doc["signature"] == v2.signature and doc["key_id"] == v2.key_id and doc["metadata"]["version"] == 2

    node = ModelRegistry(tmp_path / "node", trusted_keys=[_pub(reg)])
    got = node.import_bundle(bundle)
    assert got.ref == "fraud@2" and got.signed_metadata() == v2.signed_metadata() and got.signature == v2.signature
    assert got.stage == "candidate" and node.load("fraud")[1] == b"second"
    assert node.import_bundle(bundle) == got  # the same version twice: no-op
    assert [v.ref for v in node.versions()] == ["fraud@2"]
    node.import_bundle(reg.export_bundle("fraud@1", tmp_path / "out"))
    assert [v.ref for v in node.versions()] == ["fraud@1", "fraud@2"]
    assert node.verify() == [("fraud@1", True, ""), ("fraud@2", True, "")]

    # a different file under an existing version number
    fresh = ModelRegistry(tmp_path / "fresh", signing_key=reg.signing_key)
    _publish(fresh, data=b"other-first")
    _publish(fresh, data=b"other-second")
    with pytest.raises(ModelIntegrityError, match="refused: fraud@2 already exists with a different file"):
        node.import_bundle(fresh.export_bundle("fraud@2", tmp_path / "fresh-out"))

    # signed by a key the node does not trust
    rogue = ModelRegistry(tmp_path / "rogue", signing_key=Ed25519PrivateKey.generate())
    _publish(rogue, data=b"evil")
    rogue_bundle = rogue.export_bundle("fraud@1", tmp_path / "rogue-out")
    empty = ModelRegistry(tmp_path / "empty", trusted_keys=[_pub(reg)])
    with pytest.raises(ModelIntegrityError, match=r"fraud-v1\.json \(fraud@1\): signed by unknown key"):
        empty.import_bundle(rogue_bundle)
    assert empty.versions() == []

    # tampered model file, edited metadata, missing file
    (tmp_path / "out" / "fraud-v2.onnx").write_bytes(b"secanD")
    with pytest.raises(ModelIntegrityError, match="model file is tampered"):
        empty.import_bundle(bundle)
    (tmp_path / "out" / "fraud-v2.onnx").write_bytes(b"second")
    doc["metadata"]["metrics"]["auc"] = 0.99
    bundle.write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match="bad signature"):
        empty.import_bundle(bundle)
    (tmp_path / "out" / "fraud-v2.onnx").unlink()
    with pytest.raises(ModelIntegrityError, match=r"fraud-v2\.onnx is missing"):
        empty.import_bundle(bundle)
    doc["file"] = "../../etc/passwd"
    bundle.write_text(json.dumps(doc))
    with pytest.raises(ModelIntegrityError, match="'file' must name a file beside the bundle"):
        empty.import_bundle(bundle)
    bundle.write_text("{not json")
    with pytest.raises(ModelIntegrityError, match="not a model bundle"):
        empty.import_bundle(bundle)
    assert empty.versions() == []


# -- threads --------------------------------------------------------------------------------------------------------

def test_threads_publish_distinct_versions(tmp_path, reg) -> None:
    errors: list[BaseException] = []
    separate = ModelRegistry(reg.root, signing_key=reg.signing_key)  # a second handle: SQLite locking, not ours

    def worker(n: int) -> None:
        r = reg if n % 2 == 0 else separate
        try:
            for i in range(10):
                r.publish("fee", f"{n}-{i}".encode(), run=f"t{n}", round=i, metrics={"mae": float(i)})
                r.publish("anomaly", f"a{n}-{i}".encode(), run=f"t{n}", round=i, metrics={"auc": 0.5})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for task in ("fee", "anomaly"):
        versions = reg.versions(task)
        assert [v.version for v in versions] == list(range(1, 41))
        assert len({v.sha256 for v in versions}) == 40
    assert all(ok for _, ok, _ in reg.verify())


# -- pki and CLI ----------------------------------------------------------------------------------------------------

def test_pki_creates_model_signing_key(tmp_path) -> None:
    from core.security.pki import init_pki

    pki = init_pki(tmp_path / "pki", 0, ["127.0.0.1"])
    assert pki["signing_key"] == tmp_path / "pki" / "model-signing.key"
    assert stat.S_IMODE(pki["signing_key"].stat().st_mode) == 0o600
    assert key_id(load_private_key(pki["signing_key"])) == key_id(load_public_key(pki["signing_pub"]))


def test_cli_list_show_promote_verify_export_import(tmp_path) -> None:
    generate_signing_key(tmp_path / "k.key", tmp_path / "k.pub")
    root = tmp_path / "reg"
    reg = ModelRegistry(root, signing_key=load_private_key(tmp_path / "k.key"))
    _publish(reg, data=b"one")
    _publish(reg, data=b"two", parent=1, epsilon=8.0)
    reg.add_evaluation("fraud@2", "holdout", {"auc": 0.8})
    runner = CliRunner()
    common = ["--registry", str(root)]
    trust = [*common, "--trust", str(tmp_path / "k.pub")]

    out = runner.invoke(models_app, ["list", *common])
    assert out.exit_code == 0, out.output
    assert "fraud@1" in out.output and "fraud@2" in out.output and "candidate" in out.output

    out = runner.invoke(models_app, ["show", "fraud@2", *common])
    assert out.exit_code == 0, out.output
    assert "holdout" in out.output and reg.get("fraud@2").sha256 in out.output

    out = runner.invoke(models_app, ["promote", "fraud@1", *trust])
    assert out.exit_code == 0, out.output
    assert "fraud@1 is now production" in out.output
    out = runner.invoke(models_app, ["promote", "fraud@2", "--stage", "production", "--signing-key", str(tmp_path / "k.key"),
                                     *common])
    assert out.exit_code == 0, out.output
    assert "fraud@2 is now production (fraud@1 retired)" in out.output
    assert reg.get("fraud").version == 2

    out = runner.invoke(models_app, ["verify", *trust])
    assert out.exit_code == 0, out.output
    assert "all 2 versions verified" in out.output
    out = runner.invoke(models_app, ["verify", *common])  # no trusted key
    assert out.exit_code == 1 and "unknown key" in out.output

    out = runner.invoke(models_app, ["export", "fraud@2", str(tmp_path / "ship"), *trust])
    assert out.exit_code == 0, out.output
    node = ["--registry", str(tmp_path / "node"), "--trust", str(tmp_path / "k.pub")]
    out = runner.invoke(models_app, ["import", str(tmp_path / "ship" / "fraud-v2.json"), *node])
    assert out.exit_code == 0, out.output
    assert "imported fraud@2" in out.output

    reg.object_path(reg.get("fraud@1").sha256).write_bytes(b"eno")
    out = runner.invoke(models_app, ["verify", *trust])
    assert out.exit_code == 1 and "tampered" in out.output and "1 of 2 versions failed" in out.output

    out = runner.invoke(models_app, ["list", "--registry", str(tmp_path / "nowhere")])
    assert isinstance(out.exception, ConfigError) and "no model registry" in str(out.exception)
    out = runner.invoke(models_app, ["show", "fraud@9", *common])
    assert isinstance(out.exception, ModelNotFound)

