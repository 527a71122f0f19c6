"""Leaf conditions: how each condition type reads the market at one event.

An evaluator takes a leaf (its parameters) and the context of one event of the rule's symbol — a
tick, a flow print or a bar close — and returns an Observation when the leaf holds there.

Two kinds of leaves (ARCHITECTURE.md §5):
- *level* leaves hold while a level holds (``price_above``, ``rsi_below``, ``iv_above``...);
- *pulse* leaves hold only at the event that makes them true (crosses, new highs, volume
  spikes, flow prints); at any other event they are false, so they re-arm by themselves.

Each leaf type is also *sensitive* to one kind of event: price, option and position leaves to
ticks, indicator leaves to the bar closes of their timeframe, flow leaves to flow prints. A
rule's value can only change at events its leaves are sensitive to, which is what lets the
engine skip a rule at every other event.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from pipeline.evaluate import specs as c
from pipeline.evaluate.indicators import BarClose, IndicatorSpec
from pipeline.evaluate.market_state import SymbolState, passes_filters
from pipeline.evaluate.specs import AllOf, AnyOf, ConditionNode
from pipeline.market_calendar import parse_occ, trading_days_until
from pipeline.messages import OptionsFlow, Position, derived_fields

TICK, FLOW, BAR = "tick", "flow", "bar"


@dataclass(slots=True)
class EventContext:
    """One event of a symbol, with the symbol's state as of that event."""

    symbol: str
    ts: datetime
    kind: str
    state: SymbolState
    positions: Mapping[tuple[str, str], Position]
    flow: OptionsFlow | None = None
    bar: BarClose | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    """Why a condition holds: the values seen and a sentence for people."""

    condition_type: str
    values: Mapping[str, float | str | None] = field(default_factory=dict)
    description: str = ""


Evaluator = Callable[[Any, EventContext, str], Observation | None]
EVALUATORS: dict[str, Evaluator] = {}
PULSES: set[str] = set()
SENSITIVITY: dict[str, str] = {}


def _evaluator(
    type_: str, *, sensitive_to: str, pulse: bool = False
) -> Callable[[Evaluator], Evaluator]:
    def register(function: Evaluator) -> Evaluator:
        EVALUATORS[type_] = function
        SENSITIVITY[type_] = sensitive_to
        if pulse:
            PULSES.add(type_)
        return function

    return register


def _num(value: float) -> str:
    return f"{value:,.2f}" if abs(value) >= 1 or value == 0 else f"{value:.4g}"


# ---------------------------------------------------------------- price


@_evaluator("price_above", sensitive_to=TICK)
def _price_above(leaf: c.PriceAbove, ctx: EventContext, owner: str) -> Observation | None:
    price = ctx.state.last_price
    if price is None or not price > leaf.threshold:
        return None
    values = {"price": price, "threshold": leaf.threshold}
    return Observation(leaf.type, values, f"price {_num(price)} is above {_num(leaf.threshold)}")


@_evaluator("price_below", sensitive_to=TICK)
def _price_below(leaf: c.PriceBelow, ctx: EventContext, owner: str) -> Observation | None:
    price = ctx.state.last_price
    if price is None or not price < leaf.threshold:
        return None
    values = {"price": price, "threshold": leaf.threshold}
    return Observation(leaf.type, values, f"price {_num(price)} is below {_num(leaf.threshold)}")


@_evaluator("price_crosses_above", sensitive_to=TICK, pulse=True)
def _price_crosses_above(
    leaf: c.PriceCrossesAbove, ctx: EventContext, owner: str
) -> Observation | None:
    previous, price = ctx.state.previous_price, ctx.state.last_price
    if ctx.kind != TICK or previous is None or price is None:
        return None
    if not previous <= leaf.threshold < price:
        return None
    return Observation(
        leaf.type,
        {"price": price, "previous_price": previous, "threshold": leaf.threshold},
        f"price crossed above {_num(leaf.threshold)}, from {_num(previous)} to {_num(price)}",
    )


