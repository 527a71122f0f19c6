"""The rule option ``sessions``: evaluate a rule only during NYSE sessions (evaluate/engine.py)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pipeline.evaluate.engine import ExhaustiveShardEngine, ShardEngine, compile_rule
from pipeline.messages import Rule, Tick
from tests.unit.helpers import rule

ET = ZoneInfo("America/New_York")
ABOVE = {"type": "price_above", "threshold": 200}
CROSS_UP = {"type": "price_crosses_above", "threshold": 200}


def et_tick(price: float, hour: int, minute: int = 0, day: int = 6) -> Tick:
    """A tick at a New York wall-clock time on January ``day`` 2026 (6: a Tuesday)."""
    return Tick(symbol="AAPL", price=price, ts=datetime(2026, 1, day, hour, minute, tzinfo=ET))


def fired(engine: ShardEngine, *events: Tick) -> list[tuple[datetime, object]]:
    return [
        (a.triggered_at.astimezone(ET).replace(tzinfo=None), a.values["price"])
        for a in engine.process(list(events))
    ]


def local(hour: int, minute: int = 0, day: int = 6) -> datetime:
    return datetime(2026, 1, day, hour, minute)


def test_default_is_any() -> None:
    assert rule(ABOVE).sessions == "any"
    engine = ShardEngine()
    engine.upsert(rule(ABOVE))
    assert fired(engine, et_tick(201, 8)) == [(local(8), 201)]


def test_regular_rule_waits_for_the_regular_session() -> None:
    engine = ShardEngine()
    engine.upsert(rule(ABOVE, sessions="regular"))
    # Pre-market: the condition holds, but the rule is not evaluated.
    assert fired(engine, et_tick(201, 8), et_tick(202, 9, 0)) == []
    # The first regular-session tick where it holds fires, though the price leaf did not change.
    assert fired(engine, et_tick(203, 9, 30)) == [(local(9, 30), 203)]
    assert fired(engine, et_tick(204, 10)) == []  # edge-triggered as usual
    # Post-market: a drop and a recovery are not seen, so the edge state stays satisfied...
    assert fired(engine, et_tick(190, 16, 30), et_tick(205, 17)) == []
    # ...and it stays quiet the next morning too, the rule never saw the level go false.
    assert fired(engine, et_tick(206, 9, 31, day=7)) == []
    # A drop seen in the session re-arms it.
    assert fired(engine, et_tick(199, 10, day=7), et_tick(201, 10, 1, day=7)) == [
        (local(10, 1, day=7), 201)
    ]


def test_regular_rule_skipped_when_the_condition_goes_away_before_the_open() -> None:
    engine = ShardEngine()
    engine.upsert(rule(ABOVE, sessions="regular"))
    assert fired(engine, et_tick(201, 8), et_tick(199, 9)) == []
    assert fired(engine, et_tick(199.5, 9, 30)) == []
    assert fired(engine, et_tick(200.5, 9, 45)) == [(local(9, 45), 200.5)]


def test_a_cross_outside_the_session_is_lost() -> None:
    engine = ShardEngine()
    engine.upsert(rule(CROSS_UP, sessions="regular"))
    assert fired(engine, et_tick(199, 7), et_tick(201, 8)) == []  # crossed pre-market
    assert fired(engine, et_tick(202, 9, 30)) == []  # no cross at this tick
    assert fired(engine, et_tick(199, 9, 40), et_tick(201, 9, 41)) == [(local(9, 41), 201)]


def test_extended_rule_runs_from_pre_market_to_post_market() -> None:
    engine = ShardEngine()
    engine.upsert(rule(ABOVE, sessions="extended"))
    assert fired(engine, et_tick(201, 3, 30)) == []  # before 04:00 ET
    assert fired(engine, et_tick(201, 4, 0)) == [(local(4), 201)]
    engine.upsert(rule(ABOVE, sessions="extended", version=2))
    assert fired(engine, et_tick(201, 19, 59)) == [(local(19, 59), 201)]  # post-market
    engine.upsert(rule(ABOVE, sessions="extended", version=3))
    assert fired(engine, et_tick(201, 20, 0), et_tick(202, 23)) == []  # closed
    assert fired(engine, et_tick(202, 4, 0, day=7)) == [(local(4, day=7), 202)]


def test_extended_rule_is_silent_on_a_holiday() -> None:
    engine = ShardEngine()
    engine.upsert(rule(ABOVE, sessions="extended"))
    assert fired(engine, et_tick(201, 10, day=19)) == []  # MLK day: closed all day
    assert fired(engine, et_tick(201, 4, day=20)) == [(local(4, day=20), 201)]


def test_sessions_is_kept_compactly_and_left_out_of_the_json_when_any() -> None:
    plain = compile_rule(rule(ABOVE))
    regular = compile_rule(rule(ABOVE, sessions="regular"))
    extended = compile_rule(rule(ABOVE, sessions="extended"))
    assert (plain.sessions, regular.sessions, extended.sessions) == (0, 1, 2)
    assert len({plain.digest, regular.digest, extended.digest}) == 3
    # "any" is left out of the output, so a rule without the option keeps the JSON (and the
    # digest) it had before the option existed.
    assert "sessions" not in rule(ABOVE).model_dump_json()
    assert '"sessions":"regular"' in rule(ABOVE, sessions="regular").model_dump_json()
    assert Rule.model_validate_json(rule(ABOVE).to_json()) == rule(ABOVE)
    assert Rule.model_validate_json(rule(ABOVE, sessions="extended").to_json()).sessions == (
        "extended"
    )


def test_changing_sessions_replaces_the_rule() -> None:
    engine = ShardEngine()
    engine.upsert(rule(ABOVE))
    assert fired(engine, et_tick(201, 8)) == [(local(8), 201)]
    engine.upsert(rule(ABOVE, sessions="regular"))  # same version, other content: replaced
    assert engine.rules["r-1"].sessions == 1
    assert fired(engine, et_tick(202, 9)) == []
    assert fired(engine, et_tick(203, 9, 30)) == [(local(9, 30), 203)]


@pytest.mark.parametrize("seed", [3, 4])
def test_leaf_tracking_agrees_with_evaluating_every_rule(seed: int) -> None:
    """Skipped rules are looked at again later, so the tracked engine misses nothing."""
    rng = random.Random(seed)

    def leaf() -> dict[str, Any]:
        return {
            "type": rng.choice(
                ["price_above", "price_below", "price_crosses_above", "price_crosses_below"]
            ),
            "threshold": round(rng.uniform(95, 105), 1),
        }

    def random_rule(i: int) -> Rule:
        cooldown = rng.choice([0, 600])  # drawn in this order: the seeds' scenarios depend on it
        sessions = rng.choice(["any", "regular", "extended"])
        both = rng.random() >= 0.5
        conditions = {rng.choice(["all", "any"]): [leaf(), leaf()]} if both else leaf()
        return rule(
            conditions, id=f"r-{i:03d}", user_id="u", cooldown_seconds=cooldown, sessions=sessions
        )

    rules = [random_rule(i) for i in range(200)]
    # Two days and a weekend of ticks every 7 minutes, through every phase.
    start = datetime(2026, 1, 8, 3, 0, tzinfo=ET).astimezone(UTC)
    price, events = 100.0, []
    for step in range(0, 4 * 24 * 60, 7):
        price = max(1.0, round(price + rng.choice([-1.5, -0.5, 0, 0.5, 1.5]), 1))
        events.append(Tick(symbol="AAPL", price=price, ts=start + timedelta(minutes=step)))
    outcomes = []
    for engine in (ShardEngine(), ExhaustiveShardEngine()):
        for compiled in rules:
            engine.upsert(compiled)
        alerts = engine.process(events)
        outcomes.append([(a.rule_id, a.triggered_at) for a in alerts])
    tracked, exhaustive = outcomes
    assert len(tracked) > 100
    assert tracked == exhaustive
    sessions = {r.id: r.sessions for r in rules}
    for rule_id, ts in tracked:
        hour = ts.astimezone(ET).hour + ts.astimezone(ET).minute / 60
        if sessions[rule_id] == "regular":
            assert 9.5 <= hour < 16 and ts.astimezone(ET).weekday() < 5
        elif sessions[rule_id] == "extended":
            assert 4 <= hour < 20 and ts.astimezone(ET).weekday() < 5
