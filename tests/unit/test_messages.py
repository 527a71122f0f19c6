import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.evaluate.specs import iter_conditions
from pipeline.messages import (
    InvalidMessage,
    Priority,
    Profile,
    Rule,
    Tick,
    TriggeredAlert,
    decode,
    message_key,
)

RULE = {
    "v": 1,
    "id": "r-1",
    "version": 3,
    "user_id": "u-1",
    "name": "AAPL breakout",
    "symbol": "AAPL",
    "priority": "HIGH",
    "mode": "recurring",
    "cooldown_seconds": 1800,
    "conditions": {
        "all": [
            {"type": "price_crosses_above", "threshold": 200},
            {
                "any": [
                    {"type": "price_above", "threshold": 1},
                    {"type": "price_below", "threshold": 9},
                ]
            },
        ]
    },
}


def raw(payload: object) -> bytes:
    return json.dumps(payload).encode()


def test_rule_with_nested_conditions_round_trips() -> None:
    rule = decode(Rule, raw(RULE))
    assert [c.type for c in iter_conditions(rule.conditions)] == [
        "price_crosses_above",
        "price_above",
        "price_below",
    ]
    assert decode(Rule, rule.to_json()) == rule
    assert message_key(rule) == "r-1"


def test_timestamps_accept_rfc3339_and_epoch_millis_and_write_rfc3339() -> None:
    a = decode(Tick, raw({"symbol": "A", "ts": "2026-01-05T14:30:00.125Z", "price": 1}))
    b = decode(Tick, raw({"symbol": "A", "ts": 1767623400125, "price": 1}))
    assert a.ts == b.ts
    assert json.loads(a.to_json())["ts"] == "2026-01-05T14:30:00.125Z"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"symbol": "A", "ts": 1, "price": NaN}', "price: Input should be a finite number"),
        (raw({"symbol": "A", "ts": 1, "price": -1}), "price: Input should be greater than 0"),
        (raw({"symbol": "A", "ts": 1, "price": "x"}), "price: Input should be a valid number"),
        (raw({"symbol": "A", "ts": "yesterday", "price": 1}), "not an RFC 3339 timestamp"),
        (raw({"symbol": "A", "ts": "2026-01-05T14:30:00", "price": 1}), "needs a UTC offset"),
        (raw({"symbol": "A" * 40, "ts": 1, "price": 1}), "symbol: String should have at most 32"),
        (raw({"symbol": "A", "ts": 1, "price": 1, "colour": "red"}), "colour: Extra inputs"),
        (raw({"symbol": "A", "ts": 1, "price": 1, "v": 2}), "v: Input should be 1"),
        (b"{" + b'"a":1,' * 200000 + b'"b":1}', "exceeds"),
    ],
)
def test_bad_ticks_are_rejected_with_a_precise_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        decode(Tick, payload)


def test_unknown_condition_type_is_named_in_the_error() -> None:
    bad = dict(RULE, conditions={"type": "price_teleports", "threshold": 1})
    with pytest.raises(InvalidMessage, match="conditions: unknown condition type"):
        decode(Rule, raw(bad))


def test_condition_missing_parameter_points_at_its_path() -> None:
    bad = dict(RULE, conditions={"all": [{"type": "price_above"}]})
    with pytest.raises(InvalidMessage, match=r"conditions\.all\.0\.threshold: Field required"):
        decode(Rule, raw(bad))


def test_rule_cannot_have_both_symbol_and_watchlist() -> None:
    with pytest.raises(InvalidMessage, match="either 'symbol' or 'symbols'"):
        decode(Rule, raw(dict(RULE, symbols=["MSFT"])))


def test_oversized_strings_are_rejected() -> None:
    with pytest.raises(InvalidMessage, match="name: String should have at most 255"):
        decode(Rule, raw(dict(RULE, name="x" * 300)))


def test_infinite_numbers_are_rejected() -> None:
    with pytest.raises(InvalidMessage, match="finite"):
        decode(Tick, b'{"symbol": "A", "ts": 1, "price": 1e999}')
    assert not math.isfinite(1e999)


def test_profile_defaults_and_validation() -> None:
    profile = decode(Profile, raw({"user_id": "u-1"}))
    assert profile.timezone == "UTC"
    assert profile.channels["CRITICAL"] == ["in_app"]
    with pytest.raises(InvalidMessage, match="quiet_hours.start"):
        decode(Profile, raw({"user_id": "u", "quiet_hours": {"start": "25:00", "end": "07:00"}}))
    with pytest.raises(InvalidMessage, match="destinations.phone"):
        decode(Profile, raw({"user_id": "u", "destinations": {"phone": "555-1234"}}))
    calls = decode(Profile, raw({"user_id": "u", "channels": {"CRITICAL": ["sms", "voice"]}}))
    assert calls.channels["CRITICAL"] == ["sms", "voice"]
    with pytest.raises(InvalidMessage, match="voice calls are for CRITICAL alerts only, not HIGH"):
        decode(Profile, raw({"user_id": "u", "channels": {"HIGH": ["voice"]}}))


def test_triggered_alert_serializes_per_contract() -> None:
    alert = TriggeredAlert(
        alert_id="a",
        rule_id="r",
        rule_version=1,
        user_id="u",
        symbol="AAPL",
        priority="HIGH",
        title="t",
        message="m",
        triggered_at=1767623400125,
        condition_types=["price_above"],
        values={"price": 1.5},
    )
    body = json.loads(alert.to_json())
    assert body == {
        "v": 1,
        "alert_id": "a",
        "rule_id": "r",
        "rule_version": 1,
        "user_id": "u",
        "symbol": "AAPL",
        "priority": "HIGH",
        "title": "t",
        "message": "m",
        "triggered_at": "2026-01-05T14:30:00.125Z",
        "condition_types": ["price_above"],
        "values": {"price": 1.5},
    }


def test_a_trusted_alert_is_what_model_construct_builds() -> None:
    fields: dict[str, Any] = {
        "alert_id": "a",
        "rule_id": "r",
        "rule_version": 2,
        "user_id": "u",
        "symbol": "AAPL",
        "priority": Priority.HIGH,
        "title": "AAPL: r",
        "message": "m",
        "triggered_at": datetime(2026, 1, 5, 14, 30, tzinfo=UTC),
        "condition_types": ["price_above"],
        "values": {"price": 1.5, "threshold": 1.0},
    }
    trusted = TriggeredAlert.trusted(**fields)
    constructed = TriggeredAlert.model_construct(**fields)
    assert trusted == constructed
    assert trusted.__dict__ == constructed.__dict__
    assert list(trusted.__dict__) == list(constructed.__dict__)
    assert trusted.model_fields_set == constructed.model_fields_set
    assert trusted.__pydantic_extra__ is None and trusted.__pydantic_private__ is None
    assert trusted.to_json() == constructed.to_json()
    assert trusted.model_fields_set is not TriggeredAlert.trusted(**fields).model_fields_set
