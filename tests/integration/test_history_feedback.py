"""Feedback and alert status in PostgreSQL (issue 15 point 1): the writer on a real server, and
the job end to end (feedback on alerts.feedback becomes rows, statuses and action_history)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from connectors.embedded import StackUrls
from pipeline.config import Settings
from pipeline.dataflow import run
from pipeline.ids import alert_id, storage_uuid
from pipeline.messages import Feedback, Notification, TriggeredAlert
from pipeline.personalize.desk import AlertOutcome
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.postgres import HistoryWriter, feedback_uuid
from tests.conftest import PUSH_OLD_ALERTS, job_settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


@pytest.fixture()
def writer(database_url: str) -> Iterator[HistoryWriter]:
    with HistoryWriter(database_url) as history:
        yield history


def _alert(user: str, index: int) -> TriggeredAlert:
    ts = T0 + timedelta(seconds=index)
    return TriggeredAlert(
        alert_id=alert_id(f"r-{user}", 1, ts, "AAPL"),
        rule_id=f"r-{user}",
        rule_version=1,
        user_id=user,
        symbol="AAPL",
        priority="MEDIUM",
        title=f"AAPL {index}",
        message="AAPL crossed",
        triggered_at=ts,
        condition_types=["price_crosses_above"],
        values={"price": 101.0},
    )


def _feedback(alert: TriggeredAlert, action: str, seconds: int) -> Feedback:
    return Feedback(
        user_id=alert.user_id,
        alert_id=alert.alert_id,
        action=action,
        ts=T0 + timedelta(seconds=seconds),
        symbol="AAPL",
    )


def _status(database_url: str, alerts: list[TriggeredAlert]) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = dict(
            (r[0], r[1:])
            for r in conn.execute(
                "SELECT external_id, status, acknowledged_at, xmin::text FROM triggered_alerts"
                " WHERE external_id = ANY(%s)",
                ([a.alert_id for a in alerts],),
            ).fetchall()
        )
    return [rows[a.alert_id] for a in alerts]


def test_status_follows_outcomes_deliveries_and_feedback_forward_only(
    writer: HistoryWriter, database_url: str
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    notified, deferred, stale, early = (_alert(user, i) for i in range(4))
    writer.write_alerts([notified, deferred, stale])
    note = Notification(
        notification_id=f"n-{user}",
        user_id=user,
        alert_ids=[notified.alert_id],
        title="AAPL",
        message="AAPL crossed",
        highest_priority="MEDIUM",
        channels=["push"],
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
    )
    writer.write_outcomes(
        [
            AlertOutcome(notified.alert_id, user, "NOTIFIED", note.notification_id, T0),
            AlertOutcome(deferred.alert_id, user, "DEFERRED", None, T0),
            AlertOutcome(stale.alert_id, user, "STALE", None, T0),
        ]
    )
    assert [s[0] for s in _status(database_url, [notified, deferred, stale])] == [
        "NOTIFIED",
        "BUDGETED",
        "STALE",
    ]

    writer.write_notifications([note])
    writer.record_delivery(note.notification_id, user, "push", "token-1")
    writer.mark_delivered(note.notification_id, "push", "token-1", "m-1")
    assert _status(database_url, [notified])[0][0] == "DELIVERED"

    # Feedback before its alert is stored: the alert takes its status when it arrives.
    writer.write_feedback([_feedback(early, "opened", 30)])
    writer.write_alerts([early])
    assert _status(database_url, [early])[0][0] == "OPENED"

    acted_at = T0 + timedelta(seconds=60)
    writer.write_feedback(
        [
            _feedback(notified, "opened", 50),
            _feedback(notified, "acted", 60),
            _feedback(stale, "dismissed", 70),
            _feedback(deferred, "snoozed", 80),
        ]
    )
    # Late reports never move a status back: a delivery after acting, opening after dismissing.
    writer.write_feedback([_feedback(notified, "delivered", 90), _feedback(stale, "opened", 95)])
    writer.mark_delivered(note.notification_id, "push", "token-1", "m-1")
    writer.write_outcomes([AlertOutcome(notified.alert_id, user, "NOTIFIED", None, T0)])
    states = _status(database_url, [notified, deferred, stale, early])
    assert [(s[0], s[1]) for s in states] == [
        ("ACTED", acted_at),
        ("BUDGETED", None),
        ("DISMISSED", None),
        ("OPENED", None),
    ]

    # A later decision of personalization's own rank replaces the earlier one.
    writer.write_outcomes([AlertOutcome(deferred.alert_id, user, "NOTIFIED", "n-2", T0)])
    assert _status(database_url, [deferred])[0][0] == "NOTIFIED"

    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        history = conn.execute(
            "SELECT action_history FROM user_alert_profiles WHERE user_external_id = %s", (user,)
        ).fetchone()
        rows = conn.execute(
            "SELECT id, action FROM alert_feedback WHERE user_external_id = %s", (user,)
        ).fetchall()
    assert history is not None
    assert {k: v["count"] for k, v in history["action_history"].items()} == {
        "opened": 3,
        "acted": 1,
        "dismissed": 1,
        "snoozed": 1,
        "delivered": 1,
    }
    assert history["action_history"]["acted"]["last_at"] == acted_at.isoformat()
    ids = {r["id"] for r in rows}
    assert feedback_uuid(_feedback(notified, "acted", 60)) in ids and len(rows) == 7


def test_a_replayed_feedback_event_changes_no_row(writer: HistoryWriter, database_url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    alert = _alert(user, 0)
    writer.write_alerts([alert])
    events = [_feedback(alert, "opened", 10), _feedback(alert, "acted", 20)]
    writer.write_feedback(events)

    def snapshot() -> tuple[Any, ...]:
        with psycopg.connect(database_url) as conn:
            return (
                conn.execute(
                    "SELECT array_agg(xmin::text ORDER BY id) FROM alert_feedback"
                    " WHERE user_external_id = %s",
                    (user,),
                ).fetchone(),
                conn.execute(
                    "SELECT xmin::text, action_history FROM user_alert_profiles"
                    " WHERE user_external_id = %s",
                    (user,),
                ).fetchone(),
                _status(database_url, [alert]),
            )

    before = snapshot()
    writer.write_feedback(events)  # the replay, whole
    writer.write_feedback([events[0], events[0]])  # and twice in one batch
    assert snapshot() == before
    assert before[2][0][:2] == ("ACTED", T0 + timedelta(seconds=20))


# ---------------------------------------------------------------- end to end


def _send(settings: Settings, topic: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch(
        [OutgoingRecord(topic, key.encode(), json.dumps(v).encode()) for key, v in rows]
    )
    producer.close()


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def test_feedback_reaches_postgres_through_the_job_and_a_rerun_changes_nothing(
    stack: StackUrls, database_url: str
) -> None:
    settings = job_settings(
        stack,
        database_url,
        partitions={"market": 1, "reference": 1, "feedback": 1, "outputs": 1},
        engine={"shard_count": 2, "window_seconds": 60, "epoch_ms": 50},
        personalization=PUSH_OLD_ALERTS,
    )
    t, user = settings.topics, f"u-{uuid.uuid4().hex[:8]}"
    rule = {"v": 1, "id": f"r-{user}", "user_id": user, "name": "cross", "symbol": "MSFT",
            "priority": "MEDIUM", "cooldown_seconds": 0,
            "conditions": {"type": "price_crosses_above", "threshold": 100}}  # fmt: skip
    _send(settings, t.rules, [(rule["id"], rule)])
    profile = {"user_id": user, "timezone": "America/New_York",
               "channels": {"LOW": ["in_app"], "MEDIUM": ["in_app"], "HIGH": ["in_app"],
                            "CRITICAL": ["in_app"]}}  # fmt: skip
    _send(settings, t.profiles, [(user, profile)])
    ticks = []
    for second in (10, 20, 30):
        ticks.append(
            {"symbol": "MSFT", "ts": _iso(T0 + timedelta(seconds=second - 1)), "price": 99}
        )
        ticks.append({"symbol": "MSFT", "ts": _iso(T0 + timedelta(seconds=second)), "price": 101})
    # Event time runs on past the window, so it closes in the bounded run.
    ticks.append({"symbol": "MSFT", "ts": _iso(T0 + timedelta(minutes=10)), "price": 99})
    _send(settings, t.ticks, [("MSFT", tick) for tick in ticks])
    first, second, third = (
        alert_id(rule["id"], 1, T0 + timedelta(seconds=s), "MSFT") for s in (10, 20, 30)
    )
    feedback = [
        {
            "user_id": user,
            "alert_id": alert,
            "action": action,
            "ts": _iso(T0 + timedelta(minutes=m)),
        }
        for alert, action, m in (
            (first, "opened", 2),
            (first, "acted", 3),
            (second, "dismissed", 4),
        )
    ]
    _send(settings, t.feedback, [(user, f) for f in feedback])

    def state() -> tuple[Any, ...]:
        with psycopg.connect(settings.database_url) as conn:
            statuses = conn.execute(
                "SELECT external_id, status, acknowledged_at, xmin::text FROM triggered_alerts"
                " WHERE user_external_id = %s ORDER BY external_id",
                (user,),
            ).fetchall()
            stored = conn.execute(
                "SELECT alert_external_id, action, ts, xmin::text FROM alert_feedback"
                " WHERE user_external_id = %s ORDER BY ts",
                (user,),
            ).fetchall()
            history = conn.execute(
                "SELECT action_history, xmin::text FROM user_alert_profiles WHERE user_id = %s",
                (storage_uuid("user", user),),
            ).fetchone()
        return statuses, stored, history

    run(settings, bounded=True)
    statuses, stored, history = state()
    by_alert = {row[0]: row[1:3] for row in statuses}
    assert by_alert == {
        first: ("ACTED", T0 + timedelta(minutes=3)),
        second: ("DISMISSED", None),
        # in_app delivered the notification: DELIVERED from delivery_logs
        third: ("DELIVERED", None),
    }
    assert [(a, act) for a, act, _, _ in stored] == [
        (first, "opened"),
        (first, "acted"),
        (second, "dismissed"),
    ]
    assert history is not None
    assert {k: v["count"] for k, v in history[0].items()} == {
        "opened": 1,
        "acted": 1,
        "dismissed": 1,
    }

    run(settings, bounded=True)  # no recovery: every topic is read again from its start
    assert state() == (statuses, stored, history)
