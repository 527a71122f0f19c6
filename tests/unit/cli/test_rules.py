"""The rule files ``rules apply`` and ``backtest`` read, and what ``rules apply`` decides for
each rule against the stored one (pipeline/cli/rules.py), without servers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from api.rule_store import StoredRule, message_document, rule_key
from pipeline.cli.commands import CommandError
from pipeline.cli.rules import decide, field_changes, load_rules
from pipeline.messages import Rule

RULE = {
    "id": "r-1",
    "user_id": "u-1",
    "name": "breakout",
    "symbol": "AAPL",
    "conditions": {"type": "price_crosses_above", "threshold": 200},
}


def stored(rule: Rule, *, deleted: bool = False) -> StoredRule:
    when = datetime(2026, 12, 1, tzinfo=UTC)
    return StoredRule(
        key=rule_key(rule.id),
        version=rule.version,
        rule_id=rule.id,
        owner=rule.user_id,
        document=message_document(rule),
        imported=False,
        written_by="cli:test",
        written_at=when,
        created_at=when,
        deleted_at=when if deleted else None,
    )


def a_rule(**fields: Any) -> Rule:
    return Rule.model_validate({**RULE, **fields})


# ---------------------------------------------------------------- files


def test_every_file_format_gives_the_same_rule(tmp_path: Path) -> None:
    expected = a_rule()
    single = tmp_path / "one.json"
    single.write_text(json.dumps(RULE, indent=2))
    listing = tmp_path / "list.json"
    listing.write_text(json.dumps([RULE]))
    lines = tmp_path / "rules.jsonl"
    lines.write_text(json.dumps(RULE) + "\n\n")
    table = tmp_path / "rules.parquet"
    pl.DataFrame([{**RULE, "conditions": json.dumps(RULE["conditions"])}]).write_parquet(table)
    yaml_file = tmp_path / "rules.yaml"
    yaml_file.write_text(
        "- {id: r-1, user_id: u-1, name: breakout, symbol: AAPL,\n"
        "   conditions: {type: price_crosses_above, threshold: 200}}\n"
    )
    text = tmp_path / "rules.txt"
    text.write_text('# one rule\nAAPL price crosses above 200 id r-1 user u-1 name "breakout"\n')
    for path in (single, listing, lines, table, yaml_file, text):
        assert load_rules(path) == [expected], path.name


def test_user_is_given_to_rules_without_one_and_refuses_another(tmp_path: Path) -> None:
    without = {name: value for name, value in RULE.items() if name != "user_id"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([without, RULE]))
    assert [rule.user_id for rule in load_rules(path, user_id="u-1")] == ["u-1", "u-1"]
    with pytest.raises(CommandError, match=r"rules\.json: item 2 has user_id 'u-1', not 'u-2'"):
        load_rules(path, user_id="u-2")
    with pytest.raises(CommandError, match=r"item 1 is not a valid Rule: user_id: Field required"):
        load_rules(path)


def test_an_english_line_is_echoed_as_the_rule_text_it_was_read_as(tmp_path: Path) -> None:
    text = tmp_path / "rules.txt"
    text.write_text("alert me when NVDA goes above 150\n")
    echoed: list[str] = []
    (rule,) = load_rules(text, user_id="u-1", echo=echoed.append)
    assert rule.symbol == "NVDA" and rule.user_id == "u-1"
    assert echoed[0].startswith(f"{text}:1: understood: NVDA ")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.json", '[{"id": ', "bad.json: not JSON"),
        ("number.json", "5", "number.json: expected a rule (a JSON object) or a list of rules"),
        ("strings.json", '["AAPL price > 1"]', "strings.json: item 1 is not a rule"),
        ("map.yaml", "id: r-1\n", "map.yaml: expected a YAML list of rules"),
        ("rules.txt", "AAPL price > abc\n", "rules.txt:1: rule text: expected a number"),
    ],
)
def test_a_bad_file_is_one_error_naming_it(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CommandError, match=re.escape(message)):
        load_rules(path, user_id="u-1")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="nothing.json: no such file"):
        load_rules(tmp_path / "nothing.json")


# ---------------------------------------------------------------- decisions


def test_new_higher_same_lower_and_foreign_versions() -> None:
    current = stored(a_rule(version=2))
    assert decide(a_rule(), None, "f.json").change == "create"
    assert decide(a_rule(version=3), current, "f.json").change == "update"
    same = decide(a_rule(version=2), current, "f.json")
    assert same.change is None and same.refusal is None and same.outcome == "unchanged"

    edited = decide(a_rule(version=2, name="renamed"), current, "f.json")
    assert edited.refusal == (
        "rule 'r-1': version 2 is stored with other content; raise version to 3 to replace it"
    )
    assert '-  "name": "breakout",' in edited.diff and '+  "name": "renamed",' in edited.diff
    older = decide(a_rule(version=1), current, "f.json")
    assert older.refusal is not None and "older than the stored version 2" in older.refusal
    assert any(line.startswith('-  "version": 2') for line in older.diff)

    foreign = decide(a_rule(version=3, user_id="u-2"), current, "f.json")
    assert foreign.refusal is not None and "belongs to 'u-1', not 'u-2'" in foreign.refusal


def test_a_deleted_rule_comes_back_only_above_its_last_version() -> None:
    gone = stored(a_rule(version=2), deleted=True)
    assert decide(a_rule(version=3), gone, "f.json").change == "create"
    refused = decide(a_rule(version=2), gone, "f.json")
    assert refused.refusal == (
        "rule 'r-1' was deleted at version 2; raise version to 3 to create it again"
    )


def test_field_changes_name_each_changed_field() -> None:
    before = message_document(a_rule())
    after = message_document(
        a_rule(
            version=2,
            channels=["email"],
            conditions={
                "all": [
                    {"type": "price_crosses_above", "threshold": 210},
                    {"type": "rsi_above", "threshold": 70},
                ]
            },
        )
    )
    assert field_changes(before, after) == [
        'conditions.type: "price_crosses_above" -> (none)',
        "conditions.threshold: 200 -> (none)",
        'channels: (none) -> ["email"]',
        'conditions.all.0.type: (none) -> "price_crosses_above"',
        "conditions.all.0.threshold: (none) -> 210",
        'conditions.all.1.timeframe: (none) -> "1m"',
        'conditions.all.1.type: (none) -> "rsi_above"',
        "conditions.all.1.threshold: (none) -> 70",
        "conditions.all.1.period: (none) -> 14",
    ]
    assert field_changes(before, before) == []
