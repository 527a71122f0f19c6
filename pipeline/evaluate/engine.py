"""EVALUATE: the rules of one shard against the market events of its symbols.

One ShardEngine holds every rule routed to its shard (ARCHITECTURE.md §3) and the market state
its rules need, per symbol. Semantics (ARCHITECTURE.md §5): a rule fires on the event where its
condition tree goes from not satisfied to satisfied, then stays silent until
``triggered_at + cooldown_seconds`` in event time; ``once`` rules retire after firing; expired
or inactive rules are not evaluated; a new version replaces a rule and resets its state.

How it scales: a rule's value can only change at an event where one of its leaves changes, so
the engine tracks leaves, not rules. Per symbol, each distinct leaf is kept once with the rules
that use it:
- threshold leaves (price, IV, greeks, spread above/below, price crosses) sit in sorted
  indexes; a tick moving the price from p0 to p1 finds the leaves it flipped by bisection
  between p0 and p1, whatever the number of thresholds;
- flow leaves are grouped by filter set (``FlowLeaves``): a print is checked once per filter
  set, each flow window is read once, and the pulses it makes true and the put/call ratios it
  flips are found by bisection of their sorted thresholds;
- every other leaf is evaluated once per event of the kind it reads (ticks, bar closes of its
  timeframe), and only a leaf whose value changed (or a pulse that fired) wakes its rules.
Indicators and windows are computed once per symbol however many leaves read them
(``SymbolState``) and dropped with the last one. A rule keeps little: its fields, its condition
tree (shared leaves) or, for a one-leaf threshold rule, just (type, threshold).
"""

from __future__ import annotations

import re
import sys
import zlib
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from typing import Any, NamedTuple

from pipeline.evaluate.conditions import (
    BAR,
    FLOW,
    PULSES,
    THRESHOLD_QUANTITY,
    TICK,
    EventContext,
    LeafKey,
    Observation,
    evaluate_leaf,
    evaluate_tree,
    indicator_specs,
    leaf_key,
    leaf_kind,
)
from pipeline.evaluate.indicators import BarClose
from pipeline.evaluate.market_state import (
    FlowKey,
    FlowWindow,
    SymbolState,
    flow_filter_key,
    passes_filters,
)
from pipeline.evaluate.specs import (
    AllOf,
    AnyOf,
    ConditionNode,
    FlowFilters,
    LeafCondition,
    iter_conditions,
)
from pipeline.event_time import Progress, ReferenceGate, Watermark, WatermarkJoin, floor_second
from pipeline.ids import alert_id
from pipeline.market_calendar import is_any_session, is_regular_session
from pipeline.messages import (
    DeadLetter,
    OptionsFlow,
    Position,
    PositionClosed,
    Priority,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)
from pipeline.safety import SafetyNet

MarketEvent = Tick | OptionsFlow
ShardInput = Rule | RuleTombstone | Position | PositionClosed | MarketEvent

END_OF_TIME = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True)
class EdgeState:
    """Edge and cooldown memory of one rule on one symbol."""

    satisfied: bool = False
    silent_until: datetime | None = None


@cache
def _shared_kinds(kinds: frozenset[str]) -> frozenset[str]:
    return kinds


# A cooldown of 0 still silences the rest of the instant that fired: an alert's id is made of
# the rule, its version, the symbol and the ts, so a second alert at the same ts (two qualifying
# prints with one timestamp) would be a duplicate of the first.
_SAME_INSTANT = timedelta(microseconds=1)


@cache
def _shared_cooldown(seconds: int) -> timedelta:
    return max(timedelta(seconds=seconds), _SAME_INSTANT)


# Rule.sessions as CompiledRule keeps it: an index into _SESSION_CHECKS (0: any, no check).
_SESSIONS = {"any": 0, "regular": 1, "extended": 2}
_SESSION_CHECKS = (None, is_regular_session, is_any_session)


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
    tree: ConditionNode | ThresholdLeaf
    kinds: frozenset[str]
    sessions: int = 0  # _SESSIONS: evaluated only at events in these NYSE sessions
    # Every leaf a pulse: the rule never stays satisfied past its event, so while it is silent
    # its value cannot make an alert and it need not be evaluated.
    pulses_only: bool = False
    retired: bool = False
    # Edge state: on the rule itself when it watches one symbol, else per symbol.
    satisfied: bool = False
    silent_until: datetime | None = None
    edges: dict[str, EdgeState] | None = None

    def edge(self, symbol: str) -> EdgeState | CompiledRule:
        if self.scope is not None and len(self.scope) == 1:
            return self
        if self.edges is None:
            self.edges = {}
        state = self.edges.get(symbol)
        if state is None:
            state = self.edges[symbol] = EdgeState()
        return state

    def leaves(self) -> list[Any]:
        return [self.tree] if isinstance(self.tree, ThresholdLeaf) else iter_conditions(self.tree)