@_evaluator("price_crosses_below", sensitive_to=TICK, pulse=True)
def _price_crosses_below(
    leaf: c.PriceCrossesBelow, ctx: EventContext, owner: str
) -> Observation | None:
    previous, price = ctx.state.previous_price, ctx.state.last_price
    if ctx.kind != TICK or previous is None or price is None:
        return None
    if not previous >= leaf.threshold > price:
        return None
    return Observation(
        leaf.type,
        {"price": price, "previous_price": previous, "threshold": leaf.threshold},
        f"price crossed below {_num(leaf.threshold)}, from {_num(previous)} to {_num(price)}",
    )


@_evaluator("percent_move_up", sensitive_to=TICK)
def _percent_move_up(leaf: c.PercentMoveUp, ctx: EventContext, owner: str) -> Observation | None:
    price, window = ctx.state.last_price, ctx.state.extrema.get(leaf.window_seconds)
    low = window.low if window else None
    if price is None or not low:
        return None
    move = (price - low) / low * 100
    if move < leaf.percent:
        return None
    return Observation(
        leaf.type,
        {"price": price, "low": low, "move_pct": move, "percent": leaf.percent},
        f"price {_num(price)} is up {move:.2f}% from the "
        f"{_duration(leaf.window_seconds)} low {_num(low)}",
    )


@_evaluator("percent_move_down", sensitive_to=TICK)
def _percent_move_down(
    leaf: c.PercentMoveDown, ctx: EventContext, owner: str
) -> Observation | None:
    price, window = ctx.state.last_price, ctx.state.extrema.get(leaf.window_seconds)
    high = window.high if window else None
    if price is None or not high:
        return None
    move = (high - price) / high * 100
    if move < leaf.percent:
        return None
    return Observation(
        leaf.type,
        {"price": price, "high": high, "move_pct": -move, "percent": leaf.percent},
        f"price {_num(price)} is down {move:.2f}% from the "
        f"{_duration(leaf.window_seconds)} high {_num(high)}",
    )


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ---------------------------------------------------------------- bar indicators


@cache
def _spec(kind: str, timeframe: str, period: int, stddev: float = 0.0) -> IndicatorSpec:
    """Specs are looked up at every bar close: build (and validate) each one once."""
    return IndicatorSpec(kind, timeframe, period, stddev)


def indicator_specs(leaf: Any) -> list[IndicatorSpec]:
    """The indicators a leaf reads; the engine acquires them per symbol."""
    tf = getattr(leaf, "timeframe", None)
    if tf is None:
        return []
    kind = leaf.type
    if kind in ("rsi_above", "rsi_below"):
        return [_spec("rsi", tf, leaf.period)]
    if kind in ("price_crosses_above_sma", "price_crosses_below_sma"):
        return [_spec("sma", tf, leaf.period)]
    if kind in ("sma_cross_up", "sma_cross_down"):
        return [_spec("sma", tf, leaf.fast), _spec("sma", tf, leaf.slow)]
    if kind in ("bollinger_break_upper", "bollinger_break_lower"):
        return [_spec("bbands", tf, leaf.period, leaf.stddev)]
    if kind == "new_high":
        return [_spec("highest", tf, leaf.period)]
    if kind == "new_low":
        return [_spec("lowest", tf, leaf.period)]
    if kind == "volume_spike":
        return [_spec("volume_avg", tf, leaf.period)]
    return []


def _at_bar(ctx: EventContext, timeframe: str) -> bool:
    return ctx.kind == BAR and ctx.bar is not None and ctx.bar.timeframe == timeframe


