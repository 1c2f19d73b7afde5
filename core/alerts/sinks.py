"""Where alerts go: a log line, a JSONL file, a signed webhook with a durable outbox; and the engine's
counters as Prometheus text and as Prometheus alerting rules.

The webhook body is the alert as JSON; ``X-Anya-Signature: sha256=<hex HMAC-SHA256 of the body>`` and
``X-Anya-Alert-Id`` go with it. Each alert is written to the outbox (one file per alert id) before it is
sent and removed only after a 2xx reply, so delivery is at least once across crashes and restarts;
receivers deduplicate by ``X-Anya-Alert-Id`` (a crash between the 2xx and the removal is the only case
in which the same id is sent twice). Redirects are never followed (a 3xx is a failure, retried).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.alerts.engine import Alert, Severity
from core.errors import ConfigError
from core.storage import atomic_write_bytes

if TYPE_CHECKING:
    from core.alerts.engine import AlertEngine

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Anya-Signature"
ALERT_ID_HEADER = "X-Anya-Alert-Id"
OUTBOX_FORMAT = "anya-fl.alert-outbox/1"

_LEVELS = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING, Severity.CRITICAL: logging.CRITICAL}


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


class LogSink:
    """One log line per alert (level by severity; newlines in fields escaped, so one alert is one line)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("anya_fl.alerts")

    def deliver(self, alert: Alert) -> None:
        value = "" if alert.value is None else f" value={alert.value:g}"
        self.logger.log(_LEVELS.get(alert.severity, logging.WARNING), "alert %s %s %s/%s: %s -- %s%s",
                        alert.id[:12], alert.severity.name, _one_line(alert.detector), _one_line(alert.key),
                        _one_line(alert.title), _one_line(alert.message), value)


class JsonlSink:
    """Append one JSON line per alert to ``path`` (flushed and fsynced before ``deliver`` returns)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def deliver(self, alert: Alert) -> None:
        line = (json.dumps(alert.to_dict(), sort_keys=True) + "\n").encode()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())


# ---- webhook ---------------------------------------------------------------------------------------


def sign(body: bytes, secret: bytes) -> str:
    """The ``X-Anya-Signature`` value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: bytes) -> bool:
    """True if ``header`` is the right ``X-Anya-Signature`` for ``body`` under ``secret`` (constant-time)."""
    if not header or not isinstance(header, str):
        return False
    return hmac.compare_digest(sign(body, secret).encode(), header.strip().encode("utf-8", "replace"))


@dataclass(frozen=True)
class OutboxEntry:
    """One alert waiting in the outbox: its exact body, attempts so far and when the next one is due."""

    alert_id: str
    body: bytes
    attempts: int
    next_attempt: float
    queued_at: float
    last_error: str = ""


class _Unreachable(Exception):
    """The receiver could not be reached (refused, timed out, reset): no point trying the rest now."""


