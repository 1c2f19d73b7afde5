"""The prediction API against hostile clients: every bad body gets a 4xx naming the problem, the server stays
up, and no client's request moves the node's readiness; only the engine failing on valid input does.

Real parts throughout: models exported from torch and signed into a registry, the onnxruntime engine, and
uvicorn on a free loopback port (stopped at the end).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from anya_fl.experiments.sample_data import sample_task_arrays
from core.bitcoin.features import TASK_SCHEMAS, TASKS
from core.data.chain import ChainConfig, core_transaction_json, simulate_chain
from core.health.http import BackgroundServer
from core.health.node_health import HealthSettings, NodeHealth
from core.security.signing import generate_signing_key, load_private_key, load_public_key
from core.serving.api import (
    MAX_JSON_DEPTH,
    FastPredict,
    RegistryWatcher,
    ServeLimits,
    build_app,
    json_too_deep,
    serving_health,
)
from core.serving.inference.engine import InferenceEngine
from core.serving.registry import ModelRegistry

MAX_BYTES = 256 * 1024  # small, so an oversized body is cheap to send
MAX_ROWS = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from models.export import export_onnx
    from models.tasks import build_model

    root = tmp_path_factory.mktemp("hostile")
    generate_signing_key(root / "coord.key", root / "coord.pub")
    chain = simulate_chain(ChainConfig(n_transactions=3000, seed=11))
    arrays = sample_task_arrays(chain)
    rows = {t: np.concatenate([s.x[k] for k in ("train", "val", "test")])[:200] for t, s in arrays.items()}
    onnx_bytes = {t: export_onnx(t, build_model(t, seed=0), {"version": 1, "run": "hostile"}) for t in TASKS}
    return {"root": root, "chain": chain, "rows": rows, "onnx": onnx_bytes}


@contextlib.contextmanager
def serving(world, name: str, *, fast: bool = True) -> Iterator[dict]:
    """A serving node: signed registry -> watcher -> engine, health, the API on uvicorn (port 0); ``fast=False``
    serves the FastAPI app alone (its documented route) instead of the FastPredict front."""
    reg = ModelRegistry(world["root"] / name, signing_key=load_private_key(world["root"] / "coord.key"))
    for task in TASKS:
        reg.promote(reg.publish(task, world["onnx"][task], run="hostile", round=1, metrics={}).ref, "production")
    health = serving_health(NodeHealth(HealthSettings()))
    engine = InferenceEngine(monitor=health.monitor)
    trusted = ModelRegistry(reg.root, trusted_keys=[load_public_key(world["root"] / "coord.pub")])
    watcher = RegistryWatcher(engine, trusted, health, interval_s=3600)
    assert all(not c.startswith("!") for c in watcher.sync_once())
    health.refresh()
    app = build_app(engine, health, registry=reg, limits=ServeLimits(max_rows=MAX_ROWS, max_bytes=MAX_BYTES))
    server = BackgroundServer(FastPredict(app) if fast else app).start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    try:
        yield {"client": client, "health": health, "engine": engine, "registry": reg, "watcher": watcher}
    finally:
        client.close()
        server.stop()


@pytest.fixture(scope="module")
def node(world) -> Iterator[dict]:
    with serving(world, "reg-fuzz") as n:
        assert n["client"].get("/readyz").status_code == 200
        yield n


def _mempool(n: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    entries = {f"{i:064x}": {"vsize": int(v), "fees": {"base": float(round(r * v / 1e8, 8))}}
               for i, (v, r) in enumerate(zip(rng.integers(110, 2000, n), rng.lognormal(2.5, 0.8, n), strict=True))}
    return {"entries": entries, "info": {"minrelaytxfee": 0.00001}}


def _valid_body(world, task: str, n: int = 2) -> dict:
    return {"rows": world["rows"][task][:n].tolist()}


def _errors_named(r: httpx.Response) -> str:
    """The refusal's message, after checking it is a 4xx JSON ``{"error": "<field>: <problem>"}``."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]
    assert isinstance(message, str) and re.match(r"^\S[^:]{0,120}: \S", message), message
    return message


