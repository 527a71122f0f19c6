"""Rule text: parsing every condition type, precedence, options, errors, round trips, the docs."""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import pipeline.rules.text as rule_text
from pipeline.cli.commands import CommandError
from pipeline.cli.main import main
from pipeline.cli.rules import load_rules
from pipeline.evaluate.specs import CONDITION_MODELS, FLOW_CONDITIONS, AllOf, AnyOf, FlowFilters
from pipeline.messages import Rule
from pipeline.rules.text import (
    RuleTextError,
    condition_name,
    format_condition,
    format_rule,
    parse_conditions,
    parse_duration,
    parse_money,
    parse_rule,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rules.md"


def leaf(data: dict[str, Any]) -> Any:
    return CONDITION_MODELS[data["type"]].model_validate(data)


def conditions(text: str) -> Any:
    return parse_rule(text, user_id="u-1").conditions


# ---------------------------------------------------------------- every condition type

# (text, expected leaf): at least one natural form per type; more forms for the busy ones.
NATURAL = [
    ("price > 200", {"type": "price_above", "threshold": 200}),
    ("price above $200", {"type": "price_above", "threshold": 200}),
    ("price < 150", {"type": "price_below", "threshold": 150}),
    ("price crosses above 200", {"type": "price_crosses_above", "threshold": 200}),
    ("price crosses below 150.5", {"type": "price_crosses_below", "threshold": 150.5}),
    ("up 5% in 30m", {"type": "percent_move_up", "percent": 5, "window_seconds": 1800}),
    ("price up 2.5% within 90s", {"type": "percent_move_up", "percent": 2.5, "window_seconds": 90}),
    ("down 3% in 1 hour", {"type": "percent_move_down", "percent": 3, "window_seconds": 3600}),
    ("rsi(14, 5m) < 30", {"type": "rsi_below", "threshold": 30, "period": 14, "timeframe": "5m"}),
    ("rsi < 30", {"type": "rsi_below", "threshold": 30}),
    ("rsi 9 1h > 70", {"type": "rsi_above", "threshold": 70, "period": 9, "timeframe": "1h"}),
    ("rsi(period=7) above 80", {"type": "rsi_above", "threshold": 80, "period": 7}),
    (
        "price crosses above sma 50 1d",
        {"type": "price_crosses_above_sma", "period": 50, "timeframe": "1d"},
    ),
    (
        "price crosses below sma(20, 1h)",
        {"type": "price_crosses_below_sma", "period": 20, "timeframe": "1h"},
    ),
    (
        "sma 50 crosses above sma 200 1d",
        {"type": "sma_cross_up", "fast": 50, "slow": 200, "timeframe": "1d"},
    ),
    (
        "sma(10, 1h) crosses below sma(30)",
        {"type": "sma_cross_down", "fast": 10, "slow": 30, "timeframe": "1h"},
    ),
    ("golden cross 1d", {"type": "sma_cross_up", "timeframe": "1d"}),
    ("death cross 20 100", {"type": "sma_cross_down", "fast": 20, "slow": 100}),
    (
        "close above upper bollinger 20 2 5m",
        {"type": "bollinger_break_upper", "period": 20, "stddev": 2, "timeframe": "5m"},
    ),
    (
        "price > upper bb(30, 2.5)",
        {"type": "bollinger_break_upper", "period": 30, "stddev": 2.5},
    ),
    ("close below lower bollinger", {"type": "bollinger_break_lower"}),
    ("new high 20 bars 1d", {"type": "new_high", "period": 20, "timeframe": "1d"}),
    ("new low 52 1d", {"type": "new_low", "period": 52, "timeframe": "1d"}),
    (
        "volume_spike 3x 20 bars 1m",
        {"type": "volume_spike", "multiple": 3, "period": 20, "timeframe": "1m"},
    ),
    ("volume spike 2.5x 5m", {"type": "volume_spike", "multiple": 2.5, "timeframe": "5m"}),
    ("iv > 60", {"type": "iv_above", "threshold": 60}),
    ("iv below 20", {"type": "iv_below", "threshold": 20}),
    ("iv change -20% in 1h", {"type": "iv_change_pct", "percent": -20, "window_seconds": 3600}),
    ("iv_change +15% over 1d", {"type": "iv_change_pct", "percent": 15, "window_seconds": 86400}),
    ("iv_rank > 80", {"type": "iv_rank_above", "threshold": 80}),
    (
        "iv rank > 80 over 100 days",
        {"type": "iv_rank_above", "threshold": 80, "lookback_days": 100},
    ),
    ("iv_rank(30) above 50%", {"type": "iv_rank_above", "threshold": 50, "lookback_days": 30}),
    ("delta > 0.7", {"type": "delta_above", "threshold": 0.7}),
    ("delta < -0.5", {"type": "delta_below", "threshold": -0.5}),
    ("gamma > 0.05", {"type": "gamma_above", "threshold": 0.05}),
    ("gamma < 0.01", {"type": "gamma_below", "threshold": 0.01}),
    ("theta > -0.02", {"type": "theta_above", "threshold": -0.02}),
    ("theta < -0.1", {"type": "theta_below", "threshold": -0.1}),
    ("vega > 0.3", {"type": "vega_above", "threshold": 0.3}),
    ("vega < 0.05", {"type": "vega_below", "threshold": 0.05}),
    ("spread > 2%", {"type": "spread_pct_above", "threshold": 2}),
    ("unusual volume 3x", {"type": "unusual_volume", "ratio": 3}),
    ("unusual volume", {"type": "unusual_volume"}),
    ("premium > 1m", {"type": "flow_premium_above", "threshold": 1_000_000}),
    ("put premium over $250k", {"type": "flow_premium_above", "threshold": 250_000, "right": "P"}),
    (
        "call sweep premium > 500k",
        {"type": "flow_sweep", "min_premium": 500_000, "right": "C"},
    ),
    ("sweep", {"type": "flow_sweep"}),
    ("put block", {"type": "flow_block", "right": "P"}),
    ("block min premium 1.5m", {"type": "flow_block", "min_premium": 1_500_000}),
    ("repeated hits 3 in 5m", {"type": "flow_repeated_hits", "count": 3, "window_seconds": 300}),
    ("repeated hits", {"type": "flow_repeated_hits"}),
    (
        "put/call premium ratio > 2 in 1h",
        {"type": "put_call_premium_ratio", "threshold": 2, "window_seconds": 3600},
    ),
    (
        "put/call ratio < 0.5",
        {"type": "put_call_premium_ratio", "threshold": 0.5, "comparison": "below"},
    ),
    ("pnl > 10%", {"type": "position_pnl_pct_above", "threshold": 10}),
    ("position pnl < -10%", {"type": "position_pnl_pct_below", "threshold": -10}),
    ("pnl > 5k", {"type": "position_pnl_above", "threshold": 5000}),
    ("pnl < -500", {"type": "position_pnl_below", "threshold": -500}),
    ("expiry within 3 days", {"type": "expiry_within_days", "days": 3}),
    ("expiry within 5 trading days", {"type": "expiry_within_days", "days": 5}),
    ("expiry today", {"type": "expiry_within_days", "days": 0}),
]


@pytest.mark.parametrize(("text", "expected"), NATURAL, ids=[t for t, _ in NATURAL])
def test_natural_phrase(text: str, expected: dict[str, Any]) -> None:
    assert conditions(f"AAPL {text}") == leaf(expected)


def test_every_condition_type_has_a_natural_phrase() -> None:
    assert {expected["type"] for _, expected in NATURAL} == set(CONDITION_MODELS)


# One example leaf per type, with non-default parameters where there are any.
EXAMPLES = [
    {"type": "price_above", "threshold": 200.25},
    {"type": "price_below", "threshold": 0.5},
    {"type": "price_crosses_above", "threshold": 1_000_000},
    {"type": "price_crosses_below", "threshold": 150},
    {"type": "percent_move_up", "percent": 5, "window_seconds": 90},
    {"type": "percent_move_down", "percent": 0.75, "window_seconds": 7200},
    {"type": "rsi_above", "threshold": 70.5, "period": 9, "timeframe": "15m"},
    {"type": "rsi_below", "threshold": 30},
    {"type": "price_crosses_above_sma", "period": 50, "timeframe": "1d"},
    {"type": "price_crosses_below_sma", "period": 200, "timeframe": "4h"},
    {"type": "sma_cross_up", "fast": 20, "slow": 50, "timeframe": "1h"},
    {"type": "sma_cross_down"},
    {"type": "bollinger_break_upper", "period": 30, "stddev": 2.5, "timeframe": "5m"},
    {"type": "bollinger_break_lower", "period": 10, "stddev": 1, "timeframe": "30s"},
    {"type": "new_high", "period": 252, "timeframe": "1d"},
    {"type": "new_low", "period": 5},
    {"type": "volume_spike", "multiple": 4.5, "period": 10, "timeframe": "5m"},
    {"type": "iv_above", "threshold": 60},
    {"type": "iv_below", "threshold": 0.25},
    {"type": "iv_change_pct", "percent": -30, "window_seconds": 86400},
    {"type": "iv_rank_above", "threshold": 80, "lookback_days": 100},
    {"type": "delta_above", "threshold": 0.7},
    {"type": "delta_below", "threshold": -0.3},
    {"type": "gamma_above", "threshold": 0.05},
    {"type": "gamma_below", "threshold": 0.001},
    {"type": "theta_above", "threshold": -0.02},
    {"type": "theta_below", "threshold": -0.5},
    {"type": "vega_above", "threshold": 0.3},
    {"type": "vega_below", "threshold": 0.1},
    {"type": "spread_pct_above", "threshold": 2.5},
    {"type": "unusual_volume", "ratio": 3, "right": "C", "min_size": 100},
    {"type": "flow_premium_above", "threshold": 1_250_000, "sides": ["ask", "above_ask"]},
    {
        "type": "flow_sweep",
        "min_premium": 500_000,
        "right": "C",
        "moneyness": "otm",
        "max_days_to_expiry": 30,
        "min_days_to_expiry": 7,
    },
    {"type": "flow_block", "right": "P", "moneyness": "atm", "atm_band_pct": 2.5},
    {"type": "flow_repeated_hits", "count": 5, "window_seconds": 600, "sides": ["below_bid"]},
    {"type": "put_call_premium_ratio", "threshold": 0.5, "comparison": "below"},
    {"type": "position_pnl_pct_above", "threshold": 10},
    {"type": "position_pnl_pct_below", "threshold": -12.5},
    {"type": "position_pnl_above", "threshold": 5000},
    {"type": "position_pnl_below", "threshold": -500.5},
    {"type": "expiry_within_days", "days": 0},
]


def test_examples_cover_every_type() -> None:
    assert {example["type"] for example in EXAMPLES} == set(CONDITION_MODELS)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["type"] for e in EXAMPLES])