class ThresholdLeaf(NamedTuple):
    """A one-leaf threshold rule's condition, as small as a tuple (most rules are these).

    It reads like the leaf model (``.type``, ``.threshold``) and is its own leaf key.
    """

    type: str
    threshold: float


def compile_rule(rule: Rule) -> CompiledRule:
    conditions = rule.conditions
    tree: ConditionNode | ThresholdLeaf = conditions
    if not isinstance(conditions, AllOf | AnyOf) and conditions.type in THRESHOLD_QUANTITY:
        tree = ThresholdLeaf(conditions.type, float(conditions.threshold))
    return CompiledRule(
        id=rule.id,
        version=rule.version,
        digest=zlib.crc32(rule.model_dump_json().encode()),
        user_id=sys.intern(rule.user_id),
        name=rule.name,
        priority=rule.priority,
        once=rule.mode == "once",
        cooldown=_shared_cooldown(rule.cooldown_seconds),
        expires_at=rule.expires_at,
        active=rule.active,
        scope=None if rule.is_wildcard else tuple(rule.scope),
        tree=tree,
        kinds=_shared_kinds(frozenset(leaf_kind(leaf) for leaf in iter_conditions(conditions))),
        sessions=_SESSIONS[rule.sessions],
        pulses_only=all(leaf.type in PULSES for leaf in iter_conditions(conditions)),
    )


@dataclass(slots=True)
class LeafSlot:
    """One distinct leaf of a symbol, the rules that read it, and its value at the last event."""

    leaf: LeafCondition | None  # None for threshold leaves (their key says it all)
    owner: str = ""  # for position leaves: whose position
    rule_ids: list[str] = field(default_factory=list)
    value: bool = False


@dataclass(slots=True)
class SortedThresholds:
    """Threshold leaves sorted by threshold, for range lookups by bisection."""

    thresholds: list[float] = field(default_factory=list)
    slots: list[LeafSlot] = field(default_factory=list)

    def add(self, threshold: float, slot: LeafSlot) -> None:
        index = bisect_right(self.thresholds, threshold)
        self.thresholds.insert(index, threshold)
        self.slots.insert(index, slot)

    def remove(self, threshold: float, slot: LeafSlot) -> None:
        low = bisect_left(self.thresholds, threshold)
        high = bisect_right(self.thresholds, threshold)
        for index in range(low, high):
            if self.slots[index] is slot:
                del self.thresholds[index]
                del self.slots[index]
                return


@dataclass(slots=True)
class SymbolRules:
    leaves: dict[LeafKey, LeafSlot] = field(default_factory=dict)
    indexes: dict[str, SortedThresholds] = field(default_factory=dict)  # by threshold leaf type
    # The indexes by the quantity they read, each with how its leaves flip: a tick reads each
    # quantity once before and once after, however many leaf types read it.
    quantities: dict[str, list[tuple[str, SortedThresholds]]] = field(default_factory=dict)
    by_kind: dict[str, list[LeafSlot]] = field(default_factory=dict)  # other leaves, by event kind
    flow: dict[FlowKey, FlowLeaves] = field(default_factory=dict)  # flow leaves, by filter set
    fresh: set[str] = field(default_factory=set)  # rules not yet evaluated on this symbol

    def attach(self, rule: CompiledRule) -> list[LeafCondition]:
        """Register the rule's leaves; returns the leaves that are new to this symbol."""
        new = []
        for key, leaf in _leaf_entries(rule):
            slot = self.leaves.get(key)
            if slot is None:
                threshold = _is_threshold_key(key)
                owner = key[1] if isinstance(key, tuple) and not threshold else ""
                slot = self.leaves[key] = LeafSlot(None if threshold else leaf, owner)
                if threshold:
                    index = self.indexes.get(key[0])
                    if index is None:
                        index = self.indexes[key[0]] = SortedThresholds()
                        self.quantities.setdefault(THRESHOLD_QUANTITY[key[0]], []).append(
                            (_FLIP[key[0]], index)
                        )
                    index.add(key[1], slot)
                elif leaf_kind(leaf) == FLOW:
                    filter_key = flow_filter_key(leaf)
                    group = self.flow.get(filter_key)
                    if group is None:
                        group = self.flow[filter_key] = FlowLeaves(leaf)
                    group.add(leaf, slot)
                else:
                    self.by_kind.setdefault(leaf_kind(leaf), []).append(slot)
                new.append(leaf)
            slot.rule_ids.append(rule.id)
        self.fresh.add(rule.id)
        return new

    def detach(self, rule: CompiledRule) -> list[LeafCondition]:
        """Unregister the rule's leaves; returns the leaves no rule of this symbol reads now."""
        gone = []
        for key, leaf in _leaf_entries(rule):
            slot = self.leaves.get(key)
            if slot is None or rule.id not in slot.rule_ids:
                continue
            slot.rule_ids.remove(rule.id)
            if slot.rule_ids:
                continue
            del self.leaves[key]
            if _is_threshold_key(key):
                self.indexes[key[0]].remove(key[1], slot)
            elif leaf_kind(leaf) == FLOW:
                filter_key = flow_filter_key(leaf)
                if self.flow[filter_key].remove(leaf, slot):
                    del self.flow[filter_key]
            else:
                self.by_kind[leaf_kind(leaf)].remove(slot)
            gone.append(leaf)
        self.fresh.discard(rule.id)
        return gone

    def is_empty(self) -> bool:
        return not self.leaves and not self.fresh