def _inference(health) -> dict:
    return next(c for c in health.checker.report()["components"] if c["name"] == "inference")


# ------------------------------------------------------------------------------------------ the fixed corpus

def _nest(inner: bytes, depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + inner + closer * depth


_ROW22 = b"[" + b", ".join([b"1"] * 22) + b"]"
_DEEP = 1000
CORPUS: list[tuple[str, str, bytes, str, int | None, str]] = [
    # (what, task, body, content type, expected status or None for any 4xx, substring of the error)
    ("deep rows", "fraud", b'{"rows": ' + _nest(b"1", _DEEP) + b"}", "application/json", 400, "nested more than"),
    ("deep unclosed", "fraud", b'{"rows": ' + b"[" * 50_000, "application/json", 400, "nested more than"),
    ("deep extra field", "fraud", b'{"rows": [' + _ROW22 + b'], "x": ' + _nest(b"1", _DEEP) + b"}",
     "application/json", 400, "nested more than"),
    ("deep objects", "fee", _nest(b"1", _DEEP, b'{"a": ', b"}"), "application/json", 400, "nested more than"),
    ("deep in a transaction", "fraud", b'{"transactions": [{"vin": ' + _nest(b"{}", _DEEP) + b"}]}",
     "application/json", 400, "nested more than"),
    ("deep in mempool entries", "fee", b'{"conf_targets": [1], "mempool": {"entries": {"t": '
     + _nest(b"0", _DEEP, b'{"fees": ', b"}") + b"}}}", "application/json", 400, "nested more than"),
    ("deep inside a string is fine", "fraud", json.dumps({"rows": [[1] * 22], "x": "[" * 5000}).encode(),
     "application/json", 422, "unknown field(s) 'x'"),
    ("1e400", "fraud", b'{"rows": [[1e400' + b", 1" * 21 + b"]]}", "application/json", 422,
     "rows[0].vsize: is not a finite number"),
    ("-1e400", "fee", b'{"rows": [[-1e400' + b", 1" * 12 + b"]]}", "application/json", 422, "not a finite number"),
    ("1e38 fee rate", "fraud", b'{"rows": [[200, 800, 1e38' + b", 1" * 19 + b"]]}", "application/json", 422,
     "rows[0].fee_rate: 1e+38 is outside the valid range [0, 1e+08] sat/vB"),
    ("400-digit integer", "fraud", b'{"rows": [[' + b"9" * 400 + b", 1" * 21 + b"]]}", "application/json", 422,
     "rows[0].vsize: an integer of 400 digits is outside the valid range"),
    ("5000-digit integer", "fraud", b'{"rows": [[' + b"9" * 5000 + b"]]}", "application/json", 400,
     "malformed JSON"),
    ("NaN", "fraud", b'{"rows": [[NaN' + b", 1" * 21 + b"]]}", "application/json", 422, "not a finite number"),
    ("Infinity", "anomaly", b'{"rows": [[Infinity' + b", 1" * 33 + b"]]}", "application/json", 422,
     "not a finite number"),
    ("-Infinity conf target", "fee", b'{"mempool": {"entries": {}}, "conf_targets": [-Infinity]}',
     "application/json", 422, "conf_targets[0]: -Infinity must be a whole number"),
    ("NaN fee in mempool", "fee", b'{"mempool": {"entries": {"t": {"vsize": 200, "fees": {"base": NaN}}}}, '
     b'"conf_targets": [2]}', "application/json", 422, "mempool.entries[t].fees.base"),
    ("Infinity in a transaction", "fraud", b'{"transactions": [{"vsize": Infinity}]}', "application/json", 422,
     "transactions[0]."),
    ("string cell", "fraud", b'{"rows": [[1, 2, 3, "4"' + b", 1" * 18 + b"]]}", "application/json", 422,
     "rows[0][3]: expected a number, got a string"),
    ("padded exponent string", "fraud", b'{"rows": [[" 1e3 "' + b", 1" * 21 + b"]]}", "application/json", 422,
     "rows[0][0]: expected a number, got a string"),
    ("full-width digits", "fraud", ('{"rows": [[1, "１２３"' + ", 1" * 20 + "]]}").encode(), "application/json", 422,
     "rows[0][1]: expected a number, got a string"),
    ("booleans", "fee", b'{"rows": [[true, false' + b", 1" * 11 + b"]]}", "application/json", 422,
     "rows[0][0]: expected a number, got a boolean"),
    ("boolean conf target", "fee", b'{"mempool": {"entries": {}}, "conf_targets": [true]}', "application/json", 422,
     "conf_targets[0]: true must be a whole number"),
    ("null cell", "fraud", b'{"rows": [[1, null' + b", 1" * 20 + b"]]}", "application/json", 422,
     "rows[0][1]: expected a number, got null"),
    ("null rows", "fraud", b'{"rows": null}', "application/json", 422, "rows: expected a non-empty array"),
    ("null body", "fraud", b"null", "application/json", 422, "body: expected a JSON object, got null"),
    ("ragged rows", "fraud", b'{"rows": [' + _ROW22 + b", [1, 2]]}", "application/json", 422,
     "rows[1]: 2 numbers; this task takes 22"),
    ("row not an array", "fraud", b'{"rows": [' + _ROW22 + b', {"a": 1}]}', "application/json", 422,
     "rows[1]: expected an array of 22 numbers, got an object"),
    ("nested cell", "fraud", b'{"rows": [[[1]' + b", 1" * 21 + b"]]}", "application/json", 422,
     "rows[0][0]: expected a number, got an array"),
    ("form body", "fraud", b"rows=1&rows=2", "application/x-www-form-urlencoded", 400, "malformed JSON"),
    ("text/plain garbage", "fee", b"hello", "text/plain", 400, "malformed JSON"),
    ("multipart", "anomaly", b'--x\r\nContent-Disposition: form-data; name="rows"\r\n\r\n1\r\n--x--\r\n',
     "multipart/form-data; boundary=x", 400, "malformed JSON"),
    ("invalid UTF-8", "fraud", b'{"rows": [[\xff\xfe' + b", 1" * 21 + b"]]}", "application/json", 400,
     "body: not UTF-8 (byte 0xff"),
    ("UTF-16", "fraud", json.dumps({"rows": [[1] * 22]}).encode("utf-16"), "application/json", 400,
     "body: not UTF-8"),
    ("lone surrogate key", "fraud", b'{"\\ud800": 1}', "application/json", 422, "unknown field(s)"),
    ("BOM", "fraud", b"\xef\xbb\xbf" + json.dumps({"rows": [[1] * 22]}).encode(), "application/json", 400,
     "malformed JSON"),
    ("oversized", "fraud", b'{"rows": [' + b" " * MAX_BYTES + b"]}", "application/json", 413, "the limit is"),
    ("too many rows", "fraud", json.dumps({"rows": [[1] * 22] * (MAX_ROWS + 1)}).encode(), "application/json", 413,
     f"{MAX_ROWS + 1} rows in one request"),
    ("array body", "fraud", b"[1, 2]", "application/json", 422, "body: expected a JSON object, got an array"),
    ("number body", "fee", b"42", "application/json", 422, "body: expected a JSON object, got a number"),
    ("string body", "anomaly", b'"rows"', "application/json", 422, "body: expected a JSON object, got a string"),
    ("empty body", "fraud", b"", "application/json", 400, "body: empty"),
    ("blank body", "fraud", b" \r\n\t ", "application/json", 400, "body: empty"),
    ("empty object", "fraud", b"{}", "application/json", 422, "transactions: expected a non-empty array"),
    ("wrong task field", "fraud", b'{"conf_targets": [1]}', "application/json", 422,
     "unknown field(s) 'conf_targets' for fraud"),
    ("unknown task", "nope", b"{}", "application/json", 404, "task: 'nope' is not a task"),
    ("transaction shapes", "fraud", b'{"transactions": [1, {"vin": "x"}]}', "application/json", 422,
     "transactions[0]."),
    ("mempool shapes", "anomaly", b'{"transactions": [{}], "mempool": []}', "application/json", 422,
     "transactions[0]."),
    ("mempool info", "fee", b'{"mempool": {"entries": {}, "info": 5}, "conf_targets": [1]}', "application/json",
     422, "mempool.info: expected an object"),
    ("mempool entries list", "fee", b'{"mempool": {"entries": []}, "conf_targets": [1]}', "application/json",
     422, "mempool.entries: wrong type"),
    ("huge vsize entry", "fee", b'{"mempool": {"entries": {"t": {"vsize": 1e30, "fees": {"base": 1}}}}, '
     b'"conf_targets": [1]}', "application/json", 422, "mempool.entries[t].vsize"),
    ("huge conf target", "fee", b'{"mempool": {"entries": {}}, "conf_targets": [' + b"9" * 40 + b"]}",
     "application/json", 422, "conf_targets[0]: 99999"),
]


def test_fixed_corpus_of_hostile_bodies_gets_4xx_naming_the_problem(node, world) -> None:
    c = node["client"]
    for what, task, body, ctype, status, needle in CORPUS:
        r = c.post(f"/v1/{task}/predict", content=body, headers={"content-type": ctype})
        message = _errors_named(r)
        assert status is None or r.status_code == status, (what, r.status_code, message)
        assert needle in message, (what, message)
    assert c.post("/v1/fraud/predict", json=_valid_body(world, "fraud")).status_code == 200
    assert c.get("/readyz").status_code == 200
    assert _inference(node["health"])["errors"] == 0


# ------------------------------------------------------------------------------------------ generated bodies

HOSTILE = [b'"1"', b'" 1e3 "', '"１２３"'.encode(), b'""', b"true", b"false", b"null", b"NaN", b"Infinity",
           b"-Infinity", b"1e400", b"-1e400", b"1e38", b"-1e38", b"9" * 400, b"[]", b"{}", b"[1]", b'{"a": 1}',
           b"-0", b"1e-400", b"01", b"0x10", b"+1", b".5", b"1.", b"-", b'"\\ud800"', b"\xff", b"\x00"]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "application/xml"]


