"""The learning reference scenario: simulated users, trading days, alerts, notifications, feedback.

The consolidation reference scenario (docs/consolidation.md: 10 symbols, a seeded random walk
with 0.09 % noise and occasional 0.8 % shocks, breakout / drop / RSI rules, stop losses) made
longer and wider for learning: ``days`` NYSE trading days from 2026-01-05, ticks every 15 s from
08:00 to 18:00 New York (pre-market, regular session and post-market), and ``users`` users in
six time zones, each with rules on five of the ten symbols and a profile of their own. The
rule engine and the user desk are the dataflow's own classes (as in bench/consolidation.py);
the engagement simulator (pipeline/personalize/simulator.py) answers every notification, and its
feedback goes back into the user's desk in event time, so mutes and learnt scores act on the
alerts after them as they would in the job. Seeded: the same arguments give the same output.
docs/personalization.md ("The learning reference scenario") describes it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.evaluate.engine import ShardEngine
from pipeline.market_calendar import is_session
from pipeline.messages import Feedback, Notification, Profile, Rule, Tick, TriggeredAlert
from pipeline.personalize.desk import Dispatch, UserDesk, UserInput
from pipeline.personalize.simulator import EngagementSimulator, SimulatedUser, SimulatorConfig

FIRST_DAY = date(2026, 1, 5)
NEW_YORK = ZoneInfo("America/New_York")
DAY_START, DAY_END = time(8, 0), time(18, 0)
STEP = timedelta(seconds=15)
# The reference scenario's symbols and first prices, shared with bench/consolidation.py.
SYMBOLS = {
    "AAPL": 200.0,
    "MSFT": 420.0,
    "NVDA": 180.0,
    "TSLA": 400.0,
    "AMZN": 230.0,
    "META": 600.0,
    "GOOG": 190.0,
    "AMD": 150.0,
    "SPY": 600.0,
    "QQQ": 520.0,
}
TIMEZONES = (
    "America/New_York",
    "Europe/London",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "America/Chicago",
    "Australia/Sydney",
)
CONDITION_TYPES = (
    "price_crosses_above",
    "percent_move_down",
    "rsi_above",
    "rsi_below",
    "new_high",
    "sma_cross_up",
    "price_below",
)
WATCHED = 5
_TICK = timedelta(milliseconds=1)


@dataclass
class Scenario:
    """What the scenario produced, as the job's topics would carry it."""

    profiles: list[Profile] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    alerts: list[TriggeredAlert] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    users: list[SimulatedUser] = field(default_factory=list)


def trading_days(count: int) -> list[date]:
    days: list[date] = []
    day = FIRST_DAY
    while len(days) < count:
        if is_session(day):
            days.append(day)
        day += timedelta(days=1)
    return days


def _user_rules(user_id: str, symbols: list[str]) -> list[Rule]:
    bodies: list[dict[str, Any]] = []
    for index, symbol in enumerate(symbols):
        price = SYMBOLS[symbol]
        bar = {"period": 14, "timeframe": "5m"}
        bodies += [
            {
                "symbol": symbol,
                "conditions": {"type": "price_crosses_above", "threshold": round(price * 1.01, 2)},
                "priority": "HIGH",
                "cooldown_seconds": 600,
            },
            {
                "symbol": symbol,
                "conditions": {"type": "percent_move_down", "percent": 1.0, "window_seconds": 900},
                "priority": "MEDIUM",
                "cooldown_seconds": 900,
            },
            {
                "symbol": symbol,
                "conditions": {
                    "any": [
                        {"type": "rsi_above", "threshold": 70, **bar},
                        {"type": "rsi_below", "threshold": 30, **bar},
                    ]
                },
                "priority": "LOW",
                "cooldown_seconds": 1800,
            },
            {
                "symbol": symbol,
                "conditions": {"type": "new_high", "period": 12, "timeframe": "5m"},
                "priority": "MEDIUM",
                "cooldown_seconds": 1800,
            },
            {
                "symbol": symbol,
                "conditions": {"type": "sma_cross_up", "fast": 5, "slow": 20, "timeframe": "5m"},
                "priority": "LOW",
                "cooldown_seconds": 1800,
            },
        ]
        if index == 0:  # a stop loss on the position the user holds
            bodies.append(
                {
                    "symbol": symbol,
                    "conditions": {"type": "price_below", "threshold": round(price * 0.985, 2)},
                    "priority": "CRITICAL",
                    "cooldown_seconds": 3600,
                }
            )
    return [
        Rule.model_validate(
            {"id": f"{user_id}-r{i:02d}", "user_id": user_id, "name": f"rule {i}", **b}
        )
        for i, b in enumerate(bodies)
    ]


