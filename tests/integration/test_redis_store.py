"""Relevance scores and the in-app feed against a real Redis."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from pipeline.config import Dependencies
from pipeline.messages import Channel, Notification, Priority
from pipeline.personalize.learning import RelevanceScore
from sinks.redis_store import (
    InAppFeed,
    RedisUnavailableError,
    RelevanceStore,
    feed_key,
    live_channel,
    relevance_key,
    seen_key,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 14, 30, 0, 125000, tzinfo=UTC)


@pytest.fixture(scope="module")
def redis_url(stack) -> str:  # type: ignore[no-untyped-def]
    return str(stack.redis_url)


@pytest.fixture()
def raw(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def notification(user_id: str, n: int = 1, **changes: object) -> Notification:
    fields: dict[str, object] = {
        "notification_id": f"n-{user_id}-{n}",
        "user_id": user_id,
        "alert_ids": [f"a-{n}", f"b-{n}"],
        "title": f"AAPL crossed 200 ({n})",
        "message": "AAPL crossed above 200.00 at 200.10; ünïcode ✓",
        "highest_priority": Priority.HIGH,
        "channels": [Channel.IN_APP, Channel.PUSH],
        "window_start": T0 + timedelta(minutes=n),
        "window_end": T0 + timedelta(minutes=n + 1),
    }
    fields.update(changes)
    return Notification.model_validate(fields)


# ---------------------------------------------------------------- relevance


def test_relevance_round_trip_and_layout(redis_url: str, raw: redis.Redis) -> None:
    store = RelevanceStore(redis_url)
    u1, u2 = user(), user()
    store.write_batch(
        [
            RelevanceScore(u1, "symbol", "AAPL", 0.62, T0),
            RelevanceScore(u1, "symbol", "TSLA", 1e-05, T0),
            RelevanceScore(u2, "symbol", "AAPL", 0.1 + 0.2, T0),
            RelevanceScore(u1, "symbol", "AAPL", 0.7, T0 + timedelta(seconds=1)),  # later wins
        ]
    )
    assert store.read(u1) == {"symbol:AAPL": 0.7, "symbol:TSLA": 1e-05}
    assert store.read(u2) == {"symbol:AAPL": 0.1 + 0.2}  # exact round trip
    assert store.read(user()) == {}
    assert store.read_updated_at(u1) == {
        "symbol:AAPL": "2026-01-05T14:30:01.125Z",
        "symbol:TSLA": "2026-01-05T14:30:00.125Z",
    }
    # The documented layout, read without our code: plain decimal strings, RFC 3339 times.
    assert raw.hgetall(relevance_key(u1)) == {
        "symbol:AAPL": "0.7",
        "updated_at:symbol:AAPL": "2026-01-05T14:30:01.125Z",
        "symbol:TSLA": "0.00001",
        "updated_at:symbol:TSLA": "2026-01-05T14:30:00.125Z",
    }
    assert raw.hget(f"sa:relevance:{u2}", "symbol:AAPL") == "0.30000000000000004"
    store.write_batch([])


def test_relevance_is_generic_over_dimension(redis_url: str, raw: redis.Redis) -> None:
    store = RelevanceStore(redis_url)
    u = user()
    store.write_batch([RelevanceScore(u, "condition_type", "price_crosses_above", 0.0, T0)])
    assert store.read(u) == {"condition_type:price_crosses_above": 0.0}
    assert raw.hget(relevance_key(u), "condition_type:price_crosses_above") == "0.0"


def test_symbol_and_condition_type_scores_side_by_side(redis_url: str, raw: redis.Redis) -> None:
    # What one feedback produces: the symbol score and one score per condition type of the
    # alert, in one hash, each with its own update time; an OCC symbol keeps its spaces.
    store = RelevanceStore(redis_url)
    u = user()
    later = T0 + timedelta(days=3)
    store.write_batch(
        [
            RelevanceScore(u, "symbol", "AAPL  260117C00200000", 0.6, T0),
            RelevanceScore(u, "condition_type", "price_crosses_above", 0.6, T0),
            RelevanceScore(u, "condition_type", "rsi_above", 0.6, T0),
            RelevanceScore(u, "condition_type", "price_crosses_above", 0.42, later),
        ]
    )
    assert store.read(u) == {
        "symbol:AAPL  260117C00200000": 0.6,
        "condition_type:price_crosses_above": 0.42,
        "condition_type:rsi_above": 0.6,
    }
    assert store.read_updated_at(u) == {
        "symbol:AAPL  260117C00200000": "2026-01-05T14:30:00.125Z",
        "condition_type:price_crosses_above": "2026-01-08T14:30:00.125Z",
        "condition_type:rsi_above": "2026-01-05T14:30:00.125Z",
    }
    assert raw.hget(relevance_key(u), "updated_at:condition_type:rsi_above") == (
        "2026-01-05T14:30:00.125Z"
    )


def test_relevance_rejects_non_finite(redis_url: str) -> None:
    store = RelevanceStore(redis_url)
    with pytest.raises(ValueError, match="finite"):
        store.write_batch([RelevanceScore(user(), "symbol", "X", float("nan"), T0)])


# ---------------------------------------------------------------- in-app feed


def test_publish_twice_gives_one_entry(redis_url: str, raw: redis.Redis) -> None:
    feed = InAppFeed(redis_url)
    u = user()
    note = notification(u)

    entry_id = feed.publish(note)
    assert entry_id is not None and "-" in entry_id
    assert feed.publish(note) is None

    entries = feed.entries(u)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["entry_id"] == entry_id
    assert entry["notification_id"] == note.notification_id
    assert entry["title"] == note.title
    assert entry["message"] == note.message
    assert entry["highest_priority"] == "HIGH"
    assert json.loads(entry["alert_ids"]) == ["a-1", "b-1"]
    assert entry["window_start"] == "2026-01-05T14:31:00.125Z"
    assert entry["window_end"] == "2026-01-05T14:32:00.125Z"
    assert Notification.model_validate_json(entry["json"]) == note
    # Readable without our code, under the documented keys.
    assert raw.xlen(feed_key(u)) == 1
    assert raw.smembers(seen_key(u)) == {note.notification_id}


def test_publish_batch_is_idempotent_and_ordered(redis_url: str) -> None:
    feed = InAppFeed(redis_url)
    u, other = user(), user()
    batch = [notification(u, n) for n in range(5)] + [notification(other, 9)]
    first = feed.publish_batch(batch)
    assert all(result is not None for result in first)
    # A replay of an overlapping batch adds only what is new, in order.
    replay = feed.publish_batch([*batch[3:], notification(u, 5), batch[0]])
    assert [r is None for r in replay] == [True, True, True, False, True]
    assert [e["notification_id"] for e in feed.entries(u)] == [f"n-{u}-{n}" for n in range(6)]
    assert [e["notification_id"] for e in feed.entries(other)] == [f"n-{other}-9"]
    assert feed.publish_batch([]) == []


def test_feed_is_capped(redis_url: str, raw: redis.Redis) -> None:
    feed = InAppFeed(redis_url, maxlen=10)
    u = user()
    feed.publish_batch([notification(u, n) for n in range(300)])
    length = raw.xlen(feed_key(u))
    assert 10 <= length < 300  # MAXLEN ~ trims whole macro nodes (about 100 entries)
    newest = feed.entries(u)[-1]
    assert newest["notification_id"] == f"n-{u}-299"


def test_subscriber_receives_the_live_publish(redis_url: str, raw: redis.Redis) -> None:
    feed = InAppFeed(redis_url)
    u = user()
    pubsub = raw.pubsub()
    pubsub.subscribe(live_channel(u))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # type: ignore[index]
    received: list[str] = []

    def listen() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(received) < 2:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                received.append(message["data"])

    listener = threading.Thread(target=listen)
    listener.start()
    note = notification(u, 1)
    feed.publish(note)
    feed.publish(note)  # a duplicate is not published again
    feed.publish(notification(u, 2))
    listener.join()
    pubsub.close()
    assert [Notification.model_validate_json(data) for data in received] == [
        note,
        notification(u, 2),
    ]


# ---------------------------------------------------------------- errors


def test_unreachable_redis_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    brief = Dependencies(retry_for_seconds=1)  # an unreachable server is waited for this long
    started = time.monotonic()
    with pytest.raises(RedisUnavailableError, match=rf"127\.0\.0\.1:{port}") as info:
        RelevanceStore(f"redis://:s3cret@127.0.0.1:{port}/0", brief)
    assert "s3cret" not in str(info.value)
    with pytest.raises(RedisUnavailableError):
        InAppFeed(f"redis://127.0.0.1:{port}/0", dependencies=brief)
    assert time.monotonic() - started < 30


def test_feed_entries_move_forward_through_seen_read_archived(redis_url: str) -> None:
    from datetime import UTC, datetime

    from sinks.redis_store import InAppFeed

    feed = InAppFeed(redis_url)
    user = f"u-state-{uuid.uuid4().hex[:8]}"
    first, second = (notification(user, i) for i in (1, 2))
    feed.publish(first)
    feed.publish(second)
    at = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    pubsub = redis.Redis.from_url(redis_url, decode_responses=True).pubsub()
    pubsub.subscribe(f"sa:inapp:live:{user}")
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    assert feed.unread(user) == 2
    assert feed.mark(user, first.notification_id, "read", at)
    assert not feed.mark(user, first.notification_id, "seen", at)  # never backwards
    assert feed.mark(user, first.notification_id, "archived", at)
    assert feed.mark(user, second.notification_id, "seen", at)
    assert feed.states(user) == {first.notification_id: "archived", second.notification_id: "seen"}
    assert feed.unread(user) == 1
    message = pubsub.get_message(timeout=2.0)
    assert message is not None and json.loads(message["data"]) == {
        "notification_id": first.notification_id,
        "state": "read",
    }
    with pytest.raises(ValueError, match="state must be one of"):
        feed.mark(user, first.notification_id, "deleted", at)