def _typical_row(task: str) -> list[bytes]:
    """A valid row as number tokens: each column's typical midpoint."""
    return [repr((c.typical[0] + c.typical[1]) / 2).encode() for c in TASK_SCHEMAS[task].columns]


_token = st.sampled_from(HOSTILE) | st.sampled_from([b"1", b"250", b"0.5", b"0", b"-1"])


@st.composite
def hostile_request(draw) -> tuple[str, bytes, str, int]:
    """A valid body for a task, then damaged: hostile cells, ragged rows, nesting, truncation, bad bytes.

    Rows form (typical rows with cells replaced) or Bitcoin Core JSON form (fields set to drawn tokens)."""
    task = draw(st.sampled_from(TASKS))
    width = TASK_SCHEMAS[task].width
    n = draw(st.integers(1, 3))
    if draw(st.integers(0, 3)) == 0:  # Bitcoin Core JSON with drawn field values
        t = [draw(_token) for _ in range(6)]
        tx = (b'{"vsize": ' + t[0] + b', "weight": ' + t[1] + b', "locktime": 0, "vin": [{"sequence": ' + t[2]
              + b', "prevout": {"value": ' + t[3] + b'}}], "vout": [{"value": ' + t[4]
              + b', "scriptPubKey": {"type": "witness_v0_keyhash"}}]}')
        mempool = b'{"entries": {"t": {"vsize": ' + t[5] + b', "fees": {"base": ' + t[3] + b"}}}}"
        inner = {"fraud": b'"transactions": [' + tx + b"]",
                 "anomaly": b'"transactions": [' + tx + b'], "mempool": ' + mempool,
                 "fee": b'"mempool": ' + mempool + b', "conf_targets": [' + t[2] + b"]",
                 "network": b'"transactions": [' + tx + b"]",  # network and liquidity take rows only: a 422
                 "liquidity": b'"mempool": ' + mempool}[task]
        body = b"{" + inner + b"}"
    else:
        cells = [_typical_row(task) for _ in range(n)]
        for _ in range(draw(st.integers(0, 3))):
            i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, width - 1))
            cells[i][j] = draw(st.sampled_from(HOSTILE))
        if draw(st.booleans()):  # ragged: a row loses or gains a cell
            i = draw(st.integers(0, n - 1))
            cells[i] = cells[i][:-1] if draw(st.booleans()) else [*cells[i], b"1"]
        rows = b"[" + b", ".join(b"[" + b", ".join(r) + b"]" for r in cells) + b"]"
        depth = draw(st.sampled_from([0, 0, 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 5000]))
        where = draw(st.sampled_from(["rows", "extra", "row"]))
        if where == "rows":
            rows = _nest(rows, depth)
        elif where == "row" and depth:  # the first row wrapped in `depth` more arrays
            rows = rows.replace(b"[[", b"[[" + b"[" * depth, 1).replace(b"]", b"]" * (depth + 1), 1)
        body = b'{"rows": ' + rows + (b', "x": ' + _nest(b"0", depth) if where == "extra" else b"") + b"}"
    if draw(st.booleans()):  # a damaged byte stream
        cut = draw(st.integers(0, len(body)))
        body = draw(st.sampled_from([body[:cut], body[:cut] + b"\xc3" + body[cut:], body[:cut] + b"\x00" + body[cut:]]))
    return task, body, draw(st.sampled_from(CONTENT_TYPES)), n


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hostile_request())
def test_generated_hostile_bodies_never_get_a_5xx(node, case) -> None:
    task, body, ctype, n = case
    r = node["client"].post(f"/v1/{task}/predict", content=body, headers={"content-type": ctype} if ctype else {})
    if r.status_code == 200:  # the damage left a valid body (e.g. "-0" or "1e-400" where 0 is valid)
        assert isinstance(r.json()["outputs"], list)
        event("200")
    else:
        event(f"{r.status_code} {_errors_named(r).split(':')[0].split('[')[0]}")  # --hypothesis-show-statistics


