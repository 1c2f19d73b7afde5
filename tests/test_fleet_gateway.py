"""The Fleet gateway: only Flower's Fleet routes reach the SuperLink, whatever the request target says.

The gateway runs as its own process (as `coordinator start` runs it) in front of a real HTTP server on
loopback that records every request that reaches it; hostile request targets are sent as raw bytes so
that no client library normalizes them first.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from anya_fl import deployment as dep
from anya_fl.fleet_gateway import FLEET_ROUTES


def test_routes_are_exactly_flowers_fleet_router() -> None:
    """Contract with the pinned Flower: the allow-list is its Fleet router, and no Control/Runtime route is in it."""
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app

    routes = {(m, c.path) for c in iter_route_contexts(create_app().routes) for m in c.methods or ()}
    fleet = {p for m, p in routes if p.startswith("/v1/fleet/")}
    assert fleet == set(FLEET_ROUTES)
    assert all(m == "POST" for m, p in routes if p in FLEET_ROUTES)
    control = {p for _m, p in routes if p.startswith(("/v1/control/", "/v1/runtime/"))}
    assert "/v1/control/register-node" in control and "/v1/control/start-run" in control
    assert not control & set(FLEET_ROUTES)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, dict, bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        out = json.dumps({"path": self.path, "len": len(body)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("x-upstream", "yes")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


def _raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw HTTP/1.1 request; return (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _post(target: str, body: bytes = b"x", extra: str = "") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/protobuf\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.fixture()
def gateway(tmp_path: Path):
    _Recorder.seen = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_port = upstream.server_address[1]
    port = dep.free_port()
    log = tmp_path / "gateway.log"
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.fleet_gateway", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{up_port}", "--max-body", "4096"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=dep.project_root())
    try:
        dep.wait_for_port("127.0.0.1", port, proc=proc)
        yield port, up_port, log
    finally:
        dep.stop_process(proc)
        upstream.shutdown()
        upstream.server_close()


HOSTILE = [
    "/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-nodes", "/v1/runtime/pull-task-input",
    "/v1/runtime/push-messages", "/docs", "/openapi.json", "/health", "/", "/v1/fleet", "/v1/fleet/",
    "/v1/fleet/../control/start-run", "/v1/fleet/%2e%2e/control/start-run", "/v1/fleet/%2E%2E%2Fcontrol%2Fstart-run",
    "//v1/control/start-run", "/v1/fleet/pull-messages/../../control/start-run", "/v1/Fleet/pull-messages",
    "/v1/fleet/pull-messages/", "/v1/fleet/pull-messages%00", "/v1/control%2fstart-run", "/./v1/control/start-run",
    "/v1/fleet/register-node/../../control/register-node", "/v1/fleet/pull-messages;/v1/control/start-run",
    "/v1/fleet//pull-messages", "/V1/fleet/pull-messages",
]


def test_only_fleet_routes_reach_the_superlink(gateway) -> None:
    port, up_port, log = gateway
    # a Fleet call passes with its body and its authentication headers, and the answer comes back
    status, body = _raw(port, _post("/v1/fleet/pull-messages", b"\x01\x02proto",
                                    "flwr-public-key: cGs=\r\nflwr-signature: c2ln\r\n"))
    assert status == 200 and json.loads(body) == {"path": "/v1/fleet/pull-messages", "len": 7}
    method, path, headers, sent = _Recorder.seen[-1]
    assert (method, path, sent) == ("POST", "/v1/fleet/pull-messages", b"\x01\x02proto")
    assert headers["flwr-public-key"] == "cGs=" and headers["flwr-signature"] == "c2ln"
    assert "x-forwarded-for" not in headers
    # the query string never travels
    status, _ = _raw(port, _post("/v1/fleet/get-run?next=/v1/control/start-run"))
    assert status == 200 and _Recorder.seen[-1][1] == "/v1/fleet/get-run"

    before = len(_Recorder.seen)
    for target in HOSTILE:
        status, body = _raw(port, _post(target))
        assert status in (400, 404), (target, status)
    for method in ("GET", "PUT", "DELETE", "OPTIONS"):
        status, _ = _raw(port, f"{method} /v1/fleet/pull-messages HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"
                         .encode())
        assert status in (404, 405), method
    # absolute-form target naming the SuperLink itself, and a Host header pointing at it
    status, _ = _raw(port, _post(f"http://127.0.0.1:{up_port}/v1/control/start-run"))
    assert status in (400, 404)
    status, _ = _raw(port, _post("/v1/control/start-run").replace(b"Host: gw", f"Host: 127.0.0.1:{up_port}".encode()))
    assert status == 404
    assert _Recorder.seen[before:] == [], "a refused request reached the SuperLink"
    assert all(p in FLEET_ROUTES for _m, p, _h, _b in _Recorder.seen)
    # too large a body: refused without reaching the SuperLink
    status, body = _raw(port, _post("/v1/fleet/push-object", b"z" * 5000))
    assert status == 413 and b"body" in body
    assert len(_Recorder.seen) == before
    assert "refused POST '/v1/control/start-run'" in log.read_text()


def test_superlink_down_is_a_502(tmp_path: Path) -> None:
    port = dep.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "anya_fl.fleet_gateway", "--listen", f"127.0.0.1:{port}",
                             "--upstream", f"127.0.0.1:{dep.free_port()}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=dep.project_root())
    try:
        dep.wait_for_port("127.0.0.1", port, proc=proc)
        status, body = _raw(port, _post("/v1/fleet/get-run"))
        assert status == 502 and b"SuperLink did not answer" in body
        assert proc.poll() is None
    finally:
        dep.stop_process(proc)


def test_superlink_must_listen_on_loopback(tmp_path: Path) -> None:
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="host: '0.0.0.0' is not a loopback address"):
        dep.start_superlink("0.0.0.0", dep.free_port(), tmp_path / "home", tmp_path / "log", insecure=True)
    with pytest.raises(ConfigError, match="upstream"):
        dep.start_fleet_gateway("127.0.0.1", dep.free_port(), "10.0.0.5:9093", tmp_path / "log", insecure=True)
    assert dep.is_loopback("127.0.0.1") and dep.is_loopback("::1") and dep.is_loopback("localhost")
    assert not dep.is_loopback("0.0.0.0") and not dep.is_loopback("::") and not dep.is_loopback("example.org")
