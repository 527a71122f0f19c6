"""The incremental indicators against TA-Lib on real price series.

Independent reference: TA-Lib (the ``ta-lib`` wheel bundles the C library) computing over whole
arrays. Data: the OHLCV files shipped in the ``backtesting`` package, GOOG daily 2004-2013 and
EURUSD hourly 2017-2018, fed as events (one per bar, the row's date as ``ts``) so that the bar
bucketing, bar closing and every indicator run exactly as they do live.
"""

from __future__ import annotations

import csv
import importlib.resources
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.evaluate.indicators import Bands, IndicatorSpec, SymbolIndicators

np = pytest.importorskip("numpy")
talib = pytest.importorskip("talib")
pytest.importorskip("backtesting")

PERIOD = 20


@dataclass
class Series:
    ts: list[datetime]
    close: list[float]
    volume: list[float]


def load(name: str) -> Series:
    path = importlib.resources.files("backtesting") / "test" / name
    with path.open() as f:
        rows = list(csv.DictReader(f))
    ts = [datetime.fromisoformat(row[""]).replace(tzinfo=UTC) for row in rows]
    return Series(ts, [float(r["Close"]) for r in rows], [float(r["Volume"]) for r in rows])


def specs(timeframe: str) -> dict[str, IndicatorSpec]:
    return {
        "sma": IndicatorSpec("sma", timeframe, PERIOD),
        "ema12": IndicatorSpec("ema", timeframe, 12),
        "ema26": IndicatorSpec("ema", timeframe, 26),
        "rsi": IndicatorSpec("rsi", timeframe, 14),
        "bbands": IndicatorSpec("bbands", timeframe, PERIOD, 2.0),
        "highest": IndicatorSpec("highest", timeframe, PERIOD),
        "lowest": IndicatorSpec("lowest", timeframe, PERIOD),
        "volume_avg": IndicatorSpec("volume_avg", timeframe, PERIOD),
    }


@dataclass
class Run:
    close: list[float]
    volume: list[float]
    value: dict[str, list[object]]  # name -> value after bar i
    previous: dict[str, list[object]]  # name -> previous_value after bar i


def run(series: Series, timeframe: str, step: timedelta) -> Run:
    """Feed one event per row (+ one after the last to close it); record values at each close."""
    wanted = specs(timeframe)
    indicators = SymbolIndicators()
    for spec in wanted.values():
        indicators.acquire(spec)
    out = Run([], [], {k: [] for k in wanted}, {k: [] for k in wanted})
    events = [*zip(series.ts, series.close, series.volume, strict=True)]
    events.append((series.ts[-1] + step, series.close[-1], 0.0))
    for ts, price, size in events:
        for bar in indicators.on_event(ts, price, size):
            assert bar.timeframe == timeframe
            assert bar.end - bar.start == step
            assert indicators.last_close(timeframe) == bar.close
            out.close.append(bar.close)
            out.volume.append(bar.volume)
            for name, spec in wanted.items():
                out.value[name].append(indicators.value(spec))
                out.previous[name].append(indicators.previous_value(spec))
    assert indicators.late_events == 0
    return out


def shifted(values: np.ndarray) -> np.ndarray:
    """Value as of the bar before: ``out[i] = values[i - 1]``."""
    return np.concatenate([[np.nan], values[:-1]])


def reference(close: list[float], volume: list[float]) -> dict[str, list[np.ndarray]]:
    c, v = np.asarray(close, dtype=float), np.asarray(volume, dtype=float)
    upper, middle, lower = talib.BBANDS(c, PERIOD, nbdevup=2.0, nbdevdn=2.0, matype=0)
    return {
        "sma": [talib.SMA(c, PERIOD)],
        "ema12": [talib.EMA(c, 12)],
        "ema26": [talib.EMA(c, 26)],
        "rsi": [talib.RSI(c, 14)],
        "bbands": [lower, middle, upper],
        "highest": [shifted(talib.MAX(c, PERIOD))],
        "lowest": [shifted(talib.MIN(c, PERIOD))],
        "volume_avg": [shifted(talib.SMA(v, PERIOD))],
    }


FIRST_DEFINED = {  # bar index of the first value: TA-Lib's lookback (+1 when shifted)
    "sma": PERIOD - 1,
    "ema12": 11,
    "ema26": 25,
    "rsi": 14,
    "bbands": PERIOD - 1,
    "highest": PERIOD,
    "lowest": PERIOD,
    "volume_avg": PERIOD,
}
TOLERANCE = {"rsi": 1e-7}  # default 1e-9; highest / lowest are exact


