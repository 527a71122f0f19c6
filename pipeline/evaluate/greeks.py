"""Implied volatility and greeks for option ticks and prints whose feed sends none.

Black-Scholes-Merton on the forward ``F = S·e^((r−q)·T)``: the implied volatility comes from
Peter Jäckel's *Let's Be Rational* (the ``vollib`` library, the maintained py_vollib), solved per
contract; the greeks follow in closed form, vectorized with numpy over the whole batch. One call
derives a batch: ``GreeksDeriver.derive`` on the keyed items of one dataflow batch.

Conventions (docs/rules.md, "Derived IV and greeks"):
- An option expires at 16:00 America/New_York on its expiry date; time to expiry is the exact
  time from the event's ``ts`` to then, in years of 365 days (ACT/365 fixed, calendar time).
- ``r`` (the risk-free rate) and ``q`` (the underlying's dividend yield) are annual and
  continuously compounded, from the ``[greeks]`` configuration.
- Output units are the feed's: ``iv`` in percent (``iv_unit = "percent"``, 35.0 for 35 %) or as
  a fraction (``"fraction"``, 0.35); delta per share; gamma per share per 1.00 of the underlying;
  theta per share per calendar day; vega per share per 1 volatility point (0.01).
- A value the feed sent is never replaced. When the feed sent ``iv`` but not a greek, the greek
  is computed from the feed's ``iv``. When no volatility exists (the price is at or below the
  intrinsic value of the forward or at or above its maximum, the option has expired, the
  underlying price is missing), the fields stay empty.
- Every field filled here is named in the message's derived fields
  (``pipeline.messages.derived_fields``), which the alert values report as ``<field>_source``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr
from vollib.lets_be_rational import (
    AboveMaximumException,
    BelowIntrinsicException,
    implied_volatility_from_a_transformed_rational_guess,
)

from pipeline import config
from pipeline.fields import MAX_MAGNITUDE
from pipeline.market_calendar import parse_occ
from pipeline.messages import OptionsFlow, Tick, mark_derived

Array = npt.NDArray[np.float64]
K = TypeVar("K")

EXPIRY_ZONE = ZoneInfo("America/New_York")
EXPIRY_TIME = time(16, 0)  # the close of the options' last trading session
YEAR = timedelta(days=365)
DAYS_PER_YEAR = 365.0
GREEKS = ("delta", "gamma", "theta", "vega")
# Jäckel's solver answers with ±DBL_MAX in some builds instead of raising; either means no
# volatility reproduces the price.
_NO_VOLATILITY = 1e300


@dataclass(frozen=True)
class GreeksConfig:
    """What the model needs beyond the message: rates, dividend yields, the feed's IV unit."""

    risk_free_rate: float = 0.04
    dividend_yield: float = 0.0
    dividend_yields: Mapping[str, float] = field(default_factory=dict)
    iv_unit: Literal["percent", "fraction"] = "percent"

    @classmethod
    def from_section(cls, section: config.Greeks) -> GreeksConfig:
        return cls(
            risk_free_rate=section.risk_free_rate,
            dividend_yield=section.dividend_yield,
            dividend_yields=dict(section.dividend_yields),
            iv_unit=section.iv_unit,
        )

    def dividend_for(self, underlying: str) -> float:
        return self.dividend_yields.get(underlying, self.dividend_yield)

    @property
    def iv_scale(self) -> float:
        """Feed IV units per unit of volatility (1.00 = 100 %)."""
        return 100.0 if self.iv_unit == "percent" else 1.0


def expires_at(expiry: date) -> datetime:
    """When an option of this expiry date stops trading: 16:00 New York time, in UTC."""
    return datetime.combine(expiry, EXPIRY_TIME, EXPIRY_ZONE).astimezone(UTC)


def years_to_expiry(ts: datetime, expiry: date) -> float:
    """ACT/365 years from ``ts`` to the expiry; 0 or less once expired."""
    return (expires_at(expiry) - ts) / YEAR


# ---------------------------------------------------------------- the model, on arrays


def implied_volatility(
    price: Array,
    spot: Array,
    strike: Array,
    years: Array,
    rate: Array,
    dividend: Array,
    is_call: npt.NDArray[np.bool_],
) -> Array:
    """Annual BSM implied volatility (1.00 = 100 %) per contract; NaN where none exists."""
    sigma = np.full(price.shape, np.nan)
    with np.errstate(all="ignore"):
        growth = np.exp(rate * years)
        forward = spot * np.exp((rate - dividend) * years)
        undiscounted = price * growth
    solvable = (years > 0) & np.isfinite(forward) & np.isfinite(undiscounted) & (forward > 0)
    for i in np.flatnonzero(solvable):
        sigma[i] = _solve_one(
            float(undiscounted[i]),
            float(forward[i]),
            float(strike[i]),
            float(years[i]),
            1.0 if is_call[i] else -1.0,
        )
    return sigma


def _solve_one(price: float, forward: float, strike: float, years: float, q: float) -> float:
    try:
        sigma = implied_volatility_from_a_transformed_rational_guess(
            price, forward, strike, years, q
        )
    except (BelowIntrinsicException, AboveMaximumException):
        return math.nan
    except (ValueError, ArithmeticError):  # the pure-Python erfc on a NaN or an overflow
        return math.nan
    if not math.isfinite(sigma) or not 0 < sigma < _NO_VOLATILITY:
        return math.nan  # at intrinsic (0) or a sentinel: no volatility reproduces the price
    return float(sigma)


@dataclass(frozen=True)
class Greeks:
    """Per share; theta per year, vega per 1.00 of volatility (the textbook units)."""

    delta: Array
    gamma: Array
    theta: Array
    vega: Array


