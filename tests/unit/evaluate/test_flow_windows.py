"""Incremental flow windows (``flow_repeated_hits``, ``put_call_premium_ratio``) against the scan
they replace: the same alerts on random streams, and exact premium sums however long they run.

The reference is the scan the conditions used before the windows (kept here verbatim): every
retained print checked at every read, the prints retained as far back as the longest flow window
of the symbol, in arrival order.
"""

from __future__ import annotations

import math
import random
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.evaluate import conditions
from pipeline.evaluate import specs as c
from pipeline.evaluate.conditions import (
    FLOW,
    PULSES,
    EventContext,
    Observation,
    evaluate_leaf,
    leaf_kind,
)
from pipeline.evaluate.engine import ExhaustiveShardEngine, LeafSlot, ShardEngine
from pipeline.evaluate.market_state import SymbolState, flow_filter_key, moneyness
from pipeline.messages import OptionsFlow, Rule, RuleTombstone, Tick, TriggeredAlert
from pipeline.rules.text import parse_rule
from tests.unit import helpers

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)

# ---------------------------------------------------------------- the scan, as it was

SCANNED: dict[str, deque[OptionsFlow]] = {}  # per symbol: the prints the scan reads


def scan_passes_filters(
    leaf: c.FlowFilters, print_: OptionsFlow, underlying_price: float | None
) -> bool:
    if leaf.right is not None and print_.right != leaf.right:
        return False
    if leaf.sides is not None and print_.side not in leaf.sides:
        return False
    if leaf.min_size is not None and print_.size < leaf.min_size:
        return False
    if leaf.min_days_to_expiry is not None or leaf.max_days_to_expiry is not None:
        days = (datetime.fromisoformat(print_.expiry).date() - print_.ts.date()).days
        if leaf.min_days_to_expiry is not None and days < leaf.min_days_to_expiry:
            return False
        if leaf.max_days_to_expiry is not None and days > leaf.max_days_to_expiry:
            return False
    if leaf.moneyness is not None:
        spot = print_.underlying_price or underlying_price
        if (
            spot is None
            or moneyness(print_.right, print_.strike, spot, leaf.atm_band_pct) != leaf.moneyness
        ):
            return False
    return True


def scan_repeated_hits(
    leaf: c.FlowRepeatedHits, ctx: EventContext, owner: str
) -> Observation | None:
    print_ = ctx.flow
    if ctx.kind != "flow" or print_ is None:
        return None
    if not scan_passes_filters(leaf, print_, ctx.state.last_price):
        return None
    cutoff = print_.ts - timedelta(seconds=leaf.window_seconds)
    spot = ctx.state.last_price
    hits = sum(
        1
        for earlier in SCANNED[ctx.symbol]
        if earlier.contract == print_.contract
        and earlier.ts >= cutoff
        and scan_passes_filters(leaf, earlier, spot)
    )
    if hits < leaf.count:
        return None
    values = conditions._print_values(print_) | {"hits": float(hits)}
    return Observation(
        leaf.type,
        values,
        f"{hits} prints on {conditions._contract(print_)} "
        f"within {conditions._duration(leaf.window_seconds)}",
    )


def scan_put_call(leaf: c.PutCallPremiumRatio, ctx: EventContext, owner: str) -> Observation | None:
    cutoff = ctx.ts - timedelta(seconds=leaf.window_seconds)
    spot = ctx.state.last_price
    puts = calls = 0.0
    for print_ in SCANNED.get(ctx.symbol, ()):
        if print_.ts >= cutoff and print_.ts <= ctx.ts and scan_passes_filters(leaf, print_, spot):
            if print_.right == "P":
                puts += print_.effective_premium
            else:
                calls += print_.effective_premium
    if calls <= 0:
        return None
    ratio = puts / calls
    if (leaf.comparison == "above" and not ratio > leaf.threshold) or (
        leaf.comparison == "below" and not ratio < leaf.threshold
    ):
        return None
    return Observation(
        leaf.type,
        {"ratio": ratio, "put_premium": puts, "call_premium": calls, "threshold": leaf.threshold},
        f"put/call premium {ratio:.2f} over {conditions._duration(leaf.window_seconds)} is "
        f"{leaf.comparison} {leaf.threshold:g}",
    )


