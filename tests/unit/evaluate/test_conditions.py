"""Every condition type: where it fires, where it does not, edges, cooldown, bad parameters.

Each scenario feeds events one at a time to a ShardEngine holding one rule and lists the indexes
of the events that fire. Indicator scenarios use 1-minute bars with one tick per minute, so the
tick at minute i closes bar i-1 and a bar alert fires at that tick.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.evaluate.engine import ExhaustiveShardEngine, ShardEngine
from pipeline.messages import (
    InvalidMessage,
    OptionsFlow,
    Position,
    PositionClosed,
    Rule,
    Tick,
    decode,
)
from tests.unit import helpers

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
OCC = "AAPL  260116C00200000"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tick(price: float, seconds: float, symbol: str = "AAPL", **fields: Any) -> Tick:
    return Tick(symbol=symbol, price=price, ts=at(seconds), **fields)


def minute_ticks(prices: list[float], **per_tick: list[Any]) -> list[Tick]:
    return [
        tick(price, 60 * i, **{name: values[i] for name, values in per_tick.items()})
        for i, price in enumerate(prices)
    ]


def flow(seconds: float, **fields: Any) -> OptionsFlow:
    base: dict[str, Any] = {
        "id": f"f-{seconds}",
        "ts": at(seconds),
        "underlying": "AAPL",
        "contract": OCC,
        "right": "C",
        "strike": 200.0,
        "expiry": "2026-01-16",
        "price": 2.5,
        "size": 100,
        "side": "ask",
        "trade_type": "single",
        "underlying_price": 198.0,
    }
    base.update(fields)
    return OptionsFlow(**base)


def position(
    quantity: float = 10, avg_price: float = 100, symbol: str = "AAPL", **extra: Any
) -> Position:
    return Position(
        user_id="u-1", symbol=symbol, quantity=quantity, avg_price=avg_price, ts=at(-1), **extra
    )


def make_rule(conditions: dict[str, Any], *, cooldown: int = 0, symbol: str = "AAPL") -> Rule:
    return helpers.rule(conditions, name="scenario", symbol=symbol, cooldown_seconds=cooldown)


def fired(rule: Rule, events: list[Any]) -> list[int]:
    engine = ShardEngine()
    engine.upsert(rule)
    return [index for index, event in enumerate(events) if engine.process([event])]


@dataclass
class Scenario:
    conditions: dict[str, Any]
    events: list[Any]
    expected: list[int]
    quiet: dict[str, Any]  # parameter overrides under which nothing fires
    symbol: str = "AAPL"
    bad: list[tuple[dict[str, Any], str]] = field(default_factory=list)


def _level_ticks(name: str, values: list[float]) -> list[Tick]:
    return [tick(100, 60 * i, **{name: value}) for i, value in enumerate(values)]


SCENARIOS: dict[str, Scenario] = {
    "price_above": Scenario(
        {"type": "price_above", "threshold": 10},
        minute_ticks([9, 11, 12, 9, 11]),
        [1, 4],
        {"threshold": 50},
        bad=[({"threshold": -1}, "greater than 0"), ({}, "threshold: Field required")],
    ),
    "price_below": Scenario(
        {"type": "price_below", "threshold": 10},
        minute_ticks([11, 9, 8, 11, 9]),
        [1, 4],
        {"threshold": 1},
        bad=[({"threshold": "ten"}, "valid number")],
    ),
    "price_crosses_above": Scenario(
        {"type": "price_crosses_above", "threshold": 10},
        minute_ticks([9, 11, 12, 9, 11]),
        [1, 4],
        {"threshold": 50},
        bad=[({"threshold": 0}, "greater than 0")],
    ),
    "price_crosses_below": Scenario(
        {"type": "price_crosses_below", "threshold": 10},
        minute_ticks([11, 9, 8, 11, 9]),
        [1, 4],
        {"threshold": 1},
        bad=[({"threshold": 5, "window_seconds": 5}, "Extra inputs")],
    ),
    "percent_move_up": Scenario(
        {"type": "percent_move_up", "percent": 5, "window_seconds": 600},
        minute_ticks([100, 104, 106, 107, 100, 106]),
        [2, 5],
        {"percent": 20},
        bad=[
            ({"percent": 5}, "window_seconds: Field required"),
            ({"percent": 0, "window_seconds": 5}, "greater than 0"),
        ],
    ),
    "percent_move_down": Scenario(
        {"type": "percent_move_down", "percent": 5, "window_seconds": 600},
        minute_ticks([100, 96, 94, 93, 100, 94]),
        [2, 5],
        {"percent": 20},
        bad=[({"percent": 5, "window_seconds": 0}, "greater than or equal to 1")],
    ),
    "rsi_above": Scenario(
        {"type": "rsi_above", "threshold": 70, "period": 2, "timeframe": "1m"},
        minute_ticks([10, 11, 12, 13, 5, 4, 3, 12, 14, 15]),
        [3, 8],
        {"period": 50},
        bad=[
            ({"threshold": 120}, "less than 100"),
            ({"threshold": 70, "timeframe": "1y"}, "not a timeframe"),
        ],
    ),
    "rsi_below": Scenario(
        {"type": "rsi_below", "threshold": 30, "period": 2, "timeframe": "1m"},
        minute_ticks([15, 14, 13, 12, 20, 21, 22, 10, 9, 8]),
        [3, 8],
        {"period": 50},
        bad=[({"threshold": 30, "period": 0}, "greater than or equal to 1")],
    ),
    "price_crosses_above_sma": Scenario(
        {"type": "price_crosses_above_sma", "period": 2, "timeframe": "1m"},
        minute_ticks([10, 9, 8, 12, 13, 7, 6, 11, 12, 12]),
        [4, 8],
        {"timeframe": "1h"},
        bad=[({"period": 2000}, "less than or equal to 1000")],
    ),
    "price_crosses_below_sma": Scenario(
        {"type": "price_crosses_below_sma", "period": 2, "timeframe": "1m"},
        minute_ticks([10, 11, 12, 8, 7, 13, 14, 9, 8, 8]),
        [4, 8],
        {"timeframe": "1h"},
    ),
    "sma_cross_up": Scenario(
        {"type": "sma_cross_up", "fast": 1, "slow": 2, "timeframe": "1m"},
        minute_ticks([10, 9, 8, 12, 13, 7, 6, 11, 12, 12]),
        [4, 8],
        {"timeframe": "1h"},
        bad=[({"fast": 5, "slow": 5}, "must be shorter than slow")],
    ),
    "sma_cross_down": Scenario(
        {"type": "sma_cross_down", "fast": 1, "slow": 2, "timeframe": "1m"},
        minute_ticks([10, 11, 12, 8, 7, 13, 14, 9, 8, 8]),
        [4, 8],
        {"timeframe": "1h"},
        bad=[({"fast": 20, "slow": 10}, "must be shorter than slow")],
    ),
    "bollinger_break_upper": Scenario(
        {"type": "bollinger_break_upper", "period": 3, "stddev": 1, "timeframe": "1m"},
        minute_ticks([10, 10, 10, 20, 30, 10, 10, 10, 20, 25]),
        [4, 9],
        {"stddev": 5},
        bad=[({"period": 1}, "greater than or equal to 2"), ({"stddev": 0}, "greater than 0")],
    ),
    "bollinger_break_lower": Scenario(
        {"type": "bollinger_break_lower", "period": 3, "stddev": 1, "timeframe": "1m"},
        minute_ticks([20, 20, 20, 10, 1, 20, 20, 20, 10, 15]),
        [4, 9],
        {"stddev": 5},
    ),
    "new_high": Scenario(
        {"type": "new_high", "period": 2, "timeframe": "1m"},
        minute_ticks([10, 11, 12, 13, 5, 6, 7, 8, 9, 9]),
        [3, 4, 7, 8, 9],
        {"period": 50},
        bad=[({"period": -3}, "greater than or equal to 1")],
    ),
    "new_low": Scenario(
        {"type": "new_low", "period": 2, "timeframe": "1m"},
        minute_ticks([13, 12, 11, 10, 18, 17, 16, 15, 14, 14]),
        [3, 4, 7, 8, 9],
        {"period": 50},
    ),
    "volume_spike": Scenario(
        {"type": "volume_spike", "multiple": 2, "period": 2, "timeframe": "1m"},
        minute_ticks([10] * 10, size=[100, 100, 100, 300, 100, 100, 100, 500, 100, 100]),
        [4, 8],
        {"multiple": 10},
        bad=[({"multiple": 0}, "greater than 0")],
    ),
    "iv_above": Scenario(
        {"type": "iv_above", "threshold": 0.5},
        _level_ticks("iv", [0.4, 0.6, 0.7, 0.4, 0.6]),
        [1, 4],
        {"threshold": 5},
        bad=[({}, "threshold: Field required")],
    ),
    "iv_below": Scenario(
        {"type": "iv_below", "threshold": 0.5},
        _level_ticks("iv", [0.6, 0.4, 0.3, 0.6, 0.4]),
        [1, 4],
        {"threshold": 0.01},
    ),
    "iv_change_pct": Scenario(
        {"type": "iv_change_pct", "percent": 20, "window_seconds": 120},
        _level_ticks("iv", [0.5, 0.5, 0.61, 0.62, 0.5, 0.5, 0.61]),
        [2, 6],
        {"percent": 90},
        bad=[
            ({"percent": 0, "window_seconds": 60}, "must not be 0"),
            ({"percent": 5}, "window_seconds"),
        ],
    ),
    "iv_rank_above": Scenario(
        {"type": "iv_rank_above", "threshold": 80, "lookback_days": 5},
        [
            tick(100, 86400 * day, iv=iv)
            for day, iv in enumerate([0.2, 0.4, 0.3, 0.9, 0.95, 0.3, 0.9])
        ],
        [1, 3, 6],
        {"threshold": 100},
        bad=[
            ({"threshold": 101}, "less than or equal to 100"),
            ({"threshold": 50, "lookback_days": 1}, "greater than or equal to 2"),
        ],
    ),
    "spread_pct_above": Scenario(
        {"type": "spread_pct_above", "threshold": 2},
        [
            tick(100, 60 * i, bid=100 - half, ask=100 + half)
            for i, half in enumerate([0.5, 1.5, 2.0, 0.5, 1.5])
        ],
        [1, 4],
        {"threshold": 50},
        bad=[({"threshold": -2}, "greater than 0")],
    ),
    "unusual_volume": Scenario(
        {"type": "unusual_volume", "ratio": 2},
        [
            flow(60 * i, day_volume=ratio * 1000, open_interest=1000)
            for i, ratio in enumerate([1, 3, 3, 1, 3])
        ],
        [1, 2, 4],
        {"ratio": 10},
        bad=[({"ratio": 0}, "greater than 0")],
    ),
    "flow_premium_above": Scenario(
        {"type": "flow_premium_above", "threshold": 100_000},
        [
            flow(60 * i, premium=p)
            for i, p in enumerate([50_000, 200_000, 300_000, 10_000, 150_000])
        ],
        [1, 2, 4],
        {"threshold": 1e9},
        bad=[({"threshold": 1, "right": "X"}, "right: Input should be 'C' or 'P'")],
    ),
    "flow_sweep": Scenario(
        {"type": "flow_sweep"},
        [
            flow(60 * i, trade_type=k)
            for i, k in enumerate(["single", "sweep", "sweep", "block", "sweep"])
        ],
        [1, 2, 4],
        {"min_premium": 1e9},
        bad=[({"sides": ["sideways"]}, "sides.0: Input should be")],
    ),
    "flow_block": Scenario(
        {"type": "flow_block"},
        [
            flow(60 * i, trade_type=k)
            for i, k in enumerate(["single", "block", "block", "sweep", "block"])
        ],
        [1, 2, 4],
        {"right": "P"},
        bad=[({"min_days_to_expiry": 9, "max_days_to_expiry": 2}, "must not exceed")],
    ),
    "flow_repeated_hits": Scenario(
        {"type": "flow_repeated_hits", "count": 3, "window_seconds": 300},
        [flow(s) for s in (0, 60, 120, 180, 1000, 1060, 1120)],
        [2, 3, 6],
        {"count": 10},
        bad=[({"count": 1}, "greater than or equal to 2")],
    ),
    "put_call_premium_ratio": Scenario(
        {"type": "put_call_premium_ratio", "threshold": 2, "window_seconds": 600},
        [
            flow(0, right="C", premium=100_000),
            flow(60, right="P", premium=300_000),
            flow(120, right="P", premium=100_000),
            flow(180, right="C", premium=300_000),
            flow(240, right="P", premium=500_000),
        ],
        [1, 4],
        {"threshold": 100},
        bad=[
            (
                {"threshold": 2, "comparison": "equal"},
                "comparison: Input should be 'above' or 'below'",
            )
        ],
    ),
    "position_pnl_pct_above": Scenario(
        {"type": "position_pnl_pct_above", "threshold": 10},
        [position(), *minute_ticks([105, 111, 115, 105, 112])],
        [2, 5],
        {"threshold": 90},
    ),
    "position_pnl_pct_below": Scenario(
        {"type": "position_pnl_pct_below", "threshold": -10},
        [position(), *minute_ticks([95, 89, 85, 95, 88])],
        [2, 5],
        {"threshold": -90},
    ),
    "position_pnl_above": Scenario(
        {"type": "position_pnl_above", "threshold": 500},
        [position(), *minute_ticks([103, 151, 160, 120, 160])],
        [2, 5],
        {"threshold": 1e6},
    ),
    "position_pnl_below": Scenario(
        {"type": "position_pnl_below", "threshold": -500},
        [position(), *minute_ticks([97, 40, 30, 97, 40])],
        [2, 5],
        {"threshold": -1e6},
        bad=[({"threshold": "lots"}, "valid number")],
    ),
    "expiry_within_days": Scenario(
        {"type": "expiry_within_days", "days": 2},
        [
            position(symbol=OCC, multiplier=100),
            Tick(symbol=OCC, price=3, ts=datetime(2026, 1, 12, 15, tzinfo=UTC)),  # 4 trading days
            Tick(symbol=OCC, price=3, ts=datetime(2026, 1, 14, 15, tzinfo=UTC)),  # 2: fires
            Tick(symbol=OCC, price=3, ts=datetime(2026, 1, 15, 15, tzinfo=UTC)),  # 1: still true
            PositionClosed("u-1", OCC),
            Tick(symbol=OCC, price=3, ts=datetime(2026, 1, 15, 16, tzinfo=UTC)),  # no position
            position(symbol=OCC, multiplier=100),
            Tick(symbol=OCC, price=3, ts=datetime(2026, 1, 15, 17, tzinfo=UTC)),  # fires again
        ],
        [2, 7],
        {"days": 0},
        symbol=OCC,
        bad=[({"days": -1}, "greater than or equal to 0")],
    ),
}

for _greek, _up, _down in (
    ("delta", 0.7, 0.3),
    ("gamma", 0.05, 0.01),
    ("theta", -0.01, -0.2),
    ("vega", 0.3, 0.05),
):
    _high, _low = max(_up, _down), min(_up, _down)
    _mid = (_high + _low) / 2
    SCENARIOS[f"{_greek}_above"] = Scenario(
        {"type": f"{_greek}_above", "threshold": _mid},
        _level_ticks(_greek, [_low, _high, _high, _low, _high]),
        [1, 4],
        {"threshold": _high * 10 + 10},
    )
    SCENARIOS[f"{_greek}_below"] = Scenario(
        {"type": f"{_greek}_below", "threshold": _mid},
        _level_ticks(_greek, [_high, _low, _low, _high, _low]),
        [1, 4],
        {"threshold": -abs(_low) * 10 - 10},
    )


def test_every_condition_type_has_a_scenario() -> None:
    from pipeline.evaluate.specs import CONDITION_MODELS

    assert sorted(SCENARIOS) == sorted(CONDITION_MODELS)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_fires_at_the_expected_events(name: str) -> None:
    scenario = SCENARIOS[name]
    assert (
        fired(make_rule(scenario.conditions, symbol=scenario.symbol), scenario.events)
        == scenario.expected
    )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_does_not_fire_when_the_condition_never_holds(name: str) -> None:
    scenario = SCENARIOS[name]
    quiet = scenario.conditions | scenario.quiet
    assert fired(make_rule(quiet, symbol=scenario.symbol), scenario.events) == []


@pytest.mark.parametrize("name", sorted(n for n, s in SCENARIOS.items() if len(s.expected) >= 2))
def test_cooldown_silences_later_triggers(name: str) -> None:
    scenario = SCENARIOS[name]
    rule = make_rule(scenario.conditions, cooldown=10 * 86400, symbol=scenario.symbol)
    assert fired(rule, scenario.events) == scenario.expected[:1]


@pytest.mark.parametrize(
    ("name", "params", "error"),
    [(name, params, error) for name, s in SCENARIOS.items() for params, error in s.bad]
    + [
        (name, {**s.conditions, "type": name, "bogus": 1}, "bogus: Extra inputs")
        for name, s in SCENARIOS.items()
    ],
)
def test_bad_parameters_are_rejected(name: str, params: dict[str, Any], error: str) -> None:
    body = {"id": "r", "user_id": "u", "name": "n", "conditions": {"type": name, **params}}
    with pytest.raises(InvalidMessage, match=error):
        decode(Rule, json.dumps(body).encode())


def test_flow_filters_select_prints() -> None:
    sweep = {"type": "flow_sweep", "right": "C", "sides": ["ask", "above_ask"], "min_size": 50}
    events = [
        flow(0, trade_type="sweep", right="P"),  # wrong right
        flow(60, trade_type="sweep", side="bid"),  # wrong side
        flow(120, trade_type="sweep", size=10),  # too small
        flow(180, trade_type="sweep", side="above_ask"),
    ]
    assert fired(make_rule(sweep), events) == [3]
    dte = {"type": "flow_block", "min_days_to_expiry": 7, "max_days_to_expiry": 30}
    blocks = [
        flow(0, trade_type="block", expiry="2026-01-08"),  # 3 days out
        flow(60, trade_type="block", expiry="2026-01-30"),  # 25 days out
        flow(120, trade_type="block", expiry="2026-03-20"),  # 74 days out
    ]
    assert fired(make_rule(dte), blocks) == [1]
    otm = {"type": "flow_premium_above", "threshold": 1, "moneyness": "otm"}
    prints = [
        flow(0, strike=190.0, underlying_price=198.0),  # ITM call
        flow(60, strike=198.5, underlying_price=198.0),  # ATM within 1 %
        flow(120, strike=210.0, underlying_price=198.0),  # OTM call
    ]
    assert fired(make_rule(otm), prints) == [2]


def test_moneyness_uses_the_last_underlying_price_when_the_print_has_none() -> None:
    rule = make_rule({"type": "flow_sweep", "moneyness": "itm"})
    events = [tick(220, 0), flow(60, trade_type="sweep", underlying_price=None, strike=200.0)]
    assert fired(rule, events) == [1]


def test_short_position_pnl_is_signed_by_direction() -> None:
    rule = make_rule({"type": "position_pnl_pct_above", "threshold": 10})
    events = [position(quantity=-10, avg_price=100), *minute_ticks([95, 85])]
    assert fired(rule, events) == [2]


def test_bar_alert_is_stamped_at_the_bar_end_with_indicator_values() -> None:
    engine = ShardEngine()
    engine.upsert(make_rule({"type": "rsi_above", "threshold": 70, "period": 2, "timeframe": "1m"}))
    alerts = [a for t in minute_ticks([10, 11, 12, 13.5]) for a in engine.process([t])]
    (alert,) = alerts
    assert alert.triggered_at == at(180)  # bar [120, 180) closed by the tick at 180
    assert alert.values["rsi"] == pytest.approx(100.0)
    assert alert.values["threshold"] == 70
    assert alert.message.startswith("RSI(2, 1m) 100.0 is above 70")


def test_pulse_and_level_combined_re_arm_only_when_the_level_allows() -> None:
    # all(sweep, price above 100): fires at each sweep while the price is above 100.
    rule = make_rule({"all": [{"type": "flow_sweep"}, {"type": "price_above", "threshold": 100}]})
    events = [
        tick(101, 0),
        flow(10, trade_type="sweep"),
        tick(102, 20),
        flow(30, trade_type="sweep"),
        tick(99, 40),
        flow(50, trade_type="sweep"),
    ]
    assert fired(rule, events) == [1, 3]
    # any(sweep, price above 100): true all along while above 100, so one alert only.
    rule = make_rule({"any": [{"type": "flow_sweep"}, {"type": "price_above", "threshold": 100}]})
    assert fired(rule, events) == [0, 5]


def test_flush_closes_the_last_bar_at_end_of_input() -> None:
    engine = ShardEngine()
    engine.upsert(make_rule({"type": "new_high", "period": 2, "timeframe": "1m"}))
    for event in minute_ticks([10, 11, 12]):
        assert engine.process([event]) == []
    (alert,) = engine.close_bars()
    assert alert.triggered_at == at(180)


@pytest.mark.parametrize("seed", [7, 8])
def test_leaf_tracking_finds_exactly_what_evaluating_every_rule_finds(seed: int) -> None:
    """Threshold indexes and leaf change detection wake exactly the rules that can fire."""
    rng = random.Random(seed)
    leaves = [
        lambda: {
            "type": rng.choice(
                ["price_above", "price_below", "price_crosses_above", "price_crosses_below"]
            ),
            "threshold": round(rng.uniform(90, 110), 1),
        },
        lambda: {
            "type": rng.choice(["iv_above", "iv_below"]),
            "threshold": round(rng.uniform(0.2, 0.8), 2),
        },
        lambda: {"type": "spread_pct_above", "threshold": rng.choice([0.5, 1, 2])},
        lambda: {
            "type": rng.choice(["rsi_above", "rsi_below"]),
            "threshold": rng.choice([30, 50, 70]),
            "period": 5,
            "timeframe": "1m",
        },
        lambda: {"type": "percent_move_up", "percent": rng.choice([0.5, 1]), "window_seconds": 300},
        lambda: {"type": "new_high", "period": 5, "timeframe": "1m"},
        lambda: {"type": "flow_sweep", "right": rng.choice(["C", "P"])},
    ]

    def tree(depth: int = 0) -> dict[str, Any]:
        if depth < 2 and rng.random() < 0.3:
            return {rng.choice(["all", "any"]): [tree(depth + 1) for _ in range(rng.randint(2, 3))]}
        return rng.choice(leaves)()

    def random_rule(i: int) -> Rule:
        cooldown = rng.choice([0, 0, 120])  # drawn before the tree, as the scenario expects
        return helpers.rule(tree(), id=f"r-{i:03d}", user_id="u", cooldown_seconds=cooldown)

    rules = [random_rule(i) for i in range(300)]
    price, events = 100.0, []
    for second in range(0, 3600, 3):
        if rng.random() < 0.1:
            events.append(flow(second, trade_type="sweep", right=rng.choice("CP")))
            continue
        price = max(1.0, round(price + rng.choice([-0.3, -0.1, 0, 0.1, 0.3, 1.2, -1.2]), 1))
        half = rng.choice([0.2, 0.6, 1.5])
        events.append(
            tick(
                price,
                second,
                iv=round(rng.uniform(0.1, 0.9), 2),
                bid=price - half,
                ask=price + half,
            )
        )
    outcomes = []
    for engine in (ShardEngine(), ExhaustiveShardEngine()):
        for rule in rules[:150]:
            engine.upsert(rule)
        alerts = engine.process(events[:300])
        for rule in rules[150:]:  # rules added mid-stream start fresh
            engine.upsert(rule)
        alerts += engine.process(events[300:])
        outcomes.append([(a.rule_id, a.triggered_at, a.values) for a in alerts])
    tracked, exhaustive = outcomes
    assert len(tracked) > 200
    assert tracked == exhaustive
