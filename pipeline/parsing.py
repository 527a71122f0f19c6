"""From a raw Kafka record to a validated message, or to a dead letter that says why.

Nothing read from Kafka can stop the job: every failure becomes a DeadLetter carrying the
source topic, partition, offset, key, value and the reason (ARCHITECTURE.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.config import Topics
from pipeline.fields import NUL_MESSAGE
from pipeline.messages import (
    DeadLetter,
    Feedback,
    InvalidMessage,
    OptionsFlow,
    Position,
    PositionClosed,
    Profile,
    ProfileReset,
    Rule,
    RuleTombstone,
    Tick,
    decode,
)

MAX_DEAD_LETTER_VALUE_CHARS = 65536


class RawRecord(Protocol):
    """What parsing needs of a record read from Kafka (connectors.kafka.SourceRecord)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp_ms(self) -> int | None: ...


Parsed = Tick | OptionsFlow | Rule | RuleTombstone | Position | PositionClosed | Feedback | Profile
ParsedItem = Parsed | ProfileReset


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    """Exactly one of ``item`` and ``dead_letter`` is set."""

    item: ParsedItem | None = None
    dead_letter: DeadLetter | None = None


def parse_record(record: RawRecord, topics: Topics) -> ParsedRecord:
    try:
        return ParsedRecord(item=_parse(record, topics))
    except InvalidMessage as exc:
        return ParsedRecord(dead_letter=dead_letter(record, str(exc)))


def _parse(record: RawRecord, topics: Topics) -> ParsedItem:
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    tombstone = not record.value
    topic = record.topic
    if topic == topics.ticks:
        return decode(Tick, record.value)
    if topic == topics.options_flow:
        return decode(OptionsFlow, record.value)
    if topic == topics.feedback:
        return decode(Feedback, record.value)
    if topic == topics.rules:
        if tombstone:
            return RuleTombstone(_require_key(key, "rule id"))
        rule = decode(Rule, record.value)
        _check_key(key, rule.id, "rules", "rule id")
        return rule
    if topic == topics.profiles:
        if tombstone:
            return ProfileReset(_require_key(key, "user id"))
        profile = decode(Profile, record.value)
        _check_key(key, profile.user_id, "profiles", "user id")
        return profile
    if topic == topics.positions:
        if tombstone:
            user_id, _, symbol = _require_key(key, "user:symbol").partition(":")
            if not user_id or not symbol:
                raise InvalidMessage(f"position tombstone key must be 'user:symbol', got {key!r}")
            return PositionClosed(user_id, symbol)
        position = decode(Position, record.value)
        _check_key(key, f"{position.user_id}:{position.symbol}", "positions", "user:symbol")
        return position
    raise InvalidMessage(f"no parser for topic {topic!r}")


def _require_key(key: str | None, what: str) -> str:
    if not key:
        raise InvalidMessage(f"tombstone without a key (expected the {what})")
    if "\x00" in key:  # no id has one (pipeline/fields.py), and the history could not store it
        raise InvalidMessage(f"tombstone key: {NUL_MESSAGE}")
    return key


def _check_key(key: str | None, expected: str, kind: str, what: str) -> None:
    # Compaction keeps the last value per key: a keyless record would never be replaced or
    # deleted, so it is refused like a key that disagrees with the body.
    if not key:
        raise InvalidMessage(f"a {kind} record needs its key: the {what}")
    if key != expected:
        raise InvalidMessage(f"message key {key!r} does not match its {what} {expected!r}")


def dead_letter(record: RawRecord, error: str) -> DeadLetter:
    """The record as a dead letter; its ts is the record's broker timestamp (deterministic)."""
    return DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=_text(record.key),
        value=_text(record.value),
        error=error[:4096],
        ts=_broker_time(record.timestamp_ms),
    )


def _broker_time(timestamp_ms: int | None) -> datetime:
    """The record's timestamp, or now when it has none a datetime can hold: a producer sets
    CreateTime, so it can be any 64-bit number."""
    if timestamp_ms:
        try:
            return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            pass
    return datetime.now(UTC)


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return bytes(raw).decode("utf-8", "replace")[:MAX_DEAD_LETTER_VALUE_CHARS]
