"""sinks.postgres.HistoryWriter against a real PostgreSQL: idempotent writes, exact columns."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from pipeline.ids import alert_id, notification_id, storage_uuid
from pipeline.messages import Notification, Profile, Rule, TriggeredAlert
from pipeline.personalize.learning import RelevanceScore
from sinks.postgres import HistoryWriter, comparison_of, delivery_uuid

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 14, 30, 0, 125000, tzinfo=UTC)


@pytest.fixture()
def writer(database_url: str) -> Iterator[HistoryWriter]:
    with HistoryWriter(database_url) as history:
        yield history


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _rule(rule_id: str, user_id: str, **changes: Any) -> Rule:
    payload: dict[str, Any] = {
        "id": rule_id,
        "version": 3,
        "user_id": user_id,
        "name": "AAPL breakout",
        "symbol": "AAPL",
        "priority": "HIGH",
        "mode": "recurring",
        "cooldown_seconds": 90,
        "expires_at": "2026-02-01T00:00:00Z",
        "channels": ["push", "in_app"],
        "conditions": {
            "all": [
                {"type": "price_crosses_above", "threshold": 200},
                {"any": [{"type": "price_below", "threshold": 250.5}]},
            ]
        },
    }
    payload.update(changes)
    return Rule.model_validate(payload)


def _alert(rule_id: str, user_id: str, index: int = 0, **changes: Any) -> TriggeredAlert:
    ts = T0 + timedelta(seconds=index)
    payload: dict[str, Any] = {
        "alert_id": alert_id(rule_id, 3, ts, "AAPL"),
        "rule_id": rule_id,
        "rule_version": 3,
        "user_id": user_id,
        "symbol": "AAPL",
        "priority": "HIGH",
        "title": f"AAPL crossed 200 ({index})",
        "message": "AAPL 200.5 crossed above 200",
        "triggered_at": ts,
        "condition_types": ["price_crosses_above"],
        "values": {"price": 200.5, "threshold": 200.0, "note": None},
    }
    payload.update(changes)
    return TriggeredAlert.model_validate(payload)


def _notification(user_id: str, alert_ids: list[str], **changes: Any) -> Notification:
    payload: dict[str, Any] = {
        "notification_id": notification_id(user_id, T0),
        "user_id": user_id,
        "alert_ids": alert_ids,
        "title": f"{len(alert_ids)} alerts",
        "message": "AAPL crossed 200",
        "highest_priority": "HIGH",
        "channels": ["in_app", "email"],
        "window_start": T0,
        "window_end": T0 + timedelta(minutes=5),
    }
    payload.update(changes)
    return Notification.model_validate(payload)


def _profile(user_id: str, **changes: Any) -> Profile:
    payload: dict[str, Any] = {
        "user_id": user_id,
        "timezone": "America/New_York",
        "channels": {
            "LOW": ["in_app"],
            "MEDIUM": ["in_app"],
            "HIGH": ["push", "in_app"],
            "CRITICAL": ["sms", "push", "in_app"],
        },
        "quiet_hours": {"start": "22:00", "end": "07:30"},
        "digest_seconds": 300,
        "max_per_hour": 20,
        "min_relevance": 0.25,
        "destinations": {"email": "alice@example.com", "phone": "+15551234567"},
    }
    payload.update(changes)
    return Profile.model_validate(payload)


def _one(db: psycopg.Connection[dict[str, Any]], query: str, *params: Any) -> dict[str, Any]:
    rows = db.execute(query, params).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def _count(db: psycopg.Connection[dict[str, Any]], query: str, *params: Any) -> int:
    row = db.execute(query, params).fetchone()
    assert row is not None
    return int(next(iter(row.values())))


# ---------------------------------------------------------------- alerts


def test_alerts_written_twice_are_stored_once_with_their_values(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id, user_id = f"r-{_tag()}", f"u-{_tag()}"
    alerts = [_alert(rule_id, user_id, i) for i in range(3)]
    writer.write_rules([_rule(rule_id, user_id)])
    writer.write_alerts(alerts)
    writer.write_alerts(alerts + alerts[:1])  # a replay, with a duplicate inside the batch

    rows = db.execute(
        'SELECT *, "values" AS vals FROM triggered_alerts WHERE user_external_id = %s'
        " ORDER BY triggered_at",
        (user_id,),
    ).fetchall()
    assert len(rows) == 3
    first, alert = rows[0], alerts[0]
    assert first["id"] == uuid.UUID(alert.alert_id) == storage_uuid("alert", alert.alert_id)
    assert first["external_id"] == alert.alert_id
    assert first["rule_id"] == storage_uuid("rule", rule_id)
    assert first["rule_version"] == 3
    assert first["user_id"] == storage_uuid("user", user_id)
    assert first["user_external_id"] == user_id
    assert first["symbol"] == "AAPL"
    assert first["priority"] == "HIGH"
    assert first["title"] == "AAPL crossed 200 (0)"
    assert first["message"] == "AAPL 200.5 crossed above 200"
    assert first["triggered_at"] == T0
    assert first["triggered_at"].utcoffset() is not None
    assert first["condition_types"] == ["price_crosses_above"]
    assert first["vals"] == {"price": 200.5, "threshold": 200.0, "note": None}
    assert first["status"] == "PENDING"
    assert first["acknowledged_at"] is None
    assert first["created_at"] is not None

    view = _one(db, "SELECT * FROM v_alerts WHERE alert_id = %s", first["id"])
    assert view["rule_external_id"] == rule_id
    assert view["rule_name"] == "AAPL breakout"
    assert view["user_external_id"] == user_id
    assert view["alert_values"] == first["vals"]

    daily = _one(db, "SELECT * FROM v_daily_alert_counts WHERE user_external_id = %s", user_id)
    assert daily["day"] == T0.date()
    assert (daily["symbol"], daily["priority"], daily["alerts"]) == ("AAPL", "HIGH", 3)


def test_alert_whose_rule_has_not_arrived_is_stored(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id, user_id = f"late-rule-{_tag()}", f"u-{_tag()}"
    alert = _alert(rule_id, user_id)
    writer.write_alerts([alert])

    stored = _one(db, "SELECT rule_id FROM triggered_alerts WHERE external_id = %s", alert.alert_id)
    placeholder = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert stored["rule_id"] == placeholder["id"] == storage_uuid("rule", rule_id)
    assert placeholder["conditions"] is None  # a placeholder
    assert placeholder["user_external_id"] == user_id
    assert placeholder["version"] == 3
    assert placeholder["name"] is None

    writer.write_rules([_rule(rule_id, user_id, name="Late rule")])
    rule = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert rule["name"] == "Late rule"
    assert rule["conditions"] is not None
    assert _count(db, "SELECT count(*) FROM alert_conditions WHERE rule_id = %s", rule["id"]) == 2
    view = _one(db, "SELECT rule_name FROM v_alerts WHERE alert_external_id = %s", alert.alert_id)
    assert view["rule_name"] == "Late rule"

    # A later alert of the now-known rule leaves the rule row alone (mode "once" or not).
    before = rule["updated_at"]
    writer.write_alerts([_alert(rule_id, user_id, 1)])
    after = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert after["updated_at"] == before and after["name"] == "Late rule"


def test_write_alerts_batch_of_10000(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"bulk-{_tag()}"
    alerts = [_alert(f"bulk-rule-{i % 50}", user_id, i) for i in range(10_000)]
    started = time.perf_counter()
    writer.write_alerts(alerts)
    elapsed = time.perf_counter() - started
    rate = len(alerts) / elapsed
    print(f"\nwrite_alerts: 10000 rows in {elapsed:.3f} s = {rate:,.0f} rows/s")

    started = time.perf_counter()
    writer.write_alerts(alerts)  # the replay inserts nothing
    replay = time.perf_counter() - started
    print(f"write_alerts replay of 10000 rows in {replay:.3f} s")
    assert _count(
        db, "SELECT count(*) FROM triggered_alerts WHERE user_external_id = %s", user_id
    ) == len(alerts)
    assert rate > 2_000, f"only {rate:.0f} rows/s"


# ---------------------------------------------------------------- rules


def test_rules_written_twice_leave_one_row_and_their_conditions(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id, user_id = f"r-{_tag()}", f"u-{_tag()}"
    rule = _rule(rule_id, user_id)
    writer.write_rules([rule])
    first = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    writer.write_rules([rule, rule])
    row = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)

    assert row["id"] == storage_uuid("rule", rule_id)
    assert row["user_id"] == storage_uuid("user", user_id)
    assert row["user_external_id"] == user_id
    assert row["name"] == "AAPL breakout"
    assert row["symbol"] == "AAPL"
    assert row["symbols"] is None
    assert row["priority"] == "HIGH"
    assert row["is_active"] is True
    assert row["cooldown_seconds"] == 90
    assert row["cooldown_minutes"] == 2
    assert row["expires_at"] == datetime(2026, 2, 1, tzinfo=UTC)
    assert row["version"] == 3
    assert row["mode"] == "recurring"
    assert row["channels"] == ["push", "in_app"]
    assert row["conditions"] == {
        "all": [
            {"type": "price_crosses_above", "threshold": 200.0},
            {"any": [{"type": "price_below", "threshold": 250.5}]},
        ]
    }
    assert row["deleted_at"] is None
    assert row["updated_at"] == first["updated_at"], "an unchanged rule is not rewritten"

    conditions = db.execute(
        "SELECT * FROM alert_conditions WHERE rule_id = %s ORDER BY position", (row["id"],)
    ).fetchall()
    assert [
        (c["position"], c["condition_type"], float(c["threshold"]), c["comparison"])
        for c in conditions
    ] == [(0, "price_crosses_above", 200.0, "crosses_above"), (1, "price_below", 250.5, "below")]
    assert conditions[0]["params"] == {"type": "price_crosses_above", "threshold": 200.0}
    assert all(c["time_window_minutes"] is None for c in conditions)

    # A new version replaces the row and its conditions.
    v4 = _rule(
        rule_id,
        user_id,
        version=4,
        symbol=None,
        symbols=["AAPL", "MSFT"],
        mode="once",
        channels=None,
        conditions={"type": "price_above", "threshold": 300},
    )
    writer.write_rules([v4])
    row = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert (row["version"], row["symbol"], row["symbols"], row["mode"], row["channels"]) == (
        4,
        None,
        ["AAPL", "MSFT"],
        "once",
        None,
    )
    conditions = db.execute(
        "SELECT condition_type, threshold, comparison FROM alert_conditions WHERE rule_id = %s",
        (row["id"],),
    ).fetchall()
    assert [(c["condition_type"], float(c["threshold"]), c["comparison"]) for c in conditions] == [
        ("price_above", 300.0, "above")
    ]


def test_last_rule_in_a_batch_wins(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id, user_id = f"r-{_tag()}", f"u-{_tag()}"
    writer.write_rules([_rule(rule_id, user_id, version=1), _rule(rule_id, user_id, version=2)])
    assert _one(db, "SELECT version FROM alert_rules WHERE external_id = %s", rule_id) == {
        "version": 2
    }


def test_tombstoned_rules_get_deleted_at(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id, user_id = f"r-{_tag()}", f"u-{_tag()}"
    writer.write_rules([_rule(rule_id, user_id)])
    writer.write_alerts([_alert(rule_id, user_id)])
    writer.delete_rules([rule_id, f"never-seen-{_tag()}"])

    row = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert row["deleted_at"] is not None and row["is_active"] is False
    assert _count(db, "SELECT count(*) FROM triggered_alerts WHERE rule_id = %s", row["id"]) == 1

    writer.delete_rules([rule_id])  # a replayed tombstone keeps the first deletion time
    again = _one(db, "SELECT deleted_at FROM alert_rules WHERE external_id = %s", rule_id)
    assert again["deleted_at"] == row["deleted_at"]

    writer.write_rules([_rule(rule_id, user_id)])  # the same id published again: alive again
    alive = _one(db, "SELECT * FROM alert_rules WHERE external_id = %s", rule_id)
    assert alive["deleted_at"] is None and alive["is_active"] is True


def test_comparison_of_condition_types() -> None:
    assert comparison_of("price_crosses_above") == "crosses_above"
    assert comparison_of("price_crosses_below_sma") == "crosses_below"
    assert comparison_of("sma_cross_up") == "crosses_above"
    assert comparison_of("rsi_below") == "below"
    assert comparison_of("flow_premium_above") == "above"
    assert comparison_of("flow_sweep") is None


# ---------------------------------------------------------------- notifications


def test_a_stored_notification_never_changes(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"
    ids = [_alert(f"r-{_tag()}", user_id, i).alert_id for i in range(3)]
    first = _notification(user_id, ids[:2])
    writer.write_notifications([first])
    writer.write_notifications([first])
    row = _one(db, "SELECT * FROM consolidated_alerts WHERE user_external_id = %s", user_id)
    assert row["id"] == storage_uuid("notification", first.notification_id)
    assert row["external_id"] == first.notification_id
    assert row["user_id"] == storage_uuid("user", user_id)
    assert row["alert_ids"] == [uuid.UUID(a) for a in ids[:2]]
    assert row["consolidated_title"] == "2 alerts"
    assert row["consolidated_message"] == "AAPL crossed 200"
    assert row["highest_priority"] == "HIGH"
    assert row["channels"] == ["in_app", "email"]
    assert row["window_start"] == T0
    assert row["window_end"] == T0 + timedelta(minutes=5)

    # The window is re-emitted with one more alert: the row keeps what was sent (the late
    # alert goes out in a follow-up, sinks/notify.py).
    writer.write_notifications([_notification(user_id, ids, highest_priority="CRITICAL")])
    again = _one(db, "SELECT * FROM consolidated_alerts WHERE user_external_id = %s", user_id)
    assert again == row


# ---------------------------------------------------------------- profiles and relevance


def test_profiles_upsert_by_user(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"
    profile = _profile(user_id)
    writer.write_profiles([profile])
    writer.write_profiles([profile])
    row = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert row["id"] == row["user_id"] == storage_uuid("user", user_id)
    assert row["timezone"] == "America/New_York"
    assert row["channels"] == {
        "LOW": ["in_app"],
        "MEDIUM": ["in_app"],
        "HIGH": ["push", "in_app"],
        "CRITICAL": ["sms", "push", "in_app"],
    }
    assert row["preferred_channels"] == ["in_app", "push", "sms"]
    assert (row["quiet_hours_start"], row["quiet_hours_end"]) == (clock(22, 0), clock(7, 30))
    assert (row["digest_seconds"], row["max_per_hour"], row["min_relevance"]) == (300, 20, 0.25)
    assert row["destinations"] == {"email": "alice@example.com", "phone": "+15551234567"}
    assert row["relevance_scores"] is None

    writer.write_profiles([_profile(user_id, quiet_hours=None, timezone="UTC")])
    row = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert (row["timezone"], row["quiet_hours_start"], row["quiet_hours_end"]) == (
        "UTC",
        None,
        None,
    )


def test_relevance_scores_merge_per_symbol(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"

    def score(key: str, value: float, dimension: str = "symbol") -> RelevanceScore:
        return RelevanceScore(user_id, dimension, key, value, T0)

    writer.write_relevance([score("AAPL", 0.5), score("MSFT", 0.4), score("AAPL", 0.62)])
    row = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert row["relevance_scores"] == {"symbol": {"AAPL": 0.62, "MSFT": 0.4}}
    assert row["user_id"] == storage_uuid("user", user_id)
    assert row["timezone"] is None  # created by the scores, no profile yet

    writer.write_relevance([score("TSLA", 0.1), score("MSFT", 0.45), score("sweep", 0.9, "flow")])
    merged = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert merged["relevance_scores"] == {
        "symbol": {"AAPL": 0.62, "MSFT": 0.45, "TSLA": 0.1},
        "flow": {"sweep": 0.9},
    }

    writer.write_relevance([score("TSLA", 0.1)])  # a replay changes nothing, not even updated_at
    replayed = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert replayed["updated_at"] == merged["updated_at"]

    writer.write_profiles([_profile(user_id)])  # the profile keeps the scores
    profiled = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert profiled["relevance_scores"] == merged["relevance_scores"]
    assert profiled["timezone"] == "America/New_York"


# ---------------------------------------------------------------- deliveries


def test_delivery_outbox(writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]) -> None:
    user_id = f"u-{_tag()}"
    note = _notification(user_id, [_alert(f"r-{_tag()}", user_id).alert_id])
    nid, email = note.notification_id, "alice@example.com"
    writer.write_notifications([note])

    def row() -> dict[str, Any]:
        return _one(
            db,
            "SELECT * FROM delivery_logs WHERE notification_id = %s AND channel = 'email'",
            storage_uuid("notification", nid),
        )

    assert writer.record_delivery(nid, user_id, "email", email) is True
    assert writer.record_delivery(nid, user_id, "email", email) is True  # not delivered yet
    pending = row()
    assert pending["id"] == delivery_uuid(nid, "email", email)
    assert (pending["status"], pending["attempts"], pending["destination"]) == ("PENDING", 0, email)
    assert pending["alert_id"] is None

    retry_at = T0 + timedelta(minutes=1)
    writer.mark_failed(nid, "email", email, "503 busy", retry=True, next_attempt_at=retry_at)
    failed = row()
    assert (failed["status"], failed["attempts"], failed["retry_count"]) == ("RETRYING", 1, 1)
    assert failed["error_message"] == "503 busy"
    assert failed["next_attempt_at"] == retry_at
    assert failed["last_attempt_at"] is not None

    assert writer.record_delivery(nid, user_id, "email", email) is True
    writer.mark_delivered(nid, "email", email, "sg-123")
    delivered = row()
    assert (delivered["status"], delivered["attempts"]) == ("DELIVERED", 2)
    assert delivered["provider_message_id"] == "sg-123"
    assert delivered["delivered_at"] is not None and delivered["next_attempt_at"] is None

    assert writer.record_delivery(nid, user_id, "email", email) is False
    writer.mark_delivered(nid, "email", email, "sg-456")  # replayed: no change
    writer.mark_failed(nid, "email", email, "late failure", retry=False)  # never undoes DELIVERED
    assert row() == delivered

    # The same notification to another destination is another delivery.
    assert writer.record_delivery(nid, user_id, "email", "bob@example.com") is True
    writer.mark_failed(nid, "email", "bob@example.com", "550 no such user", retry=False)
    bob = _one(db, "SELECT * FROM delivery_logs WHERE destination = 'bob@example.com'")
    assert (bob["status"], bob["retry_count"], bob["attempts"]) == ("FAILED", 0, 1)

    outcomes = {
        (r["channel"], r["status"]): r["deliveries"]
        for r in db.execute("SELECT * FROM v_delivery_outcomes WHERE channel = 'email'")
    }
    assert outcomes[("email", "DELIVERED")] >= 1 and outcomes[("email", "FAILED")] >= 1

    with pytest.raises(LookupError, match="record_delivery"):
        writer.mark_delivered(nid, "sms", "+15550000000", None)


def test_delivery_recorded_before_its_notification_row(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"
    note = _notification(user_id, [_alert(f"r-{_tag()}", user_id).alert_id])
    # The notification's window start is the row's partition key (sql/014): given, since the
    # notification is not stored yet.
    assert (
        writer.record_delivery(
            note.notification_id, user_id, "in_app", "feed", window_start=note.window_start
        )
        is True
    )
    writer.write_notifications([note])
    row = _one(db, "SELECT * FROM consolidated_alerts WHERE user_external_id = %s", user_id)
    assert row["consolidated_title"] == "1 alerts" and row["channels"] == ["in_app", "email"]


# ---------------------------------------------------------------- connection handling and roles


def test_reconnects_once_after_a_lost_connection(
    database_url: str, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"
    with HistoryWriter(database_url) as writer:
        writer.write_profiles([_profile(user_id)])
        pid = writer._conn.info.backend_pid if writer._conn else None
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)
        writer.write_relevance([RelevanceScore(user_id, "symbol", "AAPL", 0.7, T0)])
        assert writer._conn is not None and writer._conn.info.backend_pid != pid
    row = _one(db, "SELECT * FROM user_alert_profiles WHERE user_external_id = %s", user_id)
    assert row["relevance_scores"] == {"symbol": {"AAPL": 0.7}}


def test_other_errors_are_raised_and_the_writer_recovers(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user_id = f"u-{_tag()}"
    alert = _alert(f"r-{_tag()}", user_id, symbol="REJECTED")
    db.execute("ALTER TABLE triggered_alerts ADD CONSTRAINT t_reject CHECK (symbol <> 'REJECTED')")
    try:
        with pytest.raises(psycopg.errors.CheckViolation):
            writer.write_alerts([alert])
    finally:
        db.execute("ALTER TABLE triggered_alerts DROP CONSTRAINT t_reject")
    writer.write_alerts([alert])  # the failed batch was rolled back; the connection is usable
    assert (
        _count(db, "SELECT count(*) FROM triggered_alerts WHERE external_id = %s", alert.alert_id)
        == 1
    )


def test_writer_role_is_enough_to_write(
    database_url: str, db: psycopg.Connection[dict[str, Any]]
) -> None:
    as_writer = make_conninfo(database_url, options="-c role=smart_alerts_writer")
    user_id, rule_id = f"u-{_tag()}", f"r-{_tag()}"
    with HistoryWriter(as_writer) as writer:
        writer.write_rules([_rule(rule_id, user_id)])
        writer.write_alerts([_alert(rule_id, user_id)])
        writer.write_rules([_rule(rule_id, user_id, version=5)])
        writer.delete_rules([rule_id])
        note = _notification(user_id, [_alert(rule_id, user_id).alert_id])
        writer.write_notifications([note])
        writer.write_profiles([_profile(user_id)])
        writer.write_relevance([RelevanceScore(user_id, "symbol", "AAPL", 0.3, T0)])
        assert writer.record_delivery(note.notification_id, user_id, "push", "token")
        writer.mark_delivered(note.notification_id, "push", "token", None)
    with psycopg.connect(make_conninfo(database_url, options="-c role=smart_alerts_analyst")) as a:
        assert a.execute("SELECT count(*) FROM v_alerts").fetchone() is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute("DELETE FROM triggered_alerts")