@_evaluator("rsi_above", sensitive_to=BAR)
def _rsi_above(leaf: c.RsiAbove, ctx: EventContext, owner: str) -> Observation | None:
    rsi = ctx.state.indicators.value(_spec("rsi", leaf.timeframe, leaf.period))
    if not isinstance(rsi, float) or not rsi > leaf.threshold:
        return None
    return Observation(
        leaf.type,
        {"rsi": rsi, "threshold": leaf.threshold},
        f"RSI({leaf.period}, {leaf.timeframe}) {rsi:.1f} is above {_num(leaf.threshold)}",
    )


@_evaluator("rsi_below", sensitive_to=BAR)
def _rsi_below(leaf: c.RsiBelow, ctx: EventContext, owner: str) -> Observation | None:
    rsi = ctx.state.indicators.value(_spec("rsi", leaf.timeframe, leaf.period))
    if not isinstance(rsi, float) or not rsi < leaf.threshold:
        return None
    return Observation(
        leaf.type,
        {"rsi": rsi, "threshold": leaf.threshold},
        f"RSI({leaf.period}, {leaf.timeframe}) {rsi:.1f} is below {_num(leaf.threshold)}",
    )


def _crossed(a0: Any, a1: Any, b0: Any, b1: Any, *, up: bool) -> bool:
    if not all(isinstance(v, float | int) for v in (a0, a1, b0, b1)):
        return False
    return (a0 <= b0 and a1 > b1) if up else (a0 >= b0 and a1 < b1)


def _close_vs_sma(leaf: Any, ctx: EventContext, *, up: bool) -> Observation | None:
    if not _at_bar(ctx, leaf.timeframe):
        return None
    ind, spec = ctx.state.indicators, _spec("sma", leaf.timeframe, leaf.period)
    close, previous_close = ind.last_close(leaf.timeframe), ind.previous_close(leaf.timeframe)
    sma, previous_sma = ind.value(spec), ind.previous_value(spec)
    if not _crossed(previous_close, close, previous_sma, sma, up=up):
        return None
    assert isinstance(sma, float) and close is not None
    way = "above" if up else "below"
    return Observation(
        leaf.type,
        {"close": close, "sma": sma, "previous_close": previous_close},
        f"close {_num(close)} crossed {way} SMA({leaf.period}, {leaf.timeframe}) at {_num(sma)}",
    )


@_evaluator("price_crosses_above_sma", sensitive_to=BAR, pulse=True)
def _price_crosses_above_sma(
    leaf: c.PriceCrossesAboveSma, ctx: EventContext, owner: str
) -> Observation | None:
    return _close_vs_sma(leaf, ctx, up=True)


@_evaluator("price_crosses_below_sma", sensitive_to=BAR, pulse=True)
def _price_crosses_below_sma(
    leaf: c.PriceCrossesBelowSma, ctx: EventContext, owner: str
) -> Observation | None:
    return _close_vs_sma(leaf, ctx, up=False)


def _sma_cross(leaf: Any, ctx: EventContext, *, up: bool) -> Observation | None:
    if not _at_bar(ctx, leaf.timeframe):
        return None
    ind = ctx.state.indicators
    fast, slow = (
        _spec("sma", leaf.timeframe, leaf.fast),
        _spec("sma", leaf.timeframe, leaf.slow),
    )
    f0, f1, s0, s1 = (
        ind.previous_value(fast),
        ind.value(fast),
        ind.previous_value(slow),
        ind.value(slow),
    )
    if not _crossed(f0, f1, s0, s1, up=up):
        return None
    assert isinstance(f1, float) and isinstance(s1, float)
    way = "above" if up else "below"
    return Observation(
        leaf.type,
        {"fast_sma": f1, "slow_sma": s1},
        f"SMA({leaf.fast}) at {_num(f1)} crossed {way} SMA({leaf.slow}) at {_num(s1)} "
        f"({leaf.timeframe})",
    )


@_evaluator("sma_cross_up", sensitive_to=BAR, pulse=True)
def _sma_cross_up(leaf: c.SmaCrossUp, ctx: EventContext, owner: str) -> Observation | None:
    return _sma_cross(leaf, ctx, up=True)


