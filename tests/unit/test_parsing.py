import copy
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.config import Topics
from pipeline.evaluate.specs import MAX_CONDITION_DEPTH, tree_depth
from pipeline.messages import (
    JSON_DEPTH_LIMIT,
    PositionClosed,
    ProfileReset,
    Rule,
    RuleTombstone,
    Tick,
)
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


# ---------------------------------------------------------------- bad input: dead letters, exact
# Each kind of bad input the job once crashed on or silently accepted (docs/contracts.md, Field
# bounds) becomes a dead letter with one precise reason.

BASES: dict[str, dict[str, Any]] = {
    TOPICS.ticks: {"symbol": "AAPL", "ts": "2026-01-05T14:30:00Z", "price": 1, "underlying": "A"},
    TOPICS.options_flow: {
        "id": "f-1", "ts": "2026-01-05T14:30:00Z", "underlying": "AAPL",
        "contract": "AAPL  260117C00200000", "right": "C", "strike": 200,
        "expiry": "2026-01-17", "price": 3.2, "size": 5, "side": "ask", "trade_type": "sweep",
    },
    TOPICS.rules: {
        "id": "r-1", "user_id": "u-1", "name": "n", "symbols": ["AAPL"],
        "conditions": {"all": [{"type": "price_above", "threshold": 1},
                               {"type": "rsi_above", "threshold": 70, "timeframe": "5m"}]},
    },
    TOPICS.positions: {
        "user_id": "u-1", "symbol": "AAPL", "underlying": "AAPL", "quantity": 1,
        "avg_price": 2, "multiplier": 100, "ts": "2026-01-05T14:30:00Z",
    },
    TOPICS.feedback: {
        "user_id": "u-1", "alert_id": "a-1", "action": "opened", "ts": "2026-01-05T14:30:00Z",
        "symbol": "AAPL", "condition_type": "price_above",
    },
    TOPICS.profiles: {
        "user_id": "u-1", "timezone": "UTC", "quiet_hours": {"start": "22:00", "end": "07:00"},
        "destinations": {"email": "u@example.com", "phone": "+15551234567",
                         "push_tokens": ["t-1"],
                         "webhook": {"url": "https://example.com/h", "secret_ref": "s"}},
    },
}  # fmt: skip
MODELS = {
    TOPICS.ticks: "Tick",
    TOPICS.options_flow: "OptionsFlow",
    TOPICS.rules: "Rule",
    TOPICS.positions: "Position",
    TOPICS.feedback: "Feedback",
    TOPICS.profiles: "Profile",
}
KEYS = {
    TOPICS.ticks: b"AAPL",
    TOPICS.options_flow: b"AAPL",
    TOPICS.rules: b"r-1",
    TOPICS.positions: b"u-1:AAPL",
    TOPICS.feedback: b"u-1",
    TOPICS.profiles: b"u-1",
}
EVENT_TOPICS = [TOPICS.ticks, TOPICS.options_flow, TOPICS.positions, TOPICS.feedback]


def with_field(topic: str, path: str, value: Any) -> bytes:
    """The topic's valid message with the field at ``path`` (dotted, list indexes as numbers)
    set to ``value``."""
    message = copy.deepcopy(BASES[topic])
    *parents, last = [int(step) if step.isdigit() else step for step in path.split(".")]
    node: Any = message
    for step in parents:
        node = node[step]
    node[last] = value
    return json.dumps(message).encode()


def parsed(topic: str, value: bytes | None, key: bytes | None = None) -> Any:
    result = parse_record(Record(topic, key if key is not None else KEYS[topic], value), TOPICS)
    assert (result.item is None) != (result.dead_letter is None)
    return result


def reason(topic: str, value: bytes | None, key: bytes | None = None) -> str:
    letter = parsed(topic, value, key).dead_letter
    assert letter is not None, "expected a dead letter"
    return str(letter.error)


def accepted(topic: str, value: bytes) -> Any:
    item = parsed(topic, value).item
    assert item is not None
    return item


def test_the_valid_messages_of_these_tests_are_accepted() -> None:
    for topic in BASES:
        accepted(topic, json.dumps(BASES[topic]).encode())


def test_json_nested_past_the_parser_limit_is_a_dead_letter_not_a_recursion_error() -> None:
    deep = b"[" * 500 + b"]" * 500
    value = b'{"symbol": "AAPL", "ts": 1767623400125, "price": 1, "x": ' + deep + b"}"
    assert reason(TOPICS.ticks, value) == (
        "invalid Tick: x: JSON nested 501 levels deep; at most 201 levels are read"
    )
    assert reason(TOPICS.ticks, b"[" * 100_000) == (
        "invalid Tick: JSON nested 100000 levels deep; at most 201 levels are read"
    )