def test_the_fastapi_route_answers_hostile_bodies_as_the_fast_path_does(node, world) -> None:
    with serving(world, "reg-route", fast=False) as plain:
        for what, task, body, ctype, _, _ in CORPUS:
            fast = node["client"].post(f"/v1/{task}/predict", content=body, headers={"content-type": ctype})
            route = plain["client"].post(f"/v1/{task}/predict", content=body, headers={"content-type": ctype})
            assert (route.status_code, route.json()) == (fast.status_code, fast.json()), what
        r = plain["client"].post("/v1/fraud/predict/x", content=b"{}")
        assert r.status_code == 404 and r.json() == {"error": "POST /v1/fraud/predict/x: not found"}
        assert _inference(plain["health"])["errors"] == 0 and plain["client"].get("/readyz").status_code == 200


def test_after_the_fuzz_the_server_serves_and_readiness_did_not_move(node, world) -> None:
    c = node["client"]
    for task in TASKS:
        r = c.post(f"/v1/{task}/predict", json=_valid_body(world, task))
        assert r.status_code == 200 and len(r.json()["outputs"]) == 2
    assert c.get("/readyz").status_code == 200
    inference = _inference(node["health"])
    assert inference["errors"] == 0 and inference["readiness"] == 1.0
    assert 'anya_fl_operation_total{operation="http.refused"}' in c.get("/metrics").text