@pytest.fixture(autouse=True)
def _talib_defaults() -> None:
    # The seeding this module reproduces: no unstable period, TA-Lib's default compatibility.
    assert talib.get_compatibility() == 0
    for name in ("EMA", "RSI"):
        assert talib.get_unstable_period(name) == 0


def as_rows(ours: list[object], name: str) -> list[tuple[float, ...] | None]:
    rows: list[tuple[float, ...] | None] = []
    for value in ours:
        if value is None:
            rows.append(None)
        elif name == "bbands":
            assert isinstance(value, Bands)
            rows.append(tuple(value))
        else:
            assert isinstance(value, float)
            rows.append((value,))
    return rows


def assert_same_as_talib(result: Run) -> None:
    ref = reference(result.close, result.volume)
    for name, columns in ref.items():
        ours = as_rows(result.value[name], name)
        theirs = [
            None if math.isnan(columns[0][i]) else tuple(float(col[i]) for col in columns)
            for i in range(len(result.close))
        ]
        assert len(ours) == len(theirs)
        first_ours = next(i for i, row in enumerate(ours) if row is not None)
        first_theirs = next(i for i, row in enumerate(theirs) if row is not None)
        assert first_ours == first_theirs == FIRST_DEFINED[name], name
        tolerance = 0.0 if name in ("highest", "lowest") else TOLERANCE.get(name, 1e-9)
        for i, (mine, other) in enumerate(zip(ours, theirs, strict=True)):
            assert (mine is None) == (other is None), (name, i)
            if mine is None or other is None:
                continue
            for a, b in zip(mine, other, strict=True):
                assert math.isclose(a, b, rel_tol=tolerance, abs_tol=0.0), (name, i, a, b)
        # previous_value is the value of the bar before
        assert result.previous[name][1:] == result.value[name][:-1], name


def crosses(a: list[float | None], b: list[float | None], *, up: bool) -> list[int]:
    """Bars i with a[i-1] <= b[i-1] and a[i] > b[i] (mirrored when not ``up``), all defined."""
    found = []
    for i in range(1, len(a)):
        a0, a1, b0, b1 = a[i - 1], a[i], b[i - 1], b[i]
        if a0 is None or a1 is None or b0 is None or b1 is None:
            continue
        if (a0 <= b0 and a1 > b1) if up else (a0 >= b0 and a1 < b1):
            found.append(i)
    return found


def nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(x) else float(x) for x in values]


def our_crosses(result: Run, name: str, level: float | None, *, up: bool) -> list[int]:
    """Crosses from our values, read through ``previous_value`` as the rule engine does."""
    found = []
    for i in range(1, len(result.close)):
        value, previous = result.value[name][i], result.previous[name][i]
        if value is None or previous is None:
            continue
        assert isinstance(value, float) and isinstance(previous, float)
        if level is None:  # the close against the indicator
            a0, a1, b0, b1 = result.close[i - 1], result.close[i], previous, value
        else:  # the indicator against a level
            a0, a1, b0, b1 = previous, value, level, level
        if (a0 <= b0 and a1 > b1) if up else (a0 >= b0 and a1 < b1):
            found.append(i)
    return found


GOOG_EVENTS: dict[str, int] = {}  # name -> number of bars, reported by the summary test


@pytest.fixture(scope="module")
def goog() -> Run:
    return run(load("GOOG.csv"), "1d", timedelta(days=1))


@pytest.fixture(scope="module")
def eurusd() -> Run:
    return run(load("EURUSD.csv"), "1h", timedelta(hours=1))


def test_goog_daily_matches_talib(goog: Run) -> None:
    assert len(goog.close) == 2148
    assert_same_as_talib(goog)


def test_eurusd_hourly_matches_talib(eurusd: Run) -> None:
    assert len(eurusd.close) == 5000
    assert_same_as_talib(eurusd)