@_evaluator("sma_cross_down", sensitive_to=BAR, pulse=True)
def _sma_cross_down(leaf: c.SmaCrossDown, ctx: EventContext, owner: str) -> Observation | None:
    return _sma_cross(leaf, ctx, up=False)


def _bollinger(leaf: Any, ctx: EventContext, *, upper: bool) -> Observation | None:
    ind = ctx.state.indicators
    bands = ind.value(_spec("bbands", leaf.timeframe, leaf.period, leaf.stddev))
    close = ind.last_close(leaf.timeframe)
    if not isinstance(bands, tuple) or close is None:
        return None
    lower, middle, upper_band = bands
    if upper and not close > upper_band:
        return None
    if not upper and not close < lower:
        return None
    band, name = (upper_band, "upper") if upper else (lower, "lower")
    return Observation(
        leaf.type,
        {"close": close, "band": band, "middle": middle},
        f"close {_num(close)} is {'above' if upper else 'below'} the {name} Bollinger band "
        f"({leaf.period}, {leaf.stddev:g}, {leaf.timeframe}) at {_num(band)}",
    )


@_evaluator("bollinger_break_upper", sensitive_to=BAR)
def _bollinger_upper(
    leaf: c.BollingerBreakUpper, ctx: EventContext, owner: str
) -> Observation | None:
    return _bollinger(leaf, ctx, upper=True)


@_evaluator("bollinger_break_lower", sensitive_to=BAR)
def _bollinger_lower(
    leaf: c.BollingerBreakLower, ctx: EventContext, owner: str
) -> Observation | None:
    return _bollinger(leaf, ctx, upper=False)


def _extreme(leaf: Any, ctx: EventContext, *, high: bool) -> Observation | None:
    if not _at_bar(ctx, leaf.timeframe):
        return None
    ind = ctx.state.indicators
    reference = ind.value(_spec("highest" if high else "lowest", leaf.timeframe, leaf.period))
    close = ind.last_close(leaf.timeframe)
    if not isinstance(reference, float) or close is None:
        return None
    if (high and not close > reference) or (not high and not close < reference):
        return None
    word = "high" if high else "low"
    return Observation(
        leaf.type,
        {"close": close, f"previous_{word}": reference},
        f"close {_num(close)} is a new {leaf.period}-bar {word} ({leaf.timeframe}), "
        f"{'above the highest' if high else 'below the lowest'} prior close {_num(reference)}",
    )


@_evaluator("new_high", sensitive_to=BAR, pulse=True)
def _new_high(leaf: c.NewHigh, ctx: EventContext, owner: str) -> Observation | None:
    return _extreme(leaf, ctx, high=True)


@_evaluator("new_low", sensitive_to=BAR, pulse=True)
def _new_low(leaf: c.NewLow, ctx: EventContext, owner: str) -> Observation | None:
    return _extreme(leaf, ctx, high=False)


@_evaluator("volume_spike", sensitive_to=BAR, pulse=True)
def _volume_spike(leaf: c.VolumeSpike, ctx: EventContext, owner: str) -> Observation | None:
    if not _at_bar(ctx, leaf.timeframe):
        return None
    ind = ctx.state.indicators
    average = ind.value(_spec("volume_avg", leaf.timeframe, leaf.period))
    volume = ind.last_bar_volume(leaf.timeframe)
    if not isinstance(average, float) or volume is None or average <= 0:
        return None
    if volume < leaf.multiple * average:
        return None
    return Observation(
        leaf.type,
        {"volume": volume, "average_volume": average, "multiple": volume / average},
        f"volume {volume:,.0f} is {volume / average:.1f}x the {leaf.period}-bar average of "
        f"{average:,.0f} ({leaf.timeframe})",
    )


# ---------------------------------------------------------------- options, per tick


DERIVED = "derived"


