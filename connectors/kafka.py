"""Reading Kafka partitions: plain classes the dataflow wraps in Bytewax sources.

A ``PartitionReader`` reads exactly one topic partition with ``assign()`` (no consumer group,
nothing committed to the broker): the position lives in the engine's recovery snapshots as
``next_offset``. The end of a partition is detected with librdkafka's partition-EOF events,
never with watermark offsets (Tansu, the embedded broker, reports high watermarks that count
produced batches rather than messages).

A start offset past the end of the partition (a snapshot from before the topic was recreated)
is reset to the earliest offset by a real Kafka (``OFFSET_OUT_OF_RANGE`` with
``auto.offset.reset=earliest``): records are then re-read, never skipped. Tansu instead answers
such fetches with nothing and no error, so the reader waits there and never reports the end:
after restarting the memory-only embedded broker, start the job without its old snapshots.

Clients here set ``allow.auto.create.topics=false``: Tansu creates a topic as a side effect of a
metadata request naming it, which would turn a typo into a silently empty topic.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from connectors.topics import admin_client

__all__ = [
    "READER_GROUP_ID",
    "KafkaReadError",
    "MissingTopicError",
    "PartitionReader",
    "SourceRecord",
    "list_partitions",
]

log = logging.getLogger(__name__)

READER_GROUP_ID = "smart-alerts-reader"

# Errors after which reading this partition cannot make progress; everything else (a broker
# restarting, a leader moving, a timeout) is retried by librdkafka and only logged here.
_FATAL_CODES = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError._INVALID_ARG,
        KafkaError._FATAL,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.INVALID_MSG,
        KafkaError._BAD_MSG,
        KafkaError._BAD_COMPRESSION,
    }
)

# Tuned for throughput with small JSON messages; end-of-data latency stays ~fetch.wait.max.ms.
_CONSUMER_DEFAULTS: dict[str, Any] = {
    "group.id": READER_GROUP_ID,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,
    "allow.auto.create.topics": False,
    # A snapshot offset below the log start (retention, compaction) restarts at the earliest.
    "auto.offset.reset": "earliest",
    "fetch.min.bytes": 1,
    "fetch.wait.max.ms": 50,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "queued.min.messages": 100_000,
    "fetch.queue.backoff.ms": 10,
    "queued.max.messages.kbytes": 64 * 1024,  # per reader: one consumer per partition
    "socket.receive.buffer.bytes": 4 * 1024 * 1024,
}


class KafkaReadError(RuntimeError):
    """Reading cannot continue: the message names the broker, topic and partition."""


class MissingTopicError(KafkaReadError, LookupError):
    """A topic the job needs does not exist on the broker."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One input record: read from Kafka, or a file row read as if it were (backtests)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


def list_partitions(
    bootstrap: str, topics: list[str], timeout_s: float = 10.0
) -> list[tuple[str, int]]:
    """Every ``(topic, partition)`` of ``topics``, in the order given, partitions ascending.

    Raises MissingTopicError naming the missing topics, and KafkaReadError when the broker
    cannot be reached within ``timeout_s``.
    """
    admin = admin_client(bootstrap)
    try:
        # All topics in one request: naming a topic in a metadata request may auto-create it.
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise KafkaReadError(
            f"cannot list Kafka topics on {bootstrap} within {timeout_s:g} s: "
            f"{describe_kafka_error(exc)}"
        ) from exc
    missing = [name for name in topics if name not in metadata.topics]
    if missing:
        raise MissingTopicError(
            f"Kafka topic(s) {', '.join(repr(name) for name in missing)} not found on "
            f"{bootstrap}; create them with `smart-alerts topics create`"
        )
    result: list[tuple[str, int]] = []
    for name in dict.fromkeys(topics):
        topic = metadata.topics[name]
        if topic.error is not None or not topic.partitions:
            raise KafkaReadError(
                f"Kafka topic {name!r} on {bootstrap} has no usable partitions: "
                f"{describe_kafka_error(topic.error) if topic.error is not None else 'none listed'}"
            )
        result.extend((name, partition) for partition in sorted(topic.partitions))
    return result


