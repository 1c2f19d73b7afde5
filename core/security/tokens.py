"""API tokens with roles, kept as salted hashes in a JSON file, and an ASGI middleware that checks them.

Token format: ``anya_<id>_<secret>``: ``id`` is 12 random hex characters (the store's key, so a request costs
one hash, not one per stored token) and ``secret`` is 32 random bytes in URL-safe base64 (43 characters).
The clear token is returned once by :meth:`TokenStore.create` and never stored.

Secret hashing: PBKDF2-HMAC-SHA256, a 16-byte random salt per token, :data:`PBKDF2_ITERATIONS` iterations,
32-byte output, stored as ``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>`` (the iteration count travels
with each hash, so it can be raised later without invalidating old tokens). The secret carries 256 bits of
entropy, so the KDF is defence in depth for a leaked store, not what makes guessing infeasible; the count is
chosen to keep one verification near 2-3 ms. Unknown token ids cost the same hash as known ones.

Verification cache: a successful :meth:`TokenStore.authenticate` is remembered for ``cache_ttl_s`` (60 s)
in memory, keyed by sha256 of the token string (never the token itself); a hit costs one sha256, one
``stat`` of the store file and a dict look-up (microseconds). Revocation stays immediate: :meth:`revoke`
clears the cache, a store file changed by another process (``anya-fl token revoke``) is re-read and the
cache cleared, and a hit is re-checked against the record's current ``revoked`` flag.
"""

from __future__ import annotations

import asyncio
import builtins
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import AnyaError, ConfigError
from core.security.audit import REQUEST_REFUSED, AuditLog
from core.storage import atomic_write_bytes

__all__ = [
    "ALL_RIGHTS",
    "DEFAULT_ROUTES",
    "INVALID_TOKEN",
    "OPEN",
    "PBKDF2_ITERATIONS",
    "RIGHTS",
    "AuthError",
    "TokenAuth",
    "TokenRecord",
    "TokenStore",
    "authorize",
]

log = logging.getLogger(__name__)

# The one table of roles and their rights.
RIGHTS: dict[str, frozenset[str]] = {
    "coordinator": frozenset({"publish", "promote", "retire", "pull", "predict", "check", "metrics", "list",
                              "token-admin"}),
    "operator": frozenset({"pull", "predict", "check", "metrics", "list"}),
    "viewer": frozenset({"metrics", "list"}),
}
ALL_RIGHTS: frozenset[str] = frozenset().union(*RIGHTS.values())

PBKDF2_ITERATIONS = 5_000
SALT_BYTES = 16
ID_HEX = 12
SECRET_BYTES = 32
INVALID_TOKEN = "invalid or revoked token"
TOKEN_RE = re.compile(rf"anya_([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{43}})")
_DUMMY_SALT = b"\0" * SALT_BYTES
_CACHE_MAX = 4096


class AuthError(AnyaError):
    """A refused request: ``status`` 401 (no valid token) or 403 (the token's role lacks the right)."""

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class TokenRecord:
    """A token's public record (never the secret nor its hash)."""

    id: str
    name: str
    role: str
    created_at: str
    revoked: bool = False
    revoked_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hash_secret(secret: str, salt: bytes, iterations: int = PBKDF2_ITERATIONS) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)


def _encode_hash(secret: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt.hex()}${_hash_secret(secret, salt).hex()}"


def _check_hash(stored: str, secret: str) -> bool:
    """Constant-time comparison of ``secret`` with a stored ``pbkdf2_sha256$...`` hash."""
    try:
        algo, iterations, salt, digest = stored.split("$")
        if algo != "pbkdf2_sha256":
            raise ValueError(algo)
        expected, salt_b, n = bytes.fromhex(digest), bytes.fromhex(salt), int(iterations)
    except ValueError:
        _hash_secret(secret, _DUMMY_SALT)
        return False
    return hmac.compare_digest(_hash_secret(secret, salt_b, n), expected)


