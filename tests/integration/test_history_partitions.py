"""Month partitions of the history (issue 15 point 3): what `maintain` creates, moves, drops and
deletes for a fixed "now", that a second run does nothing, that two real `smart-alerts
maintain` processes at once are safe, that the writers' upserts still meet their rows, and that
migration 014 moves existing rows into their months."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from connectors.embedded import StackUrls
from pipeline.ids import alert_id
from pipeline.messages import Feedback, Notification, TriggeredAlert
from sinks.migrations import DEFAULT_DIRECTORY, migrate
from sinks.partitions import Policy, maintain, partitions
from sinks.postgres import HistoryWriter

pytestmark = pytest.mark.integration

SMART_ALERTS = str(Path(sys.executable).with_name("smart-alerts"))
TABLES = ("triggered_alerts", "delivery_logs", "alert_feedback")
POLICY = Policy(
    keep_months={"triggered_alerts": 13, "delivery_logs": 13, "alert_feedback": 25},
    premake_months=2,
)
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


@pytest.fixture()
def empty_database(stack: StackUrls) -> Iterator[str]:
    name = f"t_partitions_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[call-overload]
    parts = urlsplit(stack.database_url)
    if parts.scheme in ("postgres", "postgresql"):
        url = urlunsplit(parts._replace(path=f"/{name}"))
    else:
        url = make_conninfo(stack.database_url, dbname=name)
    yield url
    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[call-overload]


def _alert(user: str, at: datetime) -> TriggeredAlert:
    return TriggeredAlert(
        alert_id=alert_id(f"r-{user}", 1, at, "AAPL"),
        rule_id=f"r-{user}",
        rule_version=1,
        user_id=user,
        symbol="AAPL",
        priority="LOW",
        title="AAPL",
        message="AAPL moved",
        triggered_at=at,
        condition_types=["price_above"],
        values={},
    )


def _note(user: str, at: datetime, alerts: list[TriggeredAlert]) -> Notification:
    return Notification(
        notification_id=f"n-{user}-{at:%Y%m}",
        user_id=user,
        alert_ids=[a.alert_id for a in alerts],
        title="t",
        message="m",
        highest_priority="LOW",
        channels=["push"],
        window_start=at,
        window_end=at,
    )


def _where(url: str, table: str) -> dict[str, int]:
    """Rows per partition of ``table``."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            f"SELECT tableoid::regclass::text, count(*) FROM {table} GROUP BY 1"  # type: ignore[call-overload]
        ).fetchall()
    return {str(name): int(count) for name, count in rows}


def _write_history(url: str, user: str, months: list[datetime]) -> list[TriggeredAlert]:
    alerts = [_alert(user, at) for at in months]
    with HistoryWriter(url) as writer:
        writer.write_alerts(alerts)
        writer.write_feedback(
            [Feedback(user_id=user, alert_id=a.alert_id, action="opened", ts=a.triggered_at)
             for a in alerts]
        )  # fmt: skip
        for a in alerts:
            note = _note(user, a.triggered_at, [a])
            writer.write_notifications([note])
            writer.record_delivery(note.notification_id, user, "push", "token-1")
            writer.mark_delivered(note.notification_id, "push", "token-1", None)
    return alerts