@dataclass(slots=True, eq=False)
class RatioLeaves:
    """The ``put_call_premium_ratio`` leaves of one window and filter set, by comparison, sorted
    by threshold, with the ratio at the last print (None: no call premium, every leaf false)."""

    above: SortedThresholds = field(default_factory=SortedThresholds)
    below: SortedThresholds = field(default_factory=SortedThresholds)
    ratio: float | None = None
    premiums: tuple[float, float] | None = None  # the read the ratio is of
    # The market's window, read directly while it is the one kept (``SymbolState.flow_resets``).
    window: FlowWindow | None = None
    resets: int = -1

    def changed(
        self,
        market: SymbolState,
        seconds: int,
        filters: FlowFilters,
        ts: datetime,
        out: list[LeafSlot],
    ) -> None:
        """Append the leaves the print flipped to ``out``: the ratio is read as
        ``market.flow_premiums`` reads it, without looking the window up again."""
        window = self.window
        if market.flow_unordered or window is None or self.resets != market.flow_resets:
            self.window = window = market.flow_window(seconds, filters)
            self.resets = market.flow_resets
        premiums = None
        if window is not None:
            cutoff = ts - window.span
            # The print is the newest: only a read at a later tick makes the horizon later.
            if window.horizon is None or cutoff >= window.horizon:
                premiums = window.premiums(cutoff, market.last_price)
        if premiums is None:
            premiums = market.flow_premiums(seconds, filters, ts)
        if premiums is self.premiums:  # the window's cached read: nothing came or went
            return
        self.premiums = premiums
        puts, calls = premiums
        new = puts / calls if calls > 0 else None
        old, self.ratio = self.ratio, new
        if old == new:
            return
        # No ratio reads as the start (every leaf false): only the leaves true at the other flip.
        low, high = (None, old) if new is None else (old, new)
        assert high is not None
        if self.above.slots:
            out += _flipped("above", self.above, low, high)
        if self.below.slots:
            out += _flipped("below", self.below, low, high)