def test_canonical_form(example: dict[str, Any]) -> None:
    expected = leaf(example)
    text = format_condition(expected, canonical=True)
    assert text.startswith(f"{example['type']}(")
    assert conditions(f"AAPL {text}") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price_above(threshold=200)", {"type": "price_above", "threshold": 200}),
        (
            "percent_move_up(percent=5%, window_seconds=30m)",
            {"type": "percent_move_up", "percent": 5, "window_seconds": 1800},
        ),
        (
            "flow_sweep(right=C, sides=[ask, above_ask], min_premium=500k, max_days_to_expiry=30)",
            {
                "type": "flow_sweep",
                "right": "C",
                "sides": ["ask", "above_ask"],
                "min_premium": 500_000,
                "max_days_to_expiry": 30,
            },
        ),
        (
            "rsi_below(threshold=30, timeframe=5m)",
            {"type": "rsi_below", "threshold": 30, "timeframe": "5m"},
        ),
        ('flow_block(moneyness="itm", right=none)', {"type": "flow_block", "moneyness": "itm"}),
        ("EXPIRY_WITHIN_DAYS(days=2)", {"type": "expiry_within_days", "days": 2}),
    ],
)
def test_canonical_text(text: str, expected: dict[str, Any]) -> None:
    assert conditions(f"AAPL {text}") == leaf(expected)


