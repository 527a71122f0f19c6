"""The NYSE trading calendar (regular sessions, holidays, half days) and OCC option symbols.

Sessions come from the well-kept ``exchange_calendars`` package (XNYS), loaded once per process
for 2020-2030 and kept as a sorted list of dates, so lookups are a bisection.
"""

from __future__ import annotations

import re
import warnings
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import date
from functools import cache

CALENDAR_START = "2020-01-01"
CALENDAR_END = "2030-12-31"
OCC_PATTERN = re.compile(
    r"^(?P<root>[A-Z0-9.]{1,6})\s*(?P<date>\d{6})(?P<right>[CP])(?P<strike>\d{8})$"
)


@dataclass(frozen=True, slots=True)
class OccSymbol:
    root: str
    expiry: date
    right: str
    strike: float


def parse_occ(symbol: str) -> OccSymbol | None:
    """``AAPL  260117C00200000`` -> (AAPL, 2026-01-17, C, 200.0); None if not an OCC symbol."""
    match = OCC_PATTERN.match(symbol)
    if match is None:
        return None
    yymmdd = match.group("date")
    try:
        expiry = date(2000 + int(yymmdd[:2]), int(yymmdd[2:4]), int(yymmdd[4:]))
    except ValueError:
        return None
    return OccSymbol(
        match.group("root"), expiry, match.group("right"), int(match.group("strike")) / 1000
    )


@cache
def nyse_sessions() -> tuple[date, ...]:
    import exchange_calendars

    with warnings.catch_warnings():
        # exchange_calendars trips a pandas deprecation warning internally; nothing for us to do.
        warnings.simplefilter("ignore")
        calendar = exchange_calendars.get_calendar("XNYS", start=CALENDAR_START, end=CALENDAR_END)
        return tuple(session.date() for session in calendar.sessions)


def trading_days_until(today: date, expiry: date) -> int | None:
    """NYSE sessions after ``today`` up to and including ``expiry``; 0 when it expires today.

    None when ``expiry`` is past or outside the calendar's years.
    """
    if expiry < today:
        return None
    sessions = nyse_sessions()
    if not sessions or expiry > sessions[-1] or today < sessions[0]:
        return None
    return bisect_right(sessions, expiry) - bisect_right(sessions, today)


def is_session(day: date) -> bool:
    sessions = nyse_sessions()
    index = bisect_left(sessions, day)
    return index < len(sessions) and sessions[index] == day
