"""The NYSE trading calendar (sessions, holidays, half days, extended hours) and OCC symbols.

Regular sessions, holidays and early closes come from the well-kept ``exchange_calendars``
package (XNYS), loaded once per process for 2020-2030. Extended hours are not in that package;
they follow NYSE's published hours (nyse.com, "Holidays and Trading Hours" and the NYSE Arca
trading-sessions page):

- pre-market (NYSE Arca "early trading session"): 04:00 ET to the regular open (09:30 ET);
- regular (core) session: 09:30-16:00 ET, or 09:30-13:00 ET on an early-close (half) day;
- post-market ("late trading session"): the regular close to 20:00 ET; on an early-close day the
  regular session ends at 13:00 ET and the late session closes at 17:00 ET;
- holidays and weekends: closed all day (no extended hours either).

ET is America/New_York, so every bound follows its DST switches: the regular open is 14:30 UTC
in winter (EST) and 13:30 UTC in summer (EDT). The bounds are computed once per session day as
UTC epoch seconds in one sorted list ``[pre, open, close, post end]`` per day, so the questions
asked per event (``market_phase`` & co.) are one bisection. Every interval is half-open: 09:30:00
is regular, 16:00:00 is post-market, 20:00:00 is closed.
"""

from __future__ import annotations

import re
import warnings
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from functools import cache
from itertools import pairwise
from typing import Any, Literal
from zoneinfo import ZoneInfo

CALENDAR_START = "2020-01-01"
CALENDAR_END = "2030-12-31"
EXCHANGE_TZ = ZoneInfo("America/New_York")
PRE_MARKET_OPEN = time(4, 0)  # NYSE Arca early trading session opens 4:00 a.m. ET
REGULAR_CLOSE = time(16, 0)  # a close earlier than this is an early close (half day)
POST_MARKET_CLOSE = time(20, 0)  # late trading session ends 8:00 p.m. ET
POST_MARKET_CLOSE_HALF_DAY = time(17, 0)  # ... and 5:00 p.m. ET on early-close days

MarketPhase = Literal["pre", "regular", "post", "closed"]
_PHASES: tuple[MarketPhase, ...] = ("pre", "regular", "post", "closed")

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


# ---------------------------------------------------------------- the calendar, loaded once


@dataclass(frozen=True, slots=True)
class SessionBounds:
    """One NYSE session day: pre-market opens, regular opens, regular closes, post closes (UTC)."""

    day: date
    pre_open: datetime
    open: datetime
    close: datetime
    post_close: datetime

    @property
    def is_half_day(self) -> bool:
        return self.close.astimezone(EXCHANGE_TZ).time() < REGULAR_CLOSE


@dataclass(frozen=True, slots=True)
class _Table:
    days: tuple[date, ...]
    sessions: tuple[SessionBounds, ...]
    edges: tuple[float, ...]  # epoch seconds of pre_open, open, close, post_close of each day
    opens: tuple[float, ...]


def _load_xnys() -> list[tuple[date, datetime, datetime]]:
    """(day, regular open, regular close) of each XNYS session; half days close early."""
    import exchange_calendars

    with warnings.catch_warnings():
        # exchange_calendars trips a pandas deprecation warning internally; nothing for us to do.
        warnings.simplefilter("ignore")
        calendar: Any = exchange_calendars.get_calendar(
            "XNYS", start=CALENDAR_START, end=CALENDAR_END
        )
        return [
            (session.date(), open_.to_pydatetime(), close.to_pydatetime())
            for session, open_, close in zip(
                calendar.sessions, calendar.opens, calendar.closes, strict=True
            )
        ]


def _exchange_time(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, EXCHANGE_TZ).astimezone(UTC)


