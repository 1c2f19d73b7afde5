"""API tokens: hashed storage, roles x rights, refusals with one message, and the ASGI middleware over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from anya_fl.cli.security import audit_app, token_app
from core.errors import ConfigError
from core.health.http import BackgroundServer
from core.security.audit import REQUEST_REFUSED, TOKEN_CREATE, TOKEN_REVOKE, AuditLog
from core.security.tokens import ALL_RIGHTS, INVALID_TOKEN, RIGHTS, AuthError, TokenAuth, TokenStore, authorize


@pytest.fixture()
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


def _refused(store: TokenStore, token: str | None) -> AuthError:
    with pytest.raises(AuthError) as info:
        store.authenticate(token)
    return info.value


def test_tokens_never_stored_in_clear(store: TokenStore) -> None:
    tokens = [store.create(role, f"client-{role}") for role in RIGHTS]
    raw = store.path.read_text()
    assert store.path.stat().st_mode & 0o777 == 0o600
    data = json.loads(raw)["tokens"]
    for token, rec in tokens:
        assert token.startswith(f"anya_{rec.id}_") and len(token.split("_", 2)[2]) == 43
        secret = token.split("_", 2)[2]
        assert token not in raw and secret not in raw
        algo, iterations, salt, digest = data[rec.id]["hash"].split("$")
        assert algo == "pbkdf2_sha256" and int(iterations) >= 1000 and len(bytes.fromhex(salt)) == 16
        assert store.authenticate(token) == rec
    salts = {data[rec.id]["hash"].split("$")[2] for _, rec in tokens}
    assert len(salts) == len(tokens)  # a fresh salt per token
    listed = store.list()
    assert {r.id for r in listed} == {rec.id for _, rec in tokens}
    assert all("hash" not in r.to_dict() for r in listed)


@pytest.mark.parametrize("role", sorted(RIGHTS))
def test_every_role_and_right(store: TokenStore, role: str) -> None:
    token, _ = store.create(role, "t")
    rec = store.authenticate(token)
    for right in sorted(ALL_RIGHTS):
        if right in RIGHTS[role]:
            authorize(rec, right)
            store.authorize(rec, right)
        else:
            with pytest.raises(AuthError, match=f"^role {role} may not {right}$") as info:
                authorize(rec, right)
            assert info.value.status == 403
    with pytest.raises(ConfigError, match="right"):
        authorize(rec, "fly")


def test_refusals_are_401_with_one_message(store: TokenStore) -> None:
    token, rec = store.create("operator", "node-1")
    other, _ = store.create("viewer", "node-2")
    secret = token.split("_", 2)[2]
    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    bad = [None, "", "garbage", f"anya_{rec.id}_short", f"anya_{'0' * 12}_{secret}", wrong_secret,
           f"anya_{other.split('_')[1]}_{secret}", token + "x"]
    for t in bad:
        err = _refused(store, t)
        assert (err.status, str(err)) == (401, INVALID_TOKEN), t
    assert store.authenticate(token).id == rec.id
    store.revoke(rec.id)
    err = _refused(store, token)  # the cached verification is dropped by revoke
    assert (err.status, str(err)) == (401, INVALID_TOKEN)
    assert store.get(rec.id).revoked and store.revoke(rec.id).revoked  # idempotent
    with pytest.raises(ConfigError, match="role"):
        store.create("admin", "x")
    with pytest.raises(ConfigError, match="token"):
        store.revoke("0" * 12)


def test_revocation_from_another_process_is_seen(store: TokenStore) -> None:
    token, rec = store.create("operator", "node-1")
    assert store.authenticate(token).id == rec.id
    assert store.cached(token) is not None
    TokenStore(store.path).revoke(rec.id)  # e.g. `anya-fl token revoke` while the server runs
    assert store.cached(token) is None
    assert _refused(store, token).status == 401


async def _tiny_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """A plain ASGI app: 200 on the known paths, 404 elsewhere; reports who the middleware let in."""
    if scope["type"] != "http":
        return
    known = scope["path"] in ("/v1/models", "/metrics", "/healthz", "/readyz") or (
        scope["path"].startswith("/v1/") and scope["path"].endswith("/predict"))
    token = (scope.get("state") or {}).get("token")
    body = json.dumps({"path": scope["path"], "token": token.id if token else None}).encode()
    await send({"type": "http.response.start", "status": 200 if known else 404,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_middleware_over_http(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    audit = AuditLog(tmp_path / "audit.jsonl")
    viewer, _ = store.create("viewer", "grafana")
    operator, op_rec = store.create("operator", "node-1")
    server = BackgroundServer(TokenAuth(_tiny_app, store, audit=audit)).start()  # type: ignore[arg-type]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            def call(method: str, path: str, token: str | None = None) -> httpx.Response:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                return http.request(method, path, headers=headers, json={} if method == "POST" else None)

            r = call("POST", "/v1/fraud/predict")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "missing bearer token" in r.json()["error"]
            r = call("POST", "/v1/fraud/predict", viewer)
            assert r.status_code == 403 and r.json() == {"error": "role viewer may not predict"}
            r = call("POST", "/v1/fraud/predict", operator)
            assert r.status_code == 200 and r.json()["token"] == op_rec.id
            r = call("POST", "/v1/fraud/predict", operator[:-1] + ("A" if operator[-1] != "A" else "B"))
            assert r.status_code == 401 and r.json() == {"error": INVALID_TOKEN}
            assert call("GET", "/v1/models", viewer).status_code == 200
            assert call("GET", "/metrics", viewer).status_code == 200
            assert call("GET", "/metrics").status_code == 401
            assert call("HEAD", "/metrics").status_code == 401  # HEAD is checked as GET
            assert call("GET", "/healthz").status_code == 200  # open for probes
            assert call("GET", "/readyz").status_code == 200
            assert call("GET", "/nowhere").status_code == 404  # unlisted routes pass through
            store.revoke(op_rec.id)
            assert call("POST", "/v1/fraud/predict", operator).status_code == 401
    finally:
        server.stop()
    refused = [rec for _, rec in audit.tail(100) if rec and rec["action"] == REQUEST_REFUSED]
    assert [(r["details"]["status"], r["target"]) for r in refused] == [
        (401, "POST /v1/fraud/predict"), (403, "POST /v1/fraud/predict"), (401, "POST /v1/fraud/predict"),
        (401, "GET /metrics"), (401, "HEAD /metrics"), (401, "POST /v1/fraud/predict")]
    assert refused[1]["actor"].startswith("token:") and refused[2]["details"]["claimed_id"] == op_rec.id
    assert operator.split("_", 2)[2] not in audit.path.read_text()  # never the secret
    assert audit.verify().ok


def test_cli_token_and_audit(tmp_path: Path) -> None:
    runner = CliRunner()
    st, lg = ["--tokens", str(tmp_path / "t.json")], ["--audit-log", str(tmp_path / "a.jsonl")]
    r = runner.invoke(token_app, ["create", "--role", "operator", "--name", "node-1", *st, *lg])
    assert r.exit_code == 0, r.output
    token = next(line for line in r.stdout.splitlines() if line.startswith("anya_"))
    rec = TokenStore(tmp_path / "t.json").authenticate(token)
    assert "shown only once" in r.output
    r = runner.invoke(token_app, ["list", *st])
    assert r.exit_code == 0 and rec.id in r.stdout and token not in r.stdout
    assert runner.invoke(token_app, ["revoke", rec.id, *st, *lg]).exit_code == 0
    assert TokenStore(tmp_path / "t.json").get(rec.id).revoked
    assert [a["action"] for _, a in AuditLog(tmp_path / "a.jsonl").tail(10)] == [TOKEN_CREATE, TOKEN_REVOKE]
    r = runner.invoke(audit_app, ["verify", *lg])
    assert r.exit_code == 0 and "ok" in r.stdout
    assert runner.invoke(audit_app, ["show", "--tail", "5", *lg]).exit_code == 0
    path = tmp_path / "a.jsonl"
    path.write_bytes(path.read_bytes().replace(b"node-1", b"node-2", 1))
    r = runner.invoke(audit_app, ["verify", *lg])
    assert r.exit_code == 1 and "hash mismatch" in r.output and "record 0" in r.output
