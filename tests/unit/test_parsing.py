import json
from dataclasses import dataclass

from pipeline.config import Topics
from pipeline.messages import PositionClosed, ProfileReset, Rule, RuleTombstone, Tick
from pipeline.parsing import parse_record

TOPICS = Topics()


@dataclass(frozen=True)
class Record:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = 2
    offset: int = 41
    timestamp_ms: int | None = 1767623400125


def test_valid_tick_parses() -> None:
    value = json.dumps({"symbol": "AAPL", "ts": 1767623400125, "price": 1}).encode()
    parsed = parse_record(Record(TOPICS.ticks, b"AAPL", value), TOPICS)
    assert isinstance(parsed.item, Tick) and parsed.dead_letter is None


def test_bad_message_becomes_a_dead_letter_with_its_origin() -> None:
    parsed = parse_record(Record(TOPICS.ticks, b"AAPL", b"\x00garbage"), TOPICS)
    letter = parsed.dead_letter
    assert parsed.item is None and letter is not None
    assert (letter.source_topic, letter.partition, letter.offset) == (TOPICS.ticks, 2, 41)
    assert (letter.key, letter.value) == ("AAPL", "\x00garbage")
    assert letter.error.startswith("not JSON")
    assert json.loads(letter.to_json())["ts"] == "2026-01-05T14:30:00.125Z"


def test_tombstones_on_compacted_topics() -> None:
    assert parse_record(Record(TOPICS.rules, b"r-1", None), TOPICS).item == RuleTombstone("r-1")
    assert parse_record(Record(TOPICS.profiles, b"u-1", b""), TOPICS).item == ProfileReset("u-1")
    closed = parse_record(Record(TOPICS.positions, b"u-1:AAPL", None), TOPICS).item
    assert closed == PositionClosed("u-1", "AAPL")
    keyless = parse_record(Record(TOPICS.rules, None, None), TOPICS).dead_letter
    assert keyless is not None and "tombstone without a key" in keyless.error


def test_rule_key_must_match_its_id() -> None:
    value = json.dumps(
        {
            "id": "r-1",
            "user_id": "u",
            "name": "n",
            "conditions": {"type": "price_above", "threshold": 1},
        }
    ).encode()
    assert isinstance(parse_record(Record(TOPICS.rules, b"r-1", value), TOPICS).item, Rule)
    letter = parse_record(Record(TOPICS.rules, b"r-2", value), TOPICS).dead_letter
    assert letter is not None and "does not match its rule id" in letter.error
