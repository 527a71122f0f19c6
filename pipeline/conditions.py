"""Leaf conditions: how each condition type reads the market and says what it saw.

Each evaluator takes the condition's parameters and the market context of one event and returns
an Observation when the condition holds at that event, None otherwise. Level conditions
(``price_above``) hold while the level holds; crossing conditions hold only at the event that
crosses, so they re-arm by themselves (ARCHITECTURE.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.condition_specs import (
    AllOf,
    AnyOf,
    ConditionNode,
    PriceAbove,
    PriceBelow,
    PriceCrossesAbove,
    PriceCrossesBelow,
)


@dataclass(frozen=True, slots=True)
class MarketContext:
    """What one event tells a rule about its symbol."""

    symbol: str
    ts: datetime
    price: float | None
    previous_price: float | None


@dataclass(frozen=True, slots=True)
class Observation:
    """Why a condition holds: the values seen and a sentence for people."""

    condition_type: str
    values: dict[str, float | str | None] = field(default_factory=dict)
    description: str = ""


Evaluator = Callable[[Any, MarketContext], Observation | None]


def _price_above(condition: PriceAbove, ctx: MarketContext) -> Observation | None:
    if ctx.price is None or not ctx.price > condition.threshold:
        return None
    return Observation(
        condition.type,
        {"price": ctx.price, "threshold": condition.threshold},
        f"price {ctx.price:,.2f} is above {condition.threshold:,.2f}",
    )


def _price_below(condition: PriceBelow, ctx: MarketContext) -> Observation | None:
    if ctx.price is None or not ctx.price < condition.threshold:
        return None
    return Observation(
        condition.type,
        {"price": ctx.price, "threshold": condition.threshold},
        f"price {ctx.price:,.2f} is below {condition.threshold:,.2f}",
    )


def _price_crosses_above(condition: PriceCrossesAbove, ctx: MarketContext) -> Observation | None:
    previous, price = ctx.previous_price, ctx.price
    if previous is None or price is None:
        return None
    if not previous <= condition.threshold < price:
        return None
    return Observation(
        condition.type,
        {"price": price, "previous_price": previous, "threshold": condition.threshold},
        f"price {price:,.2f} crossed above {condition.threshold:,.2f} (from {previous:,.2f})",
    )


def _price_crosses_below(condition: PriceCrossesBelow, ctx: MarketContext) -> Observation | None:
    previous, price = ctx.previous_price, ctx.price
    if previous is None or price is None:
        return None
    if not previous >= condition.threshold > price:
        return None
    return Observation(
        condition.type,
        {"price": price, "previous_price": previous, "threshold": condition.threshold},
        f"price {price:,.2f} crossed below {condition.threshold:,.2f} (from {previous:,.2f})",
    )


EVALUATORS: dict[str, Evaluator] = {
    "price_above": _price_above,
    "price_below": _price_below,
    "price_crosses_above": _price_crosses_above,
    "price_crosses_below": _price_crosses_below,
}


def evaluate_tree(node: ConditionNode, ctx: MarketContext) -> list[Observation] | None:
    """The observations that satisfy ``node``, or None when it does not hold.

    ``all`` needs every child and reports all of them; ``any`` reports every child that holds
    (not just the first), so an alert shows everything that was true at its event.
    """
    if isinstance(node, AllOf):
        observed: list[Observation] = []
        for child in node.all:
            child_observed = evaluate_tree(child, ctx)
            if child_observed is None:
                return None
            observed.extend(child_observed)
        return observed
    if isinstance(node, AnyOf):
        held = [obs for child in node.any if (obs := evaluate_tree(child, ctx)) is not None]
        return [o for child_obs in held for o in child_obs] if held else None
    observation = EVALUATORS[node.type](node, ctx)
    return None if observation is None else [observation]