def test_the_json_depth_limit_is_the_parser_limit() -> None:
    def nested(depth: int) -> bytes:  # the message object is the first level
        inner = b"[" * (depth - 1) + b"]" * (depth - 1)
        return b'{"symbol": "AAPL", "ts": 1767623400125, "price": 1, "x": ' + inner + b"}"

    assert reason(TOPICS.ticks, nested(JSON_DEPTH_LIMIT)).endswith(
        "x: Extra inputs are not permitted"
    )
    assert reason(TOPICS.ticks, nested(JSON_DEPTH_LIMIT + 1)) == (
        f"invalid Tick: x: JSON nested {JSON_DEPTH_LIMIT + 1} levels deep; "
        f"at most {JSON_DEPTH_LIMIT} levels are read"
    )


def condition_tree(depth: int) -> str:
    """A tree of ``depth`` alternating all/any levels over one leaf, as JSON text (too deep
    for json.dumps)."""
    groups = [("all", "any")[level % 2] for level in range(depth)]
    leaf = '{"type": "price_above", "threshold": 1}'
    return "".join(f'{{"{group}": [' for group in groups) + leaf + "]}" * depth


@pytest.mark.parametrize("depth", [9, 100, 120, 250, 490, 5000])
def test_condition_trees_deeper_than_8_levels_are_refused_with_their_depth(depth: int) -> None:
    rule = json.dumps(dict(BASES[TOPICS.rules], conditions="TREE"))
    value = rule.replace('"TREE"', condition_tree(depth)).encode()
    assert reason(TOPICS.rules, value) == (
        f"invalid Rule: conditions: nested {depth} levels deep; at most 8 levels of all/any"
    )


def test_a_condition_tree_of_8_levels_is_accepted() -> None:
    rule = json.dumps(dict(BASES[TOPICS.rules], conditions="TREE"))
    value = rule.replace('"TREE"', condition_tree(MAX_CONDITION_DEPTH)).encode()
    assert tree_depth(accepted(TOPICS.rules, value).conditions) == 8


def test_the_depth_is_checked_before_the_leaves() -> None:
    tree = condition_tree(9).replace('"threshold": 1', '"threshold": true')
    value = json.dumps(dict(BASES[TOPICS.rules], conditions="TREE")).replace('"TREE"', tree)
    assert reason(TOPICS.rules, value.encode()).endswith("at most 8 levels of all/any")


@pytest.mark.parametrize("topic", EVENT_TOPICS)
def test_an_epoch_number_beyond_any_date_is_a_dead_letter(topic: str) -> None:
    assert reason(topic, with_field(topic, "ts", 1e20)).startswith(
        f"invalid {MODELS[topic]}: ts: 100000000000000000000 ms since 1970 is after now + 1 day"
    )


@pytest.mark.parametrize(
    ("ts", "unit"),
    [(1765623423, "seconds"), (1765623423000000, "microseconds"), (1765623423 * 10**9, "nano")],
)
def test_epoch_numbers_in_another_unit_are_named(ts: int, unit: str) -> None:
    error = reason(TOPICS.ticks, with_field(TOPICS.ticks, "ts", ts))
    assert f"epoch numbers are milliseconds (this looks like {unit}" in error


def test_epoch_seconds_are_not_read_as_milliseconds() -> None:
    assert reason(TOPICS.ticks, with_field(TOPICS.ticks, "ts", 1765623423)) == (
        "invalid Tick: ts: 1970-01-21T10:27:03.423Z is before 2000-01-01T00:00:00Z; "
        "epoch numbers are milliseconds (this looks like seconds)"
    )


@pytest.mark.parametrize("topic", EVENT_TOPICS)
@pytest.mark.parametrize(
    ("ts", "side"),
    [
        ("0001-01-01T00:00:00Z", "before 2000-01-01T00:00:00Z"),
        ("0001-01-01T00:00:00+01:00", "before 2000-01-01T00:00:00Z"),
        ("1999-12-31T23:59:59.999Z", "before 2000-01-01T00:00:00Z"),
        ("9999-12-31T23:59:59Z", "after now + 1 day"),
        ("9999-12-31T23:59:59-01:00", "after now + 1 day"),
        ("2099-01-01T00:00:00Z", "after now + 1 day"),
    ],
)
def test_event_times_outside_2000_to_now_plus_a_day_are_dead_letters(
    topic: str, ts: str, side: str
) -> None:
    assert side in reason(topic, with_field(topic, "ts", ts))


