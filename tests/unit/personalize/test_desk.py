"""The user desk: what reaches a user, when, on which channels (no servers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.ids import notification_id
from pipeline.messages import Channel, Feedback, Notification, Priority, Profile, TriggeredAlert
from pipeline.personalize.desk import (
    AlertOutcome,
    Dispatch,
    PersonalizationConfig,
    UserDesk,
    event_time,
)
from tests.unit import helpers

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York


def at(seconds: float, base: datetime = T0) -> datetime:
    return helpers.at(seconds, base)


def alert(
    seconds: float,
    *,
    rule: str = "r-1",
    symbol: str = "AAPL",
    priority: str = "MEDIUM",
    base: datetime = T0,
    types: tuple[str, ...] = ("price_above",),
) -> TriggeredAlert:
    return helpers.alert(
        seconds, rule_id=rule, symbol=symbol, priority=priority, base=base, types=types,
        message="it happened",
    )  # fmt: skip


def profile(**fields: Any) -> Profile:
    base: dict[str, Any] = {
        "user_id": "u-1",
        "timezone": "America/New_York",
        "channels": {
            "LOW": ["in_app"],
            "MEDIUM": ["in_app", "push"],
            "HIGH": ["in_app", "push"],
            "CRITICAL": ["in_app", "push", "sms"],
        },
    }
    base.update(fields)
    return Profile.model_validate(base)


def feedback(action: str, seconds: float, alert_id: str = "a-x", **fields: Any) -> Feedback:
    return Feedback(user_id="u-1", alert_id=alert_id, action=action, ts=at(seconds), **fields)


LATENESS = timedelta(seconds=5)


def feed(desk: UserDesk, *items: Any) -> list[Any]:
    """Items one by one, the watermark following each timed one less the allowed lateness (what
    the evaluation shards send when this user's events are the only input)."""
    out: list[Any] = []
    for item in items:
        out += desk.process([item])
        if isinstance(item, Feedback | TriggeredAlert):
            out += desk.advance(event_time(item) - LATENESS)
    return out


def run(desk: UserDesk, *items: Any, close: bool = True) -> list[Any]:
    out = feed(desk, *items)
    return out + (desk.close_all() if close else [])


def notes(out: list[Any]) -> list[Notification]:
    return [o.notification for o in out if isinstance(o, Dispatch)]


def final_outcomes(out: list[Any]) -> dict[str, AlertOutcome]:
    latest: dict[str, AlertOutcome] = {}
    for item in out:
        if isinstance(item, AlertOutcome):
            latest[item.alert_id] = item
    return latest


def test_critical_goes_out_at_once_in_a_busy_window() -> None:
    desk = UserDesk()
    out = feed(
        desk, profile(), alert(1), alert(2, rule="r-2"), alert(3, rule="r-3", priority="CRITICAL")
    )
    (critical,) = notes(out)
    assert critical.alert_ids == ["a-r-3-AAPL-3"]
    assert critical.window_start == critical.window_end == at(3)  # 0 s after its trigger
    assert critical.channels == [Channel.IN_APP, Channel.PUSH, Channel.SMS]
    assert len(desk.consolidator.open) == 1  # the others still wait for their window


def test_repeats_of_a_rule_are_merged_and_every_alert_is_notified_once() -> None:
    out = run(
        UserDesk(), profile(), alert(1), alert(2), alert(3), alert(4, symbol="MSFT", rule="r-2")
    )
    (note,) = notes(out)
    assert "AAPL: r-1 (x3): it happened" in note.message
    assert note.channels == [Channel.IN_APP, Channel.PUSH]
    outcomes = final_outcomes(out)
    assert {o.status for o in outcomes.values()} == {"NOTIFIED"}
    assert {o.notification_id for o in outcomes.values()} == {note.notification_id}


def test_low_relevance_alerts_are_downgraded_to_the_in_app_feed() -> None:
    desk = UserDesk()
    dismissals = [feedback("dismissed", -300 + i, symbol="AAPL") for i in range(4)]
    (aapl,) = notes(run(desk, profile(min_relevance=0.45), *dismissals, alert(1)))
    assert aapl.channels == [Channel.IN_APP]
    (msft,) = notes(run(desk, alert(120, symbol="MSFT")))
    assert msft.channels == [Channel.IN_APP, Channel.PUSH]


def test_alerts_are_ordered_by_relevance_in_a_notification() -> None:
    desk = UserDesk()
    engaged = [feedback("acted", -300 + i, symbol="NVDA") for i in range(3)]
    (note,) = notes(
        run(desk, profile(), *engaged, alert(1, symbol="AAPL"), alert(2, symbol="NVDA", rule="r-2"))
    )
    assert note.alert_ids == ["a-r-2-NVDA-2", "a-r-1-AAPL-1"]


def test_muted_rule_is_silenced_until_unmuted() -> None:
    desk = UserDesk()
    first = run(desk, profile(), alert(1))
    assert len(notes(first)) == 1
    muted = run(
        desk,
        feedback("muted", 100, alert_id="a-r-1-AAPL-1"),
        alert(200),
        alert(210, symbol="MSFT", rule="r-2"),
    )
    assert [n.alert_ids for n in notes(muted)] == [["a-r-2-MSFT-210"]]
    assert final_outcomes(muted)["a-r-1-AAPL-200"].status == "MUTED"
    back = run(desk, feedback("unmuted", 300, alert_id="a-r-1-AAPL-1"), alert(400))
    assert [n.alert_ids for n in notes(back)] == [["a-r-1-AAPL-400"]]


def test_quiet_hours_across_the_dst_change_and_the_digest_when_they_end() -> None:
    # New York switches to daylight time at 02:00 on 2026-03-08: quiet hours 22:00-07:00 end at
    # 07:00 EDT = 11:00 UTC that morning (12:00 UTC the morning before).
    night = datetime(2026, 3, 8, 5, 30, tzinfo=UTC)  # 00:30 EST
    desk = UserDesk()
    out = feed(desk, profile(quiet_hours={"start": "22:00", "end": "07:00"}), alert(0, base=night))
    out += feed(desk, alert(120, rule="r-2", base=night))  # closes the first window
    (quiet,) = notes(out)
    assert quiet.channels == [Channel.IN_APP]
    morning = datetime(2026, 3, 8, 11, 30, tzinfo=UTC)  # 07:30 EDT
    out = feed(desk, alert(0, rule="r-3", base=morning))
    # r-2's window ended in the quiet night (seen closed only now): in-app only, then the digest
    # of the night with both held alerts, as the morning's first event passes 11:00 UTC.
    r2_in_app, digest = notes(out)
    assert r2_in_app.alert_ids == ["a-r-2-AAPL-120"]
    assert r2_in_app.channels == [Channel.IN_APP]
    end_of_quiet = datetime(2026, 3, 8, 11, 0, tzinfo=UTC)
    assert digest.notification_id == notification_id("u-1", end_of_quiet, kind="digest")
    assert digest.window_end == end_of_quiet
    assert digest.channels == [Channel.IN_APP, Channel.PUSH]
    assert sorted(digest.alert_ids) == ["a-r-1-AAPL-0", "a-r-2-AAPL-120"]
    (day,) = notes(desk.close_all())
    assert day.alert_ids == ["a-r-3-AAPL-0"] and Channel.PUSH in day.channels


def test_hourly_budget_folds_the_excess_into_the_next_notification() -> None:
    desk = UserDesk()
    minutes = [alert(60 * i + 1, rule=f"r-{i}") for i in range(5)]
    out = run(desk, profile(max_per_hour=2), *minutes, alert(3700, rule="r-late"))
    pushed = [n for n in notes(out) if Channel.PUSH in n.channels]
    # Two an hour: r-0 and r-1 go out; r-2, r-3 and r-4 wait and go out together as soon as
    # the first push is an hour old; r-late after it.
    assert [n.alert_ids for n in pushed] == [
        ["a-r-0-AAPL-1"],
        ["a-r-1-AAPL-61"],
        ["a-r-2-AAPL-121", "a-r-3-AAPL-181", "a-r-4-AAPL-241"],
        ["a-r-late-AAPL-3700"],
    ]
    outcomes = final_outcomes(out)
    assert {o.status for o in outcomes.values()} == {"NOTIFIED"}
    all_ids = [i for n in notes(out) for i in n.alert_ids]
    assert sorted(all_ids) == sorted(outcomes) and len(all_ids) == len(set(all_ids))
    assert any(o.status == "DEFERRED" for o in out if isinstance(o, AlertOutcome))


def test_alerts_past_their_staleness_limit_are_stored_not_pushed() -> None:
    config = PersonalizationConfig(stale_after={Priority.LOW: timedelta(minutes=10)})
    desk = UserDesk(config)
    out = run(
        desk,
        profile(digest_seconds=3600),
        alert(60, priority="LOW"),
        alert(3300, rule="r-2", priority="LOW"),
    )
    (note,) = notes(out)
    assert note.alert_ids == ["a-r-2-AAPL-3300"]
    assert final_outcomes(out)["a-r-1-AAPL-60"].status == "STALE"


def test_late_alert_re_emits_its_window_under_the_same_id() -> None:
    desk = UserDesk()
    out = run(desk, profile(), alert(1), alert(70, rule="r-2"), close=False)
    (first,) = notes(out)
    (again,) = notes(feed(desk, alert(10, rule="r-3")))
    assert again.notification_id == first.notification_id
    assert again.alert_ids == ["a-r-1-AAPL-1", "a-r-3-AAPL-10"]


def test_market_hours_only_holds_until_the_regular_open() -> None:
    premarket = datetime(2026, 1, 5, 13, 0, tzinfo=UTC)  # 08:00 in New York
    desk = UserDesk()
    out = feed(desk, profile(market_hours_only=True), alert(0, base=premarket))
    # 09:30:05 ET: the watermark (less the lateness) reaches the open
    out += feed(desk, alert(5405, rule="r-2", base=premarket))
    held, digest = notes(out)
    assert held.channels == [Channel.IN_APP]
    assert digest.window_end == datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
    assert Channel.PUSH in digest.channels


def test_a_user_without_profile_gets_the_in_app_feed() -> None:
    (note,) = notes(run(UserDesk(), alert(1, priority="HIGH")))
    assert note.channels == [Channel.IN_APP]
