"""The rule-text grammar file: shown in docs/rules.md as it is, in step with the models, free of
parser conflicts; and what reading rule text with it does that test_text.py does not pin."""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path
from typing import get_args

import pytest
from lark import Lark

from pipeline.evaluate.specs import CONDITION_MODELS, Side
from pipeline.messages import Channel, Priority
from pipeline.rules.text import (
    DOC_BEGIN,
    DOC_END,
    RuleTextError,
    grammar_markdown,
    parse_rule,
    update_docs,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rules.md"
# As the installed package has it: pyproject.toml's package data ships the file.
GRAMMAR = (resources.files("pipeline.rules") / "grammar.lark").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def grammar() -> Lark:
    return Lark(GRAMMAR, parser="lalr", start=["rule"], maybe_placeholders=True)


def words(grammar: Lark, rule: str, position: int = 0) -> list[str]:
    """The keyword at ``position`` of each alternative of ``rule``, in the file's order."""
    return [
        grammar.get_terminal(production.expansion[position].name).pattern.value
        for production in grammar.rules
        if production.origin.name == rule
    ]


# ---------------------------------------------------------------- the file


def test_docs_show_the_grammar_file() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert f"```lark\n{GRAMMAR}```" in text
    start, end = text.index(DOC_BEGIN), text.index(DOC_END) + len(DOC_END)
    assert text[start:end] == grammar_markdown(), (
        "docs/rules.md is stale: run `python -m pipeline.rules.text`"
    )


def test_update_docs_copies_the_file(tmp_path: Path) -> None:
    doc = tmp_path / "rules.md"
    doc.write_text(f"# Rules\n\n{DOC_BEGIN}\n\n```lark\nold\n```\n\n{DOC_END}\n\nmore\n")
    assert update_docs(doc)
    assert doc.read_text() == f"# Rules\n\n{grammar_markdown()}\n\nmore\n"
    assert not update_docs(doc)


def test_the_grammar_names_what_the_models_define(grammar: Lark) -> None:
    assert words(grammar, "condition_type") == list(CONDITION_MODELS)
    assert words(grammar, "channel") == [channel.value for channel in Channel]
    assert words(grammar, "priority", 1) == [level.value.lower() for level in Priority]
    assert words(grammar, "side") == list(get_args(Side))


def test_lalr_without_conflicts(caplog: pytest.LogCaptureFixture) -> None:
    # lark resolves a shift/reduce conflict silently (as a shift); in debug it says so.
    caplog.set_level(logging.DEBUG, logger="lark")
    Lark(GRAMMAR, parser="lalr", start=["rule", "conditions", "money", "duration"], debug=True)
    assert "conflict" not in caplog.text.lower()


# ---------------------------------------------------------------- reading rule text


def test_keywords_are_keywords_only_where_they_fit() -> None:
    rule = parse_rule("AAPL price > 1 name price id and user cooldown cooldown 1m")
    assert (rule.name, rule.id, rule.user_id, rule.cooldown_seconds) == (
        "price",
        "and",
        "cooldown",
        60,
    )
    assert parse_rule("symbol NEW PRICE ABOVE 1", user_id="u").symbol == "NEW"


def test_the_derived_id_reads_the_tokens_as_before() -> None:
    # Applied rules keep their ids: spacing and comments do not count, the words do.
    rule = parse_rule("AAPL   price >  200\t# breakout", user_id="u-1")
    digest = hashlib.sha256(b"u-1\nAAPL price > 200").hexdigest()
    assert rule.id == f"r-{digest[:12]}"


def error(text: str) -> RuleTextError:
    with pytest.raises(RuleTextError) as caught:
        parse_rule(text, user_id="u-1")
    return caught.value


@pytest.mark.parametrize(
    ("text", "column", "reason"),
    [
        # every word the grammar takes there, in the order of the file
        (
            "AAPL expiry soon",
            13,
            "expected 'in' or 'within' or 'today' after 'expiry', found 'soon'",
        ),
        ("AAPL put/call > 2", 15, "expected 'premium' or 'ratio' after 'put/call', found '>'"),
        ("AAPL sma 50 x", 13, "expected 'crosses' or 'cross' or 'crossed' after '50', found 'x'"),
        # the argument at fault, and the word before it
        ("AAPL price_above(5)", 18, "write price_above arguments as name=value"),
        ("AAPL price > 1 id )", 19, "expected a rule id after 'id', found ')'"),
        ("AAPL price > 1 expires x", 24, "expected a date or an RFC 3339 time"),
        # the first mistake in reading order, be it a stray character or a value
        ("AAPL prise > 1 ;", 16, "unexpected character ';'"),
        ("AAPL up 5% in 30 and rsj < 3", 15, "add a unit to '30'"),
        ("AAPL price > 1 once once x", 21, "option 'once' given twice"),
        # a first word read as the symbol that is rather a condition or an option
        ("prise(threshold=1)", 1, "unknown condition 'prise' (did you mean 'price'?)"),
        ("once price > 1", 1, "'once' is an option: options go after the conditions"),
        ("any price > 1", 1, "unknown condition 'any'"),
        # inside parentheses, and in the numbers a phrase wants
        ("AAPL (sweep x)", 13, "expected 'and', 'or' or ')', found 'x'"),
        ("AAPL rsi(14, 5m", 9, "unbalanced parenthesis: this '(' is never closed"),
        ("AAPL delta > x", 14, "expected a delta level after '>'"),
        ("AAPL repeated hits 3 in soon", 25, "expected a duration like 30m after 'in'"),
        ("AAPL sweep above x", 12, "expected 'and', 'or' or an option"),
    ],
)
def test_error_messages(text: str, column: int, reason: str) -> None:
    exc = error(text)
    assert reason in exc.reason
    assert exc.column == column
