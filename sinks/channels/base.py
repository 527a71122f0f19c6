"""What every channel implements, and the errors that drive retries.

A Sender sends one delivery of one notification to one destination through one provider, with
its own timeouts, and either returns what the provider said or raises:
- ``PermanentError``: retrying cannot help (an unregistered push token, an invalid phone
  number, a 4xx other than 429, an SMTP 5xx, a webhook answering 410); the delivery is FAILED
  at once, and ``disable_destination`` says whether the destination should not be used again;
- ``TransientError``: worth retrying (timeouts, connection errors, 5xx, 429); ``retry_after`` is
  the provider's own hint in seconds when it gave one (Retry-After).
The delivery core (sinks/delivery.py) owns the outbox, retries, backoff, deadlines, circuit
breakers and rate limits; a sender does one attempt and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pipeline.messages import Channel, Notification


@dataclass(frozen=True, slots=True)
class Delivery:
    notification: Notification
    channel: Channel
    destination: str  # e-mail address, E.164 phone number, push token, webhook URL, feed key
    attempt: int  # 1 for the first try
    idempotency_key: str  # stable across retries and restarts (the delivery_logs row id)
    secret_ref: str | None = None  # webhooks: which secret signs the payload (never the secret)


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_message_id: str | None = None


class DeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PermanentError(DeliveryError):
    def __init__(self, reason: str, *, disable_destination: bool = False) -> None:
        super().__init__(reason)
        self.disable_destination = disable_destination


class TransientError(DeliveryError):
    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Sender(Protocol):
    channel: Channel
    provider: str  # the circuit breaker's and the metrics' name: "fcm", "sendgrid", "smtp", ...

    def send(self, delivery: Delivery) -> SendResult: ...

    def close(self) -> None: ...
