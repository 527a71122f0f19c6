from pipeline.evaluate.routing import (
    RuleRouter,
    all_shards,
    all_user_shards,
    shard_of,
    user_shard_of,
)
from pipeline.messages import RuleTombstone
from tests.unit.helpers import rule

LEVEL = {"type": "price_above", "threshold": 1}


def test_shard_of_is_stable_and_in_range() -> None:
    assert shard_of("AAPL", 64) == shard_of("AAPL", 64)
    assert shard_of("AAPL", 64) in all_shards(64)
    assert len({shard_of(f"S{i}", 8) for i in range(200)}) == 8


def test_rule_goes_to_its_symbols_shards_and_leaves_old_ones() -> None:
    router = RuleRouter(64)
    first = router.route(rule(LEVEL, symbol="AAPL"))
    assert [(s, type(c).__name__) for s, c in first] == [(shard_of("AAPL", 64), "Rule")]
    moved = router.route(rule(LEVEL, symbol="MSFT", version=2))
    assert (shard_of("MSFT", 64), "Rule") in [(s, type(c).__name__) for s, c in moved]
    assert (shard_of("AAPL", 64), RuleTombstone("r-1")) in moved


def test_wildcard_rule_is_broadcast_and_tombstone_removes_it_everywhere() -> None:
    router = RuleRouter(4)
    assert len(router.route(rule(LEVEL, symbol=None))) == 4
    removed = router.route(RuleTombstone("r-1"))
    assert sorted(removed) == [(s, RuleTombstone("r-1")) for s in all_shards(4)]
    assert router.route(RuleTombstone("r-1")) == []


def test_a_watchlist_rule_goes_to_each_of_its_shards_once() -> None:
    router = RuleRouter(8)
    symbols = [f"S{i}" for i in range(20)]
    routed = router.route(rule(LEVEL, symbol=None, symbols=symbols))
    assert sorted(s for s, _ in routed) == sorted({shard_of(x, 8) for x in symbols})
    narrowed = router.route(rule(LEVEL, symbol="S0", version=2))
    left = {s for s, c in narrowed if isinstance(c, RuleTombstone)}
    assert left == {shard_of(x, 8) for x in symbols} - {shard_of("S0", 8)}


def test_user_shards_are_stable_and_cover_every_key() -> None:
    assert user_shard_of("u-1", 16) == user_shard_of("u-1", 16)
    assert {user_shard_of(f"u-{i}", 4) for i in range(100)} == set(all_user_shards(4))