def _profile(user_id: str, index: int) -> Profile:
    push = ["in_app", "push"]
    return Profile.model_validate(
        {
            "user_id": user_id,
            "timezone": TIMEZONES[index % len(TIMEZONES)],
            "channels": {
                "LOW": ["in_app"],
                "MEDIUM": push if index % 2 == 0 else ["in_app"],
                "HIGH": push,
                "CRITICAL": [*push, "sms"],
            },
            "digest_seconds": (300, 600)[index % 2],
            "max_per_hour": 12,
        }
    )


def _ticks(day: date, seed: int) -> Iterator[Tick]:
    rng = random.Random(f"{seed}|ticks|{day.isoformat()}")
    prices = dict(SYMBOLS)  # every day starts from the same prices: the rules' levels stay apt
    ts = datetime.combine(day, DAY_START, NEW_YORK).astimezone(UTC)
    end = datetime.combine(day, DAY_END, NEW_YORK).astimezone(UTC)
    while ts < end:
        for symbol in SYMBOLS:
            shock = rng.gauss(0, 0.0009) + (rng.random() < 0.002) * rng.choice([-1, 1]) * 0.008
            prices[symbol] = round(prices[symbol] * (1 + shock), 2)
            yield Tick(symbol=symbol, ts=ts, price=prices[symbol], size=rng.choice([100, 200, 500]))
        ts += STEP


def simulate(users: int, days: int, config: SimulatorConfig) -> Scenario:
    """Run the scenario (module docstring)."""
    out = Scenario()
    rng = random.Random(f"{config.seed}|scenario")
    for index in range(users):
        user_id = f"sim-{index + 1:02d}"
        profile = _profile(user_id, index)
        watched = rng.sample(sorted(SYMBOLS), WATCHED)
        out.profiles.append(profile)
        out.rules += _user_rules(user_id, watched)
        out.users.append(
            SimulatedUser.draw(user_id, profile.timezone, watched, CONDITION_TYPES, config)
        )
    for day in trading_days(days):
        engine = ShardEngine()  # each day afresh, like its prices
        engine.process(out.rules)
        out.alerts += engine.process(_ticks(day, config.seed))
        out.alerts += engine.close_bars()
    out.alerts.sort(key=lambda a: (a.triggered_at, a.user_id, a.alert_id))
    simulator = EngagementSimulator(out.users, config)
    seen: set[str] = set()
    for profile in out.profiles:
        mine = [a for a in out.alerts if a.user_id == profile.user_id]
        for note, feedback in _run_user(profile, mine, simulator):
            if note.notification_id not in seen:
                seen.add(note.notification_id)
                out.notifications.append(note)
            out.feedback += feedback
    out.notifications.sort(key=lambda n: (n.window_end, n.user_id, n.notification_id))
    out.feedback.sort(key=lambda f: (f.ts, f.user_id, f.alert_id, f.action.value))
    return out


def _run_user(
    profile: Profile, alerts: list[TriggeredAlert], simulator: EngagementSimulator
) -> Iterator[tuple[Notification, list[Feedback]]]:
    """One user's desk in event time: alerts, the simulated feedback as its time comes, and
    the desk's windows, digests and expiries; yields each notification with its feedback."""
    desk = UserDesk()
    desk.process([profile])
    pending: list[tuple[datetime, int, Feedback]] = []
    sequence, index, last = 0, 0, None
    while True:
        due = [desk.next_due()]
        due.append(alerts[index].triggered_at if index < len(alerts) else None)
        due.append(pending[0][0] if pending else None)
        found = [t for t in due if t is not None]
        if not found:
            break
        now = min(found)
        if last is not None and now <= last:
            now = last + _TICK  # only the desk's own due time can repeat: step past it
        last = now
        batch: list[UserInput] = []
        while pending and pending[0][0] <= now:
            batch.append(heapq.heappop(pending)[2])
        while index < len(alerts) and alerts[index].triggered_at <= now:
            batch.append(alerts[index])
            index += 1
        outputs = [*desk.process(batch), *desk.advance(now)]
        for output in outputs:
            if isinstance(output, Dispatch):
                feedback = simulator.react(output.notification, output.alerts)
                for fb in feedback:
                    heapq.heappush(pending, (fb.ts, sequence, fb))
                    sequence += 1
                yield output.notification, feedback
    for output in desk.close_all():
        if isinstance(output, Dispatch):
            yield output.notification, simulator.react(output.notification, output.alerts)