def authorize(record: TokenRecord, right: str) -> None:
    """Raise :class:`AuthError` (403) unless ``record``'s role holds ``right``."""
    if right not in ALL_RIGHTS:
        raise ConfigError("right", f"unknown right {right!r}; expected one of {', '.join(sorted(ALL_RIGHTS))}")
    if right not in RIGHTS.get(record.role, frozenset()):
        raise AuthError(f"role {record.role} may not {right}", status=403)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenStore:
    """Tokens in a JSON file (written atomically, mode 0600): records plus salted secret hashes."""

    def __init__(self, path: str | os.PathLike[str], *, cache_ttl_s: float = 60.0) -> None:
        self.path = Path(path)
        self.cache_ttl_s = cache_ttl_s
        self._lock = threading.RLock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, dict[str, Any]] = {}
        self._cache: dict[bytes, tuple[str, float]] = {}  # sha256(token) -> (token id, monotonic expiry)

    # -- file ---------------------------------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            raise ConfigError("token store", f"{self.path}: cannot read ({exc})") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise ConfigError("token store", f"{self.path}: not a token store (no \"tokens\" object)")
        return tokens

    def _refresh(self) -> None:
        """Re-read the file when it changed (size, mtime or inode); a change clears the cache."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._entries = self._read() if stamp else {}
                self._stamp = stamp
                self._cache.clear()

    def _modify(self, change: Callable[[dict[str, dict[str, Any]]], Any]) -> Any:
        """Read-modify-write under a lock file (process-safe); returns what ``change`` returns."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                entries = self._read()
                result = change(entries)
                body = json.dumps({"version": 1, "tokens": entries}, indent=2, sort_keys=True) + "\n"
                atomic_write_bytes(self.path, body.encode(), mode=0o600)
                self._stamp = None
                self._cache.clear()
            finally:
                os.close(fd)
        self._refresh()
        return result

    @staticmethod
    def _record(entry: dict[str, Any]) -> TokenRecord:
        return TokenRecord(id=entry["id"], name=entry["name"], role=entry["role"], created_at=entry["created_at"],
                           revoked=bool(entry.get("revoked", False)), revoked_at=entry.get("revoked_at"))

    # -- API ----------------------------------------------------------------------------------------------

    def create(self, role: str, name: str) -> tuple[str, TokenRecord]:
        """A new token for ``role``: (the clear token, shown once and never stored; its record)."""
        if role not in RIGHTS:
            raise ConfigError("role", f"unknown role {role!r}; expected one of {', '.join(RIGHTS)}")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError("name", "must be a non-empty string")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        hashed = _encode_hash(secret)

        def add(entries: dict[str, dict[str, Any]]) -> TokenRecord:
            token_id = secrets.token_hex(ID_HEX // 2)
            while token_id in entries:
                token_id = secrets.token_hex(ID_HEX // 2)
            entries[token_id] = {"id": token_id, "name": name.strip(), "role": role, "created_at": _now(),
                                 "revoked": False, "hash": hashed}
            return self._record(entries[token_id])

        record = self._modify(add)
        return f"anya_{record.id}_{secret}", record

    def revoke(self, token_id: str) -> TokenRecord:
        """Mark a token revoked (idempotent); it is refused from the next request on."""

        def mark(entries: dict[str, dict[str, Any]]) -> TokenRecord:
            entry = entries.get(token_id)
            if entry is None:
                raise ConfigError("token", f"no token with id {token_id!r} in {self.path}")
            if not entry.get("revoked"):
                entry["revoked"], entry["revoked_at"] = True, _now()
            return self._record(entry)

        return self._modify(mark)

    def get(self, token_id: str) -> TokenRecord | None:
        """The record of ``token_id``, or None."""
        self._refresh()
        entry = self._entries.get(token_id)
        return self._record(entry) if entry else None

    def cached(self, token: str | None) -> TokenRecord | None:
        """The record of a token verified within the cache TTL and not revoked since, else None (no KDF)."""
        if not token or self.cache_ttl_s <= 0:
            return None
        key = hashlib.sha256(token.encode()).digest()
        self._refresh()
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            if hit[1] <= time.monotonic():
                self._cache.pop(key, None)
                return None
            entry = self._entries.get(hit[0])
        if entry is None or entry.get("revoked"):
            return None
        return self._record(entry)

    def authenticate(self, token: str | None) -> TokenRecord:
        """The record of a valid, unrevoked token; else :class:`AuthError` (401, one message for every cause)."""
        record = self.cached(token)
        if record is not None:
            return record
        match = TOKEN_RE.fullmatch(token or "")
        if match is None:
            raise AuthError(INVALID_TOKEN, status=401)
        token_id, secret = match.groups()
        self._refresh()
        entry = self._entries.get(token_id)
        if entry is None:
            _hash_secret(secret, _DUMMY_SALT)  # the same cost as a known id
            raise AuthError(INVALID_TOKEN, status=401)
        if not _check_hash(str(entry.get("hash", "")), secret) or entry.get("revoked"):
            raise AuthError(INVALID_TOKEN, status=401)
        if self.cache_ttl_s > 0:
            key = hashlib.sha256(match.group(0).encode()).digest()
            with self._lock:
                if len(self._cache) >= _CACHE_MAX:
                    now = time.monotonic()
                    self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
                    if len(self._cache) >= _CACHE_MAX:
                        self._cache.clear()
                self._cache[key] = (token_id, time.monotonic() + self.cache_ttl_s)
        return self._record(entry)

    authorize = staticmethod(authorize)

    def list(self) -> builtins.list[TokenRecord]:
        """Every token's record (no hashes), oldest first."""
        self._refresh()
        return sorted((self._record(e) for e in self._entries.values()), key=lambda r: (r.created_at, r.id))


# -- ASGI middleware ----------------------------------------------------------------------------------------

OPEN = "open"
Route = tuple[str, str, str]  # (HTTP method, path regex matched in full, right or OPEN)
DEFAULT_ROUTES: tuple[Route, ...] = (
    ("POST", r"/v1/[^/]+/predict", "predict"),
    ("GET", r"/v1/models", "list"),
    ("GET", r"/metrics", "metrics"),
    ("GET", r"/healthz", OPEN),
    ("GET", r"/readyz", OPEN),
    ("GET", r"/openapi\.json", OPEN),
    ("GET", r"/docs(/oauth2-redirect)?", OPEN),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenAuth:
    """Pure ASGI middleware: requests on a listed route need ``Authorization: Bearer <token>`` with the route's
    right; open routes and unlisted routes pass through (so the app answers 404/405). Refusals answer JSON
    ``{"error": ...}`` with 401 (plus ``WWW-Authenticate: Bearer``) or 403, and are appended to ``audit``.
    The checked record is put in ``scope["state"]["token"]`` (``request.state.token`` in Starlette)."""

    def __init__(self, app: ASGIApp, store: TokenStore, *, routes: Iterable[Route] = DEFAULT_ROUTES,
                 audit: AuditLog | None = None) -> None:
        self.app = app
        self.store = store
        self.audit = audit
        self.routes: list[tuple[str, re.Pattern[str], str]] = []
        for method, pattern, right in routes:
            if right != OPEN and right not in ALL_RIGHTS:
                raise ConfigError("routes", f"{method} {pattern}: unknown right {right!r}")
            self.routes.append((method.upper(), re.compile(pattern), right))

    def right_for(self, method: str, path: str) -> str | None:
        """The right a request needs, OPEN, or None for an unlisted route (HEAD is checked as GET)."""
        method = "GET" if method == "HEAD" else method
        for m, pattern, right in self.routes:
            if m == method and pattern.fullmatch(path):
                return right
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        right = self.right_for(method, path)
        if right is None or right == OPEN:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        record: TokenRecord | None = None
        try:
            if token is None:
                raise AuthError("missing bearer token (send Authorization: Bearer <token>)", status=401)
            record = self.store.cached(token) or await asyncio.to_thread(self.store.authenticate, token)
            authorize(record, right)
        except AuthError as exc:
            await self._refuse(scope, send, exc, record, token)
            return
        state = dict(scope.get("state") or {})
        state["token"] = record
        await self.app({**scope, "state": state}, receive, send)

    async def _refuse(self, scope: Scope, send: Send, exc: AuthError, record: TokenRecord | None,
                      token: str | None) -> None:
        if self.audit is not None:
            claimed = TOKEN_RE.fullmatch(token or "")
            details: dict[str, Any] = {"status": exc.status, "error": str(exc), "method": scope["method"],
                                       "path": scope["path"][:512], "client": (scope.get("client") or ["?"])[0]}
            if record is None and claimed:
                details["claimed_id"] = claimed.group(1)  # the id only, never the secret
            actor = f"token:{record.id}" if record else "anonymous"
            try:
                await asyncio.to_thread(self.audit.append, actor, REQUEST_REFUSED,
                                        f"{scope['method']} {scope['path'][:512]}", details)
            except Exception:  # the refusal stands even when the audit write fails
                log.exception("could not append a refused request to the audit log %s", self.audit.path)
        body = json.dumps({"error": str(exc)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if exc.status == 401:
            headers.append((b"www-authenticate", b"Bearer" if token is None else b'Bearer error="invalid_token"'))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _bearer(scope: Scope) -> str | None:
    """The token from ``Authorization: Bearer <token>``, or None."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None
