"""Push sender for real: firebase-admin's messaging client against a local fake FCM v1 API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import google.auth.credentials
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import messaging

from pipeline.messages import Channel, Notification, Priority
from sinks.channels.base import Delivery, PermanentError, TransientError
from sinks.channels.push import MAX_BODY_CHARS, FcmSender
from tests.fakes.fcm import FakeFcm
from tests.fakes.webhook_receiver import Reply

pytestmark = pytest.mark.integration

PROJECT = "vs9-test"
TOKEN = "test-access-token"
DEVICE = "device-token-abc:APA91b-xyz"


class StaticCredentials(google.auth.credentials.Credentials):
    """A google-auth credential that never leaves the machine: refresh sets a fixed token."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = TOKEN


def notification(priority: Priority = Priority.HIGH, message: str | None = None) -> Notification:
    return Notification(
        notification_id="n-7",
        user_id="u-1",
        alert_ids=["a-1", "a-2"],
        title="SPY 500C sweep",
        message=message if message is not None else "SPY 500C sweep $1.2M\nQQQ < 400",
        highest_priority=priority,
        channels=[Channel.PUSH],
        window_start=datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        window_end=datetime(2024, 5, 1, 14, 31, tzinfo=UTC),
    )


def delivery(n: Notification | None = None) -> Delivery:
    return Delivery(
        notification=n or notification(),
        channel=Channel.PUSH,
        destination=DEVICE,
        attempt=1,
        idempotency_key="dl-1",
    )


@pytest.fixture
def fcm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFcm]:
    with FakeFcm() as server:
        monkeypatch.setattr(messaging._MessagingService, "FCM_URL", server.fcm_url)
        yield server


@pytest.fixture
def sender(fcm: FakeFcm) -> Iterator[FcmSender]:
    s = FcmSender.from_credentials(StaticCredentials(), project_id=PROJECT, timeout=0.5)
    yield s
    s.close()


def test_fcm_request_high_priority(fcm: FakeFcm, sender: FcmSender) -> None:
    result = sender.send(delivery())
    assert result.provider_message_id == f"projects/{PROJECT}/messages/1"
    (got,) = fcm.received
    assert (got.method, got.path) == ("POST", f"/v1/projects/{PROJECT}/messages:send")
    assert got.headers["authorization"] == f"Bearer {TOKEN}"
    assert got.headers["content-type"] == "application/json"
    body = FakeFcm.json_body(got)
    assert list(body) == ["message"]  # no validate_only: a real send
    message = body["message"]
    assert message["token"] == DEVICE
    assert message["notification"] == {
        "title": "SPY 500C sweep",
        "body": "SPY 500C sweep $1.2M\nQQQ < 400",
    }
    assert message["data"] == {
        "notification_id": "n-7",
        "user_id": "u-1",
        "highest_priority": "HIGH",
        "alert_ids": '["a-1","a-2"]',
        "alert_count": "2",
    }
    assert json.loads(message["data"]["alert_ids"]) == ["a-1", "a-2"]
    assert message["android"] == {"priority": "high"}
    assert message["apns"] == {
        "headers": {"apns-priority": "10", "apns-push-type": "alert"},
        "payload": {
            "aps": {
                "alert": {"title": "SPY 500C sweep", "body": "SPY 500C sweep $1.2M\nQQQ < 400"},
                "sound": "default",
                "badge": 1,
                "interruption-level": "time-sensitive",
            }
        },
    }


def test_fcm_request_critical_and_low(fcm: FakeFcm, sender: FcmSender) -> None:
    sender.send(delivery(notification(Priority.CRITICAL)))
    sender.send(delivery(notification(Priority.LOW)))
    critical, low = (FakeFcm.json_body(r)["message"] for r in fcm.received)
    assert critical["android"]["priority"] == "high"
    assert critical["apns"]["headers"]["apns-priority"] == "10"
    assert critical["apns"]["payload"]["aps"]["interruption-level"] == "time-sensitive"
    assert low["android"]["priority"] == "normal"
    assert low["apns"]["headers"]["apns-priority"] == "5"
    assert "interruption-level" not in low["apns"]["payload"]["aps"]
    assert low["data"]["highest_priority"] == "LOW"