@dataclass(slots=True, eq=False)
class FlowLeaves:
    """The flow leaves of one symbol that share a filter set (``flow_filter_key``).

    A print is checked against the filters once for all of them, each window is read once, and
    the leaves it makes true (or, for ratios, flips) are found by bisection of their sorted
    thresholds, so a print costs the same whatever the number of leaves of a filter set.
    """

    filters: FlowFilters  # a leaf of the set: equal keys filter prints alike
    # Leaves true at a print that passes the filters and clears their threshold
    # (``_PULSE_THRESHOLD``), by type; created with their first leaf: most sets have few types.
    pulses: dict[str, SortedThresholds] = field(default_factory=dict)
    hits: dict[int, SortedThresholds] = field(default_factory=dict)  # by window, by count
    ratios: dict[int, RatioLeaves] = field(default_factory=dict)  # by window
    size: int = 0

    def _index(self, leaf: Any) -> tuple[SortedThresholds, float]:
        kind = leaf.type
        if kind in _PULSE_THRESHOLD:
            index = self.pulses.get(kind)
            if index is None:
                index = self.pulses[kind] = SortedThresholds()
            return index, getattr(leaf, _PULSE_THRESHOLD[kind])
        if kind == "flow_repeated_hits":
            hits = self.hits.get(leaf.window_seconds)
            if hits is None:
                hits = self.hits[leaf.window_seconds] = SortedThresholds()
            return hits, leaf.count
        ratios = self.ratios.get(leaf.window_seconds)
        if ratios is None:
            ratios = self.ratios[leaf.window_seconds] = RatioLeaves()
        return (ratios.above if leaf.comparison == "above" else ratios.below), leaf.threshold

    def add(self, leaf: Any, slot: LeafSlot) -> None:
        index, threshold = self._index(leaf)
        index.add(threshold, slot)
        self.size += 1

    def remove(self, leaf: Any, slot: LeafSlot) -> bool:
        """Forget a leaf; True when the filter set has none left."""
        index, threshold = self._index(leaf)
        index.remove(threshold, slot)
        kind = leaf.type
        if kind in _PULSE_THRESHOLD and not index.slots:
            del self.pulses[kind]
        elif kind == "flow_repeated_hits" and not index.slots:
            del self.hits[leaf.window_seconds]
        elif kind == "put_call_premium_ratio":
            ratios = self.ratios[leaf.window_seconds]
            if not ratios.above.slots and not ratios.below.slots:
                del self.ratios[leaf.window_seconds]
        self.size -= 1
        return not self.size

    def changed(self, print_: OptionsFlow, market: SymbolState, out: list[LeafSlot]) -> None:
        """Append the leaves true at this print (pulses) or flipped by it (ratios) to ``out``."""
        filters, pulses = self.filters, self.pulses
        if (pulses or self.hits) and passes_filters(filters, print_, market.last_price):
            if pulses:
                premium = print_.effective_premium
                index = pulses.get("flow_premium_above")
                if index is not None:  # threshold < premium
                    out += index.slots[: bisect_left(index.thresholds, premium)]
                index = pulses.get(_TRADE_TYPE_LEAF.get(print_.trade_type, ""))
                if index is not None:  # min_premium <= premium
                    out += index.slots[: bisect_right(index.thresholds, premium)]
                index = pulses.get("unusual_volume")
                if index is not None and print_.day_volume and print_.open_interest:
                    ratio = print_.day_volume / print_.open_interest  # leaf ratio <= this
                    out += index.slots[: bisect_right(index.thresholds, ratio)]
            for seconds, counts in self.hits.items():  # count <= hits
                hits = market.flow_hits(seconds, filters, print_)
                out += counts.slots[: bisect_right(counts.thresholds, hits)]
        ts = print_.ts
        for seconds, ratios in self.ratios.items():
            ratios.changed(market, seconds, filters, ts, out)


# The per-print flow leaves FlowLeaves.pulses holds: the field each is sorted by.
_PULSE_THRESHOLD = {
    "flow_premium_above": "threshold",
    "flow_sweep": "min_premium",
    "flow_block": "min_premium",
    "unusual_volume": "ratio",
}
_TRADE_TYPE_LEAF = {"sweep": "flow_sweep", "block": "flow_block"}


def _is_threshold_key(key: LeafKey) -> bool:
    return isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], float)


def _leaf_entries(rule: CompiledRule) -> list[tuple[LeafKey, Any]]:
    """(key, leaf) of each distinct leaf of the rule."""
    if isinstance(rule.tree, ThresholdLeaf):  # its own (type, threshold) is the key
        return [(rule.tree, rule.tree)]
    entries: dict[LeafKey, Any] = {}
    for leaf in rule.leaves():
        entries.setdefault(leaf_key(leaf, rule.user_id), leaf)
    return list(entries.items())


