"""Bars and indicators on tiny series computed by hand (ARCHITECTURE.md §5)."""

from __future__ import annotations

import math
import pickle
import random
import statistics
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.evaluate.indicators import Bands, BarClose, IndicatorSpec, SymbolIndicators

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)  # on a 1m and a 5m boundary


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def minute(i: int) -> datetime:
    return T0 + timedelta(minutes=i)


def feed(
    indicators: SymbolIndicators, closes: list[float], volumes: list[float] | None = None
) -> Iterator[BarClose]:
    """One event per 1m bar, then one more event to close the last bar; yields after each
    close so a test can read the values bar by bar."""
    volumes = volumes or [1.0] * len(closes)
    events = [*zip(closes, volumes, strict=True), (closes[-1], 0.0)]
    for i, (price, size) in enumerate(events):
        yield from indicators.on_event(minute(i), price, size)


def values_per_bar(spec: IndicatorSpec, closes: list[float], volumes=None, *, previous=False):
    indicators = SymbolIndicators()
    indicators.acquire(spec)
    read = indicators.previous_value if previous else indicators.value
    return [read(spec) for _ in feed(indicators, closes, volumes)]


def approx_list(values):
    return [None if v is None else pytest.approx(v, rel=1e-12) for v in values]


# ---------------------------------------------------------------- bars


def test_events_are_bucketed_into_bars_and_a_boundary_event_starts_the_next_bar() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1m", 1))
    assert ind.on_event(at(0), 10, 1) == []
    assert ind.on_event(at(30), 11, 2) == []
    assert ind.on_event(at(59.999999), 12, None) == []  # size None counts 0
    closed = ind.on_event(at(60), 13, 5)  # at the bar's end: closes it, opens the next
    assert closed == [BarClose("1m", at(0), at(60), 12.0, 3.0)]
    assert ind.last_close("1m") == 12.0 and ind.last_bar_volume("1m") == 3.0
    assert ind.previous_close("1m") is None
    assert ind.value(IndicatorSpec("sma", "1m", 1)) == 12.0


def test_empty_intervals_make_no_bars() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1m", 2))
    ind.on_event(at(5), 10, 1)
    closed = ind.on_event(at(5 * 60 + 5), 20, 1)  # four empty minutes in between
    assert [(b.start, b.end) for b in closed] == [(at(0), at(60))]
    closed = ind.on_event(at(6 * 60), 30, 1)
    assert [(b.start, b.end, b.close) for b in closed] == [(at(300), at(360), 20.0)]
    assert ind.bars_closed("1m") == 2
    assert ind.value(IndicatorSpec("sma", "1m", 2)) == 15.0  # (10 + 20) / 2: no filling


def test_close_is_the_latest_event_by_time_and_late_events_are_dropped() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1m", 1))
    ind.on_event(at(10), 10, 1)
    ind.on_event(at(40), 11, 1)
    ind.on_event(at(20), 99, 1)  # out of order inside the open bar: counts, is not the close
    [bar] = ind.on_event(at(61), 12, 1)
    assert (bar.close, bar.volume) == (11.0, 3.0)
    assert ind.on_event(at(59), 50, 7) == []  # its bar has closed: late, ignored
    assert ind.late_events == 1
    [bar] = ind.on_event(at(125), 13, 1)
    assert (bar.start, bar.close, bar.volume) == (at(60), 12.0, 1.0)


def test_two_timeframes_report_their_closes_ordered_by_end_then_timeframe() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "5m", 1))  # registered first: order must not depend on it
    ind.acquire(IndicatorSpec("sma", "1m", 1))
    ind.on_event(at(10), 1, 1)
    assert [b.timeframe for b in ind.on_event(at(70), 2, 1)] == ["1m"]
    closed = ind.on_event(at(300), 3, 1)  # closes 1m [14:31, 14:32) and 5m [14:30, 14:35)
    assert [(b.timeframe, b.end, b.close) for b in closed] == [
        ("1m", at(120), 2.0),
        ("5m", at(300), 2.0),
    ]
    ind.on_event(at(530), 4, 1)  # 1m [14:35, 14:36) closes (end 14:36)
    closed = ind.on_event(at(660), 5, 2)  # 1m ending 14:39 and 5m ending 14:40
    assert [(b.timeframe, b.start, b.end, b.volume) for b in closed] == [
        ("1m", at(480), at(540), 1.0),
        ("5m", at(300), at(600), 2.0),
    ]


