"""What each condition type says: its parameters, validated (ARCHITECTURE.md §5).

A condition tree is nested ``{"all": [...]}`` / ``{"any": [...]}`` nodes over leaf conditions;
a leaf's ``type`` selects its model here. How a leaf is evaluated lives in
``pipeline/evaluate/conditions.py``; docs/rules.md gives every definition with an example.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.fields import NUMBER

TIMEFRAME_PATTERN = re.compile(r"([1-9][0-9]{0,3})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def timeframe_seconds(timeframe: str) -> int:
    """``5m`` -> 300. Bars are ``[floor(ts, timeframe), +timeframe)`` in UTC."""
    match = TIMEFRAME_PATTERN.fullmatch(timeframe)
    if match is None:
        raise ValueError(f"not a timeframe: {timeframe!r} (use e.g. 30s, 1m, 5m, 1h, 1d)")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _valid_timeframe(value: str) -> str:
    seconds = timeframe_seconds(value)
    if seconds > 7 * 86400:
        raise ValueError("timeframe must be at most 7d")
    return value


# Numbers are JSON numbers, never booleans (pipeline/fields.py); NaN and infinities are refused
# by ConditionSpec's allow_inf_nan=False. Parameters are only compared with what the market
# data makes, so they need no magnitude bound of their own.
Timeframe = Annotated[
    str,
    AfterValidator(_valid_timeframe),
    Field(json_schema_extra={"pattern": f"^{TIMEFRAME_PATTERN.pattern}$"}),
]
Period = Annotated[int, Field(ge=1, le=1000), NUMBER]
Positive = Annotated[float, Field(gt=0), NUMBER]
Percent = Annotated[float, Field(gt=0, le=10000), NUMBER]
Finite = Annotated[float, NUMBER]
NonNegative = Annotated[float, Field(ge=0), NUMBER]
Days = Annotated[int, Field(ge=0, le=3650), NUMBER]
WindowSeconds = Annotated[int, Field(ge=1, le=31 * 86400), NUMBER]
Side = Literal["ask", "bid", "mid", "above_ask", "below_bid"]
# How a side reads in a sentence: alert messages and rule names say it the same way.
SIDE_WORDS: dict[str, str] = {
    "ask": "at the ask",
    "bid": "at the bid",
    "mid": "at mid",
    "above_ask": "above the ask",
    "below_bid": "below the bid",
}


class ConditionSpec(BaseModel):
    """Base of one leaf condition; its ``type`` field selects the model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------- price, per event


class PriceAbove(ConditionSpec):
    type: Literal["price_above"]
    threshold: Positive


class PriceBelow(ConditionSpec):
    type: Literal["price_below"]
    threshold: Positive


class PriceCrossesAbove(ConditionSpec):
    type: Literal["price_crosses_above"]
    threshold: Positive


class PriceCrossesBelow(ConditionSpec):
    type: Literal["price_crosses_below"]
    threshold: Positive


class PercentMoveUp(ConditionSpec):
    """Price at least ``percent`` above the lowest price within ``window_seconds``."""

    type: Literal["percent_move_up"]
    percent: Percent
    window_seconds: WindowSeconds


class PercentMoveDown(ConditionSpec):
    """Price at least ``percent`` below the highest price within ``window_seconds``."""

    type: Literal["percent_move_down"]
    percent: Percent
    window_seconds: WindowSeconds


# ---------------------------------------------------------------- bar indicators


class _BarCondition(ConditionSpec):
    timeframe: Timeframe = "1m"


class RsiAbove(_BarCondition):
    type: Literal["rsi_above"]
    threshold: Annotated[float, Field(gt=0, lt=100), NUMBER]
    period: Period = 14


class RsiBelow(_BarCondition):
    type: Literal["rsi_below"]
    threshold: Annotated[float, Field(gt=0, lt=100), NUMBER]
    period: Period = 14


class PriceCrossesAboveSma(_BarCondition):
    type: Literal["price_crosses_above_sma"]
    period: Period = 20


