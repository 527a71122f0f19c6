"""PostgreSQL, Redis and Kafka failing under the writers and readers: frozen, stopped, emptied.

The module starts servers of its own (connectors/embedded.py) and freezes (SIGSTOP), stops,
restarts and empties them; the session-wide ``stack`` other tests share is never touched. Small
budgets keep it quick: a frozen PostgreSQL is noticed after 1 s + the watchdog's 1 s margin,
connects time out after 2 s (libpq's minimum), Redis calls after 0.5 s, and every call gives up
3 s after its first failed attempt began.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from confluent_kafka import KafkaError, Message, Producer

from connectors.embedded import EmbeddedStack, StackUrls, free_ports
from connectors.kafka import LOST_AFTER_S, LostOffsetsError, PartitionReader, SourceRecord
from connectors.topics import TopicSpec, create_topics
from pipeline.cli.commands import topics_create
from pipeline.config import Dependencies, Settings, Topics, load_settings
from pipeline.personalize.learning import RelevanceScore
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.migrations import migrate
from sinks.postgres import WATCHDOG_MARGIN_S, DatabaseUnavailableError, HistoryWriter
from sinks.redis_store import InAppFeed, RedisUnavailableError, RelevanceStore
from tests.conftest import wait_for
from tests.integration.test_shutdown import start_cli

pytestmark = pytest.mark.integration

BUDGET_S = 3.0
DEPENDENCIES = Dependencies(
    connect_timeout_seconds=1,
    statement_timeout_seconds=1,
    redis_timeout_seconds=0.5,
    retry_for_seconds=BUDGET_S,
)
WATCHDOG_S = DEPENDENCIES.statement_timeout_seconds + WATCHDOG_MARGIN_S
PG_CONNECT_TIMEOUT_S = 2.0  # libpq rounds connect_timeout up to 2 s
# Giving up: the budget, plus the attempt under way when it ran out.
PG_GIVE_UP_S = BUDGET_S + max(WATCHDOG_S, PG_CONNECT_TIMEOUT_S) + 1.0
REDIS_GIVE_UP_S = BUDGET_S + DEPENDENCIES.redis_timeout_seconds + 1.0
T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


# ---------------------------------------------------------------- servers of this module


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(tmp_path_factory.mktemp("dependencies"))
    urls = stack.start()
    migrate(urls.database_url, log=lambda _line: None)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def urls(servers: EmbeddedStack) -> Iterator[StackUrls]:
    """The module's servers; each test leaves them running and thawed, whatever happened."""
    urls = servers.start()
    yield urls
    for name in ("kafka", "postgres", "redis"):
        if name in servers.pids:
            servers.thaw(name)
        else:
            servers.start_server(name)


def later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in ``seconds`` from now, in a thread (join it before asserting)."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def with_password(url: str) -> str:
    """The URL with a password the server ignores (trust authentication), to check that no
    error message shows it."""
    return url.replace("://postgres@", "://postgres:s3cret@")


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelname == "WARNING"]


# ---------------------------------------------------------------- PostgreSQL


def score(user_id: str, value: float = 0.7) -> RelevanceScore:
    return RelevanceScore(user_id, "symbol", "AAPL", value, T0)


def stored_score(database_url: str, user_id: str) -> Any:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT relevance_scores FROM user_alert_profiles WHERE user_external_id = %s",
            (user_id,),
        ).fetchone()
    return row[0] if row else None


def pg_error_line(port: int, last_error: str) -> re.Pattern[str]:
    return re.compile(
        rf"PostgreSQL at 127\.0\.0\.1:{port}/smart_alerts did not answer: tried \d+ times over "
        rf"\d+\.\d s; last error: {last_error}"
    )


