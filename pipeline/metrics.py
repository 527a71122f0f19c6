"""Prometheus metrics of the job, served by ``smart-alerts run --metrics-port``.

Counters are process-wide (one registry per process); with several processes, sum them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter(
    "smart_alerts_input_messages",
    "Input messages read, by topic and outcome (ok or dead_letter)",
    ["topic", "outcome"],
)
ALERTS = Counter("smart_alerts_alerts_triggered", "Alerts triggered", ["priority"])
NOTIFICATIONS = Counter(
    "smart_alerts_notifications",
    "Notifications emitted (re-emitted windows count again)",
    ["priority"],
)
SCORES = Counter("smart_alerts_relevance_updates", "Relevance score updates")
OUTCOMES = Counter(
    "smart_alerts_alert_outcomes",
    "What became of alerts (NOTIFIED, STALE, MUTED, DEFERRED)",
    ["status"],
)

DELIVERY_ATTEMPTS = Counter(
    "smart_alerts_delivery_attempts",
    "Delivery attempts by channel and outcome (delivered, retry, permanent_error, expired, "
    "disabled, throttled, circuit_open)",
    ["channel", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "smart_alerts_delivery_seconds", "Provider call latency by channel", ["channel"]
)


def counter_value(counter: Counter, **labels: str) -> float:
    """The current value of one labelled counter (0 when never incremented)."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == labels:
                return float(sample.value)
    return 0.0
