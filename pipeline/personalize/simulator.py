"""An engagement simulator: simulated users turn the notifications they get into feedback.

No real engagement data exists here, so the trained relevance model and the EMA scores are
measured on users whose preferences are known to us and hidden from both. Plain Python,
deterministic: the same seed, users and notifications give the same feedback, whatever order
users are simulated in (each alert's draws come from its own generator, seeded by the seed and
the alert id). docs/personalization.md ("The engagement simulator") states the model.

Hidden preferences of a user (``SimulatedUser.draw``), in log-odds
    ``base`` ~ N(base_mean, base_spread); per symbol ~ N(0, symbol_spread); per condition type
    ~ N(0, condition_spread); a time-of-day curve ``amplitude · cos(2π (h − peak) / 24)`` of the
    local hour h (minutes included, in the user's time zone), peak ~ U(peak_from, peak_to),
    amplitude ~ U(amplitude_from, amplitude_to).

Engagement with an alert of a notification handed over at time t
    ``logit = base + symbol[s] + mean(condition[c] for its condition types) + day(h)
    + priority[p] − fatigue · max(0, notified_last_hour − fatigue_free) + ε``, ε ~ N(0, noise);
    ``notified_last_hour`` counts the user's alerts in notifications of the hour before t.
    With probability sigmoid(logit) the user opens it after a log-normal delay (median
    ``open_delay_push`` when the notification pushed, ``open_delay_in_app`` when it went to the
    in-app feed only; spread ``delay_sigma``), and then acts on it with probability
    sigmoid(logit + act_shift), ``act_delay`` (median) later. Otherwise the user dismisses it
    (``dismiss_share``), snoozes it (``snooze_share``), mutes it when its symbol and condition
    preferences sum below ``mute_below`` (``mute_share``), or ignores it. A pushed notification
    is also reported ``delivered`` ``delivered_delay`` after t. An alert gets feedback once, at
    the first notification that names it.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pipeline.messages import Channel, Feedback, FeedbackAction, Notification, TriggeredAlert

__all__ = ["EngagementSimulator", "SimulatedUser", "SimulatorConfig"]

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class SimulatorConfig:
    """The generative model's parameters (module docstring); delays in seconds."""

    seed: int = 15
    base_mean: float = -0.6
    base_spread: float = 0.4
    symbol_spread: float = 1.0
    condition_spread: float = 0.9
    peak_from: float = 9.0
    peak_to: float = 21.0
    amplitude_from: float = 0.6
    amplitude_to: float = 1.6
    priority: dict[str, float] = field(
        default_factory=lambda: {"LOW": -0.4, "MEDIUM": 0.0, "HIGH": 0.3, "CRITICAL": 1.0}
    )
    noise: float = 0.5
    fatigue: float = 0.08
    fatigue_free: int = 6
    act_shift: float = -1.0
    dismiss_share: float = 0.35
    snooze_share: float = 0.05
    mute_share: float = 0.3
    mute_below: float = -2.2
    open_delay_push: float = 120.0
    open_delay_in_app: float = 1800.0
    delay_sigma: float = 1.0
    act_delay: float = 90.0
    delivered_delay: float = 2.0


@dataclass(frozen=True)
class SimulatedUser:
    """A user's time zone and hidden preferences (log-odds)."""

    user_id: str
    timezone: str
    base: float
    symbols: dict[str, float]
    conditions: dict[str, float]
    peak_hour: float
    amplitude: float

    @classmethod
    def draw(
        cls,
        user_id: str,
        timezone: str,
        symbols: Sequence[str],
        condition_types: Sequence[str],
        config: SimulatorConfig,
    ) -> SimulatedUser:
        """A user's preferences, from a generator seeded by the seed and the user id."""
        rng = random.Random(f"{config.seed}|user|{user_id}")
        return cls(
            user_id=user_id,
            timezone=timezone,
            base=rng.gauss(config.base_mean, config.base_spread),
            symbols={s: rng.gauss(0, config.symbol_spread) for s in symbols},
            conditions={c: rng.gauss(0, config.condition_spread) for c in condition_types},
            peak_hour=rng.uniform(config.peak_from, config.peak_to),
            amplitude=rng.uniform(config.amplitude_from, config.amplitude_to),
        )

    def day_curve(self, at: datetime) -> float:
        local = at.astimezone(ZoneInfo(self.timezone))
        hour = local.hour + local.minute / 60
        return self.amplitude * math.cos(2 * math.pi * (hour - self.peak_hour) / 24)

    def taste(self, alert: TriggeredAlert) -> float:
        """The symbol and condition-type part of the preference."""
        kinds = list(dict.fromkeys(alert.condition_types))
        condition = sum(self.conditions.get(c, 0.0) for c in kinds) / len(kinds) if kinds else 0.0
        return self.symbols.get(alert.symbol, 0.0) + condition


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