class PriceCrossesBelowSma(_BarCondition):
    type: Literal["price_crosses_below_sma"]
    period: Period = 20


class _SmaCross(_BarCondition):
    fast: Period = 50
    slow: Period = 200

    @model_validator(mode="after")
    def _fast_below_slow(self) -> Any:
        if self.fast >= self.slow:
            raise ValueError(f"fast period ({self.fast}) must be shorter than slow ({self.slow})")
        return self


class SmaCrossUp(_SmaCross):
    type: Literal["sma_cross_up"]


class SmaCrossDown(_SmaCross):
    type: Literal["sma_cross_down"]


class BollingerBreakUpper(_BarCondition):
    type: Literal["bollinger_break_upper"]
    period: Annotated[int, Field(ge=2, le=1000), NUMBER] = 20
    stddev: Annotated[float, Field(gt=0, le=10), NUMBER] = 2.0


class BollingerBreakLower(_BarCondition):
    type: Literal["bollinger_break_lower"]
    period: Annotated[int, Field(ge=2, le=1000), NUMBER] = 20
    stddev: Annotated[float, Field(gt=0, le=10), NUMBER] = 2.0


class NewHigh(_BarCondition):
    """The bar's close is above each of the previous ``period`` closes."""

    type: Literal["new_high"]
    period: Period = 20


class NewLow(_BarCondition):
    type: Literal["new_low"]
    period: Period = 20


class VolumeSpike(_BarCondition):
    """Bar volume >= ``multiple`` x the average volume of the previous ``period`` bars."""

    type: Literal["volume_spike"]
    multiple: Annotated[float, Field(gt=0, le=1000), NUMBER] = 3.0
    period: Period = 20


# ---------------------------------------------------------------- options, per tick


class _Level(ConditionSpec):
    threshold: Finite


class IvAbove(_Level):
    type: Literal["iv_above"]


class IvBelow(_Level):
    type: Literal["iv_below"]


class IvChangePct(ConditionSpec):
    """IV moved by at least ``percent`` (signed: negative means a drop) over the window."""

    type: Literal["iv_change_pct"]
    percent: Annotated[float, Field(ge=-100, le=10000), NUMBER]
    window_seconds: WindowSeconds

    @model_validator(mode="after")
    def _nonzero(self) -> Any:
        if self.percent == 0:
            raise ValueError("percent must not be 0 (positive for a rise, negative for a drop)")
        return self


class IvRankAbove(ConditionSpec):
    """IV rank in the range of daily closing IVs over ``lookback_days`` days, 0-100."""

    type: Literal["iv_rank_above"]
    threshold: Annotated[float, Field(ge=0, le=100), NUMBER]
    lookback_days: Annotated[int, Field(ge=2, le=2000), NUMBER] = 252


class DeltaAbove(_Level):
    type: Literal["delta_above"]


class DeltaBelow(_Level):
    type: Literal["delta_below"]


class GammaAbove(_Level):
    type: Literal["gamma_above"]


class GammaBelow(_Level):
    type: Literal["gamma_below"]


class ThetaAbove(_Level):
    type: Literal["theta_above"]


class ThetaBelow(_Level):
    type: Literal["theta_below"]


class VegaAbove(_Level):
    type: Literal["vega_above"]


class VegaBelow(_Level):
    type: Literal["vega_below"]


class SpreadPctAbove(ConditionSpec):
    """(ask - bid) / mid x 100 above ``threshold``."""

    type: Literal["spread_pct_above"]
    threshold: Percent


# ---------------------------------------------------------------- options flow, per print


class FlowFilters(ConditionSpec):
    """Filters every flow condition accepts; a print that fails one is not considered."""

    right: Literal["C", "P"] | None = None
    sides: tuple[Side, ...] | None = None
    min_days_to_expiry: Days | None = None
    max_days_to_expiry: Days | None = None
    moneyness: Literal["itm", "otm", "atm"] | None = None
    atm_band_pct: Annotated[float, Field(gt=0, le=50), NUMBER] = 1.0
    min_size: Annotated[int, Field(ge=1), NUMBER] | None = None
    # "puts expiring this week": the week of each print (Monday to Sunday), not of the rule's
    # creation, so a standing rule means the same thing every week.
    expires_this_week: bool | None = None

    @model_validator(mode="after")
    def _expiry_range(self) -> Any:
        low, high = self.min_days_to_expiry, self.max_days_to_expiry
        if low is not None and high is not None and low > high:
            raise ValueError("min_days_to_expiry must not exceed max_days_to_expiry")
        return self


