"""The engagement simulator (pipeline/personalize/simulator.py): deterministic by seed, and its
users' hidden preferences (symbol, condition type, local time of day) show in their feedback."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from pipeline.messages import Feedback, FeedbackAction, Notification, TriggeredAlert
from pipeline.personalize.simulator import EngagementSimulator, SimulatedUser, SimulatorConfig

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "META")
CONDITIONS = ("price_crosses_above", "percent_move_down", "rsi_above", "new_high")
START = datetime(2026, 1, 5, tzinfo=UTC)
ENGAGED = {FeedbackAction.OPENED}


def stream(
    count: int, user_id: str = "u-1", seed: int = 1, channels: tuple[str, ...] = ("in_app", "push")
) -> list[tuple[Notification, list[TriggeredAlert]]]:
    """``count`` one-alert notifications, 25 minutes apart (no fatigue), random symbol,
    condition and priority."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        at = START + timedelta(minutes=25 * i)
        alert = TriggeredAlert(
            alert_id=f"{user_id}-a{i}",
            rule_id=f"r{i % 7}",
            rule_version=1,
            user_id=user_id,
            symbol=rng.choice(SYMBOLS),
            priority=rng.choice(["LOW", "MEDIUM", "HIGH"]),
            title="t",
            message="m",
            triggered_at=at,
            condition_types=[rng.choice(CONDITIONS)],
            values={},
        )
        note = Notification(
            notification_id=f"{user_id}-n{i}",
            user_id=user_id,
            alert_ids=[alert.alert_id],
            title="t",
            message="m",
            highest_priority=alert.priority,
            channels=list(channels),
            window_start=at,
            window_end=at,
        )
        out.append((note, [alert]))
    return out


def user(user_id: str = "u-1", timezone: str = "America/New_York", seed: int = 15) -> SimulatedUser:
    return SimulatedUser.draw(user_id, timezone, SYMBOLS, CONDITIONS, SimulatorConfig(seed=seed))


def run(
    users: list[SimulatedUser], notes: list[tuple[Notification, list[TriggeredAlert]]], seed: int
) -> list[Feedback]:
    simulator = EngagementSimulator(users, SimulatorConfig(seed=seed))
    return [fb for note, alerts in notes for fb in simulator.react(note, alerts)]


def test_the_same_seed_gives_the_same_feedback_and_another_seed_other_feedback() -> None:
    notes = stream(300)
    first = run([user()], notes, seed=15)
    assert first == run([user()], notes, seed=15)
    assert first != run([user(seed=16)], notes, seed=16)
    assert user() == user() and user() != user(seed=16)


def test_users_are_simulated_independently_of_each_other() -> None:
    """One user's feedback does not depend on which other users are simulated, nor on the
    order their notifications come in."""
    alone = run([user("u-1")], stream(200, "u-1"), seed=15)
    a, b = stream(200, "u-1"), stream(200, "u-2", seed=2)
    interleaved = [item for pair in zip(b, a, strict=True) for item in pair]
    together = run([user("u-1"), user("u-2", "Asia/Tokyo")], interleaved, seed=15)
    assert [fb for fb in together if fb.user_id == "u-1"] == alone


def open_rates(feedback: list[Feedback], by: dict[str, str]) -> dict[str, float]:
    opened = {fb.alert_id for fb in feedback if fb.action in ENGAGED}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for alert_id, key in by.items():
        counts[key][0] += alert_id in opened
        counts[key][1] += 1
    return {key: engaged / total for key, (engaged, total) in counts.items()}


