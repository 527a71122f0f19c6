"""EVALUATE: the rules of one shard against the market events of its symbols.

One ShardEngine holds every rule routed to its shard and the little market state the rules need
(the previous price per symbol). It is plain state, snapshotted whole by the engine wrapper.
Semantics (ARCHITECTURE.md §5): a rule fires on the event where its condition tree goes from not
satisfied to satisfied, then stays silent until ``triggered_at + cooldown_seconds`` in event
time; ``once`` rules retire after firing; expired or inactive rules are not evaluated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pipeline.conditions import MarketContext, Observation, evaluate_tree
from pipeline.ids import alert_id
from pipeline.messages import (
    OptionsFlow,
    Position,
    PositionClosed,
    Rule,
    RuleTombstone,
    Tick,
    TriggeredAlert,
)

MarketEvent = Tick | OptionsFlow
ShardInput = Rule | RuleTombstone | Position | PositionClosed | MarketEvent


@dataclass
class SymbolRuleState:
    """Edge and cooldown memory of one rule on one symbol."""

    satisfied: bool = False
    silent_until: datetime | None = None


@dataclass
class RuleSlot:
    rule: Rule
    retired: bool = False
    per_symbol: dict[str, SymbolRuleState] = field(default_factory=dict)


@dataclass
class ShardEngine:
    rules: dict[str, RuleSlot] = field(default_factory=dict)
    by_symbol: dict[str, set[str]] = field(default_factory=dict)
    wildcard: set[str] = field(default_factory=set)
    last_price: dict[str, float] = field(default_factory=dict)
    positions: dict[tuple[str, str], Position] = field(default_factory=dict)

    # ------------------------------------------------------------ input

    def process(self, batch: list[ShardInput]) -> list[TriggeredAlert]:
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
            alerts.extend(self.on_event(event))
        return alerts

    def upsert(self, rule: Rule) -> None:
        slot = self.rules.get(rule.id)
        if slot is not None:
            if slot.rule == rule or slot.rule.version > rule.version:
                return  # a replayed or stale copy: keep the state it built
            self._unindex(slot.rule)
        self.rules[rule.id] = RuleSlot(rule)
        if rule.is_wildcard:
            self.wildcard.add(rule.id)
        else:
            for symbol in rule.scope:
                self.by_symbol.setdefault(symbol, set()).add(rule.id)

    def remove(self, rule_id: str) -> None:
        slot = self.rules.pop(rule_id, None)
        if slot is not None:
            self._unindex(slot.rule)

    def update_position(self, position: Position) -> None:
        key = (position.user_id, position.symbol)
        current = self.positions.get(key)
        if current is not None and current.ts > position.ts:
            return
        if position.quantity == 0:
            self.positions.pop(key, None)
        else:
            self.positions[key] = position

    def _unindex(self, rule: Rule) -> None:
        self.wildcard.discard(rule.id)
        for symbol in rule.scope:
            ids = self.by_symbol.get(symbol)
            if ids is not None:
                ids.discard(rule.id)
                if not ids:
                    del self.by_symbol[symbol]

    # ------------------------------------------------------------ evaluation

    def on_event(self, event: MarketEvent) -> list[TriggeredAlert]:
        symbol = event.symbol if isinstance(event, Tick) else event.underlying
        price = event.price if isinstance(event, Tick) else None
        ctx = MarketContext(symbol, event.ts, price, self.last_price.get(symbol))
        if price is not None:
            self.last_price[symbol] = price
        candidates = self.by_symbol.get(symbol, set()) | self.wildcard
        alerts = []
        for rule_id in sorted(candidates):
            alert = self._evaluate(self.rules[rule_id], ctx)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _evaluate(self, slot: RuleSlot, ctx: MarketContext) -> TriggeredAlert | None:
        rule = slot.rule
        if slot.retired or not rule.active:
            return None
        if rule.expires_at is not None and ctx.ts >= rule.expires_at:
            return None
        state = slot.per_symbol.setdefault(ctx.symbol, SymbolRuleState())
        observations = evaluate_tree(rule.conditions, ctx)
        was_satisfied, state.satisfied = state.satisfied, observations is not None
        if observations is None or was_satisfied:
            return None
        if state.silent_until is not None and ctx.ts < state.silent_until:
            return None
        state.silent_until = ctx.ts + timedelta(seconds=rule.cooldown_seconds)
        if rule.mode == "once":
            slot.retired = True
        return build_alert(rule, ctx, observations)


def build_alert(rule: Rule, ctx: MarketContext, observations: list[Observation]) -> TriggeredAlert:
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
        message="; ".join(observation.description for observation in observations),
        triggered_at=ctx.ts,
        condition_types=types,
        values=values,
    )
