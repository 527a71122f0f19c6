"""EVALUATE: the rules of one shard against the market events of its symbols.

One ShardEngine holds every rule routed to its shard (ARCHITECTURE.md §3) and the market state
its rules need, per symbol. Semantics (ARCHITECTURE.md §5): a rule fires on the event where its
condition tree goes from not satisfied to satisfied, then stays silent until
``triggered_at + cooldown_seconds`` in event time; ``once`` rules retire after firing; expired
or inactive rules are not evaluated; a new version replaces a rule and resets its state.

How it scales: a rule is only looked at when an event could change its value.
- A rule whose whole tree is one price leaf (the common "AAPL above 200") sits in a sorted
  threshold index of its symbol; a tick moving the price from p0 to p1 finds, by bisection, the
  thresholds between p0 and p1, the only rules whose value can have changed.
- Any other rule is listed under the event kinds its leaves are sensitive to (ticks, flow
  prints, bar closes of a timeframe) and evaluated only at those events.
- Indicators and windows are computed once per symbol however many rules read them
  (``SymbolState``), and dropped with their last rule.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipeline.condition_specs import CONDITION_MODELS, ConditionNode, LeafCondition, iter_conditions
from pipeline.conditions import (
    BAR,
    FLOW,
    TICK,
    EventContext,
    Observation,
    evaluate_tree,
    indicator_specs,
    leaf_kinds,
)
from pipeline.ids import alert_id
from pipeline.indicators import BarClose
from pipeline.market_state import SymbolState
from pipeline.messages import (
    OptionsFlow,
    Position,
    PositionClosed,
    Priority,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)

MarketEvent = Tick | OptionsFlow
ShardInput = Rule | RuleTombstone | Position | PositionClosed | MarketEvent

END_OF_TIME = datetime.max.replace(tzinfo=UTC)
INDEXED_TYPES = ("price_above", "price_below", "price_crosses_above", "price_crosses_below")


@dataclass(slots=True)
class EdgeState:
    """Edge and cooldown memory of one rule on one symbol."""

    satisfied: bool = False
    silent_until: datetime | None = None


@dataclass(slots=True)
class CompiledRule:
    """A rule as the engine keeps it: what evaluation needs, in little memory."""

    id: str
    version: int
    digest: int
    user_id: str
    name: str
    priority: Priority
    once: bool
    cooldown: timedelta
    expires_at: datetime | None
    active: bool
    scope: tuple[str, ...] | None  # None: every symbol
    tree: ConditionNode | None  # None for an indexed rule: its one leaf is (index_type, threshold)
    index_type: str | None
    threshold: float
    kinds: frozenset[str]
    retired: bool = False
    edges: EdgeState | dict[str, EdgeState] | None = None

    def edge(self, symbol: str) -> EdgeState:
        if self.scope is not None and len(self.scope) == 1:
            if not isinstance(self.edges, EdgeState):
                self.edges = EdgeState()
            return self.edges
        if not isinstance(self.edges, dict):
            self.edges = {}
        state = self.edges.get(symbol)
        if state is None:
            state = self.edges[symbol] = EdgeState()
        return state

    def leaves(self) -> list[LeafCondition]:
        if self.tree is None:
            assert self.index_type is not None
            return [
                CONDITION_MODELS[self.index_type].model_construct(
                    type=self.index_type, threshold=self.threshold
                )
            ]
        return iter_conditions(self.tree)

    def condition_tree(self) -> ConditionNode:
        return self.tree if self.tree is not None else self.leaves()[0]


def compile_rule(rule: Rule) -> CompiledRule:
    leaves = iter_conditions(rule.conditions)
    single = leaves[0] if len(leaves) == 1 and leaves[0] is rule.conditions else None
    indexed = single is not None and single.type in INDEXED_TYPES and not rule.is_wildcard
    return CompiledRule(
        id=rule.id,
        version=rule.version,
        digest=zlib.crc32(rule.model_dump_json().encode()),
        user_id=rule.user_id,
        name=rule.name,
        priority=rule.priority,
        once=rule.mode == "once",
        cooldown=timedelta(seconds=rule.cooldown_seconds),
        expires_at=rule.expires_at,
        active=rule.active,
        scope=None if rule.is_wildcard else tuple(rule.scope),
        tree=None if indexed else rule.conditions,
        index_type=single.type if indexed and single is not None else None,
        threshold=float(getattr(single, "threshold", 0.0)) if indexed else 0.0,
        kinds=frozenset(leaf_kinds(rule.conditions)),
    )


@dataclass(slots=True)
class SortedThresholds:
    """Rule ids sorted by threshold, for range lookups by bisection."""

    thresholds: list[float] = field(default_factory=list)
    rule_ids: list[str] = field(default_factory=list)

    def add(self, threshold: float, rule_id: str) -> None:
        index = bisect_right(self.thresholds, threshold)
        self.thresholds.insert(index, threshold)
        self.rule_ids.insert(index, rule_id)

    def remove(self, threshold: float, rule_id: str) -> None:
        low = bisect_left(self.thresholds, threshold)
        high = bisect_right(self.thresholds, threshold)
        for index in range(low, high):
            if self.rule_ids[index] == rule_id:
                del self.thresholds[index]
                del self.rule_ids[index]
                return

    def between(self, low: float, high: float, *, closed_low: bool, closed_high: bool) -> list[str]:
        start = (bisect_left if closed_low else bisect_right)(self.thresholds, low)
        end = (bisect_right if closed_high else bisect_left)(self.thresholds, high)
        return self.rule_ids[start:end]

    def __len__(self) -> int:
        return len(self.thresholds)


@dataclass(slots=True)
class SymbolRules:
    """The rules watching one symbol, by how they are found."""

    indexes: dict[str, SortedThresholds] = field(default_factory=dict)
    fresh: set[str] = field(default_factory=set)  # indexed, not yet evaluated once
    by_kind: dict[str, set[str]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.fresh and not any(self.indexes.values()) and not any(self.by_kind.values())


@dataclass
class ShardEngine:
    rules: dict[str, CompiledRule] = field(default_factory=dict)
    symbols: dict[str, SymbolRules] = field(default_factory=dict)
    wildcard: dict[str, set[str]] = field(default_factory=dict)  # kind -> rule ids
    markets: dict[str, SymbolState] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)

    # ------------------------------------------------------------ input

    def process(self, batch: Iterable[ShardInput]) -> list[TriggeredAlert]:
        """Apply one batch: rule and position changes first, then market events in ts order.

        Changes first makes the outcome independent of how a batch interleaved its sources;
        the sort is stable, so events with equal ts keep their arrival order.
        """
        events: list[MarketEvent] = []
        for item in batch:
            if isinstance(item, Rule):
                self.upsert(item)
            elif isinstance(item, RuleTombstone):
                self.remove(item.rule_id)
            elif isinstance(item, Position):
                self.update_position(item)
            elif isinstance(item, PositionClosed):
                self.positions.pop((item.user_id, item.symbol), None)
            else:
                events.append(item)
        events.sort(key=lambda event: event.ts)
        alerts: list[TriggeredAlert] = []
        for event in events:
            if isinstance(event, Tick):
                alerts.extend(self.on_tick(event))
            else:
                alerts.extend(self.on_flow(event))
        return alerts

    def upsert(self, rule: Rule) -> None:
        current = self.rules.get(rule.id)
        if current is not None:
            if current.version > rule.version:
                return  # a stale copy
            compiled = compile_rule(rule)
            if current.version == rule.version and current.digest == compiled.digest:
                return  # a replayed copy: keep the state it built
            self._unregister(current)
        else:
            compiled = compile_rule(rule)
        self.rules[rule.id] = compiled
        self._register(compiled)

    def remove(self, rule_id: str) -> None:
        compiled = self.rules.pop(rule_id, None)
        if compiled is not None:
            self._unregister(compiled)

    def update_position(self, position: Position) -> None:
        key = (position.user_id, position.symbol)
        current = self.positions.get(key)
        if current is not None and current.ts > position.ts:
            return
        if position.quantity == 0:
            self.positions.pop(key, None)
        else:
            self.positions[key] = position

    # ------------------------------------------------------------ registration

    def _register(self, rule: CompiledRule) -> None:
        if rule.scope is None:
            for kind in rule.kinds:
                self.wildcard.setdefault(kind, set()).add(rule.id)
            for market in self.markets.values():
                self._acquire(market, rule, +1)
            return
        for symbol in rule.scope:
            rules = self.symbols.setdefault(symbol, SymbolRules())
            if rule.index_type is not None:
                rules.indexes.setdefault(rule.index_type, SortedThresholds()).add(
                    rule.threshold, rule.id
                )
                rules.fresh.add(rule.id)
            else:
                for kind in rule.kinds:
                    rules.by_kind.setdefault(kind, set()).add(rule.id)
            self._acquire(self._market(symbol), rule, +1)

    def _unregister(self, rule: CompiledRule) -> None:
        if rule.scope is None:
            for kind in rule.kinds:
                self.wildcard.get(kind, set()).discard(rule.id)
            for market in self.markets.values():
                self._acquire(market, rule, -1)
            return
        for symbol in rule.scope:
            rules = self.symbols.get(symbol)
            if rules is None:
                continue
            if rule.index_type is not None:
                rules.indexes[rule.index_type].remove(rule.threshold, rule.id)
                rules.fresh.discard(rule.id)
            else:
                for kind in rule.kinds:
                    rules.by_kind.get(kind, set()).discard(rule.id)
            self._acquire(self.markets[symbol], rule, -1)
            if rules.is_empty():
                del self.symbols[symbol]

    def _market(self, symbol: str) -> SymbolState:
        market = self.markets.get(symbol)
        if market is None:
            market = self.markets[symbol] = SymbolState(symbol)
            for rule_ids in self.wildcard.values():
                for rule_id in rule_ids:
                    self._acquire(market, self.rules[rule_id], +1)
        return market

    def _acquire(self, market: SymbolState, rule: CompiledRule, step: int) -> None:
        """Take (+1) or give back (-1) the indicators and windows the rule's leaves read."""
        if rule.tree is None:
            return
        take = step > 0
        for leaf in iter_conditions(rule.tree):
            for spec in indicator_specs(leaf):
                (market.indicators.acquire if take else market.indicators.release)(spec)
            kind = leaf.type
            if kind in ("percent_move_up", "percent_move_down"):
                (market.acquire_extrema if take else market.release_extrema)(leaf.window_seconds)
            elif kind == "iv_change_pct":
                (market.acquire_iv_window if take else market.release_iv_window)(
                    leaf.window_seconds
                )
            elif kind == "iv_rank_above":
                (market.acquire_iv_rank if take else market.release_iv_rank)(leaf.lookback_days)
            elif kind in ("flow_repeated_hits", "put_call_premium_ratio"):
                (market.acquire_flow_window if take else market.release_flow_window)(
                    leaf.window_seconds
                )

    # ------------------------------------------------------------ events

    def on_tick(self, tick: Tick) -> list[TriggeredAlert]:
        symbol = tick.symbol
        market = self._market(symbol)
        alerts: list[TriggeredAlert] = []
        for bar in market.indicators.on_event(tick.ts, tick.price, tick.size):
            alerts.extend(self._on_bar(market, bar))
        previous = market.last_price
        market.on_tick(tick)
        ctx = EventContext(symbol, tick.ts, TICK, market, self.positions)
        for rule_id in self._tick_candidates(symbol, previous, tick.price):
            alert = self._evaluate(self.rules[rule_id], ctx)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def on_flow(self, print_: OptionsFlow) -> list[TriggeredAlert]:
        symbol = print_.underlying
        market = self._market(symbol)
        market.on_flow(print_)
        ctx = EventContext(symbol, print_.ts, FLOW, market, self.positions, flow=print_)
        return self._evaluate_all(self._general(symbol, FLOW), ctx)

    def flush(self) -> list[TriggeredAlert]:
        """End of a bounded input: close every open bar (its end is the watermark)."""
        alerts: list[TriggeredAlert] = []
        for market in self.markets.values():
            for bar in market.indicators.advance_to(END_OF_TIME):
                alerts.extend(self._on_bar(market, bar))
        return alerts

    def _on_bar(self, market: SymbolState, bar: BarClose) -> list[TriggeredAlert]:
        ctx = EventContext(market.symbol, bar.end, BAR, market, self.positions, bar=bar)
        return self._evaluate_all(self._general(market.symbol, f"{BAR}:{bar.timeframe}"), ctx)

    def _evaluate_all(self, rule_ids: list[str], ctx: EventContext) -> list[TriggeredAlert]:
        alerts = []
        for rule_id in rule_ids:
            alert = self._evaluate(self.rules[rule_id], ctx)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _general(self, symbol: str, kind: str) -> list[str]:
        rules = self.symbols.get(symbol)
        own = rules.by_kind.get(kind, set()) if rules is not None else set()
        wild = self.wildcard.get(kind, set())
        return sorted(own | wild) if wild else sorted(own)

    def _tick_candidates(self, symbol: str, previous: float | None, price: float) -> list[str]:
        """Rules whose value can have changed at a tick from ``previous`` to ``price``."""
        rules = self.symbols.get(symbol)
        candidates: set[str] = set(self.wildcard.get(TICK, ()))
        if rules is None:
            return sorted(candidates)
        candidates.update(rules.by_kind.get(TICK, ()))
        candidates.update(rules.fresh)
        rules.fresh.clear()
        indexes = rules.indexes
        if previous is None:
            # First price: every level rule already true fires (its state starts unsatisfied).
            if "price_above" in indexes:
                candidates.update(
                    indexes["price_above"].between(
                        float("-inf"), price, closed_low=True, closed_high=False
                    )
                )
            if "price_below" in indexes:
                candidates.update(
                    indexes["price_below"].between(
                        price, float("inf"), closed_low=False, closed_high=True
                    )
                )
            return sorted(candidates)
        low, high = min(previous, price), max(previous, price)
        if "price_above" in indexes:  # value p > t flips for t in [low, high)
            candidates.update(
                indexes["price_above"].between(low, high, closed_low=True, closed_high=False)
            )
        if "price_below" in indexes:  # value p < t flips for t in (low, high]
            candidates.update(
                indexes["price_below"].between(low, high, closed_low=False, closed_high=True)
            )
        if price > previous and "price_crosses_above" in indexes:  # previous <= t < price
            candidates.update(
                indexes["price_crosses_above"].between(
                    previous, price, closed_low=True, closed_high=False
                )
            )
        if price < previous and "price_crosses_below" in indexes:  # previous >= t > price
            candidates.update(
                indexes["price_crosses_below"].between(
                    price, previous, closed_low=False, closed_high=True
                )
            )
        return sorted(candidates)

    # ------------------------------------------------------------ one rule at one event

    def _evaluate(self, rule: CompiledRule, ctx: EventContext) -> TriggeredAlert | None:
        if rule.retired or not rule.active:
            return None
        if rule.expires_at is not None and ctx.ts >= rule.expires_at:
            return None
        observations, after = evaluate_tree(rule.condition_tree(), ctx, rule.user_id)
        state = rule.edge(ctx.symbol)
        was_satisfied, state.satisfied = state.satisfied, after
        if observations is None or was_satisfied:
            return None
        if state.silent_until is not None and ctx.ts < state.silent_until:
            return None
        state.silent_until = ctx.ts + rule.cooldown
        if rule.once:
            rule.retired = True
        return build_alert(rule, ctx, observations)