class WebhookSink:
    """HTTP(S) POST of each alert, HMAC-signed, through a durable outbox with exponential back-off.

    ``deliver`` writes the alert to ``outbox_dir`` and tries once at once; what fails stays there and is
    retried by :meth:`flush` (every due entry) after 1 s, 2 s, 4 s ... capped at ``max_backoff_s``. A new
    sink on the same ``outbox_dir`` (a restarted watcher) delivers what is left. Thread-safe; one process
    per outbox directory.
    """

    def __init__(self, url: str, secret: bytes, *, outbox_dir: Path | str, timeout_s: float = 5.0,
                 max_backoff_s: float = 300.0, now: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https"):
            raise ConfigError("webhook-url", f"{url!r}: only http:// and https:// urls are accepted")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError("webhook-url", f"{url!r}: {exc}") from None
        if not parts.hostname:
            raise ConfigError("webhook-url", f"{url!r}: no host")
        if any(c in url for c in "\r\n\t "):
            raise ConfigError("webhook-url", f"{url!r}: contains whitespace")
        if not isinstance(secret, bytes | bytearray) or not secret:
            raise ConfigError("webhook-secret", "must be non-empty bytes")
        if timeout_s <= 0:
            raise ConfigError("webhook-timeout", f"{timeout_s!r} must be > 0 seconds")
        if max_backoff_s < 1:
            raise ConfigError("webhook-max-backoff", f"{max_backoff_s!r} must be >= 1 second")
        self.url = url
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._secret = bytes(secret)
        self.outbox_dir = Path(outbox_dir)
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        self.timeout_s = float(timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self._now = now
        self._sleep = sleep
        self._ssl_context = ssl_context
        self._lock = threading.RLock()
        self._delivered: OrderedDict[str, None] = OrderedDict()  # ids sent with a 2xx by this sink
        self.sent = 0       # 2xx replies
        self.failures = 0   # failed attempts
        for tmp in self.outbox_dir.glob(".*.json.*.tmp"):  # left by a write a crash interrupted
            tmp.unlink(missing_ok=True)

    # ---- public API ------------------------------------------------------------------------------

    def deliver(self, alert: Alert) -> None:
        """Queue ``alert`` durably, then try to send it once now (failures stay queued for :meth:`flush`)."""
        with self._lock:
            if alert.id in self._delivered:
                return
            path = self._path(alert.id)
            if path.exists():  # already queued (by us or an earlier run): keep its back-off
                return
            body = json.dumps(alert.to_dict(), sort_keys=True, separators=(",", ":")).encode()
            now = float(self._now())
            entry = OutboxEntry(alert.id, body, 0, now, now)
            self._write(entry)
            self._attempt([entry], now)

    def flush(self) -> int:
        """Try every due outbox entry once; returns how many were delivered (2xx)."""
        with self._lock:
            now = float(self._now())
            due = [e for e in self.pending() if e.next_attempt <= now]
            return self._attempt(due, now)

    def pending(self) -> list[OutboxEntry]:
        """Entries waiting in the outbox, soonest due first."""
        with self._lock:
            out = []
            for p in self.outbox_dir.glob("*.json"):
                entry = self._read(p)
                if entry is not None:
                    out.append(entry)
            return sorted(out, key=lambda e: (e.next_attempt, e.queued_at, e.alert_id))

    def next_due(self) -> float | None:
        """When the soonest outbox entry is due (None when the outbox is empty)."""
        entries = self.pending()
        return entries[0].next_attempt if entries else None

    def drain(self, timeout_s: float) -> bool:
        """Flush, sleeping until the next due entry, until the outbox is empty or ``timeout_s`` has passed
        (by the sink's clock); True if empty."""
        deadline = float(self._now()) + timeout_s
        while True:
            self.flush()
            nxt = self.next_due()
            if nxt is None:
                return True
            now = float(self._now())
            if nxt > deadline or now >= deadline:
                return False
            self._sleep(max(0.0, nxt - now))

    def backoff_s(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failed attempt: 1, 2, 4 ... seconds, capped at ``max_backoff_s``."""
        return min(self.max_backoff_s, 2.0 ** min(max(attempts - 1, 0), 62))

    # ---- internals -------------------------------------------------------------------------------

    def _path(self, alert_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", alert_id):
            raise ValueError(f"alert id {alert_id!r}: not usable as an outbox file name")
        return self.outbox_dir / f"{alert_id}.json"

    def _write(self, e: OutboxEntry) -> None:
        doc = {"format": OUTBOX_FORMAT, "id": e.alert_id, "body": e.body.decode(), "attempts": e.attempts,
               "next_attempt": e.next_attempt, "queued_at": e.queued_at, "last_error": e.last_error}
        atomic_write_bytes(self._path(e.alert_id), (json.dumps(doc, sort_keys=True) + "\n").encode(), mode=0o600)

    def _read(self, p: Path) -> OutboxEntry | None:
        try:
            d = json.loads(p.read_text())
            if d.get("format") != OUTBOX_FORMAT or p.stem != d["id"]:
                raise ValueError("not an outbox entry")
            return OutboxEntry(str(d["id"]), str(d["body"]).encode(), int(d["attempts"]),
                               float(d["next_attempt"]), float(d["queued_at"]), str(d.get("last_error", "")))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            bad = p.with_name(p.name + ".bad")
            log.error("webhook outbox: %s is unreadable (%s); moved to %s", p, exc, bad.name)
            os.replace(p, bad)
            return None

    def _attempt(self, entries: list[OutboxEntry], now: float) -> int:
        delivered = 0
        for i, e in enumerate(entries):
            if e.alert_id in self._delivered:  # sent already (2xx); only the file removal was missing
                self._path(e.alert_id).unlink(missing_ok=True)
                continue
            try:
                status = self._post(e.body, e.alert_id)
            except _Unreachable as exc:
                # the receiver is down: every remaining entry counts as tried now, none is sent
                for rest in entries[i:]:
                    if rest.alert_id not in self._delivered:
                        self._failed(rest, now, str(exc))
                break
            if 200 <= status < 300:
                self._delivered[e.alert_id] = None
                while len(self._delivered) > 10_000:
                    self._delivered.popitem(last=False)
                self._path(e.alert_id).unlink(missing_ok=True)
                self.sent += 1
                delivered += 1
            else:
                hint = " (redirects are not followed)" if 300 <= status < 400 else ""
                self._failed(e, now, f"HTTP {status}{hint}")
        return delivered

    def _failed(self, e: OutboxEntry, now: float, error: str) -> None:
        attempts = e.attempts + 1
        delay = self.backoff_s(attempts)
        self.failures += 1
        log.warning("webhook %s: alert %s not delivered (%s); attempt %d, next in %g s",
                    self.url, e.alert_id[:12], error, attempts, delay)
        self._write(OutboxEntry(e.alert_id, e.body, attempts, now + delay, e.queued_at, error))

    def _post(self, body: bytes, alert_id: str) -> int:
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            ctx = self._ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s, context=ctx)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
        headers = {"Content-Type": "application/json", "User-Agent": "anya-fl-alerts/1",
                   SIGNATURE_HEADER: sign(body, self._secret), ALERT_ID_HEADER: alert_id}
        try:
            conn.request("POST", self._target, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read(65536)
            return resp.status
        except http.client.HTTPException as exc:  # a garbled reply: the receiver is there but misbehaves
            log.warning("webhook %s: bad HTTP reply (%s: %s)", self.url, type(exc).__name__, exc)
            return 0
        except OSError as exc:  # refused, timed out, reset, DNS, TLS
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
        finally:
            conn.close()


# ---- Prometheus ------------------------------------------------------------------------------------


def _label(value: str) -> str:
    """A Prometheus label value, escaped (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class AlertCollector:
    """The engine's counters as a prometheus_client collector, for the project's one metrics registry (the
    node's ``/metrics`` registers it beside the health collector): raised and suppressed alerts per detector,
    whether each condition's alert is out, and each detector's latest value."""

    def __init__(self, engine: AlertEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        counters = self.engine.counters()
        tracked = self.engine.tracked()
        active = {(c.detector, c.key) for c in self.engine.conditions() if c.alerted}
        raised = CounterMetricFamily("anya_fl_alerts_raised", "Alerts raised (new and escalated), per detector.",
                                     labels=["detector"])
        suppressed = CounterMetricFamily("anya_fl_alerts_suppressed", "Re-activations suppressed by the cooldown, "
                                         "per detector.", labels=["detector"])
        for d, c in counters.items():
            raised.add_metric([d], c.raised)
            suppressed.add_metric([d], c.suppressed)
        out = GaugeMetricFamily("anya_fl_alert_active", "1 while an alert for this condition is out and not resolved.",
                                labels=["detector", "key"])
        value = GaugeMetricFamily("anya_fl_detector_value", "Latest value a detector reported for a condition.",
                                  labels=["detector", "key"])
        for d, k in sorted(tracked):
            out.add_metric([d, k], 1.0 if (d, k) in active else 0.0)
            v = tracked[(d, k)]
            if v is not None:
                value.add_metric([d, k], float(v))
        yield from (raised, suppressed, out, value)


def prometheus_text(engine: AlertEngine) -> str:
    """The engine's counters in the Prometheus text exposition format (through prometheus_client)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(AlertCollector(engine))
    return generate_latest(registry).decode()


# ---- Prometheus alerting rules ---------------------------------------------------------------------


def _yaml_str(s: str) -> str:
    """A YAML double-quoted scalar (anything not plainly printable escaped)."""
    out = ['"']
    for ch in s:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _rule_name(detector: str) -> str:
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", detector) if p]
    return "AnyaFl" + "".join(p[:1].upper() + p[1:] for p in parts)


def alertmanager_rules(detectors: Iterable[tuple[str, str | Severity, str]], *, group: str = "anya-fl-alerts") -> str:
    """Prometheus alerting rules (YAML) with one rule per ``(detector, severity, summary)``: fires while
    ``anya_fl_alert_active{detector="X"} == 1`` for 1m, labelled with the severity (info/warning/critical)."""
    lines = ["groups:", f"  - name: {_yaml_str(group)}", "    rules:"]
    seen: set[str] = set()
    for detector, severity, summary in detectors:
        if not isinstance(detector, str) or not detector:
            raise ConfigError("alert-rule-detector", f"{detector!r} must be a non-empty string")
        if detector in seen:
            raise ConfigError("alert-rule-detector", f"{detector!r} appears twice")
        seen.add(detector)
        try:
            sev = Severity.parse(severity)
        except ValueError as exc:
            raise ConfigError("alert-rule-severity", f"{detector}: {exc}") from None
        expr = f'anya_fl_alert_active{{detector="{_label(detector)}"}} == 1'
        lines += [
            f"      - alert: {_rule_name(detector)}",
            f"        expr: {_yaml_str(expr)}",
            "        for: 1m",
            "        labels:",
            f"          severity: {sev.name.lower()}",
            f"          detector: {_yaml_str(detector)}",
            "        annotations:",
            f"          summary: {_yaml_str(str(summary))}",
        ]
    if not seen:
        lines[-1] = "    rules: []"
    return "\n".join(lines) + "\n"