def _source(state: SymbolState, name: str) -> dict[str, float | str | None]:
    """``{"<name>_source": "derived"}`` when the job derived the value the leaf read
    (pipeline/evaluate/greeks.py); nothing when the feed sent it."""
    return {f"{name}_source": DERIVED} if name in state.derived else {}


def _level(name: str, state: SymbolState, leaf: Any, *, above: bool) -> Observation | None:
    value = getattr(state, name)
    if (
        value is None
        or (above and not value > leaf.threshold)
        or (not above and not value < leaf.threshold)
    ):
        return None
    way = "above" if above else "below"
    return Observation(
        leaf.type,
        {name: value, "threshold": leaf.threshold, **_source(state, name)},
        f"{'IV' if name == 'iv' else name} {_num(value)} is {way} {_num(leaf.threshold)}",
    )


for _field in ("iv", "delta", "gamma", "theta", "vega"):
    for _above in (True, False):

        def _option_level(
            leaf: Any, ctx: EventContext, owner: str, _f: str = _field, _a: bool = _above
        ) -> Observation | None:
            return _level(_f, ctx.state, leaf, above=_a)

        _evaluator(f"{_field}_{'above' if _above else 'below'}", sensitive_to=TICK)(_option_level)


@_evaluator("iv_change_pct", sensitive_to=TICK)
def _iv_change(leaf: c.IvChangePct, ctx: EventContext, owner: str) -> Observation | None:
    iv = ctx.state.iv
    reference = ctx.state.iv_at_or_before(ctx.ts - timedelta(seconds=leaf.window_seconds))
    if iv is None or not reference:
        return None
    change = (iv - reference) / reference * 100
    if (leaf.percent > 0 and change < leaf.percent) or (leaf.percent < 0 and change > leaf.percent):
        return None
    return Observation(
        leaf.type,
        {"iv": iv, "reference_iv": reference, "change_pct": change, **_source(ctx.state, "iv")},
        f"IV {'rose' if change > 0 else 'fell'} {abs(change):.1f}% in "
        f"{_duration(leaf.window_seconds)}, from {_num(reference)} to {_num(iv)}",
    )


@_evaluator("iv_rank_above", sensitive_to=TICK)
def _iv_rank(leaf: c.IvRankAbove, ctx: EventContext, owner: str) -> Observation | None:
    rank = ctx.state.iv_rank(leaf.lookback_days, ctx.ts.date())
    if rank is None or not rank > leaf.threshold:
        return None
    return Observation(
        leaf.type,
        {
            "iv_rank": rank,
            "iv": ctx.state.iv,
            "threshold": leaf.threshold,
            **_source(ctx.state, "iv"),
        },
        f"IV rank {rank:.0f} over {leaf.lookback_days} days is above {_num(leaf.threshold)}",
    )


@_evaluator("spread_pct_above", sensitive_to=TICK)
def _spread(leaf: c.SpreadPctAbove, ctx: EventContext, owner: str) -> Observation | None:
    bid, ask = ctx.state.bid, ctx.state.ask
    if bid is None or ask is None or bid + ask <= 0:
        return None
    spread = (ask - bid) / ((ask + bid) / 2) * 100
    if not spread > leaf.threshold:
        return None
    return Observation(
        leaf.type,
        {"spread_pct": spread, "bid": bid, "ask": ask, "threshold": leaf.threshold},
        f"spread {spread:.2f}% of mid (bid {_num(bid)}, ask {_num(ask)}) is above "
        f"{leaf.threshold:g}%",
    )


# ---------------------------------------------------------------- options flow, per print


def _print_values(print_: OptionsFlow) -> dict[str, float | str | None]:
    values: dict[str, float | str | None] = {
        "contract": print_.contract,
        "premium": print_.effective_premium,
        "size": float(print_.size),
        "price": print_.price,
        "side": print_.side,
        "trade_type": print_.trade_type,
    }
    if print_.iv is not None:
        values["iv"] = print_.iv
        if "iv" in derived_fields(print_):
            values["iv_source"] = DERIVED
    return values