def test_flow_filters_in_natural_form() -> None:
    text = "otm call sweep premium >= 250k side ask,above_ask dte >= 7 dte <= 45 size > 99"
    assert conditions(f"AAPL {text}") == leaf(
        {
            "type": "flow_sweep",
            "min_premium": 250_000,
            "right": "C",
            "moneyness": "otm",
            "sides": ["ask", "above_ask"],
            "min_days_to_expiry": 7,
            "max_days_to_expiry": 45,
            "min_size": 100,
        }
    )
    assert conditions("AAPL put block at ask below bid atm band 2%") == leaf(
        {
            "type": "flow_block",
            "right": "P",
            "sides": ["ask", "below_bid"],
            "atm_band_pct": 2,
        }
    )


# ---------------------------------------------------------------- and, or, parentheses

A = {"type": "price_above", "threshold": 1}
B = {"type": "price_below", "threshold": 2}
C = {"type": "iv_above", "threshold": 3}
D = {"type": "delta_above", "threshold": 0.4}
TEXT = {"a": "price > 1", "b": "price < 2", "c": "iv > 3", "d": "delta > 0.4"}


def tree(expression: str) -> Any:
    text = re.sub(r"\b[abcd]\b", lambda m: TEXT[m.group()], expression)
    return parse_conditions(text)


def node(data: Any) -> Any:
    return Rule.model_validate(
        {"id": "x", "user_id": "x", "name": "x", "conditions": data}
    ).conditions


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("a", A),
        ("(a)", A),
        ("((a))", A),
        ("a and b", {"all": [A, B]}),
        ("a or b", {"any": [A, B]}),
        ("a or b and c", {"any": [A, {"all": [B, C]}]}),
        ("a and b or c", {"any": [{"all": [A, B]}, C]}),
        ("a and (b or c)", {"all": [A, {"any": [B, C]}]}),
        ("(a or b) and (c or d)", {"all": [{"any": [A, B]}, {"any": [C, D]}]}),
        ("a and b and c and d", {"all": [A, B, C, D]}),
        ("a and (b and c) and d", {"all": [A, B, C, D]}),
        ("a or (b or (c or d))", {"any": [A, B, C, D]}),
        ("a or b and c or d", {"any": [A, {"all": [B, C]}, D]}),
        ("a AND (b Or c)", {"all": [A, {"any": [B, C]}]}),
    ],
)
def test_precedence_and_parentheses(expression: str, expected: Any) -> None:
    assert tree(expression) == node(expected)


