"""The one alert engine: detectors report :class:`Finding` s, the engine decides which become :class:`Alert` s.

Rules, per condition (one ``detector`` + ``key``):

* **dedup** -- an active condition raises one alert when it becomes active and is not re-sent while it
  stays active;
* **escalation** -- a severity higher than the highest one already sent raises a new alert;
* **hysteresis** -- the condition clears only after ``clear_after`` consecutive inactive evaluations; then
  a "resolved: ..." alert (severity INFO) goes out. An evaluation that does not mention a condition
  changes nothing;
* **cooldown** -- after it resolves, the same condition does not raise again for ``cooldown_s``: a
  re-activation inside the cooldown is *suppressed* (counted once per episode, sent nothing). If it is
  still active when the cooldown ends it is raised then; a severity higher than the one that resolved
  breaks through at once (a critical condition is never held back by a resolved warning).

State (active conditions, cooldowns, counters) is written atomically to ``state_path`` on every change
and restored on start, so a restarted watcher does not re-raise what it already sent. Sent alerts are
kept in a JSONL history beside it (``recent``). The order is: state, then history, then sinks, so a
crash between them loses a notification rather than duplicating it (the webhook sink is durable from
the moment it is handed an alert).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigError
from core.storage import atomic_write_bytes, atomic_write_json, remove_stale_temp_files

log = logging.getLogger(__name__)

STATE_FORMAT = "anya-fl.alerts/1"
HISTORY_LIMIT = 10_000
TRACKED_LIMIT = 10_000  # latest finding values kept for Prometheus (inactive ones evicted oldest first)
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class Severity(enum.IntEnum):
    """How urgent an alert is; resolved notifications are INFO."""

    INFO = 10
    WARNING = 20
    CRITICAL = 30

    @classmethod
    def parse(cls, value: Severity | int | str) -> Severity:
        """A Severity from itself, its number or its name (any case)."""
        if isinstance(value, Severity):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"severity {value!r}: expected one of info, warning, critical") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"severity {value!r}: expected a Severity, its number or its name")
        return cls(value)


def alert_id(detector: str, key: str, started: float, event: str) -> str:
    """Deterministic id of one notification: sha256 over the detector, the key, when the condition
    started and the event (the severity name for a raise or escalation, ``"resolved"``)."""
    blob = json.dumps([detector, key, float(started), event], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Alert:
    """One notification. ``started`` is when the condition became active; ``id`` is :func:`alert_id`."""

    detector: str
    key: str
    severity: Severity
    title: str
    message: str
    value: float | None
    time: float
    started: float
    id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        if not _ID_RE.match(self.id):
            raise ValueError(f"alert id {self.id!r}: expected 1-128 letters, digits, '_' or '-'")

    @property
    def resolved(self) -> bool:
        """True for a "resolved: ..." notification."""
        return self.title.startswith("resolved: ")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (severity by name)."""
        d = asdict(self)
        d["severity"] = self.severity.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict`."""
        value = d.get("value")
        return cls(detector=str(d["detector"]), key=str(d["key"]), severity=Severity.parse(d["severity"]),
                   title=str(d["title"]), message=str(d["message"]),
                   value=None if value is None else float(value), time=float(d["time"]),
                   started=float(d["started"]), id=str(d["id"]))


@dataclass(frozen=True)
class Finding:
    """What a detector reports for one condition at one evaluation (``active``: the condition holds now)."""

    detector: str
    key: str
    severity: Severity
    title: str
    message: str = ""
    value: float | None = None
    active: bool = True

    def __post_init__(self) -> None:
        for name in ("detector", "key", "title"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"finding {name}: expected a non-empty string, got {v!r}")
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        if self.value is not None:
            if isinstance(self.value, bool):
                raise ValueError(f"finding value: expected a number or None, got {self.value!r}")
            object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "active", bool(self.active))


class Sink(Protocol):
    """Where alerts go (log, JSONL file, webhook...)."""

    def deliver(self, alert: Alert) -> None:
        """Hand over one alert; may raise (the engine logs it and goes on with the other sinks)."""


@dataclass
class Condition:
    """One condition the engine tracks as active. ``alerted`` is False while a cooldown suppresses it;
    ``severity`` is the highest severity sent (or seen, while suppressed)."""

    detector: str
    key: str
    started: float
    severity: Severity
    title: str
    alerted: bool
    inactive_streak: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["severity"] = self.severity.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Condition:
        return cls(detector=str(d["detector"]), key=str(d["key"]), started=float(d["started"]),
                   severity=Severity.parse(d["severity"]), title=str(d["title"]), alerted=bool(d["alerted"]),
                   inactive_streak=int(d["inactive_streak"]))


@dataclass
class DetectorCounters:
    """Per detector: alerts raised (new and escalated), re-activations suppressed by a cooldown, and
    conditions alerted and active now."""

    raised: int = 0
    suppressed: int = 0
    active: int = 0


@dataclass
class _Cooldown:
    until: float
    severity: Severity


@dataclass
class _State:
    active: dict[tuple[str, str], Condition] = field(default_factory=dict)
    cooldowns: dict[tuple[str, str], _Cooldown] = field(default_factory=dict)
    raised: dict[str, int] = field(default_factory=dict)
    suppressed: dict[str, int] = field(default_factory=dict)


class AlertEngine:
    """Turns findings into alerts (dedup, escalation, hysteresis, cooldown) and hands them to ``sinks``.

    Thread-safe. ``now`` is the clock (seconds); tests pass a fake one.
    """

    def __init__(self, state_path: Path | str | None, sinks: list[Sink] | None = None, *,
                 cooldown_s: float = 3600.0, clear_after: int = 3, now: Callable[[], float] = time.time,
                 history_limit: int = HISTORY_LIMIT) -> None:
        if not isinstance(cooldown_s, int | float) or isinstance(cooldown_s, bool) or cooldown_s < 0:
            raise ConfigError("alert-cooldown", f"{cooldown_s!r} must be a number of seconds >= 0")
        if isinstance(clear_after, bool) or not isinstance(clear_after, int) or clear_after < 1:
            raise ConfigError("alert-clear-after", f"{clear_after!r} must be a whole number >= 1")
        if isinstance(history_limit, bool) or not isinstance(history_limit, int) or history_limit < 1:
            raise ConfigError("alert-history-limit", f"{history_limit!r} must be a whole number >= 1")
        self.state_path = Path(state_path) if state_path is not None else None
        self.history_path = self.state_path.with_suffix(".history.jsonl") if self.state_path else None
        self.sinks: list[Sink] = list(sinks or [])
        self.cooldown_s = float(cooldown_s)
        self.clear_after = clear_after
        self.history_limit = history_limit
        self._now = now
        self._lock = threading.RLock()
        self._state = _State()
        self._values: OrderedDict[tuple[str, str], float | None] = OrderedDict()
        self._history: deque[Alert] = deque(maxlen=history_limit)
        self._history_lines = 0
        self._saved: bytes | None = None
        self.sink_errors = 0
        if self.state_path is not None:
            self._load()

    # ---- public API -------------------------------------------------------------------------------

    def submit(self, findings: Iterable[Finding]) -> list[Alert]:
        """Apply one evaluation's findings; returns (and delivers) the alerts it raised, in order."""
        findings = list(findings)
        with self._lock:
            now = float(self._now())
            out: list[Alert] = []
            st = self._state
            for k in [k for k, cd in st.cooldowns.items() if cd.until <= now and k not in st.active]:
                del st.cooldowns[k]
            for f in findings:
                alert = self._apply(f, now)
                if alert is not None:
                    out.append(alert)
            self._save()
            self._append_history(out)
        for alert in out:
            for sink in self.sinks:
                try:
                    sink.deliver(alert)
                except Exception:  # noqa: BLE001 - one broken sink must not silence the others
                    self.sink_errors += 1
                    log.exception("alert sink %s failed on alert %s", type(sink).__name__, alert.id)
        return out

    def recent(self, n: int = 50) -> list[Alert]:
        """The last ``n`` alerts sent, oldest first."""
        with self._lock:
            if n <= 0:
                return []
            return list(self._history)[-n:]

    def counters(self) -> dict[str, DetectorCounters]:
        """Per-detector counters (every detector that has reported a finding or has state)."""
        with self._lock:
            st = self._state
            names = set(st.raised) | set(st.suppressed) | {d for d, _ in self._values} | {d for d, _ in st.active}
            out = {d: DetectorCounters(st.raised.get(d, 0), st.suppressed.get(d, 0), 0) for d in sorted(names)}
            for (d, _), c in st.active.items():
                if c.alerted:
                    out[d].active += 1
            return out

    def conditions(self) -> list[Condition]:
        """Copies of the conditions tracked as active (alerted, or suppressed by a cooldown)."""
        with self._lock:
            return [Condition(**asdict(c)) for c in self._state.active.values()]

    def is_active(self, detector: str, key: str) -> bool:
        """True while an alert for this condition is out and not resolved."""
        with self._lock:
            c = self._state.active.get((detector, key))
            return c is not None and c.alerted

    def tracked(self) -> dict[tuple[str, str], float | None]:
        """Latest finding value per (detector, key), plus every active condition (value None if unseen)."""
        with self._lock:
            out = dict(self._values)
            for k in self._state.active:
                out.setdefault(k, None)
            return out

    # ---- rules ----------------------------------------------------------------------------------

    def _apply(self, f: Finding, now: float) -> Alert | None:
        st = self._state
        k = (f.detector, f.key)
        self._track(k, f.value)
        st.raised.setdefault(f.detector, 0)
        st.suppressed.setdefault(f.detector, 0)
        cond = st.active.get(k)
        if not f.active:
            if cond is None:
                return None
            cond.inactive_streak += 1
            if cond.inactive_streak < self.clear_after:
                return None
            del st.active[k]
            if not cond.alerted:  # a suppressed episode ends quietly; the running cooldown stands
                return None
            st.cooldowns[k] = _Cooldown(now + self.cooldown_s, cond.severity)
            return self._make(cond, Severity.INFO, f"resolved: {cond.title}", f.message, f.value, now, "resolved")
        if cond is None:
            cd = st.cooldowns.get(k)
            cond = Condition(f.detector, f.key, now, f.severity, f.title, alerted=False)
            st.active[k] = cond
            if cd is not None and now < cd.until and f.severity <= cd.severity:
                st.suppressed[f.detector] += 1
                return None
            return self._raise(cond, f, now)
        cond.inactive_streak = 0
        if not cond.alerted:
            cd = st.cooldowns.get(k)
            if cd is not None and now < cd.until and f.severity <= cd.severity:
                cond.severity = max(cond.severity, f.severity)
                return None
            return self._raise(cond, f, now)
        if f.severity > cond.severity:
            return self._raise(cond, f, now)
        return None

    def _raise(self, cond: Condition, f: Finding, now: float) -> Alert:
        st = self._state
        st.cooldowns.pop((cond.detector, cond.key), None)
        cond.alerted = True
        cond.severity = f.severity
        cond.title = f.title
        st.raised[cond.detector] = st.raised.get(cond.detector, 0) + 1
        return self._make(cond, f.severity, f.title, f.message, f.value, now, f.severity.name)

    @staticmethod
    def _make(cond: Condition, severity: Severity, title: str, message: str, value: float | None, now: float,
              event: str) -> Alert:
        return Alert(detector=cond.detector, key=cond.key, severity=severity, title=title, message=message,
                     value=value, time=now, started=cond.started,
                     id=alert_id(cond.detector, cond.key, cond.started, event))

    def _track(self, k: tuple[str, str], value: float | None) -> None:
        self._values[k] = value
        self._values.move_to_end(k)
        if len(self._values) > TRACKED_LIMIT:
            for old in list(self._values):
                if len(self._values) <= TRACKED_LIMIT:
                    break
                if old not in self._state.active:
                    del self._values[old]

    # ---- persistence ----------------------------------------------------------------------------

    def _state_dict(self) -> dict[str, Any]:
        st = self._state
        return {
            "format": STATE_FORMAT,
            "active": [c.to_dict() for c in st.active.values()],
            "cooldowns": [{"detector": d, "key": k, "until": cd.until, "severity": cd.severity.name}
                          for (d, k), cd in st.cooldowns.items()],
            "raised": dict(st.raised),
            "suppressed": dict(st.suppressed),
        }

    def _save(self) -> None:
        if self.state_path is None:
            return
        state = self._state_dict()
        blob = json.dumps(state, sort_keys=True).encode()
        if blob != self._saved:
            atomic_write_json(self.state_path, state)
            self._saved = blob

    def _load(self) -> None:
        assert self.state_path is not None and self.history_path is not None
        remove_stale_temp_files(self.state_path)
        remove_stale_temp_files(self.history_path)
        if self.state_path.exists():
            try:
                d = json.loads(self.state_path.read_text())
                if d.get("format") != STATE_FORMAT:
                    raise ValueError(f"format {d.get('format')!r}, expected {STATE_FORMAT!r}")
                st = _State()
                for c in d["active"]:
                    cond = Condition.from_dict(c)
                    st.active[(cond.detector, cond.key)] = cond
                for c in d["cooldowns"]:
                    st.cooldowns[(str(c["detector"]), str(c["key"]))] = _Cooldown(
                        float(c["until"]), Severity.parse(c["severity"]))
                st.raised = {str(k): int(v) for k, v in d["raised"].items()}
                st.suppressed = {str(k): int(v) for k, v in d["suppressed"].items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError("alert-state", f"{self.state_path}: unreadable ({exc})") from exc
            self._state = st
            self._saved = json.dumps(self._state_dict(), sort_keys=True).encode()
        if self.history_path.exists():
            raw = self.history_path.read_bytes()
            bad = 0
            for line in raw.splitlines():
                self._history_lines += 1
                try:
                    self._history.append(Alert.from_dict(json.loads(line)))
                except (ValueError, KeyError, TypeError, AttributeError):
                    bad += 1
            if bad or (raw and not raw.endswith(b"\n")) or self._history_lines > self.history_limit:
                # a line torn by a crash mid-append: rewrite without it, so later appends start on a fresh line
                log.warning("alert history %s: dropped %d unreadable line(s)", self.history_path, bad)
                self._rewrite_history(list(self._history))

    def _append_history(self, alerts: list[Alert]) -> None:
        if not alerts:
            return
        self._history.extend(alerts)
        if self.history_path is None:
            return
        data = "".join(json.dumps(a.to_dict(), sort_keys=True) + "\n" for a in alerts).encode()
        if self._history_lines + len(alerts) > self.history_limit:
            # rewrite keeping the newest 90 % (so the next rewrite is a while away), never more than the limit
            keep = max(1, self.history_limit - self.history_limit // 10)
            self._rewrite_history(list(self._history)[-keep:])
            return
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with self.history_path.open("ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._history_lines += len(alerts)

    def _rewrite_history(self, kept: list[Alert]) -> None:
        assert self.history_path is not None
        self._history = deque(kept, maxlen=self.history_limit)
        blob = "".join(json.dumps(a.to_dict(), sort_keys=True) + "\n" for a in kept).encode()
        atomic_write_bytes(self.history_path, blob)
        self._history_lines = len(kept)