_TRADE_WORDS = {"sweep": "sweep", "block": "block", "split": "split print", "single": "print"}


def _contract(print_: OptionsFlow) -> str:
    """The OCC symbol as people write it: one space after the root, not the padding."""
    return " ".join(print_.contract.split())


def _describe_print(print_: OptionsFlow) -> str:
    kind = "call" if print_.right == "C" else "put"
    return (
        f"{kind} {_TRADE_WORDS[print_.trade_type]} of {print_.size} {_contract(print_)} "
        f"at {_num(print_.price)} {c.SIDE_WORDS[print_.side]}, "
        f"premium ${print_.effective_premium:,.0f}"
    )


def _current_print(leaf: Any, ctx: EventContext) -> OptionsFlow | None:
    print_ = ctx.flow
    if ctx.kind != FLOW or print_ is None:
        return None
    return print_ if passes_filters(leaf, print_, ctx.state.last_price) else None


@_evaluator("unusual_volume", sensitive_to=FLOW, pulse=True)
def _unusual_volume(leaf: c.UnusualVolume, ctx: EventContext, owner: str) -> Observation | None:
    print_ = _current_print(leaf, ctx)
    if print_ is None or not print_.day_volume or not print_.open_interest:
        return None
    ratio = print_.day_volume / print_.open_interest
    if ratio < leaf.ratio:
        return None
    values = _print_values(print_) | {"volume_oi_ratio": ratio}
    return Observation(
        leaf.type, values, f"{_describe_print(print_)}; day volume {ratio:.1f}x open interest"
    )


@_evaluator("flow_premium_above", sensitive_to=FLOW, pulse=True)
def _flow_premium(leaf: c.FlowPremiumAbove, ctx: EventContext, owner: str) -> Observation | None:
    print_ = _current_print(leaf, ctx)
    if print_ is None or not print_.effective_premium > leaf.threshold:
        return None
    return Observation(leaf.type, _print_values(print_), _describe_print(print_))


def _trade_type(leaf: Any, ctx: EventContext, trade_type: str) -> Observation | None:
    print_ = _current_print(leaf, ctx)
    if (
        print_ is None
        or print_.trade_type != trade_type
        or print_.effective_premium < leaf.min_premium
    ):
        return None
    return Observation(leaf.type, _print_values(print_), _describe_print(print_))


@_evaluator("flow_sweep", sensitive_to=FLOW, pulse=True)
def _flow_sweep(leaf: c.FlowSweep, ctx: EventContext, owner: str) -> Observation | None:
    return _trade_type(leaf, ctx, "sweep")


@_evaluator("flow_block", sensitive_to=FLOW, pulse=True)
def _flow_block(leaf: c.FlowBlock, ctx: EventContext, owner: str) -> Observation | None:
    return _trade_type(leaf, ctx, "block")


@_evaluator("flow_repeated_hits", sensitive_to=FLOW, pulse=True)
def _repeated_hits(leaf: c.FlowRepeatedHits, ctx: EventContext, owner: str) -> Observation | None:
    print_ = _current_print(leaf, ctx)
    if print_ is None:
        return None
    hits = ctx.state.flow_hits(leaf.window_seconds, leaf, print_)
    if hits < leaf.count:
        return None
    values = _print_values(print_) | {"hits": float(hits)}
    return Observation(
        leaf.type,
        values,
        f"{hits} prints on {_contract(print_)} within {_duration(leaf.window_seconds)}",
    )


@_evaluator("put_call_premium_ratio", sensitive_to=FLOW)
def _put_call(leaf: c.PutCallPremiumRatio, ctx: EventContext, owner: str) -> Observation | None:
    puts, calls = ctx.state.flow_premiums(leaf.window_seconds, leaf, ctx.ts)
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
        f"put/call premium {ratio:.2f}"
        + _ratio_wording(leaf.window_seconds, leaf.comparison, leaf.threshold),
    )