def bsm_greeks(
    spot: Array,
    strike: Array,
    years: Array,
    rate: Array,
    dividend: Array,
    sigma: Array,
    is_call: npt.NDArray[np.bool_],
) -> Greeks:
    """Closed-form BSM greeks; NaN wherever ``sigma`` is NaN or not positive, or expired."""
    with np.errstate(all="ignore"):
        valid = (sigma > 0) & (years > 0)
        root_t = np.sqrt(np.where(valid, years, np.nan))
        vol_t = np.where(valid, sigma, np.nan) * root_t
        d1 = (np.log(spot / strike) + (rate - dividend + 0.5 * sigma * sigma) * years) / vol_t
        d2 = d1 - vol_t
        carry = np.exp(-dividend * years)
        discount = np.exp(-rate * years)
        density = np.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        sign = np.where(is_call, 1.0, -1.0)
        delta = sign * carry * ndtr(sign * d1)
        gamma = carry * density / (spot * vol_t)
        vega = spot * carry * density * root_t
        theta = (
            -spot * carry * density * sigma / (2 * root_t)
            - sign * rate * strike * discount * ndtr(sign * d2)
            + sign * dividend * spot * carry * ndtr(sign * d1)
        )
    return Greeks(delta, gamma, theta, vega)


# ---------------------------------------------------------------- messages


@dataclass(slots=True)
class _Wanted:
    """One message of a batch that gets derived values, and what the model needs for it."""

    index: int
    message: Tick | OptionsFlow
    price: float
    spot: float
    strike: float
    years: float
    dividend: float
    is_call: bool
    sigma: float  # the feed's volatility (1.00 = 100 %), or NaN to solve for it
    missing: tuple[str, ...]


class GreeksDeriver:
    """Fills the missing ``iv`` (and, on ticks, greeks) of option ticks and prints in a batch."""

    def __init__(self, config: GreeksConfig) -> None:
        self.config = config

    def derive(self, items: Sequence[tuple[K, object]]) -> list[tuple[K, object]]:
        """``items`` with each option tick or print that lacks values replaced by a copy that
        has them (marked derived); everything else as it was, in the same order."""
        wanted = [w for index, (_, item) in enumerate(items) if (w := self._wanted(index, item))]
        out = list(items)
        if not wanted:
            return out
        values = self._solve(wanted)
        for want, derived in zip(wanted, values, strict=True):
            if derived:
                key = items[want.index][0]
                copy = want.message.model_copy(update=derived)
                mark_derived(copy, derived)
                out[want.index] = (key, copy)
        return out

    def _wanted(self, index: int, item: object) -> _Wanted | None:
        kind = type(item)
        if kind is Tick:
            return self._tick(index, item)  # type: ignore[arg-type]
        if kind is OptionsFlow:
            return self._print(index, item)  # type: ignore[arg-type]
        return None

    def _tick(self, index: int, tick: Tick) -> _Wanted | None:
        if tick.underlying_price is None:
            return None
        missing = tuple(name for name in ("iv", *GREEKS) if getattr(tick, name) is None)
        if not missing:
            return None
        occ = parse_occ(tick.symbol)
        if occ is None:
            return None
        sigma = math.nan if tick.iv is None else tick.iv / self.config.iv_scale
        return _Wanted(
            index,
            tick,
            tick.price,
            tick.underlying_price,
            occ.strike,
            years_to_expiry(tick.ts, occ.expiry),
            self.config.dividend_for(tick.underlying or occ.root),
            occ.right == "C",
            sigma,
            missing,
        )

    def _print(self, index: int, print_: OptionsFlow) -> _Wanted | None:
        if print_.iv is not None or print_.underlying_price is None:
            return None
        return _Wanted(
            index,
            print_,
            print_.price,
            print_.underlying_price,
            print_.strike,
            years_to_expiry(print_.ts, date.fromisoformat(print_.expiry)),
            self.config.dividend_for(print_.underlying),
            print_.right == "C",
            math.nan,
            ("iv",),
        )

    def _solve(self, wanted: list[_Wanted]) -> list[dict[str, float]]:
        """The values each wanted message lacks and the model could give, in feed units."""
        spot = np.array([w.spot for w in wanted])
        strike = np.array([w.strike for w in wanted])
        years = np.array([w.years for w in wanted])
        dividend = np.array([w.dividend for w in wanted])
        rate = np.full(len(wanted), self.config.risk_free_rate)
        is_call = np.array([w.is_call for w in wanted])
        sigma = np.array([w.sigma for w in wanted])
        unknown = np.isnan(sigma)
        if unknown.any():
            price = np.array([w.price for w in wanted])
            sigma[unknown] = implied_volatility(
                price[unknown],
                spot[unknown],
                strike[unknown],
                years[unknown],
                rate[unknown],
                dividend[unknown],
                is_call[unknown],
            )
        greeks = bsm_greeks(spot, strike, years, rate, dividend, sigma, is_call)
        columns: dict[str, Array] = {
            "iv": sigma * self.config.iv_scale,
            "delta": greeks.delta,
            "gamma": greeks.gamma,
            "theta": greeks.theta / DAYS_PER_YEAR,
            "vega": greeks.vega / 100.0,
        }
        results: list[dict[str, float]] = []
        for row, want in enumerate(wanted):
            derived: dict[str, float] = {}
            for name in want.missing:
                value = float(columns[name][row])
                # Beyond the contract's bounds (a degenerate input, e.g. a 1e-300 spot) the
                # message could not carry it: no value rather than one no consumer accepts.
                if math.isfinite(value) and abs(value) <= MAX_MAGNITUDE:
                    derived[name] = value
            results.append(derived)
        return results
