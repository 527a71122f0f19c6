"""The log: JSON lines or text on stderr, context fields, and masking of secrets and contacts.

A call site passes what a line is about as fields (``extra=alert_fields(alert)``); the JSON
formatter writes them as members of the line's object, the text formatter as ``key=value``
after the message. Both formatters pass the message and every text field through ``redact``, so
a password in a URL, a token, an e-mail address or a phone number that reaches a message (an
exception's text, a provider's answer, a dead letter's reason) is masked there too; call sites
still mask what they know is a contact (``mask_destination``), as a regular expression cannot
recognise a push token.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import IO, Any

from pipeline.masking import mask_destination, mask_email, mask_phone, mask_url
from pipeline.messages import Notification, TriggeredAlert

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}  # uvicorn adds a colored copy
_SENSITIVE_KEY = re.compile(r"pass(word)?|secret|token|api_?key|authorization|credential", re.I)


# ---------------------------------------------------------------- masking

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.I)
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PHONE = re.compile(r"(?<![\w+])\+[0-9][0-9 ().-]{6,18}[0-9](?![0-9])")
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[\w.~+/=-]+", re.I)
_JWT = re.compile(r"\beyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]*")
_KEY_VALUE = re.compile(
    r"\b([\w-]*(?:password|passwd|secret|token|api[_-]?key|apikey|signature|authorization"
    r"|access[_-]?key|credentials?)[\w-]*)(\s*[=:]\s*|\"\s*:\s*\")([^\s&,;\"']+)",
    re.I,
)


def redact(text: str) -> str:
    """``text`` with URLs, e-mail addresses, phone numbers, bearer tokens, JWTs and
    ``secret=value`` pairs masked."""
    text = _BEARER.sub(lambda m: f"{m.group(1)} ***", text)
    text = _JWT.sub("***", text)
    text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    return _PHONE.sub(lambda m: mask_phone(re.sub(r"[^0-9+]", "", m.group(0))), text)


def _redacted(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return "***" if _SENSITIVE_KEY.search(key) else redact(value)
    if isinstance(value, dict):
        return {k: _redacted(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(key, v) for v in value]
    return value


# ---------------------------------------------------------------- context fields


def alert_fields(alert: TriggeredAlert) -> dict[str, Any]:
    return {
        "alert_id": alert.alert_id,
        "rule_id": alert.rule_id,
        "user_id": alert.user_id,
        "symbol": alert.symbol,
        "priority": alert.priority.value,
    }


class _RulesOfNotifications:
    """The rules behind each recent notification, for the delivery lines: a delivery carries
    only the notification, whose alert ids do not name their rules. Bounded; a delivery
    resumed after a restart, of a notification made before it, has no entry."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._rules: OrderedDict[str, list[str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, notification_id: str, rule_ids: Iterable[str]) -> None:
        with self._lock:
            self._rules[notification_id] = sorted(set(rule_ids))
            self._rules.move_to_end(notification_id)
            while len(self._rules) > self._size:
                self._rules.popitem(last=False)

    def of(self, notification_id: str) -> list[str] | None:
        with self._lock:
            return self._rules.get(notification_id)


RULES_OF_NOTIFICATIONS = _RulesOfNotifications()


def remember_rules(note: Notification, alerts: Iterable[TriggeredAlert]) -> None:
    """Remember the rules of ``note``'s alerts among ``alerts`` for its later log lines."""
    ids = set(note.alert_ids)
    RULES_OF_NOTIFICATIONS.remember(
        note.notification_id, (a.rule_id for a in alerts if a.alert_id in ids)
    )


def notification_fields(
    note: Notification, rule_ids: Iterable[str] | None = None
) -> dict[str, Any]:
    """A notification's ids; ``rule_ids`` are remembered for its later delivery lines."""
    if rule_ids is not None:
        RULES_OF_NOTIFICATIONS.remember(note.notification_id, rule_ids)
    fields: dict[str, Any] = {
        "notification_id": note.notification_id,
        "user_id": note.user_id,
        "alert_ids": list(note.alert_ids),
    }
    rules = RULES_OF_NOTIFICATIONS.of(note.notification_id)
    if rules is not None:
        fields["rule_ids"] = rules
    return fields


def delivery_fields(
    note: Notification, channel: str, destination: str, status: str, attempt: int
) -> dict[str, Any]:
    return {
        **notification_fields(note),
        "channel": channel,
        "destination": mask_destination(channel, destination),
        "status": status,
        "attempt": attempt,
    }


# ---------------------------------------------------------------- formatters


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: _redacted(key, value)
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, message, the context
    fields, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        document: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in _context(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = "".join(
            f" {key}={_text(value)}" for key, value in _context(record).items() if value is not None
        )
        line = (
            f"{self.formatTime(record)} {record.levelname} {record.name}: "
            f"{redact(record.getMessage())}{fields}"
        )
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    return str(value)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so that configuring again replaces it and leaves other handlers (pytest's).
    Without a stream of its own it writes to ``sys.stderr`` as it is at each line, since
    pytest replaces it per test."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure(format: str = "auto", level: str = "INFO", *, stream: IO[str] | None = None) -> bool:
    """Log to ``stream`` (stderr) at ``level``: JSON lines with ``format`` "json", or "auto"
    when the stream is no terminal; text otherwise. Returns whether it is JSON."""
    target = stream if stream is not None else sys.stderr
    as_json = format == "json" or (format == "auto" and not _is_terminal(target))
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's loggers write through the root's handler (the API is started without
    # uvicorn's own logging set-up) so its lines have the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Twilio's client logs every request's headers at INFO: ten lines per SMS that say nothing
    # the delivery line does not.
    logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
    return as_json


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ---------------------------------------------------------------- start and stop


def version() -> str:
    try:
        return metadata.version("vs9-smart-alerts")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Lifetime:
    """Set ``reason`` to say why the process stops; an exception says it by itself."""

    reason: str = "finished"


@contextmanager
def lifetime(log: logging.Logger, what: str, summary: dict[str, Any]) -> Iterator[Lifetime]:
    """One line when ``what`` starts (version and ``summary``), one when it stops (why, and
    how long it ran)."""
    log.info("%s starting", what, extra={"event": "start", "version": version(), **summary})
    started = time.monotonic()
    life = Lifetime()
    try:
        yield life
    except BaseException as exc:
        text = str(exc).strip().splitlines()
        life.reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")
        log.error(
            "%s stopped: %s",
            what,
            life.reason,
            extra={"event": "stop", "reason": life.reason, **_ran(started)},
        )
        raise
    log.info(
        "%s stopped: %s",
        what,
        life.reason,
        extra={"event": "stop", "reason": life.reason, **_ran(started)},
    )


def _ran(started: float) -> dict[str, float]:
    return {"uptime_seconds": round(time.monotonic() - started, 3)}


def server_summary(
    kafka_bootstrap_servers: str | None, database_url: str | None, redis_url: str | None
) -> dict[str, Any]:
    """The servers as a start line shows them: no password, no query."""
    return {
        "kafka": kafka_bootstrap_servers,
        "database": mask_url(database_url) if database_url else None,
        "redis": mask_url(redis_url) if redis_url else None,
    }
