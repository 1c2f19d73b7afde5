"""A Bitcoin Core JSON-RPC client on the standard library (http.client), with typed, checked helpers.

Requests are JSON-RPC 1.0 (``{"jsonrpc": "1.0", "id": n, "method": ..., "params": [...]}``) with HTTP Basic
auth from rpcuser/rpcpassword or Core's ``.cookie`` file (re-read at every connection, so a restarted
bitcoind's new cookie is picked up). Core answers HTTP 200 with ``{"result": ..., "error": null, "id": n}``,
HTTP 500/404 with an error object, and HTTP 401 with an empty body for bad credentials.

Every failure raises a subclass of ``RPCError`` (an ``AnyaError``) whose one-line message names the url and
the method. Connection failures, timeouts and error -28 (RPC_IN_WARMUP) are retried ``retries`` times with
exponential back-off; auth errors, malformed replies and other RPC errors are not.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.errors import AnyaError, ConfigError

__all__ = [
    "RPC_IN_WARMUP",
    "BitcoinRPC",
    "RPCAuthError",
    "RPCConfig",
    "RPCConnectionError",
    "RPCError",
    "RPCMalformedReplyError",
    "RPCReplyError",
    "RPCTimeoutError",
]

RPC_IN_WARMUP = -28  # "Loading block index...", "Verifying blocks...": the node is starting up
_COOKIE_USER = "__cookie__"
_SNIPPET = 60  # characters of a non-JSON body quoted in an error message


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class RPCError(AnyaError):
    """A Bitcoin Core RPC call failed; the one-line message names the url and the method."""

    def __init__(self, message: str, *, url: str, method: str) -> None:
        self.url = url
        self.method = method
        self.attempts = 1
        super().__init__(message)

    def _note_attempts(self, attempts: int) -> None:
        """Record how many attempts were made (the message says so when there were several)."""
        self.attempts = attempts
        if attempts > 1:
            self.args = (f"{self.args[0]} ({attempts} attempts)",)


class RPCConnectionError(RPCError):
    """Bitcoin Core could not be reached (connection refused, host unreachable, connection dropped)."""

    def __init__(self, reason: str, *, url: str, method: str) -> None:
        self.reason = reason
        super().__init__(f"cannot connect to Bitcoin Core at {url} ({reason}) calling {method}", url=url, method=method)


class RPCAuthError(RPCError):
    """Bitcoin Core refused the credentials (HTTP 401/403), or the cookie file could not be read."""


class RPCTimeoutError(RPCError):
    """No reply within ``timeout_s``."""

    def __init__(self, timeout_s: float, *, url: str, method: str) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"Bitcoin Core at {url} did not reply to {method} within {timeout_s:g} s", url=url, method=method
        )


class RPCReplyError(RPCError):
    """Bitcoin Core answered with an RPC error object; ``code`` and ``rpc_message`` are Core's."""

    def __init__(self, code: int, rpc_message: str, *, url: str, method: str) -> None:
        self.code = code
        self.rpc_message = rpc_message
        text = " ".join(rpc_message.split())  # one line
        super().__init__(f"Bitcoin Core at {url} returned error {code} for {method}: {text}", url=url, method=method)


class RPCMalformedReplyError(RPCError):
    """A reply that is not JSON, not a JSON-RPC reply, or lacks a documented field (``field`` names it)."""

    def __init__(self, problem: str, *, url: str, method: str, field: str | None = None) -> None:
        self.field = field
        self.problem = problem
        where = f"field '{field}' " if field else ""
        super().__init__(
            f"malformed reply from Bitcoin Core at {url} to {method}: {where}{problem}", url=url, method=method
        )


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RPCConfig:
    """Where Bitcoin Core listens and how to authenticate: rpcuser/rpcpassword or the cookie file."""

    url: str = "http://127.0.0.1:8332"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    cookie_file: Path | None = None
    timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.cookie_file, str):
            object.__setattr__(self, "cookie_file", Path(self.cookie_file))

    def validate(self) -> RPCConfig:
        """Return self, or raise ConfigError naming the setting and the problem."""
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("rpc.url", f"{self.url!r} is not an http:// or https:// url with a host")
        try:
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError as exc:
            raise ConfigError("rpc.url", f"{self.url!r} has an invalid port") from exc
        if parts.username is not None:
            raise ConfigError("rpc.url", "must not carry credentials; set rpc.user/rpc.password or rpc.cookie_file")
        if not isinstance(self.timeout_s, int | float) or not self.timeout_s > 0:
            raise ConfigError("rpc.timeout_s", f"{self.timeout_s!r} must be a positive number of seconds")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError("rpc.retries", f"{self.retries!r} must be an integer >= 0")
        if not isinstance(self.backoff_s, int | float) or not self.backoff_s >= 0:
            raise ConfigError("rpc.backoff_s", f"{self.backoff_s!r} must be >= 0 seconds")
        has_user = self.user is not None or self.password is not None
        if self.cookie_file is not None and has_user:
            raise ConfigError("rpc.cookie_file", "set either rpc.cookie_file or rpc.user/rpc.password, not both")
        if self.cookie_file is None and not has_user:
            raise ConfigError("rpc.user", "no credentials: set rpc.user and rpc.password, or rpc.cookie_file")
        if has_user:
            if not self.user:
                raise ConfigError("rpc.user", "missing: rpc.password is set but rpc.user is empty")
            if ":" in self.user:
                raise ConfigError("rpc.user", "must not contain ':' (HTTP Basic auth separates user and password by it)")
            if self.password is None:
                raise ConfigError("rpc.password", "missing: rpc.user is set but rpc.password is not")
        return self


