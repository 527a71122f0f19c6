"""SMS and voice channels: Twilio's Programmable Messaging and Voice APIs (``twilio`` client).

- ``TwilioSmsSender`` sends a short text (the title and the first lines of the message, at most
  ``MAX_SMS_CHARS``) with ``messages.create``;
- ``TwilioVoiceSender`` places a call (for CRITICAL alerts) that speaks a short message, given
  as inline TwiML (``<Response><Say>...</Say></Response>``, XML-escaped), with ``calls.create``.

One attempt per call (sinks/channels/base.py). Twilio error codes 21211 (invalid 'To'), 21610
(the recipient replied STOP) and 21614 (not a mobile number) are permanent and disable the number;
any other 4xx except 429 is permanent; 429, 5xx, timeouts and connection errors are transient,
with Retry-After honoured. ``TwilioRestException`` carries no response headers, so the sender's
HTTP client keeps the last response of each thread for the Retry-After header.

The auth token is never part of an error reason.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any, Self
from xml.sax.saxutils import escape

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from pipeline.messages import Channel, Notification
from sinks.channels.base import Delivery, PermanentError, SendResult, TransientError
from sinks.channels.email import parse_retry_after

MAX_SMS_CHARS = 320  # two concatenated GSM-7 segments' worth; Twilio bills per segment
MAX_SMS_LINES = 3
MAX_SPOKEN_CHARS = 300
VOICE_REPEAT = 2  # say it twice: the first words are often missed while picking up
DISABLING_CODES = frozenset({21211, 21610, 21614})
_WHITESPACE = re.compile(r"\s+")


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"


def sms_text(notification: Notification, limit: int = MAX_SMS_CHARS) -> str:
    """The title and the first non-empty lines of the message, at most ``limit`` characters."""
    title = _WHITESPACE.sub(" ", notification.title).strip()
    lines = [line.strip() for line in notification.message.splitlines() if line.strip()]
    parts = ([title] if title else []) + lines[:MAX_SMS_LINES]
    if len(lines) > MAX_SMS_LINES:
        parts.append(f"(+{len(lines) - MAX_SMS_LINES} more)")
    return _shorten("\n".join(parts) or "VS-9 Smart Alerts", limit)


def spoken_text(notification: Notification) -> str:
    """A short sentence for text-to-speech: the priority, the title and the first line."""
    title = _WHITESPACE.sub(" ", notification.title).strip()
    first = next((line.strip() for line in notification.message.splitlines() if line.strip()), "")
    priority = notification.highest_priority.value.lower()
    text = f"VS-9 {priority} alert. {title}."
    if first and first != title:
        text += f" {first}."
    return _shorten(text, MAX_SPOKEN_CHARS)


def voice_twiml(notification: Notification) -> str:
    said = escape(spoken_text(notification))
    say = f"<Say>{said}</Say>"
    return "<Response>" + '<Pause length="1"/>'.join([say] * VOICE_REPEAT) + "</Response>"


class _RecordingHttpClient(TwilioHttpClient):
    """TwilioHttpClient that remembers each thread's last response (for its headers)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)  # no retries: requests' default adapters
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.response = None
        response = super().request(*args, **kwargs)
        self._local.response = response
        return response

    def last_headers(self) -> Any:
        response = getattr(self._local, "response", None)
        return response.headers if response is not None else None


class _TwilioSender:
    provider: str
    channel: Channel

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        *,
        status_callback: str | None = None,
        timeout: float = 10.0,
        base_url: str | None = None,
    ) -> None:
        if not account_sid or not auth_token:
            raise ValueError("Twilio account SID and auth token are required")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.account_sid = account_sid
        self.from_number = from_number
        self.status_callback = status_callback
        self.timeout = timeout
        self._http = _RecordingHttpClient(timeout)
        # environment={} so TWILIO_EDGE / TWILIO_REGION cannot rewrite the host of base_url.
        self._client = Client(account_sid, auth_token, http_client=self._http, environment={})
        if base_url:
            self._client.api.base_url = base_url.rstrip("/")

    @classmethod
    def from_env(
        cls,
        from_number: str,
        *,
        status_callback: str | None = None,
        timeout: float = 10.0,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Credentials from TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (production)."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("TWILIO_ACCOUNT_SID", ""),
            env.get("TWILIO_AUTH_TOKEN", ""),
            from_number,
            status_callback=status_callback,
            timeout=timeout,
        )

    def send(self, delivery: Delivery) -> SendResult:
        try:
            sid = self._create(delivery)
        except TwilioRestException as exc:
            raise self._rest_error(exc.status, exc.code, exc.msg) from None
        except TwilioException as exc:  # TwilioServiceException (RFC 9457 bodies) and others
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                code = getattr(exc, "code", None)
                raise self._rest_error(status, code, str(getattr(exc, "detail", ""))) from None
            raise TransientError(f"{self.provider}: {type(exc).__name__}") from None
        except (requests.RequestException, OSError) as exc:  # timeouts, refused, resets
            raise TransientError(f"{self.provider}: {type(exc).__name__}: {exc}") from None
        return SendResult(provider_message_id=sid)

    def _create(self, delivery: Delivery) -> str | None:
        raise NotImplementedError

    def _rest_error(self, status: int, code: Any, msg: str) -> PermanentError | TransientError:
        code_text = f", code {code}" if code is not None and code != status else ""
        reason = f"{self.provider}: HTTP {status}{code_text}: {msg[:300]}"
        if status == 429 or status >= 500 or status == 408:
            headers = self._http.last_headers()
            retry_after = parse_retry_after(headers.get("Retry-After") if headers else None)
            return TransientError(reason, retry_after=retry_after)
        return PermanentError(reason, disable_destination=_as_int(code) in DISABLING_CODES)

    def close(self) -> None:
        if self._http.session is not None:
            self._http.session.close()


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class TwilioSmsSender(_TwilioSender):
    """Text messages through Twilio (``POST /2010-04-01/Accounts/{sid}/Messages.json``)."""

    channel = Channel.SMS
    provider = "twilio"

    def _create(self, delivery: Delivery) -> str | None:
        kwargs: dict[str, Any] = {}
        if self.status_callback:
            kwargs["status_callback"] = self.status_callback
        message = self._client.messages.create(
            to=delivery.destination,
            from_=self.from_number,
            body=sms_text(delivery.notification),
            **kwargs,
        )
        return message.sid


class TwilioVoiceSender(_TwilioSender):
    """Voice calls through Twilio (``POST /2010-04-01/Accounts/{sid}/Calls.json``)."""

    channel = Channel.VOICE
    provider = "twilio-voice"

    def _create(self, delivery: Delivery) -> str | None:
        kwargs: dict[str, Any] = {}
        if self.status_callback:
            kwargs["status_callback"] = self.status_callback
        call = self._client.calls.create(
            to=delivery.destination,
            from_=self.from_number,
            twiml=voice_twiml(delivery.notification),
            **kwargs,
        )
        return call.sid
