"""NYSE sessions, holidays, half days, extended hours and DST (pipeline/market_calendar.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.market_calendar import (
    is_any_session,
    is_extended_hours,
    is_regular_session,
    is_session,
    market_phase,
    next_regular_open,
    nyse_sessions,
    parse_occ,
    session_bounds,
    trading_days_until,
)

ET = ZoneInfo("America/New_York")


def et(year: int, month: int, day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A New York wall-clock time, as an aware datetime."""
    return datetime(year, month, day, hour, minute, second, tzinfo=ET)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# ---------------------------------------------------------------- phases of an ordinary day


@pytest.mark.parametrize(
    ("ts", "phase"),
    [
        (et(2026, 1, 6, 3, 59, 59), "closed"),
        (et(2026, 1, 6, 4, 0), "pre"),
        (et(2026, 1, 6, 9, 29, 59), "pre"),
        (et(2026, 1, 6, 9, 30), "regular"),
        (et(2026, 1, 6, 15, 59, 59), "regular"),
        (et(2026, 1, 6, 16, 0), "post"),
        (et(2026, 1, 6, 19, 59, 59), "post"),
        (et(2026, 1, 6, 20, 0), "closed"),
        (et(2026, 1, 6, 23, 0), "closed"),
    ],
)
def test_phases_of_an_ordinary_day(ts: datetime, phase: str) -> None:
    assert market_phase(ts) == phase
    assert market_phase(ts.astimezone(UTC)) == phase  # the zone of ts does not matter
    assert is_regular_session(ts) == (phase == "regular")
    assert is_extended_hours(ts) == (phase in ("pre", "post"))
    assert is_any_session(ts) == (phase != "closed")


