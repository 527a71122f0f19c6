"""From a raw Kafka record to a validated message, or to a dead letter that says why.

Nothing read from Kafka can stop the job: every failure becomes a DeadLetter carrying the
source topic, partition, offset, key, value and the reason (ARCHITECTURE.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from pipeline.config import Topics
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
        _check_key(key, rule.id, "rule id")
        return rule
    if topic == topics.profiles:
        if tombstone:
            return ProfileReset(_require_key(key, "user id"))
        profile = decode(Profile, record.value)
        _check_key(key, profile.user_id, "user id")
        return profile
    if topic == topics.positions:
        if tombstone:
            user_id, _, symbol = _require_key(key, "user:symbol").partition(":")
            if not user_id or not symbol:
                raise InvalidMessage(f"position tombstone key must be 'user:symbol', got {key!r}")
            return PositionClosed(user_id, symbol)
        position = decode(Position, record.value)
        _check_key(key, f"{position.user_id}:{position.symbol}", "user:symbol")
        return position
    raise InvalidMessage(f"no parser for topic {topic!r}")


def _require_key(key: str | None, what: str) -> str:
    if not key:
        raise InvalidMessage(f"tombstone without a key (expected the {what})")
    return key


def _check_key(key: str | None, expected: str, what: str) -> None:
    if key is not None and key != expected:
        raise InvalidMessage(f"message key {key!r} does not match its {what} {expected!r}")


def dead_letter(record: RawRecord, error: str) -> DeadLetter:
    """The record as a dead letter; its ts is the record's broker timestamp (deterministic)."""
    ts = (
        datetime.fromtimestamp(record.timestamp_ms / 1000, tz=UTC)
        if record.timestamp_ms
        else datetime.now(UTC)
    )
    return DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=_text(record.key),
        value=_text(record.value),
        error=error[:4096],
        ts=ts,
    )


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return bytes(raw).decode("utf-8", "replace")[:MAX_DEAD_LETTER_VALUE_CHARS]