@dataclass
class ShardEngine:
    rules: dict[str, CompiledRule] = field(default_factory=dict)
    symbols: dict[str, SymbolRules] = field(default_factory=dict)
    wildcard: set[str] = field(default_factory=set)
    markets: dict[str, SymbolState] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)
    # Equal leaves of different rules share one object: less memory, one evaluation per event.
    leaf_pool: dict[LeafCondition, list[Any]] = field(default_factory=dict)

    # ------------------------------------------------------------ input

    def process(self, batch: Iterable[ShardInput]) -> list[TriggeredAlert]:
        """Apply one batch: rule and position changes first, then market events in ts order.

        Changes first makes the outcome independent of how a batch interleaved its sources;
        the sort is stable, so events with equal ts keep their arrival order.
        """
        events: list[MarketEvent] = []
        for item in batch:
            if isinstance(item, Tick | OptionsFlow):
                events.append(item)
            elif isinstance(item, Rule):
                self.upsert(item)
            elif isinstance(item, RuleTombstone):
                self.remove(item.rule_id)
            elif isinstance(item, Position):
                self.update_position(item)
            else:
                self.positions.pop((item.user_id, item.symbol), None)
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
        if current is not None and current.version > rule.version:
            return  # a stale copy
        compiled = compile_rule(rule)
        if current is not None:
            if current.version == rule.version and current.digest == compiled.digest:
                return  # a replayed copy: keep the state it built
            self._unregister(current)
        if not isinstance(compiled.tree, ThresholdLeaf):
            compiled.tree = self._pooled(compiled.tree)
        self.rules[rule.id] = compiled
        self._register(compiled)

    def remove(self, rule_id: str) -> None:
        compiled = self.rules.pop(rule_id, None)
        if compiled is not None:
            self._unregister(compiled)

    def _pooled(self, node: ConditionNode) -> ConditionNode:
        if isinstance(node, AllOf):
            return AllOf.model_construct(all=[self._pooled(child) for child in node.all])
        if isinstance(node, AnyOf):
            return AnyOf.model_construct(any=[self._pooled(child) for child in node.any])
        entry = self.leaf_pool.setdefault(node, [node, 0])
        entry[1] += 1
        pooled: ConditionNode = entry[0]
        return pooled

    def _unpool(self, rule: CompiledRule) -> None:
        if isinstance(rule.tree, ThresholdLeaf):
            return
        for leaf in iter_conditions(rule.tree):
            entry = self.leaf_pool.get(leaf)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self.leaf_pool[leaf]

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
            self.wildcard.add(rule.id)
        for symbol in rule.scope if rule.scope is not None else list(self.markets):
            self._attach(rule, symbol)

    def _unregister(self, rule: CompiledRule) -> None:
        self._unpool(rule)
        self.wildcard.discard(rule.id)
        for symbol in rule.scope if rule.scope is not None else list(self.markets):
            rules = self.symbols.get(symbol)
            if rules is None:
                continue
            for leaf in rules.detach(rule):
                self._acquire(self.markets[symbol], leaf, -1)
            if rules.is_empty():
                del self.symbols[symbol]

    def _attach(self, rule: CompiledRule, symbol: str) -> None:
        market = self._market(symbol)
        for leaf in self.symbols.setdefault(symbol, SymbolRules()).attach(rule):
            self._acquire(market, leaf, +1)

    def _market(self, symbol: str) -> SymbolState:
        market = self.markets.get(symbol)
        if market is None:
            market = self.markets[symbol] = SymbolState(symbol)
            for rule_id in sorted(self.wildcard):
                self._attach(self.rules[rule_id], symbol)
        return market

    @staticmethod
    def _acquire(market: SymbolState, leaf: Any, step: int) -> None:
        """Take (+1) or give back (-1) the indicators and windows a leaf reads."""
        take = step > 0
        for spec in indicator_specs(leaf):
            (market.indicators.acquire if take else market.indicators.release)(spec)
        kind = leaf.type
        if kind in ("percent_move_up", "percent_move_down"):
            (market.acquire_extrema if take else market.release_extrema)(leaf.window_seconds)
        elif kind == "iv_change_pct":
            (market.acquire_iv_window if take else market.release_iv_window)(leaf.window_seconds)
        elif kind == "iv_rank_above":
            (market.acquire_iv_rank if take else market.release_iv_rank)(leaf.lookback_days)
        elif kind in ("flow_repeated_hits", "put_call_premium_ratio"):
            (market.acquire_flow_window if take else market.release_flow_window)(
                leaf.window_seconds, leaf
            )

    # ------------------------------------------------------------ events

    def on_tick(self, tick: Tick) -> list[TriggeredAlert]:
        symbol = tick.symbol
        market = self._market(symbol)
        bars = market.indicators.on_event(tick.ts, tick.price, tick.size)
        alerts = [alert for bar in bars for alert in self._on_bar(market, bar)] if bars else []
        rules = self.symbols.get(symbol)
        if rules is None:
            market.on_tick(tick)
            return alerts
        quantities = rules.quantities
        before = [_quantity(market, name) for name in quantities]
        market.on_tick(tick)
        flipped: list[LeafSlot] = []
        for (name, indexes), old in zip(quantities.items(), before, strict=True):
            new = _quantity(market, name)
            if new is not None and old != new:
                for flip, index in indexes:
                    flipped += _flipped(flip, index, old, new)
        if not flipped and not rules.fresh and TICK not in rules.by_kind:
            return alerts
        ctx = EventContext(symbol, tick.ts, TICK, market, self.positions)
        return alerts + self._wake(rules, ctx, TICK, flipped)

    def on_flow(self, print_: OptionsFlow) -> list[TriggeredAlert]:
        symbol = print_.underlying
        market = self._market(symbol)
        market.on_flow(print_)
        rules = self.symbols.get(symbol)
        if rules is None:
            return []
        flipped: list[LeafSlot] = []
        for group in rules.flow.values():
            group.changed(print_, market, flipped)
        ctx = EventContext(symbol, print_.ts, FLOW, market, self.positions, flow=print_)
        return self._wake(rules, ctx, FLOW, flipped)

    def close_bars(self, until: datetime = END_OF_TIME) -> list[TriggeredAlert]:
        """The watermark reached ``until``: close every open bar that ends by then (at the end
        of a bounded input, every open bar)."""
        alerts: list[TriggeredAlert] = []
        for market in self.markets.values():
            if market.indicators.series:
                for bar in market.indicators.advance_to(until):
                    alerts.extend(self._on_bar(market, bar))
        return alerts

    def _on_bar(self, market: SymbolState, bar: BarClose) -> list[TriggeredAlert]:
        rules = self.symbols.get(market.symbol)
        if rules is None:
            return []
        ctx = EventContext(market.symbol, bar.end, BAR, market, self.positions, bar=bar)
        return self._wake(rules, ctx, f"{BAR}:{bar.timeframe}", [])

    def _wake(
        self, rules: SymbolRules, ctx: EventContext, kind: str, flipped: list[LeafSlot]
    ) -> list[TriggeredAlert]:
        """Evaluate the rules of the leaves that changed at this event (and fresh rules)."""
        memo: dict[LeafKey, Observation | None] = {}
        woken: set[str] = set()
        if rules.fresh:
            woken.update(rules.fresh)
            rules.fresh.clear()
        for slot in flipped:
            woken.update(slot.rule_ids)
        slots = rules.by_kind.get(kind)
        if slots:
            for slot in slots:
                leaf = slot.leaf
                assert leaf is not None
                holds = evaluate_leaf(leaf, ctx, slot.owner, memo) is not None
                if holds if leaf.type in PULSES else holds != slot.value:
                    woken.update(slot.rule_ids)
                slot.value = holds
        if not woken:
            return []
        alerts = []
        compiled, evaluate = self.rules, self._evaluate
        for rule_id in sorted(woken):
            alert = evaluate(compiled[rule_id], ctx, memo)
            if alert is not None:
                alerts.append(alert)
        return alerts

    # ------------------------------------------------------------ one rule at one event

    def _evaluate(
        self, rule: CompiledRule, ctx: EventContext, memo: dict[LeafKey, Observation | None]
    ) -> TriggeredAlert | None:
        if rule.retired or not rule.active:
            return None
        if rule.expires_at is not None and ctx.ts >= rule.expires_at:
            return None
        if rule.sessions:
            check = _SESSION_CHECKS[rule.sessions]
            if check is not None and not check(ctx.ts):
                # Outside the rule's sessions: not evaluated, its edge state stays as it was.
                # Its leaves may not change again when the session opens, so look at the rule
                # at the symbol's next event (the exhaustive engine evaluates it there anyway).
                rules = self.symbols.get(ctx.symbol)
                if rules is not None:
                    rules.fresh.add(rule.id)
                return None
        state = rule.edge(ctx.symbol)
        if rule.pulses_only and state.silent_until is not None and ctx.ts < state.silent_until:
            state.satisfied = False
            return None
        tree = rule.tree
        if isinstance(tree, ThresholdLeaf):  # the common one-leaf rule, without the tree walk
            # The leaf is the memo key evaluate_leaf gives it, (type, threshold): most woken
            # rules share their leaf's observation with the other rules of the event.
            observation = memo[tree] if tree in memo else evaluate_leaf(tree, ctx, "", memo)
            observations = None if observation is None else [observation]
            after = observation is not None and tree.type not in PULSES
        else:
            observations, after = evaluate_tree(tree, ctx, rule.user_id, memo)
        was_satisfied, state.satisfied = state.satisfied, after
        if observations is None or was_satisfied:
            return None
        if state.silent_until is not None and ctx.ts < state.silent_until:
            return None
        state.silent_until = ctx.ts + rule.cooldown
        if rule.once:
            rule.retired = True
        return build_alert(rule, ctx, observations)