@cache
def _ratio_wording(window_seconds: int, comparison: str, threshold: float) -> str:
    """The fixed end of a ratio's description, formatted once: a ratio that holds is described
    again at every print."""
    return f" over {_duration(window_seconds)} is {comparison} {threshold:g}"


# ---------------------------------------------------------------- positions


def _position(ctx: EventContext, owner: str) -> Position | None:
    return ctx.positions.get((owner, ctx.symbol))


def _pnl(ctx: EventContext, owner: str) -> tuple[Position, float, float, float] | None:
    """(position, price, pnl in currency, pnl in percent) for the owner's position."""
    position, price = _position(ctx, owner), ctx.state.last_price
    if position is None or price is None or position.avg_price <= 0:
        return None
    multiplier = position.multiplier or 1.0
    pnl = (price - position.avg_price) * position.quantity * multiplier
    direction = 1 if position.quantity > 0 else -1
    pnl_pct = (price - position.avg_price) / position.avg_price * 100 * direction
    return position, price, pnl, pnl_pct


def _pnl_condition(
    leaf: Any, ctx: EventContext, owner: str, *, pct: bool, above: bool
) -> Observation | None:
    found = _pnl(ctx, owner)
    if found is None:
        return None
    position, price, pnl, pnl_pct = found
    value = pnl_pct if pct else pnl
    if (above and not value > leaf.threshold) or (not above and not value < leaf.threshold):
        return None
    shown = f"{value:+.2f}%" if pct else f"{'-' if value < 0 else '+'}${abs(value):,.2f}"
    return Observation(
        leaf.type,
        {
            "pnl": pnl,
            "pnl_pct": pnl_pct,
            "price": price,
            "avg_price": position.avg_price,
            "quantity": position.quantity,
            "threshold": leaf.threshold,
        },
        f"position P&L {shown} ({position.quantity:g} @ {_num(position.avg_price)}, "
        f"now {_num(price)})",
    )


@_evaluator("position_pnl_pct_above", sensitive_to=TICK)
def _pnl_pct_above(
    leaf: c.PositionPnlPctAbove, ctx: EventContext, owner: str
) -> Observation | None:
    return _pnl_condition(leaf, ctx, owner, pct=True, above=True)


@_evaluator("position_pnl_pct_below", sensitive_to=TICK)
def _pnl_pct_below(
    leaf: c.PositionPnlPctBelow, ctx: EventContext, owner: str
) -> Observation | None:
    return _pnl_condition(leaf, ctx, owner, pct=True, above=False)


@_evaluator("position_pnl_above", sensitive_to=TICK)
def _pnl_above(leaf: c.PositionPnlAbove, ctx: EventContext, owner: str) -> Observation | None:
    return _pnl_condition(leaf, ctx, owner, pct=False, above=True)


@_evaluator("position_pnl_below", sensitive_to=TICK)
def _pnl_below(leaf: c.PositionPnlBelow, ctx: EventContext, owner: str) -> Observation | None:
    return _pnl_condition(leaf, ctx, owner, pct=False, above=False)


@_evaluator("expiry_within_days", sensitive_to=TICK)
def _expiry_within(leaf: c.ExpiryWithinDays, ctx: EventContext, owner: str) -> Observation | None:
    if _position(ctx, owner) is None:
        return None
    occ = parse_occ(ctx.symbol)
    if occ is None:
        return None
    days = trading_days_until(ctx.ts.date(), occ.expiry)
    if days is None or days > leaf.days:
        return None
    return Observation(
        leaf.type,
        {"trading_days": float(days), "expiry": occ.expiry.isoformat(), "days": float(leaf.days)},
        f"{' '.join(ctx.symbol.split())} expires "
        + (f"in {days} trading day{'s' if days != 1 else ''}" if days else "today")
        + f" ({occ.expiry})",
    )


