"""Plain-English rules: the phrasing corpus, the words not used, refusals, the CLI fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from pipeline.messages import Rule
from pipeline.rules.english import EnglishRuleError, parse_english
from pipeline.rules.text import parse_rule

CORPUS = Path(__file__).with_name("english_corpus.yaml")
RULES_DOC = Path(__file__).parents[3] / "docs" / "rules.md"
SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
# The corpus is read as of this time (a Tuesday, 10:00 in New York): "until Friday" is fixed.
NOW = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def meaning(rule: Rule) -> tuple[object, ...]:
    return (rule.symbol, rule.symbols, rule.conditions, rule.priority, rule.mode,
            rule.cooldown_seconds, rule.expires_at, rule.sessions)  # fmt: skip


def test_corpus_is_understood_never_misread_and_the_doc_says_how_much() -> None:
    entries = yaml.safe_load(CORPUS.read_text())
    understood, misread, not_refused, wrong_reason = 0, [], [], []
    rules = [entry for entry in entries if entry[1] is not None]
    for sentence, text, *reason in entries:
        try:
            english = parse_english(sentence, user_id="u-1", now=NOW)
        except EnglishRuleError as exc:
            if reason and reason[0].lower() not in str(exc).lower():
                wrong_reason.append((sentence, str(exc)))
            continue
        if text is None:
            not_refused.append((sentence, english.formal))
        elif meaning(english.rule) == meaning(parse_rule(text, user_id="u-1")):
            understood += 1
        else:
            misread.append((sentence, english.formal, text))
    # a wrong rule is worse than a refusal: the reader must refuse what it cannot read
    assert misread == []
    assert not_refused == []
    assert wrong_reason == []
    assert len(entries) >= 200
    refused = len(entries) - len(rules)
    share = understood / len(rules)
    print(f"understood {understood} of {len(rules)} ({share:.1%}); {refused} refused")
    # docs/rules.md states these numbers; the test keeps them true
    stated = " ".join(RULES_DOC.read_text().split())
    assert (
        f"holds {len(entries)} phrasings: {len(rules)} that name a rule, of which {understood} "
        f"({share:.1%}) are understood and none is read as a different rule, and {refused} "
        "that must be refused"
    ) in stated


def test_the_canonical_text_and_the_words_not_used() -> None:
    english = parse_english("alert me when AAPL drops below 180.50, thanks", user_id="u-1")
    assert english.formal == "AAPL price < 180.50"
    assert english.canonical.startswith("AAPL price < 180.5 id r-")
    assert parse_rule(english.canonical) == english.rule
    assert english.unused == ("thanks",)


@pytest.mark.parametrize(
    ("sentence", "formal"),
    [
        ("big call sweeps over $1M on NVDA", "NVDA call sweep premium >= 1m"),
        ("let me know about AAPL block trades over 1.5k", "AAPL block premium >= 1.5k"),
        ("notify me if TSLA RSI goes above 70 on the 5 minute chart", "TSLA rsi(14, 5m) > 70"),
        ("when NVDA IV rank is above 80", "NVDA iv_rank > 80"),
    ],
)
def test_numbers_and_chart_words(sentence: str, formal: str) -> None:
    assert parse_english(sentence, user_id="u-1").formal == formal


def test_a_sentence_without_a_condition_says_what_was_understood() -> None:
    with pytest.raises(EnglishRuleError) as caught:
        parse_english("alert me when AAPL does something nice", user_id="u-1")
    message = str(caught.value)
    assert "no condition" in message
    assert "understood: AAPL;" in message
    assert "words not used: does something nice" in message
    assert "'AAPL price < 180'" in message


def test_a_left_over_rule_word_is_refused_not_misread() -> None:
    # "stays above 200 for 5 minutes": price > 200 alone would be the wrong rule
    with pytest.raises(EnglishRuleError, match="not sure what 'minutes' means here"):
        parse_english("alert me if AAPL stays above 200 for 5 minutes", user_id="u-1", now=NOW)


def test_a_refusal_carries_what_was_understood_and_the_unused_words() -> None:
    with pytest.raises(EnglishRuleError) as caught:
        parse_english("NVDA put sweeps expiring next week please, mate", user_id="u-1", now=NOW)
    assert caught.value.understood == "NVDA put sweep"
    assert caught.value.unused == ("mate",)
    assert "'expiring next week' names a date" in str(caught.value)


def test_chart_words_between_an_indicator_and_its_level() -> None:
    sentence = "alert me when NVDA RSI on the 1 hour chart goes above 75"
    english = parse_english(sentence, user_id="u-1", now=NOW)
    assert english.formal == "NVDA rsi(14, 1h) > 75"


def test_the_end_of_a_rule_counts_from_now_in_new_york() -> None:
    # 03:00 UTC on Wednesday is still Tuesday evening in New York: "today" ends at its midnight
    late = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    rule = parse_english("AAPL above 200 today only", user_id="u-1", now=late).rule
    assert rule.expires_at == datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
    # in summer New York is 4 hours behind UTC
    june = datetime(2026, 6, 2, 15, 0, tzinfo=UTC)
    rule = parse_english("AAPL above 200 until Friday", user_id="u-1", now=june).rule
    assert rule.expires_at == datetime(2026, 6, 6, 4, 0, tzinfo=UTC)
    # after the close there is no close left today
    with pytest.raises(EnglishRuleError, match="not open today"):
        parse_english("AAPL above 200 until the close", user_id="u-1", now=late)
    with pytest.raises(ValueError, match="timezone"):
        parse_english("AAPL above 200 today only", now=datetime(2026, 12, 1, 15, 0))


def test_an_option_contract_is_named_by_its_occ_symbol() -> None:
    english = parse_english("my AAPL Jan 15 200 calls expire in 3 days", user_id="u-1", now=NOW)
    assert english.rule.symbol == "AAPL  270115C00200000"
    assert english.rule.conditions.model_dump(exclude_none=True) == {
        "type": "expiry_within_days",
        "days": 3,
    }


def test_no_symbol_is_refused() -> None:
    with pytest.raises(EnglishRuleError, match="no symbol"):
        parse_english("alert me when the price drops below 180", user_id="u-1")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SMART_ALERTS, "rules", "parse", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_falls_back_to_english() -> None:
    english = run("alert me when AAPL drops below 180 please", "--user", "u-1")
    assert english.returncode == 0, english.stderr
    rule = json.loads(english.stdout)
    assert rule["symbol"] == "AAPL"
    assert rule["conditions"] == {"type": "price_below", "threshold": 180.0}
    assert english.stderr.splitlines()[0].startswith("understood: AAPL price < 180 id r-")
    formal = run("AAPL price < 180", "--user", "u-1")
    assert formal.returncode == 0
    assert formal.stderr == ""
    # the sentence and its rule text name the same rule
    assert json.loads(formal.stdout) == rule


def test_cli_says_what_it_understood_when_it_cannot() -> None:
    result = run("alert me when AAPL does something nice", "--user", "u-1")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert "understood: AAPL" in lines[0]
    assert "as rule text: unknown condition 'me'" in lines[0]


def test_cli_keeps_the_rule_text_error_for_rule_text() -> None:
    result = run("AAPL price crosses above two hundred", "--user", "u-1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        "smart-alerts: error: rule text: expected a number after 'above' at column 26:"
    )
