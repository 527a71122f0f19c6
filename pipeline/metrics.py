"""Prometheus metrics of the job and the state its health endpoints report.

Served by the job's ops server (``connectors/ops_server.py``) beside /healthz and /readyz; the
table of every metric, with what to watch, is in docs/operations.md ("Health and metrics").
Counters are process-wide (one registry per process); with several processes, sum them.

The hot path only increments counters or stores a number: gauges whose value moves with the
wall clock (event-time lag, snapshot age) keep a timestamp and are computed at scrape time by
``_ClockGauges``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# One series per label set: the `_created` twin of every counter only doubles what is scraped.
disable_created_metrics()

EVENTS = Counter(
    "smart_alerts_input_messages",
    "Input messages read, by topic and outcome (ok or dead_letter)",
    ["topic", "outcome"],
)
CONSUMER_LAG = Gauge(
    "smart_alerts_consumer_lag",
    "Messages between this process's read position and the partition's high watermark",
    ["topic", "partition"],
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
DEAD_LETTERS = Counter(
    "smart_alerts_dead_letters",
    "Dead letters written to the dead-letter topic, by source topic and reason",
    ["topic", "reason"],
)
# From the triggering record's Kafka timestamp (its send time) to the alert leaving evaluation:
# most of it is the wait in the broker and the input batch, so the buckets start at 5 ms.
TICK_TO_ALERT = Histogram(
    "smart_alerts_tick_to_alert_seconds",
    "Wall-clock seconds from the triggering record's Kafka timestamp to its alert leaving the "
    "evaluate step",
    ["priority"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
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
OUTBOX_DEPTH = Gauge(
    "smart_alerts_outbox_depth",
    "Open rows of delivery_logs by channel and status, as of the last outbox scan",
    ["channel", "status"],
)
CIRCUIT_OPEN = Gauge(
    "smart_alerts_circuit_breaker_open",
    "1 while the circuit of the channel's provider is open (calls refused), else 0",
    ["channel"],
)

BUILD_INFO = Gauge(
    "smart_alerts_build_info", "The running build (always 1)", ["version", "python", "bytewax"]
)
READY = Gauge("smart_alerts_ready", "1 when /readyz would answer 200, else 0")

# Dead-letter reasons, from the start of the error text the parser or the safety net wrote
# (pipeline/parsing.py, pipeline/messages.py, pipeline/safety.py): a small fixed set, so the
# label stays bounded whatever the messages say.
DEAD_LETTER_REASONS = ("not_json", "too_large", "invalid_message", "bad_key", "step_error")
_REASON_PREFIXES = (
    ("not JSON", "not_json"),
    ("not UTF-8", "not_json"),
    ("expected a JSON object", "not_json"),
    ("empty value", "not_json"),
    ("message of ", "too_large"),
    ("tombstone", "bad_key"),
    ("position tombstone key", "bad_key"),
    ("message key", "bad_key"),
)
STEP_NAMES = frozenset({"route_rules", "evaluate", "personalize"})


def dead_letter_reason(error: str) -> str:
    """The bounded reason label of a dead letter's error text."""
    if error.partition(":")[0] in STEP_NAMES:
        return "step_error"
    for prefix, reason in _REASON_PREFIXES:
        if error.startswith(prefix):
            return reason
    if "record needs its key" in error:  # "a rules record needs its key: the rule id"
        return "bad_key"
    return "invalid_message"


def record_build_info() -> None:
    BUILD_INFO.labels(
        version=_version("vs9-smart-alerts"),
        python=platform.python_version(),
        bytewax=_version("bytewax"),
    ).set(1)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


STAGES = ("ingest", "evaluate", "personalize")


@dataclass
class JobStatus:
    """What /healthz and /readyz know of this process's dataflow, set from its hot path with
    plain assignments (the GIL makes each one atomic; a lost race only delays a value)."""

    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)  # epoch seconds, for the snapshot age
    last_poll: float | None = None  # monotonic: an input partition was last polled
    reference_loaded: bool = False  # this process's reference partitions were read to their end
    newest_event: dict[str, float] = field(default_factory=dict)  # stage -> epoch seconds
    recovery_on: bool = False
    last_snapshot: float | None = None  # epoch seconds of the last epoch snapshot

    def reset(self, *, recovery_on: bool) -> None:
        self.started, self.started_at = time.monotonic(), time.time()
        self.last_poll = None
        self.reference_loaded = False
        self.newest_event.clear()
        self.recovery_on = recovery_on
        self.last_snapshot = None

    def polled(self) -> None:
        self.last_poll = time.monotonic()

    def saw_event_time(self, stage: str, ts: datetime) -> None:
        seconds = ts.timestamp()
        if seconds > self.newest_event.get(stage, 0.0):
            self.newest_event[stage] = seconds

    def snapshot_taken(self) -> None:
        self.last_snapshot = time.time()

    def stalled_for(self) -> float:
        """Seconds since the dataflow last polled its input (since start before the first)."""
        return time.monotonic() - (self.last_poll if self.last_poll is not None else self.started)


STATUS = JobStatus()


class _ClockGauges(Collector):
    """Gauges computed from ``STATUS`` at scrape time: they grow by themselves while nothing
    moves, which is what an operator watches for."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        lag = GaugeMetricFamily(
            "smart_alerts_event_time_lag_seconds",
            "Wall clock minus the newest event time the stage has seen",
            labels=["stage"],
        )
        for stage in STAGES:
            newest = STATUS.newest_event.get(stage)
            if newest is not None:
                lag.add_metric([stage], now - newest)
        yield lag
        if STATUS.recovery_on:
            since = STATUS.last_snapshot if STATUS.last_snapshot is not None else STATUS.started_at
            yield GaugeMetricFamily(
                "smart_alerts_recovery_snapshot_age_seconds",
                "Seconds since the last recovery snapshot of this process (since start before "
                "the first)",
                value=now - since,
            )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Described up front so the registry knows the names without collecting at import.
        return iter(())


REGISTRY.register(_ClockGauges())


def counter_value(counter: Counter, **labels: str) -> float:
    """The current value of one labelled counter (0 when never incremented)."""
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels == labels:
                return float(sample.value)
    return 0.0