def test_issue_example() -> None:
    rule = parse_rule(
        "AAPL price crosses above 200 and (iv_rank > 80 or volume_spike 3x 20 bars 1m) "
        "cooldown 30m priority high",
        user_id="u-1",
    )
    assert rule.symbol == "AAPL"
    assert rule.priority == "HIGH"
    assert rule.cooldown_seconds == 1800
    assert rule.conditions == node(
        {
            "all": [
                {"type": "price_crosses_above", "threshold": 200},
                {
                    "any": [
                        {"type": "iv_rank_above", "threshold": 80, "lookback_days": 252},
                        {"type": "volume_spike", "multiple": 3, "period": 20, "timeframe": "1m"},
                    ]
                },
            ]
        }
    )
    assert isinstance(rule.conditions, AllOf)
    assert isinstance(rule.conditions.all[1], AnyOf)


# ---------------------------------------------------------------- scope and options


@pytest.mark.parametrize(
    ("text", "symbol", "symbols"),
    [
        ("AAPL price > 1", "AAPL", None),
        ("symbol NEW price > 1", "NEW", None),
        ('"UP" price > 1', "UP", None),
        ('"AAPL  260117C00200000" delta > 0.5', "AAPL  260117C00200000", None),
        ("BRK.B price > 1", "BRK.B", None),
        ("watchlist AAPL,MSFT, NVDA price > 1", None, ["AAPL", "MSFT", "NVDA"]),
        ("symbols SPY price > 1", None, ["SPY"]),
        ("any symbol price > 1", None, None),
        ("* price > 1", None, None),
        ("price > 1", None, None),
        ("AAPL (price > 1 or price < 0.5)", "AAPL", None),
    ],
)
def test_scope(text: str, symbol: str | None, symbols: list[str] | None) -> None:
    rule = parse_rule(text, user_id="u-1")
    assert (rule.symbol, rule.symbols) == (symbol, symbols)


def test_every_option() -> None:
    rule = parse_rule(
        "AAPL price > 1 cooldown 90s priority CRITICAL once expires 2026-12-31T00:00:00Z "
        'name "my rule" id r-7 user u-9 channels push,email version 4 inactive regular hours'
    )
    assert rule.model_dump(mode="json", exclude={"conditions"}) == {
        "v": 1,
        "id": "r-7",
        "version": 4,
        "user_id": "u-9",
        "name": "my rule",
        "symbol": "AAPL",
        "symbols": None,
        "priority": "CRITICAL",
        "mode": "once",
        "cooldown_seconds": 90,
        "expires_at": "2026-12-31T00:00:00.000Z",
        "active": False,
        "channels": ["push", "email"],
        "sessions": "regular",
    }


def test_option_values() -> None:
    assert parse_rule("AAPL price > 1 cooldown 0", user_id="u").cooldown_seconds == 0
    assert parse_rule("AAPL price > 1 cooldown 2 hours", user_id="u").cooldown_seconds == 7200
    assert parse_rule("AAPL price > 1 recurring active", user_id="u").mode == "recurring"
    expires = parse_rule("AAPL price > 1 expires 2026-06-30", user_id="u").expires_at
    assert expires is not None and expires.isoformat() == "2026-06-30T00:00:00+00:00"
    offset = parse_rule("AAPL price > 1 expires 2026-06-30T10:00+02:00", user_id="u").expires_at
    assert offset is not None and offset.isoformat() == "2026-06-30T08:00:00+00:00"
    assert parse_rule("AAPL price > 1 name breakout", user_id="u").name == "breakout"
    assert parse_rule("AAPL price > 1 user 'u 2'").user_id == "u 2"
    assert parse_rule("AAPL price > 1", user_id="u").sessions == "any"
    for text, sessions in [
        ("Regular Hours", "regular"),
        ("extended hours", "extended"),
        ("sessions extended", "extended"),
        ("sessions regular", "regular"),
        ("SESSIONS any", "any"),
    ]:
        assert parse_rule(f"AAPL price > 1 {text} once", user_id="u").sessions == sessions


def test_defaults_and_derived_id() -> None:
    text = "AAPL price > 200   cooldown 30m"
    rule = parse_rule(text, user_id="u-1")
    assert rule.priority == "MEDIUM" and rule.mode == "recurring" and rule.active
    assert rule.name == "price above 200"  # the conditions in words: no symbol, no options
    assert re.fullmatch(r"r-[0-9a-f]{12}", rule.id)
    assert parse_rule("AAPL  price > 200 cooldown 30m", user_id="u-1").id == rule.id
    assert parse_rule(text, user_id="u-2").id != rule.id
    assert parse_rule("AAPL price > 201 cooldown 30m", user_id="u-1").id != rule.id
    assert parse_rule(text, user_id="u-1", rule_id="mine").id == "mine"
    assert parse_rule(text + " user u-1").user_id == "u-1"


# ---------------------------------------------------------------- names

