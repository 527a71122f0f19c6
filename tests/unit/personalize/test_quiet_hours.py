"""Quiet hours in the user's time zone, over midnight and across DST
(pipeline/personalize/quiet_hours.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from pipeline.messages import InvalidMessage, Profile, decode
from pipeline.personalize.quiet_hours import in_quiet_hours, quiet_hours_end, quiet_period


def profile(timezone: str, start: str, end: str) -> Profile:
    return Profile(user_id="u-1", timezone=timezone, quiet_hours={"start": start, "end": end})


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    zone: str, year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold)


# ---------------------------------------------------------------- no quiet hours


def test_no_quiet_hours() -> None:
    plain = Profile(user_id="u-1", timezone="America/New_York")
    assert not in_quiet_hours(plain, utc(2026, 1, 6, 5, 0))
    assert quiet_hours_end(plain, utc(2026, 1, 6, 5, 0)) is None


def test_start_equal_to_end_means_no_quiet_hours() -> None:
    same = profile("Europe/London", "22:00", "22:00")
    for hour in range(24):
        assert not in_quiet_hours(same, utc(2026, 1, 6, hour, 0))


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        in_quiet_hours(profile("UTC", "22:00", "07:00"), datetime(2026, 1, 6, 23, 0))


# ---------------------------------------------------------------- ordinary days, several zones


def test_over_midnight_in_new_york() -> None:
    night = profile("America/New_York", "22:00", "07:00")  # EST = UTC-5 in January
    assert not in_quiet_hours(night, local("America/New_York", 2026, 1, 6, 21, 59))
    assert in_quiet_hours(night, local("America/New_York", 2026, 1, 6, 22, 0))
    assert in_quiet_hours(night, local("America/New_York", 2026, 1, 6, 23, 59))
    assert in_quiet_hours(night, local("America/New_York", 2026, 1, 7, 0, 0))
    assert in_quiet_hours(night, local("America/New_York", 2026, 1, 7, 6, 59))
    assert not in_quiet_hours(night, local("America/New_York", 2026, 1, 7, 7, 0))
    # The same instants given in UTC.
    assert in_quiet_hours(night, utc(2026, 1, 7, 3, 0))  # 22:00 EST
    assert not in_quiet_hours(night, utc(2026, 1, 6, 22, 0))  # 17:00 EST
    # Before midnight and after it, the period ends the next morning at 07:00 EST (12:00 UTC).
    assert quiet_hours_end(night, utc(2026, 1, 7, 3, 30)) == utc(2026, 1, 7, 12, 0)
    assert quiet_hours_end(night, utc(2026, 1, 7, 9, 0)) == utc(2026, 1, 7, 12, 0)
    assert quiet_hours_end(night, utc(2026, 1, 7, 12, 0)) is None
    assert quiet_period(night, utc(2026, 1, 7, 9, 0)) == (
        utc(2026, 1, 7, 3, 0),
        utc(2026, 1, 7, 12, 0),
    )


def test_same_day_period() -> None:
    lunch = profile("Europe/London", "12:00", "13:30")  # GMT in January
    assert not in_quiet_hours(lunch, utc(2026, 1, 6, 11, 59))
    assert in_quiet_hours(lunch, utc(2026, 1, 6, 12, 0))
    assert quiet_hours_end(lunch, utc(2026, 1, 6, 13, 0)) == utc(2026, 1, 6, 13, 30)
    assert not in_quiet_hours(lunch, utc(2026, 1, 6, 13, 30))
    assert not in_quiet_hours(lunch, utc(2026, 1, 6, 23, 0))
    # In July London is on BST (UTC+1): the same wall-clock period is an hour earlier in UTC.
    assert in_quiet_hours(lunch, utc(2026, 7, 6, 11, 0))
    assert not in_quiet_hours(lunch, utc(2026, 7, 6, 12, 30))


def test_sydney_over_midnight() -> None:
    night = profile("Australia/Sydney", "22:00", "07:00")
    # January: AEDT = UTC+11, so 22:00 local is 11:00 UTC and 07:00 local is 20:00 UTC.
    assert not in_quiet_hours(night, utc(2026, 1, 5, 10, 59))
    assert in_quiet_hours(night, utc(2026, 1, 5, 11, 0))
    assert quiet_hours_end(night, utc(2026, 1, 5, 11, 0)) == utc(2026, 1, 5, 20, 0)
    assert not in_quiet_hours(night, utc(2026, 1, 5, 20, 0))
    # July: AEST = UTC+10.
    assert in_quiet_hours(night, utc(2026, 7, 5, 12, 0))
    assert quiet_hours_end(night, utc(2026, 7, 5, 12, 0)) == utc(2026, 7, 5, 21, 0)
    # An instant that is quiet in Sydney but mid-afternoon in New York.
    assert not in_quiet_hours(profile("America/New_York", "22:00", "07:00"), utc(2026, 7, 5, 19))


def test_sydney_dst_end_night() -> None:
    # 2026-04-05 03:00 AEDT -> 02:00 AEST: the quiet night lasts 10 hours instead of 9.
    night = profile("Australia/Sydney", "22:00", "07:00")
    start, end = quiet_period(night, utc(2026, 4, 4, 16, 0))  # type: ignore[misc]
    assert start == local("Australia/Sydney", 2026, 4, 4, 22, 0)
    assert end == local("Australia/Sydney", 2026, 4, 5, 7, 0)
    assert end - start == (utc(2026, 4, 4, 21, 0) - utc(2026, 4, 4, 11, 0))


# ---------------------------------------------------------------- DST nights, New York


def test_new_york_spring_forward_night() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC); 02:00-03:00 does not exist.
    night = profile("America/New_York", "22:00", "07:00")
    start, end = quiet_period(night, utc(2026, 3, 8, 5, 0))  # type: ignore[misc]
    assert start == utc(2026, 3, 8, 3, 0)  # 22:00 EST
    assert end == utc(2026, 3, 8, 11, 0)  # 07:00 EDT: 8 real hours
    assert in_quiet_hours(night, utc(2026, 3, 8, 10, 59))
    assert not in_quiet_hours(night, utc(2026, 3, 8, 11, 0))


def test_new_york_end_inside_the_skipped_hour() -> None:
    # Ending at 02:30, which that night does not exist: the period ends at the jump (03:00 EDT).
    night = profile("America/New_York", "22:00", "02:30")
    assert quiet_hours_end(night, utc(2026, 3, 8, 6, 59)) == utc(2026, 3, 8, 7, 0)
    assert not in_quiet_hours(night, utc(2026, 3, 8, 7, 0))  # 03:00 EDT
    # The nights around it end at 02:30 as usual.
    assert quiet_hours_end(night, utc(2026, 3, 7, 7, 0)) == utc(2026, 3, 7, 7, 30)  # EST
    assert quiet_hours_end(night, utc(2026, 3, 9, 6, 0)) == utc(2026, 3, 9, 6, 30)  # EDT


def test_new_york_start_inside_the_skipped_hour() -> None:
    # Starting at 02:30, which that night does not exist: the period starts at 03:00 EDT.
    early = profile("America/New_York", "02:30", "06:00")
    assert not in_quiet_hours(early, utc(2026, 3, 8, 6, 59))  # 01:59 EST
    assert quiet_period(early, utc(2026, 3, 8, 7, 0)) == (
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 8, 10, 0),
    )


def test_new_york_fall_back_night() -> None:
    # 2026-11-01: 02:00 EDT goes back to 01:00 EST (06:00 UTC); 01:00-02:00 happens twice.
    night = profile("America/New_York", "22:00", "07:00")
    start, end = quiet_period(night, utc(2026, 11, 1, 5, 30))  # type: ignore[misc]
    assert start == utc(2026, 11, 1, 2, 0)  # 22:00 EDT
    assert end == utc(2026, 11, 1, 12, 0)  # 07:00 EST: 10 real hours
    for minute in range(0, 10 * 60, 5):  # quiet throughout, including both 01:xx hours
        assert in_quiet_hours(night, utc(2026, 11, 1, 2, 0) + minute * (end - start) / 600)


def test_new_york_end_inside_the_repeated_hour() -> None:
    # Ending at 01:30: the first 01:30 (EDT, 05:30 UTC) ends it; the repeated 01:00-01:30 EST
    # does not make the night quiet again.
    night = profile("America/New_York", "22:00", "01:30")
    assert quiet_hours_end(night, utc(2026, 11, 1, 5, 0)) == utc(2026, 11, 1, 5, 30)
    assert not in_quiet_hours(night, utc(2026, 11, 1, 5, 30))
    assert not in_quiet_hours(night, local("America/New_York", 2026, 11, 1, 1, 15, fold=1))
    assert not in_quiet_hours(night, utc(2026, 11, 1, 6, 15))


def test_new_york_start_inside_the_repeated_hour() -> None:
    # Starting at 01:30: quiet from the first 01:30 (EDT) straight through the repeat.
    early = profile("America/New_York", "01:30", "07:00")
    assert not in_quiet_hours(early, utc(2026, 11, 1, 5, 29))  # 01:29 EDT
    assert in_quiet_hours(early, utc(2026, 11, 1, 5, 30))  # 01:30 EDT
    assert in_quiet_hours(early, local("America/New_York", 2026, 11, 1, 1, 10, fold=1))  # EST
    assert quiet_hours_end(early, utc(2026, 11, 1, 6, 10)) == utc(2026, 11, 1, 12, 0)


# ---------------------------------------------------------------- DST nights, London


def test_london_spring_forward_night() -> None:
    # 2026-03-29: 01:00 GMT jumps to 02:00 BST; 01:00-02:00 does not exist.
    night = profile("Europe/London", "23:00", "01:30")
    start, end = quiet_period(night, utc(2026, 3, 28, 23, 30))  # type: ignore[misc]
    assert start == utc(2026, 3, 28, 23, 0)
    assert end == utc(2026, 3, 29, 1, 0)  # the jump: 01:30 is never shown that night
    assert not in_quiet_hours(night, utc(2026, 3, 29, 1, 0))  # 02:00 BST
    usual = profile("Europe/London", "23:00", "07:00")
    assert quiet_hours_end(usual, utc(2026, 3, 29, 3, 0)) == utc(2026, 3, 29, 6, 0)  # 07:00 BST


def test_london_fall_back_night() -> None:
    # 2026-10-25: 02:00 BST goes back to 01:00 GMT (01:00 UTC); 01:00-02:00 happens twice.
    night = profile("Europe/London", "23:00", "01:30")
    assert quiet_period(night, utc(2026, 10, 24, 23, 0)) == (
        utc(2026, 10, 24, 22, 0),  # 23:00 BST
        utc(2026, 10, 25, 0, 30),  # the first 01:30 (BST)
    )
    assert not in_quiet_hours(night, utc(2026, 10, 25, 1, 15))  # 01:15 GMT, the repeat
    usual = profile("Europe/London", "23:00", "07:00")
    assert quiet_period(usual, utc(2026, 10, 25, 1, 15)) == (
        utc(2026, 10, 24, 22, 0),
        utc(2026, 10, 25, 7, 0),  # 07:00 GMT
    )


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", ["Mars/Olympus_Mons", "America", "new york", "../etc/passwd"])
def test_unknown_time_zone_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidMessage, match="timezone: .*unknown time zone"):
        decode(Profile, f'{{"user_id": "u-1", "timezone": "{bad}"}}'.encode())


def test_known_time_zones_and_new_fields_are_accepted() -> None:
    raw = b'{"v": 1, "user_id": "u-1", "timezone": "Australia/Sydney", "market_hours_only": true}'
    parsed = decode(Profile, raw)
    assert parsed.timezone == "Australia/Sydney"
    assert parsed.market_hours_only
    assert not decode(Profile, b'{"user_id": "u-1"}').market_hours_only
    assert b"market_hours_only" in parsed.to_json()
    assert b"market_hours_only" not in decode(Profile, b'{"user_id": "u-1"}').to_json()
