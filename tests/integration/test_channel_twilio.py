"""SMS and voice senders for real: Twilio's client against a local fake Twilio REST API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from pipeline.messages import Channel, Notification, Priority
from sinks.channels.base import Delivery, PermanentError, TransientError
from sinks.channels.twilio_sms import (
    MAX_SMS_CHARS,
    TwilioSmsSender,
    TwilioVoiceSender,
    sms_text,
    voice_twiml,
)
from tests.fakes.twilio import FakeTwilio
from tests.fakes.webhook_receiver import Reply

pytestmark = pytest.mark.integration

SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "test-auth-token-secret"
FROM = "+15005550006"
TO = "+14155550123"
CALLBACK = "https://alerts.example.com/twilio/status"


def notification(message: str = "SPY 500C sweep $1.2M\nQQQ < 400 & falling") -> Notification:
    return Notification(
        notification_id="n-7",
        user_id="u-1",
        alert_ids=["a-1"],
        title="SPY <calls> & puts",
        message=message,
        highest_priority=Priority.CRITICAL,
        channels=[Channel.SMS, Channel.VOICE],
        window_start=datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        window_end=datetime(2024, 5, 1, 14, 31, tzinfo=UTC),
    )


def delivery(channel: Channel = Channel.SMS, n: Notification | None = None) -> Delivery:
    return Delivery(
        notification=n or notification(),
        channel=channel,
        destination=TO,
        attempt=1,
        idempotency_key="dl-3",
    )


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


def sms_sender(server: FakeTwilio, timeout: float = 0.5) -> TwilioSmsSender:
    return TwilioSmsSender(
        SID, AUTH_TOKEN, FROM, status_callback=CALLBACK, timeout=timeout, base_url=server.url
    )


def voice_sender(server: FakeTwilio, timeout: float = 0.5) -> TwilioVoiceSender:
    return TwilioVoiceSender(
        SID, AUTH_TOKEN, FROM, status_callback=CALLBACK, timeout=timeout, base_url=server.url
    )


def test_sms_text_is_short() -> None:
    assert (
        sms_text(notification()) == "SPY <calls> & puts\nSPY 500C sweep $1.2M\nQQQ < 400 & falling"
    )
    long = sms_text(notification("\n".join(["line " + "x" * 150] * 5)))
    assert len(long) <= MAX_SMS_CHARS
    many = sms_text(notification("\n".join(f"l{i}" for i in range(6))))
    assert many == "SPY <calls> & puts\nl0\nl1\nl2\n(+3 more)"


def test_sms_request(twilio: FakeTwilio) -> None:
    sender = sms_sender(twilio)
    try:
        result = sender.send(delivery())
    finally:
        sender.close()
    assert result.provider_message_id == "SM" + f"{1:032x}"
    (got,) = twilio.received
    assert (got.method, got.path) == ("POST", f"/2010-04-01/Accounts/{SID}/Messages.json")
    assert FakeTwilio.basic_auth(got) == (SID, AUTH_TOKEN)
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    assert FakeTwilio.form_of(got.body) == {
        "To": TO,
        "From": FROM,
        "Body": "SPY <calls> & puts\nSPY 500C sweep $1.2M\nQQQ < 400 & falling",
        "StatusCallback": CALLBACK,
    }


def test_voice_request(twilio: FakeTwilio) -> None:
    sender = voice_sender(twilio)
    try:
        result = sender.send(delivery(Channel.VOICE))
    finally:
        sender.close()
    assert result.provider_message_id == "CA" + f"{1:032x}"
    (got,) = twilio.received
    assert (got.method, got.path) == ("POST", f"/2010-04-01/Accounts/{SID}/Calls.json")
    assert FakeTwilio.basic_auth(got) == (SID, AUTH_TOKEN)
    form = FakeTwilio.form_of(got.body)
    assert form == {
        "To": TO,
        "From": FROM,
        "Twiml": voice_twiml(notification()),
        "StatusCallback": CALLBACK,
    }
    said = "<Say>VS-9 critical alert. SPY &lt;calls&gt; &amp; puts. SPY 500C sweep $1.2M.</Say>"
    assert form["Twiml"] == f'<Response>{said}<Pause length="1"/>{said}</Response>'


def test_sms_without_status_callback(twilio: FakeTwilio) -> None:
    sender = TwilioSmsSender(SID, AUTH_TOKEN, FROM, timeout=0.5, base_url=twilio.url)
    sender.send(delivery())
    assert "StatusCallback" not in FakeTwilio.form_of(twilio.received[0].body)


@pytest.mark.parametrize("voice", [False, True], ids=["sms", "voice"])
@pytest.mark.parametrize(
    ("reply", "disable"),
    [
        (
            FakeTwilio.error(
                400, 21211, "The 'To' number +14155550123 is not a valid phone number."
            ),
            True,
        ),
        (FakeTwilio.error(400, 21610, "Attempt to send to unsubscribed recipient"), True),
        (FakeTwilio.error(400, 21614, "'To' number is not a valid mobile number"), True),
        (FakeTwilio.error(400, 21606, "The 'From' phone number is not valid"), False),
        (FakeTwilio.error(401, 20003, "Authenticate"), False),
        (FakeTwilio.error(404, 20404, "The requested resource was not found"), False),
    ],
    ids=["21211", "21610", "21614", "21606", "401", "404"],
)
def test_twilio_permanent(twilio: FakeTwilio, voice: bool, reply: Reply, disable: bool) -> None:
    twilio.reply_with(reply)
    sender = voice_sender(twilio) if voice else sms_sender(twilio)
    with pytest.raises(PermanentError) as caught:
        sender.send(delivery(Channel.VOICE if voice else Channel.SMS))
    assert caught.value.disable_destination is disable
    assert AUTH_TOKEN not in caught.value.reason
    assert len(twilio.received) == 1


@pytest.mark.parametrize("voice", [False, True], ids=["sms", "voice"])
@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (FakeTwilio.error(500, 20500, "Internal Server Error"), None),
        (Reply(status=502, body=b"<html>bad gateway</html>"), None),
        (FakeTwilio.error(503, 20503, "Service unavailable", {"Retry-After": "2"}), 2.0),
        (FakeTwilio.error(429, 20429, "Too Many Requests", {"Retry-After": "7"}), 7.0),
        (Reply(hang=5.0), None),
        (Reply(drop=True), None),
    ],
    ids=["500", "502-html", "503", "429", "hang", "drop"],
)
def test_twilio_transient(
    twilio: FakeTwilio, voice: bool, reply: Reply, retry_after: float | None
) -> None:
    twilio.reply_with(reply)
    sender = voice_sender(twilio) if voice else sms_sender(twilio)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        sender.send(delivery(Channel.VOICE if voice else Channel.SMS))
    assert time.monotonic() - started < 1.2
    assert caught.value.retry_after == retry_after
    assert AUTH_TOKEN not in caught.value.reason
    assert len(twilio.received) == 1


def test_retry_after_is_per_response(twilio: FakeTwilio) -> None:
    """A Retry-After of an earlier answer is not reused for a later error without one."""
    sender = sms_sender(twilio)
    twilio.reply_with(
        FakeTwilio.error(429, 20429, "Too Many Requests", {"Retry-After": "7"}),
        FakeTwilio.error(500, 20500, "Internal Server Error"),
    )
    with pytest.raises(TransientError) as first:
        sender.send(delivery())
    with pytest.raises(TransientError) as second:
        sender.send(delivery())
    assert (first.value.retry_after, second.value.retry_after) == (7.0, None)


def test_twilio_connection_refused_is_transient() -> None:
    with FakeTwilio() as closed:
        url = closed.url
    sender = TwilioSmsSender(SID, AUTH_TOKEN, FROM, timeout=0.5, base_url=url)
    with pytest.raises(TransientError):
        sender.send(delivery())


def test_from_env_reads_credentials_and_needs_both() -> None:
    env = {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN}
    sender = TwilioVoiceSender.from_env(FROM, environ=env)
    assert (sender.account_sid, sender.provider, sender.channel) == (
        SID,
        "twilio-voice",
        Channel.VOICE,
    )
    with pytest.raises(ValueError):
        TwilioSmsSender.from_env(FROM, environ={"TWILIO_ACCOUNT_SID": SID})
