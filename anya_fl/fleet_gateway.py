"""The coordinator's public face: a Fleet-only gateway in front of a loopback SuperLink.

Flower 1.42 serves its Fleet API (what SuperNodes call), its Control API (register nodes, start and
stop runs, read logs) and its Runtime/ServerAppIo API on one HTTP port, and the open-source Control
API has no authentication. Whoever reaches that port can register a node key and start a run whose
ServerApp runs on the coordinator and whose ClientApp is sent to every node. So the SuperLink listens
on 127.0.0.1 only, and this gateway is the one thing on the network: it forwards exactly the Fleet
routes a SuperNode uses (``POST /v1/fleet/<route>``, the fixed list :data:`FLEET_ROUTES`) and answers
everything else with 404 itself, without contacting the SuperLink.

Why it is correct by construction: the upstream URL is built from the matched constant in
:data:`FLEET_ROUTES`, never from the client's request target; the query string is dropped; only
POST passes. A path that is not byte-for-byte one of those routes after the ASGI server's decoding
(``..`` segments, double slashes, percent-escapes of other routes, absolute-form targets) matches
nothing and is refused. SuperNode authentication (signed timestamps in headers) passes through
unchanged and is checked by the SuperLink, as without the gateway.

Run it as ``python -m anya_fl.fleet_gateway --listen HOST:PORT --upstream 127.0.0.1:PORT
[--certfile server.pem --keyfile server.key --ca ca.pem]``; :func:`anya_fl.deployment.start_fleet_gateway`
does that. No Flower import: it speaks plain HTTP(S) and knows Flower only through the route list,
which a contract test checks against Flower's own Fleet router.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

# Every route of Flower 1.42's Fleet router (flwr/superlink/routers/fleet/router.py), all POST.
FLEET_ROUTES = frozenset(f"/v1/fleet/{name}" for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
    "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
    "confirm-message-received",
))
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # Flower caps a FAB at 10 MB; model objects are far smaller
UPSTREAM_TIMEOUT_S = 120.0
# hop-by-hop headers (RFC 9110 7.6.1) and the ones the gateway sets itself
_DROP_REQUEST = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                           "trailer", "transfer-encoding", "upgrade", "host", "content-length",
                           "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"})
_DROP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "trailer", "upgrade",
                            "content-length", "server", "date"})

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _json(status: int, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"error": message}).encode()
    return status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


class FleetGateway:
    """ASGI app: forward :data:`FLEET_ROUTES` to ``upstream`` (``http(s)://127.0.0.1:PORT``), refuse the rest."""

    def __init__(self, upstream: str, *, verify: ssl.SSLContext | bool = True,
                 max_body: int = DEFAULT_MAX_BODY, log: Callable[[str], None] | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.verify = verify
        self.max_body = max_body
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.client: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(verify=self.verify, timeout=UPSTREAM_TIMEOUT_S, follow_redirects=False)
        return self.client

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets and anything else: nothing to serve
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        status, headers, body = await self._handle(scope, receive)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self._client()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The request body, or None when it is larger than ``max_body`` (read and dropped)."""
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b""
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size <= self.max_body:
                chunks.append(chunk)
            more = msg.get("more_body", False)
        return None if size > self.max_body else b"".join(chunks)

    async def _handle(self, scope: dict[str, Any], receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        method, path = scope["method"], scope["path"]
        route = path if path in FLEET_ROUTES else None
        client = scope.get("client") or ("?", 0)
        if route is None or method != "POST":
            self.log(f"refused {method} {path!r} from {client[0]}: only the Fleet API is served here")
            return _json(404, "not found: this address serves only Flower's Fleet API (POST /v1/fleet/...)")
        body = await self._read_body(receive)
        if body is None:
            return _json(413, f"body: larger than {self.max_body:,} bytes")
        headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in _DROP_REQUEST]
        try:
            resp = await self._client().post(self.upstream + route, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.log(f"upstream error on {route}: {type(exc).__name__}: {exc}")
            return _json(502, f"the SuperLink did not answer ({type(exc).__name__})")
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.multi_items()
               if k.lower() not in _DROP_RESPONSE and k.lower() != "content-encoding"]
        content = resp.content  # decoded; content-encoding dropped above to match
        out.append((b"content-length", str(len(content)).encode()))
        return resp.status_code, out, content


def upstream_ssl_context(ca_file: str) -> ssl.SSLContext:
    """Verify the loopback SuperLink's certificate against the federation's CA."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.check_hostname = True
    return ctx


def _host_port(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise SystemExit(f"error: {flag}: {text!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    """Serve the gateway until SIGTERM/SIGINT."""
    import uvicorn

    ap = argparse.ArgumentParser(prog="anya_fl.fleet_gateway", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes connect to")
    ap.add_argument("--upstream", required=True, help="127.0.0.1:PORT of the SuperLink")
    ap.add_argument("--certfile"), ap.add_argument("--keyfile"), ap.add_argument("--ca")
    ap.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY)
    args = ap.parse_args(argv)
    host, port = _host_port(args.listen, "--listen")
    up_host, up_port = _host_port(args.upstream, "--upstream")
    tls = bool(args.certfile)
    if tls and not (args.keyfile and args.ca):
        raise SystemExit("error: --certfile needs --keyfile and --ca")
    scheme = "https" if tls else "http"
    gateway = FleetGateway(f"{scheme}://{up_host}:{up_port}",
                           verify=upstream_ssl_context(args.ca) if tls else False, max_body=args.max_body)
    print(f"anya-fl Fleet gateway on {scheme}://{host}:{port} -> {scheme}://{up_host}:{up_port} "
          f"({len(FLEET_ROUTES)} Fleet routes; everything else refused)", file=sys.stderr, flush=True)
    uvicorn.run(gateway, host=host, port=port, ssl_certfile=args.certfile, ssl_keyfile=args.keyfile,
                log_level="warning", access_log=False, lifespan="on", server_header=False, date_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
