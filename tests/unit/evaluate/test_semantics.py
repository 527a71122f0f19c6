"""The examples of docs/rules.md "Edge cases, exactly", run through the engine as written there.

Each test is one example of that section; a change of behaviour fails here before the doc goes
stale.
"""

from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.evaluate.engine import ShardEngine
from pipeline.messages import OptionsFlow, Tick, TriggeredAlert
from pipeline.rules.text import parse_rule

OCC = "AAPL  260116C00200000"


def engine_with(text: str) -> ShardEngine:
    engine = ShardEngine()
    engine.upsert(parse_rule(text, user_id="u-1", rule_id="r-1"))
    return engine


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def tick(ts: str, price: float, **fields: Any) -> Tick:
    return Tick(symbol=fields.pop("symbol", "AAPL"), ts=utc(ts), price=price, **fields)


def flow(ts: str, print_id: str, premium: float = 25_000) -> OptionsFlow:
    return OptionsFlow(
        id=print_id,
        ts=utc(ts),
        underlying="AAPL",
        contract=OCC,
        right="C",
        strike=200,
        expiry="2026-01-16",
        price=2.5,
        size=100,
        premium=premium,
        side="ask",
        trade_type="single",
    )


def fired_at(alerts: list[TriggeredAlert]) -> list[str]:
    return [alert.triggered_at.strftime("%H:%M:%S") for alert in alerts]


def test_consecutive_qualifying_prints_each_fire() -> None:
    engine = engine_with("AAPL premium > 10k cooldown 0")
    alerts = engine.process([flow("2026-01-05 15:00:00", "p1"), flow("2026-01-05 15:00:01", "p2")])
    assert fired_at(alerts) == ["15:00:00", "15:00:01"]


def test_consecutive_qualifying_prints_within_a_cooldown_fire_once() -> None:
    engine = engine_with("AAPL premium > 10k cooldown 1m")
    alerts = engine.process([flow("2026-01-05 15:00:00", "p1"), flow("2026-01-05 15:00:01", "p2")])
    assert fired_at(alerts) == ["15:00:00"]


def test_qualifying_prints_with_one_timestamp_make_one_alert() -> None:
    engine = engine_with("AAPL premium > 10k cooldown 0")
    alerts = engine.process(
        [
            flow("2026-01-05 15:00:00", "p1", premium=20_000),
            flow("2026-01-05 15:00:00", "p2", premium=90_000),
            flow("2026-01-05 15:00:01", "p3"),
        ]
    )
    assert fired_at(alerts) == ["15:00:00", "15:00:01"]
    assert alerts[0].values["premium"] == 20_000  # the first of the instant, in input order
    assert len({alert.alert_id for alert in alerts}) == 2


def test_a_time_window_includes_its_oldest_edge() -> None:
    engine = engine_with("AAPL down 3% in 1h")
    alerts = engine.process([tick("2026-01-05 15:00:00", 100), tick("2026-01-05 16:00:00", 97)])
    assert fired_at(alerts) == ["16:00:00"]  # the 15:00:00 high is in [15:00:00, 16:00:00]


def test_a_time_window_excludes_what_is_older_than_its_edge() -> None:
    engine = engine_with("AAPL down 3% in 1h")
    alerts = engine.process(
        [
            tick("2026-01-05 14:59:59.999", 100),
            tick("2026-01-05 15:30:00", 98.5),
            tick("2026-01-05 16:00:00", 97),
        ]
    )
    assert alerts == []  # the high of [15:00, 16:00] is 98.5: a 1.5% drop


def test_a_flow_window_includes_its_oldest_edge() -> None:
    def hits(first: str) -> list[str]:
        engine = engine_with("AAPL repeated hits 3 in 5m")
        prints = [flow(first, "p1"), flow("2026-01-05 15:02:00", "p2")]
        return fired_at(engine.process([*prints, flow("2026-01-05 15:05:00", "p3")]))

    assert hits("2026-01-05 15:00:00") == ["15:05:00"]
    assert hits("2026-01-05 14:59:59.999") == []


def test_an_edge_during_the_cooldown_is_dropped_not_postponed() -> None:
    engine = engine_with("AAPL price > 100 cooldown 1h")
    alerts = engine.process(
        [
            tick("2026-01-05 15:00:00", 101),  # fires; silent until 16:00:00
            tick("2026-01-05 15:10:00", 99),
            tick("2026-01-05 15:20:00", 101),  # an edge in the cooldown: dropped
            tick("2026-01-05 16:05:00", 101),  # still above, but no new edge
            tick("2026-01-05 16:10:00", 99),
            tick("2026-01-05 16:15:00", 102),  # a new edge after the cooldown
        ]
    )
    assert fired_at(alerts) == ["15:00:00", "16:15:00"]


def test_iv_rank_counts_utc_calendar_days_and_each_days_last_iv() -> None:
    engine = engine_with("AAPL iv_rank > 80 over 5 days")
    alerts = engine.process(
        [
            tick("2026-03-04 20:00:00", 1, iv=0.50),  # Wednesday: outside the 5 days of Monday
            tick("2026-03-05 20:00:00", 1, iv=0.20),  # Thursday
            tick("2026-03-06 20:00:00", 1, iv=0.30),  # Friday; nothing on the weekend
            tick("2026-03-09 14:00:00", 1, iv=0.40),  # Monday: rank 100 over 0.20-0.40
            tick("2026-03-09 14:30:00", 1, iv=0.21),  # Monday's value is now 0.21: rank 10
            tick("2026-03-09 15:00:00", 1, iv=0.29),  # and now 0.29: rank 90 over 0.20-0.30
        ]
    )
    # Wednesday in the range or Monday's 0.40 kept would make the last rank 30 or 45.
    assert fired_at(alerts) == ["14:00:00", "15:00:00"]
    assert alerts[1].values["iv_rank"] == pytest.approx(90)


def test_once_on_a_rule_for_every_symbol_retires_the_whole_rule() -> None:
    engine = engine_with("any symbol price > 100 once")
    alerts = engine.process(
        [
            tick("2026-01-05 15:00:00", 101, symbol="MSFT"),
            tick("2026-01-05 15:00:01", 101, symbol="AAPL"),
            tick("2026-01-05 15:00:02", 99, symbol="MSFT"),
            tick("2026-01-05 15:00:03", 101, symbol="MSFT"),
        ]
    )
    assert [(alert.symbol, alert.triggered_at.second) for alert in alerts] == [("MSFT", 0)]


def test_volume_spike_never_holds_over_an_average_volume_of_zero() -> None:
    def spikes(earlier_size: float) -> list[str]:
        engine = engine_with("AAPL volume_spike 3x 3 bars 1m")
        ticks = [tick(f"2026-01-05 15:0{m}:00", 100, size=earlier_size) for m in range(3)]
        ticks += [tick("2026-01-05 15:03:00", 100, size=500), tick("2026-01-05 15:04:00", 100)]
        return fired_at(engine.process(ticks))

    assert spikes(0) == []
    assert spikes(100) == ["15:04:00"]  # the 15:03 bar closes at its end, 15:04:00