def test_advance_to_closes_bars_that_end_by_the_watermark() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1m", 1))
    ind.acquire(IndicatorSpec("sma", "5m", 1))
    ind.on_event(at(10), 1, 1)
    assert ind.advance_to(at(59)) == []
    assert [b.timeframe for b in ind.advance_to(at(60))] == ["1m"]
    assert ind.advance_to(at(61)) == []  # nothing open on 1m
    assert ind.on_event(at(30), 2, 1) == []  # late for 1m; its 5m bar is still open
    assert ind.late_events == 1
    assert [(b.timeframe, b.close) for b in ind.advance_to(at(600))] == [("5m", 2.0)]
    assert ind.on_event(at(500), 3, 1) == []  # its 5m bar ended by the watermark: late
    assert ind.late_events == 3  # late for both timeframes
    ind.on_event(at(610), 4, 1)
    end = datetime.max.replace(tzinfo=UTC)  # end of a bounded input
    assert [(b.timeframe, b.close) for b in ind.advance_to(end)] == [("1m", 4.0), ("5m", 4.0)]


def test_naive_timestamps_are_utc_and_nothing_is_kept_without_indicators() -> None:
    ind = SymbolIndicators()
    assert ind.on_event(at(0), 1, 1) == []
    assert ind.timeframes() == [] and ind.last_close("1m") is None
    ind.acquire(IndicatorSpec("sma", "1h", 1))
    ind.on_event(datetime(2026, 1, 5, 14, 59), 1, 1)
    [bar] = ind.on_event(datetime(2026, 1, 5, 15, 0, tzinfo=UTC), 2, 1)
    assert bar.start == datetime(2026, 1, 5, 14, 0, tzinfo=UTC)


def test_daily_bars_are_utc_days() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1d", 1))
    ind.on_event(datetime(2026, 1, 5, 23, 59, tzinfo=UTC), 1, 1)
    [bar] = ind.on_event(datetime(2026, 1, 6, 0, 0, tzinfo=UTC), 2, 1)
    assert (bar.start, bar.end) == (
        datetime(2026, 1, 5, tzinfo=UTC),
        datetime(2026, 1, 6, tzinfo=UTC),
    )


# ---------------------------------------------------------------- values by hand


def test_sma() -> None:
    spec = IndicatorSpec("sma", "1m", 3)
    assert values_per_bar(spec, [2, 4, 6, 8, 4]) == [None, None, 4.0, 6.0, 6.0]
    assert values_per_bar(spec, [2, 4, 6, 8, 4], previous=True) == [None, None, None, 4.0, 6.0]


def test_ema_is_seeded_with_the_sma_of_the_first_period_closes() -> None:
    # k = 2 / (3 + 1) = 0.5; seed (2 + 4 + 6) / 3 = 4; (8 - 4) * .5 + 4 = 6; (4 - 6) * .5 + 6 = 5
    spec = IndicatorSpec("ema", "1m", 3)
    assert values_per_bar(spec, [2, 4, 6, 8, 4]) == [None, None, 4.0, 6.0, 5.0]


def test_rsi_per_wilder() -> None:
    # changes +1 +2 -1 0 +3. Seed (after 4 closes): gain (1 + 2) / 3 = 1, loss 1/3 -> 75.
    # change 0: gain 2/3, loss 2/9 -> 75. change +3: gain 13/9, loss 4/27 -> 100 * 39/43.
    spec = IndicatorSpec("rsi", "1m", 3)
    assert values_per_bar(spec, [10, 11, 13, 12, 12, 15]) == approx_list(
        [None, None, None, 75.0, 75.0, 100 * 39 / 43]
    )


def test_rsi_without_any_move_is_undefined_then_moves_count() -> None:
    # TA-Lib says 0 here (0 / 0); an RSI of 0 would read as "oversold", so: None.
    spec = IndicatorSpec("rsi", "1m", 3)
    assert values_per_bar(spec, [5, 5, 5, 5, 5, 6]) == [None] * 5 + [100.0]
    assert values_per_bar(spec, [5, 4, 4, 4, 4]) == [None, None, None, 0.0, 0.0]