def test_event_times_run_up_to_a_day_ahead_of_the_wall_clock() -> None:
    def ts(hours: float) -> str:
        return (datetime.now(UTC) + timedelta(hours=hours)).isoformat()

    accepted(TOPICS.ticks, with_field(TOPICS.ticks, "ts", ts(23)))
    accepted(TOPICS.ticks, with_field(TOPICS.ticks, "ts", "2000-01-01T00:00:00Z"))
    accepted(TOPICS.ticks, with_field(TOPICS.ticks, "ts", 946684800000))
    assert "after now + 1 day" in reason(TOPICS.ticks, with_field(TOPICS.ticks, "ts", ts(25)))
    assert "before 2000" in reason(TOPICS.ticks, with_field(TOPICS.ticks, "ts", 946684799999))


def test_a_rule_expires_between_2000_and_2200() -> None:
    def expiring(at: str) -> bytes:
        return with_field(TOPICS.rules, "expires_at", at)

    assert accepted(TOPICS.rules, expiring("2199-12-31T23:59:59Z")).expires_at.year == 2199
    assert reason(TOPICS.rules, expiring("2200-01-01T00:00:00.001Z")) == (
        "invalid Rule: expires_at: 2200-01-01T00:00:00.001Z is after 2200-01-01T00:00:00Z"
    )
    assert "expires_at: 0001-01-01T00:00:00.000Z is before 2000" in reason(
        TOPICS.rules, expiring("0001-01-01T00:00:00Z")
    )


def test_a_broker_timestamp_beyond_any_date_still_makes_a_dead_letter() -> None:
    record = Record(TOPICS.ticks, b"AAPL", b"x", timestamp_ms=2**62)
    letter = parse_record(record, TOPICS).dead_letter
    assert letter is not None and letter.error.startswith("not JSON")


NUL_FIELDS = [
    (TOPICS.ticks, "symbol"),
    (TOPICS.ticks, "underlying"),
    (TOPICS.options_flow, "id"),
    (TOPICS.options_flow, "underlying"),
    (TOPICS.options_flow, "contract"),
    (TOPICS.options_flow, "expiry"),
    (TOPICS.rules, "id"),
    (TOPICS.rules, "user_id"),
    (TOPICS.rules, "name"),
    (TOPICS.rules, "symbols.0"),
    (TOPICS.positions, "user_id"),
    (TOPICS.positions, "symbol"),
    (TOPICS.positions, "underlying"),
    (TOPICS.feedback, "user_id"),
    (TOPICS.feedback, "alert_id"),
    (TOPICS.feedback, "symbol"),
    (TOPICS.feedback, "condition_type"),
    (TOPICS.profiles, "user_id"),
    (TOPICS.profiles, "timezone"),
    (TOPICS.profiles, "quiet_hours.start"),
    (TOPICS.profiles, "destinations.email"),
    (TOPICS.profiles, "destinations.phone"),
    (TOPICS.profiles, "destinations.push_tokens.0"),
    (TOPICS.profiles, "destinations.webhook.url"),
    (TOPICS.profiles, "destinations.webhook.secret_ref"),
]


@pytest.mark.parametrize(("topic", "path"), NUL_FIELDS)
def test_a_nul_character_in_any_text_field_is_a_dead_letter(topic: str, path: str) -> None:
    valid: Any = BASES[topic]
    for step in path.split("."):
        valid = valid[int(step) if step.isdigit() else step]
    value = with_field(topic, path, f"{valid}\x00")
    assert reason(topic, value) == f"invalid {MODELS[topic]}: {path}: contains a NUL character"


def test_a_nul_character_in_a_condition_is_a_dead_letter() -> None:
    error = reason(TOPICS.rules, with_field(TOPICS.rules, "conditions.all.1.timeframe", "5m\x00"))
    assert error.startswith(
        "invalid Rule: conditions.all.1.timeframe: Value error, not a timeframe"
    )


def test_a_nul_character_in_a_tombstone_key_is_a_dead_letter() -> None:
    assert reason(TOPICS.rules, None, key=b"r-1\x00") == ("tombstone key: contains a NUL character")


@pytest.mark.parametrize(
    ("expiry", "why"),
    [
        ("2026-13-45", "month must be in 1..12"),
        ("2026-02-30", "day is out of range for month"),
        ("0000-01-10", "year 0 is out of range"),
    ],
)
def test_an_expiry_must_be_a_calendar_date(expiry: str, why: str) -> None:
    value = with_field(TOPICS.options_flow, "expiry", expiry)
    assert reason(TOPICS.options_flow, value) == (
        f"invalid OptionsFlow: expiry: {expiry} is not a calendar date: {why}"
    )


