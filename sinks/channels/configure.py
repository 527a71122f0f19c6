"""The senders and the delivery core a job's configuration asks for.

A channel gets a sender when its provider is configured (``[delivery]``, docs/integrations.md):
push with ``fcm_credentials_file``, e-mail with ``email_provider``, SMS and voice with a Twilio
account; webhooks need nothing global (each profile names its URL and secret ref: an
environment variable, or ``endpoint:<uuid>``, an endpoint made through the HTTP API whose
secret the database holds encrypted under SMART_ALERTS_SECRET_KEY). Secrets come from the
environment only. A partial configuration is a ConfigError naming what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.config import ConfigError, Delivery, Dependencies
from pipeline.messages import Channel
from sinks.channels.base import Sender
from sinks.channels.email import SendGridSender, SmtpSender
from sinks.channels.push import FcmSender
from sinks.channels.twilio_sms import TwilioSmsSender, TwilioVoiceSender
from sinks.channels.webhook import EndpointSecrets, WebhookSender, secret_box
from sinks.delivery import DeliveryCore, RetryPolicy
from sinks.postgres import HistoryWriter


def build_senders(
    config: Delivery,
    environ: Mapping[str, str] | None = None,
    *,
    database_url: str | None = None,
    connect_timeout: float = 5.0,
) -> dict[Channel, Sender]:
    """The configured senders; with ``database_url`` the webhook sender also resolves the
    ``endpoint:<uuid>`` secret refs of endpoints made through the HTTP API."""
    env = os.environ if environ is None else environ
    try:
        box = secret_box(env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    senders: dict[Channel, Sender] = {
        Channel.WEBHOOK: WebhookSender(
            endpoint_secrets=(
                EndpointSecrets(database_url, box, connect_timeout) if database_url else None
            ),
            allow_private_networks=set(config.webhook_allow_private_networks),
            read_timeout=config.timeout_seconds,
            ca_bundle=str(config.webhook_ca_bundle) if config.webhook_ca_bundle else None,
        )
    }
    try:
        if config.fcm_credentials_file is not None:
            senders[Channel.PUSH] = _fcm_sender(config)
        if config.email_provider is not None:
            senders[Channel.EMAIL] = _email_sender(config, env)
        account_sid = config.twilio_account_sid or env.get("TWILIO_ACCOUNT_SID")
        if account_sid:
            senders.update(_twilio_senders(config, account_sid, env))
    except BaseException:
        for sender in senders.values():
            sender.close()
        raise
    return senders


def build_delivery(
    config: Delivery, database_url: str, dependencies: Dependencies | None = None
) -> DeliveryCore:
    """A delivery core with its own database connection (its workers write from threads)."""
    timeout = dependencies.connect_timeout_seconds if dependencies is not None else 5.0
    senders = build_senders(config, database_url=database_url, connect_timeout=timeout)
    deadlines = {
        Channel.PUSH: config.push_deadline_seconds,
        Channel.EMAIL: config.email_deadline_seconds,
        Channel.SMS: config.sms_deadline_seconds,
        Channel.VOICE: config.voice_deadline_seconds,
        Channel.WEBHOOK: config.webhook_deadline_seconds,
    }
    return DeliveryCore(
        HistoryWriter(database_url, dependencies),
        senders,
        policies={channel: RetryPolicy(deadline=seconds) for channel, seconds in deadlines.items()},
        queue_size=config.queue_size,
        per_user_per_minute=config.per_user_per_minute,
        per_channel_per_second=config.per_channel_per_second,
        lease_seconds=config.lease_seconds,
        resume_seconds=config.resume_seconds,
        threads_per_channel=config.threads_per_channel,
        breaker_failures=config.breaker_failures,
        breaker_cooldown_seconds=config.breaker_cooldown_seconds,
    )


def _fcm_sender(config: Delivery) -> FcmSender:
    path = config.fcm_credentials_file
    assert path is not None
    try:
        return FcmSender.from_credentials(
            path, project_id=config.fcm_project_id, timeout=config.timeout_seconds
        )
    except (OSError, ValueError) as exc:  # firebase_admin reports a bad file as ValueError
        raise ConfigError(f"delivery.fcm_credentials_file {path}: {exc}") from exc


def _email_sender(config: Delivery, env: Mapping[str, str]) -> Sender:
    if not config.email_from:
        raise ConfigError("delivery.email_from is required when delivery.email_provider is set")
    if config.email_provider == "sendgrid":
        api_key = env.get("SENDGRID_API_KEY")
        if not api_key:
            raise ConfigError("delivery.email_provider is sendgrid but SENDGRID_API_KEY is not set")
        return SendGridSender(
            api_key,
            config.email_from,
            settings_url_template=config.settings_url,
            host=config.sendgrid_host,
            timeout=config.timeout_seconds,
        )
    if not config.smtp_host:
        raise ConfigError("delivery.email_provider is smtp but delivery.smtp_host is not set")
    password = env.get("SMTP_PASSWORD")
    if config.smtp_username and not password:
        raise ConfigError("delivery.smtp_username is set but SMTP_PASSWORD is not")
    return SmtpSender(
        config.smtp_host,
        config.smtp_port,
        config.email_from,
        settings_url_template=config.settings_url,
        security=config.smtp_security,
        username=config.smtp_username,
        password=password if config.smtp_username else None,
        timeout=config.timeout_seconds,
    )


def _twilio_senders(
    config: Delivery, account_sid: str, env: Mapping[str, str]
) -> dict[Channel, Sender]:
    auth_token = env.get("TWILIO_AUTH_TOKEN")
    if not auth_token:
        raise ConfigError("a Twilio account is configured but TWILIO_AUTH_TOKEN is not set")
    if not config.twilio_from:
        raise ConfigError("delivery.twilio_from (the sending number) is required for Twilio")
    return {
        channel: sender_class(
            account_sid,
            auth_token,
            config.twilio_from,
            status_callback=config.twilio_status_callback,
            timeout=config.timeout_seconds,
            base_url=config.twilio_base_url,
        )
        for channel, sender_class in (
            (Channel.SMS, TwilioSmsSender),
            (Channel.VOICE, TwilioVoiceSender),
        )
    }