# ------------------------------------------------------------------------------------------ the input rule

def test_strings_padded_numbers_full_width_digits_and_booleans_are_refused_naming_row_and_column(node, world) -> None:
    base = world["rows"]["fraud"][:3].tolist()
    for value, kind in (("1", "a string"), (" 1e3 ", "a string"), ("１２３", "a string"), (True, "a boolean"),
                        (False, "a boolean"), (None, "null")):
        rows = [list(r) for r in base]
        rows[2][5] = value
        r = node["client"].post("/v1/fraud/predict", json={"rows": rows})
        assert r.status_code == 422 and r.json()["error"] == f"rows[2][5]: expected a number, got {kind}", value
    every_cell_boolean = [[bool(i % 2) for i in range(13)]]
    r = node["client"].post("/v1/fee/predict", json={"rows": every_cell_boolean})
    assert r.status_code == 422 and r.json()["error"] == "rows[0][0]: expected a number, got a boolean"


def _tx_with_fee_rate(world, sat_per_vb: float) -> dict:
    """A simulated transaction as Core shows it, with its fee (and no prevout values) set to ``sat_per_vb``."""
    tx = core_transaction_json(world["chain"], 10)
    for vin in tx["vin"]:
        vin["prevout"].pop("value")
    tx["fee"] = sat_per_vb * tx["vsize"] / 1e8
    return tx


