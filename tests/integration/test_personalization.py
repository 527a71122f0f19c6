"""Personalization through the real dataflow: broker in, PostgreSQL and Redis out.

One run serves several users, each showing one behaviour; a second test restarts the job with
recovery to deliver a late alert.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from connectors.embedded import StackUrls
from pipeline.cli import commands
from pipeline.config import Settings
from pipeline.dataflow import run
from pipeline.ids import alert_id, follow_up_id, notification_id, storage_uuid
from pipeline.personalize.learning import LearningConfig
from sinks.kafka import CheckedProducer, OutgoingRecord
from sinks.redis_store import InAppFeed, RelevanceStore
from tests.conftest import PUSH_OLD_ALERTS, job_settings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)  # 10:00 in New York
NIGHT = datetime(2026, 3, 8, 5, 30, tzinfo=UTC)  # 00:30 EST, the night New York springs forward
CHANNELS = {"LOW": ["in_app"], "MEDIUM": ["in_app", "push"], "HIGH": ["in_app", "push"],
            "CRITICAL": ["in_app", "push", "sms"]}  # fmt: skip


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


@pytest.fixture
def settings(stack: StackUrls, database_url: str) -> Settings:
    return job_settings(
        stack,
        database_url,
        partitions={"market": 1, "reference": 1, "feedback": 1, "outputs": 1},
        engine={"shard_count": 4, "window_seconds": 60, "epoch_ms": 50},
        personalization=PUSH_OLD_ALERTS,
    )


def send(settings: Settings, topic: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    producer = CheckedProducer(settings.require_servers()[0])
    producer.write_batch(
        [OutgoingRecord(topic, key.encode(), json.dumps(v).encode()) for key, v in rows]
    )
    producer.close()


def rule(rule_id: str, user: str, symbol: str, threshold: float, priority: str = "MEDIUM") -> dict:
    return {"v": 1, "id": rule_id, "user_id": user, "name": rule_id, "symbol": symbol,
            "priority": priority, "cooldown_seconds": 0,
            "conditions": {"type": "price_crosses_above", "threshold": threshold}}  # fmt: skip


def crossings(symbol: str, start: datetime, times: list[int], threshold: float) -> list[dict]:
    """Ticks that cross ``threshold`` upward at each of ``times`` (seconds after start)."""
    ticks = []
    for second in times:
        ticks.append(
            {
                "symbol": symbol,
                "ts": iso(start + timedelta(seconds=second - 1)),
                "price": threshold - 1,
            }
        )
        ticks.append(
            {"symbol": symbol, "ts": iso(start + timedelta(seconds=second)), "price": threshold + 1}
        )
    return ticks


def notifications_of(settings: Settings, user: str) -> list[dict[str, Any]]:
    records = commands.read_topic(settings.require_servers()[0], settings.topics.notifications)
    return [n for r in records if r.value and (n := json.loads(r.value))["user_id"] == user]


def test_scores_downgrade_mute_repeats_critical_and_quiet_hours(settings: Settings) -> None:
    t, run_id = settings.topics, uuid.uuid4().hex[:6]
    crit, rep, low, mute, quiet = (
        f"u-{name}-{run_id}" for name in ("crit", "rep", "low", "mute", "quiet")
    )
    rules = [
        rule("r-crit-m", crit, "AAA", 100), rule("r-crit-c", crit, "BBB", 100, "CRITICAL"),
        rule("r-rep", rep, "CCC", 100),
        rule("r-low", low, "DDD", 100),
        rule("r-mute", mute, "EEE", 100),
        rule("r-quiet", quiet, "FFF", 100),
    ]  # fmt: skip
    send(settings, t.rules, [(r["id"], r) for r in rules])
    profiles = [
        {"user_id": u, "timezone": "America/New_York", "channels": CHANNELS}
        for u in (crit, rep, mute)
    ] + [
        {"user_id": low, "timezone": "America/New_York", "channels": CHANNELS,
         "min_relevance": 0.45},
        {"user_id": quiet, "timezone": "America/New_York", "channels": CHANNELS,
         "quiet_hours": {"start": "22:00", "end": "07:00"}},
    ]  # fmt: skip
    send(settings, t.profiles, [(p["user_id"], p) for p in profiles])
    first_mute_alert = alert_id("r-mute", 1, T0 + timedelta(seconds=10), "EEE")
    feedback = [
        {"user_id": low, "alert_id": f"old-{i}", "action": "dismissed", "symbol": "DDD",
         "ts": iso(T0 - timedelta(minutes=10) + timedelta(seconds=i))}
        for i in range(4)
    ] + [{"user_id": mute, "alert_id": first_mute_alert, "action": "muted",
          "ts": iso(T0 + timedelta(seconds=20))}]  # fmt: skip
    send(settings, t.feedback, [(f["user_id"], f) for f in feedback])
    ticks = (
        crossings("AAA", T0, [5, 15], 100) + crossings("BBB", T0, [20], 100)
        + crossings("CCC", T0, [5, 15, 25], 100)
        + crossings("DDD", T0, [5], 100)
        + crossings("EEE", T0, [10, 200], 100)
        + crossings("FFF", NIGHT, [0], 100) + crossings("FFF", NIGHT + timedelta(hours=6), [0], 100)
    )  # fmt: skip
    ticks.sort(key=lambda tick: tick["ts"])
    send(settings, t.ticks, [(tick["symbol"], tick) for tick in ticks])

    run(settings, bounded=True)

    # CRITICAL: its own notification at its trigger time, apart from the MEDIUM window.
    crit_notes = notifications_of(settings, crit)
    critical = [n for n in crit_notes if n["highest_priority"] == "CRITICAL"]
    assert len(critical) == 1 and critical[0]["window_start"] == critical[0]["window_end"] == iso(
        T0 + timedelta(seconds=20)
    ).replace("Z", ".000Z")
    assert critical[0]["channels"] == ["in_app", "push", "sms"]
    assert [len(n["alert_ids"]) for n in crit_notes if n["highest_priority"] == "MEDIUM"] == [2]

    # Repeats of a rule in one window: one line with a count.
    (repeated,) = notifications_of(settings, rep)
    assert len(repeated["alert_ids"]) == 3 and "(x3)" in repeated["message"]

    # Below min relevance after four dismissals: the in-app feed only.
    (downgraded,) = notifications_of(settings, low)
    assert downgraded["channels"] == ["in_app"]
    config = LearningConfig()
    expected = 0.5
    for _ in range(4):  # the dismissals are seconds apart: decay is negligible at 1e-6
        expected = (1 - config.alpha) * expected + config.alpha * 0.1
    # Event time then passes (other users' ticks run into March) the 24 h the alert had for an
    # engagement: it counts as ignored, applied at its deadline.
    ignored_at = T0 + timedelta(seconds=5) + config.ignore_after
    elapsed = ignored_at - (T0 - timedelta(minutes=10) + timedelta(seconds=3))
    decayed = 0.5 + (expected - 0.5) * 0.5 ** (elapsed / config.half_life)
    expected = (1 - config.alpha) * decayed + config.alpha * 0.2
    scores = RelevanceStore(settings.redis_url).read(low)
    assert scores["symbol:DDD"] == pytest.approx(expected, abs=1e-5)

    # Muted: the first alert was notified, the second is stored as MUTED.
    (muted_user_note,) = notifications_of(settings, mute)
    assert muted_user_note["alert_ids"] == [first_mute_alert]
    second = alert_id("r-mute", 1, T0 + timedelta(seconds=200), "EEE")
    with psycopg.connect(settings.database_url) as conn:
        status = dict(
            conn.execute("SELECT alert_external_id, status FROM alert_outcomes").fetchall()
        )
        stored = conn.execute(
            "SELECT count(*) FROM triggered_alerts WHERE external_id = %s", (second,)
        ).fetchone()
    assert status[second] == "MUTED" and stored == (1,)
    assert status[first_mute_alert] == "NOTIFIED"

    # Quiet hours across the DST change: in-app at night, the digest at 07:00 EDT = 11:00 UTC.
    quiet_notes = notifications_of(settings, quiet)
    night_note = [n for n in quiet_notes if n["window_start"].startswith("2026-03-08T05:30")]
    assert night_note and night_note[0]["channels"] == ["in_app"]
    end_of_quiet = datetime(2026, 3, 8, 11, 0, tzinfo=UTC)
    digest = [
        n
        for n in quiet_notes
        if n["notification_id"] == notification_id(quiet, end_of_quiet, kind="digest")
    ]
    assert digest and digest[0]["channels"] == ["in_app", "push"]
    assert digest[0]["window_end"] == "2026-03-08T11:00:00.000Z"


def test_a_late_alert_after_a_restart_goes_out_in_a_follow_up_of_its_window(
    settings: Settings, tmp_path: Path
) -> None:
    t, user = settings.topics, f"u-late-{uuid.uuid4().hex[:6]}"
    settings = settings.model_copy(
        update={"recovery": settings.recovery.model_copy(update={"directory": tmp_path / "rec"})}
    )
    send(
        settings,
        t.rules,
        [(r["id"], r) for r in (rule("r-a", user, "GGG", 100), rule("r-b", user, "HHH", 100))],
    )
    send(settings, t.ticks, [(x["symbol"], x) for x in crossings("GGG", T0, [10, 100], 100)])
    run(settings, bounded=True)  # closes the window [T0, T0+60s) with one alert

    # HHH's tick inside that window arrives late (after the job saw 100 s).
    send(settings, t.ticks, [(x["symbol"], x) for x in crossings("HHH", T0, [30], 100)])
    run(settings, bounded=True)

    window = notification_id(user, T0)
    late = alert_id("r-b", 1, T0 + timedelta(seconds=30), "HHH")
    follow_up = follow_up_id(window, [late])
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT c.external_id, c.alert_ids, p.external_id FROM consolidated_alerts c "
            "LEFT JOIN consolidated_alerts p ON p.id = c.follow_up_of "
            "WHERE c.user_external_id = %s AND c.window_start = %s ORDER BY c.created_at",
            (user, T0),
        ).fetchall()
    # The window's row keeps the alert it was sent with; the late alert has its own row.
    first = alert_id("r-a", 1, T0 + timedelta(seconds=10), "GGG")
    assert rows == [
        (window, [storage_uuid("alert", first)], None),
        (follow_up, [storage_uuid("alert", late)], window),
    ]
    published = notifications_of(settings, user)
    by_id = {n["notification_id"]: n for n in published}
    assert len(published) == len(by_id)  # each published once
    assert by_id[window]["alert_ids"] == [first]
    assert by_id[follow_up]["alert_ids"] == [late]
    assert by_id[follow_up]["follow_up_of"] == window
    feed = [e["notification_id"] for e in InAppFeed(settings.redis_url).entries(user)]
    assert feed.count(window) == 1 and feed.count(follow_up) == 1