# The name a rule gets without a `name` option: its conditions in words, for EXAMPLES.
NAMES = {
    "price_above": "price above 200.25",
    "price_below": "price below 0.5",
    "price_crosses_above": "price crosses above 1,000,000",
    "price_crosses_below": "price crosses below 150",
    "percent_move_up": "up 5% in 90 seconds",
    "percent_move_down": "down 0.75% in 2 hours",
    "rsi_above": "RSI(9, 15m) above 70.5",
    "rsi_below": "RSI(14, 1m) below 30",
    "price_crosses_above_sma": "price crosses above SMA(50, 1d)",
    "price_crosses_below_sma": "price crosses below SMA(200, 4h)",
    "sma_cross_up": "SMA 20 crosses above SMA 50 (1h)",
    "sma_cross_down": "SMA 50 crosses below SMA 200 (1m)",
    "bollinger_break_upper": "close above the upper Bollinger band (30, 2.5, 5m)",
    "bollinger_break_lower": "close below the lower Bollinger band (10, 1, 30s)",
    "new_high": "new 252-bar high (1d)",
    "new_low": "new 5-bar low (1m)",
    "volume_spike": "volume spike: 4.5x the 10-bar average (5m)",
    "iv_above": "IV above 60",
    "iv_below": "IV below 0.25",
    "iv_change_pct": "IV down 30% in 1 day",
    "iv_rank_above": "IV rank above 80 over 100 days",
    "delta_above": "delta above 0.7",
    "delta_below": "delta below -0.3",
    "gamma_above": "gamma above 0.05",
    "gamma_below": "gamma below 0.001",
    "theta_above": "theta above -0.02",
    "theta_below": "theta below -0.5",
    "vega_above": "vega above 0.3",
    "vega_below": "vega below 0.1",
    "spread_pct_above": "spread above 2.5% of mid",
    "unusual_volume": "unusual call volume (3x open interest), 100+ contracts",
    "flow_premium_above": "options print over $1.25M, at or above the ask",
    "flow_sweep": "OTM call sweep of $500K or more, 7 to 30 days to expiry",
    "flow_block": "ATM (within 2.5%) put block",
    "flow_repeated_hits": "5 options prints on one contract in 10 minutes, below the bid",
    "put_call_premium_ratio": "put/call premium ratio below 0.5 over 1 hour",
    "position_pnl_pct_above": "position P&L above 10%",
    "position_pnl_pct_below": "position P&L below -12.5%",
    "position_pnl_above": "position P&L above $5K",
    "position_pnl_below": "position P&L below -$500.50",
    "expiry_within_days": "expires today",
}


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["type"] for e in EXAMPLES])
def test_name_of_every_type(example: dict[str, Any]) -> None:
    assert condition_name(leaf(example)) == NAMES[example["type"]]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        # the issue's rule: its options are no part of the name, nor is the symbol
        ("MSFT price crosses above 260 priority critical id r-crit cooldown 0", None),
        ("AAPL rsi(14, 5m) > 70 once regular hours expires 2027-01-01", "RSI(14, 5m) above 70"),
        ("call sweep premium >= 1m id r-2 channels push", "call sweep of $1M or more"),
        ("watchlist AAPL,MSFT golden cross 1d", "golden cross: SMA 50 crosses above SMA 200 (1d)"),
        ("any symbol expiry within 1 day", "expires within 1 trading day"),
        (
            "TSLA price > 1 or iv change 25% in 30m and delta < 0.2",
            "price above 1 or (IV up 25% in 30 minutes and delta below 0.2)",
        ),
        ("NVDA price < 181 name 'NVDA breakdown below 181'", "NVDA breakdown below 181"),
    ],
)
def test_default_name_is_the_conditions_in_words(text: str, name: str | None) -> None:
    rule = parse_rule(text, user_id="u-1")
    assert rule.name == (name or "price crosses above 260")


def test_a_long_name_is_cut_at_255_characters() -> None:
    name = parse_rule("AAPL " + "price > 1 or " * 40 + "price > 2", user_id="u").name
    assert len(name) == 255 and name.startswith("price above 1 or ") and name.endswith("…")


# ---------------------------------------------------------------- errors