class _FlowCondition(FlowFilters):
    pass


class UnusualVolume(_FlowCondition):
    """A print of a contract whose day volume / open interest >= ``ratio``."""

    type: Literal["unusual_volume"]
    ratio: Positive = 2.0


class FlowPremiumAbove(_FlowCondition):
    type: Literal["flow_premium_above"]
    threshold: Positive


class FlowSweep(_FlowCondition):
    type: Literal["flow_sweep"]
    min_premium: NonNegative = 0.0


class FlowBlock(_FlowCondition):
    type: Literal["flow_block"]
    min_premium: NonNegative = 0.0


class FlowRepeatedHits(_FlowCondition):
    """At least ``count`` prints on one contract within ``window_seconds`` (this one included)."""

    type: Literal["flow_repeated_hits"]
    count: Annotated[int, Field(ge=2, le=1000), NUMBER] = 3
    window_seconds: WindowSeconds = 300


class PutCallPremiumRatio(_FlowCondition):
    """Put premium / call premium over ``window_seconds``, compared with ``threshold``."""

    type: Literal["put_call_premium_ratio"]
    threshold: Positive
    comparison: Literal["above", "below"] = "above"
    window_seconds: WindowSeconds = 3600


# ---------------------------------------------------------------- positions


class PositionPnlPctAbove(_Level):
    type: Literal["position_pnl_pct_above"]


class PositionPnlPctBelow(_Level):
    type: Literal["position_pnl_pct_below"]


class PositionPnlAbove(_Level):
    type: Literal["position_pnl_above"]


class PositionPnlBelow(_Level):
    type: Literal["position_pnl_below"]


class ExpiryWithinDays(ConditionSpec):
    """The option expires within ``days`` NYSE trading days (0 = expires today)."""

    type: Literal["expiry_within_days"]
    days: Days


# ---------------------------------------------------------------- the tree

LeafCondition = (
    PriceAbove
    | PriceBelow
    | PriceCrossesAbove
    | PriceCrossesBelow
    | PercentMoveUp
    | PercentMoveDown
    | RsiAbove
    | RsiBelow
    | PriceCrossesAboveSma
    | PriceCrossesBelowSma
    | SmaCrossUp
    | SmaCrossDown
    | BollingerBreakUpper
    | BollingerBreakLower
    | NewHigh
    | NewLow
    | VolumeSpike
    | IvAbove
    | IvBelow
    | IvChangePct
    | IvRankAbove
    | DeltaAbove
    | DeltaBelow
    | GammaAbove
    | GammaBelow
    | ThetaAbove
    | ThetaBelow
    | VegaAbove
    | VegaBelow
    | SpreadPctAbove
    | UnusualVolume
    | FlowPremiumAbove
    | FlowSweep
    | FlowBlock
    | FlowRepeatedHits
    | PutCallPremiumRatio
    | PositionPnlPctAbove
    | PositionPnlPctBelow
    | PositionPnlAbove
    | PositionPnlBelow
    | ExpiryWithinDays
)
LEAF_CONDITIONS: tuple[type[ConditionSpec], ...] = get_args(LeafCondition)


def condition_type(model: type[ConditionSpec]) -> str:
    return str(get_args(model.model_fields["type"].annotation)[0])


CONDITION_MODELS: dict[str, type[ConditionSpec]] = {
    condition_type(model): model for model in LEAF_CONDITIONS
}
BAR_CONDITIONS = frozenset(
    name for name, model in CONDITION_MODELS.items() if issubclass(model, _BarCondition)
)
FLOW_CONDITIONS = frozenset(
    name for name, model in CONDITION_MODELS.items() if issubclass(model, _FlowCondition)
)
POSITION_CONDITIONS = frozenset(
    name for name in CONDITION_MODELS if name.startswith(("position_", "expiry_"))
)