class ScanFlow:
    """Keeps each symbol's prints as the market state did before the windows."""

    markets: dict[str, SymbolState]

    def on_flow(self, print_: OptionsFlow) -> Any:
        market = self._market(print_.underlying)  # type: ignore[attr-defined]
        if market.flow_windows:
            flow = SCANNED.setdefault(print_.underlying, deque())
            flow.append(print_)
            cutoff = print_.ts - timedelta(seconds=max(market.flow_windows))
            while flow[0].ts < cutoff:
                flow.popleft()
        return super().on_flow(print_)  # type: ignore[misc]

    def _acquire(self, market: SymbolState, leaf: Any, step: int) -> None:
        super()._acquire(market, leaf, step)  # type: ignore[misc]
        if not market.flow_windows:
            SCANNED.pop(market.symbol, None)


class ScanShardEngine(ScanFlow, ShardEngine):
    pass


class ScanExhaustiveShardEngine(ScanFlow, ExhaustiveShardEngine):
    pass


# ---------------------------------------------------------------- random streams

SYMBOLS = {"AAPL": 200.0, "MSFT": 400.0}
EXPIRIES = ["2026-01-05", "2026-01-09", "2026-02-20"]


def contracts(symbol: str, spot: float) -> list[tuple[str, str, float, str]]:
    """(contract, right, strike, expiry): strikes around spot, so every moneyness occurs."""
    out = []
    for right in "CP":
        for offset in (-0.04, -0.01, -0.004, 0.0, 0.006, 0.02, 0.05):
            strike = round(spot * (1 + offset))
            for expiry in EXPIRIES[:2] if offset else EXPIRIES:
                code = (
                    f"{symbol:<6}{expiry[2:4]}{expiry[5:7]}{expiry[8:]}{right}{strike * 1000:08d}"
                )
                out.append((code, right, float(strike), expiry))
    return out


def random_filters(rng: random.Random) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    if rng.random() < 0.3:
        filters["right"] = rng.choice("CP")
    if rng.random() < 0.3:
        filters["sides"] = rng.sample(["ask", "bid", "mid", "above_ask", "below_bid"], 2)
    if rng.random() < 0.2:
        filters["min_size"] = rng.choice([5, 50])
    if rng.random() < 0.2:
        filters["min_days_to_expiry"] = rng.choice([0, 1, 5])
    if rng.random() < 0.2:
        filters["max_days_to_expiry"] = rng.choice([5, 60])
    if rng.random() < 0.4:
        filters["moneyness"] = rng.choice(["itm", "otm", "atm"])
        if rng.random() < 0.5:
            filters["atm_band_pct"] = rng.choice([0.5, 2.0])
    if filters.get("min_days_to_expiry", 0) > filters.get(
        "max_days_to_expiry", 3650
    ):  # an invalid range: keep the upper bound only
        del filters["min_days_to_expiry"]
    return filters


def random_leaf(rng: random.Random) -> dict[str, Any]:
    window = rng.choice([30, 60, 120, 300, 600])
    if rng.random() < 0.5:
        leaf: dict[str, Any] = {
            "type": "flow_repeated_hits",
            "count": rng.choice([2, 3, 5]),
            "window_seconds": window,
        }
    else:
        leaf = {
            "type": "put_call_premium_ratio",
            "threshold": rng.choice([0.5, 1, 2]),
            "comparison": rng.choice(["above", "below"]),
            "window_seconds": window,
        }
    return leaf | random_filters(rng)