RPC_PASSWORD_ENV = "ANYA_FL_RPC_PASSWORD"


def operator_rpc_config(url: str, cookie: Path | str | None, user: str | None, *, timeout_s: float = 10.0,
                        password: str | None = None) -> RPCConfig:
    """The one path from an operator's settings to an :class:`RPCConfig`: Core's cookie file, or ``user`` with
    the password from ``ANYA_FL_RPC_PASSWORD`` (unless given). A password is never a command-line argument or
    a SuperNode's ``--node-config``: every local user can read a process's command line."""
    import os

    if user and cookie:
        raise ConfigError("rpc-cookie", "set either --rpc-cookie or --rpc-user, not both")
    if user:
        password = password if password is not None else os.environ.get(RPC_PASSWORD_ENV)
        if password is None:
            raise ConfigError("rpc-user", f"the password comes from {RPC_PASSWORD_ENV}, which is not set")
        return RPCConfig(url=url, user=user, password=password, timeout_s=timeout_s).validate()
    if not cookie:
        raise ConfigError("rpc-cookie", f"no credentials: set --rpc-cookie, or --rpc-user and {RPC_PASSWORD_ENV}")
    return RPCConfig(url=url, cookie_file=Path(cookie), timeout_s=timeout_s).validate()


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------

_KIND_TEXT = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", list: "an array",
              dict: "an object"}


def _is_kind(value: Any, kind: type) -> bool:
    """JSON type check: ints and floats are numbers, bools are neither."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


class _NonFinite(ValueError):
    """NaN or Infinity in a reply."""


def _no_constant(name: str) -> Any:
    """Core never writes NaN or Infinity: Python's json would accept them and let them through as floats."""
    raise _NonFinite(f"{name} is not JSON")