# ---------------------------------------------------------------- trees


# Leaves whose value is a threshold on one number of the symbol: the engine finds the ones a tick
# changed by bisection over their sorted thresholds (pipeline/evaluate/engine.py).
THRESHOLD_QUANTITY = {
    "price_above": "price",
    "price_below": "price",
    "price_crosses_above": "price",
    "price_crosses_below": "price",
    "iv_above": "iv",
    "iv_below": "iv",
    "delta_above": "delta",
    "delta_below": "delta",
    "gamma_above": "gamma",
    "gamma_below": "gamma",
    "theta_above": "theta",
    "theta_below": "theta",
    "vega_above": "vega",
    "vega_below": "vega",
    "spread_pct_above": "spread_pct",
}
PER_OWNER = frozenset(name for name in c.POSITION_CONDITIONS)

LeafKey = Any  # (type, threshold) for threshold leaves, (leaf, owner) for positions, else the leaf


def leaf_key(leaf: Any, owner: str) -> LeafKey:
    """What identifies a leaf's value at one event: equal keys have equal values."""
    if leaf.type in THRESHOLD_QUANTITY:
        return (leaf.type, leaf.threshold)
    if leaf.type in PER_OWNER:
        return (leaf, owner)
    return leaf


def evaluate_leaf(
    leaf: Any, ctx: EventContext, owner: str, memo: dict[Any, Observation | None]
) -> Observation | None:
    """The leaf's observation at this event, computed once per event for equal leaves.

    ``memo`` lives for one event only, so it is keyed by identity (the engine shares equal
    leaves between rules) rather than by the slower value hash of the models.
    """
    kind = leaf.type
    if kind in THRESHOLD_QUANTITY:
        key: Any = (kind, leaf.threshold)
    elif kind in PER_OWNER:
        key = (id(leaf), owner)
    else:
        key = id(leaf)
    if key in memo:
        return memo[key]
    observation = memo[key] = EVALUATORS[kind](leaf, ctx, owner)
    return observation


def evaluate_tree(
    node: ConditionNode,
    ctx: EventContext,
    owner: str,
    memo: dict[LeafKey, Observation | None] | None = None,
) -> tuple[list[Observation] | None, bool]:
    """(observations that satisfy ``node`` now, or None; whether it still holds after this event).

    The second value treats pulse leaves as false: it is the rule's value at the following
    events it is not evaluated at, which is what edge detection compares with. ``memo`` shares
    leaf values between the rules evaluated at one event.
    """
    memo = {} if memo is None else memo
    if isinstance(node, AllOf):
        observed: list[Observation] | None = []
        after = True
        for child in node.all:
            child_observed, child_after = evaluate_tree(child, ctx, owner, memo)
            after = after and child_after
            if child_observed is None:
                if not after:  # (None, False) whatever the other children give: skip them
                    return None, False
                observed = None
            elif observed is not None:
                observed.extend(child_observed)
        return observed, after
    if isinstance(node, AnyOf):
        held: list[Observation] = []
        any_held, after = False, False
        for child in node.any:
            child_observed, child_after = evaluate_tree(child, ctx, owner, memo)
            after = after or child_after
            if child_observed is not None:
                any_held = True
                held.extend(child_observed)
        return (held if any_held else None), after
    observation = evaluate_leaf(node, ctx, owner, memo)
    holds = observation is not None
    return ([observation] if observation is not None else None), holds and node.type not in PULSES


def leaf_kind(leaf: Any) -> str:
    """The event kind (tick, flow, bar:<timeframe>) a leaf's value can change at."""
    sensitivity = SENSITIVITY[leaf.type]
    return f"{BAR}:{leaf.timeframe}" if sensitivity == BAR else sensitivity


_missing = set(c.CONDITION_MODELS) - set(EVALUATORS)
assert not _missing, f"condition types without an evaluator: {sorted(_missing)}"