def test_ordinary_day_bounds_in_utc() -> None:
    bounds = session_bounds(date(2026, 1, 6))
    assert bounds is not None
    assert (bounds.pre_open, bounds.open, bounds.close, bounds.post_close) == (
        utc(2026, 1, 6, 9, 0),
        utc(2026, 1, 6, 14, 30),
        utc(2026, 1, 6, 21, 0),
        utc(2026, 1, 7, 1, 0),
    )
    assert not bounds.is_half_day


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        market_phase(datetime(2026, 1, 6, 15, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        next_regular_open(datetime(2026, 1, 6, 15, 0))


# ---------------------------------------------------------------- holidays and weekends


@pytest.mark.parametrize(
    "day",
    [
        date(2024, 12, 25),
        date(2025, 12, 25),  # Christmas
        date(2026, 1, 1),
        date(2026, 1, 19),  # Martin Luther King Jr. Day
        date(2026, 4, 3),  # Good Friday
        date(2026, 7, 3),  # Independence Day observed (July 4 is a Saturday)
        date(2027, 11, 25),  # Thanksgiving
        date(2026, 1, 10),  # Saturday
        date(2026, 1, 11),  # Sunday
    ],
)
def test_holidays_and_weekends_are_closed_all_day(day: date) -> None:
    assert not is_session(day)
    assert session_bounds(day) is None
    for minutes in range(0, 24 * 60, 15):
        ts = datetime.combine(day, datetime.min.time(), ET) + timedelta(minutes=minutes)
        assert market_phase(ts) == "closed", ts


def test_the_days_around_a_holiday_trade() -> None:
    assert market_phase(et(2026, 1, 16, 10, 0)) == "regular"  # Friday before MLK day
    assert market_phase(et(2026, 1, 19, 10, 0)) == "closed"
    assert market_phase(et(2026, 1, 20, 10, 0)) == "regular"
    assert market_phase(et(2027, 11, 24, 10, 0)) == "regular"
    assert market_phase(et(2027, 11, 25, 10, 0)) == "closed"


def test_calendar_covers_2024_to_2027() -> None:
    sessions = nyse_sessions()
    for year in (2024, 2025, 2026, 2027):
        in_year = [day for day in sessions if day.year == year]
        assert 250 <= len(in_year) <= 253, year


# ---------------------------------------------------------------- half days


def test_half_day_after_thanksgiving_2026() -> None:
    bounds = session_bounds(date(2026, 11, 27))
    assert bounds is not None and bounds.is_half_day
    assert bounds.close == et(2026, 11, 27, 13, 0)
    assert bounds.post_close == et(2026, 11, 27, 17, 0)
    assert market_phase(et(2026, 11, 27, 9, 0)) == "pre"
    assert market_phase(et(2026, 11, 27, 12, 59)) == "regular"
    assert market_phase(et(2026, 11, 27, 13, 0)) == "post"
    assert market_phase(et(2026, 11, 27, 16, 59)) == "post"
    assert market_phase(et(2026, 11, 27, 17, 0)) == "closed"
    assert market_phase(et(2026, 11, 27, 18, 0)) == "closed"


@pytest.mark.parametrize(
    "day", [date(2024, 7, 3), date(2024, 12, 24), date(2025, 11, 28), date(2026, 12, 24)]
)
def test_other_half_days_close_at_13(day: date) -> None:
    bounds = session_bounds(day)
    assert bounds is not None and bounds.is_half_day
    assert bounds.close.astimezone(ET).time().hour == 13


# ---------------------------------------------------------------- DST


def test_regular_open_follows_the_us_dst_switch() -> None:
    # Clocks go forward on Sunday 2026-03-08; the open stays 09:30 ET, so it moves in UTC.
    assert session_bounds(date(2026, 3, 6)).open == utc(2026, 3, 6, 14, 30)  # type: ignore[union-attr]
    assert session_bounds(date(2026, 3, 9)).open == utc(2026, 3, 9, 13, 30)  # type: ignore[union-attr]
    assert market_phase(utc(2026, 3, 6, 14, 0)) == "pre"
    assert market_phase(utc(2026, 3, 9, 13, 30)) == "regular"
    assert market_phase(utc(2026, 3, 9, 13, 29)) == "pre"
    assert market_phase(utc(2026, 3, 9, 8, 0)) == "pre"  # 04:00 EDT
    assert market_phase(utc(2026, 3, 9, 7, 59)) == "closed"
    assert market_phase(utc(2026, 3, 9, 20, 0)) == "post"  # 16:00 EDT
    assert market_phase(utc(2026, 3, 10, 0, 0)) == "closed"  # 20:00 EDT


def test_regular_open_after_the_autumn_switch() -> None:
    # Clocks go back on Sunday 2026-11-01.
    assert session_bounds(date(2026, 10, 30)).open == utc(2026, 10, 30, 13, 30)  # type: ignore[union-attr]
    assert session_bounds(date(2026, 11, 2)).open == utc(2026, 11, 2, 14, 30)  # type: ignore[union-attr]
    assert market_phase(utc(2026, 11, 2, 14, 0)) == "pre"
    assert market_phase(utc(2026, 11, 2, 21, 0)) == "post"


# ---------------------------------------------------------------- next_regular_open


def test_next_regular_open() -> None:
    assert next_regular_open(et(2026, 1, 6, 9, 30)) == utc(2026, 1, 6, 14, 30)  # at it
    assert next_regular_open(et(2026, 1, 6, 7, 0)) == utc(2026, 1, 6, 14, 30)
    assert next_regular_open(et(2026, 1, 6, 9, 31)) == utc(2026, 1, 7, 14, 30)  # in session
    assert next_regular_open(et(2026, 1, 6, 21, 0)) == utc(2026, 1, 7, 14, 30)
    assert next_regular_open(et(2026, 1, 6, 7, 0)).tzinfo == UTC


def test_next_regular_open_across_a_long_weekend() -> None:
    # Friday 2026-01-16 after the close -> MLK day Monday is a holiday -> Tuesday 09:30 ET.
    assert next_regular_open(et(2026, 1, 16, 16, 30)) == utc(2026, 1, 20, 14, 30)
    # Thanksgiving 2027 (Thursday): next open is the Friday half day.
    assert next_regular_open(et(2027, 11, 24, 17, 0)) == utc(2027, 11, 26, 14, 30)
    # Christmas 2026 is a Friday: Thursday's half day ends, next open is Monday the 28th.
    assert next_regular_open(et(2026, 12, 24, 13, 0)) == utc(2026, 12, 28, 14, 30)
    # Across the spring DST switch: Friday 2026-03-06 evening -> Monday 13:30 UTC.
    assert next_regular_open(et(2026, 3, 6, 18, 0)) == utc(2026, 3, 9, 13, 30)


def test_next_regular_open_past_the_calendar_raises() -> None:
    with pytest.raises(ValueError, match="no NYSE session"):
        next_regular_open(utc(2035, 1, 1))


def test_outside_the_calendar_years_is_closed() -> None:
    assert market_phase(utc(2019, 6, 3, 15, 0)) == "closed"
    assert market_phase(utc(2032, 6, 3, 15, 0)) == "closed"


def test_lookups_in_any_order_agree() -> None:
    """The last-interval shortcut gives the same answers as a cold bisection."""
    start = et(2026, 11, 25, 0, 0)
    instants = [start + timedelta(minutes=7 * i) for i in range(1200)]
    forward = [market_phase(ts) for ts in instants]
    backward = [market_phase(ts) for ts in reversed(instants)][::-1]
    assert forward == backward
    assert {"pre", "regular", "post", "closed"} == set(forward)


# ---------------------------------------------------------------- per day (kept API)


def test_trading_days_until() -> None:
    assert trading_days_until(date(2026, 1, 16), date(2026, 1, 16)) == 0
    assert trading_days_until(date(2026, 1, 16), date(2026, 1, 20)) == 1  # MLK day skipped
    assert trading_days_until(date(2026, 1, 16), date(2026, 1, 15)) is None
    assert trading_days_until(date(2026, 1, 2), date(2035, 1, 1)) is None


def test_parse_occ() -> None:
    occ = parse_occ("AAPL  260117C00200000")
    assert occ is not None
    assert (occ.root, occ.expiry, occ.right, occ.strike) == ("AAPL", date(2026, 1, 17), "C", 200)
    assert parse_occ("AAPL") is None