class BitcoinRPC:
    """A Bitcoin Core JSON-RPC client: ``call(method, *params)`` plus typed helpers that check their fields."""

    def __init__(self, config: RPCConfig) -> None:
        self.config = config.validate()
        parts = urlsplit(config.url)
        self.url = config.url
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path or "/"
        if parts.query:
            self._path += "?" + parts.query
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BitcoinRPC({self.url!r})"

    # ---- transport

    def _auth_header(self, method: str) -> str:
        cfg = self.config
        if cfg.cookie_file is not None:
            try:
                text = cfg.cookie_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or str(exc)
                raise RPCAuthError(
                    f"cannot read the Bitcoin Core cookie file {cfg.cookie_file} ({why}) for {method} at {self.url}: "
                    "is bitcoind running with this datadir, and may this user read the file?",
                    url=self.url, method=method,
                ) from exc
            if not text.startswith(_COOKIE_USER + ":") or len(text) <= len(_COOKIE_USER) + 1:
                raise RPCAuthError(
                    f"the Bitcoin Core cookie file {cfg.cookie_file} is malformed "
                    f"(expected '{_COOKIE_USER}:<hex>') for {method} at {self.url}",
                    url=self.url, method=method,
                )
            credentials = text
        else:
            credentials = f"{cfg.user}:{cfg.password}"
        return "Basic " + base64.b64encode(credentials.encode("utf-8")).decode("ascii")

    def _post(self, method: str, body: bytes) -> tuple[int, bytes]:
        """One HTTP POST; transport failures become RPCConnectionError / RPCTimeoutError."""
        headers = {
            "Content-Type": "application/json",
            "Authorization": self._auth_header(method),
            "User-Agent": "anya-fl",
        }
        timeout = self.config.timeout_s
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except TimeoutError as exc:
            raise RPCTimeoutError(timeout, url=self.url, method=method) from exc
        except ConnectionRefusedError as exc:
            raise RPCConnectionError("connection refused", url=self.url, method=method) from exc
        except socket.gaierror as exc:
            raise RPCConnectionError(f"host not found: {exc.strerror or exc}", url=self.url, method=method) from exc
        except http.client.RemoteDisconnected as exc:
            raise RPCConnectionError("connection closed without a reply", url=self.url, method=method) from exc
        except http.client.HTTPException as exc:
            raise RPCMalformedReplyError(
                f"not a valid HTTP reply ({type(exc).__name__})", url=self.url, method=method
            ) from exc
        except ssl.SSLError as exc:
            raise RPCConnectionError(f"TLS error: {exc.reason or exc}", url=self.url, method=method) from exc
        except OSError as exc:
            reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
            raise RPCConnectionError(reason, url=self.url, method=method) from exc
        finally:
            conn.close()

    def _call_once(self, method: str, params: list[Any]) -> Any:
        with self._id_lock:
            req_id = next(self._ids)
        body = json.dumps({"jsonrpc": "1.0", "id": req_id, "method": method, "params": params}).encode("utf-8")
        status, data = self._post(method, body)
        if status in (401, 403):
            hint = (
                f"check the cookie file {self.config.cookie_file}" if self.config.cookie_file is not None
                else "check rpcuser/rpcpassword"
            )
            if status == 403:
                hint += " and rpcallowip/rpcwhitelist"
            raise RPCAuthError(
                f"Bitcoin Core at {self.url} refused the credentials (HTTP {status}) for {method}: {hint}",
                url=self.url, method=method,
            )

        def bad(problem: str, field: str | None = None) -> RPCMalformedReplyError:
            return RPCMalformedReplyError(problem, url=self.url, method=method, field=field)

        try:
            reply = json.loads(data, parse_constant=_no_constant)
        except _NonFinite as exc:
            raise bad(f"{exc} (HTTP {status}): Core writes only finite numbers") from None
        except RecursionError:
            raise bad(f"nested too deeply to be a Core reply (HTTP {status})") from None
        except (ValueError, UnicodeDecodeError):
            if not data.strip():
                raise bad(f"not JSON (HTTP {status}, empty body)") from None
            snippet = data[:_SNIPPET].decode("utf-8", "replace")
            raise bad(f"not JSON (HTTP {status}, body starts {snippet!r})") from None
        if not isinstance(reply, dict):
            raise bad(f"not a JSON-RPC reply object (HTTP {status}, got {type(reply).__name__})")
        if "result" not in reply and "error" not in reply:
            raise bad(f"neither 'result' nor 'error' present (HTTP {status})")
        if reply.get("id") != req_id:
            raise bad(f"{reply.get('id')!r} does not match the request id {req_id}", "id")
        error = reply.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise bad(f"expected an object or null, got {_describe(error)}", "error")
            code, message = error.get("code"), error.get("message")
            if not _is_kind(code, int):
                raise bad(f"expected an integer, got {_describe(code)}", "error.code")
            if not isinstance(message, str):
                raise bad(f"expected a string, got {_describe(message)}", "error.message")
            raise RPCReplyError(code, message, url=self.url, method=method)
        if "result" not in reply:
            raise bad("missing", "result")
        if status != 200:
            raise bad(f"HTTP {status} without an error object")
        return reply["result"]

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` with positional ``params`` and return its result; raise an RPCError subclass."""
        attempts = 1 + self.config.retries
        for attempt in range(attempts):
            try:
                return self._call_once(method, list(params))
            except (RPCConnectionError, RPCTimeoutError) as exc:
                last: RPCError = exc
            except RPCReplyError as exc:
                if exc.code != RPC_IN_WARMUP:
                    raise
                last = exc
            if attempt + 1 < attempts:
                time.sleep(self.config.backoff_s * 2**attempt)
        last._note_attempts(attempts)
        raise last

    # ---- field checks for the typed helpers

    def _check(self, method: str, result: Any, required: dict[str, type],
               optional: dict[str, type] | None = None) -> dict[str, Any]:
        """``result`` as a dict whose documented fields exist with the right JSON type."""
        if not isinstance(result, dict):
            raise RPCMalformedReplyError(f"expected an object, got {_describe(result)}", url=self.url,
                                         method=method, field="result")
        for fields, must in ((required, True), (optional or {}, False)):
            for name, kind in fields.items():
                if name not in result:
                    if must:
                        raise RPCMalformedReplyError("missing", url=self.url, method=method, field=name)
                    continue
                if not _is_kind(result[name], kind):
                    raise RPCMalformedReplyError(
                        f"expected {_KIND_TEXT[kind]}, got {_describe(result[name])}",
                        url=self.url, method=method, field=name,
                    )
        return result

    def _scalar(self, method: str, result: Any, kind: type) -> Any:
        if not _is_kind(result, kind):
            raise RPCMalformedReplyError(f"expected {_KIND_TEXT[kind]}, got {_describe(result)}", url=self.url,
                                         method=method, field="result")
        return result

    # ---- typed helpers

    def getblockchaininfo(self) -> dict[str, Any]:
        """Chain state: blocks, headers, verificationprogress, initialblockdownload, ..."""
        return self._check("getblockchaininfo", self.call("getblockchaininfo"), {
            "chain": str, "blocks": int, "headers": int, "bestblockhash": str,
            "verificationprogress": float, "initialblockdownload": bool,
        }, {"difficulty": float, "time": int, "mediantime": int, "pruned": bool})

    def getnetworkinfo(self) -> dict[str, Any]:
        """P2P state: version, connections (connections_in/out since Core 0.21), networkactive, ..."""
        return self._check("getnetworkinfo", self.call("getnetworkinfo"), {
            "version": int, "connections": int, "networkactive": bool,
        }, {"subversion": str, "protocolversion": int, "connections_in": int, "connections_out": int,
            "relayfee": float})

    def getmempoolinfo(self) -> dict[str, Any]:
        """Mempool state: loaded, size, bytes, usage, maxmempool, mempoolminfee and minrelaytxfee (BTC/kvB)."""
        return self._check("getmempoolinfo", self.call("getmempoolinfo"), {
            "loaded": bool, "size": int, "bytes": int, "usage": int, "maxmempool": int,
            "mempoolminfee": float, "minrelaytxfee": float,
        }, {"total_fee": float, "incrementalrelayfee": float, "unbroadcastcount": int})

    def gettxoutsetinfo(self) -> dict[str, Any]:
        """UTXO set statistics (slow: scans the UTXO set unless coinstatsindex is on)."""
        return self._check("gettxoutsetinfo", self.call("gettxoutsetinfo"), {
            "height": int, "bestblock": str, "txouts": int, "total_amount": float,
        }, {"transactions": int, "bogosize": int, "disk_size": int})

    def estimatesmartfee(self, conf_target: int, mode: str = "conservative") -> dict[str, Any]:
        """``{"feerate": BTC/kvB, "blocks": n}``, or ``{"errors": [...], "blocks": n}`` without an estimate."""
        method = "estimatesmartfee"
        reply = self._check(method, self.call(method, conf_target, mode), {"blocks": int},
                            {"feerate": float, "errors": list})
        if "feerate" not in reply and "errors" not in reply:
            raise RPCMalformedReplyError("missing (and no 'errors' either)", url=self.url, method=method,
                                         field="feerate")
        for i, text in enumerate(reply.get("errors", [])):
            if not isinstance(text, str):
                raise RPCMalformedReplyError(f"expected a string, got {_describe(text)}", url=self.url,
                                             method=method, field=f"errors[{i}]")
        return reply

    def getblockcount(self) -> int:
        """Height of the most-work fully-validated chain tip."""
        return self._scalar("getblockcount", self.call("getblockcount"), int)

    def getblockhash(self, height: int) -> str:
        """Hash of the block at ``height`` in the active chain."""
        return self._scalar("getblockhash", self.call("getblockhash", height), str)

    def getblock(self, blockhash: str, verbosity: int = 2) -> Any:
        """The block: a hex string for verbosity 0, an object with ``height`` and ``tx`` otherwise."""
        result = self.call("getblock", blockhash, verbosity)
        if verbosity == 0:
            return self._scalar("getblock", result, str)
        return self._check("getblock", result, {"hash": str, "height": int, "tx": list})

    def getrawmempool(self, verbose: bool = True) -> Any:
        """Mempool txids (``verbose=False``) or an object of txid -> entry."""
        result = self.call("getrawmempool", verbose)
        return self._scalar("getrawmempool", result, dict if verbose else list)

    def getrawtransaction(self, txid: str, verbose: bool | int = True) -> Any:
        """A transaction: hex when ``verbose`` is false, a decoded object otherwise (2 adds fee and prevouts)."""
        result = self.call("getrawtransaction", txid, verbose)
        if not verbose:
            return self._scalar("getrawtransaction", result, str)
        return self._check("getrawtransaction", result, {"txid": str, "vin": list, "vout": list})
