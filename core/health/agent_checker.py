"""AgentChecker: is this node fit to train and to serve? Components, readiness, system stage, input monitoring.

Components (the node's dataset, Bitcoin Core's sync, connections, mempool, the inference engine, ...)
register with a weight. Each one's readiness (0..1) comes from its probe (:meth:`AgentChecker.update`)
and from the inputs it sees (:meth:`AgentChecker.record_input`): a component whose recent inputs fail
loses readiness in proportion (an exponential moving average of the error share), and one with a
``max_staleness_s`` whose last input is older than that counts as 0. Overall readiness is the
weighted mean; the stage is the highest whose threshold it reaches (Development >= 60 %, Production
>= 90 %, Release >= 99 %, else Unavailable).

``record_input`` is the hot path: one lock, a few counters, no stage computation. Stages are
evaluated by :meth:`update`, :meth:`evaluate`, :meth:`stage` and :meth:`report`; a change of stage is
an event delivered to subscribers (outside the lock) and forces a snapshot. Every Nth input is
snapshotted through :mod:`core.health.autosave` (the one auto-save mechanism).
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.health.autosave import DEFAULT_EVERY, AutoSaver

ERROR_EMA_ALPHA = 0.05  # weight of the newest input in a component's error share (about the last 20 inputs)


class SystemStage(enum.IntEnum):
    """System stages, ordered: a node at a stage also satisfies every lower one."""

    UNAVAILABLE = 0
    DEVELOPMENT = 1
    PRODUCTION = 2
    RELEASE = 3

    @classmethod
    def parse(cls, value: str | SystemStage, setting: str = "min-stage") -> SystemStage:
        """A stage from its name (case-insensitive), naming the setting when it is unknown."""
        if isinstance(value, SystemStage):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ConfigError(setting, f"{value!r} is not a stage (one of {names})") from None

    @property
    def label(self) -> str:
        """The stage's display name."""
        return self.name.capitalize()


