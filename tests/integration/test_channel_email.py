"""E-mail senders for real: SendGrid's client against a fake API, smtplib against aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from connectors.embedded import free_ports
from pipeline.messages import Channel, Notification, Priority
from sinks.channels.base import Delivery, PermanentError, TransientError
from sinks.channels.email import SETTINGS_LINK_TEXT, SendGridSender, SmtpSender, render_email
from tests.fakes.sendgrid import FakeSendGrid
from tests.fakes.smtp import Recorder
from tests.fakes.tls import self_signed
from tests.fakes.webhook_receiver import Reply

pytestmark = pytest.mark.integration

SETTINGS = "https://alerts.example.com/settings?user={user_id}"
FROM = "alerts@vs9.example.com"
TO = "trader@example.org"


def notification() -> Notification:
    return Notification(
        notification_id="n-7",
        user_id="user 1&2",
        alert_ids=["a-1", "a-2"],
        title="SPY <calls> & puts",
        message="SPY 500C sweep $1.2M\nQQQ < 400 & falling",
        highest_priority=Priority.HIGH,
        channels=[Channel.EMAIL],
        window_start=datetime(2024, 5, 1, 14, 30, tzinfo=UTC),
        window_end=datetime(2024, 5, 1, 14, 31, tzinfo=UTC),
    )


def delivery(to: str = TO, key: str = "dl-9") -> Delivery:
    return Delivery(
        notification=notification(),
        channel=Channel.EMAIL,
        destination=to,
        attempt=1,
        idempotency_key=key,
    )


SETTINGS_URL = "https://alerts.example.com/settings?user=user%201%262"


def test_render_email_escapes_html_and_links_settings() -> None:
    subject, text, html = render_email(notification(), SETTINGS_URL)
    assert subject == "SPY <calls> & puts"
    assert "SPY 500C sweep $1.2M\nQQQ < 400 & falling" in text
    assert SETTINGS_URL in text
    assert "SPY 500C sweep $1.2M<br>\nQQQ &lt; 400 &amp; falling" in html
    assert "<h2>SPY &lt;calls&gt; &amp; puts</h2>" in html
    assert 'href="https://alerts.example.com/settings?user=user%201%262"' in html
    assert "<calls>" not in html


def test_without_a_settings_url_no_link_and_no_unsubscribe_header(
    sendgrid: FakeSendGrid, smtp: tuple[Controller, Recorder]
) -> None:
    _, text, html = render_email(notification(), None)
    assert SETTINGS_LINK_TEXT not in text and SETTINGS_LINK_TEXT not in html
    assert "example" not in text + html

    SendGridSender("SG.k", FROM, settings_url_template=None, host=sendgrid.url, timeout=5).send(
        delivery()
    )
    body: dict[str, Any] = FakeSendGrid.json_body(sendgrid.received[0])
    assert "headers" not in body
    assert {part["value"] for part in body["content"]} == {text, html}

    controller, recorder = smtp
    SmtpSender(
        "127.0.0.1", controller.port, FROM, settings_url_template=None, security="none"
    ).send(delivery())
    message = parse(recorder.messages[0][2])
    assert message["List-Unsubscribe"] is None
    assert SETTINGS_LINK_TEXT not in message.as_string()


# ---------------------------------------------------------------- SendGrid


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


def sendgrid_sender(server: FakeSendGrid, timeout: float = 5.0) -> SendGridSender:
    return SendGridSender(
        "SG.test-key",
        FROM,
        from_name="VS-9 Alerts",
        settings_url_template=SETTINGS,
        host=server.url,
        timeout=timeout,
    )


def test_sendgrid_request(sendgrid: FakeSendGrid) -> None:
    result = sendgrid_sender(sendgrid).send(delivery())
    assert result.provider_message_id == "sg-1"
    (got,) = sendgrid.received
    assert (got.method, got.path) == ("POST", "/v3/mail/send")
    assert got.headers["authorization"] == "Bearer SG.test-key"
    body: dict[str, Any] = FakeSendGrid.json_body(got)
    assert body["personalizations"] == [{"to": [{"email": TO}]}]
    assert body["from"] == {"email": FROM, "name": "VS-9 Alerts"}
    assert body["subject"] == "SPY <calls> & puts"
    content = {part["type"]: part["value"] for part in body["content"]}
    assert list(content) == ["text/plain", "text/html"]  # plain first, as SendGrid requires
    _, text, html = render_email(notification(), SETTINGS_URL)
    assert content == {"text/plain": text, "text/html": html}
    assert body["headers"] == {"List-Unsubscribe": f"<{SETTINGS_URL}>"}
    assert body["custom_args"]["notification_id"] == "n-7"


@pytest.mark.parametrize(
    ("reply", "disable"),
    [
        (
            FakeSendGrid.error(
                400,
                {
                    "message": "Does not contain a valid address.",
                    "field": "personalizations.0.to.0.email",
                },
            ),
            True,
        ),
        (FakeSendGrid.error(400, {"message": "bad subject", "field": "subject"}), False),
        (
            FakeSendGrid.error(401, {"message": "The provided authorization grant is invalid"}),
            False,
        ),
        (FakeSendGrid.error(403, {"message": "sender identity not verified"}), False),
        (FakeSendGrid.error(413, {"message": "too large"}), False),
    ],
    ids=["400-invalid-email", "400-other", "401", "403", "413"],
)
def test_sendgrid_permanent(sendgrid: FakeSendGrid, reply: Reply, disable: bool) -> None:
    sendgrid.reply_with(reply)
    with pytest.raises(PermanentError) as caught:
        sendgrid_sender(sendgrid).send(delivery())
    assert caught.value.disable_destination is disable
    assert "SG.test-key" not in caught.value.reason


@pytest.mark.parametrize(
    ("reply", "retry_after"),
    [
        (FakeSendGrid.error(429, {"message": "too many"}, headers={"Retry-After": "12"}), 12.0),
        (Reply(status=500), None),
        (Reply(status=502), None),
        (Reply(status=503, headers={"Retry-After": "3"}), 3.0),
        (Reply(hang=5.0), None),
        (Reply(drop=True), None),
    ],
    ids=["429", "500", "502", "503", "hang", "drop"],
)
def test_sendgrid_transient(sendgrid: FakeSendGrid, reply: Reply, retry_after: float) -> None:
    sendgrid.reply_with(reply)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        sendgrid_sender(sendgrid, timeout=0.5).send(delivery())
    assert caught.value.retry_after == retry_after
    assert time.monotonic() - started < 3


def test_sendgrid_connection_refused_is_transient() -> None:
    with FakeSendGrid() as closed:
        url = closed.url
    sender = SendGridSender("SG.k", FROM, settings_url_template=SETTINGS, host=url, timeout=1)
    with pytest.raises(TransientError):
        sender.send(delivery())


# ---------------------------------------------------------------- SMTP


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_ports(1)[0])
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


def smtp_sender(port: int, **options: Any) -> SmtpSender:
    options.setdefault("security", "none")
    return SmtpSender(
        "127.0.0.1", port, FROM, settings_url_template=SETTINGS, timeout=2.0, **options
    )


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_rendered(raw: bytes) -> EmailMessage:
    message = parse(raw)
    assert message["From"] == FROM
    assert message["To"] == TO
    assert message["Subject"] == "SPY <calls> & puts"
    assert message["List-Unsubscribe"] == f"<{SETTINGS_URL}>"
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    assert "QQQ < 400 & falling" in text and SETTINGS_URL in text
    assert "QQQ &lt; 400 &amp; falling" in html and f'href="{SETTINGS_URL}"' in html
    return message


def test_smtp_plain(smtp: tuple[Controller, Recorder]) -> None:
    controller, recorder = smtp
    sender = smtp_sender(controller.port)
    result = sender.send(delivery())
    (mail_from, rcpt_tos, raw) = recorder.messages[0]
    assert (mail_from, rcpt_tos) == (FROM, [TO])
    message = assert_rendered(raw)
    assert message["Message-ID"] == "<vs9.dl-9@vs9.example.com>" == result.provider_message_id
    sender.send(delivery())  # a retry carries the same Message-ID
    assert parse(recorder.messages[1][2])["Message-ID"] == message["Message-ID"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth() -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: aiosmtpd answers 535 itself (its default, handled=True, answers nothing)
        return AuthResult(success=data.password == b"s3cret", handled=False)

    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=free_ports(1)[0],
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    controller.start()
    try:
        smtp_sender(controller.port, username="mailer", password="s3cret").send(delivery())
        assert logins == [(b"mailer", b"s3cret")]
        assert_rendered(recorder.messages[0][2])
        with pytest.raises(PermanentError) as caught:  # 535: our configuration, not the user's
            smtp_sender(controller.port, username="mailer", password="wrong").send(delivery())
        assert "535" in caught.value.reason and "wrong" not in caught.value.reason
        assert caught.value.disable_destination is False
        with pytest.raises(PermanentError):  # 530 authentication required
            smtp_sender(controller.port).send(delivery())
    finally:
        controller.stop()


def test_smtp_550_user_unknown_disables(smtp: tuple[Controller, Recorder]) -> None:
    controller, recorder = smtp
    recorder.unknown.add("nobody@example.org")
    with pytest.raises(PermanentError) as caught:
        smtp_sender(controller.port).send(delivery(to="nobody@example.org"))
    assert caught.value.disable_destination is True
    assert "550" in caught.value.reason


def test_smtp_5xx_policy_rejection_is_permanent_without_disabling(
    smtp: tuple[Controller, Recorder],
) -> None:
    controller, recorder = smtp
    recorder.data_reply = "554 5.7.1 Message rejected as spam"
    with pytest.raises(PermanentError) as caught:
        smtp_sender(controller.port).send(delivery())
    assert caught.value.disable_destination is False


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_smtp_451_is_transient(smtp: tuple[Controller, Recorder], where: str) -> None:
    controller, recorder = smtp
    if where == "rcpt":
        recorder.rcpt_reply = "451 4.7.1 Greylisted, try again later"
    else:
        recorder.data_reply = "451 4.3.0 Local error in processing"
    with pytest.raises(TransientError) as caught:
        smtp_sender(controller.port).send(delivery())
    assert "451" in caught.value.reason


def test_smtp_connection_refused_and_hang_are_transient() -> None:
    with pytest.raises(TransientError):
        smtp_sender(free_ports(1)[0]).send(delivery())
    with socket.socket() as silent:  # accepts, never greets
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(TransientError):
            SmtpSender(
                "127.0.0.1",
                silent.getsockname()[1],
                FROM,
                settings_url_template=SETTINGS,
                security="none",
                timeout=0.5,
            ).send(delivery())
        assert time.monotonic() - started < 3


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem)."""
    return self_signed(tmp_path_factory.mktemp("tls"), "127.0.0.1")


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def client_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def test_smtp_starttls(certificate: tuple[Path, Path]) -> None:
    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=free_ports(1)[0],
        tls_context=server_context(certificate),
        require_starttls=True,
    )
    controller.start()
    try:
        smtp_sender(
            controller.port, security="starttls", ssl_context=client_context(certificate)
        ).send(delivery())
        assert_rendered(recorder.messages[0][2])
        # the default context does not trust the self-signed certificate: no silent fallback
        with pytest.raises(TransientError, match="SSL"):
            smtp_sender(controller.port, security="starttls").send(delivery())
        assert len(recorder.messages) == 1
    finally:
        controller.stop()


def test_smtp_starttls_not_offered_is_permanent(smtp: tuple[Controller, Recorder]) -> None:
    controller, recorder = smtp
    with pytest.raises(PermanentError, match="STARTTLS"):
        smtp_sender(controller.port, security="starttls").send(delivery())
    assert recorder.messages == []


def test_smtp_implicit_tls(certificate: tuple[Path, Path]) -> None:
    recorder = Recorder()
    controller = Controller(
        recorder,
        hostname="127.0.0.1",
        port=free_ports(1)[0],
        ssl_context=server_context(certificate),
    )
    controller.start()
    try:
        smtp_sender(controller.port, security="ssl", ssl_context=client_context(certificate)).send(
            delivery()
        )
        assert_rendered(recorder.messages[0][2])
    finally:
        controller.stop()