class ExhaustiveShardEngine(ShardEngine):
    """Evaluates every rule of the symbol at every event: the reference the leaf tracking is
    checked against in the tests and measured against in bench/evaluate.py."""

    def _wake(
        self, rules: SymbolRules, ctx: EventContext, kind: str, flipped: list[LeafSlot]
    ) -> list[TriggeredAlert]:
        memo: dict[LeafKey, Observation | None] = {}
        rule_ids = {rule_id for slot in rules.leaves.values() for rule_id in slot.rule_ids}
        rules.fresh.clear()
        alerts = []
        for rule_id in sorted(rule_ids):
            alert = self._evaluate(self.rules[rule_id], ctx, memo)
            if alert is not None:
                alerts.append(alert)
        return alerts


def _quantity(market: SymbolState, name: str) -> float | None:
    if name == "spread_pct":
        bid, ask = market.bid, market.ask
        if bid is None or ask is None or bid + ask <= 0:
            return None
        return (ask - bid) / ((ask + bid) / 2) * 100
    if name == "price":
        return market.last_price
    value: float | None = getattr(market, name)
    return value


# How each threshold leaf's value depends on its quantity: a level above or below the
# threshold, or a cross of it between the previous and the current value.
_FLIP = {
    kind: "cross_up"
    if kind == "price_crosses_above"
    else "cross_down"
    if kind == "price_crosses_below"
    else "above"
    if kind.endswith("_above")
    else "below"
    for kind in THRESHOLD_QUANTITY
}


