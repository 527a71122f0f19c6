"""Quiet hours: a user's nightly do-not-disturb period, in the user's own time zone.

A profile's ``quiet_hours`` are two wall-clock times ``start`` and ``end`` ("HH:MM") in its
IANA ``timezone`` (zoneinfo). ``end`` earlier than ``start`` spans midnight (22:00-07:00 runs
from 22:00 one evening to 07:00 the next morning); ``start == end`` means no quiet hours (not a
24-hour period). Times are event times: callers pass the ``ts`` of the alert or notification,
never the wall clock.

Each local day D has one quiet period: from the first instant the local clock reads ``start``
on D to the first instant after it at which the clock reads ``end`` (on D, or on D + 1 for a
span over midnight). Periods are half-open: ``start`` is quiet, ``end`` is not. Daylight saving
time follows from that definition:

- a wall time the clocks skip (New York 2026-03-08 02:00-03:00, London 2026-03-29 01:00-02:00)
  is reached at the jump: a period starting or ending at 02:30 in New York that night starts or
  ends at 03:00 EDT (07:00 UTC);
- a wall time the clocks repeat (New York 2026-11-01 01:00-02:00, London 2026-10-25
  01:00-02:00) counts at its first occurrence (daylight time, fold=0): a period ending at 01:30
  ends at the first 01:30 and does not come back during the repeated hour; a period starting at
  01:30 starts at the first 01:30 and stays quiet through the repeat;
- so a night's period lasts an hour less (spring) or more (autumn) in real time when it spans
  the switch; 22:00-07:00 is always 22:00 to 07:00 on the user's clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from pipeline.messages import Profile

ONE_DAY = timedelta(days=1)


def in_quiet_hours(profile: Profile, ts: datetime) -> bool:
    """Whether ``ts`` (timezone-aware) falls in one of the profile's quiet periods."""
    return quiet_period(profile, ts) is not None


def quiet_hours_end(profile: Profile, ts: datetime) -> datetime | None:
    """When the quiet period containing ``ts`` ends (UTC); None if ``ts`` is not in one."""
    period = quiet_period(profile, ts)
    return None if period is None else period[1]


def quiet_period(profile: Profile, ts: datetime) -> tuple[datetime, datetime] | None:
    """(start, end) in UTC of the quiet period containing ``ts``; None if ``ts`` is not in one."""
    if ts.tzinfo is None:
        raise ValueError("ts must be a timezone-aware datetime")
    hours = profile.quiet_hours
    if hours is None or hours.start == hours.end:
        return None
    zone = ZoneInfo(profile.timezone)  # zoneinfo caches its instances
    start, end = _clock(hours.start), _clock(hours.end)
    end_offset = ONE_DAY if end < start else timedelta(0)
    today = ts.astimezone(zone).date()
    # The period that began on the previous day may still run (22:00-07:00 at 03:00).
    for day in (today - ONE_DAY, today):
        begin = _instant(day, start, zone)
        if ts < begin:
            break
        finish = _instant(day + end_offset, end, zone)
        if ts < finish:
            return begin, finish
    return None


@lru_cache(maxsize=64)
def _clock(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


@lru_cache(maxsize=4096)
def _instant(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the local clock of ``zone`` reads ``clock`` on ``day``.

    A repeated wall time gives its first occurrence; a skipped one gives the instant of the
    jump over it.
    """
    local = datetime.combine(day, clock, zone)  # fold=0: the earlier of a repeated time
    instant = local.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # Skipped: fold=0 reads the time with the offset before the jump, fold=1 with the one after,
    # so the jump lies between the two readings.
    return _transition(zone, local.replace(fold=1).astimezone(UTC), instant)


def _transition(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant in (before, after] at which ``zone``'s UTC offset changes (bisection)."""
    offset = before.astimezone(zone).utcoffset()
    low, high = int(before.timestamp()), int(after.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)
