"""A loopback HTTP JSON-RPC 1.0 server answering as Bitcoin Core's httprpc does.

* Binds 127.0.0.1 only. HTTP Basic auth with rpcuser/rpcpassword or Core's ``__cookie__:<hex>`` cookie
  (written 0600 at start, removed at stop). A request without valid credentials gets 401 with an empty body
  and ``WWW-Authenticate`` (after a short pause, as Core deters brute force), and nothing else: not even a
  413 for an oversized body.
* Replies ``{"result", "error", "id"}``: HTTP 200; errors with Core's status (-32600 invalid request 400,
  -32601 method not found 404, others 500, parse error -32700 500). GET and other verbs get 405.
* Limits: request bodies above ``max_body_bytes`` get 413, batches above ``max_batch`` requests an
  invalid-request error, at most ``max_workers`` requests run at once (more: 503, as Core's work queue), and
  a connection that sends nothing for ``read_timeout_s`` is closed.

Subclasses may override the hooks ``observe``, ``intercept`` and ``reply_id`` (the test stub's scenario
knobs use them); the RPC methods themselves come from a ``backend(method, params)`` callable that raises
``RPCFault`` for Core's error replies.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from core.storage import atomic_write_bytes

COOKIE_USER = "__cookie__"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND = -32700, -32600, -32601
_STATUS = {INVALID_REQUEST: 400, METHOD_NOT_FOUND: 404}


class RPCFault(Exception):
    """An RPC error the server turns into Core's error reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RawReply(Exception):
    """A hook's answer that is not a JSON-RPC reply: sent as is."""

    def __init__(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


class RPCAuth:
    """rpcuser/rpcpassword and/or a cookie file, checked in constant time."""

    def __init__(self, user: str | None = None, password: str | None = None, cookie_path: Path | None = None) -> None:
        self.user = user
        self.password = password
        self.cookie_path = Path(cookie_path) if cookie_path is not None else None
        self.cookie: str | None = None

    def rotate_cookie(self) -> str:
        """Write a fresh ``__cookie__:<hex>`` (what a restarted bitcoind does); the old one stops working."""
        if self.cookie_path is None:
            raise ValueError("no cookie path")
        self.cookie = secrets.token_hex(32)
        atomic_write_bytes(self.cookie_path, f"{COOKIE_USER}:{self.cookie}".encode(), mode=0o600)
        return self.cookie

    def remove_cookie(self) -> None:
        if self.cookie_path is not None:
            self.cookie_path.unlink(missing_ok=True)
        self.cookie = None

    def credentials(self) -> tuple[str, str]:
        """(user, password) a client may use: rpcuser/rpcpassword, else the cookie's."""
        if self.user is not None and self.password is not None:
            return self.user, self.password
        if self.cookie is None:
            raise ValueError("no credentials yet: the cookie is written at start")
        return COOKIE_USER, self.cookie

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, sep, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except ValueError:
            return False
        if not sep:
            return False
        given = f"{user}:{password}".encode()
        ok = False
        if self.user is not None and self.password is not None:
            ok |= hmac.compare_digest(given, f"{self.user}:{self.password}".encode())
        if self.cookie is not None:
            ok |= hmac.compare_digest(given, f"{COOKIE_USER}:{self.cookie}".encode())
        return ok


Backend = Callable[[str, Any], Any]


class RPCServer:
    """The HTTP JSON-RPC server; ``start(port)`` listens (again) on 127.0.0.1, ``stop()`` closes the socket."""

    server_version = "anya-fl-simnode/1.0"

    def __init__(self, backend: Backend, auth: RPCAuth, *, max_body_bytes: int = 1 << 20, max_batch: int = 1000,
                 max_workers: int = 64, read_timeout_s: float = 10.0, auth_failure_delay_s: float = 0.25) -> None:
        self.backend = backend
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        self.read_timeout_s = read_timeout_s
        self.auth_failure_delay_s = auth_failure_delay_s
        self._slots = threading.BoundedSemaphore(max_workers)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # ---- hooks

    def observe(self, method: str) -> None:
        """Called for every request (authorized or not) with its method name ('<unparsed>' when unknown)."""

    def intercept(self, method: str, req_id: Any) -> None:
        """Called before an authorized call runs; may raise RPCFault or RawReply."""

    def reply_id(self, req_id: Any) -> Any:
        return req_id

    # ---- lifecycle

    def start(self, port: int = 0) -> RPCServer:
        """Listen on 127.0.0.1:``port`` (0: a free port)."""
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self._port = int(httpd.server_address[1])
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"simnode-rpc-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: later connections are refused. The port is remembered for ``port``."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("start() the server first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- request handling

    def handle_one(self, request: Any) -> tuple[int, dict[str, Any]]:
        """(HTTP status, reply object) for one parsed JSON-RPC request object; a hook may raise RawReply."""
        if not isinstance(request, dict):
            return 400, _reply(None, None, INVALID_REQUEST, "Invalid Request object")
        req_id = request.get("id")
        method = request.get("method")
        if "method" not in request:
            return 400, _reply(None, req_id, INVALID_REQUEST, "Missing method")
        if not isinstance(method, str):
            return 400, _reply(None, req_id, INVALID_REQUEST, "Method must be a string")
        params = request.get("params")
        if params is None:
            params = []
        if not isinstance(params, list | dict):
            return 400, _reply(None, req_id, INVALID_REQUEST, "Params must be an array or object")
        try:
            self.intercept(method, req_id)
        except RPCFault as fault:
            return _STATUS.get(fault.code, 500), _reply(None, req_id, fault.code, fault.message)
        reply_id = self.reply_id(req_id)
        try:
            result = self.backend(method, params)
        except RPCFault as fault:
            return _STATUS.get(fault.code, 500), _reply(None, reply_id, fault.code, fault.message)
        except Exception as exc:  # a bug in a method: Core's RPC_MISC_ERROR rather than a dropped connection
            return 500, _reply(None, reply_id, -1, f"internal error in {method}: {type(exc).__name__}")
        return 200, {"result": result, "error": None, "id": reply_id}


def _reply(result: Any, req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"result": result, "error": {"code": code, "message": message}, "id": req_id}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _make_handler(server: RPCServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = server.server_version
        protocol_version = "HTTP/1.0"
        timeout = server.read_timeout_s

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            try:
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="jsonrpc"')
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the client gave up and closed the connection
                pass

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj).encode() + b"\n")

        def _not_post(self) -> None:
            self._send(405, b"JSONRPC server handles only POST requests", "text/html")

        do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _not_post

        def do_POST(self) -> None:
            if not server._slots.acquire(blocking=False):
                self._send(503, b"Work queue depth exceeded", "text/html")
                return
            try:
                self._post()
            finally:
                server._slots.release()

        def _post(self) -> None:
            authorized = server.auth.check(self.headers.get("Authorization"))
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            too_big = length > server.max_body_bytes
            raw = b""
            if 0 <= length and not too_big:
                try:
                    raw = self.rfile.read(length)
                except OSError:
                    return
            request: Any = None
            parsed = False
            if 0 <= length and not too_big:
                try:
                    request = json.loads(raw, parse_constant=_no_constant)
                    parsed = True
                except (ValueError, RecursionError):
                    pass
            method = request.get("method") if isinstance(request, dict) else None
            server.observe(method if isinstance(method, str) else "<unparsed>")
            if not authorized:
                if server.auth_failure_delay_s > 0:
                    time.sleep(server.auth_failure_delay_s)
                self._send(401, b"", "text/html")
                return
            if length < 0:
                self._send(400, b"Bad Content-Length", "text/html")
                return
            if too_big:
                self._send(413, b"Request body too large", "text/html")
                return
            if not parsed:
                self._json(500, _reply(None, None, PARSE_ERROR, "Parse error"))
                return
            try:
                if isinstance(request, list):
                    if len(request) > server.max_batch:
                        self._json(400, _reply(None, None, INVALID_REQUEST, f"Batch of {len(request)} requests "
                                                                            f"is above the limit of {server.max_batch}"))
                        return
                    self._json(200, [server.handle_one(r)[1] for r in request])
                    return
                status, reply = server.handle_one(request)
            except RawReply as raw_reply:
                self._send(raw_reply.status, raw_reply.body, raw_reply.content_type)
                return
            self._json(status, reply)

    return Handler