def test_frozen_postgres_resumed_within_the_budget_is_retried(
    servers: EmbeddedStack, urls: StackUrls, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    with HistoryWriter(urls.database_url, DEPENDENCIES) as writer:
        servers.freeze("postgres")
        thaw = later(WATCHDOG_S + 0.5, lambda: servers.thaw("postgres"))
        began = time.monotonic()
        with caplog.at_level(logging.WARNING, "smart_alerts.postgres"):
            writer.write_relevance([score(user_id)])
        elapsed = time.monotonic() - began
        thaw.join()
    # The watchdog cut the frozen call off; the retry waited for the thawed server.
    assert WATCHDOG_S <= elapsed < BUDGET_S + PG_CONNECT_TIMEOUT_S
    assert any(
        f"no answer within {WATCHDOG_S:g} s" in w
        for w in warnings_of(caplog, "smart_alerts.postgres")
    )
    assert stored_score(urls.database_url, user_id) == {"symbol": {"AAPL": 0.7}}


def test_frozen_postgres_not_resumed_is_one_line_within_the_budget(
    servers: EmbeddedStack, urls: StackUrls
) -> None:
    port = port_of(urls.database_url)
    with HistoryWriter(with_password(urls.database_url), DEPENDENCIES) as writer:
        servers.freeze("postgres")
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as info:
            writer.write_relevance([score(f"u-{uuid.uuid4().hex[:8]}")])
        elapsed = time.monotonic() - began
    assert BUDGET_S <= elapsed < PG_GIVE_UP_S
    message = str(info.value)
    assert pg_error_line(port, rf"(connect timeout|no answer within {WATCHDOG_S:g} s)").fullmatch(
        message
    ), message
    assert "s3cret" not in message


def test_stopped_postgres_restarted_within_the_budget_is_waited_for(
    servers: EmbeddedStack, urls: StackUrls, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, "smart_alerts.postgres"):
        # Made while the server is down (a start-up order docker-compose does not promise).
        servers.stop_server("postgres")
        restart = later(0.5, lambda: servers.start_server("postgres"))
        writer = HistoryWriter(urls.database_url, DEPENDENCIES)
        restart.join()
        # A write on a connection the server dropped when it stopped.
        with writer:
            servers.stop_server("postgres")
            restart = later(0.5, lambda: servers.start_server("postgres"))
            writer.write_relevance([score(user_id, 0.4)])
            restart.join()
    retries = warnings_of(caplog, "smart_alerts.postgres")
    assert any("Connection refused" in w for w in retries), retries
    assert stored_score(urls.database_url, user_id) == {"symbol": {"AAPL": 0.4}}


def test_stopped_postgres_not_restarted_is_one_line_within_the_budget(
    servers: EmbeddedStack, urls: StackUrls
) -> None:
    port = port_of(urls.database_url)
    with HistoryWriter(urls.database_url, DEPENDENCIES) as writer:
        servers.stop_server("postgres")
        began = time.monotonic()
        with pytest.raises(DatabaseUnavailableError) as info:
            writer.write_relevance([score(f"u-{uuid.uuid4().hex[:8]}")])
        elapsed = time.monotonic() - began
    assert BUDGET_S <= elapsed < BUDGET_S + 1.0
    assert pg_error_line(port, "Connection refused").fullmatch(str(info.value)), str(info.value)


def test_writer_for_a_server_that_never_answers_gives_up_at_construction() -> None:
    port = free_ports(1)[0]
    brief = Dependencies(retry_for_seconds=1)
    began = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as info:
        HistoryWriter(f"postgresql://alerts:s3cret@127.0.0.1:{port}/history", brief)
    assert 1.0 <= time.monotonic() - began < 2.0
    assert re.fullmatch(
        rf"PostgreSQL at 127\.0\.0\.1:{port}/history did not answer: tried \d+ times over "
        r"\d\.\d s; last error: Connection refused",
        str(info.value),
    ), str(info.value)


def test_errors_about_the_data_are_not_retried(urls: StackUrls) -> None:
    refused = f"u-refused-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(urls.database_url, autocommit=True) as admin:
        admin.execute(
            "ALTER TABLE user_alert_profiles ADD CONSTRAINT t_refuse "
            f"CHECK (user_external_id <> '{refused}')"
        )
        try:
            with HistoryWriter(urls.database_url, DEPENDENCIES) as writer:
                began = time.monotonic()
                with pytest.raises(psycopg.errors.CheckViolation):
                    writer.write_relevance([score(refused)])
                assert time.monotonic() - began < 0.5
                writer.write_relevance([score(f"u-{uuid.uuid4().hex[:8]}")])  # still usable
        finally:
            admin.execute("ALTER TABLE user_alert_profiles DROP CONSTRAINT t_refuse")


# ---------------------------------------------------------------- Redis


def redis_error_line(port: int, last_error: str) -> re.Pattern[str]:
    return re.compile(
        rf"Redis at 127\.0\.0\.1:{port}/0 did not answer: tried \d+ times over \d+\.\d s; "
        rf"last error: {last_error}"
    )


def test_frozen_redis_resumed_within_the_budget_is_retried(
    servers: EmbeddedStack, urls: StackUrls, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    store = RelevanceStore(urls.redis_url, DEPENDENCIES)
    servers.freeze("redis")
    thaw = later(1.0, lambda: servers.thaw("redis"))
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, "smart_alerts.redis"):
        store.write_batch([score(user_id)])
    elapsed = time.monotonic() - began
    thaw.join()
    assert DEPENDENCIES.redis_timeout_seconds <= elapsed < BUDGET_S
    assert any("Timeout" in w for w in warnings_of(caplog, "smart_alerts.redis"))
    assert store.read(user_id) == {"symbol:AAPL": 0.7}
    store.close()


def test_frozen_redis_not_resumed_is_one_line_within_the_budget(
    servers: EmbeddedStack, urls: StackUrls
) -> None:
    port = port_of(urls.redis_url)
    store = RelevanceStore(urls.redis_url.replace("://", "://:s3cret@"), DEPENDENCIES)
    servers.freeze("redis")
    began = time.monotonic()
    with pytest.raises(RedisUnavailableError) as info:
        store.write_batch([score(f"u-{uuid.uuid4().hex[:8]}")])
    elapsed = time.monotonic() - began
    store.close()
    assert BUDGET_S <= elapsed < REDIS_GIVE_UP_S
    message = str(info.value)
    assert redis_error_line(port, "Timeout (reading from socket|connecting to server)").fullmatch(
        message
    ), message
    assert "s3cret" not in message


def test_stopped_redis_restarted_within_the_budget_is_waited_for(
    servers: EmbeddedStack, urls: StackUrls, caplog: pytest.LogCaptureFixture
) -> None:
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    with caplog.at_level(logging.WARNING, "smart_alerts.redis"):
        servers.stop_server("redis")
        restart = later(0.5, lambda: servers.start_server("redis"))
        feed = InAppFeed(urls.redis_url, dependencies=DEPENDENCIES)  # made while it is down
        restart.join()
        store = RelevanceStore(urls.redis_url, DEPENDENCIES)
        servers.stop_server("redis")
        restart = later(0.5, lambda: servers.start_server("redis"))
        store.write_batch([score(user_id, 0.4)])  # on a connection the server dropped
        restart.join()
    retries = warnings_of(caplog, "smart_alerts.redis")
    assert any("Connection refused" in w for w in retries), retries
    assert store.read(user_id) == {"symbol:AAPL": 0.4}
    assert feed.entries(user_id) == []  # the feed's client works against the new server
    feed.close()
    store.close()


def test_stopped_redis_not_restarted_is_one_line_within_the_budget(
    servers: EmbeddedStack, urls: StackUrls
) -> None:
    store = RelevanceStore(urls.redis_url, DEPENDENCIES)
    servers.stop_server("redis")
    began = time.monotonic()
    with pytest.raises(RedisUnavailableError) as info:
        store.write_batch([score(f"u-{uuid.uuid4().hex[:8]}")])
    elapsed = time.monotonic() - began
    store.close()
    assert BUDGET_S <= elapsed < BUDGET_S + 1.0
    assert redis_error_line(port_of(urls.redis_url), "Connection refused").fullmatch(
        str(info.value)
    )


# ---------------------------------------------------------------- Kafka: lost offsets

SAVED = 10  # records read before the broker lost them: the offset a snapshot holds
# How long a reader may take to notice lost offsets: the grace, plus reconnecting.
NOTICE_S = LOST_AFTER_S + 5.0


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """One batch (a plain producer: the checked one's idempotence set-up costs half a second)."""
    producer = Producer({"bootstrap.servers": bootstrap, "allow.auto.create.topics": False})
    for value in values:
        producer.produce(topic, value, b"k", partition=0)
    assert producer.flush(10) == 0


def empty_the_broker(servers: EmbeddedStack, topics: list[str], values: list[bytes]) -> None:
    """Crash and restart the memory-only broker (it forgets everything), then recreate the
    topics with fewer records than were read before."""
    servers.stop_server("kafka", kill=True)
    servers.start_server("kafka")
    bootstrap = servers.start().kafka_bootstrap
    create_topics(bootstrap, [TopicSpec(topic, 1) for topic in topics])
    for topic in topics:
        produce(bootstrap, topic, values)


@pytest.fixture
def emptied(servers: EmbeddedStack, urls: StackUrls) -> str:
    """A topic that held SAVED records (a snapshot resumes at offset SAVED) until the broker
    lost them; it now holds 3."""
    topic = f"lost.{uuid.uuid4().hex[:8]}"
    create_topics(urls.kafka_bootstrap, [TopicSpec(topic, 1)])
    produce(urls.kafka_bootstrap, topic, [b"old-%d" % i for i in range(SAVED)])
    empty_the_broker(servers, [topic], [b"new-0", b"new-1", b"new-2"])
    return topic


def read_until(
    reader: PartitionReader, done: Callable[[list[SourceRecord]], bool]
) -> list[SourceRecord]:
    records: list[SourceRecord] = []
    deadline = time.monotonic() + NOTICE_S
    while not done(records):
        assert time.monotonic() < deadline, f"gave up after {len(records)} records"
        records.extend(reader.next_batch())
    return records


def lost_line(topic: str, bootstrap: str, saved: int, end: int) -> str:
    return (
        f"Kafka {topic}[0] on {bootstrap}: the saved offset {saved} is past the partition's end "
        f"{end} (the broker lost its data or the topic was recreated); set [recovery] "
        'on_lost_offsets = "earliest" or "latest" and restart'
    )


def test_lost_offsets_stop_with_one_line(urls: StackUrls, emptied: str) -> None:
    began = time.monotonic()
    with (
        PartitionReader(urls.kafka_bootstrap, emptied, 0, SAVED) as reader,
        pytest.raises(LostOffsetsError) as info,
    ):
        read_until(reader, lambda _: False)
    assert LOST_AFTER_S <= time.monotonic() - began < NOTICE_S
    assert str(info.value) == lost_line(emptied, urls.kafka_bootstrap, SAVED, 3)


def test_lost_offsets_earliest_reads_the_partition_again(
    urls: StackUrls, emptied: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "connectors.kafka"),
        PartitionReader(
            urls.kafka_bootstrap, emptied, 0, SAVED, on_lost_offsets="earliest"
        ) as reader,
    ):
        records = read_until(reader, lambda got: reader.at_end and len(got) >= 3)
        assert reader.next_offset == 3
    assert [(r.offset, r.value) for r in records] == [(0, b"new-0"), (1, b"new-1"), (2, b"new-2")]
    (warning,) = warnings_of(caplog, "connectors.kafka")
    assert warning.endswith("on_lost_offsets = earliest: reading on from offset 0")


