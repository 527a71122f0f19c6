"""The log formatters, the masking of secrets and contacts, and the start and stop lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipeline.logs import (
    JsonFormatter,
    TextFormatter,
    configure,
    delivery_fields,
    lifetime,
    redact,
    remember_rules,
)
from pipeline.masking import mask_destination
from pipeline.messages import Channel, Notification, Priority, TriggeredAlert


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("smart_alerts.test", logging.INFO, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


@pytest.mark.parametrize(
    ("channel", "destination", "shown"),
    [
        ("email", "jane.doe@example.com", "j***@example.com"),
        ("sms", "+15551234567", "+1******4567"),
        ("voice", "+15551234567", "+1******4567"),
        ("push", "fcm-token-0123456789", "***6789"),
        (
            "webhook",
            "https://hooks.example.com/T000/B000/secret?sig=x",
            "https://hooks.example.com/…",
        ),
        ("webhook", "https://hooks.example.com:8443", "https://hooks.example.com:8443"),
        ("in_app", "redis:sa:inapp:u-1", "redis:sa:inapp:u-1"),
    ],
)
def test_destinations_are_masked(channel: str, destination: str, shown: str) -> None:
    assert mask_destination(channel, destination) == shown


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://app:hunter2@db:5432/alerts", "postgresql://app:***@db:5432/alerts"),
        ("redis://:pw@cache:6379/0?ssl=true", "redis://:***@cache:6379/0?…"),
        ("POST https://h.example.com/x/y?token=abc failed", "POST https://h.example.com/… failed"),
        ("550 unknown user bob.smith@example.org", "550 unknown user b***@example.org"),
        ("21614: +44 20 7946 0958 is not a mobile", "21614: +4*******0958 is not a mobile"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sig", "Authorization: *** ***"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.abc", "token ***"),
        ('{"api_key": "SG.abc", "x": 1}', '{"api_key": "***", "x": 1}'),
        ("client_secret=s3cr3t&a=1", "client_secret=***&a=1"),
        ("SIGTERM received: stopping", "SIGTERM received: stopping"),
        ("price +12.5 at 2026-01-05T14:30:00+00:00", "price +12.5 at 2026-01-05T14:30:00+00:00"),
        (
            "kafka 127.0.0.1:9092, http://127.0.0.1:8080",
            "kafka 127.0.0.1:9092, http://127.0.0.1:8080",
        ),
    ],
)
def test_redact_masks_secrets_and_contacts_in_free_text(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_json_lines_have_the_fields_and_mask_what_they_carry() -> None:
    line = JsonFormatter().format(
        record(
            "sent to %s",
            "ann@example.com",
            alert_id="a-1",
            rule_id="r-1",
            user_id="u-1",
            password="pw",
            push_tokens=["abcdef"],
            url="https://h.example.com/secret-path",
        )
    )
    document = json.loads(line)
    assert "\n" not in line
    assert document["level"] == "INFO" and document["logger"] == "smart_alerts.test"
    assert document["message"] == "sent to a***@example.com"
    assert (document["alert_id"], document["rule_id"], document["user_id"]) == ("a-1", "r-1", "u-1")
    assert document["password"] == "***" and document["push_tokens"] == ["***"]
    assert document["url"] == "https://h.example.com/…"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["ts"])
    assert (
        abs(datetime.fromisoformat(document["ts"]).timestamp() - datetime.now(UTC).timestamp()) < 60
    )


def test_json_lines_carry_the_traceback_masked() -> None:
    try:
        raise RuntimeError("cannot reach postgresql://app:hunter2@db/alerts")
    except RuntimeError:
        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        import sys

        made.exc_info = sys.exc_info()
    document = json.loads(JsonFormatter().format(made))
    assert "RuntimeError" in document["exception"] and "hunter2" not in document["exception"]


def test_text_lines_put_the_fields_after_the_message() -> None:
    line = TextFormatter().format(record("alert triggered", alert_id="a-1", alert_ids=["x", "y"]))
    assert line.endswith(" INFO smart_alerts.test: alert triggered alert_id=a-1 alert_ids=x,y")


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_level")
def test_auto_is_json_off_a_terminal_and_text_on_one() -> None:
    assert configure("auto", stream=io.StringIO()) is True
    assert configure("text", stream=io.StringIO()) is False
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as terminal:
        assert configure("auto", stream=terminal) is False
        assert configure("json", stream=terminal) is True
    os.close(leader)


@pytest.mark.usefixtures("root_level")
def test_configure_replaces_its_handler_and_sets_the_level() -> None:
    out = io.StringIO()
    configure("json", "WARNING", stream=io.StringIO())
    configure("json", "WARNING", stream=out)
    logging.getLogger("smart_alerts.test").info("not shown")
    logging.getLogger("uvicorn.error").warning("uvicorn's too")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["logger"] == "uvicorn.error"


def notification() -> Notification:
    at = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    return Notification(
        notification_id="n-1",
        user_id="u-1",
        alert_ids=["a-1"],
        title="t",
        message="m",
        highest_priority=Priority.HIGH,
        channels=[Channel.EMAIL],
        window_start=at,
        window_end=at,
    )


def alert(alert_id: str, rule_id: str) -> TriggeredAlert:
    return TriggeredAlert.trusted(
        alert_id=alert_id,
        rule_id=rule_id,
        rule_version=1,
        user_id="u-1",
        symbol="AAPL",
        priority=Priority.HIGH,
        title="t",
        message="m",
        triggered_at=datetime(2026, 1, 5, 14, 30, tzinfo=UTC),
        condition_types=["price_above"],
        values={},
    )


def test_delivery_fields_name_the_notification_its_alerts_rules_and_the_attempt() -> None:
    note = notification()
    remember_rules(note, [alert("a-1", "r-1"), alert("a-2", "r-2")])  # a-2 is not in it
    assert delivery_fields(note, "email", "ann@example.com", "RETRYING", 2) == {
        "notification_id": "n-1",
        "user_id": "u-1",
        "alert_ids": ["a-1"],
        "rule_ids": ["r-1"],
        "channel": "email",
        "destination": "a***@example.com",
        "status": "RETRYING",
        "attempt": 2,
    }


def test_lifetime_logs_the_start_and_why_it_stopped(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("smart_alerts.test")
    with caplog.at_level(logging.INFO, "smart_alerts.test"):
        with lifetime(log, "job", {"recovery": "on"}) as life:
            life.reason = "SIGTERM received"
        with pytest.raises(ValueError), lifetime(log, "job", {}):
            raise ValueError("broker unreachable\nsecond line")
    start, stop, _, failed = caplog.records
    assert start.getMessage() == "job starting" and start.__dict__["recovery"] == "on"
    assert start.__dict__["version"]
    assert stop.getMessage() == "job stopped: SIGTERM received" and stop.levelname == "INFO"
    assert stop.__dict__["uptime_seconds"] >= 0
    assert failed.levelname == "ERROR"
    assert failed.__dict__["reason"] == "ValueError: broker unreachable"