def error(text: str, **kwargs: Any) -> RuleTextError:
    kwargs.setdefault("user_id", "u-1")
    with pytest.raises(RuleTextError) as caught:
        parse_rule(text, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    ("text", "column", "width", "message"),
    [
        ("AAPL price crosses above two hundred", 26, 3, "expected a number after 'above'"),
        ("AAPL prise > 200", 6, 5, "unknown condition 'prise' (did you mean 'price'?)"),
        ("prise > 200", 1, 5, "unknown condition 'prise' (did you mean 'price'?)"),
        ("AAPL foo bar", 6, 3, "unknown condition 'foo'"),
        ("AAPL price > 1 and rsj < 30", 20, 3, "unknown condition 'rsj' (did you mean 'rsi'?)"),
        ("AAPL (price > 200 and iv > 50", 6, 1, "unbalanced parenthesis: this '(' is never closed"),
        ("AAPL price > 200)", 17, 1, "unbalanced parenthesis: ')' without a matching '('"),
        ("AAPL (price > 1 iv > 2)", 17, 2, "expected 'and', 'or' or ')', found 'iv'"),
        ("AAPL price >", 13, 1, "expected a number after '>'"),
        ("AAPL price > 200 and", 21, 1, "expected a condition after 'and'"),
        ("AAPL", 5, 1, "expected a condition after 'AAPL'"),
        ("AAPL price >= 200", 12, 2, "'>=' is not supported here"),
        ("AAPL rsi(14, 5m) < 130", 6, 17, "rsi_below: threshold: Input should be less than 100"),
        ("AAPL sma 200 crosses above sma 50", 6, 28, "fast period (200) must be shorter"),
        ("AAPL price_above(treshold=5)", 18, 8, "unknown parameter 'treshold' for price_above"),
        ("AAPL price > 200 cooldown 30", 27, 2, "add a unit to '30'"),
        ("AAPL price > 200 cooldwn 30m", 18, 7, "(did you mean 'cooldown'?)"),
        ("AAPL price > 200 priority urgent", 27, 6, "expected a priority"),
        ("AAPL price > 1 once once", 21, 4, "option 'once' given twice"),
        ("AAPL spread > 2", 15, 1, "write 2%"),
        ("AAPL iv > 60%", 11, 3, "without '%'"),
        ("AAPL up 5% in 30", 15, 2, "add a unit to '30'"),
        ("AAPL call swep", 11, 4, "(did you mean 'sweep'?)"),
        ("AAPL price > 1 ; x", 16, 1, "unexpected character ';'"),
        ('AAPL price > 1 name "open', 21, 1, "unterminated string"),
        ("AAPL rsi 14 5m 3 < 30", 16, 1, "too many numbers"),
        ("AAPL price > 1 expires 2026-12-31T10:00", 24, 16, "add 'Z' (UTC) or an offset"),
        ("AAPL price > 1 channels push,fax", 30, 3, "unknown channel 'fax'"),
        ("AAPL new high 20 bars 7x", 23, 2, "too many numbers"),
        ("AAPL rsi(14, 9w) < 30", 14, 2, "'9w' is not a timeframe"),
        ("AAPL price > -5", 6, 10, "price_above: threshold: Input should be greater than 0"),
        ("AAPL close > 5", 14, 1, "'close' compares with a Bollinger band"),
        ("AAPL price > 1 sessions pre", 25, 3, "expected a session (any, regular, extended)"),
        ("AAPL price > 1 regular time", 24, 4, "expected 'hours' after 'regular'"),
        ("AAPL price > 1 extendd hours", 16, 7, "(did you mean 'extended'?)"),
        ("AAPL price > 1 x", 16, 1, "inactive, regular hours, extended hours, sessions), found"),
        ("AAPL price > 1 regular hours sessions any", 30, 8, "option 'sessions' given twice"),
        ("regular hours price > 1", 1, 7, "'regular' is an option: options go after"),
    ],
)
def test_error_points_at_the_word(text: str, column: int, width: int, message: str) -> None:
    exc = error(text)
    assert message in exc.reason
    assert exc.column == column
    head, shown, caret = str(exc).split("\n")
    assert head == f"rule text: {exc.reason} at column {column}:"
    assert shown == f"  {text}"
    assert caret == "  " + " " * (column - 1) + "^" * width


def test_error_on_a_later_line() -> None:
    exc = error("AAPL price > 1\n  and rsj < 3")
    assert (exc.line, exc.column) == (2, 7)
    assert str(exc).splitlines()[1:] == ["    and rsj < 3", "        ^^^"]
    assert "at line 2, column 7" in str(exc)


def test_user_and_id_must_agree() -> None:
    assert "says user 'u-2' but 'u-1' was given" in error("AAPL price > 1 user u-2").reason
    assert "says id 'a' but 'b' was given" in error("AAPL price > 1 id a", rule_id="b").reason
    assert "no user" in error("AAPL price > 1", user_id=None).reason


def test_error_is_a_value_error() -> None:
    assert issubclass(RuleTextError, ValueError)


# ---------------------------------------------------------------- formatting, round trips


def rule_with(conditions: Any, **fields: Any) -> Rule:
    body = {"id": "r-1", "user_id": "u-1", "name": "a rule", "symbol": "AAPL", **fields}
    return Rule.model_validate({**body, "conditions": conditions})


@pytest.mark.parametrize("canonical", [False, True], ids=["natural", "canonical"])
@pytest.mark.parametrize("example", EXAMPLES, ids=[e["type"] for e in EXAMPLES])
def test_round_trip_every_type(example: dict[str, Any], canonical: bool) -> None:
    rule = rule_with(example)
    text = format_rule(rule, canonical=canonical)
    assert parse_rule(text) == rule