def test_lost_offsets_latest_goes_on_from_the_end(
    urls: StackUrls, emptied: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "connectors.kafka"),
        PartitionReader(
            urls.kafka_bootstrap, emptied, 0, SAVED, on_lost_offsets="latest"
        ) as reader,
    ):
        assert read_until(reader, lambda _: reader.next_offset == 3 and reader.at_end) == []
        produce(urls.kafka_bootstrap, emptied, [b"after"])
        records = read_until(reader, lambda got: bool(got))
    assert [(r.offset, r.value) for r in records] == [(3, b"after")]
    (warning,) = warnings_of(caplog, "connectors.kafka")
    assert warning.endswith("on_lost_offsets = latest: reading on from offset 3")


def test_broker_emptied_under_a_running_reader_is_lost_offsets(
    servers: EmbeddedStack, urls: StackUrls
) -> None:
    topic = f"running.{uuid.uuid4().hex[:8]}"
    create_topics(urls.kafka_bootstrap, [TopicSpec(topic, 1)])
    produce(urls.kafka_bootstrap, topic, [b"old-%d" % i for i in range(SAVED)])
    with PartitionReader(urls.kafka_bootstrap, topic, 0, None) as reader:
        assert len(read_until(reader, lambda got: reader.at_end and len(got) == SAVED)) == SAVED
        empty_the_broker(servers, [topic], [b"new-0", b"new-1"])
        with pytest.raises(LostOffsetsError) as info:
            read_until(reader, lambda _: False)
    assert str(info.value) == lost_line(topic, urls.kafka_bootstrap, SAVED, 2)


