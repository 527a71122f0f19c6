"""The stores and the producer the API's routes share, opened once per process.

PostgreSQL through a psycopg connection pool, Redis (sync for requests, asyncio for the live
streams), and one checked Kafka producer. Its ``write_batch`` waits for the broker's
acknowledgement of the whole batch, so concurrent requests take turns on it (a lock); with
``linger.ms`` 0 a turn is one broker round trip.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis
import redis.asyncio as aioredis
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from api.problems import Problem
from pipeline.config import Settings
from pipeline.messages import Message, message_key
from sinks.kafka import CheckedProducer, KafkaDeliveryError, OutgoingRecord
from sinks.redis_store import InAppFeed


@dataclass
class Services:
    settings: Settings
    pool: ConnectionPool
    redis: redis.Redis
    aioredis: aioredis.Redis
    feed: InAppFeed
    producer: CheckedProducer
    _produce_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> Services:
        bootstrap, database_url, redis_url = settings.require_servers()
        timeout = settings.dependencies.connect_timeout_seconds
        pool = ConnectionPool(
            database_url,
            min_size=1,
            max_size=16,
            kwargs={"autocommit": False, "connect_timeout": max(1, int(timeout))},
            timeout=timeout,
            open=False,
            name="smart-alerts-api",
        )
        pool.open(wait=False)
        redis_timeout = settings.dependencies.redis_timeout_seconds
        return cls(
            settings=settings,
            pool=pool,
            redis=redis.Redis.from_url(
                redis_url, decode_responses=True, socket_timeout=redis_timeout
            ),
            aioredis=aioredis.Redis.from_url(
                redis_url, decode_responses=True, socket_timeout=redis_timeout
            ),
            feed=InAppFeed(
                redis_url, maxlen=settings.in_app.stream_maxlen, dependencies=settings.dependencies
            ),
            producer=CheckedProducer(
                bootstrap, flush_timeout_s=10.0, extra_config={"linger.ms": 0}
            ),
        )

    def close(self) -> None:
        self.producer.close()
        self.feed.close()
        self.redis.close()
        self.pool.close()

    async def aclose(self) -> None:
        await self.aioredis.aclose()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection in one transaction (committed when the block ends cleanly),
        rows as dicts; an unreachable database is a 503 problem."""
        try:
            with self.pool.connection() as conn:
                conn.row_factory = dict_row  # type: ignore[assignment]
                with conn.transaction():
                    yield conn  # type: ignore[misc]
        except PoolTimeout as exc:
            raise Problem(
                503, f"PostgreSQL is unreachable: {exc}", kind="dependency-unavailable"
            ) from exc
        except psycopg.OperationalError as exc:
            raise Problem(
                503,
                f"PostgreSQL failed: {str(exc).strip().splitlines()[0]}",
                kind="dependency-unavailable",
            ) from exc

    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Write messages to a topic, keyed per the topic contract; a 503 problem unless the
        broker acknowledged every one."""
        self.publish_records(
            [OutgoingRecord(topic, message_key(m).encode(), m.to_json()) for m in messages]
        )

    def publish_records(self, records: list[OutgoingRecord]) -> None:
        try:
            with self._produce_lock:
                self.producer.write_batch(records)
        except KafkaDeliveryError as exc:
            raise Problem(503, str(exc), kind="dependency-unavailable") from exc