def random_rule(rng: random.Random, index: int) -> Rule:
    symbol = rng.choice(list(SYMBOLS))
    roll = rng.random()
    if roll < 0.6:
        conditions_: dict[str, Any] = random_leaf(rng)
    elif roll < 0.85:  # read at ticks too: the ratio with a spot of another event
        level = round(SYMBOLS[symbol] * rng.uniform(0.99, 1.01), 1)
        conditions_ = {"all": [random_leaf(rng), {"type": "price_above", "threshold": level}]}
    else:
        conditions_ = {"any": [random_leaf(rng), random_leaf(rng)]}
    return helpers.rule(
        conditions_,
        id=f"r-{index:03d}",
        user_id=f"u-{index % 7}",
        symbol=symbol,
        cooldown_seconds=rng.choice([0, 0, 60]),
    )


def random_events(rng: random.Random, count: int, late: float) -> list[Tick | OptionsFlow]:
    """Ticks and prints of both symbols in ts order but for a share ``late`` of them (a late
    print stays out of order among the retained ones until evicted); some share a ts."""
    spots = dict(SYMBOLS)
    books = {symbol: contracts(symbol, spot) for symbol, spot in SYMBOLS.items()}
    events: list[Tick | OptionsFlow] = []
    second = 0.0
    for index in range(count):
        second += rng.choice([0.0, 0.5, 1.0, 2.0, 5.0, 20.0])
        ts = T0 + timedelta(seconds=second)
        if rng.random() < late:  # by up to 10 minutes
            ts -= timedelta(seconds=rng.uniform(1, 600))
        symbol = rng.choice(list(SYMBOLS))
        if rng.random() < 0.2:
            spots[symbol] = round(spots[symbol] * (1 + rng.gauss(0, 0.004)), 2)
            events.append(Tick(symbol=symbol, price=spots[symbol], ts=ts))
            continue
        code, right, strike, expiry = rng.choice(books[symbol])
        fields: dict[str, Any] = {}
        if rng.random() < 0.5:  # whole dollars: float sums in any order are exact
            fields["premium"] = float(rng.randrange(0, 500_000))
        if rng.random() < 0.7:
            fields["underlying_price"] = round(spots[symbol] * (1 + rng.gauss(0, 0.002)), 2)
        events.append(
            OptionsFlow(
                id=f"f-{index}",
                ts=ts,
                underlying=symbol,
                contract=code,
                right=right,
                strike=strike,
                expiry=expiry,
                price=rng.randrange(1, 400) / 4,  # quarters: premiums are exact floats
                size=rng.choice([1, 2, 10, 60, 300]),
                side=rng.choice(["ask", "bid", "mid", "above_ask", "below_bid"]),
                trade_type=rng.choice(["sweep", "block", "split", "single"]),
                **fields,
            )
        )
    return events