def _flipped(flip: str, index: SortedThresholds, old: float | None, new: float) -> list[LeafSlot]:
    """The threshold leaves of one ``_FLIP`` kind whose value changed when the quantity went
    old -> new: the slots between two bisections of the sorted thresholds."""
    thresholds = index.thresholds
    if flip == "above":  # value: new > t; starts false before the first value
        if old is None:  # t < new
            return index.slots[: bisect_left(thresholds, new)]
        low, high = (old, new) if old < new else (new, old)  # low <= t < high
        return index.slots[bisect_left(thresholds, low) : bisect_left(thresholds, high)]
    if flip == "below":  # value: new < t
        if old is None:  # new < t
            return index.slots[bisect_right(thresholds, new) :]
        low, high = (old, new) if old < new else (new, old)  # low < t <= high
        return index.slots[bisect_right(thresholds, low) : bisect_right(thresholds, high)]
    if old is None:
        return []
    if flip == "cross_up" and new > old:  # old <= t < new
        return index.slots[bisect_left(thresholds, old) : bisect_left(thresholds, new)]
    if flip == "cross_down" and new < old:  # old >= t > new
        return index.slots[bisect_right(thresholds, new) : bisect_right(thresholds, old)]
    return []


# A symbol as a word of a name: BRK.B, BF-B, ^SPX; "$NVDA" and "NVDA's" name NVDA.
_NAME_WORD = re.compile(r"[A-Za-z0-9^][\w.^/-]*")


@lru_cache(maxsize=4096)
def _named_symbols(name: str) -> frozenset[str]:
    return frozenset(word.rstrip("./-") for word in _NAME_WORD.findall(name))


def alert_title(symbol: str, name: str, scope: tuple[str, ...] | None) -> str:
    """``SYMBOL: name``, or the name alone where it names the symbol already.

    A name names the symbol when the symbol is one of its words (case-sensitive, as symbols
    are) and, for a watchlist, no other symbol of the watchlist is: "NVDA breakdown below 181"
    stays as it is, while "AAPL,MSFT dip" on MSFT becomes "MSFT: AAPL,MSFT dip". An option
    symbol, which has spaces, is named when the name contains it (spaces collapsed).
    """
    named = _named_symbols(name)
    if " " in symbol.strip():  # OCC pads the root with spaces; people write one
        names_it = " ".join(symbol.split()) in " ".join(name.split())
    else:
        names_it = symbol in named
    if names_it and scope is not None and len(scope) > 1:
        names_it = not any(word in scope for word in named if word != symbol)
    return (name if names_it else f"{symbol}: {name}")[:255]


def build_alert(
    rule: CompiledRule, ctx: EventContext, observations: list[Observation]
) -> TriggeredAlert:
    if len(observations) == 1:  # most alerts: what the merge below gives for one observation
        observation = observations[0]
        values = dict(observation.values)
        types = [observation.condition_type]
        message = observation.description[:4096]
    else:
        values = _merged_values(observations)
        types = list(dict.fromkeys(observation.condition_type for observation in observations))
        message = "; ".join(observation.description for observation in observations)[:4096]
    # Built from values the engine made itself: construct without re-validating.
    return TriggeredAlert.trusted(
        alert_id=alert_id(rule.id, rule.version, ctx.ts, ctx.symbol),
        rule_id=rule.id,
        rule_version=rule.version,
        user_id=rule.user_id,
        symbol=ctx.symbol,
        priority=rule.priority,
        title=alert_title(ctx.symbol, rule.name, rule.scope),
        message=message,
        triggered_at=ctx.ts,
        condition_types=types,
        values=values,
    )


def _merged_values(observations: list[Observation]) -> dict[str, float | str | None]:
    """The observations' values in one dict; a name two observations saw with different values
    is kept once per observation, prefixed with its condition type (and its rank among equal
    types)."""
    values: dict[str, float | str | None] = {}
    clashing: set[str] = set()
    for observation in observations:
        for name, value in observation.values.items():
            if name in values and values[name] != value:
                clashing.add(name)
            values.setdefault(name, value)
    if not clashing:
        return values
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
    return values


# ---------------------------------------------------------------- the evaluate step's state