def test_out_of_valid_range_is_refused_alike_on_rows_and_core_json(node, world) -> None:
    c = node["client"]
    expected = "fee_rate: 2e+08 is outside the valid range [0, 1e+08] sat/vB"
    via_json = c.post("/v1/fraud/predict", json={"transactions": [_tx_with_fee_rate(world, 2e8)]})
    assert via_json.status_code == 422 and via_json.json()["error"].startswith(f"transactions[0].{expected}")
    row = world["rows"]["fraud"][:2].copy()
    row[1, 2] = 2e8
    via_rows = c.post("/v1/fraud/predict", json={"rows": row.tolist()})
    assert via_rows.status_code == 422 and via_rows.json()["error"] == f"rows[1].{expected}"
    # the mempool half: a mempool whose fee rates are all 2e8 sat/vB, through fee's Core JSON and fee's rows
    mempool = {"entries": {"t": {"vsize": 200, "fees": {"base": 400.0}}}}
    fee_json = c.post("/v1/fee/predict", json={"mempool": mempool, "conf_targets": [3]})
    fee_row = world["rows"]["fee"][:1].copy()
    fee_row[0, TASK_SCHEMAS["fee"].index("fee_rate_p10")] = 2e8
    fee_rows = c.post("/v1/fee/predict", json={"rows": fee_row.tolist()})
    for r in (fee_json, fee_rows):
        assert r.status_code == 422 and "fee_rate_p10: 2e+08 is outside the valid range [0, 1e+08] sat/vB" in \
            r.json()["error"], r.text
    negative = world["rows"]["fraud"][:1].copy()
    negative[0, 0] = -5
    r = c.post("/v1/fraud/predict", json={"rows": negative.tolist()})
    assert r.status_code == 422 and r.json()["error"] == "rows[0].vsize: -5 is outside the valid range [10, 1e+06] vB"