def run(engine: ShardEngine, seed: int) -> list[tuple[Any, ...]]:
    """Rules added and removed between batches of a random stream; the alerts it fired."""
    rng = random.Random(seed)
    events = random_events(rng, 1500, late=[0.0, 0.002, 0.03][seed % 3])
    rules = [random_rule(rng, index) for index in range(60)]
    live: list[Rule] = []
    for rule in rules[:30]:
        engine.upsert(rule)
        live.append(rule)
    pending = rules[30:]
    alerts = []
    start = 0
    while start < len(events):
        size = rng.randint(1, 40)
        alerts += engine.process(events[start : start + size])
        start += size
        roll = rng.random()
        if roll < 0.1 and pending:
            rule = pending.pop()
            engine.upsert(rule)
            live.append(rule)
        elif roll < 0.17 and live:
            gone = live.pop(rng.randrange(len(live)))
            engine.process([RuleTombstone(rule_id=gone.id)])
        elif roll < 0.2 and live:  # every flow rule of a symbol gone: its prints go too
            symbol = rng.choice(list(SYMBOLS))
            for rule in [rule for rule in live if rule.symbol == symbol]:
                engine.remove(rule.id)
                live.remove(rule)
    return [(a.rule_id, a.symbol, a.triggered_at, a.message, a.values) for a in alerts]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(
    ("engine_type", "reference_type"),
    [(ShardEngine, ScanShardEngine), (ExhaustiveShardEngine, ScanExhaustiveShardEngine)],
)
def test_windows_fire_exactly_what_the_scan_fires(
    seed: int,
    engine_type: type[ShardEngine],
    reference_type: type[ShardEngine],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    incremental = run(engine_type(), seed)
    SCANNED.clear()
    with monkeypatch.context() as patch:
        patch.setitem(conditions.EVALUATORS, "flow_repeated_hits", scan_repeated_hits)
        patch.setitem(conditions.EVALUATORS, "put_call_premium_ratio", scan_put_call)
        scanned = run(reference_type(), seed)
    kinds = {kind for alert in incremental for kind in alert[4] if kind in ("hits", "ratio")}
    assert len(incremental) > 100 and kinds == {"hits", "ratio"}
    assert incremental == scanned


# ---------------------------------------------------------------- exact sums


def test_premium_sums_are_exact_after_any_number_of_evictions() -> None:
    """Decimal premiums (not exact in binary) over a long stream: each read is the exact sum
    of the window's premiums correctly rounded (``math.fsum``), never a drifting running sum."""
    rng = random.Random(3)
    state = SymbolState("AAPL")
    leaf = c.PutCallPremiumRatio(type="put_call_premium_ratio", threshold=1, window_seconds=60)
    state.acquire_flow_window(60, leaf)
    prints: list[OptionsFlow] = []
    for index in range(5000):
        print_ = OptionsFlow(
            id=f"f-{index}",
            ts=T0 + timedelta(seconds=index * 0.7),
            underlying="AAPL",
            contract="AAPL  260116C00200000",
            right=rng.choice("CP"),
            strike=200.0,
            expiry="2026-01-16",
            price=rng.randrange(1, 5000) / 100,
            size=rng.choice([1, 3, 7, 10]),
            premium=rng.choice([None, rng.randrange(1, 10**9) / 100, rng.uniform(0, 1e-3)]),
            side="ask",
            trade_type="single",
        )
        prints.append(print_)
        state.on_flow(print_)
        puts, calls = state.flow_premiums(60, leaf, print_.ts)
        window = [p for p in prints if p.ts >= print_.ts - timedelta(seconds=60)]
        assert puts == math.fsum(p.effective_premium for p in window if p.right == "P")
        assert calls == math.fsum(p.effective_premium for p in window if p.right == "C")
    assert not state.flow_unordered


def test_windows_start_from_the_retained_prints_and_are_shared() -> None:
    state = SymbolState("AAPL")
    short = c.FlowRepeatedHits(type="flow_repeated_hits", count=2, window_seconds=60)
    state.acquire_flow_window(60, short)
    for second in (0, 30, 50):
        state.on_flow(helpers_print(second))
    # A second leaf with the same window and filters (another count) shares the window; a
    # longer one starts from what is retained, as the scan would see it.
    same = c.FlowRepeatedHits(type="flow_repeated_hits", count=5, window_seconds=60)
    longer = c.FlowRepeatedHits(type="flow_repeated_hits", count=2, window_seconds=600)
    state.acquire_flow_window(60, same)
    state.acquire_flow_window(600, longer)
    assert len(state.flow_filters) == 1
    assert sorted(state.flow_filters[next(iter(state.flow_filters))].windows) == [60, 600]
    last = helpers_print(70)
    state.on_flow(last)
    assert state.flow_hits(60, short, last) == 3  # 30, 50, 70
    assert state.flow_hits(600, longer, last) == 4  # 0 was retained (the longest was 60 s)
    state.release_flow_window(60, short)
    state.release_flow_window(60, same)
    state.release_flow_window(600, longer)
    assert not state.flow and not state.flow_filters and not state.flow_window_of


def helpers_print(second: float, **fields: Any) -> OptionsFlow:
    base: dict[str, Any] = {
        "id": f"f-{second}",
        "ts": T0 + timedelta(seconds=second),
        "underlying": "AAPL",
        "contract": "AAPL  260116C00200000",
        "right": "C",
        "strike": 200.0,
        "expiry": "2026-01-16",
        "price": 2.5,
        "size": 100,
        "side": "ask",
        "trade_type": "single",
    }
    return OptionsFlow(**(base | fields))


def test_reads_before_the_last_eviction_or_the_last_print_read_the_retained_prints() -> None:
    """A read at a later tick evicts up to its own cutoff; a read at an earlier ts afterwards
    (a print between them, a late tick) still sees what the scan sees."""
    state = SymbolState("AAPL")
    leaf = c.PutCallPremiumRatio(type="put_call_premium_ratio", threshold=1, window_seconds=60)
    state.acquire_flow_window(60, leaf)
    for second, right in ((0, "C"), (10, "P"), (20, "C")):
        state.on_flow(helpers_print(second, right=right, premium=1000.0 * (second + 1)))
    assert state.flow_premiums(60, leaf, at(65)) == (11_000.0, 21_000.0)  # 0 is out
    state.on_flow(helpers_print(30, right="P", premium=5.0))
    assert state.flow_premiums(60, leaf, at(30)) == (11_005.0, 22_000.0)  # 0 is back in
    assert state.flow_premiums(60, leaf, at(15)) == (11_000.0, 1_000.0)  # not 20 nor 30


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


# ---------------------------------------------------------------- leaf tracking


def random_flow_leaf(rng: random.Random) -> dict[str, Any]:
    """Any flow leaf, drawn from few filter sets and thresholds: leaves share filter sets,
    windows and thresholds, as the engine's per-filter-set indexes group them."""
    filters: dict[str, Any] = rng.choice(
        [{}, {"right": "C"}, {"sides": ["ask", "above_ask"]}, {"moneyness": "otm"}]
    )
    kind = rng.choice(
        ["flow_premium_above", "flow_sweep", "flow_block", "unusual_volume", "hits", "ratio"]
    )
    if kind == "flow_premium_above":
        leaf: dict[str, Any] = {"type": kind, "threshold": rng.choice([1_000, 20_000, 100_000])}
    elif kind in ("flow_sweep", "flow_block"):
        leaf = {"type": kind, "min_premium": rng.choice([0, 5_000, 50_000])}
    elif kind == "unusual_volume":
        leaf = {"type": kind, "ratio": rng.choice([0.5, 2, 4])}
    elif kind == "hits":
        leaf = {
            "type": "flow_repeated_hits",
            "count": rng.choice([2, 3, 5]),
            "window_seconds": rng.choice([60, 300]),
        }
    else:
        leaf = {
            "type": "put_call_premium_ratio",
            "threshold": rng.choice([0.5, 1, 2]),
            "comparison": rng.choice(["above", "below"]),
            "window_seconds": rng.choice([60, 300]),
        }
    return leaf | filters


class EveryPrintShardEngine(ShardEngine):
    """The leaf tracking as it was before the per-filter-set flow indexes: every flow leaf
    evaluated at every print, its rules woken when it holds (a pulse) or changed (a ratio), and
    every woken rule evaluated (silent pulse rules too)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, tuple[LeafSlot, bool]] = {}  # the slot kept: its id stays its own

    def upsert(self, rule: Rule) -> None:
        super().upsert(rule)
        if rule.id in self.rules:
            self.rules[rule.id].pulses_only = False

    def on_flow(self, print_: OptionsFlow) -> list[TriggeredAlert]:
        market = self._market(print_.underlying)
        market.on_flow(print_)
        rules = self.symbols.get(print_.underlying)
        if rules is None:
            return []
        ctx = EventContext(print_.underlying, print_.ts, FLOW, market, self.positions, flow=print_)
        memo: dict[Any, Observation | None] = {}
        changed = []
        for slot in rules.leaves.values():
            leaf = slot.leaf
            if leaf is None or leaf_kind(leaf) != FLOW:
                continue
            holds = evaluate_leaf(leaf, ctx, slot.owner, memo) is not None
            kept = self.values.get(id(slot))
            was = kept is not None and kept[0] is slot and kept[1]
            if holds if leaf.type in PULSES else holds != was:
                changed.append(slot)
            self.values[id(slot)] = (slot, holds)
        return self._wake(rules, ctx, FLOW, changed)


@pytest.mark.parametrize("seed", range(4))
def test_flow_leaf_tracking_fires_what_evaluating_every_rule_fires(seed: int) -> None:
    """Flow leaves found per filter set by bisection (pulses that hold, ratios that flip) wake
    the rules evaluating every flow leaf at every print woke: the same alerts, with rules coming
    and going. (Not the exhaustive engine's: it also evaluates ratios at ticks, where a window
    can empty without a print.)"""
    rng = random.Random(seed)
    events = [
        event.model_copy(
            update={"day_volume": rng.choice([None, 100, 1_000]), "open_interest": 400}
        )
        if isinstance(event, OptionsFlow)
        else event
        for event in random_events(rng, 1500, late=[0.0, 0.02][seed % 2])
    ]
    rules = []
    for index in range(80):
        symbol = rng.choice(list(SYMBOLS))
        roll = rng.random()
        if roll < 0.6:
            conditions_: dict[str, Any] = random_flow_leaf(rng)
        elif roll < 0.8:
            level = round(SYMBOLS[symbol] * rng.uniform(0.99, 1.01), 1)
            conditions_ = {
                "all": [random_flow_leaf(rng), {"type": "price_above", "threshold": level}]
            }
        else:
            conditions_ = {"any": [random_flow_leaf(rng), random_flow_leaf(rng)]}
        rules.append(
            helpers.rule(
                conditions_,
                id=f"r-{index:03d}",
                user_id=f"u-{index % 7}",
                symbol=symbol,
                cooldown_seconds=rng.choice([0, 0, 60]),
            )
        )
    changes = [(rng.randrange(len(events)), rng.random(), rng.randrange(80)) for _ in range(60)]
    outcomes = []
    for engine in (ShardEngine(), EveryPrintShardEngine()):
        for rule in rules[:40]:
            engine.upsert(rule)
        alerts = []
        for position, event in enumerate(events):
            for at, roll, index in changes:
                if at == position:
                    if roll < 0.6:
                        engine.upsert(rules[index])
                    else:
                        engine.remove(rules[index].id)
            alerts += engine.process([event])
        outcomes.append([(a.alert_id, a.message, a.values) for a in alerts])
    indexed, every_print = outcomes
    kinds = {kind for _, _, values in indexed for kind in values}
    assert len(indexed) > 200 and {"hits", "ratio", "volume_oi_ratio"} <= kinds
    assert indexed == every_print


def test_expiring_this_week_takes_the_prints_own_week() -> None:
    engine = ShardEngine()
    engine.upsert(parse_rule("AAPL sweep expiring this week cooldown 0", user_id="u", rule_id="r"))
    wednesday = datetime(2026, 1, 7, 15, tzinfo=UTC)
    expiries = ["2026-01-06", "2026-01-07", "2026-01-09", "2026-01-11", "2026-01-12"]
    prints = [
        helpers_print(0, id=f"p{n}", ts=wednesday + timedelta(seconds=n), expiry=expiry,
                      trade_type="sweep")
        for n, expiry in enumerate(expiries)
    ]  # fmt: skip
    fired = [alert.triggered_at for alert in engine.process(prints)]
    # Expired (the 6th) and next week's (Monday the 12th) fail; the 7th to Sunday the 11th pass.
    assert fired == [wednesday + timedelta(seconds=n) for n in (1, 2, 3)]
    assert flow_filter_key(c.FlowSweep(type="flow_sweep", expires_this_week=True)) != (
        flow_filter_key(c.FlowSweep(type="flow_sweep"))
    )
