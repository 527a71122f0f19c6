"""E-mail channel: SendGrid (HTTP API) and plain SMTP, one rendering for both.

``render_email`` turns a notification into (subject, text, html): the title is the subject, each
line of the message is one line of the text body and one ``<br>``-separated line of the (escaped)
HTML body, and with a settings URL template configured (``delivery.settings_url``) both bodies
end with the user's settings/unsubscribe link, which also goes into a ``List-Unsubscribe``
header; without one, neither is there. Senders do one attempt each (sinks/channels/base.py):

- ``SendGridSender`` posts to ``/v3/mail/send`` through the ``sendgrid`` client; 4xx other than
  429 is permanent (a 400 about the recipient address disables the destination), 429 and 5xx
  are transient (Retry-After honoured), as are timeouts and connection errors.
- ``SmtpSender`` speaks SMTP through ``smtplib`` ("starttls", "ssl" implicit TLS, or "none");
  a 5xx reply is permanent (a 5.1.x / "user unknown" rejection of the recipient disables the
  destination), a 4xx reply, a timeout or a dropped connection is transient.

Secrets (the API key, the SMTP password) are never part of an error reason or a log line.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parsedate_to_datetime
from http.client import HTTPException
from typing import Any, Literal
from urllib.parse import quote

from python_http_client.exceptions import HTTPError as SendGridHTTPError
from sendgrid import SendGridAPIClient

from pipeline.messages import Channel, Notification
from sinks.channels.base import Delivery, PermanentError, SendResult, TransientError

log = logging.getLogger(__name__)

DEFAULT_SUBJECT = "VS-9 Smart Alerts"
SETTINGS_LINK_TEXT = "Manage your alert settings or unsubscribe"
_WHITESPACE = re.compile(r"\s+")


# ---------------------------------------------------------------- rendering


def settings_url_for(template: str | None, user_id: str) -> str | None:
    """The settings/unsubscribe URL of one user: ``template`` with ``{user_id}`` URL-quoted;
    None without a template."""
    if template is None:
        return None
    return template.format(user_id=quote(user_id, safe=""))


def render_email(notification: Notification, settings_url: str | None) -> tuple[str, str, str]:
    """(subject, plain text body, HTML body) of one notification."""
    subject = _WHITESPACE.sub(" ", notification.title).strip() or DEFAULT_SUBJECT
    lines = notification.message.splitlines() or [""]
    footer = ["--", f"{SETTINGS_LINK_TEXT}: {settings_url}", ""] if settings_url else []
    text = "\n".join([subject, "", *lines, "", *footer])
    body = "<br>\n".join(html.escape(line) for line in lines)
    html_footer = (
        "<hr>\n"
        f'<p><a href="{html.escape(settings_url, quote=True)}">'
        f"{html.escape(SETTINGS_LINK_TEXT)}</a></p>\n"
        if settings_url
        else ""
    )
    html_body = (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8"></head><body>\n'
        f"<h2>{html.escape(subject)}</h2>\n"
        f"<p>{body}</p>\n"
        f"{html_footer}"
        "</body></html>\n"
    )
    return subject, text, html_body


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# ---------------------------------------------------------------- SendGrid

_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(to|cc|bcc)\.\d+\.email$")


class SendGridSender:
    """E-mail through the SendGrid v3 API (``POST {host}/v3/mail/send``)."""

    channel = Channel.EMAIL
    provider = "sendgrid"

    def __init__(
        self,
        api_key: str,
        from_address: str,
        *,
        settings_url_template: str | None,
        from_name: str | None = None,
        host: str = "https://api.sendgrid.com",
        timeout: float = 10.0,
    ) -> None:
        if not api_key:
            raise ValueError("SendGrid API key is empty")
        self._client = SendGridAPIClient(api_key, host=host)
        self.from_address = from_address
        self.from_name = from_name
        self.settings_url_template = settings_url_template
        self.timeout = timeout

    def request_body(self, delivery: Delivery) -> dict[str, Any]:
        notification = delivery.notification
        settings_url = settings_url_for(self.settings_url_template, notification.user_id)
        subject, text, html_body = render_email(notification, settings_url)
        sender: dict[str, str] = {"email": self.from_address}
        if self.from_name:
            sender["name"] = self.from_name
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": delivery.destination}]}],
            "from": sender,
            "subject": subject,
            "content": [
                {"type": "text/plain", "value": text},
                {"type": "text/html", "value": html_body},
            ],
            "custom_args": {
                "notification_id": notification.notification_id,
                "idempotency_key": delivery.idempotency_key,
            },
        }
        if settings_url:
            body["headers"] = {"List-Unsubscribe": f"<{settings_url}>"}
        return body

    def send(self, delivery: Delivery) -> SendResult:
        body = self.request_body(delivery)
        try:
            response = self._client.client.mail.send.post(request_body=body, timeout=self.timeout)
        except SendGridHTTPError as exc:
            raise _sendgrid_error(exc) from None
        except (OSError, HTTPException) as exc:  # URLError, timeouts, resets, bad status lines
            raise TransientError(f"sendgrid: {type(exc).__name__}: {exc}") from None
        status = int(response.status_code)
        if not 200 <= status < 300:  # a 1xx/3xx urllib did not turn into an error
            raise PermanentError(f"sendgrid: unexpected HTTP {status}")
        return SendResult(provider_message_id=response.headers.get("X-Message-Id"))

    def close(self) -> None:
        return None


def _sendgrid_error(exc: SendGridHTTPError) -> PermanentError | TransientError:
    status = int(exc.status_code)
    headers = exc.headers
    retry_after = parse_retry_after(headers.get("Retry-After") if headers is not None else None)
    errors = _sendgrid_errors(exc.body)
    detail = "; ".join(f"{e.get('field') or '-'}: {e.get('message') or ''}".strip() for e in errors)
    reason = f"sendgrid: HTTP {status}" + (f" ({detail[:500]})" if detail else "")
    if status == 429:
        return TransientError(reason, retry_after=retry_after)
    if status >= 500 or status == 408:
        return TransientError(reason, retry_after=retry_after)
    bad_recipient = status == 400 and any(
        _RECIPIENT_FIELD.match(str(e.get("field") or "")) for e in errors
    )
    return PermanentError(reason, disable_destination=bad_recipient)


def _sendgrid_errors(body: Any) -> list[dict[str, Any]]:
    try:
        payload = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return []
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, dict)]


# ---------------------------------------------------------------- SMTP

SmtpSecurity = Literal["starttls", "ssl", "none"]
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Recipient rejections that mean "this mailbox does not exist", not "not now" or "policy".
_UNKNOWN_USER = re.compile(
    r"(\b5\.1\.[0-3]\b|user unknown|unknown user|no such user|does not exist|"
    r"mailbox unavailable|invalid (recipient|mailbox|address))",
    re.IGNORECASE,
)


class SmtpSender:
    """E-mail through an SMTP server (smtplib), one connection per attempt."""

    channel = Channel.EMAIL
    provider = "smtp"

    def __init__(
        self,
        host: str,
        port: int,
        from_address: str,
        *,
        settings_url_template: str | None,
        security: SmtpSecurity = "starttls",
        username: str | None = None,
        password: str | None = None,
        from_name: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("starttls", "ssl", "none"):
            raise ValueError(f"unknown SMTP security {security!r}: starttls, ssl or none")
        if (username is None) != (password is None):
            raise ValueError("SMTP username and password go together")
        self.host = host
        self.port = port
        self.from_address = from_address
        self.from_name = from_name
        self.settings_url_template = settings_url_template
        self.security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.local_hostname = local_hostname

    def message_id(self, idempotency_key: str) -> str:
        """Stable across retries: a resend is recognisably the same message."""
        local = (
            idempotency_key
            if _SAFE_ID.match(idempotency_key)
            else hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
        )
        domain = self.from_address.rpartition("@")[2] or "localhost"
        return f"<vs9.{local}@{domain}>"

    def build_message(self, delivery: Delivery) -> EmailMessage:
        notification = delivery.notification
        settings_url = settings_url_for(self.settings_url_template, notification.user_id)
        subject, text, html_body = render_email(notification, settings_url)
        message = EmailMessage()
        message["From"] = (
            formataddr((self.from_name, self.from_address)) if self.from_name else self.from_address
        )
        message["To"] = delivery.destination
        message["Subject"] = subject
        message["Date"] = format_datetime(notification.window_end)
        message["Message-ID"] = self.message_id(delivery.idempotency_key)
        if settings_url:
            message["List-Unsubscribe"] = f"<{settings_url}>"
        message["X-VS9-Notification-Id"] = notification.notification_id
        message.set_content(text)
        message.add_alternative(html_body, subtype="html")
        return message

    def send(self, delivery: Delivery) -> SendResult:
        message = self.build_message(delivery)
        try:
            with self._connect() as smtp:
                if self.username is not None and self._password is not None:
                    smtp.login(self.username, self._password)
                smtp.send_message(message, self.from_address, [delivery.destination])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (0, b""))
            raise _smtp_reply_error("recipient refused", code, text, recipient=True) from None
        except smtplib.SMTPResponseException as exc:  # sender refused, data, auth, connect, ...
            raise _smtp_reply_error(type(exc).__name__, exc.smtp_code, exc.smtp_error) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"smtp: {exc}") from None
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, timeouts, refused, TLS
            raise TransientError(f"smtp: {type(exc).__name__}: {exc}") from None
        return SendResult(provider_message_id=str(message["Message-ID"]))

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self.ssl_context,
            )
        smtp = smtplib.SMTP(
            self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
        )
        try:
            if self.security == "starttls":
                smtp.ehlo()
                smtp.starttls(context=self.ssl_context)  # no silent downgrade: raises if absent
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp

    def close(self) -> None:
        return None


def _smtp_reply_error(
    what: str, code: int, text: bytes | str, *, recipient: bool = False
) -> PermanentError | TransientError:
    message = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    reason = f"smtp: {what}: {code} {message}"[:500]
    if 500 <= code < 600:
        unknown_user = recipient and code in (550, 551, 553) and bool(_UNKNOWN_USER.search(message))
        return PermanentError(reason, disable_destination=unknown_user)
    return TransientError(reason)