@cache
def _table() -> _Table:
    sessions = []
    for day, open_, close in _load_xnys():
        half_day = close.astimezone(EXCHANGE_TZ).time() < REGULAR_CLOSE
        post_close = POST_MARKET_CLOSE_HALF_DAY if half_day else POST_MARKET_CLOSE
        sessions.append(
            SessionBounds(
                day,
                _exchange_time(day, PRE_MARKET_OPEN),
                open_.astimezone(UTC),
                close.astimezone(UTC),
                _exchange_time(day, post_close),
            )
        )
    edges = tuple(
        edge.timestamp()
        for bounds in sessions
        for edge in (bounds.pre_open, bounds.open, bounds.close, bounds.post_close)
    )
    if any(later <= earlier for earlier, later in pairwise(edges)):
        raise RuntimeError("NYSE session bounds are not strictly increasing")
    return _Table(
        days=tuple(bounds.day for bounds in sessions),
        sessions=tuple(sessions),
        edges=edges,
        opens=tuple(bounds.open.timestamp() for bounds in sessions),
    )


def nyse_sessions() -> tuple[date, ...]:
    """Every NYSE session day of the calendar's years, ascending."""
    return _table().days


def session_bounds(day: date) -> SessionBounds | None:
    """The pre-market, regular and post-market bounds of ``day``; None when NYSE is closed."""
    table = _table()
    index = bisect_left(table.days, day)
    if index < len(table.days) and table.days[index] == day:
        return table.sessions[index]
    return None


# ---------------------------------------------------------------- per event


_NEVER = datetime.max.replace(tzinfo=UTC)
_ALWAYS = datetime.min.replace(tzinfo=UTC)
# The last interval between two edges a lookup landed in, as (start, end, index): events come
# in time order, so most lookups are two datetime comparisons instead of a bisection. One
# tuple, replaced whole, so concurrent readers never see a torn value.
_last_interval: tuple[datetime, datetime, int] = (_NEVER, _ALWAYS, -1)


def _interval_index(ts: datetime) -> int:
    """Index of the last edge at or before ``ts`` (-1 before the first); ``& 3`` is the phase."""
    if ts.tzinfo is None:
        raise ValueError("ts must be a timezone-aware datetime")
    start, end, index = _last_interval
    if start <= ts < end:
        return index
    return _lookup(ts)


def _lookup(ts: datetime) -> int:
    global _last_interval
    edges = _table().edges
    index = bisect_right(edges, ts.timestamp()) - 1
    start = _ALWAYS if index < 0 else datetime.fromtimestamp(edges[index], UTC)
    end = _NEVER if index + 1 >= len(edges) else datetime.fromtimestamp(edges[index + 1], UTC)
    _last_interval = (start, end, index)
    return index


def market_phase(ts: datetime) -> MarketPhase:
    """NYSE's phase at ``ts``: pre-market, regular session, post-market or closed.

    Outside the calendar's years (2020-2030) every instant is ``closed``.
    """
    return _PHASES[_interval_index(ts) & 3]


def is_regular_session(ts: datetime) -> bool:
    return _interval_index(ts) & 3 == 1


def is_extended_hours(ts: datetime) -> bool:
    """Pre-market or post-market (not the regular session)."""
    return _interval_index(ts) & 3 in (0, 2)


def is_any_session(ts: datetime) -> bool:
    """Pre-market, regular session or post-market: NYSE trades in some session."""
    return _interval_index(ts) & 3 != 3


def next_regular_open(ts: datetime) -> datetime:
    """The first regular-session open at or after ``ts`` (UTC).

    ``ts`` at an open returns ``ts``; during a session it is the next session's open. Raises
    ValueError past the calendar's last session.
    """
    if ts.tzinfo is None:
        raise ValueError("ts must be a timezone-aware datetime")
    opens = _table().opens
    index = bisect_left(opens, ts.timestamp())
    if index == len(opens):
        raise ValueError(f"no NYSE session after {ts.isoformat()} in the calendar")
    return datetime.fromtimestamp(opens[index], UTC)


# ---------------------------------------------------------------- per day


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
    return session_bounds(day) is not None
