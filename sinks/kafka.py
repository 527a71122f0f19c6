"""Writing to Kafka with checked delivery: a batch either is fully acknowledged or raises.

Bytewax's own ``KafkaSink`` registers no delivery callback and ignores ``flush()``'s result, so
messages are lost silently when the broker is unreachable; it also ignores the partition of a
message. ``CheckedProducer`` is the project's replacement: every record carries a delivery
callback, ``write_batch`` flushes and raises ``KafkaDeliveryError`` unless every record of the
batch was acknowledged by the broker (``acks=all``, idempotent producer). Combined with the
engine's at-least-once output and deterministic keys this gives "nothing lost"; downstream
readers de-duplicate on the message ids.

Keyed records without an explicit partition use the ``murmur2_random`` partitioner, the Java
client's default, so a key lands on the same partition whichever client produced it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import Message as KafkaMessage

from connectors.kafka import describe_kafka_error
from pipeline.messages import Message, message_key

__all__ = ["CheckedProducer", "KafkaDeliveryError", "MessagePublisher", "OutgoingRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None


class KafkaDeliveryError(RuntimeError):
    """Some records of a batch were not acknowledged; the message says which topics, how many
    and the first error."""


class _BatchReport:
    """Delivery outcomes of one batch, filled by librdkafka's delivery callbacks."""

    __slots__ = ("acked", "failed", "first_error", "topics_failed")

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.topics_failed: Counter[str] = Counter()

    def on_delivery(self, error: KafkaError | None, message: KafkaMessage) -> None:
        if error is None:
            self.acked += 1
        else:
            self.fail(message.topic() or "?", describe_kafka_error(error), message.partition())

    def fail(self, topic: str, reason: str, partition: int | None = None) -> None:
        self.failed += 1
        self.topics_failed[topic] += 1
        if self.first_error is None:
            where = topic if partition is None or partition < 0 else f"{topic}[{partition}]"
            self.first_error = f"{where}: {reason}"


class CheckedProducer:
    """A Kafka producer whose ``write_batch`` returns only when every record was acknowledged."""

    def __init__(
        self,
        bootstrap: str,
        *,
        flush_timeout_s: float = 30.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        if flush_timeout_s <= 0:
            raise ValueError("flush_timeout_s must be > 0")
        self.bootstrap = bootstrap
        self.flush_timeout_s = flush_timeout_s
        self._fatal: KafkaError | None = None
        self._last_warning = 0.0
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "smart-alerts-producer",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "allow.auto.create.topics": False,
            # A record that cannot be delivered fails (with a delivery report) before flush()
            # gives up, so the error says why rather than just "still queued".
            "message.timeout.ms": max(1, int(flush_timeout_s * 1000)),
            "batch.size": 1024 * 1024,
            "queue.buffering.max.messages": 500_000,
            "error_cb": self._on_error,
            "logger": logging.getLogger("librdkafka.producer"),
        }
        config.update(extra_config or {})
        try:
            producer = Producer(config)
        except KafkaException:
            if (extra_config or {}).get("compression.type") is not None:
                raise
            # A librdkafka build without lz4 rejects the setting: fall back to no compression.
            config["compression.type"] = "none"
            producer = Producer(config)
        self._producer: Producer | None = producer

    def write_batch(self, records: list[OutgoingRecord]) -> None:
        """Produce ``records`` and wait for every acknowledgement or raise KafkaDeliveryError."""
        producer = self._require_open()
        self._raise_fatal()
        if not records:
            return
        report = _BatchReport()
        deadline = time.monotonic() + self.flush_timeout_s
        for record in records:
            self._produce(producer, record, report, deadline)
        remaining = producer.flush(max(0.0, deadline - time.monotonic()))
        if remaining > 0:
            # Wait for the reports of queued records once more: their message timeout can end
            # slightly after the deadline and their errors are the useful ones.
            remaining = producer.flush(1.0)
        if remaining > 0 or report.failed or report.acked != len(records):
            unacked = len(records) - report.acked
            self._discard_queued(producer)
            topics = dict(report.topics_failed)
            if remaining > 0:
                reason = f"{remaining} still queued after {self.flush_timeout_s:g} s"
                first = report.first_error or reason
            else:
                first = report.first_error or "missing delivery reports"
            if not topics:
                topics = dict(Counter(record.topic for record in records))
            raise KafkaDeliveryError(
                f"{unacked} of {len(records)} records not delivered to Kafka at {self.bootstrap} "
                f"(topic(s): {', '.join(f'{t} ({n})' for t, n in sorted(topics.items()))}); "
                f"first error: {first}"
            )
        self._raise_fatal()

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            remaining = producer.flush(self.flush_timeout_s)
            if remaining:
                log.error("closing Kafka producer with %d undelivered records", remaining)

    def __enter__(self) -> CheckedProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _produce(
        self, producer: Producer, record: OutgoingRecord, report: _BatchReport, deadline: float
    ) -> None:
        kwargs: dict[str, Any] = {"on_delivery": report.on_delivery}
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                producer.produce(record.topic, value=record.value, key=record.key, **kwargs)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                if time.monotonic() >= deadline:
                    report.fail(
                        record.topic,
                        f"local producer queue still full after {self.flush_timeout_s:g} s",
                    )
                    return
                producer.poll(0.05)
            except KafkaException as exc:
                report.fail(record.topic, describe_kafka_error(exc), record.partition)
                return

    def _discard_queued(self, producer: Producer) -> None:
        """Drop what is still queued so a failed batch does not leak into the next one."""
        try:
            producer.purge(in_queue=True, in_flight=False, blocking=False)
            producer.flush(0)
        except KafkaException:
            log.debug("purging the producer queue failed", exc_info=True)

    def _require_open(self) -> Producer:
        if self._producer is None:
            raise KafkaDeliveryError(f"producer for {self.bootstrap} is closed")
        return self._producer

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = self._fatal or error
        elif time.monotonic() - self._last_warning >= 10.0:
            self._last_warning = time.monotonic()
            log.warning("Kafka producer error (librdkafka retries): %s", error)

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise KafkaDeliveryError(
                f"Kafka producer for {self.bootstrap} failed fatally: "
                f"{describe_kafka_error(self._fatal)}"
            )


class MessagePublisher:
    """Messages to one topic, keyed per the topic contract (``message_key``), checked."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._producer = CheckedProducer(bootstrap)
        self._topic = topic

    def publish(self, messages: Sequence[Message]) -> None:
        self._producer.write_batch(
            [OutgoingRecord(self._topic, message_key(m).encode(), m.to_json()) for m in messages]
        )

    def close(self) -> None:
        self._producer.close()
