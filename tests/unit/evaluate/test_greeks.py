"""Derived IV and greeks (pipeline/evaluate/greeks.py) against QuantLib, an independent BSM.

QuantLib prices each grid point (AnalyticEuropeanEngine, flat curves, ACT/365 fixed); our
solver must recover the volatility from that price, agree with QuantLib's own implied-volatility
solver, and give QuantLib's greeks. Tolerances:
- volatility: 1e-6 absolute (QuantLib's solver is asked for 1e-10 in price; Let's Be Rational is
  accurate to a few ulps), on prices worth at least 1e-6 of the spot and 1e-4 above intrinsic
  value, where the price still determines the volatility that finely;
- greeks at the same volatility: 1e-8 relative or 1e-10 absolute (closed forms on both sides,
  apart by rounding only).
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from itertools import product

import numpy as np
import pytest
import QuantLib as ql

from pipeline.evaluate.conditions import EVALUATORS, TICK, EventContext
from pipeline.evaluate.greeks import (
    GreeksConfig,
    GreeksDeriver,
    bsm_greeks,
    expires_at,
    implied_volatility,
    years_to_expiry,
)
from pipeline.evaluate.market_state import SymbolState
from pipeline.evaluate.specs import DeltaAbove, IvAbove
from pipeline.messages import OptionsFlow, Position, Tick, derived_fields

TODAY = ql.Date(1, 12, 2026)
SPOT = 100.0
STRIKES = (60.0, 80.0, 95.0, 100.0, 105.0, 120.0, 150.0)
DAYS = (1, 7, 30, 91, 365, 730)
RATES = (0.0, 0.05)
DIVIDENDS = (0.0, 0.03)
VOLS = (0.12, 0.45, 1.2)


def quantlib_option(strike: float, days: int, rate: float, dividend: float, vol: float, call: bool):
    ql.Settings.instance().evaluationDate = TODAY
    day_count = ql.Actual365Fixed()
    payoff = ql.PlainVanillaPayoff(ql.Option.Call if call else ql.Option.Put, strike)
    option = ql.EuropeanOption(payoff, ql.EuropeanExercise(TODAY + days))
    process = ql.BlackScholesMertonProcess(
        ql.QuoteHandle(ql.SimpleQuote(SPOT)),
        ql.YieldTermStructureHandle(ql.FlatForward(TODAY, dividend, day_count)),
        ql.YieldTermStructureHandle(ql.FlatForward(TODAY, rate, day_count)),
        ql.BlackVolTermStructureHandle(
            ql.BlackConstantVol(TODAY, ql.NullCalendar(), vol, day_count)
        ),
    )
    option.setPricingEngine(ql.AnalyticEuropeanEngine(process))
    return option, process


def grid():
    for strike, days, rate, dividend, vol, call in product(
        STRIKES, DAYS, RATES, DIVIDENDS, VOLS, (True, False)
    ):
        option, process = quantlib_option(strike, days, rate, dividend, vol, call)
        years = days / 365.0
        intrinsic = max(
            0.0,
            (1 if call else -1)
            * (SPOT * math.exp(-dividend * years) - strike * math.exp(-rate * years)),
        )
        yield strike, years, rate, dividend, vol, call, option, process, intrinsic


def arrays(rows):
    columns = list(zip(*rows, strict=True))
    return [np.array(column, dtype=bool if i == 5 else float) for i, column in enumerate(columns)]


def test_implied_volatility_recovers_quantlib_prices_and_matches_its_solver():
    rows, prices, ql_ivs = [], [], []
    for strike, years, rate, dividend, vol, call, option, process, intrinsic in grid():
        price = option.NPV()
        if price < 1e-6 * SPOT or price - intrinsic < 1e-4:
            continue  # the price no longer pins the volatility to 1e-6
        rows.append((price, strike, years, rate, dividend, call, vol))
        prices.append(price)
        ql_ivs.append(option.impliedVolatility(price, process, 1e-10, 1000, 1e-4, 5.0))
    assert len(rows) > 400  # most of the 1008-point grid is checked
    price, strike, years, rate, dividend, call, vol = arrays(rows)
    spot = np.full(len(rows), SPOT)
    sigma = implied_volatility(price, spot, strike, years, rate, dividend, call)
    np.testing.assert_allclose(sigma, vol, rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigma, np.array(ql_ivs), rtol=0, atol=1e-6)


def test_greeks_match_quantlib():
    rows, expected = [], []
    for strike, years, rate, dividend, vol, call, option, _, _ in grid():
        rows.append((0.0, strike, years, rate, dividend, call, vol))
        expected.append((option.delta(), option.gamma(), option.theta(), option.vega()))
    _, strike, years, rate, dividend, call, vol = arrays(rows)
    spot = np.full(len(rows), SPOT)
    greeks = bsm_greeks(spot, strike, years, rate, dividend, vol, call)
    want = np.array(expected)
    for column, ours in enumerate((greeks.delta, greeks.gamma, greeks.theta, greeks.vega)):
        np.testing.assert_allclose(ours, want[:, column], rtol=1e-8, atol=1e-10)


def test_no_volatility_is_nan():
    # below intrinsic, at the maximum (a call worth the discounted spot), expired, zero time
    price = np.array([1.0, 100.0, 5.0, 5.0, 41.0])
    strike = np.array([50.0, 100.0, 100.0, 100.0, 60.0])
    years = np.array([0.5, 0.5, 0.0, -0.01, 0.5])
    n = len(price)
    sigma = implied_volatility(
        price,
        np.full(n, SPOT),
        strike,
        years,
        np.zeros(n),
        np.zeros(n),
        np.ones(n, dtype=bool),
    )
    assert np.isnan(sigma[:4]).all()
    assert 0 < sigma[4] < 5  # a price above intrinsic still solves
    calls = np.ones(n, dtype=bool)
    greeks = bsm_greeks(np.full(n, SPOT), strike, years, np.zeros(n), np.zeros(n), sigma, calls)
    assert np.isnan(greeks.delta[:4]).all() and np.isnan(greeks.vega[:4]).all()


def test_an_option_expires_at_four_in_new_york():
    assert expires_at(date(2026, 1, 16)) == datetime(2026, 1, 16, 21, 0, tzinfo=UTC)  # EST
    assert expires_at(date(2026, 7, 17)) == datetime(2026, 7, 17, 20, 0, tzinfo=UTC)  # EDT
    close = datetime(2026, 7, 17, 20, 0, tzinfo=UTC)
    assert years_to_expiry(close - timedelta(days=73), date(2026, 7, 17)) == pytest.approx(0.2)
    assert years_to_expiry(close, date(2026, 7, 17)) == 0
    assert years_to_expiry(close + timedelta(seconds=1), date(2026, 7, 17)) < 0


# ---------------------------------------------------------------- messages

TS = datetime(2026, 7, 1, 20, 0, tzinfo=UTC)  # 16:00 New York: expiries are whole days away
CALL = "AAPL  260731C00200000"  # 30 days after TS


def tick(**fields) -> Tick:
    return Tick(**({"symbol": CALL, "ts": TS, "price": 6.0, "underlying_price": 198.0} | fields))


def derive(*messages, **config):
    keyed = [(f"k{i}", message) for i, message in enumerate(messages)]
    out = GreeksDeriver(GreeksConfig(**config)).derive(keyed)
    assert [key for key, _ in out] == [key for key, _ in keyed]
    return [message for _, message in out]


def reference(price: float, strike: float, days: int, call: bool, rate=0.04, dividend=0.0):
    option, process = quantlib_option(strike, days, rate, dividend, 0.3, call)
    vol = option.impliedVolatility(price, process, 1e-12, 1000, 1e-4, 5.0)
    option, _ = quantlib_option(strike, days, rate, dividend, vol, call)
    return vol, option


def test_a_tick_gets_iv_and_greeks_in_the_feeds_units():
    (out,) = derive(tick())
    vol, option = reference(6.0 * 100 / 198.0, 200.0 * 100 / 198.0, 30, True)
    assert out.iv == pytest.approx(vol * 100, abs=1e-4)  # percent
    assert out.delta == pytest.approx(option.delta(), abs=1e-6)
    # Per share of the real underlying: gamma scales with 1/spot (the reference is at 100).
    assert out.gamma == pytest.approx(option.gamma() * 100 / 198.0, rel=1e-5)
    assert out.theta == pytest.approx(option.thetaPerDay() * 198.0 / 100, rel=1e-5)
    assert out.vega == pytest.approx(option.vega() / 100 * 198.0 / 100, rel=1e-5)
    assert derived_fields(out) == {"iv", "delta", "gamma", "theta", "vega"}
    assert out.price == 6.0 and out.underlying_price == 198.0


def test_the_feeds_values_are_never_replaced():
    (out,) = derive(tick(iv=25.0, delta=0.9))
    assert out.iv == 25.0 and out.delta == 0.9
    assert derived_fields(out) == {"gamma", "theta", "vega"}
    # The missing greeks come from the feed's IV, not from a solved one.
    years = 30 / 365
    sigma = np.array([0.25])
    greeks = bsm_greeks(
        np.array([198.0]),
        np.array([200.0]),
        np.array([years]),
        np.array([0.04]),
        np.array([0.0]),
        sigma,
        np.array([True]),
    )
    assert out.vega == pytest.approx(greeks.vega[0] / 100)
    complete = tick(iv=25.0, delta=0.5, gamma=0.01, theta=-0.1, vega=0.2)
    assert derive(complete) == [complete] and derived_fields(complete) == frozenset()


def test_fraction_iv_unit_and_dividend_yield_per_underlying():
    (plain,) = derive(tick(), iv_unit="fraction")
    (paying,) = derive(tick(), iv_unit="fraction", dividend_yields={"AAPL": 0.03})
    vol, _ = reference(6.0 * 100 / 198.0, 200.0 * 100 / 198.0, 30, True, dividend=0.03)
    assert 0.2 < plain.iv < 0.5
    assert paying.iv == pytest.approx(vol, abs=1e-6)
    assert paying.iv > plain.iv  # a dividend lowers the forward: the same call price needs more vol


@pytest.mark.parametrize(
    "message",
    [
        tick(underlying_price=None),  # nothing to solve against
        tick(price=0.5, symbol="AAPL  260731C00150000"),  # below intrinsic (48 in the money)
        tick(ts=TS + timedelta(days=31)),  # expired
        tick(symbol="AAPL"),  # not an option
    ],
    ids=["no-underlying-price", "below-intrinsic", "expired", "not-an-option"],
)
def test_nothing_is_invented(message):
    (out,) = derive(message)
    assert out is message
    assert out.iv is None and out.delta is None and derived_fields(out) == frozenset()


def test_below_intrinsic_keeps_the_feeds_iv_and_derives_no_greek():
    deep = tick(price=0.5, symbol="AAPL  260731C00150000", iv=30.0)
    (out,) = derive(deep)
    # With the feed's IV the greeks exist even though the price is below intrinsic.
    assert out.iv == 30.0 and out.delta is not None and "iv" not in derived_fields(out)


def print_(**fields) -> OptionsFlow:
    base = {
        "id": "p-1",
        "ts": TS,
        "underlying": "AAPL",
        "contract": "AAPL  260731P00190000",
        "right": "P",
        "strike": 190.0,
        "expiry": "2026-07-31",
        "price": 3.1,
        "size": 50,
        "side": "ask",
        "trade_type": "sweep",
        "underlying_price": 198.0,
    }
    return OptionsFlow(**(base | fields))


def test_a_print_gets_iv_only_when_it_has_an_underlying_price_and_no_iv():
    derived, untouched, sent = derive(
        print_(), print_(id="p-2", underlying_price=None), print_(id="p-3", iv=41.0)
    )
    vol, _ = reference(3.1 * 100 / 198.0, 190.0 * 100 / 198.0, 30, False)
    assert derived.iv == pytest.approx(vol * 100, abs=1e-4)
    assert derived_fields(derived) == {"iv"}
    assert untouched.iv is None and sent.iv == 41.0
    assert derived_fields(untouched) == derived_fields(sent) == frozenset()


def test_a_batch_is_one_model_call_and_keeps_order_and_other_items():
    position = Position(user_id="u", symbol="AAPL", quantity=1, avg_price=1, ts=TS)
    messages = [position, tick(), "marker", print_(), tick(symbol="MSFT")]
    out = derive(*messages)
    assert out[0] is position and out[2] == "marker" and out[4] is messages[4]
    assert type(out[1]) is Tick and out[1].iv is not None
    assert type(out[3]) is OptionsFlow and out[3].iv is not None


@pytest.mark.parametrize("rate, dividend", [(1.0, -1.0), (-1.0, 1.0), (0.04, 0.0)])
def test_extreme_inputs_never_raise_and_stay_within_the_contracts_bounds(rate, dividend):
    grid = product(
        ("00000000", "00000001", "00200000", "99999999"),  # strikes 0, 0.001, 200, 99999.999
        (1e-300, 1e-9, 6.0, 1e15),  # prices
        (1e-300, 198.0, 1e15),  # underlying prices
        ("260731", "991231"),  # expiries: weeks and 73 years after TS
        "CP",
    )
    ticks = [
        tick(symbol=f"AAPL  {expiry}{right}{strike}", price=price, underlying_price=spot)
        for strike, price, spot, expiry, right in grid
    ]
    derived = 0
    for out in derive(*ticks, risk_free_rate=rate, dividend_yield=dividend):
        for name in ("iv", "delta", "gamma", "theta", "vega"):
            value = getattr(out, name)
            assert value is None or (math.isfinite(value) and abs(value) <= 1e15)
            derived += value is not None
    assert derived > 0


def test_the_state_remembers_which_values_were_derived_and_alerts_say_so():
    state = SymbolState(CALL)
    (derived,) = derive(tick())
    state.on_tick(derived)
    assert state.derived == {"iv", "delta", "gamma", "theta", "vega"}
    context = EventContext(CALL, TS, TICK, state, {})
    leaf = IvAbove(type="iv_above", threshold=20)
    seen = EVALUATORS["iv_above"](leaf, context, "u")
    assert seen is not None and seen.values["iv_source"] == "derived"
    # The feed's next IV replaces the derived one; the greeks it did not send stay derived.
    state.on_tick(tick(ts=TS + timedelta(seconds=1), iv=31.0))
    assert state.derived == {"delta", "gamma", "theta", "vega"}
    seen = EVALUATORS["iv_above"](leaf, context, "u")
    assert seen is not None and seen.values == {"iv": 31.0, "threshold": 20}
    delta = EVALUATORS["delta_above"](DeltaAbove(type="delta_above", threshold=0.1), context, "u")
    assert delta is not None and delta.values["delta_source"] == "derived"


def test_the_example_in_docs_rules_md():
    example = Tick(symbol=CALL, ts="2026-07-01T14:00:00Z", price=6.0, underlying_price=198.0)
    (out,) = derive(example)
    assert years_to_expiry(example.ts, date(2026, 7, 31)) * 365 == pytest.approx(30.25)
    assert round(out.iv, 2) == 29.14
    assert (round(out.delta, 4), round(out.gamma, 4)) == (0.4847, 0.0240)
    assert (round(out.theta, 4), round(out.vega, 4)) == (-0.1193, 0.2272)