class EngagementSimulator:
    """Feedback for notifications, from the users' hidden preferences (module docstring)."""

    def __init__(self, users: Iterable[SimulatedUser], config: SimulatorConfig) -> None:
        self.users = {user.user_id: user for user in users}
        self.config = config
        self._answered: set[str] = set()
        self._recent: dict[str, deque[tuple[datetime, int]]] = {}

    def logit(self, user: SimulatedUser, alert: TriggeredAlert, at: datetime) -> float:
        """The noiseless engagement log-odds of ``alert`` shown at ``at`` (fatigue aside)."""
        c = self.config
        return (
            user.base
            + user.taste(alert)
            + user.day_curve(at)
            + c.priority.get(alert.priority.value, 0.0)
        )

    def react(self, notification: Notification, alerts: Sequence[TriggeredAlert]) -> list[Feedback]:
        """The user's feedback on a notification handed over at its ``window_end``; ``alerts``
        are the triggered alerts it names (others are skipped). Time-ordered."""
        user = self.users.get(notification.user_id)
        if user is None:
            return []
        c = self.config
        at = notification.window_end
        pushed = any(channel is not Channel.IN_APP for channel in notification.channels)
        recent = self._recent.setdefault(user.user_id, deque())
        while recent and recent[0][0] <= at - HOUR:
            recent.popleft()
        busy = sum(count for _, count in recent)
        named = set(notification.alert_ids)
        fresh = [a for a in alerts if a.alert_id in named and a.alert_id not in self._answered]
        recent.append((at, len(fresh)))
        out: list[Feedback] = []
        for alert in fresh:
            self._answered.add(alert.alert_id)
            rng = random.Random(f"{c.seed}|alert|{alert.alert_id}")
            logit = self.logit(user, alert, at) - c.fatigue * max(0, busy - c.fatigue_free)
            logit += rng.gauss(0, c.noise)

            def feedback(
                action: FeedbackAction, seconds: float, alert: TriggeredAlert = alert
            ) -> None:
                out.append(
                    Feedback(
                        user_id=user.user_id,
                        alert_id=alert.alert_id,
                        action=action,
                        ts=at + timedelta(seconds=round(seconds, 3)),
                    )
                )

            if pushed:
                feedback(FeedbackAction.DELIVERED, c.delivered_delay)
            median = c.open_delay_push if pushed else c.open_delay_in_app
            delay = median * math.exp(rng.gauss(0, c.delay_sigma))
            if rng.random() < _sigmoid(logit):
                feedback(FeedbackAction.OPENED, delay)
                if rng.random() < _sigmoid(logit + c.act_shift):
                    feedback(
                        FeedbackAction.ACTED, delay + c.act_delay * math.exp(rng.gauss(0, 0.5))
                    )
                continue
            draw = rng.random()
            if draw < c.dismiss_share:
                feedback(FeedbackAction.DISMISSED, delay)
            elif draw < c.dismiss_share + c.snooze_share:
                feedback(FeedbackAction.SNOOZED, delay)
            elif (
                user.taste(alert) < c.mute_below
                and draw < c.dismiss_share + c.snooze_share + c.mute_share
            ):
                feedback(FeedbackAction.MUTED, delay)
        out.sort(key=lambda fb: (fb.ts, fb.alert_id, fb.action.value))
        return out