def test_an_expiry_is_written_in_ascii_digits() -> None:
    value = with_field(TOPICS.options_flow, "expiry", "٢٠٢٦-٠١-١٧")
    assert "expiry: String should match pattern" in reason(TOPICS.options_flow, value)


NUMERIC_FIELDS = [
    (TOPICS.ticks, path)
    for path in ("price", "size", "bid", "ask", "iv", "delta", "gamma", "theta", "vega",
                 "open_interest")
] + [
    (TOPICS.options_flow, path)
    for path in ("strike", "price", "size", "premium", "open_interest", "day_volume",
                 "underlying_price", "iv")
] + [
    (TOPICS.rules, path)
    for path in ("version", "cooldown_seconds", "conditions.all.0.threshold",
                 "conditions.all.1.threshold", "conditions.all.1.period")
] + [
    (TOPICS.positions, path) for path in ("quantity", "avg_price", "multiplier")
] + [
    (TOPICS.profiles, path) for path in ("digest_seconds", "max_per_hour", "min_relevance")
]  # fmt: skip


@pytest.mark.parametrize(("topic", "path"), NUMERIC_FIELDS)
@pytest.mark.parametrize("boolean", [True, False])
def test_a_boolean_is_never_a_number(topic: str, path: str, boolean: bool) -> None:
    expected = f"{path}: expected a number, got {str(boolean).lower()}"
    assert reason(topic, with_field(topic, path, boolean)) == f"invalid {MODELS[topic]}: {expected}"


@pytest.mark.parametrize("topic", EVENT_TOPICS)
def test_a_boolean_is_never_a_timestamp(topic: str) -> None:
    assert reason(topic, with_field(topic, "ts", True)).endswith(
        "ts: expected an RFC 3339 string or epoch milliseconds, got true"
    )


def test_a_boolean_is_never_a_condition_parameter() -> None:
    flow_rule = dict(
        BASES[TOPICS.rules],
        conditions={"type": "flow_sweep", "min_size": True, "atm_band_pct": 1},
    )
    assert reason(TOPICS.rules, json.dumps(flow_rule).encode()) == (
        "invalid Rule: conditions.min_size: expected a number, got true"
    )


def test_integers_are_numbers_where_floats_are_expected() -> None:
    tick = accepted(TOPICS.ticks, with_field(TOPICS.ticks, "price", 200))
    assert tick.price == 200.0 and isinstance(tick.price, float)


def test_magnitudes_beyond_10_to_the_15_are_dead_letters() -> None:
    assert reason(TOPICS.ticks, with_field(TOPICS.ticks, "price", 1e16)) == (
        "invalid Tick: price: Input should be less than or equal to 1000000000000000"
    )
    assert "version: Input should be less than or equal to 2147483647" in reason(
        TOPICS.rules, with_field(TOPICS.rules, "version", 2**31)
    )


@pytest.mark.parametrize(
    ("topic", "what"),
    [
        (TOPICS.rules, "a rules record needs its key: the rule id"),
        (TOPICS.profiles, "a profiles record needs its key: the user id"),
        (TOPICS.positions, "a positions record needs its key: the user:symbol"),
    ],
)
@pytest.mark.parametrize("key", [None, b""])
def test_a_compacted_topic_record_without_a_key_is_a_dead_letter(
    topic: str, what: str, key: bytes | None
) -> None:
    record = Record(topic, key, json.dumps(BASES[topic]).encode())
    letter = parse_record(record, TOPICS).dead_letter
    assert letter is not None and letter.error == what


def test_records_of_event_topics_need_no_key() -> None:
    for topic in (TOPICS.ticks, TOPICS.options_flow, TOPICS.feedback):
        record = Record(topic, None, json.dumps(BASES[topic]).encode())
        assert parse_record(record, TOPICS).item is not None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b'{"user_id": "u-1", "destinations": [1]}', "destinations: Input should be an object"),
        (b'"AAPL"', "expected a JSON object, got a string"),
        (b"[1]", "expected a JSON object, got an array"),
        (b" 12", "expected a JSON object, got a number"),
        (b"null", "expected a JSON object, got null"),
        (b'{"user_id": "u-\\ud800"}', "not JSON: "),
    ],
)
def test_what_is_not_an_object_is_named_as_such(value: bytes, error: str) -> None:
    assert error in reason(TOPICS.profiles, value, key=b"u-1")