def test_bollinger_bands_use_the_population_standard_deviation() -> None:
    spec = IndicatorSpec("bbands", "1m", 3, 2.0)
    values = values_per_bar(spec, [1, 2, 3, 4, 10])
    assert values[:2] == [None, None]
    sd = math.sqrt(2 / 3)  # (1 + 0 + 1) / 3
    assert values[2] == pytest.approx((2 - 2 * sd, 2, 2 + 2 * sd), rel=1e-12)
    assert isinstance(values[2], Bands) and values[2].middle == pytest.approx(2.0)
    sd = math.sqrt(258 / 27)  # [3, 4, 10]: mean 17/3, squared deviations (64 + 25 + 169) / 9
    assert values[4] == pytest.approx((17 / 3 - 2 * sd, 17 / 3, 17 / 3 + 2 * sd), rel=1e-12)
    flat = values_per_bar(spec, [7, 7, 7])
    assert flat[2] == (7.0, 7.0, 7.0)


def test_highest_and_lowest_of_the_previous_closes() -> None:
    closes = [5, 3, 4, 6, 2, 7]
    assert values_per_bar(IndicatorSpec("highest", "1m", 3), closes) == [None] * 3 + [5, 6, 6]
    assert values_per_bar(IndicatorSpec("lowest", "1m", 3), closes) == [None] * 3 + [3, 3, 2]
    # so close 6 (bar 4) and 7 (bar 6) are new 3-bar highs, 2 (bar 5) a new low


def test_volume_average_of_the_previous_bars() -> None:
    spec = IndicatorSpec("volume_avg", "1m", 2)
    values = values_per_bar(spec, [1, 1, 1, 1], [10, 20, 30, 90])
    assert values == [None, None, 15.0, 25.0]  # 90 >= 3 x 25: a spike at the last bar


def test_bar_volume_sums_the_events_of_the_bar() -> None:
    ind = SymbolIndicators()
    spec = IndicatorSpec("volume_avg", "1m", 1)
    ind.acquire(spec)
    for second, size in [(0, 100), (10, None), (20, 0), (30, 50)]:
        ind.on_event(at(second), 1.0, size)
    ind.on_event(at(60), 1.0, 7)
    ind.on_event(at(120), 1.0, 1)
    assert ind.value(spec) == 150.0 and ind.last_bar_volume("1m") == 7.0


def test_long_random_series_match_the_definitions() -> None:
    """Hundreds of bars, so the running sums refresh several times; brute force as reference."""
    rng = random.Random(7)
    closes = [100.0]
    for _ in range(400):
        closes.append(max(1.0, closes[-1] + rng.gauss(0, 1)))
    volumes = [float(rng.randint(0, 1000)) for _ in closes]
    p = 7
    specs = {
        kind: IndicatorSpec(kind, "1m", p, 2.5 if kind == "bbands" else 0.0)
        for kind in ("sma", "bbands", "highest", "lowest", "volume_avg")
    }
    ind = SymbolIndicators()
    for spec in specs.values():
        ind.acquire(spec)
    for i, _ in enumerate(feed(ind, closes, volumes)):
        if i < p:
            continue
        window, previous = closes[i - p + 1 : i + 1], closes[i - p : i]
        assert ind.value(specs["sma"]) == pytest.approx(statistics.fmean(window), rel=1e-12)
        mean, sd = statistics.fmean(window), statistics.pstdev(window)
        assert ind.value(specs["bbands"]) == pytest.approx(
            (mean - 2.5 * sd, mean, mean + 2.5 * sd), rel=1e-12
        )
        assert ind.value(specs["highest"]) == max(previous)
        assert ind.value(specs["lowest"]) == min(previous)
        assert ind.value(specs["volume_avg"]) == statistics.fmean(volumes[i - p : i])


def test_large_prices_with_a_small_spread_keep_their_bollinger_width() -> None:
    # Raw sums of squares (~1e18, spacing 128) would cancel to nothing here; sums of deviations
    # from an anchor near the mean keep the spread. The bands themselves, numbers near 1e9, are
    # only representable to 1.2e-7.
    spec = IndicatorSpec("bbands", "1m", 4, 1.0)
    closes = [1e9 + x for x in [0.001, 0.002, 0.003, 0.004] * 50]
    bands = values_per_bar(spec, closes)[-1]
    assert isinstance(bands, Bands)
    mean, sd = statistics.fmean(closes[-4:]), statistics.pstdev(closes[-4:])
    assert sd == pytest.approx(0.00111803, rel=1e-4)
    assert bands == pytest.approx((mean - sd, mean, mean + sd), rel=0, abs=2.4e-7)
    assert bands.upper - bands.middle == pytest.approx(sd, rel=1e-3)


