"""HistoryWriter.write_rules against a real PostgreSQL: what a batch of rules leaves, what a
replay leaves alone, and text that COPY must carry exactly."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pipeline.ids import storage_uuid
from pipeline.messages import Rule
from sinks.postgres import HistoryWriter

pytestmark = pytest.mark.integration


@pytest.fixture()
def writer(database_url: str) -> Iterator[HistoryWriter]:
    with HistoryWriter(database_url) as history:
        yield history


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _rule(rule_id: str, **changes: Any) -> Rule:
    payload: dict[str, Any] = {
        "id": rule_id,
        "user_id": f"u-{rule_id}",
        "name": "breakout",
        "symbol": "AAPL",
        "conditions": {
            "all": [
                {"type": "price_above", "threshold": 200},
                {"type": "percent_move_up", "percent": 2, "window_seconds": 90},
            ]
        },
    }
    payload.update(changes)
    return Rule.model_validate(payload)


def _versions(db: psycopg.Connection[dict[str, Any]], rule_ids: list[str]) -> dict[str, Any]:
    """Each row's physical version (ctid, xmin) of the rules and their conditions: equal
    before and after a write exactly when the write left the row alone."""
    keys = [storage_uuid("rule", rule_id) for rule_id in rule_ids]
    rules = db.execute(
        "SELECT external_id, ctid::text, xmin::text FROM alert_rules WHERE id = ANY(%s)", (keys,)
    ).fetchall()
    conditions = db.execute(
        "SELECT r.external_id, c.position, c.ctid::text, c.xmin::text"
        " FROM alert_conditions c JOIN alert_rules r ON r.id = c.rule_id"
        " WHERE c.rule_id = ANY(%s)",
        (keys,),
    ).fetchall()
    versions: dict[str, Any] = {}
    for row in rules:
        versions[row["external_id"]] = [(row["ctid"], row["xmin"])]
    for row in sorted(conditions, key=lambda r: r["position"]):
        versions[row["external_id"]].append((row["position"], row["ctid"], row["xmin"]))
    return versions


def test_a_replay_rewrites_nothing_and_a_change_replaces_only_its_conditions(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    tag = uuid.uuid4().hex[:8]
    ids = [f"a-{tag}", f"b-{tag}", f"c-{tag}"]
    rules = [_rule(rule_id) for rule_id in ids]
    writer.write_rules(rules)
    first = _versions(db, ids)
    assert [len(first[rule_id]) for rule_id in ids] == [3, 3, 3]  # the row, two conditions

    writer.write_rules(rules + rules[:1])  # a replay, with a duplicate inside the batch
    assert _versions(db, ids) == first

    writer.write_rules([rules[0], _rule(ids[1], name="renamed"), rules[2]])
    after = _versions(db, ids)
    assert after[ids[0]] == first[ids[0]] and after[ids[2]] == first[ids[2]]
    assert all(new != old for new, old in zip(after[ids[1]], first[ids[1]], strict=True))
    assert db.execute(
        "SELECT name FROM alert_rules WHERE external_id = %s", (ids[1],)
    ).fetchone() == {"name": "renamed"}


def test_text_lists_and_numbers_are_stored_exactly(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    tag = uuid.uuid4().hex[:8]
    awkward = "tab\there, back\\slash, quote\" ' newline\n{brace} ✓ NULL \\N"
    thresholds = [0.1 + 0.2, 12345.67895, 5e-05, 1e-07, 99999999999.9999, 1e11, 7]
    rules = [
        _rule(
            f"{awkward} {tag}",
            user_id=f"{awkward} user",
            name=awkward,
            symbol=None,
            symbols=["AAPL  260117C00200000", "A,B", 'C"D', "E\\F", "{G}", "NULL", " é "],
            channels=[],
            expires_at="2026-02-01T00:00:00.123456Z",
            mode="once",
            active=False,
            cooldown_seconds=61,
            conditions={
                "any": [{"type": "price_below", "threshold": threshold} for threshold in thresholds]
            },
        ),
        _rule(f"plain {tag}", channels=None, symbol="MSFT"),
    ]
    writer.write_rules(rules)

    for rule in rules:
        row = db.execute(
            "SELECT * FROM alert_rules WHERE id = %s", (storage_uuid("rule", rule.id),)
        ).fetchone()
        assert row is not None
        assert row["external_id"] == rule.id
        assert row["user_id"] == storage_uuid("user", rule.user_id)
        assert row["user_external_id"] == rule.user_id
        assert row["name"] == rule.name
        assert row["symbol"] == rule.symbol
        assert row["symbols"] == rule.symbols
        assert row["channels"] == (
            None if rule.channels is None else [c.value for c in rule.channels]
        )
        assert row["expires_at"] == rule.expires_at
        assert (row["mode"], row["is_active"]) == (rule.mode, rule.active)
        assert (row["cooldown_seconds"], row["cooldown_minutes"]) == (
            rule.cooldown_seconds,
            -(-rule.cooldown_seconds // 60),
        )
        assert row["conditions"] == rule.conditions.model_dump(mode="json", exclude_none=True)

    stored = db.execute(
        "SELECT position, threshold FROM alert_conditions WHERE rule_id = %s ORDER BY position",
        (storage_uuid("rule", rules[0].id),),
    ).fetchall()
    # As a float parameter was stored: float8 to decimal(15, 4); NULL from 1e11 on.
    expected = [
        db.execute("SELECT %s::float8::decimal(15, 4) AS t", (t,)).fetchone()["t"]  # type: ignore[index]
        if abs(t) < 1e11
        else None
        for t in thresholds
    ]
    assert [row["threshold"] for row in stored] == expected
    assert expected[:4] == [Decimal("0.3000"), Decimal("12345.6790"), Decimal("0.0001"), 0]


def test_two_spellings_of_one_uuid_are_one_rule_and_the_last_wins(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    rule_id = str(uuid.uuid4())
    writer.write_rules([_rule(rule_id, name="first"), _rule(rule_id.upper(), name="second")])
    rows = db.execute(
        "SELECT external_id, name FROM alert_rules WHERE id = %s", (uuid.UUID(rule_id),)
    ).fetchall()
    assert rows == [{"external_id": rule_id.upper(), "name": "second"}]


def test_a_batch_of_5000_rules_in_one_call(
    writer: HistoryWriter, db: psycopg.Connection[dict[str, Any]]
) -> None:
    user = f"bulk-{uuid.uuid4().hex[:8]}"
    rules = [_rule(f"{user}-{i}", user_id=user, symbol=f"S{i % 100}") for i in range(5000)]
    writer.write_rules(rules)
    writer.write_rules(rules)  # the replay changes nothing
    counts = db.execute(
        "SELECT count(DISTINCT r.id) AS rules, count(c.id) AS conditions,"
        " count(DISTINCT r.updated_at) <= 1 AS one_write"
        " FROM alert_rules r JOIN alert_conditions c ON c.rule_id = r.id"
        " WHERE r.user_external_id = %s",
        (user,),
    ).fetchone()
    assert counts == {"rules": 5000, "conditions": 10000, "one_write": True}
