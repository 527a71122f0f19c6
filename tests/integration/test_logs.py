"""The log of real ``smart-alerts`` processes, switched to JSON: every line parses, every line
about an alert or a notification carries its ids, a start and a stop line, and no secret or
contact detail anywhere.

The job delivers one CRITICAL alert to a profile with every kind of contact: an e-mail address
(SMTP to the local mail catcher), a phone number (SMS and voice through the fake Twilio), a push
token (no push provider: a FAILED delivery), and a webhook whose URL holds a secret in its path
and its query (the local receiver). The database URL carries a password (PostgreSQL trusts
127.0.0.1 and ignores it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from connectors.mail_catcher import MailCatcher
from pipeline.config import Settings
from tests.conftest import PUSH_OLD_ALERTS, WEBHOOK_SECRET_REF, job_settings
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver
from tests.integration.test_end_to_end import produce, rule, tick

pytestmark = pytest.mark.integration

EMAIL = "jane.trader@example.org"
PHONE = "+15551234567"
PUSH_TOKEN = "push-token-7f3a9c2e51d84b06"
HOOK_PATH_SECRET = "T0PSECRETPATH"
HOOK_QUERY_SECRET = "q5ecretQueryValue"
DB_PASSWORD = "hunter2pw"
TWILIO_TOKEN = "twilio-auth-token-0123456789"
SAMPLES = Path(__file__).resolve().parents[2] / "pipeline" / "cli" / "samples"
IDS = ("alert_id", "notification_id", "alert_ids")


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailCatcher]:
    with MailCatcher(tmp_path / "mail") as catcher:
        yield catcher


def cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", *args],
        env={**env, "SMART_ALERTS_LOGGING__FORMAT": "json", "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every line of the log as an object; fails on the first line that is not JSON."""
    lines = []
    for number, line in enumerate(stderr.splitlines(), 1):
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line!r}")
        assert isinstance(document, dict), line
        assert {"ts", "level", "logger", "message"} <= document.keys(), line
        assert document["ts"].endswith("Z"), line
        lines.append(document)
    return lines


def assert_ids_on_every_line_about(
    lines: list[dict[str, Any]], alert_ids: set[str], notification_ids: set[str]
) -> None:
    """A line that names an alert or notification, in its message or anywhere, has the ids as
    fields; an alert line its rule and user, a notification line its user, alerts and rules."""
    for line in lines:
        text = json.dumps(line)
        about = any(i in text for i in alert_ids | notification_ids)
        about = about or any(key in line for key in IDS)
        if not about:
            continue
        assert any(key in line for key in IDS), line
        assert line["user_id"], line
        if "alert_id" in line:
            assert line["rule_id"], line
        if "notification_id" in line:
            assert line["alert_ids"] and line["rule_ids"], line
        if "channel" in line:
            assert line["status"] and isinstance(line["attempt"], int), line


