from datetime import timedelta

from pipeline.evaluate.engine import ShardEngine
from pipeline.ids import alert_id
from pipeline.messages import Position, PositionClosed, RuleTombstone
from tests.unit.helpers import at, rule, tick

CROSS_UP = {"type": "price_crosses_above", "threshold": 200}


def fired(engine: ShardEngine, *events: object) -> list[tuple[str, float]]:
    alerts = engine.process(list(events))
    return [(a.rule_id, a.values["price"]) for a in alerts]


def test_cross_above_fires_only_on_the_crossing_tick() -> None:
    engine = ShardEngine()
    engine.upsert(rule(CROSS_UP))
    assert fired(engine, tick("AAPL", 199, 0)) == []  # no previous price, no cross
    assert fired(engine, tick("AAPL", 200, 1)) == []  # equal is not above
    assert fired(engine, tick("AAPL", 200.5, 2)) == [("r-1", 200.5)]
    assert fired(engine, tick("AAPL", 201, 3)) == []  # already above: no new cross
    assert fired(engine, tick("AAPL", 199, 4), tick("AAPL", 202, 5)) == [("r-1", 202)]


def test_cross_below_mirrors_cross_above() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_crosses_below", "threshold": 100}))
    assert fired(engine, tick("AAPL", 100, 0), tick("AAPL", 99.5, 1)) == [("r-1", 99.5)]
    assert fired(engine, tick("AAPL", 99, 2)) == []


def test_level_condition_is_edge_triggered() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}))
    # Already true at the first evaluation: fires (state starts not satisfied).
    assert fired(engine, tick("AAPL", 11, 0)) == [("r-1", 11)]
    assert fired(engine, tick("AAPL", 12, 1)) == []
    assert fired(engine, tick("AAPL", 9, 2)) == []
    assert fired(engine, tick("AAPL", 10.5, 3)) == [("r-1", 10.5)]


def test_price_below_level() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_below", "threshold": 10}))
    assert fired(engine, tick("AAPL", 10, 0), tick("AAPL", 9.99, 1)) == [("r-1", 9.99)]


def test_cooldown_uses_event_time() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}, cooldown_seconds=60))
    assert fired(engine, tick("AAPL", 11, 0)) == [("r-1", 11)]
    # A new edge 30 s later is inside the cooldown: silent.
    assert fired(engine, tick("AAPL", 9, 10), tick("AAPL", 11, 30)) == []
    # Another edge after the cooldown fires.
    assert fired(engine, tick("AAPL", 9, 61), tick("AAPL", 12, 62)) == [("r-1", 12)]


def test_once_rule_retires_and_a_new_version_rearms_it() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}, mode="once"))
    assert fired(engine, tick("AAPL", 11, 0)) == [("r-1", 11)]
    assert fired(engine, tick("AAPL", 9, 1), tick("AAPL", 11, 2)) == []
    engine.upsert(rule({"type": "price_above", "threshold": 10}, mode="once", version=2))
    assert fired(engine, tick("AAPL", 11, 3)) == [("r-1", 11)]


def test_replayed_same_version_keeps_state_and_stale_version_is_ignored() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}, version=2))
    assert fired(engine, tick("AAPL", 11, 0)) == [("r-1", 11)]
    engine.upsert(rule({"type": "price_above", "threshold": 10}, version=2))
    engine.upsert(rule({"type": "price_above", "threshold": 99}, version=1))
    assert fired(engine, tick("AAPL", 12, 1)) == []  # still satisfied, no new edge
    assert engine.rules["r-1"].version == 2


def test_expired_and_inactive_rules_are_not_evaluated() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}, expires_at=at(5).isoformat()))
    engine.upsert(rule({"type": "price_above", "threshold": 10}, id="r-2", active=False))
    assert fired(engine, tick("AAPL", 9, 0), tick("AAPL", 11, 6)) == []


