"""Push channel: Firebase Cloud Messaging (HTTP v1) through ``firebase-admin``.

``FcmSender`` sends one message to one device token (``delivery.destination``) per call with
``firebase_admin.messaging.send`` (sinks/channels/base.py: one attempt, no retries of its own):

- the notification's title and (shortened) message, and a data payload with notification_id,
  user_id, highest_priority and alert_ids (a JSON string: FCM data values are strings);
- Android priority "high" for HIGH/CRITICAL, else "normal"; an APNs payload with the alert,
  sound "default", badge 1 and ``interruption-level: time-sensitive`` for HIGH/CRITICAL, and the
  ``apns-priority`` header 10 for HIGH/CRITICAL, else 5;
- UNREGISTERED / SENDER_ID_MISMATCH (the token is dead or belongs to another project) is
  permanent and disables the token; INVALID_ARGUMENT and other 4xx are permanent; quota (429),
  5xx, timeouts and connection errors are transient, with Retry-After honoured.

firebase-admin retries on its own (a connection or read error once, HTTP 500/503 up to four
times with backoff): the sender replaces the messaging service's HTTP client with one that does
not retry and uses the sender's timeout, so one ``send`` is one HTTP request. The exception is
an HTTP 401: google-auth's session refreshes the access token and sends once more (the SDK
default allows two such refreshes; this sender one), as a 401 means nothing was delivered.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import firebase_admin
import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import requests
from firebase_admin import _http_client, credentials, exceptions, messaging

from pipeline.messages import Channel, Notification, Priority
from sinks.channels.base import Delivery, PermanentError, SendResult, TransientError
from sinks.channels.email import parse_retry_after

MAX_BODY_CHARS = 1000  # FCM allows 4 KB for the whole message; lock screens show far less
MAX_DATA_ALERT_IDS = 50
_URGENT = (Priority.HIGH, Priority.CRITICAL)
_app_names = itertools.count(1)


def _shorten(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # end on a word boundary when there is one near the end
        cut = cut[:space]
    return cut.rstrip() + "…"


def build_message(notification: Notification, token: str) -> messaging.Message:
    """The FCM message of one notification to one device token."""
    urgent = notification.highest_priority in _URGENT
    title = notification.title.strip() or "VS-9 Smart Alerts"
    body = _shorten(notification.message, MAX_BODY_CHARS)
    alert_ids = notification.alert_ids[:MAX_DATA_ALERT_IDS]
    aps_extra = {"interruption-level": "time-sensitive"} if urgent else None
    message = messaging.Message(
        notification=messaging.Notification(title=title, body=body),
        data={
            "notification_id": notification.notification_id,
            "user_id": notification.user_id,
            "highest_priority": notification.highest_priority.value,
            "alert_ids": json.dumps(alert_ids, separators=(",", ":")),
            "alert_count": str(len(notification.alert_ids)),
        },
        android=messaging.AndroidConfig(priority="high" if urgent else "normal"),
        apns=messaging.APNSConfig(
            headers={"apns-priority": "10" if urgent else "5", "apns-push-type": "alert"},
            payload=messaging.APNSPayload(
                aps=messaging.Aps(
                    alert=messaging.ApsAlert(title=title, body=body),
                    sound="default",
                    badge=1,
                    custom_data=aps_extra,
                )
            ),
        ),
    )
    # A device registration token goes in "token". firebase-admin 7.7 deprecates the
    # ``token=`` argument (warning on every call) in favour of ``fid`` (a Firebase installation
    # ID, sent as "fid"), which is not what the apps register; the attribute is not deprecated.
    message.token = token
    return message


class FcmSender:
    """Push notifications through FCM for one firebase_admin App."""

    channel = Channel.PUSH
    provider = "fcm"

    def __init__(
        self, app: firebase_admin.App, *, timeout: float = 10.0, owns_app: bool = False
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.app = app
        self.timeout = timeout
        self._owns_app = owns_app
        # The SDK has no option for retries: swap in a client that does none (see module doc).
        service = messaging._get_messaging_service(app)
        previous = service._client
        session = google.auth.transport.requests.AuthorizedSession(
            service._credential, max_refresh_attempts=1, refresh_timeout=timeout
        )
        service._client = _http_client.JsonHttpClient(
            session=session, timeout=timeout, retries=False
        )
        previous.close()

    @classmethod
    def from_credentials(
        cls,
        credential: str | os.PathLike[str] | google.auth.credentials.Credentials | credentials.Base,
        *,
        project_id: str | None = None,
        timeout: float = 10.0,
    ) -> FcmSender:
        """A sender with its own App: ``credential`` is a service-account JSON file path, a
        google-auth credentials object or a firebase_admin credential; ``project_id`` is needed
        unless the credential names the project (a service-account file does)."""
        if isinstance(credential, str | os.PathLike):
            credential = credentials.Certificate(os.fspath(credential))
        options: dict[str, Any] = {"httpTimeout": timeout}
        if project_id:
            options["projectId"] = project_id
        app = firebase_admin.initialize_app(
            credential, options, name=f"vs9-fcm-{os.getpid()}-{next(_app_names)}"
        )
        try:
            return cls(app, timeout=timeout, owns_app=True)
        except BaseException:
            firebase_admin.delete_app(app)
            raise

    def send(self, delivery: Delivery) -> SendResult:
        message = build_message(delivery.notification, delivery.destination)
        try:
            name = messaging.send(message, app=self.app)
        except exceptions.FirebaseError as exc:
            raise _fcm_error(exc) from None
        except google.auth.exceptions.TransportError as exc:  # fetching the OAuth2 token
            raise TransientError(f"fcm: credentials: {type(exc).__name__}: {exc}") from None
        except google.auth.exceptions.RefreshError as exc:
            reason = f"fcm: credentials: {exc}"
            if getattr(exc, "retryable", False):
                raise TransientError(reason) from None
            raise PermanentError(reason) from None
        except requests.RequestException as exc:  # not expected: the SDK wraps these
            raise TransientError(f"fcm: {type(exc).__name__}: {exc}") from None
        return SendResult(provider_message_id=name)

    def close(self) -> None:
        if self._owns_app:
            self._owns_app = False
            firebase_admin.delete_app(self.app)


def _fcm_error(exc: exceptions.FirebaseError) -> PermanentError | TransientError:
    response = exc.http_response  # a requests.Response is falsy for 4xx/5xx: compare to None
    status = response.status_code if response is not None else None
    retry_after = (
        parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
    )
    reason = f"fcm: {type(exc).__name__} ({exc.code}"
    reason += f", HTTP {status}): " if status is not None else "): "
    reason += str(exc)[:300]
    if isinstance(exc, messaging.UnregisteredError | messaging.SenderIdMismatchError):
        return PermanentError(reason, disable_destination=True)
    if status is None:  # DeadlineExceeded (timeout), Unavailable (connection), Unknown
        return TransientError(reason)
    if status >= 500 or status in (408, 429):  # QUOTA_EXCEEDED, UNAVAILABLE, INTERNAL...
        return TransientError(reason, retry_after=retry_after)
    # INVALID_ARGUMENT, THIRD_PARTY_AUTH_ERROR, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND...
    return PermanentError(reason)
