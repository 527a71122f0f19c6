"""Event time across partitions and processes, on the real embedded stack.

One workload for every test: 20 rules on 5 symbols for 4 users whose profiles send to the
in-app feed and a signed webhook; ticks in 2 market partitions whose event times run at
different speeds (partition 0 holds two symbols every 2 s, partition 1 three symbols every 6 s,
read in small batches), so the partitions' readers are minutes apart in event time all along.

What must hold, in 1 process, in 2 processes, and after kill -9 at random moments with recovery
on: every alert is NOTIFIED in exactly one notification, every notification appears exactly
once in its user's in-app feed and once (by webhook-id) at the webhook receiver, no window
needed a follow-up, and the runs agree exactly.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.config import Settings
from pipeline.dataflow import run
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.redis_store import InAppFeed
from tests.conftest import (
    PUSH_OLD_ALERTS,
    WEBHOOK_SECRET_REF,
    fresh_database,
    job_settings,
    start_processes,
    wait_all,
    wait_for,
)
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.test_shutdown import start_cli

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
MINUTES = 40
FAST, SLOW = ["AAA", "BBB"], ["CCC", "DDD", "EEE"]  # partition 0, partition 1


@dataclass(frozen=True)
class Workload:
    users: list[str]
    settings: Settings  # the input topics, and the reference run's outputs and stores


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def price(symbol: str, seconds: float) -> float:
    period = 240 + 60 * (sum(map(ord, symbol)) % 5)
    return round(100 + 2 * math.sin(2 * math.pi * seconds / period), 3)


def base_settings(stack: StackUrls, database_url: str, **engine: Any) -> Settings:
    return job_settings(
        stack,
        database_url,
        partitions={"market": 2, "reference": 2, "feedback": 1, "outputs": 2},
        engine={"shard_count": 8, "user_shard_count": 4, "batch_size": 150, **engine},
        personalization=PUSH_OLD_ALERTS,
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "timeout_seconds": 5,
            "per_user_per_minute": 1000,  # every notification goes within the run
        },
    )


def produce_workload(settings: Settings, receiver: WebhookReceiver) -> list[str]:
    t, tag = settings.topics, uuid.uuid4().hex[:6]
    users = [f"u{i}-{tag}" for i in range(4)]
    rules = []
    for i, user in enumerate(users):
        for j, symbol in enumerate(FAST + SLOW):
            kind = "price_crosses_above" if (i + j) % 2 else "price_crosses_below"
            rules.append(
                {
                    "v": 1,
                    "id": f"r-{user}-{symbol}",
                    "user_id": user,
                    "name": f"{symbol} {kind}",
                    "symbol": symbol,
                    "priority": ["MEDIUM", "HIGH", "MEDIUM", "LOW", "CRITICAL"][(i + j) % 5],
                    "cooldown_seconds": 0,
                    "conditions": {"type": kind, "threshold": 100 + 0.5 * (i % 3)},
                }
            )
    channels = ["in_app", "webhook"]
    profiles = [
        {
            "v": 1,
            "user_id": user,
            "channels": {p: channels for p in ("LOW", "MEDIUM", "HIGH", "CRITICAL")},
            "destinations": {
                "webhook": {"url": f"{receiver.url}/hooks/{user}", "secret_ref": WEBHOOK_SECRET_REF}
            },
        }
        for user in users
    ]
    ticks: list[tuple[int, dict[str, Any]]] = []
    for partition, symbols, step in ((0, FAST, 2), (1, SLOW, 6)):
        for second in range(0, MINUTES * 60, step):
            for symbol in symbols:
                tick = {
                    "v": 1,
                    "symbol": symbol,
                    "ts": iso(T0 + timedelta(seconds=second)),
                    "price": price(symbol, second),
                }
                ticks.append((partition, tick))
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch(
        [OutgoingRecord(t.rules, r["id"].encode(), json.dumps(r).encode()) for r in rules]
        + [
            OutgoingRecord(t.profiles, p["user_id"].encode(), json.dumps(p).encode())
            for p in profiles
        ]
        + [
            OutgoingRecord(t.ticks, tick["symbol"].encode(), json.dumps(tick).encode(), partition)
            for partition, tick in ticks
        ]
    )
    producer.close()
    return users


@pytest.fixture
def workload(stack: StackUrls, database_url: str, receiver: WebhookReceiver) -> Workload:
    settings = base_settings(stack, database_url)
    return Workload(produce_workload(settings, receiver), settings)


def other_run(workload: Workload, database_url: str, redis_db: int, **engine: Any) -> Settings:
    """The same input topics; outputs, database and Redis of its own."""
    settings = workload.settings
    prefix = f"o{uuid.uuid4().hex[:6]}"
    topics = settings.topics.model_copy(
        update={
            "triggered": f"{prefix}.alerts.triggered",
            "notifications": f"{prefix}.alerts.notifications",
            "dlq": f"{prefix}.alerts.dlq",
        }
    )
    redis_url = settings.redis_url.rsplit("/", 1)[0] + f"/{redis_db}"  # type: ignore[union-attr]
    other = settings.model_copy(
        update={
            "topics": topics,
            "database_url": database_url,
            "redis_url": redis_url,
            "engine": settings.engine.model_copy(update=engine),
        }
    )
    commands.topics_create(other, echo=lambda _: None)
    return other


# ---------------------------------------------------------------- running jobs in processes

# ---------------------------------------------------------------- what a run left behind


@dataclass(frozen=True)
class Result:
    alerts: frozenset[str]
    notifications: dict[str, tuple[str, ...]]  # id -> its alert ids
    follow_ups: int
    feed: dict[str, Counter[str]]  # user -> notification ids in the feed
    webhooks: Counter[str]  # notification id -> distinct webhook-ids received
    outcomes: dict[str, str]


def result(settings: Settings, users: list[str], receiver: WebhookReceiver) -> Result:
    t = settings.topics
    alerts = frozenset(a["alert_id"] for a in commands_values(settings, t.triggered))
    published: dict[str, tuple[str, ...]] = {}
    follow_ups = 0
    for note in commands_values(settings, t.notifications):
        ids = tuple(sorted(note["alert_ids"]))
        assert published.setdefault(note["notification_id"], ids) == ids  # one content per id
        follow_ups += "follow_up_of" in note
    feed = {
        user: Counter(e["notification_id"] for e in InAppFeed(settings.redis_url).entries(user))
        for user in users
    }
    hooks: dict[str, set[str]] = {}
    for request in receiver.received:
        assert request.verified_by == (0,)
        body = json.loads(request.body)
        hooks.setdefault(body["notification_id"], set()).add(request.headers["webhook-id"])
    with psycopg.connect(settings.database_url) as conn:
        outcomes = dict(
            conn.execute(
                "SELECT alert_external_id, status FROM alert_outcomes "
                "WHERE user_external_id = ANY(%s)",
                (users,),
            ).fetchall()
        )
    return Result(
        alerts,
        published,
        follow_ups,
        feed,
        Counter({nid: len(ids) for nid, ids in hooks.items()}),
        outcomes,
    )


def commands_values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    records = commands.read_topic(settings.require_servers()[0], topic)
    return [json.loads(r.value) for r in records if r.value]


def assert_every_alert_reached_its_user_once(result: Result) -> None:
    assert len(result.alerts) > 100, "the workload should trigger many alerts"
    assert result.outcomes.keys() == result.alerts
    assert set(result.outcomes.values()) == {"NOTIFIED"}
    in_notifications = Counter(a for ids in result.notifications.values() for a in ids)
    assert set(in_notifications) == result.alerts
    assert set(in_notifications.values()) == {1}, "an alert in more than one notification"
    assert result.follow_ups == 0, "a window closed before all its alerts were in"
    feed = Counter()
    for entries in result.feed.values():
        feed.update(entries)
    assert feed == Counter(dict.fromkeys(result.notifications, 1))
    assert result.webhooks == Counter(dict.fromkeys(result.notifications, 1))


def same_outcome(a: Result, b: Result) -> None:
    assert a.alerts == b.alerts
    assert a.notifications == b.notifications
    assert a.feed == b.feed
    assert a.webhooks == b.webhooks
    assert a.outcomes == b.outcomes


# ---------------------------------------------------------------- the tests


def test_skewed_partitions_in_one_and_two_processes_agree_and_lose_nothing(
    stack: StackUrls, workload: Workload, receiver: WebhookReceiver
) -> None:
    run(workload.settings, bounded=True)
    one = result(workload.settings, workload.users, receiver)
    assert_every_alert_reached_its_user_once(one)

    receiver.received.clear()
    with fresh_database(stack, "two_processes") as database_url:
        settings = other_run(workload, database_url, redis_db=1)
        assert wait_all(start_processes(settings, 2), 240) == [0, 0]
        two = result(settings, workload.users, receiver)
    assert_every_alert_reached_its_user_once(two)
    same_outcome(one, two)


def test_kill_minus_nine_at_random_moments_with_recovery_changes_nothing(
    stack: StackUrls, workload: Workload, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    run(workload.settings, bounded=True)
    reference = result(workload.settings, workload.users, receiver)

    receiver.received.clear()
    chance = random.Random(9)
    with fresh_database(stack, "chaos") as database_url:
        settings = other_run(workload, database_url, redis_db=2)
        settings = settings.model_copy(
            update={
                "recovery": settings.recovery.model_copy(
                    update={"directory": tmp_path / "recovery", "snapshot_seconds": 0.3}
                ),
                # A kill -9 mid-call leaves its row SENDING until the lease lapses: short here,
                # so that the last start resumes it (a stop releases it, test_shutdown.py).
                "delivery": settings.delivery.model_copy(update={"lease_seconds": 1.0}),
            }
        )
        kills = 0
        for _ in range(3):
            children = start_processes(settings, 2)
            time.sleep(chance.uniform(1.5, 4.5))  # start-up takes ~2 s, the whole run ~6 s
            if any(child.poll() is not None for child in children):
                assert wait_all(children, 60) == [0, 0]
                break
            for child in children:
                child.send_signal(signal.SIGKILL)
            wait_all(children, 30)
            kills += 1
        assert kills >= 1, "the job finished before any kill"
        # The last start comes after the lease of a call the last kill left under way has
        # lapsed, so that it resumes that call (a start within the lease leaves the row SENDING
        # for the next start, or for a live job's periodic resume scan).
        time.sleep(settings.delivery.lease_seconds)
        assert wait_all(start_processes(settings, 2), 240) == [0, 0]
        chaos = result(settings, workload.users, receiver)
    assert_every_alert_reached_its_user_once(chaos)
    same_outcome(reference, chaos)


def test_live_windows_close_by_the_watermark_while_ticks_flow_and_by_the_clock_when_quiet(
    stack: StackUrls, database_url: str
) -> None:
    settings = job_settings(
        stack,
        database_url,
        partitions={"market": 2, "reference": 1, "feedback": 1, "outputs": 1},
        engine={
            "shard_count": 4,
            "user_shard_count": 2,
            "window_seconds": 2,  # allowed lateness: 5 s, the default
            "idle_partition_seconds": 1,  # the empty market partition stops holding it back
        },
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:6]}"
    rule = {
        "v": 1, "id": "r-live", "user_id": user, "name": "over 100", "symbol": "LIVE",
        "cooldown_seconds": 0, "conditions": {"type": "price_crosses_above", "threshold": 100},
    }  # fmt: skip
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch([OutgoingRecord(t.rules, b"r-live", json.dumps(rule).encode())])
    base = datetime.now(UTC).replace(microsecond=0)

    def tick(price: float, second: float) -> OutgoingRecord:
        ts = iso(base + timedelta(seconds=second))
        value = {"v": 1, "symbol": "LIVE", "price": price, "ts": ts}
        return OutgoingRecord(t.ticks, b"LIVE", json.dumps(value).encode(), 0)

    def feed_size() -> int:
        return len(InAppFeed(settings.redis_url).entries(user))

    job = start_cli(settings)
    try:
        wait_for(lambda: job_ready(settings), 30, "the job to start reading")
        time.sleep(1.5)  # the empty partition goes idle
        # Ticks flow, their event time running 10x faster than the clock: the watermark passes
        # the window's end plus the lateness (7 s of event time) in well under a second.
        crossed, flowing = time.monotonic(), None
        producer.write_batch([tick(99, 0), tick(101, 0.5)])
        for step in range(1, 60):
            producer.write_batch([tick(99.5, step)])
            time.sleep(0.1)
            if flowing is None and feed_size() == 1:
                flowing = time.monotonic() - crossed
        # Then a lone crossing and silence: the input is caught up, and the window's wall-clock
        # deadline (2 s + 5 s after it opened) closes it.
        crossed = time.monotonic()
        producer.write_batch([tick(101.5, 120)])
        wait_for(lambda: feed_size() == 2, 20, "the lone window closed by the clock")
        quiet = time.monotonic() - crossed
    finally:
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=30)
        producer.close()
    assert job.returncode == 0
    assert flowing is not None and flowing < 3, flowing
    assert 6 < quiet < 12, quiet


def job_ready(settings: Settings) -> bool:
    """The job has read the rules (its outbox table is reachable and its reader is up)."""
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT count(*) FROM alert_rules").fetchone()[0] > 0