def test_tombstone_removes_the_rule() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}))
    assert fired(engine, RuleTombstone("r-1"), tick("AAPL", 11, 0)) == []
    assert engine.rules == {} and engine.symbols == {}


def test_changes_in_a_batch_apply_before_its_events() -> None:
    engine = ShardEngine()
    alerts = engine.process([tick("AAPL", 11, 0), rule({"type": "price_above", "threshold": 10})])
    assert [a.rule_id for a in alerts] == ["r-1"]


def test_events_in_a_batch_are_evaluated_in_event_time_order() -> None:
    engine = ShardEngine()
    engine.upsert(rule(CROSS_UP))
    assert fired(engine, tick("AAPL", 201, 2), tick("AAPL", 199, 1)) == [("r-1", 201)]


def test_nested_all_any() -> None:
    engine = ShardEngine()
    tree = {
        "all": [
            {"type": "price_above", "threshold": 100},
            {
                "any": [
                    {"type": "price_below", "threshold": 105},
                    {"type": "price_above", "threshold": 200},
                ]
            },
        ]
    }
    engine.upsert(rule(tree))
    assert fired(engine, tick("AAPL", 99, 0)) == []
    assert fired(engine, tick("AAPL", 104, 1)) == [("r-1", 104)]
    assert fired(engine, tick("AAPL", 150, 2)) == []  # any() fails: not satisfied
    alerts = engine.process([tick("AAPL", 201, 3)])
    assert [a.condition_types for a in alerts] == [["price_above"]]
    assert alerts[0].values == {
        "price": 201,
        "price_above[1].threshold": 100,
        "price_above[2].threshold": 200,
    }


def test_clashing_values_are_prefixed_by_condition_type() -> None:
    engine = ShardEngine()
    engine.upsert(
        rule(
            {
                "all": [
                    {"type": "price_above", "threshold": 100},
                    {"type": "price_below", "threshold": 105},
                ]
            }
        )
    )
    (alert,) = engine.process([tick("AAPL", 101, 0)])
    assert alert.values == {
        "price": 101,
        "price_above.threshold": 100,
        "price_below.threshold": 105,
    }
    assert alert.message == "price 101.00 is above 100.00; price 101.00 is below 105.00"


def test_alert_id_is_deterministic() -> None:
    engine = ShardEngine()
    engine.upsert(rule(CROSS_UP, version=3))
    (alert,) = engine.process([tick("AAPL", 199, 0), tick("AAPL", 201, 1)])
    assert alert.alert_id == alert_id("r-1", 3, at(1), "AAPL")
    assert alert.triggered_at == at(1)
    assert alert.title == "AAPL: test rule"


def test_watchlist_and_wildcard_rules_fire_per_symbol() -> None:
    engine = ShardEngine()
    engine.upsert(rule({"type": "price_above", "threshold": 10}, symbol=None, symbols=["A", "B"]))
    engine.upsert(rule({"type": "price_above", "threshold": 10}, id="r-all", symbol=None))
    alerts = engine.process([tick("A", 11, 0), tick("B", 11, 0), tick("C", 11, 0)])
    assert sorted((a.rule_id, a.symbol) for a in alerts) == [
        ("r-1", "A"),
        ("r-1", "B"),
        ("r-all", "A"),
        ("r-all", "B"),
        ("r-all", "C"),
    ]


def test_positions_are_kept_per_user_and_symbol() -> None:
    engine = ShardEngine()
    position = Position(user_id="u", symbol="AAPL", quantity=10, avg_price=100, ts=at(0))
    engine.process([position])
    assert engine.positions[("u", "AAPL")] == position
    older = position.model_copy(update={"quantity": 5, "ts": at(0) - timedelta(seconds=1)})
    engine.process([older])
    assert engine.positions[("u", "AAPL")].quantity == 10
    engine.process([PositionClosed("u", "AAPL")])
    assert engine.positions == {}