EvaluateInput = ShardInput | Progress
EvaluateOutput = TriggeredAlert | Watermark | DeadLetter
WATERMARK_INTERVAL_S = 0.5  # a shard's watermark goes to every user shard at most this often


@dataclass
class EvaluateShard:
    """Everything one evaluation key keeps: its ShardEngine, the progress of every input
    partition, and the market events held until the reference topics are loaded.

    Market events are held until every rules and positions partition reported being caught up
    (``ReferenceGate``): a marker follows its partition's records, so by then every rule present
    at start-up has reached this shard, in 1 process or N. After each batch the open bars that end
    before the watermark minus the allowed lateness close, and the shard's ``Watermark`` follows
    its alerts (pipeline/event_time.py).
    """

    market_parts: frozenset[str]
    reference_parts: frozenset[str]
    lateness: timedelta
    net: SafetyNet
    name: str = ""  # its key, learned from the first marker (markers are addressed)
    engine: ShardEngine = field(default_factory=ShardEngine)
    gate: ReferenceGate = field(init=False)
    clock: WatermarkJoin = field(init=False)
    held: list[MarketEvent] = field(default_factory=list)
    bars_closed_to: datetime | None = None
    sent: Watermark | None = None
    sent_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.gate = ReferenceGate(self.reference_parts)
        self.clock = WatermarkJoin(self.market_parts)

    def expect(self, market_parts: frozenset[str], reference_parts: frozenset[str]) -> None:
        """After a restart: the partitions of this run (the gate, once open, stays open)."""
        self.market_parts, self.reference_parts = market_parts, reference_parts
        self.gate.expected = reference_parts
        self.clock.expect(market_parts)

    def process(self, batch: Iterable[EvaluateInput], now: float) -> list[EvaluateOutput]:
        """Rule and position changes first, then market events in ts order, then the bars the
        watermark closed; the watermark last (when due)."""
        out: list[EvaluateOutput] = []
        events: list[MarketEvent] = []
        for item in batch:
            if isinstance(item, Tick | OptionsFlow):
                events.append(item)
            elif isinstance(item, Progress):
                self.name = item.to
                self.gate.observe(item)
                self.clock.observe(item.part, item.newest, caught_up=item.caught_up, idle=item.idle)
            else:
                out.extend(self.net.run(item, self._change))
        if not self.gate.is_open:
            self.held.extend(events)
            return out
        if self.held:
            events, self.held = self.held + events, []
        events.sort(key=lambda event: event.ts)
        out.extend(self.net.run_each(events, self._event))
        cutoff = self._cutoff()
        if cutoff is not None and (self.bars_closed_to is None or cutoff > self.bars_closed_to):
            self.bars_closed_to = cutoff
            out.extend(self.engine.close_bars(cutoff))
        out.extend(self.watermark_due(now))
        return out

    def watermark_due(self, now: float, *, final: bool = False) -> list[Watermark]:
        """This shard's watermark, when it changed and the last one left long enough ago (or
        this is the ``final`` one, at the end of a bounded input)."""
        if not self.name or not self.gate.is_open:
            return []  # no marker yet: nothing to say, and no name to say it under
        if not final and now - self.sent_at < WATERMARK_INTERVAL_S:
            return []
        current = Watermark(self.name, floor_second(self._cutoff()), self.clock.caught_up)
        if current == self.sent:
            return []
        self.sent, self.sent_at = current, now
        return [current]

    def next_watermark_at(self) -> float | None:
        """When a withheld watermark may go (wall-clock seconds), or None."""
        if not self.name or not self.gate.is_open:
            return None
        current = Watermark(self.name, floor_second(self._cutoff()), self.clock.caught_up)
        return None if current == self.sent else self.sent_at + WATERMARK_INTERVAL_S

    def close_all(self, now: float) -> list[EvaluateOutput]:
        """End of a bounded input: every held event is evaluated, every open bar closes, and
        the last watermark goes out whatever the interval (so the run's end is the same
        whenever it comes)."""
        out: list[EvaluateOutput] = []
        if self.held:
            self.gate.is_open = True
            events, self.held = sorted(self.held, key=lambda event: event.ts), []
            out.extend(self.net.run_each(events, self._event))
        out.extend(self.engine.close_bars())
        out.extend(self.watermark_due(now, final=True))
        return out

    def _cutoff(self) -> datetime | None:
        watermark = self.clock.watermark
        return None if watermark is None else watermark - self.lateness

    def _change(self, item: ShardInput) -> list[TriggeredAlert]:
        self.engine.process([item])
        return []

    def _event(self, event: MarketEvent) -> list[TriggeredAlert]:
        if isinstance(event, Tick):
            return self.engine.on_tick(event)
        return self.engine.on_flow(event)
