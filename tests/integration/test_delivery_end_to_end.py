"""The whole job delivering through real providers' protocols on 127.0.0.1.

E-mail goes through the SMTP sender to an aiosmtpd server (the demo's mail catcher), webhooks
to a receiver that verifies every signature with the ``standardwebhooks`` library; the senders
are the ones the job builds from its ``[delivery]`` configuration. The last test kills the job
(SIGKILL) while one webhook is in the provider's hands and two wait in the outbox, and restarts
it.
"""

from __future__ import annotations

import email
import email.policy
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from connectors.mail_catcher import MailCatcher
from pipeline.config import Settings
from pipeline.dataflow import run
from tests.conftest import (
    PUSH_OLD_ALERTS,
    WEBHOOK_SECRET_REF,
    job_settings,
    start_processes,
    wait_for,
)
from tests.fakes.webhook_receiver import Reply, WebhookReceiver
from tests.integration.test_end_to_end import produce, rule, tick

pytestmark = pytest.mark.integration


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailCatcher]:
    with MailCatcher(tmp_path / "mail") as catcher:
        yield catcher


def delivery_settings(stack: StackUrls, database_url: str, **delivery: Any) -> Settings:
    return job_settings(
        stack,
        database_url,
        engine={"shard_count": 4, "window_seconds": 60, "epoch_ms": 50},
        personalization=PUSH_OLD_ALERTS,
        delivery={
            "webhook_allow_private_networks": ["127.0.0.0/8"],
            "timeout_seconds": 5,
            **delivery,
        },
    )


def profile(user: str, channels: list[str], **destinations: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "user_id": user,
        "channels": {"CRITICAL": channels},
        "destinations": destinations,
    }


def deliveries(database_url: str, user: str) -> list[tuple[str, str, str, int, int, str | None]]:
    """(channel, destination, status, attempts, retry_count, error) of the user's deliveries."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT d.channel, d.destination, d.status, d.attempts, d.retry_count, "
            "d.error_message FROM delivery_logs d "
            "JOIN consolidated_alerts c ON c.id = d.notification_id "
            "WHERE c.user_external_id = %s ORDER BY d.channel, d.created_at",
            (user,),
        ).fetchall()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def test_the_job_delivers_email_and_signed_webhooks_once_across_replays(
    stack: StackUrls, database_url: str, mailbox: MailCatcher, receiver: WebhookReceiver
) -> None:
    settings = delivery_settings(
        stack,
        database_url,
        email_provider="smtp",
        email_from="alerts@vs9.example.com",
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        smtp_security="none",
        settings_url="https://app.vs9.example.com/settings?user={user_id}",
    )
    t = settings.topics
    user = f"u-{uuid.uuid4().hex[:8]}"
    webhook_url = f"{receiver.url}/hooks/{user}"
    produce(
        settings,
        t.rules,
        [
            rule(
                "r-stop",
                user,
                "TSLA",
                {"type": "price_below", "threshold": 395},
                priority="CRITICAL",
                mode="once",
            )
        ],
    )
    produce(
        settings,
        t.profiles,
        [
            profile(
                user,
                ["in_app", "email", "webhook", "push"],
                email="trader@example.org",
                push_tokens=["device-token-1"],
                webhook={"url": webhook_url, "secret_ref": WEBHOOK_SECRET_REF},
            )
        ],
    )
    produce(settings, t.ticks, [tick("TSLA", 400, 0), tick("TSLA", 390, 1)])
    receiver.reply_with(Reply(503, headers={"Retry-After": "0"}))  # one transient failure

    run(settings, bounded=True)

    assert [(m[0], m[1]) for m in mailbox.messages] == [
        ("alerts@vs9.example.com", ["trader@example.org"])
    ]
    mail = email.message_from_bytes(mailbox.messages[0][2], policy=email.policy.default)
    assert "TSLA" in str(mail["Subject"])
    assert mail["List-Unsubscribe"] == f"<https://app.vs9.example.com/settings?user={user}>"
    assert [r.path for r in receiver.received] == [f"/hooks/{user}"] * 2
    assert all(r.verified_by == (0,) for r in receiver.received)
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1  # the retry is the same
    rows = {
        (channel, status): (attempts, retries, error)
        for channel, _, status, attempts, retries, error in deliveries(database_url, user)
    }
    assert rows[("email", "DELIVERED")][:2] == (1, 0)
    assert rows[("webhook", "DELIVERED")][:2] == (2, 1)
    assert rows[("in_app", "DELIVERED")][:2] == (1, 0)
    assert rows[("push", "FAILED")][2] == "no push provider configured"

    run(settings, bounded=True)  # a replay of every topic: nothing is sent twice

    assert len(mailbox.messages) == 1
    assert len(receiver.received) == 2


def webhook_statuses(database_url: str, user: str) -> list[str]:
    return sorted(row[2] for row in deliveries(database_url, user) if row[0] == "webhook")


def test_a_job_killed_mid_delivery_delivers_each_webhook_after_restart(
    stack: StackUrls, database_url: str, receiver: WebhookReceiver
) -> None:
    # One thread, so that the others wait in the outbox while the first is held; the lease is
    # short so that the restart may take over the row that was mid-call.
    settings = delivery_settings(
        stack, database_url, threads_per_channel=1, lease_seconds=1, timeout_seconds=30
    )
    t = settings.topics
    user = f"u-{uuid.uuid4().hex[:8]}"
    produce(
        settings,
        t.rules,
        [
            rule(
                "r-cross",
                user,
                "NVDA",
                {"type": "price_crosses_above", "threshold": 100},
                priority="CRITICAL",
            )
        ],
    )
    produce(
        settings,
        t.profiles,
        [
            profile(
                user, ["webhook"], webhook={"url": receiver.url, "secret_ref": WEBHOOK_SECRET_REF}
            )
        ],
    )
    prices = [99, 101, 99, 101, 99, 101]  # three crossings: three CRITICAL notifications
    produce(settings, t.ticks, [tick("NVDA", p, i) for i, p in enumerate(prices)])
    receiver.reply_with(Reply(hang=60))  # the first webhook is held by the "provider"

    [job] = start_processes(settings, 1)
    try:
        wait_for(
            lambda: (
                len(receiver.received) == 1
                and webhook_statuses(database_url, user) == ["PENDING", "PENDING", "SENDING"]
            ),
            120,
            "one webhook in flight and two in the outbox",
        )
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    in_flight = receiver.received[0].headers["webhook-id"]
    time.sleep(1.2)  # the killed job's lease lapses

    [restarted] = start_processes(settings, 1)
    assert restarted.wait(180) == 0

    assert webhook_statuses(database_url, user) == ["DELIVERED"] * 3
    sent = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert len(sent) == 3 and all(r.verified_by == (0,) for r in receiver.received)
    # Those waiting in the outbox went exactly once; the one the provider held when the job
    # died went again with the same webhook-id, which is how receivers drop the duplicate.
    assert sent.pop(in_flight) == 2
    assert list(sent.values()) == [1, 1]