def test_maintain_creates_moves_drops_and_a_second_run_does_nothing(database_url: str) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    expired, kept, current = (
        datetime(2025, 1, 20, tzinfo=UTC),  # before the cutoff of 13 months: 2025-02-01
        datetime(2025, 6, 10, tzinfo=UTC),
        datetime(2026, 3, 2, tzinfo=UTC),
    )
    alerts = _write_history(database_url, user, [expired, kept, current])
    # Before any maintenance every row is in the default partition, and nothing failed.
    assert _where(database_url, "triggered_alerts") == {"triggered_alerts_default": 3}

    lines: list[str] = []
    report = maintain(database_url, POLICY, now=NOW, log=lines.append)

    months = ["2026_03", "2026_04", "2026_05"]
    assert partitions(database_url, "triggered_alerts") == [
        "triggered_alerts_default",
        *(f"triggered_alerts_p{m}" for m in ["2025_06", *months]),
    ]
    # Feedback is kept 25 months: 2025-01 is not expired there, so it gets its month too.
    assert partitions(database_url, "alert_feedback") == [
        "alert_feedback_default",
        *(f"alert_feedback_p{m}" for m in ["2025_01", "2025_06", *months]),
    ]
    assert report.deleted == {"triggered_alerts": 1, "delivery_logs": 1, "alert_feedback": 0}
    assert report.dropped == []
    assert _where(database_url, "triggered_alerts") == {
        "triggered_alerts_p2025_06": 1,
        "triggered_alerts_p2026_03": 1,
    }
    assert _where(database_url, "delivery_logs") == {
        "delivery_logs_p2025_06": 1,
        "delivery_logs_p2026_03": 1,
    }
    assert "created triggered_alerts_p2026_05" in lines

    # Twice is a no-op.
    lines.clear()
    again = maintain(database_url, POLICY, now=NOW, log=lines.append)
    assert not again.changed and lines == ["partitions are up to date"]

    # The writers' upserts meet the moved rows: a replay writes nothing, statuses still move.
    with HistoryWriter(database_url) as writer:
        writer.write_alerts(alerts[1:])  # (an expired alert replayed would be stored again)
        note = _note(user, current, [alerts[2]])
        assert writer.record_delivery(note.notification_id, user, "push", "token-1") is False
        writer.write_feedback(
            [Feedback(user_id=user, alert_id=alerts[2].alert_id, action="acted", ts=NOW)]
        )
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM triggered_alerts").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM delivery_logs").fetchone() == (2,)
        status = conn.execute(
            "SELECT status FROM triggered_alerts WHERE external_id = %s", (alerts[2].alert_id,)
        ).fetchone()
    assert status == ("ACTED",)

    # A year on: the 2025 and early 2026 months expire, the coming ones are made.
    later = maintain(database_url, POLICY, now=datetime(2027, 5, 1, tzinfo=UTC), log=print)
    assert "triggered_alerts_p2025_06" in later.dropped
    assert "triggered_alerts_p2026_03" in later.dropped
    assert "triggered_alerts_p2026_04" not in later.dropped  # cutoff 2026-04-01: April stays
    assert "alert_feedback_p2026_03" not in later.dropped  # feedback keeps 25 months
    assert partitions(database_url, "triggered_alerts")[-3:] == [
        "triggered_alerts_p2027_05",
        "triggered_alerts_p2027_06",
        "triggered_alerts_p2027_07",
    ]
    assert _where(database_url, "triggered_alerts") == {}


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    variables = {k: v for k, v in os.environ.items() if not k.startswith("SMART_ALERTS_")}
    variables.update(env)
    return subprocess.Popen(
        [SMART_ALERTS, *args],
        env=variables,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_maintain_processes_at_once_are_safe(stack: StackUrls, empty_database: str) -> None:
    migrate(empty_database, log=lambda line: None)
    env = {
        "DATABASE_URL": empty_database,
        "SMART_ALERTS_RETENTION__PREMAKE_MONTHS": "3",
    }
    runs = [_cli("maintain", "--now", "2026-03-15", env=env) for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    created = [
        line for out, _ in outputs for line in out.splitlines() if line.startswith("created ")
    ]
    # Every partition made once, by one of the two; the other found them all made.
    expected = {
        f"created {t}_p{m}" for t in TABLES for m in ("2026_03", "2026_04", "2026_05", "2026_06")
    }
    assert sorted(created) == sorted(expected)
    assert any("partitions are up to date" in out for out, _ in outputs)
    for table in TABLES:
        assert len(partitions(empty_database, table)) == 5


def test_migration_014_moves_existing_rows_into_their_months(
    empty_database: str, tmp_path: Path
) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for path in DEFAULT_DIRECTORY.iterdir():
        if path.name.endswith(".sql") and path.name < "014":
            shutil.copyfile(str(path), before / path.name)
    migrate(empty_database, directory=before, log=lambda line: None)
    at = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
    with psycopg.connect(empty_database) as conn:
        conn.execute(
            "INSERT INTO triggered_alerts (id, external_id, user_id, user_external_id,"
            " triggered_at, status) SELECT gen_random_uuid(), 'a-' || g, gen_random_uuid(), 'u-1',"
            " %s + g * interval '10 days', 'NOTIFIED' FROM generate_series(0, 5) AS g",
            (at,),
        )
        conn.execute(
            "INSERT INTO consolidated_alerts (id, external_id, window_start)"
            " VALUES ('00000000-0000-0000-0000-000000000001', 'n-1', %s)",
            (at,),
        )
        conn.execute(
            "INSERT INTO delivery_logs (id, notification_id, channel, destination, status)"
            " VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'push', 't',"
            " 'DELIVERED')"
        )
        conn.execute(
            "INSERT INTO alert_feedback (id, ts, user_id, user_external_id, alert_id,"
            " alert_external_id, action) VALUES (gen_random_uuid(), %s, gen_random_uuid(), 'u-1',"
            " gen_random_uuid(), 'a-0', 'opened')",
            (at + timedelta(days=40),),
        )
    migrate(empty_database, log=lambda line: None)

    assert _where(empty_database, "triggered_alerts") == {
        "triggered_alerts_p2025_11": 3,
        "triggered_alerts_p2025_12": 3,
    }
    assert _where(empty_database, "delivery_logs") == {"delivery_logs_p2025_11": 1}
    assert _where(empty_database, "alert_feedback") == {"alert_feedback_p2025_12": 1}
    with psycopg.connect(empty_database) as conn:
        assert conn.execute(
            "SELECT count(*) FROM v_alerts WHERE status = 'NOTIFIED'"
        ).fetchone() == (6,)
        assert conn.execute("SELECT count(*) FROM v_alert_responses").fetchone() == (6,)


def test_maintain_refuses_a_non_owner_and_stops_at_a_held_lock(
    stack: StackUrls, empty_database: str
) -> None:
    migrate(empty_database, log=lambda line: None)
    as_writer = make_conninfo(empty_database, options="-c role=smart_alerts_writer")
    run = _cli("maintain", env={"DATABASE_URL": as_writer})
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2, (out, err)
    assert "run maintain as the owner of the history tables" in err and "Traceback" not in err

    env = {"DATABASE_URL": empty_database, "SMART_ALERTS_RETENTION__LOCK_TIMEOUT_SECONDS": "1"}
    with psycopg.connect(empty_database) as holder:
        holder.execute("LOCK TABLE triggered_alerts_default IN ACCESS EXCLUSIVE MODE")
        run = _cli("maintain", "--now", "2026-03-15", env=env)
        out, err = run.communicate(timeout=120)
    assert run.returncode == 3, (out, err)
    assert "lock timeout" in err and "Traceback" not in err
    # The next run does what is left.
    run = _cli("maintain", "--now", "2026-03-15", env=env)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, (out, err)
    assert len(partitions(empty_database, "triggered_alerts")) == 4