class PartitionReader:
    """Reads one topic partition from a start offset with assign() (no consumer group), in batches.

    ``next_batch`` returns at most ``batch_size`` records (possibly none) after waiting at most
    ``poll_timeout_s``. ``next_offset`` is the offset to resume from; ``at_end`` says whether the
    broker reported the end of the partition after the last record returned.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition: int,
        start_offset: int | None,
        *,
        batch_size: int = 1000,
        poll_timeout_s: float = 0.05,
        extra_config: dict[str, Any] | None = None,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if start_offset is not None and start_offset < 0:
            raise ValueError(f"start_offset must be >= 0 or None, not {start_offset}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self._next_offset = 0 if start_offset is None else start_offset
        self._at_end = False
        self._async_error: KafkaError | None = None
        self._last_warning = 0.0
        config = dict(_CONSUMER_DEFAULTS)
        config.update(
            {
                "bootstrap.servers": bootstrap,
                "client.id": f"smart-alerts-reader-{topic}-{partition}",
                "error_cb": self._on_error,
                "logger": logging.getLogger("librdkafka.consumer"),
            }
        )
        config.update(extra_config or {})
        self._consumer: Consumer | None = Consumer(config)
        try:
            self._check_partition_exists(metadata_timeout_s)
            start = OFFSET_BEGINNING if start_offset is None else start_offset
            self._consumer.assign([TopicPartition(topic, partition, start)])
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}] on {self.bootstrap}"

    @property
    def next_offset(self) -> int:
        """The offset after the last record returned (the start offset before any; 0 when
        reading from the beginning); store it in snapshots and pass it back as start_offset."""
        return self._next_offset

    @property
    def at_end(self) -> bool:
        """True once the broker reported the partition's end after the last record returned."""
        return self._at_end

    def next_batch(self) -> list[SourceRecord]:
        consumer = self._require_open()
        self._raise_async_error()
        try:
            messages = consumer.consume(self.batch_size, self.poll_timeout_s)
        except KafkaException as exc:
            raise KafkaReadError(
                f"reading {self.where} failed: {describe_kafka_error(exc)}"
            ) from exc
        records: list[SourceRecord] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    # Events come in order: an EOF after the last record means nothing follows.
                    self._at_end = True
                    end = message.offset()
                    if end is not None and 0 <= end < self._next_offset:
                        self._offset_reset(end)
                    continue
                self._handle_error(error)
                continue
            offset = message.offset()
            if offset is None:
                continue
            if offset < self._next_offset:
                self._offset_reset(offset)
            timestamp_type, timestamp = message.timestamp()
            records.append(
                SourceRecord(
                    topic=self.topic,
                    partition=self.partition,
                    offset=offset,
                    key=message.key(),
                    value=message.value(),
                    timestamp_ms=timestamp if timestamp_type != 0 and timestamp >= 0 else None,
                )
            )
            self._next_offset = offset + 1
            self._at_end = False
        self._raise_async_error()
        return records

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def __enter__(self) -> PartitionReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _require_open(self) -> Consumer:
        if self._consumer is None:
            raise KafkaReadError(f"reader for {self.where} is closed")
        return self._consumer

    def _check_partition_exists(self, timeout_s: float) -> None:
        consumer = self._require_open()
        try:
            metadata = consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaReadError(
                f"cannot reach Kafka at {self.bootstrap} within {timeout_s:g} s to read "
                f"{self.topic}[{self.partition}]: {describe_kafka_error(exc)}"
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise MissingTopicError(
                f"Kafka topic {self.topic!r} not found on {self.bootstrap}; "
                "create it with `smart-alerts topics create`"
            )
        if self.partition not in topic.partitions:
            raise KafkaReadError(
                f"Kafka topic {self.topic!r} on {self.bootstrap} has no partition "
                f"{self.partition} (it has {len(topic.partitions)})"
            )

    def _offset_reset(self, offset: int) -> None:
        # Only after auto.offset.reset: the start offset was out of range (the topic was
        # recreated or truncated). Re-reading is safe (at-least-once); skipping would lose data.
        log.warning(
            "%s restarted at offset %d, below the expected %d (offset out of range, reset to "
            "the earliest)",
            self.where,
            offset,
            self._next_offset,
        )
        self._next_offset = offset

    def _on_error(self, error: KafkaError) -> None:
        # Called from consume(): global errors (broker down, unknown partition, fatal).
        if _is_fatal(error):
            if self._async_error is None:
                self._async_error = error
        else:
            self._warn(error)

    def _handle_error(self, error: KafkaError) -> None:
        if _is_fatal(error):
            raise KafkaReadError(f"reading {self.where} failed: {describe_kafka_error(error)}")
        self._warn(error)

    def _raise_async_error(self) -> None:
        if self._async_error is not None:
            raise KafkaReadError(
                f"reading {self.where} failed: {describe_kafka_error(self._async_error)}"
            )

    def _warn(self, error: KafkaError) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("transient Kafka error reading %s (retrying): %s", self.where, error)


def _is_fatal(error: KafkaError) -> bool:
    return bool(error.fatal()) or error.code() in _FATAL_CODES


def describe_kafka_error(error: object) -> str:
    """A librdkafka error as 'NAME: text', for messages operators read."""
    if isinstance(error, KafkaException) and error.args:
        error = error.args[0]
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return str(error)