def test_valid_but_far_from_typical_is_answered_and_flagged_on_both_paths(node, world) -> None:
    c = node["client"]
    reason = "fee_rate 9.9e+07 far outside the typical range 1..300 sat/vB"
    via_json = c.post("/v1/fraud/predict", json={"transactions": [_tx_with_fee_rate(world, 9.9e7)]})
    assert via_json.status_code == 200, via_json.text
    assert via_json.json()["out_of_distribution"] == [{"row": 0, "reasons": [reason]}]
    row = world["rows"]["fraud"][:2].copy()
    row[0, 2] = 9.9e7
    via_rows = c.post("/v1/fraud/predict", json={"rows": row.tolist()})
    assert via_rows.status_code == 200 and len(via_rows.json()["outputs"]) == 2
    assert via_rows.json()["out_of_distribution"] == [{"row": 0, "reasons": [reason]}]


def test_depth_check_skips_brackets_in_strings_and_catches_unclosed_ones() -> None:
    assert not json_too_deep(json.dumps({"s": "[" * 100, "t": '\\"[[[[' * 30, "rows": [[1]] * 100}).encode(), 32)
    assert not json_too_deep(_nest(b"1", 32), 32)
    assert json_too_deep(_nest(b"1", 33), 32)
    assert json_too_deep(b'{"a": "]]]]", "b": ' + b"[" * 40, 32)
    assert json_too_deep(b'{"a": "\\"]]]]", "b": ' + _nest(b"1", 40, b'{"c": ', b"}") + b"}", 32)


# ------------------------------------------------------------------------------------------ readiness


def _fixed_batch_model(task: str, width: int, output: str) -> bytes:
    """A real ONNX model whose batch axis was exported as a fixed 1 (a genuine export defect): onnxruntime loads
    it and it answers the engine's one-row load probe, but it fails on every request of two or more valid rows."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("ReduceMean", ["features"], ["mean"], axes=[1], keepdims=0),
                               helper.make_node("Sigmoid", ["mean"], [output])], "fixed_batch", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    for key, value in (("task", task), ("feature_names", json.dumps(TASK_SCHEMAS[task].names))):
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def test_bad_requests_never_move_readiness_but_an_engine_failing_on_valid_input_does(world) -> None:
    """200 refused requests leave /readyz at 200; then the node itself fails (a signed, promoted model that
    loads and passes the one-row probe but fails on batches: onnxruntime raises at run) and /readyz turns 503.

    The failure is real: no part of ours is replaced or patched, the engine runs a real graph that cannot take
    the request's batch, exactly as a model exported with a fixed batch axis would behave in production."""
    bad_bodies = [body for _, task, body, _, _, _ in CORPUS if task in TASKS]
    with serving(world, "reg-ready") as n:
        c, health = n["client"], n["health"]
        for i in range(200):
            r = c.post(f"/v1/{TASKS[i % 3]}/predict", content=bad_bodies[i % len(bad_bodies)])
            assert 400 <= r.status_code < 500, r.text
        assert c.get("/readyz").status_code == 200
        assert _inference(health)["errors"] == 0
        assert c.post("/v1/fraud/predict", json=_valid_body(world, "fraud")).status_code == 200

        broken = n["registry"].publish("fraud", _fixed_batch_model("fraud", 22, "fraud_probability"), run="export-bug",
                                       round=2, metrics={})
        n["registry"].promote(broken.ref, "production")
        assert n["watcher"].sync_once() == [broken.ref]  # loaded: the one-row probe passes
        assert c.post("/v1/fraud/predict", json=_valid_body(world, "fraud", 1)).status_code == 200
        statuses = []
        while c.get("/readyz").status_code == 200:
            r = c.post("/v1/fraud/predict", json=_valid_body(world, "fraud", 2))
            statuses.append(r.status_code)
            assert r.status_code == 500 and r.json()["error"].startswith(
                "internal error: the fraud model failed on valid input"), r.text
            assert len(statuses) <= 60, "readiness never dropped although every valid request failed"
        ready = c.get("/readyz")
        assert ready.status_code == 503
        failing = {f["component"]: f["reason"] for f in ready.json()["failing"]}
        assert "recent inputs failed" in failing["inference"]
        assert _inference(health)["errors"] == len(statuses)