@dataclass(frozen=True)
class StageThresholds:
    """Overall readiness needed for each stage (defaults: the seed's 60 / 90 / 99 %)."""

    development: float = 0.60
    production: float = 0.90
    release: float = 0.99

    def validate(self) -> StageThresholds:
        """Raise ConfigError unless 0 < development < production < release <= 1."""
        for name in ("development", "production", "release"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or not 0 < v <= 1:
                raise ConfigError(f"thresholds.{name}", f"{v!r} must be a number in (0, 1]")
        if not self.development < self.production < self.release:
            raise ConfigError("thresholds", f"must increase: development {self.development} < production "
                                            f"{self.production} < release {self.release}")
        return self

    def stage_of(self, readiness: float) -> SystemStage:
        """The highest stage whose threshold ``readiness`` reaches."""
        if readiness >= self.release:
            return SystemStage.RELEASE
        if readiness >= self.production:
            return SystemStage.PRODUCTION
        if readiness >= self.development:
            return SystemStage.DEVELOPMENT
        return SystemStage.UNAVAILABLE

    def threshold(self, stage: SystemStage) -> float:
        """The readiness a stage needs (0 for Unavailable)."""
        return {SystemStage.UNAVAILABLE: 0.0, SystemStage.DEVELOPMENT: self.development,
                SystemStage.PRODUCTION: self.production, SystemStage.RELEASE: self.release}[stage]


class _Component:
    __slots__ = ("name", "weight", "max_staleness_s", "readiness", "reason", "metrics", "inputs", "errors",
                 "err_ema", "last_input", "last_update", "registered_at")

    def __init__(self, name: str, weight: float, max_staleness_s: float | None, readiness: float, now: float) -> None:
        self.name = name
        self.weight = weight
        self.max_staleness_s = max_staleness_s
        self.readiness = readiness
        self.reason = ""
        self.metrics: dict[str, Any] = {}
        self.inputs = 0
        self.errors = 0
        self.err_ema = 0.0
        self.last_input: float | None = None
        self.last_update: float | None = None
        self.registered_at = now


@dataclass(frozen=True)
class ComponentStatus:
    """One component as evaluated: probe readiness, input health, and the effective readiness."""

    name: str
    weight: float
    readiness: float          # effective: probe readiness x (1 - error share), 0 when stale
    probe_readiness: float
    reason: str
    inputs: int
    errors: int
    error_share: float
    stale: bool
    seconds_since_input: float | None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Assessment:
    """The checker's verdict at one moment."""

    stage: SystemStage
    readiness: float
    components: tuple[ComponentStatus, ...]
    at: float  # time.time()

    def failing(self, stage: SystemStage, thresholds: StageThresholds) -> list[ComponentStatus]:
        """Components whose readiness is below what ``stage`` needs, worst first."""
        need = thresholds.threshold(stage)
        return sorted((c for c in self.components if c.readiness < need), key=lambda c: c.readiness)


StageListener = Callable[[SystemStage, SystemStage, Assessment], None]


class AgentChecker:
    """Readiness of a node's components and the stage it earns; thread-safe."""

    def __init__(self, *, thresholds: StageThresholds | None = None, autosave_every: int = DEFAULT_EVERY,
                 autosave_path: str | Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.thresholds = (thresholds or StageThresholds()).validate()
        self._clock = clock
        self._lock = threading.Lock()
        self._components: dict[str, _Component] = {}
        self._listeners: list[StageListener] = []
        self._stage = SystemStage.UNAVAILABLE
        self._inputs = 0
        self._restored: dict[str, dict[str, Any]] = {}
        self.autosave = AutoSaver(self._state, every=autosave_every, path=autosave_path, name="agent-checker")
        snap = self.autosave.restore()
        if snap is not None:
            self._inputs = int(snap.state.get("inputs", 0))
            self._restored = dict(snap.state.get("components", {}))
            self._stage = SystemStage.parse(snap.state.get("stage", "unavailable"), "autosave stage")

    # ------------------------------------------------------------------ components

    def register(self, name: str, weight: float = 1.0, *, max_staleness_s: float | None = None,
                 readiness: float = 0.0) -> None:
        """Add a component (readiness 0 until its first update unless given); counters resume from a snapshot."""
        if not name or not isinstance(name, str):
            raise ConfigError("component", f"{name!r} must be a non-empty name")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"weight of {name}", f"{weight!r} must be a number > 0")
        if max_staleness_s is not None and not (math.isfinite(max_staleness_s) and max_staleness_s > 0):
            raise ConfigError(f"max-staleness of {name}", f"{max_staleness_s!r} must be a number of seconds > 0")
        _check_readiness(name, readiness)
        with self._lock:
            if name in self._components:
                raise ConfigError("component", f"{name!r} is already registered")
            comp = _Component(name, float(weight), max_staleness_s, float(readiness), self._clock())
            old = self._restored.get(name)
            if old:  # counters and the last verdict resume from the snapshot until the next probe
                comp.inputs, comp.errors = int(old.get("inputs", 0)), int(old.get("errors", 0))
                comp.err_ema = float(old.get("error_share", 0.0))
                comp.readiness = float(old.get("readiness", comp.readiness))
                comp.reason = str(old.get("reason", ""))
            self._components[name] = comp

    def components(self) -> list[str]:
        """Registered component names, in registration order."""
        with self._lock:
            return list(self._components)

    def subscribe(self, listener: StageListener) -> None:
        """Call ``listener(old_stage, new_stage, assessment)`` at every stage change."""
        with self._lock:
            self._listeners.append(listener)

    # ------------------------------------------------------------------ inputs and probes

    def record_input(self, component: str, metrics: dict[str, Any] | None = None, *, error: bool = False) -> None:
        """Count one input to ``component`` (optionally failed, with its metrics); the hot path."""
        now = self._clock()
        with self._lock:
            comp = self._components.get(component)
            if comp is None:
                raise ConfigError("component", f"{component!r} is not registered")
            comp.inputs += 1
            if error:
                comp.errors += 1
                comp.err_ema += ERROR_EMA_ALPHA * (1.0 - comp.err_ema)
            elif comp.err_ema:
                comp.err_ema -= ERROR_EMA_ALPHA * comp.err_ema
            comp.last_input = now
            if metrics is not None:
                comp.metrics = metrics
            self._inputs += 1
            snap = self.autosave.tick()
        if snap is not None:
            self.autosave.flush(snap)

    def update(self, component: str, readiness: float, reason: str = "", metrics: dict[str, Any] | None = None,
               *, evaluate: bool = True) -> Assessment | None:
        """Set a component's probe readiness (0..1) with the reason it is not 1; re-evaluates the stage.

        ``evaluate=False`` defers the evaluation (several probes updated together, then one
        :meth:`evaluate`), so a half-updated node does not emit a transient stage change.
        """
        _check_readiness(component, readiness)
        with self._lock:
            comp = self._components.get(component)
            if comp is None:
                raise ConfigError("component", f"{component!r} is not registered")
            comp.readiness = float(readiness)
            comp.reason = reason
            comp.last_update = self._clock()
            if metrics is not None:
                comp.metrics = dict(metrics)
        return self.evaluate() if evaluate else None

    # ------------------------------------------------------------------ verdicts

    def _assess(self) -> Assessment:
        now = self._clock()
        statuses = []
        total_w = 0.0
        acc = 0.0
        for c in self._components.values():
            since = None if c.last_input is None else now - c.last_input
            ref = c.last_input if c.last_input is not None else c.registered_at
            stale = c.max_staleness_s is not None and now - ref > c.max_staleness_s
            eff = 0.0 if stale else c.readiness * (1.0 - c.err_ema)
            reason = c.reason
            if stale:
                reason = f"no input for {now - ref:.0f} s (limit {c.max_staleness_s:g} s)"
            elif c.err_ema >= 0.005 and not reason:
                reason = f"{100 * c.err_ema:.0f} % of recent inputs failed"
            statuses.append(ComponentStatus(c.name, c.weight, eff, c.readiness, reason, c.inputs, c.errors,
                                            c.err_ema, stale, since, dict(c.metrics)))
            total_w += c.weight
            acc += c.weight * eff
        readiness = acc / total_w if total_w else 0.0
        return Assessment(self.thresholds.stage_of(readiness), readiness, tuple(statuses), time.time())

    def evaluate(self) -> Assessment:
        """Assess now; at a stage change, snapshot and notify subscribers (outside the lock)."""
        with self._lock:
            assessment = self._assess()
            old = self._stage
            changed = assessment.stage != old
            if changed:
                self._stage = assessment.stage
                snap = self.autosave.snapshot_now()
                listeners = list(self._listeners)
        if changed:
            self.autosave.flush(snap)
            for listener in listeners:
                listener(old, assessment.stage, assessment)
        return assessment

    def stage(self) -> SystemStage:
        """The current stage (evaluated now)."""
        return self.evaluate().stage

    def readiness(self, component: str | None = None) -> float:
        """Overall readiness, or one component's effective readiness."""
        a = self.evaluate()
        if component is None:
            return a.readiness
        for c in a.components:
            if c.name == component:
                return c.readiness
        raise ConfigError("component", f"{component!r} is not registered")

    def allows(self, min_stage: SystemStage) -> tuple[bool, str]:
        """Whether the node is at ``min_stage`` or above; when not, a reason naming the failing components."""
        a = self.evaluate()
        if a.stage >= min_stage:
            return True, ""
        groups: dict[str, list[ComponentStatus]] = {}
        for c in a.failing(min_stage, self.thresholds):  # components failing for one reason are named together
            groups.setdefault(c.reason, []).append(c)
        parts = [", ".join(f"{c.name} {100 * c.readiness:.0f} %" for c in cs) + (f" ({why})" if why else "")
                 for why, cs in groups.items()]
        return False, (f"stage {a.stage.label} ({100 * a.readiness:.1f} % ready) is below {min_stage.label} "
                       f"({100 * self.thresholds.threshold(min_stage):.0f} %): " + "; ".join(parts))

    @property
    def inputs(self) -> int:
        """Inputs recorded over the checker's life (restored snapshots included)."""
        with self._lock:
            return self._inputs

    def _state(self) -> dict[str, Any]:
        # called by AutoSaver under self._lock: a consistent copy
        return {"inputs": self._inputs, "stage": self._stage.name,
                "components": {c.name: {"inputs": c.inputs, "errors": c.errors, "error_share": c.err_ema,
                                        "readiness": c.readiness, "reason": c.reason, "metrics": dict(c.metrics)}
                               for c in self._components.values()}}

    def report(self) -> dict[str, Any]:
        """Everything an operator needs: stage, readiness, components, last save."""
        a = self.evaluate()
        with self._lock:
            save = self.autosave.info()
            inputs = self._inputs
        return {"stage": a.stage.label, "readiness": a.readiness, "inputs": inputs, "autosave": save,
                "thresholds": {"development": self.thresholds.development, "production": self.thresholds.production,
                               "release": self.thresholds.release},
                "components": [{"name": c.name, "weight": c.weight, "readiness": c.readiness,
                                "probe_readiness": c.probe_readiness, "reason": c.reason, "inputs": c.inputs,
                                "errors": c.errors, "error_share": c.error_share, "stale": c.stale,
                                "seconds_since_input": c.seconds_since_input, "metrics": c.metrics}
                               for c in a.components]}

    def save_now(self) -> None:
        """Snapshot (and write) now, for example at shutdown."""
        with self._lock:
            snap = self.autosave.snapshot_now()
        self.autosave.flush(snap)


def _check_readiness(name: str, readiness: float) -> None:
    if (isinstance(readiness, bool) or not isinstance(readiness, int | float) or not math.isfinite(readiness)
            or not 0 <= readiness <= 1):
        raise ConfigError(f"readiness of {name}", f"{readiness!r} must be a number in [0, 1]")
