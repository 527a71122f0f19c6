"""Which senders a [delivery] configuration builds, and the errors of a partial one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ConfigError, Delivery
from pipeline.messages import Channel
from sinks.channels.configure import build_senders
from sinks.channels.email import SendGridSender, SmtpSender
from sinks.channels.twilio_sms import TwilioSmsSender, TwilioVoiceSender
from sinks.channels.webhook import WebhookSender


def senders(env: dict[str, str] | None = None, **config: Any) -> dict[Channel, Any]:
    built = build_senders(Delivery(**config), environ=env or {})
    for sender in built.values():
        sender.close()
    return built


def test_webhooks_need_no_provider_and_get_the_allow_list() -> None:
    built = senders(webhook_allow_private_networks=["127.0.0.0/8"])
    assert list(built) == [Channel.WEBHOOK]
    webhook = built[Channel.WEBHOOK]
    assert isinstance(webhook, WebhookSender)
    webhook.check_url("http://127.0.0.1:8080/hook")  # allowed: no error
    with pytest.raises(Exception, match="10.0.0.1"):
        webhook.check_url("http://10.0.0.1/hook")


def test_sendgrid_and_smtp_by_configuration() -> None:
    mail = {"email_from": "alerts@example.com"}
    sendgrid = senders({"SENDGRID_API_KEY": "SG.x"}, email_provider="sendgrid", **mail)
    assert isinstance(sendgrid[Channel.EMAIL], SendGridSender)
    smtp = senders(
        {"SMTP_PASSWORD": "pw"},
        email_provider="smtp",
        smtp_host="mail.example.com",
        smtp_username="alerts",
        smtp_security="ssl",
        smtp_port=465,
        **mail,
    )
    sender = smtp[Channel.EMAIL]
    assert isinstance(sender, SmtpSender)
    assert (sender.host, sender.port, sender.security, sender.username) == (
        "mail.example.com", 465, "ssl", "alerts",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        ({}, {"email_provider": "sendgrid", "email_from": "a@b.c"}, "SENDGRID_API_KEY"),
        ({"SENDGRID_API_KEY": "SG.x"}, {"email_provider": "sendgrid"}, "email_from"),
        ({}, {"email_provider": "smtp", "email_from": "a@b.c"}, "smtp_host"),
        (
            {},
            {
                "email_provider": "smtp",
                "email_from": "a@b.c",
                "smtp_host": "h",
                "smtp_username": "u",
            },
            "SMTP_PASSWORD",
        ),
        ({}, {"twilio_account_sid": "AC1", "twilio_from": "+15550001111"}, "TWILIO_AUTH_TOKEN"),
        ({"TWILIO_AUTH_TOKEN": "t"}, {"twilio_account_sid": "AC1"}, "twilio_from"),
        ({}, {"fcm_credentials_file": "/nonexistent/sa.json"}, "/nonexistent/sa.json"),
    ],
)
def test_a_partial_configuration_names_what_is_missing(
    env: dict[str, str], config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        senders(env, **config)


def test_twilio_builds_sms_and_voice_from_the_environment_sid() -> None:
    built = senders(
        {"TWILIO_ACCOUNT_SID": "AC123", "TWILIO_AUTH_TOKEN": "t"}, twilio_from="+15550001111"
    )
    assert isinstance(built[Channel.SMS], TwilioSmsSender)
    assert isinstance(built[Channel.VOICE], TwilioVoiceSender)
    assert built[Channel.SMS].account_sid == "AC123"


def test_a_bad_service_account_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "sa.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="fcm_credentials_file"):
        senders(fcm_credentials_file=bad)