# ---------------------------------------------------------------- registration and state


def test_one_indicator_per_spec_with_reference_counting() -> None:
    ind = SymbolIndicators()
    spec = IndicatorSpec("sma", "1m", 2)
    ind.acquire(spec)
    ind.acquire(IndicatorSpec("sma", "1m", 2))  # an equal spec from another rule
    assert ind.refcount(spec) == 2 and ind.specs() == [spec]
    list(feed(ind, [1, 3]))
    ind.release(spec)
    assert ind.value(spec) == 2.0  # still used by one rule
    ind.release(spec)
    assert ind.refcount(spec) == 0 and ind.timeframes() == []
    assert ind.value(spec) is None and ind.last_close("1m") is None  # state dropped
    with pytest.raises(KeyError):
        ind.release(spec)


def test_window_keeps_only_what_the_longest_indicator_needs() -> None:
    ind = SymbolIndicators()
    short, long = IndicatorSpec("sma", "1m", 2), IndicatorSpec("sma", "1m", 10)
    ind.acquire(short)
    ind.acquire(long)
    list(feed(ind, list(range(30))))
    assert len(ind.series["1m"].closes) == 11
    ind.release(long)
    assert len(ind.series["1m"].closes) == 3
    ind.acquire(IndicatorSpec("rsi", "1m", 14))
    ind.release(short)
    assert len(ind.series["1m"].closes) == 2


def test_a_late_acquired_indicator_warms_up_from_the_known_bars() -> None:
    ind = SymbolIndicators()
    ind.acquire(IndicatorSpec("sma", "1m", 3))  # keeps 4 closes
    closes = [5.0, 1, 4, 2, 8, 3]
    list(feed(ind, closes))
    sma2, high5 = IndicatorSpec("sma", "1m", 2), IndicatorSpec("highest", "1m", 5)
    ind.acquire(sma2)
    ind.acquire(high5)
    assert ind.value(sma2) == 5.5 and ind.previous_value(sma2) == 5.0
    assert ind.value(high5) is None  # knows 4 of the 6 closes it needs
    ind.on_event(minute(7), 6, 1)  # closes the bar of minute 6 (close 3)
    assert ind.value(high5) is None
    ind.on_event(minute(8), 7, 1)  # closes the bar of minute 7 (close 6)
    assert ind.value(high5) == max([4, 2, 8, 3, 3])


def test_state_survives_a_pickle_round_trip() -> None:
    ind = SymbolIndicators()
    specs = [
        IndicatorSpec("sma", "1m", 3),
        IndicatorSpec("ema", "1m", 3),
        IndicatorSpec("rsi", "1m", 3),
        IndicatorSpec("bbands", "1m", 3, 2.0),
        IndicatorSpec("highest", "1m", 3),
        IndicatorSpec("lowest", "5m", 2),
        IndicatorSpec("volume_avg", "5m", 2),
    ]
    for spec in specs:
        ind.acquire(spec)
    rng = random.Random(1)
    events = [(at(17 * i), 100 + rng.uniform(-3, 3), rng.randint(0, 9)) for i in range(200)]
    for ts, price, size in events[:120]:
        ind.on_event(ts, price, size)
    copy = pickle.loads(pickle.dumps(ind))
    assert [copy.value(s) for s in specs] == [ind.value(s) for s in specs]
    for ts, price, size in events[120:]:  # mid-bar: the open bars must survive too
        assert copy.on_event(ts, price, size) == ind.on_event(ts, price, size)
        assert [copy.value(s) for s in specs] == [ind.value(s) for s in specs]
    assert all(ind.value(s) is not None for s in specs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("wma", "1m", 3), "unknown indicator"),
        (("sma", "1x", 3), "not a timeframe"),
        (("sma", "1m", 0), "period"),
        (("sma", "1m", 2, 2.0), "only for bbands"),
        (("bbands", "1m", 20), "stddev"),
    ],
)
def test_invalid_specs_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndicatorSpec(*args)


def test_specs_are_hashable_keys() -> None:
    a, b = IndicatorSpec("bbands", "5m", 20, 2), IndicatorSpec("bbands", "5m", 20, 2.0)
    assert a == b and len({a, b}) == 1
    assert pickle.loads(pickle.dumps(a)) == a
