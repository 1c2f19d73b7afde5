"""An append-only, hash-chained audit log: one JSON object per line (JSONL).

Each record::

    {"seq": 0, "at": "2025-01-01T00:00:00.000000Z", "actor": "...", "action": "publish", "target": "...",
     "details": {...}, "prev": "<hash of record seq-1, or 64 zeros>", "hash": "<sha256 hex>"}

``hash`` is sha256 of :func:`core.security.signing.canonical_json` of the record without ``hash``; ``prev`` is the
previous record's ``hash`` (itself a hex sha256), so every record commits to the whole history before it.
Lines are written as canonical JSON. :meth:`AuditLog.verify` finds any edited byte, removed, reordered or
inserted record and a torn last line, and names the first bad record.

What a chain alone cannot show: records cut off the *end* of the log (the shorter chain is still valid) or
records appended by someone who can write the file. Compare :attr:`VerifyResult.head` with a copy kept
elsewhere (a ticket, another host) to catch those.

Appends are safe across threads and processes: each append opens the file with ``O_RDWR | O_APPEND``, takes an
exclusive ``flock``, reads the tail (cached in memory, re-checked against the file's size and inode under
the lock), writes one line and fsyncs before unlocking.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import AnyaError, ConfigError
from core.security.signing import CanonicalJsonError, canonical_json

__all__ = [
    "ACTIONS",
    "GENESIS",
    "NODE_EXCLUDED",
    "PROMOTE",
    "PUBLISH",
    "REQUEST_REFUSED",
    "RETIRE",
    "TOKEN_CREATE",
    "TOKEN_REVOKE",
    "AuditError",
    "AuditLog",
    "VerifyResult",
    "record_hash",
]

PUBLISH = "publish"
PROMOTE = "promote"
RETIRE = "retire"
TOKEN_CREATE = "token-create"
TOKEN_REVOKE = "token-revoke"
REQUEST_REFUSED = "request-refused"
NODE_EXCLUDED = "node-excluded"
ACTIONS = frozenset({PUBLISH, PROMOTE, RETIRE, TOKEN_CREATE, TOKEN_REVOKE, REQUEST_REFUSED, NODE_EXCLUDED})

GENESIS = "0" * 64
FIELDS = ("seq", "at", "actor", "action", "target", "details", "prev", "hash")
_TAIL_CHUNK = 4096


class AuditError(AnyaError):
    """The audit log cannot be appended to (its last line is damaged); names the path."""


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`: ``first_bad`` is the 0-based line number (= expected seq)."""

    ok: bool
    records: int
    first_bad: int | None = None
    problem: str = ""
    head: str = GENESIS  # hash of the last good record: anchor it elsewhere to detect truncation


def record_hash(record: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``record`` without its ``hash`` field."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read_last_line(fd: int, size: int) -> bytes:
    """The last line of a file that ends with a newline, without that newline (read backwards in chunks)."""
    buf = b""
    pos = size - 1  # the final newline
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        cut = buf.rfind(b"\n")
        if cut >= 0:
            return buf[cut + 1:]
    return buf


class AuditLog:
    """The audit log at ``path`` (created, mode 0600, on the first append)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._tail: tuple[int, int, int, str] | None = None  # (inode, size, last seq, last hash)

    def append(self, actor: str, action: str, target: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Append one record and fsync it; returns the record (with ``seq``, ``prev`` and ``hash``)."""
        for name, value in (("actor", actor), ("action", action), ("target", target)):
            if not isinstance(value, str) or not value:
                raise ConfigError(name, "must be a non-empty string")
        details = dict(details or {})
        try:
            canonical_json(details)
        except (TypeError, CanonicalJsonError) as exc:
            raise ConfigError("details", f"not JSON-serializable: {exc}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                st = os.fstat(fd)
                seq, prev = self._chain_tail(fd, st.st_ino, st.st_size)
                record: dict[str, Any] = {"seq": seq, "at": _now(), "actor": actor, "action": action,
                                          "target": target, "details": details, "prev": prev}
                record["hash"] = record_hash(record)
                line = canonical_json(record) + b"\n"
                written = os.write(fd, line)
                if written != len(line):
                    raise AuditError(f"{self.path}: short write ({written} of {len(line)} bytes)")
                os.fsync(fd)
                self._tail = (st.st_ino, st.st_size + len(line), seq, record["hash"])
            finally:
                os.close(fd)  # releases the flock
        if created:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return record

    def _chain_tail(self, fd: int, inode: int, size: int) -> tuple[int, str]:
        """(next seq, prev hash) from the cache when the file is unchanged, else from its last line."""
        if size == 0:
            return 0, GENESIS
        if self._tail is not None and self._tail[:2] == (inode, size):
            return self._tail[2] + 1, self._tail[3]
        if os.pread(fd, 1, size - 1) != b"\n":
            raise AuditError(f"{self.path}: the last line is incomplete (torn write?); run `anya-fl audit verify`")
        line = _read_last_line(fd, size)
        try:
            last = json.loads(line)
            seq, digest = int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError, TypeError):
            raise AuditError(f"{self.path}: the last line is not an audit record; run `anya-fl audit verify`") from None
        return seq + 1, digest

    def _lines(self) -> Iterator[bytes]:
        try:
            fh = self.path.open("rb")
        except FileNotFoundError:
            return
        with fh:
            yield from fh

    def verify(self) -> VerifyResult:
        """Check every record's fields, seq, prev and hash; stops at the first bad one."""
        prev = GENESIS
        count = 0
        for raw in self._lines():
            problem, digest = self._check(raw, count, prev)
            if problem:
                return VerifyResult(False, count, count, f"line {count + 1} (seq {count}): {problem}", prev)
            prev = digest
            count += 1
        return VerifyResult(True, count, None, "", prev)

    @staticmethod
    def _check(raw: bytes, n: int, prev: str) -> tuple[str, str]:
        """(why line ``n`` is bad or "", its hash) for a record that should follow ``prev``."""
        torn = not raw.endswith(b"\n")
        try:
            rec = json.loads(raw)
        except ValueError:
            return ("not JSON (truncated last line)" if torn else "not JSON"), ""
        if not isinstance(rec, dict):
            return "not JSON (not an object)", ""
        missing = [f for f in FIELDS if f not in rec]
        if missing:
            return f"missing field {', '.join(missing)}", ""
        if type(rec["seq"]) is not int or rec["seq"] != n:
            return f"seq out of order (expected {n}, found {rec['seq']!r})", ""
        if rec["prev"] != prev:
            return (f"prev does not match record {n - 1}" if n else "prev of the first record is not 64 zeros"), ""
        try:
            digest = record_hash(rec)
        except CanonicalJsonError:
            return "hash mismatch (record holds NaN or infinity)", ""
        if rec["hash"] != digest:
            return "hash mismatch", ""
        if torn:
            return "truncated last line (no newline at end)", ""
        return "", digest

    def tail(self, n: int = 20) -> list[tuple[int, dict[str, Any] | None]]:
        """The last ``n`` lines as (line number from 0, record or None when the line is not a JSON object)."""
        out: deque[tuple[int, dict[str, Any] | None]] = deque(maxlen=max(0, n))
        for i, raw in enumerate(self._lines()):
            try:
                rec = json.loads(raw)
            except ValueError:
                rec = None
            out.append((i, rec if isinstance(rec, dict) else None))
        return list(out)
