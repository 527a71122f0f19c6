"""The analyst schema (issue 15 point 2): the views' answers on known rows, contact details only
masked for the analyst role (the same masks as pipeline/masking.py), and a user's newest alerts
read through indexes on a million rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from pipeline import masking
from pipeline.ids import alert_id
from pipeline.messages import Feedback, Notification, Profile, TriggeredAlert
from pipeline.personalize.learning import RelevanceScore
from sinks.postgres import HistoryWriter

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 6, 3, 30, tzinfo=UTC)  # 22:30 on the 5th in New York


@pytest.fixture()
def writer(database_url: str) -> Iterator[HistoryWriter]:
    with HistoryWriter(database_url) as history:
        yield history


def _alert(user: str, rule: str, symbol: str, seconds: int) -> TriggeredAlert:
    ts = T0 + timedelta(seconds=seconds)
    return TriggeredAlert(
        alert_id=alert_id(rule, 1, ts, symbol),
        rule_id=rule,
        rule_version=1,
        user_id=user,
        symbol=symbol,
        priority="HIGH",
        title=f"{symbol} moved",
        message="moved",
        triggered_at=ts,
        condition_types=["price_crosses_above"],
        values={},
    )


def _feedback(alert: TriggeredAlert, action: str, seconds: int) -> Feedback:
    return Feedback(
        user_id=alert.user_id,
        alert_id=alert.alert_id,
        action=action,
        ts=alert.triggered_at + timedelta(seconds=seconds),
    )


MASK_SAMPLES = [
    ("email", "alice@example.com"),
    ("email", "a@b@example.org"),
    ("email", "@example.com"),
    ("email", "no-at-sign"),
    ("sms", "+15551234567"),
    ("voice", "+4930123456"),
    ("sms", "+1234"),
    ("push", "fcm-token-abcdef"),
    ("push", "abc"),
    ("webhook", "https://hooks.example.com/T000/B000/secret"),
    ("webhook", "https://Hooks.Example.com"),
    ("webhook", "https://hooks.example.com/"),
    ("webhook", "https://hooks.example.com?token=x"),
    ("webhook", "http://user:pass@hooks.example.com:8443/path"),
    ("webhook", "https://user@hooks.example.com/x"),
    ("webhook", "https://[2001:db8::1]:443/x"),
    ("webhook", "https://hooks.example.com:99999/x"),
    ("webhook", "https://hooks.example.com:abc/x"),
    ("webhook", "https://[2001:db8::1/x"),
    ("webhook", "ftp://files.example.com/dir/file?x=1"),
    ("webhook", "mailto:ops@example.com"),
    ("webhook", "not a url"),
    ("in_app", "feed"),
]


def test_sql_masks_equal_the_python_masks(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for channel, destination in MASK_SAMPLES:
            row = conn.execute("SELECT mask_destination(%s, %s)", (channel, destination)).fetchone()
            assert row == (masking.mask_destination(channel, destination),), destination


def test_analyst_reads_contacts_only_masked(writer: HistoryWriter, database_url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    hooks = [
        {"url": "https://hooks.example.com/T1/secret", "secret_ref": "HOOK"},
        {"url": "http://user:pw@other.example.com:8080/x?y=1", "secret_ref": "HOOK2"},
    ]
    profile = Profile.model_validate(
        {
            "user_id": user,
            "timezone": "America/New_York",
            "channels": {"LOW": ["email"], "MEDIUM": ["sms"], "HIGH": ["push"],
                         "CRITICAL": ["webhook"]},
            "destinations": {"email": "alice@example.com", "phone": "+15551234567",
                             "push_tokens": ["tok-aaaa1111", "tok-bbbb2222"],
                             "webhook": hooks[0], "webhooks": hooks[1:]},
        }
    )  # fmt: skip
    writer.write_profiles([profile])
    note = Notification(
        notification_id=f"n-{user}",
        user_id=user,
        alert_ids=[],
        title="t",
        message="m",
        highest_priority="LOW",
        channels=["email"],
        window_start=T0,
        window_end=T0,
    )
    writer.write_notifications([note])
    writer.record_delivery(note.notification_id, user, "email", "alice@example.com")
    writer.disable_destination("sms", "+15551234567", "unsubscribed")

    analyst = make_conninfo(database_url, options="-c role=smart_alerts_analyst")
    denied = [
        "SELECT destinations FROM user_alert_profiles",
        "SELECT * FROM user_alert_profiles",
        "SELECT destination FROM delivery_logs",
        "SELECT * FROM delivery_logs",
        "SELECT destination FROM disabled_destinations",
        "SELECT document FROM profile_documents",
        "SELECT url FROM webhook_endpoints",
    ]
    for statement in denied:
        with psycopg.connect(analyst) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)  # type: ignore[call-overload]
    with psycopg.connect(analyst, row_factory=dict_row) as conn:
        contacts = conn.execute(
            "SELECT email, phone, push_tokens, webhooks FROM v_user_contacts"
            " WHERE user_external_id = %s",
            (user,),
        ).fetchone()
        delivery = conn.execute(
            "SELECT destination, status FROM v_deliveries WHERE notification_id IN"
            " (SELECT id FROM consolidated_alerts WHERE external_id = %s)",
            (note.notification_id,),
        ).fetchone()
        disabled = conn.execute(
            "SELECT destination FROM v_disabled_destinations WHERE channel = 'sms'"
        ).fetchall()
        # What analysts may read of the raw tables, they can.
        conn.execute("SELECT user_id, relevance_scores FROM user_alert_profiles").fetchall()
        conn.execute("SELECT channel, status, error_message FROM delivery_logs").fetchall()
    assert contacts == {
        "email": masking.mask_email("alice@example.com"),
        "phone": masking.mask_phone("+15551234567"),
        "push_tokens": [masking.mask_token("tok-aaaa1111"), masking.mask_token("tok-bbbb2222")],
        "webhooks": [masking.mask_url(h["url"]) for h in hooks],
    }
    assert contacts["email"] == "a***@example.com" and contacts["webhooks"] == [
        "https://hooks.example.com/…",
        "http://user:***@other.example.com:8080/…",
    ]
    assert delivery == {"destination": "a***@example.com", "status": "PENDING"}
    assert disabled == [{"destination": masking.mask_phone("+15551234567")}]


def test_views_answer_the_analysts_questions(writer: HistoryWriter, database_url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    writer.write_profiles(
        [Profile.model_validate({"user_id": user, "timezone": "America/New_York"})]
    )
    noisy = [_alert(user, f"r-noisy-{user}", "AAPL", s) for s in (0, 60, 120, 86400)]
    quiet = [_alert(user, f"r-quiet-{user}", "MSFT", 30)]
    writer.write_alerts(noisy + quiet)
    writer.write_feedback(
        [
            _feedback(noisy[0], "opened", 40),
            _feedback(noisy[0], "acted", 100),
            _feedback(noisy[1], "dismissed", 5),
            _feedback(noisy[2], "dismissed", 5),
            _feedback(noisy[2], "dismissed", 9),  # twice: one dismissed alert
            _feedback(quiet[0], "opened", 20),
        ]
    )
    note = Notification(
        notification_id=f"n-{user}",
        user_id=user,
        alert_ids=[a.alert_id for a in noisy[:2]],
        title="t",
        message="m",
        highest_priority="HIGH",
        channels=["email", "in_app"],
        window_start=T0,
        window_end=T0,
    )
    writer.write_notifications([note])
    for channel, destination in (("email", f"{user}@example.com"), ("in_app", user)):
        writer.record_delivery(note.notification_id, user, channel, destination)
    writer.claim_delivery(note.notification_id, "email", f"{user}@example.com", 30, "sendgrid")
    writer.mark_failed(note.notification_id, "email", f"{user}@example.com", "550", retry=False)
    writer.mark_delivered(note.notification_id, "in_app", user, None)
    writer.write_relevance(
        [
            RelevanceScore(user, "symbol", "AAPL", 0.6, T0),
            RelevanceScore(user, "symbol", "AAPL", 0.45, T0 + timedelta(hours=1)),
        ]
    )

    def query(sql: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, args).fetchall()  # type: ignore[call-overload, no-any-return]

    days = query(
        "SELECT local_day, alerts FROM v_user_daily_alerts WHERE user_external_id = %s"
        " ORDER BY local_day",
        user,
    )
    # 03:30 UTC on the 6th is the 5th in New York; the alert a day later the 6th.
    assert days == [
        {"local_day": date(2026, 1, 5), "alerts": 4},
        {"local_day": date(2026, 1, 6), "alerts": 1},
    ]
    rules = query(
        "SELECT rule_external_id, alerts, days_with_alerts, opened, acted, dismissed"
        " FROM v_rule_activity WHERE user_external_id = %s ORDER BY alerts DESC",
        user,
    )
    assert rules == [
        {"rule_external_id": f"r-noisy-{user}", "alerts": 4, "days_with_alerts": 2,
         "opened": 1, "acted": 1, "dismissed": 2},
        {"rule_external_id": f"r-quiet-{user}", "alerts": 1, "days_with_alerts": 1,
         "opened": 1, "acted": 0, "dismissed": 0},
    ]  # fmt: skip
    responses = query(
        "SELECT alert_external_id, time_to_open, time_to_act, status FROM v_alert_responses"
        " WHERE user_external_id = %s AND opened_at IS NOT NULL ORDER BY triggered_at",
        user,
    )
    assert responses == [
        {"alert_external_id": noisy[0].alert_id, "time_to_open": timedelta(seconds=40),
         "time_to_act": timedelta(seconds=100), "status": "ACTED"},
        {"alert_external_id": quiet[0].alert_id, "time_to_open": timedelta(seconds=20),
         "time_to_act": None, "status": "OPENED"},
    ]  # fmt: skip
    success = query(
        "SELECT channel, provider, finished, delivered, failed, success_rate"
        " FROM v_delivery_success WHERE finished > 0 ORDER BY channel"
    )
    assert [(r["channel"], r["provider"], r["delivered"], r["failed"]) for r in success] == [
        ("email", "sendgrid", 0, 1),
        ("in_app", "in_app", 1, 0),
    ]
    assert [float(r["success_rate"]) for r in success] == [0.0, 1.0]
    history = query(
        "SELECT score, change FROM v_relevance_history WHERE user_external_id = %s"
        " ORDER BY updated_at",
        user,
    )
    assert [r["score"] for r in history] == [0.6, 0.45]
    assert history[0]["change"] is None and history[1]["change"] == pytest.approx(-0.15)
    # The alerts of the notification the in-app feed delivered: DELIVERED unless further on.
    statuses = query(
        "SELECT alert_external_id, status FROM v_alerts WHERE user_external_id = %s", user
    )
    assert {r["alert_external_id"]: r["status"] for r in statuses}[noisy[1].alert_id] == (
        "DISMISSED"
    )