def test_idle_partitions_are_never_lost(urls: StackUrls) -> None:
    empty, caught_up = (f"idle.{uuid.uuid4().hex[:8]}" for _ in range(2))
    create_topics(urls.kafka_bootstrap, [TopicSpec(empty, 1), TopicSpec(caught_up, 1)])
    produce(urls.kafka_bootstrap, caught_up, [b"a", b"b"])
    with (
        PartitionReader(urls.kafka_bootstrap, empty, 0, None) as at_start,
        PartitionReader(urls.kafka_bootstrap, caught_up, 0, 2) as at_end,
    ):
        deadline = time.monotonic() + LOST_AFTER_S + 0.5
        while time.monotonic() < deadline:
            assert at_start.next_batch() == [] and at_end.next_batch() == []
        assert at_start.at_end and at_end.at_end
        assert (at_start.next_offset, at_end.next_offset) == (0, 2)


class KafkaOutOfRange:
    """The reader's consumer, except that its first answer is Apache Kafka's to a fetch past
    the end with auto.offset.reset=error; Tansu never sends it."""

    def __init__(self, consumer: Any, topic: str, offset: int) -> None:
        self._consumer = consumer
        self._event: list[Message] = [
            Message(
                topic=topic,
                partition=0,
                offset=offset,
                error=KafkaError(
                    KafkaError._AUTO_OFFSET_RESET,
                    "fetch failed due to requested offset not available on the broker: "
                    "Broker: Offset out of range (broker 1)",
                ),
            )
        ]

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        if self._event:
            event, self._event = self._event, []
            return event
        return list(self._consumer.consume(num_messages, timeout))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def test_kafka_offset_out_of_range_is_lost_offsets(
    urls: StackUrls, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"range.{uuid.uuid4().hex[:8]}"
    create_topics(urls.kafka_bootstrap, [TopicSpec(topic, 1)])
    for value in (b"r-0", b"r-1", b"r-2"):  # one batch each: Tansu lists the end as 3 then
        produce(urls.kafka_bootstrap, topic, [value])
    began = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, "connectors.kafka"),
        PartitionReader(
            urls.kafka_bootstrap, topic, 0, SAVED, on_lost_offsets="earliest"
        ) as reader,
    ):
        reader._consumer = KafkaOutOfRange(reader._consumer, topic, SAVED)  # type: ignore[assignment]
        records = read_until(reader, lambda got: len(got) >= 3)
    assert time.monotonic() - began < LOST_AFTER_S  # the event, not the watermark, told
    assert [r.value for r in records] == [b"r-0", b"r-1", b"r-2"]
    (warning,) = warnings_of(caplog, "connectors.kafka")
    assert "the saved offset 10 is past the partition's end 3" in warning


