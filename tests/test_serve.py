"""Models in production: ONNX export, the inference engine, hot swap, refusals, and the live HTTP API."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anya_fl.experiments.sample_data import sample_task_arrays
from core.bitcoin.features import TASKS
from core.data.chain import ChainConfig, core_transaction_json, simulate_chain
from core.errors import ConfigError, FeatureError
from core.health.http import BackgroundServer
from core.health.node_health import HealthSettings, NodeHealth
from core.security.signing import generate_signing_key, load_private_key, load_public_key
from core.serving.api import FastPredict, RegistryWatcher, build_app, serving_health
from core.serving.inference.engine import EngineSettings, InferenceEngine, choose_providers
from core.serving.registry import ModelRegistry
from models.export import export_onnx, parity
from models.tasks import build_model, infer

ROOT = Path(__file__).resolve().parent.parent


def _perturbed(task: str, seed: int):
    """A model with non-trivial weights (and fee calibration offsets), deterministic per seed."""
    import torch

    model = build_model(task, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        if task == "fee":
            model.calib_offset.copy_(torch.tensor([0.3, 0.2, 0.1, 0.0, -0.1]))
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("serve")
    generate_signing_key(root / "keys" / "coord.key", root / "keys" / "coord.pub")
    generate_signing_key(root / "keys" / "other.key", root / "keys" / "other.pub")
    chain = simulate_chain(ChainConfig(n_transactions=30_000, seed=5))
    arrays = sample_task_arrays(chain)
    rows = {t: np.concatenate([s.x[k] for k in ("train", "val", "test")]) for t, s in arrays.items()}
    models = {(t, s): _perturbed(t, s) for t in TASKS for s in (1, 2)}
    onnx_bytes = {k: export_onnx(k[0], m, {"version": k[1], "run": "test", "round": 3, "epsilon": 8.0})
                  for k, m in models.items()}
    return {"root": root, "chain": chain, "rows": rows, "models": models, "onnx": onnx_bytes}


def _registry(world, name: str) -> ModelRegistry:
    return ModelRegistry(world["root"] / name, signing_key=load_private_key(world["root"] / "keys" / "coord.key"))


def _publish(reg: ModelRegistry, world, task: str, seed: int, promote: bool = True):
    v = reg.publish(task, world["onnx"][(task, seed)], run="test", round=seed, metrics={"score": 0.5}, epsilon=8.0,
                    delta=1e-5)
    return reg.promote(v.ref, "production") if promote else v


# ---------------------------------------------------------------------------------------------- export


def test_export_matches_torch_with_dynamic_batch_and_metadata(world) -> None:
    for task in TASKS:
        data = world["onnx"][(task, 1)]
        proto = onnx.load_from_string(data)
        onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert meta["task"] == task and meta["version"] == "1" and meta["epsilon"] == "8.0"
        assert meta["run"] == "test" and meta["round"] == "3" and meta["schema_version"] == "1"
        assert len(json.loads(meta["feature_names"])) == world["rows"][task].shape[1]
        assert proto.graph.input[0].name == "features"
        assert proto.graph.output[0].name == {"fraud": "fraud_probability", "fee": "fee_rate_sat_vb",
                                              "anomaly": "anomaly_score", "network": "attack_probability",
                                              "liquidity": "success_probability"}[task]
        for n in (1, 7, 5000):  # the batch axis is dynamic
            x = world["rows"][task][:n]
            ref = infer(world["models"][(task, 1)], x)
            err = parity(task, world["models"][(task, 1)], data, x)
            assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), (task, n, err)


# ---------------------------------------------------------------------------------------------- engine


def test_engine_predicts_like_torch_and_checks_input(world) -> None:
    eng = InferenceEngine()
    for task in TASKS:
        eng.load(task, world["onnx"][(task, 1)], version=f"{task}@1")
        x = world["rows"][task][:2000]
        ref = infer(world["models"][(task, 1)], x)
        np.testing.assert_allclose(eng.predict_batch(task, x), ref, rtol=1e-5, atol=1e-6)
        assert eng.predict_one(task, x[3]) == pytest.approx(float(ref[3]), rel=1e-5, abs=1e-6)
    with pytest.raises(FeatureError, match=r"shape \(1, 5\): fraud takes rows of 22"):
        eng.predict_batch("fraud", np.zeros((1, 5)))
    bad = world["rows"]["fraud"][:3].copy()
    bad[2, 1] = np.inf
    with pytest.raises(FeatureError, match=r"features\[2\]\.weight: is not a finite number"):
        eng.predict_batch("fraud", bad)
    big = np.resize(world["rows"]["fee"], (70_000, 13))  # split at max_batch
    np.testing.assert_allclose(eng.predict_batch("fee", big)[-5:], eng.predict_batch("fee", big[-5:]), rtol=1e-6)
    assert eng.monitor.stats("predict.fraud")["count"] >= 2


def test_providers_explicit_override_and_missing_provider_message() -> None:
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers()[-1] == "CPUExecutionProvider"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ConfigError, match=r"provider: cuda \(CUDAExecutionProvider\) is not available.*available: "):
            InferenceEngine(EngineSettings(provider="cuda"))
    with pytest.raises(ConfigError, match="'tpu' is not a provider"):
        EngineSettings(provider="tpu").validate()


def test_int8_kept_only_within_the_stated_bound(world) -> None:
    val = world["rows"]["fraud"][:5000]
    kept = InferenceEngine(EngineSettings(quantize=True, max_quant_error=0.05)).load(
        "fraud", world["onnx"][("fraud", 1)], validation=val)
    assert kept.quantized and kept.quant_note.startswith("int8 kept")
    refused = InferenceEngine(EngineSettings(quantize=True, max_quant_error=1e-9)).load(
        "fraud", world["onnx"][("fraud", 1)], validation=val)
    assert not refused.quantized and refused.quant_note.startswith("int8 refused: max error")
    unbounded = InferenceEngine(EngineSettings(quantize=True)).load("fraud", world["onnx"][("fraud", 1)])
    assert not unbounded.quantized and "no validation rows" in unbounded.quant_note


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("attack", ["tampered", "truncated", "bad-signature", "unknown-key"])
def test_refused_versions_leave_the_previous_one_serving(world, tmp_path, attack) -> None:
    reg = _registry(world, f"reg-{attack}")
    v1 = _publish(reg, world, "fraud", 1)
    eng = InferenceEngine()
    eng.sync(reg, ("fraud",))
    assert eng.model("fraud").version == v1.ref
    if attack == "unknown-key":  # a version published with a key the node does not trust
        rogue = ModelRegistry(reg.root, signing_key=load_private_key(world["root"] / "keys" / "other.key"))
        v2 = rogue.publish("fraud", world["onnx"][("fraud", 2)], run="rogue", round=1, metrics={})
        with sqlite3.connect(reg.root / "index.sqlite") as con:  # an attacker with write access to the index
            con.execute("UPDATE versions SET stage='retired' WHERE task='fraud' AND stage='production'")
            con.execute("UPDATE versions SET stage='production' WHERE task='fraud' AND version=?", (v2.version,))
        expected = "signed by unknown key"
    else:
        v2 = _publish(reg, world, "fraud", 2)
        path = reg.object_path(v2.sha256)
        data = path.read_bytes()
        if attack == "tampered":
            path.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
            expected = "tampered"
        elif attack == "truncated":
            path.write_bytes(data[: len(data) // 2])
            expected = "truncated"
        else:
            with sqlite3.connect(reg.root / "index.sqlite") as con:
                con.execute("UPDATE versions SET metrics=? WHERE task='fraud' AND version=?",
                            (json.dumps({"score": 0.99}), v2.version))
            expected = "bad signature"
    changes = eng.sync(reg, ("fraud",))
    assert len(changes) == 1 and changes[0].startswith("!fraud:") and expected in changes[0], changes
    assert eng.model("fraud").version == v1.ref  # still serving the verified version
    assert eng.predict_batch("fraud", world["rows"]["fraud"][:4]).shape == (4,)


# ---------------------------------------------------------------------------------------------- live HTTP


@pytest.fixture(scope="module")
def live(world):
    reg = _registry(world, "reg-live")
    for task in TASKS:
        _publish(reg, world, task, 1)
    health = serving_health(NodeHealth(HealthSettings()))
    eng = InferenceEngine(monitor=health.monitor)
    watcher = RegistryWatcher(eng, ModelRegistry(reg.root, trusted_keys=[load_public_key(world["root"] / "keys" / "coord.pub")]),
                              health, interval_s=3600)
    watcher.sync_once()
    health.refresh()
    server = BackgroundServer(FastPredict(build_app(eng, health, registry=reg))).start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    yield {"client": client, "engine": eng, "registry": reg, "watcher": watcher, "health": health, "server": server}
    client.close()
    server.stop()


def _mempool(n: int = 60, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    entries = {f"{i:064x}": {"vsize": int(v), "fees": {"base": float(round(r * v / 1e8, 8))}}
               for i, (v, r) in enumerate(zip(rng.integers(110, 2000, n), rng.lognormal(2.5, 0.8, n), strict=True))}
    return {"entries": entries, "info": {"minrelaytxfee": 0.00001}}


def test_predict_rows_and_bitcoin_core_json(live, world) -> None:
    c, eng = live["client"], live["engine"]
    rows = world["rows"]["fraud"][:5]
    r = c.post("/v1/fraud/predict", json={"rows": rows.tolist()})
    assert r.status_code == 200 and r.json()["version"] == "fraud@1" and r.json()["output"] == "fraud_probability"
    np.testing.assert_allclose(r.json()["outputs"], eng.predict_batch("fraud", rows), rtol=1e-6)
    chain = world["chain"]
    txs = [core_transaction_json(chain, i) for i in range(10, 14)]
    via_json = c.post("/v1/fraud/predict", json={"transactions": txs})
    assert via_json.status_code == 200 and len(via_json.json()["outputs"]) == 4
    anomaly = c.post("/v1/anomaly/predict", json={"transactions": txs, "mempool": _mempool()})
    assert anomaly.status_code == 200 and all(v >= 0 for v in anomaly.json()["outputs"])
    fee = c.post("/v1/fee/predict", json={"mempool": _mempool(), "conf_targets": [1, 3, 6, 12]})
    assert fee.status_code == 200
    rates = fee.json()["outputs"]
    assert len(rates) == 4 and all(v >= 1.0 for v in rates)
    # valid rows far outside the typical range are answered and named; the simulated chain's own rows
    # (nearly all) are not; a value outside the valid range is refused (tests/test_serve_hostile.py)
    typical = c.post("/v1/fraud/predict", json={"rows": world["rows"]["fraud"][:500].tolist()}).json()
    assert len(typical.get("out_of_distribution", [])) <= 5
    odd = world["rows"]["fraud"][:2].copy()
    odd[1, 3] = 50_000  # n_inputs: valid (<= 100,000) but the normalizer clips it
    flagged = c.post("/v1/fraud/predict", json={"rows": odd.tolist()}).json()
    assert flagged["out_of_distribution"] == [
        {"row": 1, "reasons": ["n_inputs 50000 far outside the typical range 1..20 count"]}]
    assert len(flagged["outputs"]) == 2
    odd[1, 0] = 1e9  # vsize: outside the valid range
    refused = c.post("/v1/fraud/predict", json={"rows": odd.tolist()})
    assert refused.status_code == 422
    assert refused.json()["error"] == "rows[1].vsize: 1e+09 is outside the valid range [10, 1e+06] vB"
    models = c.get("/v1/models").json()["models"]
    assert set(models) == set(TASKS) and len(models["fee"]["feature_names"]) == 13
    assert "/v1/{task}/predict" in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v1/fraud/predict", b"{not json", 400, "body: malformed JSON"),
    ("/v1/nope/predict", b"{}", 404, "task: 'nope' is not a task"),
    ("/v1/fraud/predict", b"[1, 2]", 422, "body: expected a JSON object, got an array"),
    ("/v1/fraud/predict", b'{"rows": [[1, 2, 3]]}', 422, "rows: rows have 3 numbers; this task takes 22"),
    ("/v1/fraud/predict", b'{"rows": [[' + b"NaN, " * 21 + b'1]]}', 422, "rows[0].vsize: is not a finite number"),
    ("/v1/fraud/predict", b'{"rows": [[' + b"1e39, " * 21 + b'1]]}', 422,
     "rows[0].vsize: 1e+39 is outside the valid range"),
    ("/v1/fraud/predict", b'{"rows": [["a"]]}', 422, "rows[0][0]: expected a number, got a string"),
    ("/v1/fraud/predict", b'{"rows": []}', 422, "rows: expected a non-empty array"),
    ("/v1/fraud/predict", b'{"rows": [[1]], "extra": 1}', 422, "unknown field(s) 'extra'"),
    ("/v1/fraud/predict", json.dumps({"rows": [[0.0] * 22] * 5000}).encode(), 413, "5,000 rows in one request"),
    ("/v1/fraud/predict", b'{"transactions": [{"txid": 5}]}', 422, "transactions[0]."),
    ("/v1/fee/predict", b'{"mempool": {"entries": {}}, "conf_targets": [0]}', 422, "conf_targets[0]: 0 must be"),
    ("/v1/anomaly/predict", b'{"transactions": [{}]}', 422, "transactions[0]."),
])
def test_bad_input_gets_a_4xx_naming_the_problem(live, path, body, status, message) -> None:
    r = live["client"].post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert live["client"].get("/healthz").status_code == 200


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                     lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
                     max_leaves=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(["fraud", "fee", "anomaly", "x", "%2e%2e", ""]),
       body=st.one_of(
           _json.map(lambda v: json.dumps(v).encode()),
           st.fixed_dictionaries({"rows": st.lists(st.lists(st.floats(width=32) | st.integers(-10**12, 10**12),
                                                            min_size=0, max_size=40), max_size=4)}).map(
               lambda v: json.dumps(v).encode()),
           st.fixed_dictionaries({"transactions": st.lists(_json, max_size=3), "mempool": _json,
                                  "conf_targets": st.lists(st.integers(-5, 2000), max_size=4)}).map(
               lambda v: json.dumps(v).encode()),
           st.binary(max_size=64)))
def test_fuzz_live_api_never_answers_5xx(live, task, body) -> None:
    r = live["client"].post(f"/v1/{task}/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (task, body, r.text)


def test_after_fuzzing_the_server_still_serves_and_counted_inputs(live, world) -> None:
    r = live["client"].post("/v1/fraud/predict", json={"rows": world["rows"]["fraud"][:1].tolist()})
    assert r.status_code == 200
    comps = {c["name"]: c for c in live["health"].checker.report()["components"]}
    assert comps["inference"]["inputs"] >= 1 and comps["inference"]["errors"] == 0
    text = live["client"].get("/metrics").text
    assert 'anya_fl_operation_total{operation="http.fraud"}' in text
    assert live["client"].get("/readyz").status_code == 200


def test_hot_swap_to_a_promoted_version_drops_no_request(live, world, monkeypatch) -> None:
    """One client keeps predicting while fraud@2 is promoted and hot-swapped in: every request is answered 200;
    those answered before the swap, including at least 5 answered while the new session was being built, by
    fraud@1; every request sent after the swap by fraud@2; and never back to fraud@1 once fraud@2 answered.

    Ordered by events, not by sleeping: building fraud@2's session is held until 5 requests have been answered
    meanwhile, and the test waits for answers, not for time, so a busy machine only makes it slower."""
    c, reg, eng = live["client"], live["registry"], live["engine"]
    body = {"rows": world["rows"]["fraud"][:2].tolist()}
    phase = ["before"]  # before -> held (v2's session waits) -> loading (v2 being built) -> swapped (sync returned)
    seen: list[tuple[int, str, str, str]] = []  # (status, version, phase when sent, phase when answered)
    errors: list[BaseException] = []
    changed = threading.Condition()
    stop = threading.Event()

    def hammer() -> None:
        try:
            with httpx.Client(base_url=str(c.base_url), timeout=30) as own:
                while not stop.is_set():
                    sent = phase[0]
                    r = own.post("/v1/fraud/predict", json=body)
                    with changed:
                        seen.append((r.status_code, r.json().get("version", ""), sent, phase[0]))
                        changed.notify_all()
        except BaseException as exc:  # reported by the test, and no wait below is left hanging
            errors.append(exc)
        finally:
            stop.set()
            with changed:
                changed.notify_all()

    def wait_until(what: str, condition) -> None:
        with changed:
            changed.wait_for(lambda: condition() or stop.is_set())
        assert not errors and condition(), f"the client stopped before {what}: {errors} {seen[-3:]}"

    def count(sent: str, answered: str | None = None) -> int:
        return sum(1 for _, _, s, a in seen if s == sent and (answered is None or a == answered))

    real_session = eng._session

    def held_session(model_bytes: bytes):
        if phase[0] == "before":  # fraud@2's (first) session: the loaded fraud@1 must keep serving meanwhile
            phase[0] = "held"
            wait_until("5 answers while fraud@2 loaded", lambda: count("held", "held") >= 5)
            phase[0] = "loading"
        return real_session(model_bytes)

    monkeypatch.setattr(eng, "_session", held_session)
    t = threading.Thread(target=hammer)
    t.start()
    try:
        wait_until("5 answers before the swap", lambda: count("before") >= 5)
        v2 = _publish(reg, world, "fraud", 2)
        assert live["watcher"].sync_once() == [v2.ref]
        phase[0] = "swapped"
        wait_until("5 answers after the swap", lambda: count("swapped") >= 5)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert all(status == 200 for status, *_ in seen), [x for x in seen if x[0] != 200]
    assert all(v == "fraud@1" for _, v, sent, _ in seen if sent == "before")
    assert all(v == "fraud@1" for _, v, _, answered in seen if answered == "held") and count("held", "held") >= 5
    assert all(v == v2.ref for _, v, sent, _ in seen if sent == "swapped")
    versions = [v for _, v, _, _ in seen]
    assert versions[-1] == v2.ref and all(v == v2.ref for v in versions[versions.index(v2.ref):])  # no flapping back


# ---------------------------------------------------------------------------------------------- torch-free


def test_serving_process_never_imports_torch(world, tmp_path) -> None:
    code = ("import sys; import anya_fl.cli, core.serving.api, core.serving.inference.engine, core.serving.inference.riscv, core.serving.registry, "
            "core.health.http, core.health.node_health; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'flwr', 'opacus', 'models', 'fl_client', 'fl_server')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    reg = _registry(world, "reg-proc")
    for task in TASKS:
        _publish(reg, world, task, 1)
    from anya_fl.deployment import free_port, stop_process

    port = free_port()
    store, audit = tmp_path / "tokens.json", tmp_path / "audit.jsonl"
    tokens = {}
    for role in ("operator", "viewer"):
        made = subprocess.run([sys.executable, "-m", "anya_fl.cli", "token", "create", "--role", role, "--name", role,
                               "--tokens", str(store), "--audit-log", str(audit)], cwd=ROOT, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        tokens[role] = made.stdout.strip()
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.cli", "serve", "--registry", str(reg.root), "--port",
                             str(port), "--trust", str(world["root"] / "keys" / "coord.pub"), "--tokens", str(store),
                             "--audit-log", str(audit)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert ready, "serve did not become ready"
        url, body = f"http://127.0.0.1:{port}/v1/fee/predict", {"rows": world["rows"]["fee"][:3].tolist()}
        assert httpx.post(url, json=body).status_code == 401  # no token
        bearer = {role: {"Authorization": f"Bearer {t}"} for role, t in tokens.items()}
        assert httpx.post(url, json=body, headers=bearer["viewer"]).status_code == 403  # viewers may not predict
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=bearer["viewer"]).status_code == 200
        r = httpx.post(url, json=body, headers=bearer["operator"])
        assert r.status_code == 200
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "onnxruntime" in maps
    finally:
        stop_process(proc)
    log = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["action"] for r in log].count("request-refused") == 2 and all(t not in audit.read_text()
                                                                           for t in tokens.values())
