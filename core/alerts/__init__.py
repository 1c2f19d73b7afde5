"""The one alert engine (dedup, escalation, hysteresis, cooldown, durable state) and its sinks (log, JSONL,
signed webhook with a durable outbox), Prometheus text for its counters and Prometheus alerting rules."""

from core.alerts.engine import Alert, AlertEngine, Condition, DetectorCounters, Finding, Severity, Sink, alert_id
from core.alerts.sinks import (
    AlertCollector,
    JsonlSink,
    LogSink,
    OutboxEntry,
    WebhookSink,
    alertmanager_rules,
    prometheus_text,
    sign,
    verify_signature,
)

__all__ = [
    "Alert", "AlertCollector", "AlertEngine", "Condition", "DetectorCounters", "Finding", "JsonlSink", "LogSink", "OutboxEntry",
    "Severity", "Sink", "WebhookSink", "alert_id", "alertmanager_rules", "prometheus_text", "sign",
    "verify_signature",
]
