"""Builders for unit tests: short, explicit messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.messages import Rule, Tick, TriggeredAlert

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def at(seconds: float, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def tick(symbol: str, price: float, seconds: float) -> Tick:
    return Tick(symbol=symbol, price=price, ts=at(seconds))


def rule(conditions: dict[str, Any], **fields: Any) -> Rule:
    base: dict[str, Any] = {
        "id": "r-1",
        "user_id": "u-1",
        "name": "test rule",
        "symbol": "AAPL",
        "cooldown_seconds": 0,
        "conditions": conditions,
    }
    base.update(fields)
    return Rule.model_validate(base)


def alert(
    seconds: float,
    *,
    rule_id: str = "r-1",
    symbol: str = "AAPL",
    priority: str = "MEDIUM",
    base: datetime = T0,
    types: tuple[str, ...] = ("price_above",),
    message: str = "something happened",
) -> TriggeredAlert:
    return TriggeredAlert(
        alert_id=f"a-{rule_id}-{symbol}-{seconds}",
        rule_id=rule_id,
        rule_version=1,
        user_id="u-1",
        symbol=symbol,
        priority=priority,
        title=f"{symbol}: {rule_id}",
        message=message,
        triggered_at=at(seconds, base),
        condition_types=list(types),
        values={"price": 1.0},
    )