@pytest.mark.parametrize("canonical", [False, True], ids=["natural", "canonical"])
def test_round_trip_tree_and_options(canonical: bool) -> None:
    rule = rule_with(
        {"any": [{"all": EXAMPLES[:3]}, {"all": [EXAMPLES[20], {"any": EXAMPLES[30:33]}]}]},
        symbol=None,
        symbols=["AAPL", "BRK.B", "NEW"],
        version=3,
        priority="LOW",
        mode="once",
        cooldown_seconds=5400,
        expires_at="2027-01-01T09:30:00.250Z",
        channels=["sms", "webhook"],
        active=False,
        sessions="extended",
        name='say "hi" \\ there',
        user_id="user with space",
        id="and",
    )
    assert parse_rule(format_rule(rule, canonical=canonical)) == rule


@pytest.mark.parametrize(
    "scope", [{"symbol": "AAPL  260117C00200000"}, {"symbol": "UP"}, {"symbol": None}]
)
def test_round_trip_scopes(scope: dict[str, Any]) -> None:
    rule = rule_with({"type": "price_above", "threshold": 1}, **scope)
    assert parse_rule(format_rule(rule)) == rule


@pytest.mark.parametrize("sessions", ["any", "regular", "extended"])
def test_round_trip_sessions(sessions: str) -> None:
    rule = rule_with({"type": "price_above", "threshold": 1}, sessions=sessions)
    text = format_rule(rule)
    assert text.endswith(f'"a rule" {sessions} hours') == (sessions != "any")
    assert parse_rule(text) == rule


def test_format_natural_text() -> None:
    rule = parse_rule(
        "AAPL price crosses above 200 and (iv_rank > 80 or volume_spike 3x 20 bars 1m) "
        "cooldown 30m priority high",
        user_id="u-1",
        rule_id="r-1",
    )
    assert format_condition(rule.conditions) == (
        "price crosses above 200 and (iv_rank > 80 over 252 days or volume_spike 3x 20 bars 1m)"
    )
    assert format_rule(rule).startswith("AAPL price crosses above 200 and (")
    assert format_rule(rule).endswith("priority high cooldown 30m")


# ---------------------------------------------------------------- numbers and units


def test_money_and_durations() -> None:
    assert parse_money("500k") == 500_000
    assert parse_money("$1.5m") == 1_500_000
    assert parse_money("2B") == 2_000_000_000
    assert parse_money("250") == 250
    assert parse_duration("30m") == 1800
    assert parse_duration("1.5h") == 5400
    assert parse_duration("90 seconds") == 90
    assert parse_duration("0") == 0
    for bad in ("30", "5x", "1.5s", "m"):
        with pytest.raises(RuleTextError):
            parse_duration(bad)
    with pytest.raises(RuleTextError):
        parse_money("5%")


def test_m_is_minutes_in_durations_and_million_in_money() -> None:
    rule = parse_conditions("call sweep premium > 1m and repeated hits 3 in 1m and rsi(14, 1m) > 1")
    assert isinstance(rule, AllOf)
    sweep, hits, rsi = rule.all
    assert sweep.min_premium == 1_000_000
    assert hits.window_seconds == 60
    assert rsi.timeframe == "1m"


# ---------------------------------------------------------------- files and the CLI


def test_load_rules_from_text_and_yaml(tmp_path: Path) -> None:
    text_file = tmp_path / "rules.txt"
    text_file.write_text(
        "# my rules\n\nAAPL price > 200 id r-a\n  MSFT rsi < 30 user u-1 # oversold\n"
    )
    rules = load_rules(text_file, user_id="u-1")
    assert [(r.id, r.symbol, r.user_id) for r in rules][0] == ("r-a", "AAPL", "u-1")
    assert rules[1].symbol == "MSFT"

    yaml_file = tmp_path / "rules.yaml"
    yaml_file.write_text(
        "- {id: r-y, name: y, symbol: SPY, conditions: {type: price_above, threshold: 5}}\n"
        "- AAPL price < 100 id r-z\n"
    )
    rules = load_rules(yaml_file, user_id="u-2")
    assert [(r.id, r.user_id) for r in rules] == [("r-y", "u-2"), ("r-z", "u-2")]


def test_load_rules_errors_name_the_line(tmp_path: Path) -> None:
    text_file = tmp_path / "rules.txt"
    text_file.write_text("AAPL price > 200\nAAPL price > abc\n")
    with pytest.raises(CommandError, match=r"rules\.txt:2: rule text: expected a number"):
        load_rules(text_file, user_id="u-1")
    yaml_file = tmp_path / "rules.yml"
    yaml_file.write_text("- {id: r, name: n, conditions: {type: price_above, threshold: -1}}\n")
    with pytest.raises(CommandError, match=r"item 1 is not a valid Rule: conditions.threshold"):
        load_rules(yaml_file, user_id="u-1")
    yaml_file.write_text(
        "- {id: r, user_id: u-9, name: n, conditions: {type: iv_above, threshold: 1}}"
    )
    with pytest.raises(CommandError, match="has user_id 'u-9', not 'u-1'"):
        load_rules(yaml_file, user_id="u-1")