def build_alert(
    rule: CompiledRule, ctx: EventContext, observations: list[Observation]
) -> TriggeredAlert:
    values: dict[str, float | str | None] = {}
    clashing: set[str] = set()
    for observation in observations:
        for name, value in observation.values.items():
            if name in values and values[name] != value:
                clashing.add(name)
            values.setdefault(name, value)
    type_counts = Counter(observation.condition_type for observation in observations)
    seen: Counter[str] = Counter()
    for observation in observations:
        kind = observation.condition_type
        seen[kind] += 1
        prefix = kind if type_counts[kind] == 1 else f"{kind}[{seen[kind]}]"
        for name in clashing & observation.values.keys():
            values[f"{prefix}.{name}"] = observation.values[name]
    for name in clashing:
        del values[name]
    types = list(dict.fromkeys(observation.condition_type for observation in observations))
    return TriggeredAlert(
        alert_id=alert_id(rule.id, rule.version, ctx.ts, ctx.symbol),
        rule_id=rule.id,
        rule_version=rule.version,
        user_id=rule.user_id,
        symbol=ctx.symbol,
        priority=rule.priority,
        title=f"{ctx.symbol}: {rule.name}"[:255],
        message="; ".join(observation.description for observation in observations)[:4096],
        triggered_at=ctx.ts,
        condition_types=types,
        values=values,
    )
