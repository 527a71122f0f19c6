"""Provider faults through the whole delivery path: the delivery core, the real sender and its
SDK, and a local fake of the provider's API that fails the first call in each way a provider
does. Each delivery ends DELIVERED with one accepted request, or FAILED with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from firebase_admin import messaging

from pipeline.messages import Channel, Notification
from sinks.channels.base import Sender
from sinks.channels.email import SendGridSender
from sinks.channels.push import FcmSender
from sinks.channels.twilio_sms import TwilioSmsSender
from sinks.channels.webhook import WebhookSender
from sinks.delivery import DeliveryCore, RetryPolicy
from sinks.postgres import HistoryWriter
from tests.fakes.fcm import FakeFcm
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import FakeHttpServer, Reply, WebhookReceiver, new_secret
from tests.integration.test_channel_push import PROJECT, StaticCredentials
from tests.integration.test_delivery import notification, row

pytestmark = pytest.mark.integration

TIMEOUT = 0.5
SECRET = new_secret(b"faults")


def _sendgrid() -> tuple[FakeHttpServer, Callable[[str], Sender], Channel, str]:
    server = FakeSendGrid()
    return (
        server,
        lambda url: SendGridSender(
            "SG.test",
            "alerts@vs9.example.com",
            settings_url_template="https://x/{user_id}",
            host=url,
            timeout=TIMEOUT,
        ),  # fmt: skip
        Channel.EMAIL,
        "trader@example.org",
    )


def _twilio() -> tuple[FakeHttpServer, Callable[[str], Sender], Channel, str]:
    server = FakeTwilio()
    return (
        server,
        lambda url: TwilioSmsSender(
            "AC0123", "token", "+15550001111", base_url=url, timeout=TIMEOUT
        ),
        Channel.SMS,
        "+15550002222",
    )


def _fcm() -> tuple[FakeHttpServer, Callable[[str], Sender], Channel, str]:
    server = FakeFcm()
    return (
        server,
        lambda _url: FcmSender.from_credentials(
            StaticCredentials(), project_id=PROJECT, timeout=TIMEOUT
        ),
        Channel.PUSH,
        "device-token-faults",
    )


def _webhook() -> tuple[FakeHttpServer, Callable[[str], Sender], Channel, str]:
    server = WebhookReceiver([SECRET])
    return (
        server,
        lambda _url: WebhookSender(
            secret_resolver=lambda _ref: SECRET,
            allow_private_networks={"127.0.0.0/8"},
            read_timeout=TIMEOUT,
        ),
        Channel.WEBHOOK,
        "",  # the receiver's own URL
    )


PROVIDERS = {"sendgrid": _sendgrid, "twilio": _twilio, "fcm": _fcm, "webhook": _webhook}
FAULTS = {
    "500": Reply(500, body=b'{"error": "internal"}'),
    "429 Retry-After": Reply(429, headers={"Retry-After": "1"}),
    "timeout": Reply(hang=TIMEOUT * 4),
    "dropped": Reply(drop=True),
}


@pytest.fixture(params=list(PROVIDERS))
def provider(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[FakeHttpServer, Sender, Channel, str]]:
    server, build, channel, destination = PROVIDERS[request.param]()
    with server:
        if isinstance(server, FakeFcm):
            monkeypatch.setattr(messaging._MessagingService, "FCM_URL", server.fcm_url)
        sender = build(server.url)
        yield server, sender, channel, destination or f"{server.url}/hook"


def deliver(
    database_url: str, sender: Sender, channel: Channel, destination: str, **policy: Any
) -> Notification:
    history = HistoryWriter(database_url)
    core = DeliveryCore(
        history,
        {channel: sender},
        policies={channel: RetryPolicy(base=0.1, cap=0.2, **policy)},
        seed=7,
    )
    note = notification()
    history.write_notifications([note])
    core.submit(note, channel, destination, "FAULTS_SECRET")
    assert core.drain(15)
    core.close()
    history.close()
    return note


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failed_first_call_is_retried_and_delivered_once(
    provider: tuple[FakeHttpServer, Sender, Channel, str], database_url: str, fault: str
) -> None:
    server, sender, channel, destination = provider
    server.reply_with(FAULTS[fault])
    note = deliver(database_url, sender, channel, destination, deadline=30)
    assert row(database_url, note)[:2] == ("DELIVERED", 2)
    assert len(server.received) == 2  # the fault, then the one accepted request
    if fault == "429 Retry-After":
        assert server.received[1].at - server.received[0].at >= 1.0


def test_a_provider_that_keeps_failing_ends_failed_with_the_reason(
    provider: tuple[FakeHttpServer, Sender, Channel, str], database_url: str
) -> None:
    server, sender, channel, destination = provider
    server.default = Reply(503, headers={"Retry-After": "0"})
    note = deliver(database_url, sender, channel, destination, deadline=1.0)
    status, attempts, error = row(database_url, note)
    assert status == "FAILED" and attempts >= 2
    assert "503" in (error or "") and "deadline exceeded" in (error or "")