def test_goog_crossing_bars_match_talib(goog: Run) -> None:
    c = np.asarray(goog.close)
    ref = reference(goog.close, goog.volume)
    closes: list[float | None] = list(goog.close)
    sma, rsi = nan_to_none(ref["sma"][0]), nan_to_none(ref["rsi"][0])
    n = len(closes)

    checks = {
        "close crosses above SMA(20)": (
            our_crosses(goog, "sma", None, up=True),
            crosses(closes, sma, up=True),
        ),
        "close crosses below SMA(20)": (
            our_crosses(goog, "sma", None, up=False),
            crosses(closes, sma, up=False),
        ),
        "RSI(14) crosses above 70": (
            our_crosses(goog, "rsi", 70.0, up=True),
            crosses(rsi, [70.0] * n, up=True),
        ),
        "RSI(14) crosses below 30": (
            our_crosses(goog, "rsi", 30.0, up=False),
            crosses(rsi, [30.0] * n, up=False),
        ),
        "RSI(14) crosses below 70": (
            our_crosses(goog, "rsi", 70.0, up=False),
            crosses(rsi, [70.0] * n, up=False),
        ),
        "RSI(14) crosses above 30": (
            our_crosses(goog, "rsi", 30.0, up=True),
            crosses(rsi, [30.0] * n, up=True),
        ),
    }

    upper = ref["bbands"][2]
    ours_above = [
        i
        for i, bands in enumerate(goog.value["bbands"])
        if isinstance(bands, Bands) and goog.close[i] > bands.upper
    ]
    theirs_above = [i for i in range(n) if not math.isnan(upper[i]) and c[i] > upper[i]]
    checks["close above the upper band (bars)"] = (ours_above, theirs_above)
    checks["close breaks above the upper band (edges)"] = (
        [i for i in ours_above if i - 1 not in ours_above],
        [i for i in theirs_above if i - 1 not in theirs_above],
    )
    highest, spikes = ref["highest"][0], ref["volume_avg"][0]
    checks["new 20-bar high"] = (
        [
            i
            for i, h in enumerate(goog.value["highest"])
            if isinstance(h, float) and goog.close[i] > h
        ],
        [i for i in range(n) if not math.isnan(highest[i]) and c[i] > highest[i]],
    )
    checks["volume >= 2 x 20-bar average"] = (
        [
            i
            for i, avg in enumerate(goog.value["volume_avg"])
            if isinstance(avg, float) and goog.volume[i] >= 2 * avg
        ],
        [i for i in range(n) if not math.isnan(spikes[i]) and goog.volume[i] >= 2 * spikes[i]],
    )

    for name, (ours, theirs) in checks.items():
        assert ours == theirs, name
        assert len(ours) > 0, f"{name}: no such bar in GOOG, the check is vacuous"
        GOOG_EVENTS[name] = len(ours)
    print("\nGOOG daily 2004-2013, bars found (ours == TA-Lib):")
    for name, count in GOOG_EVENTS.items():
        print(f"  {name}: {count}")


def test_two_timeframes_at_once_on_real_ticks() -> None:
    """EURUSD hourly events feed 1h and 4h bars together; the 4h SMA / RSI equal TA-Lib's over
    the 4h closes (the last hourly close of each UTC-aligned 4-hour bucket)."""
    series = load("EURUSD.csv")
    h1, h4 = IndicatorSpec("sma", "1h", PERIOD), IndicatorSpec("sma", "4h", PERIOD)
    rsi4 = IndicatorSpec("rsi", "4h", 14)
    indicators = SymbolIndicators()
    for spec in (h1, h4, rsi4):
        indicators.acquire(spec)
    closes4: list[float] = []
    sma4: list[object] = []
    rsi4_values: list[object] = []
    order: list[tuple[datetime, str]] = []
    end = series.ts[-1] + timedelta(hours=4)
    for ts, price, size in [*zip(series.ts, series.close, series.volume, strict=True)]:
        for bar in indicators.on_event(ts, price, size):
            order.append((bar.end, bar.timeframe))
            if bar.timeframe == "4h":
                closes4.append(bar.close)
                sma4.append(indicators.value(h4))
                rsi4_values.append(indicators.value(rsi4))
    for bar in indicators.advance_to(end):
        order.append((bar.end, bar.timeframe))
        if bar.timeframe == "4h":
            closes4.append(bar.close)
            sma4.append(indicators.value(h4))
            rsi4_values.append(indicators.value(rsi4))
    assert order == sorted(order, key=lambda item: (item[0], item[1] == "4h"))

    expected: dict[datetime, float] = {}  # bucket start -> last close
    for ts, price in zip(series.ts, series.close, strict=True):
        expected[ts.replace(hour=ts.hour - ts.hour % 4)] = price
    assert closes4 == list(expected.values())
    for ours, theirs in (
        (sma4, talib.SMA(np.asarray(closes4), PERIOD)),
        (rsi4_values, talib.RSI(np.asarray(closes4), 14)),
    ):
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs, strict=True):
            assert (mine is None) == math.isnan(other)
            if mine is not None:
                assert isinstance(mine, float)
                assert math.isclose(mine, other, rel_tol=1e-9)
