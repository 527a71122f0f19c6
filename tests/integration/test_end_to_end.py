"""The whole dataflow on the real embedded broker, PostgreSQL and Redis.

Each test gets its own topics (a unique prefix), its own migrated database and its own user
ids, produces its inputs, runs the job to the end of its input and reads back every store.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.config import Settings
from pipeline.dataflow import run
from pipeline.ids import alert_id, notification_id, storage_uuid
from pipeline.messages import FeedbackAction, message_key
from pipeline.personalize.learning import DEFAULT_ALPHA, NEUTRAL_SCORE, REWARDS
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.redis_store import InAppFeed, RelevanceStore
from tests.conftest import job_settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def ts(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def settings(stack: StackUrls, database_url: str) -> Settings:
    return job_settings(
        stack,
        database_url,
        partitions={"market": 2, "reference": 1, "feedback": 1, "outputs": 2},
        engine={"shard_count": 8, "window_seconds": 60, "epoch_ms": 50},
    )


def produce(settings: Settings, topic: str, rows: list[dict[str, Any]]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    records = [
        OutgoingRecord(topic, _key(topic, row, settings).encode(), json.dumps(row).encode())
        for row in rows
    ]
    producer.write_batch(records)
    producer.close()


def produce_raw(settings: Settings, topic: str, key: bytes, value: bytes | None) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch([OutgoingRecord(topic, key, value, partition=0)])
    producer.close()


def _key(topic: str, row: dict[str, Any], settings: Settings) -> str:
    from pipeline.cli.commands import INPUT_MODELS

    for name, model in INPUT_MODELS.items():
        if getattr(settings.topics, name) == topic:
            return message_key(model.model_validate(row))
    raise AssertionError(topic)


def topic_values(settings: Settings, topic: str) -> list[dict[str, Any]]:
    records = commands.read_topic(settings.require_servers()[0], topic)
    return [json.loads(r.value) for r in records if r.value]


def rule(rule_id: str, user: str, symbol: str, conditions: dict[str, Any], **extra: Any) -> dict:
    return {
        "v": 1,
        "id": rule_id,
        "version": 1,
        "user_id": user,
        "name": f"{rule_id} name",
        "symbol": symbol,
        "cooldown_seconds": 0,
        "conditions": conditions,
        **extra,
    }


def tick(symbol: str, price: float, seconds: float) -> dict[str, Any]:
    return {"v": 1, "symbol": symbol, "ts": ts(seconds), "price": price}


def test_alerts_notifications_scores_and_feed_end_to_end(settings: Settings) -> None:
    t = settings.topics
    alice, bob = f"u-alice-{uuid.uuid4().hex[:6]}", f"u-bob-{uuid.uuid4().hex[:6]}"
    produce(
        settings,
        t.rules,
        [
            rule(
                "r-breakout",
                alice,
                "AAPL",
                {"type": "price_crosses_above", "threshold": 200},
                priority="HIGH",
            ),
            rule(
                "r-stop",
                bob,
                "TSLA",
                {"type": "price_below", "threshold": 395},
                priority="CRITICAL",
                mode="once",
            ),
        ],
    )
    produce(
        settings,
        t.profiles,
        [{"v": 1, "user_id": alice, "channels": {"HIGH": ["in_app", "push"]}}],
    )
    produce(
        settings,
        t.feedback,
        [
            {
                "v": 1,
                "user_id": alice,
                "alert_id": "earlier",
                "action": "acted",
                "ts": ts(-60),
                "symbol": "AAPL",
            }
        ],
    )
    produce(
        settings,
        t.ticks,
        [
            tick("AAPL", 199.0, 0),
            tick("TSLA", 401.0, 0),
            tick("AAPL", 200.5, 10),  # crosses above 200
            tick("AAPL", 199.5, 20),
            tick("AAPL", 201.0, 30),  # crosses again, same window
            tick("TSLA", 394.0, 40),  # CRITICAL, once
            tick("TSLA", 390.0, 50),
            tick("AAPL", 198.0, 130),
        ],
    )

    run(settings, bounded=True)

    expected_ids = {
        alert_id("r-breakout", 1, T0 + timedelta(seconds=10), "AAPL"),
        alert_id("r-breakout", 1, T0 + timedelta(seconds=30), "AAPL"),
        alert_id("r-stop", 1, T0 + timedelta(seconds=40), "TSLA"),
    }

    # PostgreSQL history: exactly the three alerts, with their rules' wire ids.
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            """SELECT t.id::text, r.external_id, t.symbol, t.priority, t.triggered_at, t.message
               FROM triggered_alerts t JOIN alert_rules r ON r.id = t.rule_id
               WHERE t.user_external_id = ANY(%s)
               ORDER BY t.triggered_at""",
            ([alice, bob],),
        ).fetchall()
        assert {row[0] for row in rows} == expected_ids
        assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
            ("r-breakout", "AAPL", "HIGH", T0 + timedelta(seconds=10)),
            ("r-breakout", "AAPL", "HIGH", T0 + timedelta(seconds=30)),
            ("r-stop", "TSLA", "CRITICAL", T0 + timedelta(seconds=40)),
        ]
        assert rows[0][5] == "price crossed above 200.00, from 199.00 to 200.50"
        notes = conn.execute(
            "SELECT id::text, user_external_id, array_length(alert_ids, 1), highest_priority "
            "FROM consolidated_alerts WHERE user_external_id = ANY(%s) ORDER BY window_start",
            ([alice, bob],),
        ).fetchall()
        deliveries = conn.execute(
            "SELECT notification_id::text, channel, status FROM delivery_logs "
            "WHERE notification_id::text = ANY(%s) ORDER BY 1",
            ([n[0] for n in notes],),
        ).fetchall()

    window_note = notification_id(alice, T0)
    assert sorted(notes) == sorted(
        [
            (window_note, alice, 2, "HIGH"),
            (
                notification_id(
                    bob,
                    T0 + timedelta(seconds=40),
                    kind=f"critical|{alert_id('r-stop', 1, T0 + timedelta(seconds=40), 'TSLA')}",
                ),
                bob,
                1,
                "CRITICAL",
            ),
        ]
    )
    in_app = [d for d in deliveries if d[1] == "in_app"]
    assert sorted(in_app) == sorted((n[0], "in_app", "DELIVERED") for n in notes)
    # HIGH also goes to push, but alice's profile has no push token: recorded FAILED, not lost.
    assert [d for d in deliveries if d[1] != "in_app"] == [(window_note, "push", "FAILED")]

    # Kafka outputs.
    triggered = topic_values(settings, t.triggered)
    assert {a["alert_id"] for a in triggered} == expected_ids
    assert all(a["v"] == 1 for a in triggered)
    notifications = {n["notification_id"]: n for n in topic_values(settings, t.notifications)}
    assert notifications[window_note]["channels"] == ["in_app", "push"]
    assert notifications[window_note]["title"] == "2 alerts: AAPL"
    assert len(notifications[window_note]["alert_ids"]) == 2
    assert topic_values(settings, t.dlq) == []

    # Redis: the relevance score the formula gives, and one feed entry per notification.
    acted = REWARDS[FeedbackAction.ACTED]
    assert acted is not None
    expected_score = (1 - DEFAULT_ALPHA) * NEUTRAL_SCORE + DEFAULT_ALPHA * acted
    scores = RelevanceStore(settings.redis_url).read(alice)
    assert scores["symbol:AAPL"] == pytest.approx(expected_score)
    entries = InAppFeed(settings.redis_url).entries(alice)
    assert [e["notification_id"] for e in entries] == [window_note]
    assert str(storage_uuid("rule", "r-breakout"))  # the mapping analysts join on


def test_malformed_messages_go_to_the_dlq_and_later_ones_still_flow(settings: Settings) -> None:
    t = settings.topics
    user = f"u-{uuid.uuid4().hex[:6]}"
    produce(
        settings, t.rules, [rule("r-1", user, "AAPL", {"type": "price_above", "threshold": 10})]
    )
    produce_raw(settings, t.ticks, b"AAPL", b"{not json")
    produce_raw(settings, t.ticks, b"AAPL", json.dumps(tick("AAPL", -5, 1)).encode())
    produce_raw(settings, t.rules, b"r-2", b'{"id": "r-2", "conditions": {"type": "nope"}}')
    produce(settings, t.ticks, [tick("AAPL", 11, 2)])

    run(settings, bounded=True)

    letters = topic_values(settings, t.dlq)
    assert sorted((d["source_topic"], d["offset"]) for d in letters) == sorted(
        [(t.ticks, 0), (t.ticks, 1), (t.rules, 1)]
    )
    by_value = {d["value"]: d for d in letters}
    assert by_value["{not json"]["error"].startswith("not JSON")
    assert (
        "price: Input should be greater than 0"
        in [d["error"] for d in letters if d["source_topic"] == t.ticks and d["offset"] == 1][0]
    )
    assert all(d["partition"] == 0 for d in letters)
    alerts = topic_values(settings, t.triggered)
    assert [a["alert_id"] for a in alerts] == [
        alert_id("r-1", 1, T0 + timedelta(seconds=2), "AAPL")
    ]


def test_running_the_same_input_twice_writes_nothing_twice(settings: Settings) -> None:
    t = settings.topics
    user = f"u-{uuid.uuid4().hex[:6]}"
    produce(
        settings,
        t.rules,
        [rule("r-1", user, "MSFT", {"type": "price_crosses_above", "threshold": 100})],
    )
    produce(settings, t.ticks, [tick("MSFT", 99 + (i % 3), i * 7) for i in range(60)])

    def counts() -> tuple[int, ...]:
        with psycopg.connect(settings.database_url) as conn:
            return tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in (
                    "triggered_alerts",
                    "consolidated_alerts",
                    "delivery_logs",
                    "alert_rules",
                )
            )

    run(settings, bounded=True)
    first = counts()
    feed_first = InAppFeed(settings.redis_url).entries(user)
    run(settings, bounded=True)  # no recovery: re-reads every topic from the start

    assert first[0] > 1 and first[1] >= 1
    assert counts() == first
    assert InAppFeed(settings.redis_url).entries(user) == feed_first


def test_with_recovery_a_restart_resumes_state_and_offsets(settings: Settings, tmp_path) -> None:
    t = settings.topics
    user = f"u-{uuid.uuid4().hex[:6]}"
    settings = settings.model_copy(
        update={"recovery": settings.recovery.model_copy(update={"directory": tmp_path / "rec"})}
    )
    produce(
        settings,
        t.rules,
        [rule("r-rec", user, "NVDA", {"type": "price_crosses_above", "threshold": 100})],
    )
    produce(settings, t.ticks, [tick("NVDA", 99, 0), tick("NVDA", 101, 1)])
    run(settings, bounded=True)
    assert len(topic_values(settings, t.triggered)) == 1

    # The restart reads only what came after the snapshot: the rule and the last price (101)
    # come from the recovered state, so 99 -> 102 is the only new crossing.
    produce(settings, t.ticks, [tick("NVDA", 99, 2), tick("NVDA", 102, 3)])
    run(settings, bounded=True)

    triggered = topic_values(settings, t.triggered)
    assert [a["alert_id"] for a in triggered] == [
        alert_id("r-rec", 1, T0 + timedelta(seconds=1), "NVDA"),
        alert_id("r-rec", 1, T0 + timedelta(seconds=3), "NVDA"),
    ]