def test_hidden_preferences_by_symbol_condition_and_hour_show_in_the_feedback() -> None:
    someone = user()
    notes = stream(6000)
    feedback = run([someone], notes, seed=15)
    alerts = [alert for _, alerts in notes for alert in alerts]

    by_symbol = open_rates(feedback, {a.alert_id: a.symbol for a in alerts})
    liked = max(SYMBOLS, key=lambda s: someone.symbols[s])
    disliked = min(SYMBOLS, key=lambda s: someone.symbols[s])
    assert by_symbol[liked] > by_symbol[disliked] + 0.15

    by_condition = open_rates(feedback, {a.alert_id: a.condition_types[0] for a in alerts})
    ranked = sorted(CONDITIONS, key=lambda c: someone.conditions[c])
    assert by_condition[ranked[-1]] > by_condition[ranked[0]] + 0.1

    # The local hours nearest to and farthest from the user's peak.
    zone = ZoneInfo(someone.timezone)

    def distance(at: datetime) -> float:
        local = at.astimezone(zone)
        gap = abs(local.hour + local.minute / 60 - someone.peak_hour) % 24
        return min(gap, 24 - gap)

    by_time = open_rates(
        feedback,
        {
            a.alert_id: "near" if distance(a.triggered_at) < 3 else "far"
            for a in alerts
            if distance(a.triggered_at) < 3 or distance(a.triggered_at) > 9
        },
    )
    assert by_time["near"] > by_time["far"] + 0.2

    # Overall, the open rate follows the noiseless probability (the noise only blurs it).
    simulator = EngagementSimulator([someone], SimulatorConfig(seed=15))
    expected = sum(
        1 / (1 + math.exp(-simulator.logit(someone, a, a.triggered_at))) for a in alerts
    ) / len(alerts)
    observed = len({fb.alert_id for fb in feedback if fb.action in ENGAGED}) / len(alerts)
    assert abs(observed - expected) < 0.05


def test_pushed_notifications_are_opened_sooner_and_reported_delivered() -> None:
    pushed = run([user()], stream(800), seed=15)
    in_app = run([user()], stream(800, channels=("in_app",)), seed=15)
    assert {fb.action for fb in in_app}.isdisjoint({FeedbackAction.DELIVERED})
    assert sum(fb.action is FeedbackAction.DELIVERED for fb in pushed) == 800

    def median_delay(feedback: list[Feedback]) -> float:
        delays = sorted(
            (fb.ts - START).total_seconds() % 1500
            for fb in feedback
            if fb.action is FeedbackAction.OPENED
        )
        return delays[len(delays) // 2]

    assert median_delay(pushed) < median_delay(in_app)


def test_an_alert_gets_feedback_once_and_acting_comes_after_opening() -> None:
    notes = stream(500)
    simulator = EngagementSimulator([user()], SimulatorConfig(seed=15))
    first = [fb for note, alerts in notes for fb in simulator.react(note, alerts)]
    again = [fb for note, alerts in notes for fb in simulator.react(note, alerts)]
    assert first and again == []
    opened = {fb.alert_id: fb.ts for fb in first if fb.action is FeedbackAction.OPENED}
    acted = [fb for fb in first if fb.action is FeedbackAction.ACTED]
    assert acted and all(fb.ts > opened[fb.alert_id] for fb in acted)


def test_the_learning_reference_scenario_is_seeded_and_answers_each_notified_alert_once() -> None:
    from pipeline.cli.learning_scenario import simulate

    first = simulate(2, 1, SimulatorConfig(seed=15))
    again = simulate(2, 1, SimulatorConfig(seed=15))
    assert first.alerts and first.notifications and first.feedback
    assert (first.alerts, first.notifications, first.feedback) == (
        again.alerts,
        again.notifications,
        again.feedback,
    )
    assert simulate(2, 1, SimulatorConfig(seed=16)).feedback != first.feedback
    # Feedback names notified alerts, comes after the first notification that names them, and
    # opens an alert at most once.
    shown: dict[str, datetime] = {}
    for note in first.notifications:
        for alert_id in note.alert_ids:
            shown.setdefault(alert_id, note.window_end)
    assert all(fb.alert_id in shown and fb.ts > shown[fb.alert_id] for fb in first.feedback)
    opens = [fb.alert_id for fb in first.feedback if fb.action is FeedbackAction.OPENED]
    assert len(opens) == len(set(opens))
    assert {p.timezone for p in first.profiles} == {"America/New_York", "Europe/London"}
