"""Alert titles: the rule's name with the symbol, named once."""

import pytest

from pipeline.evaluate.engine import ShardEngine, alert_title
from pipeline.messages import OptionsFlow
from pipeline.rules.text import parse_rule
from tests.unit.helpers import at, tick


@pytest.mark.parametrize(
    ("symbol", "name", "scope", "title"),
    [
        # a name without the symbol gets it in front
        ("MSFT", "price crosses above 260", ("MSFT",), "MSFT: price crosses above 260"),
        # a name that names the symbol is the title: not "NVDA: NVDA breakdown below 181"
        ("NVDA", "NVDA breakdown below 181", ("NVDA",), "NVDA breakdown below 181"),
        ("NVDA", "Breakdown in $NVDA.", ("NVDA",), "Breakdown in $NVDA."),
        ("NVDA", "NVDA's breakdown", None, "NVDA's breakdown"),
        # a word that only contains the symbol does not name it; symbols are case-sensitive
        ("BRK", "BRK.B breakout", ("BRK",), "BRK: BRK.B breakout"),
        ("F", "price above 12 for Ford", ("F",), "F: price above 12 for Ford"),
        ("NVDA", "nvda breakdown", ("NVDA",), "NVDA: nvda breakdown"),
        # a watchlist's name that names several of its symbols does not say which one fired
        ("MSFT", "AAPL,MSFT dip", ("AAPL", "MSFT"), "MSFT: AAPL,MSFT dip"),
        (
            "MSFT",
            "MSFT dip (with AAPL's rule)",
            ("AAPL", "MSFT"),
            "MSFT: MSFT dip (with AAPL's rule)",
        ),
        ("MSFT", "MSFT dip", ("AAPL", "MSFT"), "MSFT dip"),
        ("TSLA", "any symbol up 5% in 30 minutes", None, "TSLA: any symbol up 5% in 30 minutes"),
        # an OCC option symbol pads its root with spaces; a name writes one
        (
            "AAPL  260117C00200000",
            "AAPL 260117C00200000 expiry",
            None,
            "AAPL 260117C00200000 expiry",
        ),
        ("AAPL  260117C00200000", "expiry", None, "AAPL  260117C00200000: expiry"),
    ],
)
def test_title(symbol: str, name: str, scope: tuple[str, ...] | None, title: str) -> None:
    assert alert_title(symbol, name, scope) == title


def test_title_is_at_most_255_characters() -> None:
    assert alert_title("AAPL", "x" * 255, ("AAPL",)) == "AAPL: " + "x" * 249


def test_a_rule_from_text_fires_with_a_title_a_person_would_write() -> None:
    # the rule: its title was "MSFT: MSFT price crosses above 260 priority critical ..."
    engine = ShardEngine()
    text = "MSFT price crosses above 260 priority critical id r-crit cooldown 0"
    engine.upsert(parse_rule(text, user_id="u-1"))
    engine.upsert(parse_rule("any symbol price crosses above 260 id r-any", user_id="u-1"))
    alerts = engine.process([tick("MSFT", 259.5, 0), tick("MSFT", 260.5, 1)])
    assert sorted((a.rule_id, a.title) for a in alerts) == [
        ("r-any", "MSFT: price crosses above 260"),
        ("r-crit", "MSFT: price crosses above 260"),
    ]
    assert alerts[0].message == "price crossed above 260.00, from 259.50 to 260.50"


def test_a_flow_alert_reads_as_a_sentence() -> None:
    engine = ShardEngine()
    engine.upsert(parse_rule("AAPL call sweep premium >= 20k id r-sweep", user_id="u-1"))
    print_ = OptionsFlow(
        id="f-1",
        ts=at(1),
        underlying="AAPL",
        contract="AAPL  260116C00200000",
        right="C",
        strike=200.0,
        expiry="2026-01-16",
        price=2.5,
        size=100,
        side="above_ask",
        trade_type="sweep",
        underlying_price=198.0,
    )
    (alert,) = engine.process([tick("AAPL", 198, 0), print_])
    assert alert.title == "AAPL: call sweep of $20K or more"
    assert alert.message == (
        "call sweep of 100 AAPL 260116C00200000 at 2.50 above the ask, premium $25,000"
    )