def test_a_job_logs_json_with_ids_and_no_secrets(
    stack: StackUrls,
    database_url: str,
    mailbox: MailCatcher,
    twilio: FakeTwilio,
    receiver: WebhookReceiver,
) -> None:
    settings = job_settings(
        stack,
        database_url,
        engine={"shard_count": 4, "window_seconds": 60, "epoch_ms": 50},
        personalization=PUSH_OLD_ALERTS,
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "timeout_seconds": 5,
            "email_provider": "smtp",
            "email_from": "alerts@vs9.example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": mailbox.port,
            "smtp_security": "none",
            "twilio_account_sid": "AC" + "0" * 32,
            "twilio_from": "+15550001111",
            "twilio_base_url": twilio.url,
        },
    )
    settings = settings.model_copy(
        update={"database_url": database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@")}
    )
    user = f"u-{uuid.uuid4().hex[:8]}"
    webhook_url = f"{receiver.url}/hooks/{HOOK_PATH_SECRET}?token={HOOK_QUERY_SECRET}"
    t = settings.topics
    produce(
        settings,
        t.rules,
        [
            rule(
                "r-logs",
                user,
                "TSLA",
                {"type": "price_below", "threshold": 395},
                priority="CRITICAL",
                mode="once",
            )  # fmt: skip
        ],
    )
    produce(
        settings,
        t.profiles,
        [
            {
                "v": 1,
                "user_id": user,
                "channels": {"CRITICAL": ["in_app", "email", "sms", "webhook", "push"]},
                "destinations": {
                    "email": EMAIL,
                    "phone": PHONE,
                    "push_tokens": [PUSH_TOKEN],
                    "webhook": {"url": webhook_url, "secret_ref": WEBHOOK_SECRET_REF},
                },
            }
        ],
    )
    produce(settings, t.ticks, [tick("TSLA", 400, 0), tick("TSLA", 390, 1)])
    env = {**os.environ, **settings.as_environment(), "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}

    done = cli(["run", "--bounded"], env, timeout=120)

    assert done.returncode == 0, done.stderr[-3000:]
    assert len(mailbox.messages) == 1 and len(receiver.received) == 1 and len(twilio.received) == 1
    lines = json_lines(done.stderr)
    alert_ids, notification_ids = ids_in_database(database_url, user)
    assert len(alert_ids) == 1 and len(notification_ids) == 1

    (start,) = [line for line in lines if line.get("event") == "start"]
    assert start["message"] == "job starting" and start["version"]
    assert start["database"].startswith("postgresql://postgres:***@127.0.0.1:")
    assert start["topics"]["ticks"] == t.ticks and start["recovery"] == "off"
    assert start["channels"] == ["email", "in_app", "sms", "voice", "webhook"]
    (stop,) = [line for line in lines if line.get("event") == "stop"]
    assert stop["reason"] == "input read to its end" and stop["uptime_seconds"] > 0

    (alert,) = [line for line in lines if line["message"] == "alert triggered"]
    assert (alert["alert_id"], alert["rule_id"], alert["user_id"]) == (
        next(iter(alert_ids)),
        "r-logs",
        user,
    )
    assert_ids_on_every_line_about(lines, alert_ids, notification_ids)
    outcomes = {
        (line["channel"], line["status"], line["destination"])
        for line in lines
        if line.get("notification_id") and "channel" in line
    }
    port = receiver.url.rsplit(":", 1)[1]
    assert outcomes == {
        ("in_app", "DELIVERED", f"redis:sa:inapp:{user}"),
        ("email", "DELIVERED", "j***@example.org"),
        ("sms", "DELIVERED", "+1******4567"),
        ("webhook", "DELIVERED", f"http://127.0.0.1:{port}/…"),
        ("push", "FAILED", "***4b06"),
    }
    for secret in (
        EMAIL, PHONE, PHONE[1:], PUSH_TOKEN, HOOK_PATH_SECRET, HOOK_QUERY_SECRET, DB_PASSWORD,
        TWILIO_TOKEN, os.environ[WEBHOOK_SECRET_REF], "/hooks/",
    ):  # fmt: skip
        assert secret not in done.stderr, secret


def ids_in_database(database_url: str, user: str) -> tuple[set[str], set[str]]:
    """The user's alert ids (as the messages carry them) and notification ids."""
    with psycopg.connect(database_url) as conn:
        alerts = conn.execute(
            "SELECT external_id FROM triggered_alerts WHERE user_external_id = %s", (user,)
        ).fetchall()
        notes = conn.execute(
            "SELECT external_id FROM consolidated_alerts WHERE user_external_id = %s",
            (user,),
        ).fetchall()
    return {str(a) for (a,) in alerts}, {str(n) for (n,) in notes}


def test_the_demo_log_in_json_has_ids_on_every_alert_line(
    stack: StackUrls, database_url: str, tmp_path: Path
) -> None:
    settings: Settings = job_settings(stack, database_url)
    env = {**os.environ, **settings.as_environment()}

    done = cli(["demo", "--state-dir", str(tmp_path / "demo")], env, timeout=240)

    assert done.returncode == 0, done.stderr[-3000:]
    lines = json_lines(done.stderr)
    alerts = [line for line in lines if line["message"] == "alert triggered"]
    assert alerts and all(a["alert_id"] and a["rule_id"] and a["user_id"] for a in alerts)
    notes = [line for line in lines if "notification_id" in line]
    assert notes and all(n["user_id"] and n["alert_ids"] and n["rule_ids"] for n in notes)
    assert [line["event"] for line in lines if "event" in line] == ["start", "stop"]
    delivered = {n["channel"] for n in notes if n.get("status") == "DELIVERED"}
    assert {"email", "in_app"} <= delivered
    contacts = json.loads((SAMPLES / "profiles.json").read_text())
    for profile in contacts:
        for contact in (profile["destinations"].get(key) for key in ("email", "phone")):
            assert contact is None or contact not in done.stderr, contact