# ---------------------------------------------------------------- the whole job


def job_settings_on(urls: StackUrls, tmp_path: Path, **sections: Any) -> Settings:
    """The job on this module's servers, with the small budgets, its own topics."""
    prefix = f"d{uuid.uuid4().hex[:6]}"
    topics = Topics.prefixed(prefix)
    settings = load_settings(
        None,
        kafka_bootstrap_servers=urls.kafka_bootstrap,
        database_url=urls.database_url,
        redis_url=urls.redis_url,
        topics=topics,
        partitions={"market": 1, "reference": 1, "feedback": 1, "outputs": 1},
        engine={"shard_count": 2, "user_shard_count": 2},
        recovery={"directory": str(tmp_path / "recovery"), "snapshot_seconds": 0.5},
        dependencies=DEPENDENCIES.model_dump(),
        **sections,
    )
    topics_create(settings, echo=lambda _: None)
    return settings


def send_ticks(settings: Settings, user: str, prices: list[float]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    rule = {
        "v": 1, "id": "r-dep", "user_id": user, "name": "over 100", "symbol": "DEP",
        "cooldown_seconds": 0, "conditions": {"type": "price_crosses_above", "threshold": 100},
    }  # fmt: skip
    now = datetime.now(UTC)
    ticks = [
        {"v": 1, "symbol": "DEP", "price": p, "ts": (now - timedelta(seconds=9 - i)).isoformat()}
        for i, p in enumerate(prices)
    ]
    producer.write_batch(
        [OutgoingRecord(settings.topics.rules, b"r-dep", json.dumps(rule).encode())]
        + [OutgoingRecord(settings.topics.ticks, b"DEP", json.dumps(t).encode()) for t in ticks]
    )
    producer.close()


def alerts_stored(database_url: str, user: str) -> int:
    with psycopg.connect(database_url) as conn:
        return conn.execute(
            "SELECT count(*) FROM triggered_alerts WHERE user_external_id = %s", (user,)
        ).fetchone()[0]


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_the_job_stops_with_one_line_when_postgres_stays_down(
    servers: EmbeddedStack, urls: StackUrls, tmp_path: Path
) -> None:
    settings, user = job_settings_on(urls, tmp_path), f"u-{uuid.uuid4().hex[:6]}"
    send_ticks(settings, user, [99, 101])
    job = start_cli(settings)
    try:
        wait_for(lambda: alerts_stored(urls.database_url, user) == 1, 60, "the alert stored")
        servers.stop_server("postgres")
        stopped = time.monotonic()
        send_ticks(settings, user, [99, 101.5])  # an alert to store while PostgreSQL is down
        _, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 3
    assert time.monotonic() - stopped < 20
    assert re.fullmatch(
        r"smart-alerts: stopped: PostgreSQL at [^ ]+ did not answer: tried \d+ times over "
        r"[\d.]+ s; last error: .+",
        last_line(stderr),
    ), last_line(stderr)


def test_the_job_stops_with_one_line_when_the_broker_comes_back_empty(
    servers: EmbeddedStack, urls: StackUrls, tmp_path: Path
) -> None:
    settings, user = job_settings_on(urls, tmp_path), f"u-{uuid.uuid4().hex[:6]}"
    send_ticks(settings, user, [99, 101, 99, 101])
    first = start_cli(settings)
    try:
        wait_for(lambda: alerts_stored(urls.database_url, user) == 2, 60, "the alerts stored")
        first.send_signal(signal.SIGTERM)  # a snapshot at the end of what it read
        assert first.wait(30) == 0
    finally:
        first.kill()
    empty_the_broker(servers, list(settings.topics.model_dump().values()), [])
    _, stderr = start_cli(settings).communicate(timeout=60)
    assert re.fullmatch(
        r"smart-alerts: stopped: Kafka \S+\[0\] on \S+: the saved offset \d+ is past the "
        r"partition's end 0 \(the broker lost its data or the topic was recreated\); set "
        r'\[recovery\] on_lost_offsets = "earliest" or "latest" and restart',
        last_line(stderr),
    ), last_line(stderr)