def test_cli_rules_parse(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["rules", "parse", "AAPL rsi(14, 5m) < 30 cooldown 1h", "--user", "u-1", "--id", "r-9"]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "v": 1,
        "id": "r-9",
        "version": 1,
        "user_id": "u-1",
        "name": "RSI(14, 5m) below 30",
        "symbol": "AAPL",
        "priority": "MEDIUM",
        "mode": "recurring",
        "cooldown_seconds": 3600,
        "active": True,
        "conditions": {"type": "rsi_below", "threshold": 30.0, "period": 14, "timeframe": "5m"},
    }


def test_cli_rules_parse_joins_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "parse", "SPY", "price", ">", "600", "user", "u-1"]) == 0
    assert json.loads(capsys.readouterr().out)["conditions"]["threshold"] == 600


def test_cli_rules_parse_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["rules", "parse", "AAPL price crosses above two hundred", "--user", "u-1"])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "smart-alerts: error: rule text: expected a number after 'above' at column 26:",
        "  AAPL price crosses above two hundred",
        "                           ^^^",
    ]


# ---------------------------------------------------------------- docs/rules.md


def _unwrap(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        for item in extra:
            metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
        annotation = base
    return annotation, metadata


def _type_label(name: str, annotation: Any) -> str:
    if name == "timeframe":
        return "timeframe"
    if get_origin(annotation) is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(annotation))
    if get_origin(annotation) in (list, tuple):
        return "list of " + " \\| ".join(f"`{v}`" for v in get_args(get_args(annotation)[0]))
    return {int: "integer", float: "number", str: "string", bool: "boolean"}[annotation]


def _bounds(name: str, metadata: list[Any]) -> str:
    found: dict[str, Any] = {}
    for item in metadata:
        for kind in ("gt", "ge", "lt", "le"):
            if isinstance(item, getattr(annotated_types, kind.capitalize())):
                found[kind] = getattr(item, kind)
    if name == "timeframe":
        return "1s … 7d"
    if name.endswith("_seconds"):
        low, high = found["ge"], found["le"]
        return f"{rule_text.format_duration(low)} … {rule_text.format_duration(high)}"
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    parts = [f"{signs[kind]} {rule_text.format_number(value)}" for kind, value in found.items()]
    return ", ".join(parts) or "–"


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default is None:
        return "none"
    if isinstance(info.default, str):
        return f"`{info.default}`"
    return rule_text.format_number(info.default)


def field_rows(model: type[BaseModel], names: list[str]) -> list[str]:
    rows = []
    for name in names:
        info = model.model_fields[name]
        annotation, metadata = _unwrap(info.annotation, list(info.metadata))
        label, bounds = _type_label(name, annotation), _bounds(name, metadata)
        rows.append(f"| `{name}` | {label} | {_default(info)} | {bounds} |")
    return rows


def parameter_table(kind: str) -> str:
    """The parameter table of a condition type as docs/rules.md must show it."""
    model = CONDITION_MODELS[kind]
    own = [n for n in model.model_fields if n != "type" and n not in FlowFilters.model_fields]
    lines = ["| parameter | type | default | bounds |", "|---|---|---|---|"]
    lines += field_rows(model, own)
    if kind in FLOW_CONDITIONS:
        lines.append("| *flow filters* | | | see [flow filters](#flow-filters) |")
    return "\n".join(lines)


def reference_sections() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    reference = text[text.index("## Condition reference") : text.index("## Rule text")]
    parts = re.split(r"^### `(\w+)`\n", reference, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_docs_have_a_section_for_every_condition_type() -> None:
    assert list(reference_sections()) == list(CONDITION_MODELS)


@pytest.mark.parametrize("kind", list(CONDITION_MODELS))
def test_docs_section_examples_and_parameters(kind: str) -> None:
    section = reference_sections()[kind]
    assert parameter_table(kind) in section, f"docs/rules.md: parameter table of {kind}"
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    assert example["type"] == kind
    text = re.search(r"```text\n(.*?)```", section, re.S).group(1).strip()  # type: ignore[union-attr]
    assert conditions(text) == leaf(example)


def test_docs_flow_filter_table() -> None:
    table = "\n".join(
        ["| filter | type | default | bounds |", "|---|---|---|---|"]
        + field_rows(FlowFilters, list(FlowFilters.model_fields))
    )
    assert table in DOCS.read_text(encoding="utf-8")


def test_docs_rule_examples_parse() -> None:
    text = DOCS.read_text(encoding="utf-8")
    sample = re.search(r"The same rule as text:\n\n```text\n(.*?)```", text, re.S)
    assert sample is not None
    rule = parse_rule(sample.group(1))
    first_json = re.search(r"```json\n(\{\"v\": 1.*?)```", text, re.S)
    assert first_json is not None
    assert rule == Rule.model_validate(json.loads(first_json.group(1)))
    rules_txt = re.search(r"```text\n# rules.txt\n(.*?)```", text, re.S)
    assert rules_txt is not None
    for line in rules_txt.group(1).splitlines():
        parse_rule(line, user_id="u-2")