def _node_tag(node: Any) -> str | None:
    if isinstance(node, dict):
        if "all" in node:
            return "all"
        if "any" in node:
            return "any"
        kind = node.get("type")
        return kind if isinstance(kind, str) else None
    if isinstance(node, AllOf):
        return "all"
    if isinstance(node, AnyOf):
        return "any"
    return getattr(node, "type", None)


MAX_CONDITION_DEPTH = 8  # levels of all/any in one rule (docs/rules.md)
CONDITION_DEPTH_MESSAGE = "nested {depth} levels deep; at most {limit} levels of all/any"


class AllOf(ConditionSpec):
    all: Annotated[list[ConditionNode], Field(min_length=1, max_length=64)]


class AnyOf(ConditionSpec):
    any: Annotated[list[ConditionNode], Field(min_length=1, max_length=64)]


def _tagged_leaves() -> Any:
    """The leaves as one union, each tagged by its type, for the discriminator below."""
    union: Any = None
    for model in LEAF_CONDITIONS:
        tagged = Annotated[model, Tag(condition_type(model))]  # type: ignore[valid-type]
        union = tagged if union is None else union | tagged
    return union


_LEAF_UNION = _tagged_leaves()

ConditionNode = Annotated[
    Annotated[AllOf, Tag("all")] | Annotated[AnyOf, Tag("any")] | _LEAF_UNION,  # type: ignore[valid-type]
    Discriminator(
        _node_tag,
        custom_error_type="unknown_condition",
        custom_error_message="unknown condition type (see docs/rules.md for the list)",
    ),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()


def iter_conditions(node: ConditionNode) -> list[LeafCondition]:
    """The leaf conditions of a condition tree, depth first."""
    if isinstance(node, AllOf):
        return [leaf for child in node.all for leaf in iter_conditions(child)]
    if isinstance(node, AnyOf):
        return [leaf for child in node.any for leaf in iter_conditions(child)]
    return [node]


def tree_depth(node: Any) -> int:
    """Levels of all/any above the deepest leaf (0 for a leaf), of a parsed tree or of its JSON.

    Walks with a stack of its own, so a hostile tree cannot exhaust Python's.
    """
    deepest = 0
    pending = [(node, 0)]
    while pending:
        node, above = pending.pop()
        children = _children(node)
        if children is not None:
            deepest = max(deepest, above + 1)
            pending.extend((child, above + 1) for child in children)
    return deepest


def _children(node: Any) -> list[Any] | None:
    """The children of an all/any group (its JSON or its model); None for anything else."""
    if isinstance(node, AllOf):
        return node.all
    if isinstance(node, AnyOf):
        return node.any
    if isinstance(node, dict):
        tag = _node_tag(node)
        if tag in ("all", "any"):
            children = node[tag]
            return children if isinstance(children, list) else []
    return None


def _shallow_enough(node: Any) -> Any:
    depth = tree_depth(node)
    if depth > MAX_CONDITION_DEPTH:
        raise PydanticCustomError(
            "condition_depth",
            CONDITION_DEPTH_MESSAGE,
            {"depth": depth, "limit": MAX_CONDITION_DEPTH},
        )
    return node


# A rule's condition tree. Its depth is checked before anything in it is validated, so a deep
# tree is refused for its depth, not for whatever its deepest leaf gets wrong.
ConditionTree = Annotated[
    ConditionNode,
    BeforeValidator(_shallow_enough),
    Field(
        description=(
            'A leaf condition, or {"all": [...]} / {"any": [...]} groups of 1 to 64 children '
            f"nested at most {MAX_CONDITION_DEPTH} levels deep (docs/rules.md)"
        )
    ),
]


def bar_length(timeframe: str) -> timedelta:
    return timedelta(seconds=timeframe_seconds(timeframe))