def test_fcm_long_message_is_shortened(fcm: FakeFcm, sender: FcmSender) -> None:
    sender.send(delivery(notification(message="word " * 800)))
    message = FakeFcm.json_body(fcm.received[0])["message"]
    body = message["notification"]["body"]
    assert len(body) <= MAX_BODY_CHARS
    assert body.endswith("word…")
    assert message["apns"]["payload"]["aps"]["alert"]["body"] == body


@pytest.mark.parametrize(
    ("reply", "disable"),
    [
        (FakeFcm.error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."), True),
        (FakeFcm.error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"), True),
        (FakeFcm.error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "bad token format"), False),
    ],
    ids=["unregistered", "sender-id-mismatch", "invalid-argument"],
)
def test_fcm_permanent(fcm: FakeFcm, sender: FcmSender, reply: Reply, disable: bool) -> None:
    fcm.reply_with(reply)
    with pytest.raises(PermanentError) as caught:
        sender.send(delivery())
    assert caught.value.disable_destination is disable
    assert TOKEN not in caught.value.reason
    assert len(fcm.received) == 1


def test_fcm_401_refreshes_the_token_once(fcm: FakeFcm) -> None:
    credential = StaticCredentials()
    sender = FcmSender.from_credentials(credential, project_id=PROJECT, timeout=0.5)
    rejected = FakeFcm.error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "APNs auth")
    try:
        fcm.reply_with(rejected, rejected, rejected)
        with pytest.raises(PermanentError) as caught:
            sender.send(delivery())
    finally:
        sender.close()
    assert caught.value.disable_destination is False
    assert len(fcm.received) == 2  # google-auth refreshed the token and resent, once
    assert credential.refreshes == 2


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (FakeFcm.error(500, "INTERNAL", "INTERNAL", "internal"), None),
        (FakeFcm.error(503, "UNAVAILABLE", "UNAVAILABLE", "overloaded"), None),
        (
            FakeFcm.error(
                429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota", headers={"Retry-After": "7"}
            ),
            7.0,
        ),
        (Reply(status=429, headers={"Retry-After": "7"}), 7.0),
        (Reply(hang=5.0), None),
        (Reply(drop=True), None),
    ],
    ids=["500", "503", "429-quota", "429-plain", "hang", "drop"],
)
def test_fcm_transient(
    fcm: FakeFcm, sender: FcmSender, reply: Reply, retry_after: float | None
) -> None:
    fcm.reply_with(reply)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        sender.send(delivery())
    assert time.monotonic() - started < 1.2
    assert caught.value.retry_after == retry_after
    assert len(fcm.received) == 1  # one attempt: the SDK's own retries are off


def test_fcm_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeFcm() as closed:
        url = closed.fcm_url
    monkeypatch.setattr(messaging._MessagingService, "FCM_URL", url)
    sender = FcmSender.from_credentials(StaticCredentials(), project_id=PROJECT, timeout=0.5)
    try:
        with pytest.raises(TransientError):
            sender.send(delivery())
    finally:
        sender.close()


def test_fcm_from_service_account_file(fcm: FakeFcm, tmp_path: Path) -> None:
    """A service-account file: the project comes from it, the OAuth2 token from its token_uri."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "sa-project",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "fcm@sa-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"{fcm.url}/token",
            }
        )
    )
    fcm.reply_with(
        Reply(
            status=200,
            headers={"Content-Type": "application/json"},
            body=json.dumps(
                {"access_token": "sa-token", "expires_in": 3600, "token_type": "Bearer"}
            ).encode(),
        )
    )
    sender = FcmSender.from_credentials(path, timeout=0.5)
    try:
        result = sender.send(delivery())
    finally:
        sender.close()
    assert result.provider_message_id == "projects/sa-project/messages/1"
    token_request, send_request = fcm.received
    assert (token_request.method, token_request.path) == ("POST", "/token")
    assert b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer" in token_request.body
    assert send_request.path == "/v1/projects/sa-project/messages:send"
    assert send_request.headers["authorization"] == "Bearer sa-token"
